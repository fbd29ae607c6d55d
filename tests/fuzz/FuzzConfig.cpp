//===- FuzzConfig.cpp - config.json through every shipped mapping -------===//
//
// Input: the text of a config.json. It is parsed as import reads it,
// and every shipped mapping's config rules run on it, as import does after
// choosing one: whatever the values, an Error or a config, never a crash.
//
//===----------------------------------------------------------------------===//
#include "bridge/Config.h"
#include "bridge/Registry.h"
#include "bridge/StrictJson.h"

#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *Data, size_t Size) {
  bridge::Json HF;
  try { // the reader import uses
    HF = bridge::parseJson<bridge::Json>(std::string(reinterpret_cast<const char *>(Data), Size), "config.json",
                                         "config.json");
  } catch (const bridge::Error &) {
    return 0;
  }
  for (const bridge::RegistryEntry &E : bridge::allMappings()) {
    try {
      std::vector<bridge::Json> Fields = bridge::importConfig(*E.Table, bridge::schema(), HF);
      (void)bridge::configToJson(bridge::schema(), Fields).dump();
    } catch (const bridge::Error &) {
    }
  }
  return 0;
}
