//===- Plan.h - every Megatron tensor of a concrete model ---------*- C++ -*-===//
//
// The plan: a mapping's weight rules expanded over the layers and experts
// of one config into concrete tensors, each with its HF sources, its op
// chain, its global shape and its parallel style; coverage (every tensor
// the schema requires produced once) is checked as it is built. Import,
// export, reshard and `plan` all start from it; where each tensor lives
// under a layout (stage, rank slices) is Layout.h.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_PLAN_H
#define BRIDGE_PLAN_H

#include "bridge/Config.h"

#include <array>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace bridge {

/// One way to make a Megatron tensor: an op tree over named HF tensors.
struct SourceChain {
  Span<OpNode> Nodes;             ///< postfix
  std::string Recipe;             ///< e.g. "qkv(a, b, c)"
  std::vector<std::string> Sources; ///< HF tensors read, in op order
  std::vector<bool> SourceOptional; ///< parallel to Sources
  /// Parallel to Sources: the expert index when the source is read through
  /// 'expert' (one slice of a stacked HF tensor), else -1.
  std::vector<int64_t> SourceSlice;
  /// Parallel to Sources: for a source read through 'rows' (one block of
  /// consecutive row blocks), the rows it takes of each of its row groups
  /// (first row, count, groups); else (-1, 0, 1). Coverage then requires the
  /// blocks read of a tensor to tile it.
  std::vector<std::array<int64_t, 3>> SourceRows;

  /// Appends a source read whole (the other parallel vectors' defaults).
  void addSource(std::string Name, bool Optional) {
    Sources.push_back(std::move(Name));
    SourceOptional.push_back(Optional);
    SourceSlice.push_back(-1);
    SourceRows.push_back({-1, 0, 1});
  }
};

/// One Megatron tensor of a concrete model and where it comes from.
struct PlannedTensor {
  std::string Name;      ///< the name written (TE spelling by default)
  std::string LocalName; ///< the local-spec spelling
  std::vector<int64_t> Shape;
  Style ParallelStyle;
  bool Expert;
  /// The rule's alternative source layouts ('a | b'), in rule order.
  std::vector<SourceChain> Alternatives;
  /// The one read: the first until chooseAlternatives picks by what the
  /// checkpoint holds. Export always writes the first.
  size_t Chosen = 0;
  // The chosen chain, for short.
  const SourceChain &chain() const { return Alternatives[Chosen]; }
  const std::string &recipe() const { return chain().Recipe; }
  const std::vector<std::string> &sources() const { return chain().Sources; }
  bool Optional;
  /// Made by a pass-through rule ('a.** <- b.**'): a tensor kept as the
  /// checkpoint has it (name under the prefix, shape, dtype), replicated.
  bool PassThrough = false;
  const TensorRule *Rule;
  const ParamInfo *Param;         ///< the schema declaration that applies
  std::vector<int64_t> Captures;  ///< values of Param->Captures
  std::vector<int64_t> LoopVars;  ///< values of Rule->Loops
  /// A LoRA adapter tensor: the index in the plan of the weight it adapts,
  /// and which of its two matrices it is ('A': linear_in, 'B': linear_out).
  int64_t AdapterOf = -1;
  char AdapterMatrix = 0;
};

/// LoRA adapters on a model (docs/lora.md): Megatron-Bridge's LoRA, one
/// pair linear_in (A, [Dim, in]) and linear_out (B, [out, Dim]) beside each
/// adapted linear module, whose output gains (Alpha / Dim) * B A x.
struct AdapterSpec {
  int64_t Dim = 0;
  double Alpha = 0;
  /// The Megatron modules adapted, by their last name ('linear_qkv',
  /// 'linear_proj', 'linear_fc1', ...), as Megatron-Bridge's target_modules.
  std::vector<std::string> Targets;
};

struct DerivedParams; // the schema declarations adapters get (Adapters.cpp)

struct Plan {
  std::vector<PlannedTensor> Tensors;
  std::vector<std::string> IgnoredPatterns; ///< concrete names that may be absent
  std::vector<std::pair<std::string, std::string>> Ties; ///< HF copy -> HF original
  /// Adapters added by addAdapters; their tensors' Param and chains point
  /// into Derived.
  AdapterSpec Adapters;
  std::shared_ptr<const DerivedParams> Derived;
};

/// The Megatron module a weight belongs to when LoRA can adapt it ('linear_qkv'
/// for '...self_attention.linear_qkv.weight'), else "" (norms, biases, the
/// embedding, routed experts, weights whose rule does more than move rows).
std::string adapterModuleOf(const PlannedTensor &PT);

/// The HF tensor that holds HF module \p Module's LoRA matrix \p Matrix
/// ('A' or 'B'): PEFT's name without its 'base_model.model.' prefix.
std::string hfAdapterName(const std::string &Module, char Matrix);
/// The HF module of HF weight \p Weight ('model.layers.0.self_attn.q_proj'
/// of '....q_proj.weight'), or "" when it is not a '.weight'.
std::string hfModuleOf(const std::string &Weight);

