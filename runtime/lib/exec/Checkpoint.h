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
#include "bridge/Plan.h"

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
  bool PassThrough = false;                    ///< a tensor of a module kept as HF has it
};


/// A JSON file the tool wrote (bridge.json, manifest.json, resume.json):
/// a regular file of at most files::kMaxSidecarBytes, read by parseJson.
Json readJsonFile(const std::string &Path);
/// A checkpoint's bridge.json, read by readJsonFile and checked: every
/// field export and reshard read has its type, every file name in
/// hf_tensors is a plain `.safetensors` name of the export's directory,
/// shapes are non-negative and their sizes do not overflow. Errors name the
/// file and the field ("bridge.json: hf_tensors['x'].file ...").
Json readSidecar(const std::string &Path);

/// The iteration directory of \p Dir: Dir itself (it holds .metadata), or
/// the one its tracker file names.
std::string iterationDir(const std::string &Dir);
/// The compiled mapping of that name (a checkpoint's bridge.json names it).
const MappingTable &mappingNamed(const std::string &Name);

/// A progress line on a terminal (stderr), redrawn at most five times a
/// second: tensors and bytes done, the rate, the time left.
class Progress {
public:
  Progress(const char *What, size_t Tensors, uint64_t Bytes, bool Enabled);
  void step(uint64_t Bytes);
  /// Ends the line (the summary follows on stdout).
  void finish();

private:
  void draw();
  const char *What;
  size_t Tensors, Done = 0;
  uint64_t Bytes, BytesDone = 0;
  bool Enabled;
  double Start, Last = -1;
};

/// Whether decoder layers are stacked on a leading axis (Megatron-Core does
/// unless the stack mixes dense and MoE layers).
bool layersStacked(const SchemaTable &S, const std::vector<Json> &Fields);
std::vector<DistKey> groupByKey(const Plan &P, const SchemaTable &S, const std::vector<Json> &Fields,
                                bool LocalSpec = false);
std::vector<std::string> extraStateKeys(const DistKey &K, bool HybridModel);
/// The tokenizer files of the checkpoint directory \p From, each checked as
/// the shards are (inside the directory, a regular file, within
/// files::kMaxTokenizerBytes): called before anything is written.
std::vector<std::string> tokenizerFiles(const std::string &From);
/// Copies them into \p To (made when there is one).
void copyTokenizerFiles(const std::string &From, const std::string &To);

} // namespace bridge

#endif
