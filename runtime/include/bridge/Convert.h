//===- Convert.h - import and export, the main jobs --------------*- C++ -*-===//
//
// A torch-free interface: the implementation (runtime/lib/exec) runs the op
// chains with libtorch on the device given here.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_CONVERT_H
#define BRIDGE_CONVERT_H

#include "bridge/Config.h"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace bridge {

/// Parallel layout a checkpoint is prepared for. In torch_dist it decides
/// validation and how chunks are cut (aligned to each rank's slice), not
/// the values.
struct Layout {
  int TP = 1, PP = 1, EP = 1, ETP = 1, VPP = 1;
  /// Explicit first/last pipeline-stage sizes (0 = even split).
  int FirstStageLayers = 0, LastStageLayers = 0;
};

class ProcessGroup;

struct ImportOptions {
  std::string HFDir, OutDir;
  Layout Par;
  std::string Device = "cpu"; ///< "cpu", "cuda", "cuda:1"
  bool Overwrite = false;
  bool Quiet = false;
  /// Key tensors as a model built with the local layer spec (no Transformer
  /// Engine) loads them; default: the TE spec, what production training uses.
  bool LocalSpec = false;
  /// Output files written in parallel, each by its own thread. Fixed rather
  /// than per machine, so the same import gives the same bytes anywhere.
  unsigned Writers = 8;
  /// Bytes of converted chunks that may wait for the writers.
  uint64_t MemoryBudget = uint64_t(2) << 30;
  /// Threads converting tensors (their results are written in plan order,
  /// so the output does not depend on this).
  unsigned Converters = 4;
  /// The processes converting together (torchrun, srun); null: this one
  /// alone. Each converts a contiguous share of the plan, balanced by bytes,
  /// into its own `__<rank>_<k>.distcp` files; rank 0 writes the metadata.
  ProcessGroup *Group = nullptr;
  /// "torch_dist" (default), or "torch": Megatron-LM's legacy per-rank
  /// files mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt (one process, no VPP).
  std::string Format = "torch_dist";
  /// Finish an interrupted import of the same output (`<out>.partial-*`):
  /// its records that still match their CRC-32 are kept, the rest converted.
  bool Resume = false;
  /// An HF PEFT LoRA adapter of the HF checkpoint, written beside the
  /// weights in Megatron-Bridge's LoRA layout (docs/lora.md); "": none.
  std::string AdapterDir = "";
};

struct ExportOptions {
  std::string MegatronDir, OutDir;
  std::string Device = "cpu";
  bool Overwrite = false;
  bool Quiet = false;
  unsigned Writers = 8;                       ///< threads writing tensors
  uint64_t MemoryBudget = uint64_t(2) << 30;  ///< bytes that may wait for them
  unsigned Converters = 4;                    ///< threads inverting tensors
  /// "fp8-block": the weights the mapping reads through dequant_fp8_block
  /// written as 128x128-block e4m3 with weight_scale_inv; "": as converted.
  std::string Quantize;
  /// The checkpoint's LoRA adapters (docs/lora.md): written alone as an HF
  /// PEFT directory, or merged into the weights (W + alpha / dim * B A, in
  /// fp32 on Device). Neither: the weights alone.
  bool AdapterOnly = false, MergeAdapters = false;
  /// The adapters in MegatronDir are a Megatron-Bridge LoRA run's (adapter
  /// keys alone, rank and alpha in its run_config.yaml) on the base
  /// checkpoint BaseDir, which import wrote; "": MegatronDir holds both.
  std::string BaseDir = "";
};

struct Summary {
  std::string Mapping;
  uint64_t TensorsRead = 0, TensorsWritten = 0, BytesRead = 0, BytesWritten = 0;
  double Seconds = 0;
  /// Of Seconds: reading the config, plan and checks (the dry run included);
  /// converting and writing the tensors. The rest is metadata and renaming.
  double PrepareSeconds = 0, DataSeconds = 0;
  unsigned FilesWritten = 0;
  uint64_t PeakDeviceBytes = 0; ///< the caching allocator's peak on the compute GPU (0: none used)
  /// Resumed: tensors an interrupted run wrote that were checked and kept
  /// (not counted in TensorsWritten), and the bytes of their records.
  uint64_t ResumedTensors = 0, ResumedBytes = 0;
};

