//===- FuzzSidecar.cpp - a checkpoint's bridge.json as export reads it ---===//
//
// Input: the text of a bridge.json. It is read and checked as export and
// reshard read it, then its configs go the way export's do: the Megatron
// config back to fields, the plan expanded over it (bounded by the HF
// tensors it records) and the HF config.json written back. Whatever the
// fields, their types, depth and counts: an Error or a result, never a
// crash, a hang or memory out of proportion to the input.
//
//===----------------------------------------------------------------------===//
#include "bridge/Config.h"
#include "bridge/Plan.h"
#include "bridge/Registry.h"
#include "bridge/Sidecar.h"
#include "bridge/StrictJson.h"

#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *Data, size_t Size) {
  using namespace bridge;
  try {
    Json Side = parseJson<Json>(std::string(reinterpret_cast<const char *>(Data), Size), "bridge.json",
                                "bridge.json");
    checkSidecar(Side, "bridge.json");
    const MappingTable *T = nullptr;
    for (const RegistryEntry &E : allMappings())
      if (Side["mapping"] == E.Name)
        T = E.Table;
    if (!T)
      return 0;
    std::vector<Json> Fields = configFromJson(schema(), Side["megatron_config"], "bridge.json");
    uint64_t HFTensors = Side.contains("hf_tensors") ? Side["hf_tensors"].size() : 0;
    Plan P = expandPlan(*T, schema(), Fields, /*UseTENames=*/true, nullptr, HFTensors ? HFTensors : 1);
    (void)P;
    (void)dumpPythonJson(exportConfig(*T, schema(), Fields, &Side["hf_config"]), 2);
  } catch (const Error &) {
  }
  return 0;
}
