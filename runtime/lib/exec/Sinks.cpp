//===- Sinks.cpp - where tensors go: torch_dist, legacy, HF safetensors ---===//
//
// A sink cuts each result into its format's pieces on a converter thread
// (prepare) and writes them in plan order (put): torch_dist chunks, one per
// rank slice, to the TorchDistWriter's files; each legacy rank's local
// tensor to its rank file; HF tensors (expert slices and row blocks put
// back together first) into the shard the source had them in. Both
// Megatron formats finish the same checkpoint directory around their data.
//
//===----------------------------------------------------------------------===//
#include "Legacy.h"
#include "Pipeline.h"
#include "Resume.h"

#include "bridge/Files.h"
#include "bridge/LegacyWriter.h"
#include "bridge/Registry.h"
#include "bridge/Sidecar.h"
#include "bridge/StrictJson.h"
#include "bridge/TorchDistWriter.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <optional>
#include <set>

namespace bridge {
namespace {

/// Megatron-Bridge reads run_config.yaml; this holds the model provider's
/// fields and the layout (format spec 4.3, 6.2 item 6).
std::string runConfigYaml(const SchemaTable &S, const std::vector<Json> &Fields, const Layout &L,
                          const std::string &Format) {
  std::string Y =
      "# Written by bridge-run import.\nmodel:\n  _target_: megatron.bridge.models.gpt_provider.GPTModelProvider\n";
  Y += "  tensor_model_parallel_size: " + std::to_string(L.TP) + "\n";
  Y += "  pipeline_model_parallel_size: " + std::to_string(L.PP) + "\n";
  Y += "  expert_model_parallel_size: " + std::to_string(L.EP) + "\n";
  Y += "  expert_tensor_parallel_size: " + std::to_string(L.ETP) + "\n";
  for (uint32_t I = 0; I < S.Fields.Size; ++I) {
    std::string N = S.Fields[I].Name;
    const Json &V = Fields[I];
    if (V.is_null())
      continue;
    if (N == "activation_func")
      Y += "  activation_func:\n    _target_: torch.nn.functional." +
           std::string(V.get<std::string>() == "fast_gelu" ? "gelu" : V.get<std::string>()) + "\n    _call_: false\n";
    else if (N == "params_dtype")
      Y += "  params_dtype:\n    _target_: torch." + V.get<std::string>() + "\n    _call_: false\n";
    else if (N == "qk_layernorm_full_width")
      // Not a GPTModelProvider field (instantiating the provider would fail on
      // it): Megatron-Bridge selects this attention through a layer spec.
      Y += "  # qk_layernorm_full_width: " + V.dump() +
           "  (q/k norms over all heads: needs a layer spec with that attention)\n";
    else
      Y += "  " + N + ": " + V.dump() + "\n";
  }
  Y += "checkpoint:\n  save_optim: false\n  save_rng: false\n  fully_parallel_save: false\n  ckpt_format: " + Format + "\n";
  return Y;
}

/// What both Megatron formats write around their data: the sidecar (what
/// export needs, with this layout), run config, train state, tokenizer, and
/// the tracker last (a directory without it is not a checkpoint).
class MegatronSink : public Sink {
public:
  MegatronSink(const Layout &Par, Json Side, std::string TokenizerFrom, const char *Format)
      : Par(Par), Side(std::move(Side)), TokenizerFrom(std::move(TokenizerFrom)), Format(Format) {}
  bool hfSide() const override { return false; }
  std::string dataDir() const override { return "iter_0000000"; }

protected:
  void finishCheckpoint(const Conversion &C, const std::string &Tmp, const std::string &Iter) {
    Side["checkpoint_format"] = Format;
    Side["layout"] = {{"tp", Par.TP}, {"pp", Par.PP}, {"ep", Par.EP}, {"etp", Par.ETP}, {"vpp", Par.VPP}};
    if (Par.FirstStageLayers || Par.LastStageLayers) {
      Side["layout"]["first_stage_layers"] = Par.FirstStageLayers;
      Side["layout"]["last_stage_layers"] = Par.LastStageLayers;
    }
    files::writeFile(files::join(Iter, "bridge.json"), Side.dump(2) + "\n");
    files::writeFile(files::join(Iter, "run_config.yaml"), runConfigYaml(C.S, C.Fields, Par, Format));
    std::string TrainState = trainStateArchive();
    files::writeFile(files::join(Iter, "train_state.pt"), TrainState);
    copyTokenizerFiles(TokenizerFrom, files::join(Iter, "tokenizer"));
    files::writeFile(files::join(Tmp, "latest_train_state.pt"), TrainState);
    removeResumeFiles(Tmp, Iter);
    files::writeFile(files::join(Tmp, "latest_checkpointed_iteration.txt"), "0");
  }

