//===- Live.h - the live bridge: a running Megatron-Core model as source and sink -*- C++ -*-===//
//
// The pipeline's pieces run against the parameters of a model in memory
// instead of files:
//
//   load     HF safetensors --ops forward--> this rank's slice --> param.copy_
//   export   local params --gather (TP/ETP, EP, PP)--> global --ops inverse--> HF tensors
//
// A LiveModel is one rank's view: its parameters (named as the model's
// state_dict names them, with layer indices made global), the layout, its
// coordinates, and where the parameters it does not hold live (their
// pipeline stage). Where each planned tensor lives and how a TP rank's
// slice is cut are the legacy format's rules (Legacy.h): a legacy rank file
// is a state_dict, so the two agree by construction.
//
// Collectives go through the Group interface, which the Python extension
// implements over the job's torch.distributed process groups (NCCL or
// Gloo); every rank of a group calls them in the same order. Export packs
// each bucket's tensors into one flat byte buffer per collective.
// Private to runtime/lib/exec and the Python extension.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_LIB_EXEC_LIVE_H
#define BRIDGE_LIB_EXEC_LIVE_H

#include "Legacy.h"
#include "Pipeline.h"

#include <ATen/core/Tensor.h>

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <unordered_map>
#include <string>
#include <utility>
#include <vector>

namespace bridge::live {

/// One process group of the job, as the live bridge uses it.
class Group {
public:
  virtual ~Group() = default;
  virtual int size() const = 0;
  virtual int rank() const = 0;
  /// Every rank's \p Bytes (one-dimensional, uint8, the same size on every
  /// rank), in group rank order.
  virtual std::vector<at::Tensor> allGather(const at::Tensor &Bytes) = 0;
  /// \p Bytes from group rank \p Root into every rank's \p Bytes.
  virtual void broadcast(at::Tensor &Bytes, int Root) = 0;
};

/// The HF checkpoint a live model is loaded from and exported as: its
/// mapping, Megatron config, plan and mapped tensors.
class HFModel {
public:
  /// \p Adapters: the LoRA adapters the live model carries (Megatron-
  /// Bridge's LoRA), planned beside their weights (docs/lora.md); null: none.
  explicit HFModel(const std::string &Dir, const AdapterSpec *Adapters = nullptr);
  const Conversion &conversion() const { return C; }
  const std::string &dir() const { return Dir; }
  /// The Megatron-Core config (`bridge-run config`'s "megatron").
  Json megatronConfig() const;
  /// An HF tensor as a view of the mapped file (nothing is read until it
  /// is used); expert \p Slice of a stacked one when >= 0; undefined when
  /// the checkpoint lacks it.
  at::Tensor hfTensor(const std::string &Name, int64_t Slice) const;
  const Json &sidecar() const { return Side; }

private:
  Conversion C;
  std::string Dir;
  std::unique_ptr<Source> Src;
  Json Side;
};

/// Which rank of each group this process is.
struct Coordinates {
  int TP = 0, PP = 0, EP = 0, ETP = 0;
};

/// A parameter another pipeline stage holds: its stage and dtype, which
/// every rank needs to receive it.
struct Remote {
  int Stage = 0;
  at::ScalarType Type = at::kFloat;
};

/// What an export does with the model's LoRA adapters.
enum class AdapterExport {
  Without, ///< the weights alone
  Merged,  ///< the weights with their adapters merged in: W + alpha/dim * B A, in fp32
  Only,    ///< the adapters alone, as HF PEFT's lora_A / lora_B per HF module
};

struct ExportOptions {
  uint64_t BucketBytes = uint64_t(256) << 20;
  bool ToCPU = false;
  AdapterExport Adapters = AdapterExport::Without;
  /// This rank gets the stream's tensors; a rank that does not still takes
  /// part in every collective.
  bool Receive = true;
};

class ExportStream;

class LiveModel {
public:
  /// \p Params: this rank's parameters and persistent buffers, by name with
  /// global layer indices and local expert indices (as the model's
  /// state_dict names experts); \p Elsewhere: the parameters of the other
  /// stages of this rank's pipeline. Checks that they are exactly what the
  /// mapping gives this rank, with this rank's shapes, before anything is
  /// written; errors name the parameter.
  LiveModel(std::shared_ptr<const HFModel> Model, const Layout &L, Coordinates At, bool LocalSpec,
            std::vector<std::pair<std::string, at::Tensor>> Params, std::map<std::string, Remote> Elsewhere);