/// Adds, for every weight of \p P (its alternatives chosen) in a module \p
/// A targets, its adapter's two tensors: A from the A matrices of the HF
/// modules the weight is made of (one op 'shared': a fused module holds one
/// A), B through the weight's own op chain over their B matrices, so an
/// adapter is split and fused exactly as its weight is. Keys, shapes and
/// tensor-parallel styles are Megatron-Bridge's (adapterStyle).
void addAdapters(Plan &P, const AdapterSpec &A);

/// How an adapter matrix is cut over tensor-parallel ranks, from its
/// weight's style (Megatron-Bridge's ParallelLinearAdapter): beside a
/// column-parallel weight A splits its rank rows and B follows the weight;
/// beside a row-parallel one A splits its input columns and B its rows;
/// beside a weight whole on every rank both split their rows.
Style adapterStyle(Style Weight, char Matrix);

/// Whether a pattern or a schema key names every tensor under a prefix
/// ('visual.**', a pass-through module).
bool isPassThroughName(std::string_view Name);

/// The tensors a checkpoint holds under a prefix, with their shapes: what a
/// pass-through rule ('a.** <- b.**') expands to. Import lists the HF
/// checkpoint under the rule's source prefix (BySource); export and reshard
/// list the Megatron checkpoint under its target prefix.
struct PassThroughLister {
  bool BySource = true;
  std::function<std::vector<std::pair<std::string, std::vector<int64_t>>>(const std::string &Prefix)> List;
};

class SafetensorsCheckpoint;
class TorchDistCheckpoint;
/// What a pass-through rule expands to in an HF checkpoint (the tensors under
/// its source prefix) and in a torch_dist one (the keys under its target
/// prefix). The checkpoints must outlive the listers.
PassThroughLister passThroughOf(const SafetensorsCheckpoint &HF);
PassThroughLister passThroughOf(const TorchDistCheckpoint &Megatron);

/// The most any range of the schema (layers, experts) may count. Published
/// models have at most 126 layers and 512 experts; a config declaring more
/// than this is refused before anything proportional to it is allocated.
inline constexpr int64_t kMaxRangeCount = 4096;
/// The most Megatron tensors a plan from config.json alone may hold
/// (DeepSeek-V3 plans 31,015; Ling-1T about 61,000). Each costs about 10 KB.
inline constexpr uint64_t kMaxPlannedTensors = uint64_t(1) << 17;
/// With a checkpoint at hand, a plan may hold at most this many Megatron
/// tensors per source tensor, plus kPlannedTensorsSlack (a fused expert
/// tensor of gpt-oss-120b becomes 128; over a whole model at most about 20).
inline constexpr uint64_t kPlannedTensorsPerSource = 64, kPlannedTensorsSlack = 4096;

/// Expands every rule over its loops and checks that each tensor the schema
/// requires for this config is produced exactly once. \p UseTENames picks the
/// spelling of written names. Without \p Lister a pass-through rule stays
/// one entry named by its pattern, with no shape (a plan from config.json
/// alone). \p SourceTensors is the number of HF tensors the source holds (0:
/// config.json alone): the declared counts are checked against it before
/// the plan is built (a layer has at least one HF tensor), and the plan's
/// size is bounded by it (kPlannedTensorsPerSource), so a config that
/// declares a million layers for a checkpoint of two fails at once.
Plan expandPlan(const MappingTable &T, const SchemaTable &S, const std::vector<Json> &Fields, bool UseTENames = true,
                const PassThroughLister *Lister = nullptr, uint64_t SourceTensors = 0);

/// Picks, for every tensor with alternative source layouts, the first whose
/// non-optional HF tensors are all \p Present. When none is complete the
/// first stays chosen (its missing tensors are then reported).
void chooseAlternatives(Plan &P, const std::function<bool(const std::string &)> &Present);

/// The HF side of coverage: every tensor of a checkpoint read once (whole,
/// every expert of a stack, or row blocks that tile it), tied or ignored.
struct HFCoverage {
  std::vector<std::string> Missing; ///< read by the plan, absent: "name  (for Megatron name[; or instead ...])"
  std::vector<std::string> Unread;  ///< held, and no rule reads, ties or ignores it
};
/// \p P (its alternatives chosen) against a checkpoint holding \p Names;
/// \p ShapeOf gives a held tensor's shape, or null when only its name is
/// known (an index without its shards: the expert and row-block counts
/// are then not checked). Throws, naming the rule, for a plan that reads a
/// tensor twice, whole and in parts, or in parts that do not cover it.
HFCoverage hfCoverage(const Plan &P, const std::vector<std::string> &Names,
                      const std::function<const std::vector<int64_t> *(const std::string &)> &ShapeOf);

} // namespace bridge

#endif
