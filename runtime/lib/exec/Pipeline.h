//===- Pipeline.h - source -> plan -> ops -> sink, the one converter loop -*- C++ -*-===//
//
// Every command that moves tensors is one run of the same pipeline:
//
//   import   HF safetensors    --ops forward-->  torch_dist or legacy files
//   reshard  torch_dist/legacy --(no ops)----->  torch_dist or legacy files
//   export   torch_dist        --ops inverse-->  HF safetensors
//
// A Source says what the model is (mapping, configs, layer spec), lists what
// pass-through rules expand to, checks the plan against what it holds, and
// reads either HF tensors (the ops run forward on them) or Megatron global
// tensors. A Sink takes each planned tensor's result (a global tensor, or
// the HF tensors the inverse gives) and writes its format. runPipeline owns
// what they share: the output directory built aside and renamed into place,
// resume, several processes, converter threads, the memory budget, plan
// order, progress and the summary. A new source or sink (a live model, a
// stream) is one more class here, not a branch in each command.
// Private to runtime/lib/exec.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_LIB_EXEC_PIPELINE_H
#define BRIDGE_LIB_EXEC_PIPELINE_H

#include "Checkpoint.h"
#include "Ops.h"

#include "bridge/Convert.h"
#include "bridge/Plan.h"
#include "bridge/Safetensors.h"

#include <ATen/core/Tensor.h>

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

namespace bridge {

class ProcessGroup;

/// What one conversion converts: the model a source describes, its plan,
/// and the torch_dist keys the planned tensors are grouped in (the order of
/// work: key by key, each key's members in axis order).
struct Conversion {
  const SchemaTable &S;
  const MappingTable *Mapping = nullptr;
  std::vector<Json> Fields; ///< the Megatron config
  Json HFConfig;
  bool LocalSpec = false; ///< keys of the local layer spec, not Transformer Engine's
  /// Export: weights the mapping reads through dequant_fp8_block are
  /// written quantized again (e4m3 and their block scales), not as the
  /// dequantized values.
  bool QuantizeFP8Block = false;
  /// LoRA adapters imported beside the weights: what bridge.json records of
  /// them (null: none).
  Json Adapter;
  Plan P;
  std::vector<DistKey> Keys;

  explicit Conversion(const SchemaTable &S) : S(S) {}
  /// Megatron-Core's MambaModel (hybrid) rather than GPTModel.
  bool hybrid() const;
};

/// The number of elements of a tensor of \p Shape.
inline int64_t elementsOf(const std::vector<int64_t> &Shape) {
  int64_t N = 1;
  for (int64_t D : Shape)
    N *= D;
  return N;
}

/// One unit of work: planned tensor Keys[Key].Members[Member].
struct WorkItem {
  size_t Key, Member;
};

inline const PlannedTensor &plannedOf(const Conversion &C, const WorkItem &It) {
  return C.P.Tensors[C.Keys[It.Key].Members[It.Member]];
}

/// What a converter read for one item: counts for the summary, and the
/// source memory its results may be views of (they own none of it).
struct Reading {
  uint64_t Bytes = 0, Tensors = 0;
  std::vector<const void *> Views;
  bool viewed(const at::Tensor &X) const;
};

class Source {
public:
  virtual ~Source() = default;
  /// HF tensors (the ops run forward from them), or Megatron global tensors.
  virtual bool hfSide() const = 0;
  /// The directory read, as messages and resume.json name it.
  virtual const std::string &dir() const = 0;
  virtual std::string tokenizerDir() const = 0;
  /// Opens the tensor files (after the model and the target layout are
  /// checked, before the plan).
  virtual void open(const Conversion &C) = 0;
  /// What pass-through rules expand to here (List empty: this source lists
  /// none).
  virtual PassThroughLister passThrough() const = 0;
  /// The HF tensors behind this source, which bound the plan (0: unknown).
  virtual uint64_t hfTensorCount() const = 0;
  /// The plan against what the source holds, before anything is written:
  /// alternatives chosen, coverage, shapes.
  virtual void check(Conversion &C) = 0;
  /// The stored keys against the plan's (a Megatron source).
  virtual void checkKeys(const Conversion &) const {}
  /// What export needs to restore the HF checkpoint (bridge.json, before
  /// the target's format and layout are added).
  virtual Json sidecar(const Conversion &C) const = 0;
  /// HF side: tensor \p Name, or expert \p Slice of it (>= 0); undefined
  /// when absent (an optional input).
  virtual at::Tensor hfTensor(const std::string &Name, int64_t Slice, Reading &R) const;
  /// Megatron side: the global tensor of \p It.
  virtual at::Tensor global(const Conversion &C, const WorkItem &It, Reading &R) const;
  /// The bytes \p It reads, for the progress line.
  virtual uint64_t bytesOf(const Conversion &C, const WorkItem &It) const = 0;
  /// The mapped tensors \p It reads, in order, for the read-ahead.
  virtual std::vector<const TensorView *> readsOf(const Conversion &, const WorkItem &) const { return {}; }
};

/// The HF checkpoint in \p Dir; \p LocalSpec: the layer spec to write;
/// \p AdapterDir: an HF PEFT LoRA adapter of it to import too ("": none).
std::unique_ptr<Source> hfSource(const std::string &Dir, Conversion &C, bool LocalSpec,
                                 const std::string &AdapterDir = "");
/// A checkpoint written by import or reshard in \p Dir (torch_dist or
/// legacy, as its bridge.json says), or a legacy one Megatron-LM saved, whose
/// model comes from the HF checkpoint or config.json \p HFDir.
std::unique_ptr<Source> checkpointSource(const std::string &Dir, const std::string &HFDir, Conversion &C);
/// The torch_dist checkpoint in the iteration directory \p Iter whose
/// bridge.json \p Side gave \p C its model (export); \p KeyType is set to
/// tell the dtype it stores a key in.
std::unique_ptr<Source> torchDistSource(const std::string &Iter, Conversion &C, const Json &Side,
                                        std::function<DType(const std::string &)> &KeyType);

/// The tree shape of a rule's postfix op nodes: where each subtree starts,
/// each op's children, and which planned source each source node reads.
struct OpTree {
  std::vector<size_t> Starts;
  std::vector<int> SourceOrdinal; ///< index into PlannedTensor::Sources, -1 for ops

