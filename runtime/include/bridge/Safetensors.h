//===- Safetensors.h - safetensors checkpoints, read and written --*- C++ -*-===//
//
// Reading maps each file read-only and validates the whole header before any
// tensor is used: header length within the file, JSON without duplicate keys,
// known dtypes, shapes that match byte lengths, offsets inside the data area
// and not overlapping. A sharded checkpoint is read through
// model.safetensors.index.json, whose file names must stay inside the
// checkpoint directory. Every error names the file and the tensor.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_SAFETENSORS_H
#define BRIDGE_SAFETENSORS_H

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

struct TensorView {
  std::string Name;
  DType Type;
  std::vector<int64_t> Shape;
  const uint8_t *Data = nullptr; ///< into the mapping; valid while the file is open
  size_t Bytes = 0;
  std::string File;              ///< the file it lives in (for messages)
  int64_t numel() const;
};

/// Asks the kernel to start reading \p V's bytes from storage now
/// (MADV_WILLNEED on its pages), so that a later read of the mapping finds
/// them in memory. A hint: errors are ignored.
void prefetch(const TensorView &V);

/// One mapped .safetensors file.
class SafetensorsFile {
public:
  /// Maps and validates \p Path; throws bridge::Error.
  explicit SafetensorsFile(const std::string &Path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile &) = delete;
  SafetensorsFile &operator=(const SafetensorsFile &) = delete;

  const std::string &path() const { return Path; }
  const std::map<std::string, TensorView> &tensors() const { return Tensors; }
  const std::map<std::string, std::string> &metadata() const { return Metadata; }

private:
  std::string Path;
  void *Map = nullptr;
  size_t Size = 0;
  std::map<std::string, TensorView> Tensors;
  std::map<std::string, std::string> Metadata;
};

/// A checkpoint directory: model.safetensors, or the shards named by
/// model.safetensors.index.json (each tensor in exactly the file it names).
class SafetensorsCheckpoint {
public:
  explicit SafetensorsCheckpoint(const std::string &Dir);
  /// Null when absent.
  const TensorView *find(const std::string &Name) const;
  std::vector<std::string> names() const;
  /// Source file of each tensor, relative to the directory.
  const std::map<std::string, std::string> &fileOf() const { return FileOf; }
  bool sharded() const { return Sharded; }
  /// Adds a tensor held in memory beside the files (a LoRA adapter's
  /// matrices as the import reads them, docs/lora.md), kept alive by \p
  /// Owner; find() and names() then list it, added() tells it apart.
  void add(TensorView V, std::shared_ptr<const void> Owner);
  bool added(const std::string &Name) const { return Added.count(Name) != 0; }

private:
  std::map<std::string, TensorView> Added;
  std::vector<std::shared_ptr<const void>> Owners;
  std::vector<std::unique_ptr<SafetensorsFile>> Files;
  std::map<std::string, const TensorView *> ByName;
  std::map<std::string, std::string> FileOf;
  bool Sharded = false;
};

/// A tensor to write: name, type, shape and its bytes (little-endian,
/// contiguous).
struct TensorToWrite {
  std::string Name;
  DType Type;
  std::vector<int64_t> Shape;
  std::vector<uint8_t> Bytes;
  /// Instead of Bytes: bytes that live elsewhere, kept alive by Owner until
  /// written (no copy).
  const uint8_t *Data = nullptr;
  size_t Size = 0;
  std::shared_ptr<const void> Owner;

  const uint8_t *data() const { return Data ? Data : Bytes.data(); }
  size_t size() const { return Data ? Size : Bytes.size(); }
};

/// A tensor's dtype and shape, known before its bytes.
struct TensorLayout {
  DType Type;
  std::vector<int64_t> Shape;
};

/// Writes one .safetensors file (header padded to 8 bytes, tensors in name
/// order) through a temporary file renamed into place.
void writeSafetensors(const std::string &Path, const std::vector<const TensorToWrite *> &Tensors,
                      const std::map<std::string, std::string> &Metadata = {});

/// Writes a checkpoint directory, each tensor into the file the source
/// checkpoint had it in (\p FileOf). A file whose every tensor has a layout
/// in \p Known is laid out up front (header, name order) and each tensor is
/// written at its offset by a pool of \p Threads as it arrives, so memory
/// holds only what waits for the pool (at most \p MaxPendingBytes, or one
/// tensor). Other files are held until their last tensor arrives. Files are
/// written as '<name>.tmp' and renamed by finish(), which also fails, naming
/// them, if expected tensors never came, and writes
/// model.safetensors.index.json when \p WriteIndex.
class SafetensorsWriter {
public:
  SafetensorsWriter(std::string Dir, std::map<std::string, std::string> FileOf, bool WriteIndex,
                    std::map<std::string, TensorLayout> Known = {}, unsigned Threads = 8,
                    uint64_t MaxPendingBytes = uint64_t(2) << 30);
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter &) = delete;
  SafetensorsWriter &operator=(const SafetensorsWriter &) = delete;
  void add(TensorToWrite T);
  void finish();
  uint64_t bytesWritten() const { return Written; }
  /// After finish(): the CRC-32 of each tensor's bytes, taken as written.
  const std::map<std::string, uint32_t> &checksums() const { return Crcs; }

private:
  struct Laid; // a file laid out up front
  struct Job {
    int Fd;
    uint64_t Offset;
    TensorToWrite T;
    std::string Path;
  };
  void flush(const std::string &File);
  void run();
  void stopThreads();
  std::string Dir;
  std::map<std::string, std::string> FileOf;
  bool WriteIndex;
  std::map<std::string, size_t> Remaining; ///< per file
  std::map<std::string, std::vector<TensorToWrite>> Pending;
  std::map<std::string, std::unique_ptr<Laid>> LaidOut;
  uint64_t Written = 0, TotalTensorBytes = 0;
  std::map<std::string, uint32_t> Crcs; ///< guarded by Lock
  // The pool.
  std::vector<std::thread> Threads;
  std::mutex Lock;
  std::condition_variable Ready, Drained;
  std::deque<Job> Queue;
  uint64_t QueuedBytes = 0, MaxPending;
  bool Stop = false;
  std::exception_ptr Failure;
};

} // namespace bridge

#endif
