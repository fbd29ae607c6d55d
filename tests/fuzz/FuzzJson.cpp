//===- FuzzJson.cpp - the one JSON reader --------------------------------===//
//
// Input: any text. It is read as both JSON flavours the runtime uses (the
// std::map one of safetensors headers and indexes, the ordered one of
// config.json and bridge.json): an Error or a value, never a crash, and the
// value written back and read again is the same value (depth limit,
// duplicate keys and Python's float literals included).
//
//===----------------------------------------------------------------------===//
#include "bridge/Error.h"
#include "bridge/StrictJson.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdlib>

namespace {
template <class JsonT> void roundTrip(const std::string &Text) {
  JsonT J;
  try {
    J = bridge::parseJson<JsonT>(Text, "input", "the input");
  } catch (const bridge::Error &) {
    return;
  }
  std::string Back = bridge::dumpPythonJson(J, -1);
  JsonT Again = bridge::parseJson<JsonT>(Back, "written back", "the input");
  if (Again != J)
    std::abort();
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *Data, size_t Size) {
  std::string Text(reinterpret_cast<const char *>(Data), Size);
  roundTrip<nlohmann::json>(Text);
  roundTrip<nlohmann::ordered_json>(Text);
  return 0;
}
