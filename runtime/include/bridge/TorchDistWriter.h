//===- TorchDistWriter.h - writing Megatron-Core torch_dist checkpoints -*- C++ -*-===//
//
// The files of one iteration directory: .distcp records (each chunk a
// torch.save archive, each byte object raw torch.save bytes), the DCP
// '.metadata' pickle, metadata.json and common.pt, as specified in
// shared/reference/megatron-checkpoint-format.md section 6.2. Chunks must tile
// each global tensor exactly; finish() checks that before writing metadata.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_TORCHDISTWRITER_H
#define BRIDGE_TORCHDISTWRITER_H

#include "bridge/DType.h"

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace bridge {

/// Records are written by \p NumFiles threads, each appending to its own
/// file ('__0_0.distcp', '__0_1.distcp', ...): checksums and writes run in
/// parallel, and no two threads share a file (the kernel serialises writes
/// to one file). Each record goes to the file with the fewest bytes so far,
/// so the output depends only on the order and sizes of the records, not on
/// timing. The caller waits while more than \p MaxPendingBytes are queued.
class TorchDistWriter {
public:
  /// Writes \p NumFiles files `__<Rank>_<k>.distcp` in \p IterDir, k from
  /// \p FirstFile on; one process of several (bridge::ProcessGroup) passes
  /// its rank. With \p Journal, each file's thread appends a line to
  /// `<file>.journal` once a record's bytes are written: its key, place and
  /// CRC-32, all an interrupted import needs to keep it (`--resume`).
  TorchDistWriter(std::string IterDir, unsigned NumFiles = 1, uint64_t MaxPendingBytes = uint64_t(1) << 30,
                  unsigned Rank = 0, unsigned FirstFile = 0, bool Journal = false);
  /// Stops the threads; an unfinished checkpoint's files are left to the
  /// caller to remove.
  ~TorchDistWriter();
  TorchDistWriter(const TorchDistWriter &) = delete;
  TorchDistWriter &operator=(const TorchDistWriter &) = delete;

  /// Declares a global tensor; its chunks follow.
  void declareTensor(const std::string &Key, DType Type, std::vector<int64_t> GlobalShape);
  /// One chunk of a declared tensor: \p Data holds the contiguous chunk.
  /// \p Owner keeps Data alive until it is written; without one the bytes
  /// are copied first.
  void addChunk(const std::string &Key, std::vector<int64_t> Offsets, std::vector<int64_t> Sizes,
                const uint8_t *Data, size_t Bytes, std::shared_ptr<const void> Owner = nullptr);
  /// A byte object (an MCore ShardedObject), already serialized.
  void addBytes(const std::string &Key, const std::string &Record);
  /// Waits for every record, checks tiling, writes .metadata, metadata.json
  /// and common.pt. A write error of any thread is rethrown here (or by the
  /// next addChunk). The same as finishData() then finishMetadata().
  void finish();
  /// Waits for every record to be on disk and closes the files.
  void finishData();
  /// What this writer placed where (keys, dtypes, shapes, chunks, files), as
  /// JSON text for another process's addRecords().
  std::string records() const;
  /// Takes in another writer's records(): its keys join this checkpoint's
  /// metadata (a key several processes wrote parts of must agree in dtype
  /// and shape). Before any record of this writer's own, it adopts records
  /// an interrupted run left (their key's further chunks then follow with
  /// addChunk, without declareTensor).
  void addRecords(const std::string &RecordsJson);
  /// After finishData() (and any addRecords()): checks that the chunks of
  /// every key tile it, writes .metadata, metadata.json, common.pt, and
  /// manifest.json: every record's place and the CRC-32 of its bytes, which
  /// `bridge-run verify` checks.
  void finishMetadata();
  uint64_t bytesWritten() const;
  unsigned numFiles() const { return static_cast<unsigned>(Files.size()); }
  /// The files records lie in: this writer's, then those addRecords() named.
  const std::vector<std::string> &fileNames() const { return FileNames; }

private:
  struct Chunk {
    std::vector<int64_t> Offsets, Sizes;
    unsigned File; ///< index into FileNames
    uint64_t Offset, Length;
    const uint32_t *Crc; ///< the chunk's bytes' CRC-32, set by the file's thread
  };
  struct Tensor {
    DType Type;
    std::vector<int64_t> Shape;
    std::vector<Chunk> Chunks;
  };
  struct Job {
    std::string Pickle; ///< empty: Data is a finished record
    const uint8_t *Data;
    size_t Size;
    std::shared_ptr<const void> Owner;
    uint32_t *Crc; ///< where the file's thread puts the CRC-32 of Data
    std::string JournalHead; ///< the journal line's fields but the place and CRC
    uint64_t At = 0, Length = 0; ///< the record's place in its file
  };
  std::deque<uint32_t> Crcs; ///< stable slots for Job::Crc
  struct OutFile; // a file, its queue and its thread
  /// Picks the least-filled file, reserves \p Length bytes in it, queues the
  /// job; returns (file, offset).
  std::pair<unsigned, uint64_t> enqueue(Job J, uint64_t Length);
  void run(OutFile &F);
  void stop();
  void rethrow();

  std::string Dir;
  std::vector<std::unique_ptr<OutFile>> Files;
  std::vector<std::string> FileNames; ///< this writer's files, then those of addRecords()
  uint64_t MaxPending;
  std::mutex Lock;                 ///< guards Pending, Failure, the queues
  std::condition_variable Drained; ///< signalled as jobs finish
  uint64_t Pending = 0;
  std::exception_ptr Failure;
  bool Finished = false;
  std::map<std::string, Tensor> Tensors;
  std::vector<std::string> Order;
  struct ByteRecord {
    unsigned File;
    uint64_t Offset, Length;
    const uint32_t *Crc;
  };
  std::deque<uint32_t> MergedCrcs; ///< the CRCs of other writers' records
  std::map<std::string, ByteRecord> Bytes;
};

/// torch.save([uint8 tensor 80 02 4E 2E]): the _extra_state payload every
/// Transformer Engine version and the local layers accept (format spec 3.4).
std::string universalExtraStateRecord();

/// torch.save of Megatron-Bridge's train state (8 zero-dimensional tensors).
std::string trainStateArchive();

} // namespace bridge

#endif
