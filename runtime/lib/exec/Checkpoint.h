//===- Checkpoint.h - how planned tensors map onto torch_dist -----*- C++ -*-===//
//
// Megatron-Core's torch_dist layout rules (format spec section 3): keys are
// the Transformer Engine names with the layer index taken out and made a
// leading axis when the layer stack is homogeneous; each rank's slice of a
// tensor is one chunk; every module gets an _extra_state object. Shared by
// import, export and plan. Private to runtime/lib/exec.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_LIB_EXEC_CHECKPOINT_H
#define BRIDGE_LIB_EXEC_CHECKPOINT_H

#include "bridge/Config.h"
#include "bridge/Convert.h"
#include "bridge/Layout.h"

#include <functional>
#include <string>
#include <vector>

namespace bridge {

/// One torch_dist key and the planned tensors stored in it.
struct DistKey {
  std::string Key;
  std::vector<int64_t> GlobalShape;
  std::vector<size_t> Members;                 ///< indices into Plan::Tensors, in axis order
  std::vector<std::vector<int64_t>> Prefixes;  ///< leading offsets of each member
  std::vector<int64_t> Axes;                   ///< sizes of the leading (stacked) axes
};


Json readJsonFile(const std::string &Path);

/// Whether decoder layers are stacked on a leading axis (Megatron-Core does
/// unless the stack mixes dense and MoE layers).
bool layersStacked(const SchemaTable &S, const std::vector<Json> &Fields);
std::vector<DistKey> groupByKey(const Plan &P, const SchemaTable &S, const std::vector<Json> &Fields,
                                bool LocalSpec = false);
std::vector<std::string> extraStateKeys(const DistKey &K);
void copyTokenizerFiles(const std::string &From, const std::string &To);

} // namespace bridge

#endif
