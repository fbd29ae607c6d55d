//===- Sidecar.h - the bridge.json a checkpoint carries ----------*- C++ -*-===//
//
// import writes iter_*/bridge.json: the mapping, both configs, the HF
// tensors it read (file, dtype, shape), the layout and layer spec; export
// and reshard read it back.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_SIDECAR_H
#define BRIDGE_SIDECAR_H

#include "bridge/Config.h"

#include <string>

namespace bridge {

/// Checks a parsed bridge.json (\p Path names it in errors): every field
/// export and reshard read has its type, every file name in hf_tensors is a
/// plain `.safetensors` name of the export's directory, dtypes are known,
/// shapes are non-negative and their sizes do not overflow. Throws Error
/// naming the file and the field ("bridge.json: hf_tensors['x'].file ...").
void checkSidecar(const Json &Side, const std::string &Path);

} // namespace bridge

#endif