  explicit OpTree(Span<OpNode> Nodes) : Starts(Nodes.Size), SourceOrdinal(Nodes.Size, -1) {
    std::vector<size_t> Stack;
    int NextSource = 0;
    for (size_t I = 0; I < Nodes.Size; ++I) {
      size_t S = I;
      for (unsigned K = 0; K < Nodes[I].NumInputs; ++K) {
        S = Stack.back();
        Stack.pop_back();
      }
      Starts[I] = S;
      Stack.push_back(S);
      if (Nodes[I].IsSource)
        SourceOrdinal[I] = NextSource++;
    }
  }

  /// The inputs of op node \p Node: the NumInputs subtrees right before it.
  std::vector<size_t> children(Span<OpNode> Nodes, size_t Node) const {
    std::vector<size_t> Out(Nodes[Node].NumInputs);
    size_t End = Node;
    for (size_t K = Out.size(); K-- > 0;) {
      Out[K] = End - 1;
      End = Starts[End - 1];
    }
    return Out;
  }
};

/// One HF tensor, or a piece of one, that an inverse chain gives.
struct HFPiece {
  enum Kind { Whole, Expert, Rows } Of = Whole;
  std::string Name;
  at::Tensor Value;
  int64_t Index = 0;        ///< Expert: which expert
  exec::OpParams Params;    ///< Rows: the block's 'rows' parameters
  std::string Where;        ///< the rule, for messages
};

/// The HF tensors an export gives back, from the pieces inverse chains
/// produce: whole tensors as they come, a tensor stacking experts (or made
/// of row blocks) once all its pieces are in, in the source's dtype and
/// shape (a padded vocabulary cut back), a tied copy beside its original.
/// What the source's sidecar \p Side (hf_tensors, alternatives) records is
/// what is given back; the source tensors the mapping ignored go to \p
/// NotExported. Shared by the safetensors sink and the live stream.
class HFAssembler {
public:
  HFAssembler(const Conversion &C, const std::function<DType(const std::string &)> &KeyType, const Json &Side,
              std::string SidePath, std::vector<std::string> &NotExported);
  /// Receives each finished HF tensor, in the dtype to give it.
  using Emit = std::function<void(const std::string &Name, DType Type, const at::Tensor &Value)>;
  void put(std::vector<HFPiece> &Pieces, const Emit &Out);
  /// After the last piece: throws when a tensor is still missing pieces.
  void finish() const;
  /// The dtype the source had \p Name in (what inverses give back).
  DType hfType(const std::string &Name) const;
  /// The dtype HF tensor \p Name is emitted in when produced as \p Produced.
  DType emitType(const std::string &Name, at::ScalarType Produced) const;
  /// HF tensor -> the file of the source that held it.
  const std::map<std::string, std::string> &fileOf() const { return T->FileOf; }
  struct Known {
    DType Type;
    std::vector<int64_t> Shape;
  };
  /// The tensors whose dtype and shape are known before they are produced.
  std::map<std::string, Known> known() const;

private:
  /// What the sidecar records of one HF tensor, as export checks it.
  struct Entry {
    std::optional<std::vector<int64_t>> Shape; ///< none: another layout's, known when produced
    std::optional<DType> SourceType;          ///< the dtype the source had it in
    std::optional<DType> OwnType;             ///< a dequantized weight keeps the dtype its chain gives
    int64_t StackedCount = 0;                 ///< a stacked tensor of unknown shape: its experts
    std::vector<std::string> TieCopies;       ///< tied copies written beside it
  };
  /// Everything worked out from the sidecar, fixed after construction and
  /// shared by the copies an RL loop makes for each export (the table of
  /// thousands of tensors is built once, looked up once per tensor).
  struct Tables {
    std::unordered_map<std::string, Entry> Tensors;
    std::map<std::string, std::string> FileOf;
  };
  struct Pieces {
    at::Tensor Value;
    std::vector<bool> Filled;
    size_t Count = 0;
    const char *What = "";
  };
  const Entry &entry(const std::string &Name) const;
  void emit(const std::string &Name, at::Tensor V, const Emit &Out);
  /// Puts piece \p Index of \p Name where \p SlotOf selects it in the
  /// whole, which \p Make builds on the first piece (with its number of
  /// pieces).
  void putPiece(const std::string &Name, const char *What, size_t Index, const at::Tensor &Piece,
                const std::function<std::pair<at::Tensor, size_t>()> &Make,
                const std::function<at::Tensor(const at::Tensor &)> &SlotOf, const std::string &Where,
                const Emit &Out);
  void stackSlice(const std::string &Name, int64_t Index, const at::Tensor &Slice, const std::string &Where,
                  const Emit &Out);
  void putRows(const std::string &Name, const exec::OpParams &Params, const at::Tensor &Block,
               const std::string &Where, const Emit &Out);