  Layout Par;
  Json Side;
  std::string TokenizerFrom;
  const char *Format;
};

/// torch_dist: each planned tensor cut into one chunk per rank slice, the
/// layer index a leading offset where the key stacks layers; every module's
/// `_extra_state` after its key's last layer. Records journaled, so an
/// interrupted run can be resumed.
class TorchDistSink final : public MegatronSink {
public:
  TorchDistSink(const Layout &Par, unsigned Writers, uint64_t MemoryBudget, Json Side, std::string TokenizerFrom)
      : MegatronSink(Par, std::move(Side), std::move(TokenizerFrom), "torch_dist"), Writers(Writers),
        MemoryBudget(MemoryBudget) {}
  bool resumable() const override { return true; }

  void begin(const Conversion &, const std::string &Dir, int Rank, bool Resumed) override {
    // What an interrupted run of this conversion left and is still intact.
    if (Resumed)
      Left = readJournals(Dir, Rank);
    W.emplace(Dir, Writers, MemoryBudget, static_cast<unsigned>(Rank), Left.NextFile, /*Journal=*/true);
  }

  std::vector<WorkItem> keep(const Conversion &C, std::vector<WorkItem> Items, Summary &Sum) override {
    std::map<std::pair<std::string, std::vector<int64_t>>, const JournaledRecord *> Chunk;
    std::map<std::string, const JournaledRecord *> Object;
    for (const JournaledRecord &R : Left.Kept)
      if (R.Object)
        Object.emplace(R.Key, &R);
      else
        Chunk.emplace(std::make_pair(R.Key, R.Offsets), &R);
    std::vector<const JournaledRecord *> Adopt;
    std::vector<WorkItem> Rest;
    for (const WorkItem &It : Items) {
      const DistKey &K = C.Keys[It.Key];
      std::vector<const JournaledRecord *> Mine;
      for (const ChunkSpec &Spec : chunksOf(plannedOf(C, It), Par)) {
        std::vector<int64_t> Offsets = K.Prefixes[It.Member], Sizes(K.Prefixes[It.Member].size(), 1);
        Offsets.insert(Offsets.end(), Spec.Offsets.begin(), Spec.Offsets.end());
        Sizes.insert(Sizes.end(), Spec.Sizes.begin(), Spec.Sizes.end());
        auto Found = Chunk.find({K.Key, Offsets});
        if (Found == Chunk.end() || Found->second->Sizes != Sizes || Found->second->Shape != K.GlobalShape) {
          Mine.clear();
          break;
        }
        Mine.push_back(Found->second);
      }
      if (Mine.empty()) {
        Rest.push_back(It);
        continue;
      }
      Adopt.insert(Adopt.end(), Mine.begin(), Mine.end());
      Declared.emplace(K.Key, Mine[0]->Type);
      ++Sum.ResumedTensors;
      for (const JournaledRecord *R : Mine)
        Sum.ResumedBytes += R->Length;
      if (It.Member + 1 == K.Members.size()) {
        for (const std::string &E : extraStateKeys(K, C.hybrid())) {
          if (!ExtraStates.insert(E).second)
            continue;
          if (auto Obj = Object.find(E); Obj != Object.end())
            Adopt.push_back(Obj->second);
          else // the tensor was kept, its extra state not yet written
            W->addBytes(E, universalExtraStateRecord());
        }
      }
    }
    // Adopted before this run's own records, in which a kept key's other
    // layers may join it.
    W->addRecords(recordsJson(Adopt));
    return Rest;
  }

  struct Chunks : Prepared {
    DType Type = DType::U8;
    std::vector<std::pair<ChunkSpec, at::Tensor>> Parts;
  };

  std::unique_ptr<Prepared> prepare(const Conversion &C, const WorkItem &It, at::Tensor Global,
                                    std::vector<HFPiece>, const Reading &R) override {
    auto Out = std::make_unique<Chunks>();
    Out->Type = exec::fromScalarType(Global.scalar_type());
    for (const ChunkSpec &Spec : chunksOf(plannedOf(C, It), Par)) {
      at::Tensor Part = Global;
      for (size_t D = 0; D < Spec.Offsets.size(); ++D)
        Part = Part.narrow(static_cast<int64_t>(D), Spec.Offsets[D], Spec.Sizes[D]);
      Part = Part.contiguous();
      if (!R.viewed(Part))
        Out->OwnedBytes += Part.nbytes();
      Out->Parts.push_back({Spec, std::move(Part)});
    }
    return Out;
  }

