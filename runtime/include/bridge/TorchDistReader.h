//===- TorchDistReader.h - reading Megatron-Core torch_dist checkpoints -*- C++ -*-===//
//
// A torch_dist iteration directory (iter_NNNNNNN/ or release/) is a PyTorch
// DCP checkpoint: '.metadata' (a pickle of DCP's Metadata) maps every key to
// its global shape and chunks, and every chunk or byte object to a record
// (file, byte offset, length) in a *.distcp file; each record is a complete
// torch.save archive. This reads the metadata through the restricted
// unpickler, validates it as a whole before anything is read (chunks inside
// the global shape, no overlap, full coverage, every record inside a plain
// file of the directory), and assembles global tensors from their chunk
// records. See shared/reference/megatron-checkpoint-format.md sections 1, 2
// and 6.3.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_TORCHDISTREADER_H
#define BRIDGE_TORCHDISTREADER_H

#include "bridge/Config.h" // bridge::Error, bridge::Json
#include "bridge/DType.h"
#include "bridge/Unpickle.h"

#include <cstdint>
#include <map>
#include <memory>
#include <string_view>
#include <string>
#include <vector>

namespace bridge {

/// Where a record lives: a file of the checkpoint directory and a byte range.
struct DistRecord {
  std::string File;    ///< relative_path: a plain file name in the directory
  uint64_t Offset = 0; ///< byte offset of the record in File
  uint64_t Length = 0; ///< byte length of the record
};

/// One stored chunk of a global tensor.
struct DistChunk {
  std::vector<int64_t> Offsets; ///< in elements, global coordinates
  std::vector<int64_t> Sizes;
  DistRecord Record;
};

/// A tensor of the checkpoint: global shape and the chunks that tile it.
struct DistTensor {
  std::string Key;
  DType Type = DType::F32;
  std::vector<int64_t> Shape;    ///< the global shape
  std::vector<DistChunk> Chunks; ///< in .metadata order
  /// Elements of the global tensor.
  int64_t numel() const;
};

/// An opened torch_dist checkpoint directory.
class TorchDistCheckpoint {
public:
  /// Reads and validates metadata.json (sharded_backend must be
  /// "torch_dist") and '.metadata' of \p IterDir. Throws bridge::Error
  /// "error: <file>: ..." naming the key at fault.
  explicit TorchDistCheckpoint(const std::string &IterDir);

  /// The iteration directory, without a trailing '/'.
  const std::string &directory() const { return Dir; }
  /// metadata.json as read.
  const Json &metadataJson() const { return MetadataJson; }
  /// '.metadata' as unpickled (a DCP Metadata object).
  const PyValue &metadata() const { return *Metadata; }

  /// Model tensor keys, sorted. Byte objects and the keys a model export
  /// never needs (optimizer.*, rng_state*, common_state*,
  /// rerun_state_machine*) are left out.
  std::vector<std::string> tensorKeys() const;
  /// Whether \p Key is one of tensorKeys().
  bool hasTensor(const std::string &Key) const { return Tensors.count(Key) != 0; }
  /// Throws when \p Key is not one of tensorKeys().
  const DistTensor &tensor(const std::string &Key) const;
  /// Every byte-object key (BytesStorageMetadata), sorted.
  std::vector<std::string> byteObjectKeys() const;
  /// Keys of the metadata that tensorKeys() leaves out, sorted.
  const std::vector<std::string> &skippedKeys() const { return Skipped; }

  /// The global tensor \p Key, row-major, contiguous, little-endian,
  /// assembled from its chunk records. Safe to call from several threads.
  std::vector<uint8_t> readTensor(const std::string &Key) const;
  /// The sub-tensor of \p Key at index \p Prefix of its leading dims (one
  /// layer of a layer-stacked key): only the chunks holding it are read.
  std::vector<uint8_t> readTensorAt(const std::string &Key, const std::vector<int64_t> &Prefix) const;
  /// The same sub-tensor where it lies in the (memory-mapped) checkpoint
  /// file, when one chunk holds all of it: no copy. Null otherwise. Valid
  /// while this object lives.
  const uint8_t *viewTensorAt(const std::string &Key, const std::vector<int64_t> &Prefix) const;
  /// Chunk \p Index of \p Key (its record, as stored), checked against the
  /// metadata's dtype and chunk sizes.
  TensorRecord readChunk(const std::string &Key, size_t Index) const;
  /// The unpickled torch.save payload of byte object \p Key (MCore stores
  /// torch.save([obj]), so usually a one-element list).
  PyValuePtr readBytesObject(const std::string &Key, const GlobalAllowList &Allowed = TorchSaveGlobals) const;
  /// The common (non-sharded) state dict: common.pt if the directory has
  /// one (MCore <= 0.18, and still preferred by newer loaders), else the
  /// one element of byte object 'common_state/shard_0_1' (MCore >= 0.19).
  PyValuePtr common(const GlobalAllowList &Allowed = TorchSaveGlobals) const;

  /// The raw bytes of \p R (bounds were checked when the checkpoint was
  /// opened, and again against the file as it is now). \p Key, the record's
  /// key, is for messages. Input files are opened with
  /// files::openRegularFile: a FIFO or device is an error, never a wait.
  std::vector<uint8_t> readRecord(const DistRecord &R, const std::string &Key = "") const;
  /// The same bytes in the file, mapped read-only (files are mapped on first
  /// use and stay mapped while this object lives). Safe from several threads.
  std::string_view recordView(const DistRecord &R, const std::string &Key = "") const;

private:
  void parseMetadata(const std::string &MetadataPath);
  TensorRecord chunkRecord(const std::string &Key, size_t Index, bool Borrow) const;
  std::string recordWhere(const DistRecord &R, const std::string &Key) const;

  std::string Dir;
  Json MetadataJson;
  PyValuePtr Metadata;
  std::map<std::string, DistTensor> Tensors;
  std::map<std::string, DistRecord> ByteObjects;
  std::vector<std::string> Skipped;
  struct Mappings;
  std::shared_ptr<Mappings> Mapped;
};

} // namespace bridge

#endif