  std::string SidePath;
  std::shared_ptr<const Tables> T;
  std::map<std::string, Pieces> Assembling;
};

/// The config.json an export writes: the mapping's export rules, and the
/// quantization_config of what it quantizes (--quantize).
Json exportedHFConfig(const Conversion &C);

/// A planned tensor's chain backwards, from its Megatron value to the HF
/// tensors (or pieces of them) it was made of, in the chain's order. What
/// does not depend on the value (the op tree, each op's evaluated
/// parameters, its sources and the dtypes the source had them in, the
/// rule's location) is worked out on construction: an RL loop exports the
/// same tensors every step.
class ChainInverse {
public:
  /// \p HFType gives the dtype the source had each HF tensor in.
  ChainInverse(const PlannedTensor &PT, const Conversion &C,
               const std::function<DType(const std::string &)> &HFType);
  std::vector<HFPiece> run(const at::Tensor &Value) const;
  /// The HF tensor the value is, whole and unchanged (a rename), or null.
  const std::string *wholeSource() const {
    return Nodes.back().How == Step::Source ? &Nodes.back().Source : nullptr;
  }

private:
  /// What the inverse does at one node of the chain.
  enum class Step : uint8_t {
    Source,    ///< an HF tensor: the value is it, whole
    Invert,    ///< the op's inverse gives its inputs
    PassFirst, ///< dequantized on import (or passed through): the first input's value
    Expert,    ///< one expert of a stacked HF tensor
    Rows,      ///< a row block of an HF tensor
  };
  struct Node {
    Step How = Step::Source;
    const OpNode *Op = nullptr;
    std::vector<size_t> Children;
    exec::OpParams Params;
    std::vector<DType> InputTypes;
    std::string Source; ///< Source, Expert, Rows: the HF tensor
    int64_t Index = 0;  ///< Expert: which expert
  };
  void prepare(size_t At, const std::function<DType(const std::string &)> &HFType);
  void invert(size_t At, const at::Tensor &V, std::vector<HFPiece> &Out) const;