  uint64_t put(const Conversion &C, const WorkItem &It, Prepared &P) override {
    Chunks &Ch = static_cast<Chunks &>(P);
    const DistKey &K = C.Keys[It.Key];
    size_t Layer = It.Member;
    if (auto [Was, First] = Declared.emplace(K.Key, Ch.Type); First) { // this process's first layer of it
      W->declareTensor(K.Key, Ch.Type, K.GlobalShape);
    } else if (Ch.Type != Was->second) {
      // One key holds one dtype: its layers must agree.
      const Plan &Pl = C.P;
      throw Error(describe(Pl.Tensors[K.Members[Layer]].Rule->Loc) + ": error: '" + Pl.Tensors[K.Members[Layer]].Name +
                  "' comes out as " + std::string(torchName(Ch.Type)) + " but '" + Pl.Tensors[K.Members[0]].Name +
                  "', stored in the same key '" + K.Key + "', as " + std::string(torchName(Was->second)));
    }
    for (auto &[Spec, Part] : Ch.Parts) {
      // The writer's thread holds the chunk (a view of the mapped source
      // file when no op changed it) until its bytes are on disk.
      std::vector<int64_t> Offsets = K.Prefixes[Layer], Sizes(K.Prefixes[Layer].size(), 1);
      Offsets.insert(Offsets.end(), Spec.Offsets.begin(), Spec.Offsets.end());
      Sizes.insert(Sizes.end(), Spec.Sizes.begin(), Spec.Sizes.end());
      W->addChunk(K.Key, Offsets, Sizes, static_cast<const uint8_t *>(Part.data_ptr()), Part.nbytes(),
                  std::make_shared<at::Tensor>(Part));
    }
    if (Layer + 1 == K.Members.size())
      for (const std::string &E : extraStateKeys(K, C.hybrid()))
        if (ExtraStates.insert(E).second)
          W->addBytes(E, universalExtraStateRecord());
    return 1;
  }

  void finishData() override { W->finishData(); }
  std::string records() const override { return W->records(); }
  uint64_t bytesWritten() const override { return W->bytesWritten(); }
  unsigned numFiles() const override { return W->numFiles(); }

  void finish(const Conversion &C, const std::string &Tmp, const std::string &Iter,
              const std::vector<std::string> &Others, bool Resumed) override {
    for (const std::string &R : Others)
      W->addRecords(R);
    W->finishMetadata();
    if (Resumed) {
      // Files of the interrupted run none of whose records were kept.
      const std::vector<std::string> &Used = W->fileNames();
      for (const std::string &N : files::list(Iter))
        if (N.size() > 7 && N.compare(N.size() - 7, 7, ".distcp") == 0 &&
            std::find(Used.begin(), Used.end(), N) == Used.end())
          std::remove(files::join(Iter, N).c_str());
    }
    finishCheckpoint(C, Tmp, Iter);
  }

private:
  unsigned Writers;
  uint64_t MemoryBudget;
  Journals Left;
  std::optional<TorchDistWriter> W;
  std::map<std::string, DType> Declared; ///< the keys this process has records of, and their dtype
  std::set<std::string> ExtraStates;
};

/// Megatron-LM's legacy format: a planned tensor cut into its ranks' local
/// tensors, named with the layer index local to its stage and the expert
/// index local to its EP rank; written in one pass by one process.
class LegacySink final : public MegatronSink {
public:
  LegacySink(const Layout &Par, Json Side, std::string TokenizerFrom)
      : MegatronSink(Par, std::move(Side), std::move(TokenizerFrom), "torch") {}

  void begin(const Conversion &C, const std::string &Dir, int, bool) override {
    W.emplace(Dir, Par.TP, Par.PP, Par.EP);
    Target.emplace(C.S, C.Fields, Par, C.LocalSpec);
    Target->learnParts(C.P);
    Conv = &C;
    this->Dir = Dir;
  }

  /// One rank's local tensor (undefined: None, for a Transformer Engine
  /// module's `_extra_state`).
  struct Piece {
    int T, P, E;
    std::string Name;
    at::Tensor Value;
    int PartIndex = -1, PartCount = 0; ///< a part of the parameter Name (LegacyLayout::Place)
  };
  struct Pieces : Prepared {
    std::vector<Piece> Of;
  };