  /// Fills every parameter of this rank in place with its slice of the HF
  /// checkpoint (ops on the parameter's device when it is a GPU). At most
  /// \p MemoryBudget bytes of tensors are in flight at once beyond the one
  /// being converted (a single larger one still goes, alone).
  void load(uint64_t MemoryBudget = kDefaultLoadBudget);
  /// 1 GiB: Llama-3.1-8B's fused gate/up (448 MiB of temporaries) loads
  /// two at a time rather than alone; on an H100 the load took 0.58 s with
  /// it and 0.96 s with 256 MiB (bench/results/2026-12-07-h100-live.md).
  static constexpr uint64_t kDefaultLoadBudget = uint64_t(1) << 30;
  /// The model as HF tensors, bucket by bucket; every rank of the model
  /// calls next() in lockstep.
  std::unique_ptr<ExportStream> exportHF(Group *TP, Group *PP, Group *EP, Group *ETP, ExportOptions O);
  /// The names of this rank's parameters the mapping fills, in plan order.
  std::vector<std::string> names() const;
  /// Bytes the last load() read from the mapped HF files.
  uint64_t bytesRead() const { return BytesRead; }
  /// Every parameter given still has the storage, shape and dtype it had
  /// here (a `param.data = ...` swap breaks the views this model cut), so
  /// the model can serve another export.
  bool unchanged() const;

private:
  friend class ExportStream;
  /// Planned tensors sharing one live name: one (dense) or one per EP rank
  /// (an expert's local index), all on one stage.
  struct ExportSlot {
    std::vector<size_t> Members; ///< planned tensors, by EP rank
    int Stage;
    bool Expert;
    at::ScalarType Type;
    uint64_t Bytes;  ///< global bytes of all members
    at::Tensor Local; ///< this rank's slice of its member (undefined on other stages)
  };
  /// The export's slots in plan order: worked out on the first export and
  /// kept (an RL loop exports every step).
  const std::vector<ExportSlot> &exportSlots();
  /// What every export assembles HF tensors with, before its first piece:
  /// built once (the sidecar's tensor table) and copied per export.
  const HFAssembler &exportAssembler();
  /// Planned tensor \p Planned's chain backwards, prepared on its first
  /// export and kept.
  const ChainInverse &inverseOf(size_t Planned);
  /// A planned tensor this rank holds (its slice in Param).
  struct Held {
    size_t Planned;
    at::Tensor Param;
  };
  std::string liveName(const PlannedTensor &PT) const;
  int tpRankOf(const PlannedTensor &PT) const;
  /// The shape of this rank's slice of planned tensor \p Planned.
  std::vector<int64_t> localShape(size_t Planned) const;
  /// Views of the parameters the mapping writes in parts ('<name>.<part>':
  /// Mamba's in_proj and conv1d), one per part, added to ByName (or the
  /// parts to Elsewhere when another stage holds the parameter); a
  /// parameter its parts do not fill goes to \p WrongShape. Returns the
  /// parameters so composed.
  std::vector<std::string> viewParts(std::vector<std::string> &WrongShape);
  /// The ops of \p PT's chain that apply to what the checkpoint holds.
  std::vector<Op> appliedOps(const PlannedTensor &PT) const;
  /// The chain only moves whole rows, and the rank needs only some of its
  /// sources' rows (its slice is cut from the result, or a row block).
  bool movesRows(const PlannedTensor &PT) const;
  /// This rank's slice of \p PT from its sources' own rows only (undefined
  /// when the chain turns out not to be a row permutation).
  at::Tensor ownRows(const PlannedTensor &PT) const;

  std::shared_ptr<const HFModel> Model;
  Layout L;
  Coordinates At;
  bool LocalSpec;
  std::optional<LegacyLayout> Cuts;
  std::vector<Held> Mine;                 ///< in plan order
  std::map<std::string, at::Tensor> ByName; ///< this rank's parameters
  std::map<std::string, Remote> Elsewhere;
  at::Tensor TiedCopy;                    ///< output_layer.weight, a copy of the embedding
  std::optional<size_t> TiedFrom;         ///< the embedding's planned tensor
  mutable std::atomic<uint64_t> BytesRead{0};
  /// The parameters given, as they were: see unchanged().
  struct Given {
    at::Tensor T;
    const void *Data;
    std::vector<int64_t> Sizes;
    at::ScalarType Type;
  };
  std::vector<Given> Inputs;
  std::optional<std::vector<ExportSlot>> Slots;
  std::optional<HFAssembler> Assembler;
  std::vector<std::unique_ptr<ChainInverse>> Inverses; ///< by planned tensor
};

/// Export, one bucket at a time: the planned tensors of one pipeline stage,
/// gathered over TP (ETP for experts), then EP, then broadcast over PP, and
/// run backwards into HF tensors.
class ExportStream {
public:
  ExportStream(LiveModel &M, Group *TP, Group *PP, Group *EP, Group *ETP, ExportOptions O);
  /// The next finished HF tensors; std::nullopt after the last bucket.
  std::optional<std::vector<std::pair<std::string, at::Tensor>>> next();
  /// Most bytes one bucket held on this rank (gathered and global), for
  /// the benchmark's memory accounting.
  uint64_t peakBucketBytes() const { return PeakBytes; }
  /// The whole stream written as an HF checkpoint in \p OutDir by the
  /// runtime's safetensors writers (\p Writers threads): the source's shard
  /// files and index, config.json from the config map, manifest.json, the
  /// source's tokenizer files; built aside and renamed into place, with the
  /// checks `bridge-run export --out` makes (\p Overwrite). Returns the
  /// tensors written. Only the receiving rank calls it; the others drain().
  uint64_t save(const std::string &OutDir, bool Overwrite, unsigned Writers);
  /// Takes part in every remaining bucket's collectives, keeping nothing.
  void drain();

private:
  using Slot = LiveModel::ExportSlot;
  LiveModel &M;
  Group *TP, *PP, *EP, *ETP;
  ExportOptions O;
  const std::vector<Slot> &AllSlots;
  /// The slots this export streams, in order: the weights, the adapters
  /// (Only), or the weights each after its adapters (Merged).
  std::vector<const Slot *> Order;
  const Slot &slot(size_t I) const { return *Order[I]; }
  /// Merged: the gathered adapter matrices waiting for their weight, by
  /// planned tensor, and each weight's (A, B) planned tensors.
  std::map<size_t, at::Tensor> AdapterValues;
  std::map<size_t, std::pair<size_t, size_t>> AdaptersOf;
  /// Small tensors held whole whose HF dtype is not the model's (a bf16
  /// checkpoint's norms kept in fp32 by the model), converted together by
  /// the first next(): one concatenation and one cast per pair of dtypes
  /// instead of a kernel launch each. By planned tensor.
  void convertSmallAhead();
  std::unordered_map<size_t, at::Tensor> Converted;
  size_t Next = 0;
  HFAssembler HF;
  uint64_t PeakBytes = 0;
};

} // namespace bridge::live

#endif
