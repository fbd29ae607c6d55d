//===- Pickle.h - emitting Python pickles and torch.save archives --*- C++ -*-===//
//
// What Megatron-Core and PyTorch read from a checkpoint is Python pickles:
// the DCP '.metadata', torch.save zip archives (tensor records, common.pt,
// train_state.pt). These are written opcode by opcode (protocol 2, no memo),
// never by running Python. See shared/reference/megatron-checkpoint-format.md
// sections 2.3, 2.5 and 6.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_PICKLE_H
#define BRIDGE_PICKLE_H

#include "bridge/DType.h"

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace bridge {

class PickleWriter {
public:
  PickleWriter();
  void global(std::string_view Module, std::string_view Name);
  void none();
  void boolean(bool V);
  void integer(int64_t V);
  void float64(double V);
  void str(std::string_view S);
  void mark();
  void tuple(); ///< MARK ... TUPLE
  void emptyTuple();
  void emptyDict();
  void setItems(); ///< MARK k v ... SETITEMS
  void emptyList();
  void appends(); ///< MARK x ... APPENDS
  void newObj();  ///< cls args -> cls.__new__(cls, *args)
  void build();
  void reduce();
  void persistentId(); ///< BINPERSID
  /// torch.Size((dims...))
  void torchSize(const std::vector<int64_t> &Dims);
  /// A tensor rebuilt from storage \p Key (torch._utils._rebuild_tensor_v2),
  /// contiguous, as torch.save writes it.
  void tensor(DType Type, const std::string &Key, int64_t Numel, const std::vector<int64_t> &Shape);
  /// Appends STOP and returns the bytes.
  std::string finish();

private:
  std::string Out;
};

/// CRC-32 (IEEE 802.3, as zip uses): carry-less multiply folding where the
/// CPU has it, else slicing by 8 bytes.
uint32_t crc32(const uint8_t *Data, uint64_t Size);
/// The CRC-32 of bytes that follow those whose CRC-32 is \p Crc (zlib's
/// crc32(crc, buf, len)): crc32(A + B) == crc32Update(crc32(A), B).
uint32_t crc32Update(uint32_t Crc, const uint8_t *Data, uint64_t Size);
/// The same without carry-less multiply (the reference crc32 is tested against).
uint32_t crc32Portable(const uint8_t *Data, uint64_t Size);

/// One storage of a torch.save archive.
struct StorageBytes {
  std::string Key;
  const uint8_t *Data;
  size_t Size;
};

/// A torch.save zip archive written record by record, each record's bytes
/// passed to the sink as it is added (stored, 64-byte aligned, as torch.save
/// aligns storages); finish() writes the central directory. ZIP64 where
/// sizes or offsets need it. torch.load finds records by name, so a writer
/// may add storages as they come and the pickle naming them last.
class TorchSaveWriter {
public:
  explicit TorchSaveWriter(std::function<void(const void *, size_t)> Sink, bool Checksums = true);
  /// 'archive/<Name>' holding \p Size bytes at \p Data.
  void add(const std::string &Name, const void *Data, uint64_t Size);
  /// torch.save's own records: data.pkl holding \p Pickle, byteorder,
  /// version, .data/serialization_id.
  void addTorchRecords(const std::string &Pickle);
  /// The central directory; returns the bytes emitted in all.
  uint64_t finish();
  /// The CRC-32 of the last record added (0 without checksums).
  uint32_t lastCrc() const { return Entries.empty() ? 0 : Entries.back().Crc; }

private:
  struct Entry {
    std::string Name;
    uint64_t Size;
    uint32_t Crc;
    uint64_t HeaderOffset;
  };
  void flush();
  std::function<void(const void *, size_t)> Sink;
  bool Checksums;
  std::vector<Entry> Entries;
  std::string Z; ///< headers not yet passed to the sink
  uint64_t Flushed = 0;
};

/// A torch.save zip archive: 'archive/data.pkl' holding \p Pickle, one
/// 'archive/data/<key>' per storage (64-byte aligned, stored), byteorder,
/// version. ZIP64 where sizes or offsets need it.
std::string torchSaveArchive(const std::string &Pickle, const std::vector<StorageBytes> &Storages);
/// The same archive streamed to \p Sink piece by piece (storages passed
/// through without a copy); returns the bytes emitted. Without \p Checksums
/// the CRC fields are zero and no storage byte is read: the length is the
/// same, so a writer can place an archive before its data is at hand.
uint64_t writeTorchSaveArchive(const std::string &Pickle, const std::vector<StorageBytes> &Storages,
                               const std::function<void(const void *, size_t)> &Sink, bool Checksums = true);

} // namespace bridge

#endif