/// HF checkpoint directory -> Megatron-Core torch_dist checkpoint. Every
/// check (mapping, coverage of both sides, layout divisibility) runs before
/// anything is written; output appears only complete (renamed into place).
Summary runImport(const ImportOptions &O);
/// torch_dist checkpoint written by runImport (in \p FromDir) -> the same
/// tensors at the layout of \p O (O.HFDir unused; its layer spec is the
/// source's): the bytes of runImport at that layout, without going through
/// HF tensors. The same checks of the output and the same processes apply.
Summary runReshard(const ImportOptions &O, const std::string &FromDir);
/// torch_dist checkpoint written by runImport -> HF safetensors, config.json.
Summary runExport(const ExportOptions &O);

/// runImport / runReshard by the processes of a torchrun or srun job
/// (groupEnvironment()), which share the work (one GPU each with --device
/// cuda); by this process alone outside one.
struct GroupSummary {
  Summary Sum;
  int Size = 1;
  bool Leader = true; ///< the process that reports
};
GroupSummary runImportInGroup(ImportOptions O);
GroupSummary runReshardInGroup(ImportOptions O, const std::string &FromDir);

struct VerifyReport {
  uint64_t Checked = 0, Bytes = 0;
  std::vector<std::string> Problems; ///< each names the file and the tensor
};
/// With \p Against empty: re-reads every record of the torch_dist checkpoint
/// in \p Dir and checks it against the CRC-32s its manifest.json took as it
/// was written. Otherwise: checks that the HF checkpoints \p Dir (an export)
/// and \p Against (its source) hold the same tensors, bit for bit.
VerifyReport runVerify(const std::string &Dir, const std::string &Against);

/// An HF config.json, or the config.json of the directory \p Path: a regular
/// file of at most files::kMaxConfigBytes, read by parseJson (errors name it).
Json readConfigJson(const std::string &Path);

/// The mapping that serves an HF config.json (by model_type, then by
/// architectures); throws Error naming the supported model types.
const MappingTable &mappingFor(const Json &HFConfig);
/// Every model_type some compiled mapping serves, comma-separated.
std::string supportedModelTypes();

/// A compiled recipe (recipes/, docs/recipes.md), as `recipe list` shows it.
struct RecipeInfo {
  std::string Name, Source, Model, Mode;
  int Gpus = 0;
  Layout Par;
  double WeightBytes = 0, ActivationBytes = 0; ///< the estimate per GPU
  double Parameters = 0;                       ///< the model's, counted from its config
  double FlopsPerToken = 0; ///< training FLOPs of one token, forward and backward, at the recipe's seq_length
};
std::vector<RecipeInfo> listRecipes();
/// Recipe \p Name as "megatron-bridge-yaml" (a ConfigContainer override) or
/// "megatron-lm-args" (the model's architecture included); \p Checkpoint,
/// when given, is the checkpoint to start from. What a format cannot say
/// goes to \p Notes. Throws Error for an unknown recipe or format.
std::string showRecipe(const std::string &Name, const std::string &Format, const std::string &Checkpoint,
                       std::vector<std::string> &Notes);
/// The layout of recipe \p Name for the HF checkpoint \p HFDir: an error
/// when the checkpoint is of another family, a note in \p Notes when of
/// another size.
Layout recipeLayoutFor(const std::string &Name, const std::string &HFDir, std::vector<std::string> &Notes);

/// Every problem with \p L for a model config, empty when it fits.
std::vector<std::string> checkLayout(const Layout &L, const std::function<int64_t(const char *)> &Field);

} // namespace bridge

#endif