  const Conversion &C;
  const PlannedTensor &PT;
  exec::OpConfig Cfg;
  std::string Where;
  std::vector<Node> Nodes; ///< by node of the chain; those the inverse reaches
};

/// \p PT's chain backwards once (ChainInverse for a single value).
std::vector<HFPiece> invertChain(const PlannedTensor &PT, const Conversion &C, const at::Tensor &Value,
                                 const std::function<DType(const std::string &)> &HFType);

/// A sink's form of one result, made on a converter thread and handed to
/// put() in plan order.
struct Prepared {
  virtual ~Prepared() = default;
  uint64_t OwnedBytes = 0; ///< memory it holds (not views of the source)
};

class Sink {
public:
  virtual ~Sink() = default;
  /// Takes HF tensors (the ops run backward into them), or global tensors.
  virtual bool hfSide() const = 0;
  /// An interrupted run's output can be finished (--resume).
  virtual bool resumable() const { return false; }
  /// Where the data goes inside the output ("" : the output itself).
  virtual std::string dataDir() const = 0;
  /// Opens the writers in \p Dir; \p Resumed: an interrupted run's files are
  /// there.
  virtual void begin(const Conversion &C, const std::string &Dir, int Rank, bool Resumed) = 0;
  /// Resuming: the items the interrupted run wrote whole are kept (counted
  /// in \p Sum); returns the rest.
  virtual std::vector<WorkItem> keep(const Conversion &, std::vector<WorkItem> Items, Summary &) { return Items; }
  /// HF side: the dtype the source had \p Name in (what inverses give back).
  virtual DType hfType(const std::string &Name) const;
  /// On a converter thread: the result of \p It in the sink's form.
  virtual std::unique_ptr<Prepared> prepare(const Conversion &C, const WorkItem &It, at::Tensor Global,
                                            std::vector<HFPiece> Pieces, const Reading &R) = 0;
  /// In plan order, on one thread; returns the tensors it wrote.
  virtual uint64_t put(const Conversion &C, const WorkItem &It, Prepared &P) = 0;
  /// After the last put: the data is on disk.
  virtual void finishData() = 0;
  /// torch_dist records of this process, for the leader's metadata.
  virtual std::string records() const { return ""; }
  virtual uint64_t bytesWritten() const = 0;
  virtual unsigned numFiles() const = 0;
  /// The leader, after every process's data: metadata and the files beside
  /// the data, into \p Tmp (\p Dir its data directory); \p Others: the other
  /// processes' records().
  virtual void finish(const Conversion &C, const std::string &Tmp, const std::string &Dir,
                      const std::vector<std::string> &Others, bool Resumed) = 0;
};

/// A torch_dist checkpoint at layout \p Par, \p Side the sidecar to write
/// (format and layout added).
std::unique_ptr<Sink> torchDistSink(const Layout &Par, unsigned Writers, uint64_t MemoryBudget, Json Side,
                                    std::string TokenizerFrom);
/// Megatron-LM's legacy per-rank files at layout \p Par.
std::unique_ptr<Sink> legacySink(const Layout &Par, Json Side, std::string TokenizerFrom);
/// HF safetensors as the checkpoint's sidecar \p Side records them (each
/// tensor in the shard it came from), \p SidePath naming it in messages;
/// \p KeyType gives a Megatron key's dtype (a dequantized weight is written
/// in it). The source tensors the mapping ignored, which are not written
/// back, go to \p NotExported.
std::unique_ptr<Sink> safetensorsSink(const Conversion &C, const std::function<DType(const std::string &)> &KeyType,
                                      const Json &Side, const std::string &SidePath, unsigned Writers,
                                      uint64_t MemoryBudget, std::string TokenizerFrom,
                                      std::vector<std::string> &NotExported);

struct PipelineOptions {
  std::string OutDir;
  std::vector<std::string> Inputs; ///< what --out may not touch
  bool Overwrite = false, Quiet = false, Resume = false;
  std::string Device = "cpu";
  unsigned Converters = 4;
  /// Of --memory-budget: the converters' share, and the read-ahead.
  uint64_t MemoryBudget = uint64_t(2) << 30;
  ProcessGroup *Group = nullptr;
  const char *Label = "import"; ///< of the progress line
  /// What is converted, for --resume to tell an interrupted run of the same
  /// (resume.json); asked for where the sink is resumable.
  std::function<Json()> Fingerprint;
  std::chrono::steady_clock::time_point Start;
};

/// Runs \p C from \p Src into \p Snk: forward ops from an HF source, inverse
/// ops into an HF sink, none between Megatron formats.
Summary runPipeline(Source &Src, const Conversion &C, Sink &Snk, const PipelineOptions &O);

/// A planned tensor's chain, forward, from the leaves \p Leaf gives
/// (expert \p Slice >= 0 of a stacked one); ops that compute run on \p
/// Compute when given.
at::Tensor runChain(const PlannedTensor &PT, const std::vector<Json> &Fields, const SchemaTable &S,
                    const std::function<at::Tensor(const std::string &, int64_t Slice)> &Leaf,
                    const at::Device *Compute = nullptr);

/// "\n<count> <What>:" and the first 25 names, one a line ("" when none).
std::string nameList(const char *What, const std::vector<std::string> &Names);

} // namespace bridge

#endif
