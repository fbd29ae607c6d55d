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

#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace bridge {

class TorchDistWriter {
public:
  /// Writes into \p IterDir (which must exist), records into \p FileName.
  TorchDistWriter(std::string IterDir, std::string FileName = "__0_0.distcp");
  ~TorchDistWriter();

  /// Declares a global tensor; its chunks follow.
  void declareTensor(const std::string &Key, DType Type, std::vector<int64_t> GlobalShape);
  /// One chunk of a declared tensor: \p Data holds the contiguous chunk.
  void addChunk(const std::string &Key, std::vector<int64_t> Offsets, std::vector<int64_t> Sizes,
                const uint8_t *Data, size_t Bytes);
  /// A byte object (an MCore ShardedObject), already serialized.
  void addBytes(const std::string &Key, const std::string &Record);
  /// Checks tiling, writes .metadata, metadata.json and common.pt.
  void finish();
  uint64_t bytesWritten() const { return Offset; }

private:
  struct Chunk {
    std::vector<int64_t> Offsets, Sizes;
    uint64_t Offset, Length;
  };
  struct Tensor {
    DType Type;
    std::vector<int64_t> Shape;
    std::vector<Chunk> Chunks;
  };
  void append(const std::string &Bytes, uint64_t &At);
  std::string Dir, File;
  FILE *Out = nullptr;
  uint64_t Offset = 0;
  std::map<std::string, Tensor> Tensors;
  std::vector<std::string> Order;
  std::map<std::string, std::pair<uint64_t, uint64_t>> Bytes;
};

/// torch.save([uint8 tensor 80 02 4E 2E]): the _extra_state payload every
/// Transformer Engine version and the local layers accept (format spec 3.4).
std::string universalExtraStateRecord();

/// torch.save of Megatron-Bridge's train state (8 zero-dimensional tensors).
std::string trainStateArchive();

} // namespace bridge

#endif