  std::unique_ptr<Prepared> prepare(const Conversion &C, const WorkItem &It, at::Tensor Global,
                                    std::vector<HFPiece>, const Reading &R) override {
    const PlannedTensor &PT = plannedOf(C, It);
    LegacyLayout::Place At = Target->place(PT);
    std::vector<at::Tensor> ByRank = Target->cut(PT, std::move(Global));
    auto Out = std::make_unique<Pieces>();
    auto Put = [&](int P, const std::string &N, bool None) {
      for (int E = 0; E < Par.EP; ++E)
        if (At.ExpertRank < 0 || E == At.ExpertRank)
          for (int T = 0; T < Par.TP; ++T)
            Out->Of.push_back({T, P, E, N, None ? at::Tensor() : ByRank[static_cast<size_t>(T)],
                               None ? -1 : At.PartIndex, At.PartCount});
    };
    Put(At.Stage, At.Name, false);
    // With PP > 1 the last stage allocates the tied output layer too.
    if (Target->tiedCopy() && At.Name == "embedding.word_embeddings.weight")
      Put(Par.PP - 1, "output_layer.weight", false);
    // Transformer Engine modules carry an `_extra_state` (None loads as
    // "no FP8 state"), as import writes for torch_dist.
    if (std::string Extra = Target->extraState(At.Name); !Extra.empty())
      Put(At.Stage, Extra, true);
    for (const Piece &Pc : Out->Of)
      if (Pc.Value.defined() && !R.viewed(Pc.Value))
        Out->OwnedBytes += Pc.Value.nbytes();
    return Out;
  }

  uint64_t put(const Conversion &, const WorkItem &, Prepared &P) override {
    // Each rank's local tensor goes to its file now (one thread: the files'
    // bytes follow the plan order).
    for (const Piece &Pc : static_cast<Pieces &>(P).Of) {
      if (!Pc.Value.defined()) { // one per module, however many of its tensors
        if (NonesWritten.insert({Pc.T, Pc.P, Pc.E, Pc.Name}).second)
          W->addNone(Pc.T, Pc.P, Pc.E, Pc.Name);
        continue;
      }
      if (Pc.PartIndex < 0) {
        add(Pc.T, Pc.P, Pc.E, Pc.Name, Pc.Value);
        continue;
      }
      // A part: kept (a copy: the piece's bytes may be the source's) until
      // every part of its parameter on this rank is in, then written whole.
      auto &Held = PartsHeld[{Pc.T, Pc.P, Pc.E, Pc.Name}];
      Held.resize(static_cast<size_t>(Pc.PartCount));
      Held[static_cast<size_t>(Pc.PartIndex)] = Pc.Value.contiguous().clone();
      if (std::all_of(Held.begin(), Held.end(), [](const at::Tensor &T) { return T.defined(); })) {
        add(Pc.T, Pc.P, Pc.E, Pc.Name, at::cat(Held, 0));
        PartsHeld.erase({Pc.T, Pc.P, Pc.E, Pc.Name});
      }
    }
    return 1;
  }

  void add(int T, int P, int E, const std::string &Name, const at::Tensor &Value) {
    std::vector<int64_t> Shape(Value.sizes().begin(), Value.sizes().end());
    W->addTensor(T, P, E, Name, exec::fromScalarType(Value.scalar_type()), Shape, Value.data_ptr(), Value.nbytes());
  }

  void finishData() override {
    if (!PartsHeld.empty())
      throw Error("error: internal: parameter '" + std::get<3>(PartsHeld.begin()->first) +
                  "' was left with some of its parts unwritten");
    W->finish(Target->args(Conv->S, Conv->Fields));
    files::writeFile(files::join(Dir, "manifest.json"), W->manifest().dump(1) + "\n");
  }
  uint64_t bytesWritten() const override { return W->bytesWritten(); }
  unsigned numFiles() const override { return static_cast<unsigned>(W->numFiles()); }
  void finish(const Conversion &C, const std::string &Tmp, const std::string &Iter, const std::vector<std::string> &,
              bool) override {
    finishCheckpoint(C, Tmp, Iter);
  }

private:
  std::optional<LegacyWriter> W;
  std::optional<LegacyLayout> Target;
  const Conversion *Conv = nullptr;
  std::string Dir;
  std::set<std::tuple<int, int, int, std::string>> NonesWritten;
  std::map<std::tuple<int, int, int, std::string>, std::vector<at::Tensor>> PartsHeld;
};

} // namespace

std::unique_ptr<Sink> torchDistSink(const Layout &Par, unsigned Writers, uint64_t MemoryBudget, Json Side,
                                    std::string TokenizerFrom) {
  return std::make_unique<TorchDistSink>(Par, Writers, MemoryBudget, std::move(Side), std::move(TokenizerFrom));
}

std::unique_ptr<Sink> legacySink(const Layout &Par, Json Side, std::string TokenizerFrom) {
  return std::make_unique<LegacySink>(Par, std::move(Side), std::move(TokenizerFrom));
}

} // namespace bridge

