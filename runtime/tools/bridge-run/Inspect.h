//===- Inspect.h - bridge-run inspect: what a new HF family needs --*- C++ -*-===//
//
// `bridge-run inspect --hf DIR` reads an HF config.json (and, when present,
// the safetensors headers or the index's weight_map) and says which shipped
// mapping serves it and whether every tensor is read; for a family no
// mapping serves, the config fields no mapping reads, the tensor names
// grouped into patterns with the shipped rules that read each, and, with
// --draft, a first .bridge file to fill in. Reads no weights; needs no
// libtorch.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_RUN_INSPECT_H
#define BRIDGE_RUN_INSPECT_H

#include <string>
#include <vector>

namespace bridge {

struct InspectOptions {
  std::string HF;    ///< a checkpoint directory or its config.json
  std::string Draft; ///< where to write a draft .bridge file ("": none)
  /// Mappings treated as absent (for testing drafts against a family that
  /// is shipped): neither served by nor compared against.
  std::vector<std::string> IgnoreMappings;
  bool AsJson = false;
};

/// Runs the command; returns the exit code. Throws bridge::Error for an
/// unreadable input.
int runInspect(const InspectOptions &O);

} // namespace bridge

#endif
