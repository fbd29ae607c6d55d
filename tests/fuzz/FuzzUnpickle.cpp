//===- FuzzUnpickle.cpp - the restricted unpickler and torch.save reader ===//
//
// Input: one byte choosing the reader, then the bytes: a raw pickle with the
// DCP metadata globals, or a torch.save zip archive (legacy rank files and
// .distcp records are such archives).
//
//===----------------------------------------------------------------------===//
#include "bridge/Config.h"
#include "bridge/Unpickle.h"

#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *Data, size_t Size) {
  if (Size < 1)
    return 0;
  std::string_view Bytes(reinterpret_cast<const char *>(Data + 1), Size - 1);
  try {
    if (Data[0] % 2 == 0) {
      bridge::PyValuePtr V = bridge::unpickle(Bytes, bridge::DcpMetadataGlobals, "fuzz.pkl");
      (void)V->repr();
    } else {
      bridge::PyValuePtr V = bridge::readTorchSave(Bytes, "fuzz.pt", bridge::TorchSaveGlobals, /*Borrow=*/Data[0] & 2);
      (void)V->repr();
    }
  } catch (const bridge::Error &) {
  }
  return 0;
}