namespace bridge {

Json exportedHFConfig(const Conversion &C) {
  Json Cfg = exportConfig(*C.Mapping, C.S, C.Fields, &C.HFConfig);
  if (C.QuantizeFP8Block)
    Cfg["quantization_config"] = {{"activation_scheme", "dynamic"},
                                  {"fmt", "e4m3"},
                                  {"quant_method", "fp8"},
                                  {"weight_block_size", {128, 128}}};
  return Cfg;
}

HFAssembler::HFAssembler(const Conversion &C, const std::function<DType(const std::string &)> &KeyType,
                         const Json &Side, std::string SidePath, std::vector<std::string> &NotExported)
    : SidePath(std::move(SidePath)) {
  // Worked out on a tree of the sidecar's hf_tensors (the ordered Json it
  // is read as looks up linearly), then kept as the table export reads.
  nlohmann::json HFTensors(Side.at("hf_tensors"));
  std::map<std::string, int64_t> StackedCount;
  std::map<std::string, DType> OwnType;
  // A tensor imported from another of its rule's source layouts (a
  // quantized release) is written in the first layout: its tensors replace
  // those read, in the same file, with the shape and dtype the inverse
  // produces (null shape: known when produced; a stacked tensor counts its
  // experts).
  std::set<std::string> Replaced;
  const Json Chosen = Side.value("alternatives", Json::object());
  for (const PlannedTensor &PT : C.P.Tensors) {
    size_t A = Chosen.value(PT.LocalName, size_t{0});
    if (A == 0)
      continue;
    if (A >= PT.Alternatives.size())
      throw Error("error: " + this->SidePath + " names source layout " + std::to_string(A) + " for '" +
                  PT.LocalName + "', which its rule does not have");
    const SourceChain &Read = PT.Alternatives[A], &First = PT.Alternatives[0];
    std::string File;
    for (const std::string &Src : Read.Sources)
      if (HFTensors.contains(Src)) {
        File = HFTensors.at(Src).at("file").get<std::string>();
        Replaced.insert(Src);
      }
    for (size_t K = 0; K < First.Sources.size(); ++K) {
      const std::string &Src = First.Sources[K];
      if (First.SourceOptional[K])
        continue;
      if (!HFTensors.contains(Src))
        HFTensors[Src] = {{"file", File}, {"dtype", nullptr}, {"shape", nullptr}};
      if (First.SourceSlice[K] >= 0)
        StackedCount[Src] = std::max(StackedCount[Src], First.SourceSlice[K] + 1);
    }
  }
  for (const std::string &R : Replaced)
    HFTensors.erase(R);
  // Ops with an optional input (dequantization with its scale) were
  // applied when the source had that input: export then writes the op's
  // result under its first input's name and dtype of the result, and not
  // the scale.
  std::set<std::string> Dropped;
  for (const DistKey &K : C.Keys) {
    for (size_t Member : K.Members) {
      const SourceChain &Ch = C.P.Tensors[Member].Alternatives[0];
      const Span<OpNode> &Nodes = Ch.Nodes;
      OpTree Tree(Nodes);
      for (size_t I = 0; I < Nodes.Size; ++I) {
        if (Nodes[I].IsSource)
          continue;
        std::vector<size_t> Children = Tree.children(Nodes, I);
        if (C.QuantizeFP8Block && Nodes[I].Kind == Op::DequantFP8Block && Nodes[Children[0]].IsSource &&
            Nodes[Children[1]].IsSource) {
          // Written quantized: the weight in e4m3 beside its block scales,
          // in the weight's file, as they are produced.
          const std::string &W = Ch.Sources[Tree.SourceOrdinal[Children[0]]];
          const std::string &Sc = Ch.Sources[Tree.SourceOrdinal[Children[1]]];
          if (HFTensors.contains(W)) {
            std::string File = HFTensors.at(W).at("file").get<std::string>();
            HFTensors[W] = {{"file", File}, {"dtype", nullptr}, {"shape", nullptr}};
            HFTensors[Sc] = {{"file", File}, {"dtype", nullptr}, {"shape", nullptr}};
          }
          continue;
        }
        bool Applied = false;
        for (size_t Ci : Children)
          if (Nodes[Ci].IsSource && Nodes[Ci].OptionalInput && HFTensors.contains(Ch.Sources[Tree.SourceOrdinal[Ci]])) {
            Applied = true;
            Dropped.insert(Ch.Sources[Tree.SourceOrdinal[Ci]]);
          }
        if (Applied && Nodes[Children[0]].IsSource)
          OwnType[Ch.Sources[Tree.SourceOrdinal[Children[0]]]] = KeyType(K.Key);
      }
    }
  }
  // What export writes: the source's tensors, except those import ignored.
  auto Out = std::make_shared<Tables>();
  std::set<std::string> Ignored(C.P.IgnoredPatterns.begin(), C.P.IgnoredPatterns.end());
  for (const std::string &D : Dropped)
    Ignored.insert(D);
  Out->Tensors.reserve(HFTensors.size());
  for (auto It = HFTensors.begin(); It != HFTensors.end(); ++It) {
    Entry &E = Out->Tensors[It.key()];
    const nlohmann::json &Shape = It->at("shape"), &Type = It->at("dtype");
    if (!Shape.is_null())
      E.Shape = Shape.get<std::vector<int64_t>>();
    if (!Type.is_null())
      E.SourceType = *dtypeFromSafetensors(Type.get<std::string>());
    if (auto Own = OwnType.find(It.key()); Own != OwnType.end())
      E.OwnType = Own->second;
    if (auto N = StackedCount.find(It.key()); N != StackedCount.end())
      E.StackedCount = N->second;
    if (Ignored.count(It.key()))
      NotExported.push_back(It.key());
    else
      Out->FileOf[It.key()] = It->at("file").get<std::string>();
  }
  for (auto &[Copy, Of] : C.P.Ties)
    if (Out->FileOf.count(Copy))
      if (auto E = Out->Tensors.find(Of); E != Out->Tensors.end())
        E->second.TieCopies.push_back(Copy);
  T = std::move(Out);
}

std::map<std::string, HFAssembler::Known> HFAssembler::known() const {
  std::map<std::string, Known> Out;
  for (auto &[Name, File] : T->FileOf) {
    const Entry &E = entry(Name);
    if (!E.Shape)
      continue;
    Out[Name] = {E.OwnType ? *E.OwnType : *E.SourceType, *E.Shape};
  }
  return Out;
}

const HFAssembler::Entry &HFAssembler::entry(const std::string &Name) const {
  auto It = T->Tensors.find(Name);
  if (It == T->Tensors.end())
    throw Error("error: " + SidePath + " records no HF tensor '" + Name +
                "' (its hf_tensors list the tensors import read); this checkpoint was not imported from the "
                "HF layout it now holds");
  return It->second;
}

DType HFAssembler::hfType(const std::string &Name) const {
  const Entry &E = entry(Name);
  if (!E.SourceType)
    throw Error("error: " + SidePath + " records no dtype for HF tensor '" + Name + "'");
  return *E.SourceType;
}

DType HFAssembler::emitType(const std::string &Name, at::ScalarType Produced) const {
  const Entry &E = entry(Name);
  // Another layout's tensor, or one whose dtype the chain sets: as produced.
  return !E.Shape || E.OwnType ? exec::fromScalarType(Produced) : *E.SourceType;
}

void HFAssembler::put(std::vector<HFPiece> &Pieces, const Emit &Out) {
  for (HFPiece &Pc : Pieces)
    switch (Pc.Of) {
    case HFPiece::Whole:
      emit(Pc.Name, Pc.Value, Out);
      break;
    case HFPiece::Expert:
      stackSlice(Pc.Name, Pc.Index, Pc.Value, Pc.Where, Out);
      break;
    case HFPiece::Rows:
      putRows(Pc.Name, Pc.Params, Pc.Value, Pc.Where, Out);
      break;
    }
}

void HFAssembler::finish() const {
  if (!Assembling.empty()) {
    const auto &[Name, P] = *Assembling.begin();
    throw Error("error: export of '" + Name + "' is missing pieces (" + P.What + "): " +
                std::to_string(P.Filled.size() - P.Count) + " of " + std::to_string(P.Filled.size()) +
                " were never produced");
  }
}

void HFAssembler::emit(const std::string &Name, at::Tensor V, const Emit &Out) {
  const Entry &E = entry(Name);
  const DType Type = emitType(Name, V.scalar_type());
  if (E.Shape) {
    const std::vector<int64_t> &Want = *E.Shape;
    // A vocabulary padded for training comes back to the source's rows.
    if (V.dim() >= 1 && !Want.empty() && V.size(0) > Want[0])
      V = V.narrow(0, 0, Want[0]);
    if (!std::equal(V.sizes().begin(), V.sizes().end(), Want.begin(), Want.end()))
      throw Error("error: export of '" + Name + "' gives a tensor of another shape than the source's");
  }
  // Copies first, then the original: the order the writer has always had.
  for (const std::string &CopyName : E.TieCopies)
    Out(CopyName, Type, V);
  Out(Name, Type, V);
}

void HFAssembler::putPiece(const std::string &Name, const char *What, size_t Index, const at::Tensor &Piece,
                           const std::function<std::pair<at::Tensor, size_t>()> &Make,
                           const std::function<at::Tensor(const at::Tensor &)> &SlotOf, const std::string &Where,
                           const Emit &Out) {
  Pieces &P = Assembling[Name];
  if (!P.Value.defined()) {
    auto [Whole, Count] = Make();
    P.Value = Whole;
    P.Filled.assign(Count, false);
    P.What = What;
  }
  if (Index >= P.Filled.size() || P.Filled[Index])
    throw Error(Where + ": error: " + What + " " + std::to_string(Index) + " of '" + Name +
                "' is outside it or written twice");
  at::Tensor Slot = SlotOf(P.Value);
  if (Slot.sizes() != Piece.sizes())
    throw Error(Where + ": error: " + What + " " + std::to_string(Index) + " of '" + Name + "' is " +
                exec::shapeText(Piece.sizes()) + ", its place in the source's tensor " +
                exec::shapeText(Slot.sizes()));
  Slot.copy_(Piece);
  P.Filled[Index] = true;
  if (++P.Count == P.Filled.size()) {
    at::Tensor Whole = P.Value;
    Assembling.erase(Name);
    emit(Name, Whole, Out);
  }
}

void HFAssembler::stackSlice(const std::string &Name, int64_t Index, const at::Tensor &Slice,
                             const std::string &Where, const Emit &Out) {
  auto Make = [&]() -> std::pair<at::Tensor, size_t> {
    const Entry &E = entry(Name);
    std::vector<int64_t> Want = E.Shape ? *E.Shape : std::vector<int64_t>(Slice.sizes().begin(), Slice.sizes().end());
    if (!E.Shape)
      Want.insert(Want.begin(), E.StackedCount);
    if (Want.empty())
      throw Error(Where + ": error: '" + Name + "' of the source has no expert axis");
    return {at::empty(Want, Slice.options()), static_cast<size_t>(Want[0])};
  };
  putPiece(Name, "expert", static_cast<size_t>(Index), Slice, Make, // negative: out of range
           [&](const at::Tensor &Whole) { return Whole.select(0, Index); }, Where, Out);
}

void HFAssembler::putRows(const std::string &Name, const exec::OpParams &Params, const at::Tensor &Block,
                          const std::string &Where, const Emit &Out) {
  const exec::RowBlockSpec Spec = exec::rowBlock(Params, Where);
  const size_t Blocks = Params.at("sizes").size();
  auto Make = [&]() -> std::pair<at::Tensor, size_t> {
    std::vector<int64_t> Shape(Block.sizes().begin(), Block.sizes().end());
    if (Shape.empty())
      throw Error(Where + ": error: a row block of '" + Name + "' has no rows");
    Shape[0] = Spec.Groups * Spec.Period;
    return {at::empty(Shape, Block.options()), Blocks};
  };
  // The piece takes the slot's shape ([groups, rows, ...] when grouped).
  putPiece(Name, "row block", static_cast<size_t>(Params.at("index").get<int64_t>()), Spec.grouped(Block), Make,
           [&](const at::Tensor &Whole) { return Spec.slot(Whole); }, Where, Out);
}

namespace {

/// HF safetensors, as the checkpoint's sidecar records its source: each
/// tensor in the shard file it came from, in its dtype and shape (a
/// vocabulary padded for training cut back), so a round trip reproduces the
/// source bit for bit; then config.json through the export rules.
class SafetensorsSink final : public Sink {
public:
  SafetensorsSink(const Conversion &C, const std::function<DType(const std::string &)> &KeyType, const Json &Side,
                  std::string SidePath, unsigned Writers, uint64_t MemoryBudget, std::string TokenizerFrom,
                  std::vector<std::string> &NotExported)
      : HF(C, KeyType, Side, std::move(SidePath), NotExported), Sharded(Side.value("hf_sharded", false)),
        Writers(Writers), MemoryBudget(MemoryBudget), TokenizerFrom(std::move(TokenizerFrom)) {}

