//===- FuzzSafetensors.cpp - safetensors headers and shard indexes ------===//
//
// Input: one byte choosing what the bytes are, then the bytes: a
// model.safetensors file, or a model.safetensors.index.json beside two
// valid shards (so index entries can name real and unreal files).
//
//===----------------------------------------------------------------------===//
#include "FuzzUtil.h"

#include "bridge/Config.h"
#include "bridge/Safetensors.h"

#include <cstdint>
#include <cstring>
#include <sys/stat.h>

namespace {

/// A valid shard holding one tensor \p Name of 4 bf16 values.
void writeShard(const std::string &Path, const std::string &Name) {
  std::string Header = "{\"" + Name + "\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,8]}}";
  uint64_t N = Header.size();
  std::string File(reinterpret_cast<const char *>(&N), 8);
  File += Header;
  File += std::string(8, '\x01');
  fuzz::writeBytes(Path, reinterpret_cast<const uint8_t *>(File.data()), File.size());
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *Data, size_t Size) {
  if (Size < 1)
    return 0;
  const std::string &Root = fuzz::scratchDir();
  bool Index = Data[0] % 2;
  std::string Dir = Root + (Index ? "/sharded" : "/single");
  static bool Made = false;
  if (!Made) {
    ::mkdir((Root + "/single").c_str(), 0755);
    ::mkdir((Root + "/sharded").c_str(), 0755);
    writeShard(Root + "/sharded/model-00001-of-00002.safetensors", "a.weight");
    writeShard(Root + "/sharded/model-00002-of-00002.safetensors", "b.weight");
    Made = true;
  }
  fuzz::writeBytes(Dir + (Index ? "/model.safetensors.index.json" : "/model.safetensors"), Data + 1, Size - 1);
  try {
    bridge::SafetensorsCheckpoint Ckpt(Dir);
    uint64_t Sum = 0;
    for (const std::string &N : Ckpt.names())
      if (const bridge::TensorView *V = Ckpt.find(N))
        for (size_t I = 0; I < V->Bytes; ++I)
          Sum += V->Data[I]; // every byte a view claims must be readable
    (void)Sum;
  } catch (const bridge::Error &) {
  }
  return 0;
}