  bool hfSide() const override { return true; }
  std::string dataDir() const override { return ""; }

  void begin(const Conversion &, const std::string &Dir, int, bool) override {
    // Files whose every tensor keeps the source's dtype and shape are laid
    // out now and written tensor by tensor, in parallel, as they come.
    std::map<std::string, TensorLayout> Known;
    for (auto &[Name, K] : HF.known())
      Known[Name] = {K.Type, K.Shape};
    W.emplace(Dir, HF.fileOf(), Sharded, std::move(Known), Writers, MemoryBudget);
  }

  DType hfType(const std::string &Name) const override { return HF.hfType(Name); }

  struct Tensors : Prepared {
    std::vector<HFPiece> Of;
  };

  std::unique_ptr<Prepared> prepare(const Conversion &, const WorkItem &, at::Tensor, std::vector<HFPiece> Pieces,
                                    const Reading &R) override {
    auto Out = std::make_unique<Tensors>();
    for (const HFPiece &P : Pieces)
      if (!R.viewed(P.Value))
        Out->OwnedBytes += P.Value.nbytes();
    Out->Of = std::move(Pieces);
    return Out;
  }

  uint64_t put(const Conversion &, const WorkItem &, Prepared &P) override {
    uint64_t Before = Written;
    HF.put(static_cast<Tensors &>(P).Of, [&](const std::string &Name, DType Type, const at::Tensor &V) {
      add(Name, Type, V);
    });
    return Written - Before;
  }

  void finishData() override {
    HF.finish();
    W->finish();
  }
  uint64_t bytesWritten() const override { return W->bytesWritten(); }
  unsigned numFiles() const override { return 0; }

  void finish(const Conversion &C, const std::string &Tmp, const std::string &, const std::vector<std::string> &,
              bool) override {
    // Python's NaN and Infinity literals as the source wrote them.
    files::writeFile(files::join(Tmp, "config.json"), dumpPythonJson(exportedHFConfig(C), 2) + "\n");
    // Checksums taken as the tensors were written, for `bridge-run verify`.
    Json Manifest = {{"format", "safetensors"}, {"tensors", Json::object()}};
    for (const auto &[Name, Crc] : W->checksums())
      Manifest["tensors"][Name] = {{"file", HF.fileOf().at(Name)}, {"crc32", Crc}};
    files::writeFile(files::join(Tmp, "manifest.json"), Manifest.dump(1) + "\n");
    copyTokenizerFiles(TokenizerFrom, Tmp);
  }

private:
  void add(const std::string &Name, DType Type, const at::Tensor &V) {
    at::Tensor Host = V.to(exec::toScalarType(Type)).contiguous().cpu();
    std::vector<int64_t> Shape(Host.sizes().begin(), Host.sizes().end());
    TensorToWrite TW{Name, Type, Shape, {}};
    // The writer holds the tensor until its bytes are on disk.
    TW.Data = static_cast<const uint8_t *>(Host.data_ptr());
    TW.Size = Host.nbytes();
    TW.Owner = std::make_shared<at::Tensor>(Host);
    W->add(std::move(TW));
    ++Written;
  }

  HFAssembler HF;
  bool Sharded;
  unsigned Writers;
  uint64_t MemoryBudget;
  std::string TokenizerFrom;
  std::optional<SafetensorsWriter> W;
  uint64_t Written = 0;
};

} // namespace

std::unique_ptr<Sink> safetensorsSink(const Conversion &C, const std::function<DType(const std::string &)> &KeyType,
                                      const Json &Side, const std::string &SidePath, unsigned Writers,
                                      uint64_t MemoryBudget, std::string TokenizerFrom,
                                      std::vector<std::string> &NotExported) {
  return std::make_unique<SafetensorsSink>(C, KeyType, Side, SidePath, Writers, MemoryBudget,
                                           std::move(TokenizerFrom), NotExported);
}

} // namespace bridge
