//===- Sources.cpp - where tensors come from: HF, torch_dist, legacy ------===//
//
// Each source describes its model (mapping, configs, layer spec), lists what
// pass-through rules expand to, checks the plan against what it holds, and
// reads: HF safetensors give HF tensors (views of the mapped shards, one
// expert of a stacked tensor alone), a torch_dist checkpoint gives each
// planned tensor's global value (a view where one chunk holds it), legacy
// rank files give it put together from each TP rank's local tensor.
//
//===----------------------------------------------------------------------===//
#include "Legacy.h"
#include "Peft.h"
#include "Pipeline.h"

#include "bridge/Files.h"
#include "bridge/Registry.h"
#include "bridge/Sidecar.h"
#include "bridge/TorchDistReader.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

namespace bridge {
namespace {

/// Both sides of coverage (every HF tensor consumed once or ignored, every
/// Megatron tensor produced), then a dry run of every op chain on meta
/// tensors: shapes before any byte is written.
void checkAgainstHF(const std::string &HFDir, const Conversion &Cv, const SafetensorsCheckpoint &Ckpt) {
  const MappingTable &T = *Cv.Mapping;
  const Plan &P = Cv.P;
  for (auto &[Copy, Of] : P.Ties) {
    const TensorView *C = Ckpt.find(Copy), *F = Ckpt.find(Of);
    if (C && (!F || C->Bytes != F->Bytes || C->Type != F->Type || std::memcmp(C->Data, F->Data, C->Bytes) != 0))
      throw Error("error: " + C->File + ": '" + Copy + "' differs from '" + Of +
                  "', but the config ties them (tie_word_embeddings); the checkpoint contradicts its config");
  }
  HFCoverage Cov = hfCoverage(P, Ckpt.names(), [&](const std::string &Name) -> const std::vector<int64_t> * {
    const TensorView *V = Ckpt.find(Name);
    return V ? &V->Shape : nullptr;
  });
  if (!Cov.Missing.empty() || !Cov.Unread.empty()) {
    std::string M =
        "error: the checkpoint in " + HFDir + " does not match mapping '" + T.Name + "' (" + T.SourceFile + "):";
    M += nameList("HF tensor(s) the mapping reads are missing", Cov.Missing);
    M += nameList("HF tensor(s) no rule reads or ignores", Cov.Unread);
    throw Error(M);
  }

  // -- dry run on meta tensors: shapes before any byte is written -------------------------
  for (const PlannedTensor &PT : P.Tensors) {
    at::Tensor Out = runChain(PT, Cv.Fields, Cv.S, [&](const std::string &Name, int64_t Slice) {
      const TensorView *V = Ckpt.find(Name);
      if (!V)
        return at::Tensor(); // an absent optional input
      at::Tensor X = at::empty(V->Shape, at::TensorOptions().dtype(exec::toScalarType(V->Type)).device(at::kMeta));
      return Slice < 0 ? X : X.select(0, Slice);
    });
    std::vector<int64_t> Got(Out.sizes().begin(), Out.sizes().end());
    if (Got != PT.Shape)
      throw Error(describe(PT.Rule->Loc) + ": error: '" + PT.Name + "' comes out as " + exec::shapeText(Got) +
                  " but Megatron-Core expects " + exec::shapeText(PT.Shape) + " (from " + PT.recipe() + ")");
  }
}

/// What export needs to reproduce the HF checkpoint \p Ckpt exactly: the
/// mapping, both configs, every tensor's shard, dtype and shape, the source
/// layouts chosen, the layer spec (import's order).
Json importSidecar(const Conversion &C, const SafetensorsCheckpoint &Ckpt) {
  Json Side = Json::object();
  Side["format"] = 1;
  Side["mapping"] = C.Mapping->Name;
  Side["megatron_config"] = configToJson(C.S, C.Fields);
  Side["hf_config"] = C.HFConfig;
  Side["hf_sharded"] = Ckpt.sharded();
  Json Tensors = Json::object();
  for (const std::string &N : Ckpt.names()) {
    if (Ckpt.added(N))
      continue; // an adapter's matrices: "adapter" below
    const TensorView *V = Ckpt.find(N);
    Tensors[N] = {{"file", Ckpt.fileOf().at(N)}, {"dtype", std::string(safetensorsName(V->Type))}, {"shape", V->Shape}};
  }
  Side["hf_tensors"] = Tensors;
  // Tensors read from another of their rule's source layouts: export
  // writes them in the first.
  Json Alternatives = Json::object();
  for (const PlannedTensor &PT : C.P.Tensors)
    if (PT.Chosen != 0)
      Alternatives[PT.LocalName] = PT.Chosen;
  if (!Alternatives.empty())
    Side["alternatives"] = Alternatives;
  Side["layer_spec"] = C.LocalSpec ? "local" : "transformer_engine";
  if (!C.Adapter.is_null())
    Side["adapter"] = C.Adapter;
  return Side;
}


/// An HF checkpoint: safetensors shards (or one file), config.json.
class HFSource final : public Source {
public:
  HFSource(std::string Dir, Conversion &C, bool LocalSpec, std::string AdapterDir)
      : Dir(std::move(Dir)), AdapterDir(std::move(AdapterDir)) {
    C.HFConfig = readConfigJson(files::join(this->Dir, "config.json"));
    C.Mapping = &mappingFor(C.HFConfig);
    C.Fields = importConfig(*C.Mapping, C.S, C.HFConfig);
    C.LocalSpec = LocalSpec;
  }
  bool hfSide() const override { return true; }
  const std::string &dir() const override { return Dir; }
  std::string tokenizerDir() const override { return Dir; }
  void open(const Conversion &) override { Ckpt = std::make_unique<SafetensorsCheckpoint>(Dir); }
  PassThroughLister passThrough() const override { return passThroughOf(*Ckpt); }
  uint64_t hfTensorCount() const override { return Ckpt->names().size(); }
  void check(Conversion &C) override {
    if (!AdapterDir.empty())
      planPeftImport(AdapterDir, Dir, C, *Ckpt);
    chooseAlternatives(C.P, [&](const std::string &Name) { return Ckpt->find(Name) != nullptr; });
    checkAgainstHF(Dir, C, *Ckpt);
  }
  Json sidecar(const Conversion &C) const override { return importSidecar(C, *Ckpt); }
  at::Tensor hfTensor(const std::string &Name, int64_t Slice, Reading &R) const override {
    const TensorView *V = Ckpt->find(Name);
    if (!V)
      return at::Tensor(); // an absent optional input
    // The mapping is read-only; ops never write into their inputs.
    at::Tensor X = at::from_blob(const_cast<uint8_t *>(V->Data), std::vector<int64_t>(V->Shape.begin(), V->Shape.end()),
                                 at::TensorOptions().dtype(exec::toScalarType(V->Type)));
    R.Views.push_back(X.storage().data());
    if (Slice >= 0)
      X = X.select(0, Slice); // a view of the mapped file: only this expert is read
    R.Bytes += X.nbytes();
    R.Tensors += Slice <= 0; // a stacked tensor counts once
    return X;
  }
  uint64_t bytesOf(const Conversion &C, const WorkItem &It) const override {
    uint64_t N = 0;
    for (const TensorView *V : readsOf(C, It))
      N += V->Bytes;
    return N;
  }
  std::vector<const TensorView *> readsOf(const Conversion &C, const WorkItem &It) const override {
    std::vector<const TensorView *> Out;
    for (const std::string &Src : plannedOf(C, It).sources())
      if (const TensorView *V = Ckpt->find(Src))
        Out.push_back(V);
    return Out;
  }

private:
  std::string Dir, AdapterDir;
  std::unique_ptr<SafetensorsCheckpoint> Ckpt;
};

/// A torch_dist checkpoint written by import or reshard: its bridge.json
/// holds the model, its .distcp files the global tensors.
class TorchDistSource final : public Source {
public:
  TorchDistSource(std::string Iter, Json Side, const char *ConfigWord)
      : Iter(std::move(Iter)), Side(std::move(Side)), ConfigWord(ConfigWord) {}
  bool hfSide() const override { return false; }
  const std::string &dir() const override { return Iter; }
  std::string tokenizerDir() const override { return files::join(Iter, "tokenizer"); }
  void open(const Conversion &) override { Ckpt = std::make_unique<TorchDistCheckpoint>(Iter); }
  PassThroughLister passThrough() const override { return passThroughOf(*Ckpt); }
  uint64_t hfTensorCount() const override { return Side.contains("hf_tensors") ? Side["hf_tensors"].size() : 0; }
  void check(Conversion &) override {}
  void checkKeys(const Conversion &C) const override {
    for (const DistKey &K : C.Keys) {
      const DistTensor &DT = Ckpt->tensor(K.Key); // throws naming the key when absent
      if (DT.Shape != K.GlobalShape)
        throw Error("error: " + Iter + ": '" + K.Key + "' has a global shape that does not fit " + ConfigWord +
                    " config");
    }
  }
  Json sidecar(const Conversion &) const override { return Side; }
  at::Tensor global(const Conversion &C, const WorkItem &It, Reading &R) const override {
    // The global tensor as the checkpoint holds it: a view of its mapped
    // file where one chunk holds this layer, else assembled.
    const DistKey &K = C.Keys[It.Key];
    const DistTensor &DT = Ckpt->tensor(K.Key);
    std::vector<int64_t> Shape(DT.Shape.begin() + static_cast<std::ptrdiff_t>(K.Prefixes[It.Member].size()),
                               DT.Shape.end());
    auto Options = at::TensorOptions().dtype(exec::toScalarType(DT.Type));
    at::Tensor Result;
    if (const uint8_t *View = Ckpt->viewTensorAt(K.Key, K.Prefixes[It.Member])) {
      Result = at::from_blob(const_cast<uint8_t *>(View), Shape, Options);
      R.Views.push_back(Result.storage().data()); // owns nothing
    } else {
      // The tensor owns its bytes: a writer may hold a view of it.
      auto Bytes = std::make_shared<std::vector<uint8_t>>(Ckpt->readTensorAt(K.Key, K.Prefixes[It.Member]));
      Result = at::from_blob(
          Bytes->data(), Shape, [Bytes](void *) mutable { Bytes.reset(); }, Options);
    }
    R.Bytes += Result.nbytes();
    R.Tensors += 1;
    return Result;
  }
  uint64_t bytesOf(const Conversion &C, const WorkItem &It) const override {
    return static_cast<uint64_t>(elementsOf(plannedOf(C, It).Shape)) * dtypeSize(Ckpt->tensor(C.Keys[It.Key].Key).Type);
  }
  /// The dtype the checkpoint stores \p Key in.
  DType keyType(const std::string &Key) const { return Ckpt->tensor(Key).Type; }

private:
  std::string Iter;
  Json Side;
  const char *ConfigWord; ///< "its" or "the", as each command has said it
  std::unique_ptr<TorchDistCheckpoint> Ckpt;
};

/// Megatron-LM's legacy per-rank files: each planned tensor put together
/// from the local tensors of the TP ranks of the stage and EP rank that hold
/// it.
class LegacySource final : public Source {
public:
  LegacySource(std::string Iter, Json Side, std::string HFDir, bool SideFromHF)
      : Iter(std::move(Iter)), Side(std::move(Side)), HFDir(std::move(HFDir)), SideFromHF(SideFromHF) {}
  bool hfSide() const override { return false; }
  const std::string &dir() const override { return Iter; }
  std::string tokenizerDir() const override { return files::join(Iter, "tokenizer"); }
  void open(const Conversion &) override {} // after the plan, which its coverage check needs
  PassThroughLister passThrough() const override { return {}; }
  uint64_t hfTensorCount() const override { return Side.contains("hf_tensors") ? Side["hf_tensors"].size() : 0; }
  void check(Conversion &C) override {
    const Json &Lay = Side.at("layout");
    // The source's own layout, from its sidecar alone (none of the target's
    // options), checked like any layout before its files are read.
    Layout SourceLayout;
    SourceLayout.TP = Lay.at("tp").get<int>();
    SourceLayout.PP = Lay.at("pp").get<int>();
    SourceLayout.EP = Lay.at("ep").get<int>();
    SourceLayout.ETP = Lay.at("etp").get<int>();
    SourceLayout.FirstStageLayers = Lay.value("first_stage_layers", 0);
    SourceLayout.LastStageLayers = Lay.value("last_stage_layers", 0);
    std::vector<std::string> SourceProblems = checkLayout(SourceLayout, fieldGetter(C.S, C.Fields));
    if (!SourceProblems.empty())
      throw Error("error: " + Iter + "/bridge.json records a layout that does not fit its model: " + SourceProblems[0]);
    Files = std::make_unique<LegacyCheckpoint>(Iter, SourceLayout);
    Where = std::make_unique<LegacyLayout>(C.S, C.Fields, SourceLayout, C.LocalSpec);
    Where->learnParts(C.P);
    // Coverage before anything is written: every tensor of every rank file
    // is one the plan reads (or the tied output layer's copy), and none is
    // missing.
    std::set<std::tuple<int, int, int, std::string>> Expected;
    for (const PlannedTensor &PT : C.P.Tensors) {
      LegacyLayout::Place At = Where->place(PT);
      for (int E = 0; E < SourceLayout.EP; ++E)
        if (At.ExpertRank < 0 || E == At.ExpertRank)
          for (int Tp = 0; Tp < SourceLayout.TP; ++Tp) {
            Expected.insert({Tp, At.Stage, E, At.Name});
            if (Where->tiedCopy() && At.Name == "embedding.word_embeddings.weight")
              Expected.insert({Tp, SourceLayout.PP - 1, E, "output_layer.weight"});
          }
    }
    std::vector<std::string> Missing, Unknown;
    for (const auto &[Tp, Pp, E, Name] : Expected)
      if (!Files->find(Tp, Pp, E, Name))
        Missing.push_back(Files->fileOf(Tp, Pp, E) + ": " + Name);
    for (const auto &Entry : Files->tensors())
      if (!Expected.count(Entry))
        Unknown.push_back(Files->fileOf(std::get<0>(Entry), std::get<1>(Entry), std::get<2>(Entry)) + ": " +
                          std::get<3>(Entry));
    if (!Missing.empty() || !Unknown.empty()) {
      std::string M = "error: the legacy checkpoint in " + Iter + " does not match mapping '" + C.Mapping->Name + "':";
      M += nameList("tensor(s) the model needs are missing", Missing);
      M += nameList("tensor(s) no planned tensor accounts for", Unknown);
      throw Error(M);
    }
    if (SideFromHF && files::isDirectory(HFDir) &&
        (files::exists(files::join(HFDir, "model.safetensors")) ||
         files::exists(files::join(HFDir, "model.safetensors.index.json")))) {
      // Only for the sidecar: the HF layout export restores.
      HF = std::make_unique<SafetensorsCheckpoint>(HFDir);
      chooseAlternatives(C.P, [&](const std::string &Name) { return HF->find(Name) != nullptr; });
    }
  }
  Json sidecar(const Conversion &C) const override { return HF ? importSidecar(C, *HF) : Side; }
  at::Tensor global(const Conversion &C, const WorkItem &It, Reading &R) const override {
    const PlannedTensor &PT = plannedOf(C, It);
    LegacyLayout::Place At = Where->place(PT);
    int E = At.ExpertRank < 0 ? 0 : At.ExpertRank;
    std::vector<at::Tensor> ByRank;
    for (int Tp = 0; Tp < Where->layout().TP; ++Tp) {
      const TensorRecord *Rec = Files->find(Tp, At.Stage, E, At.Name);
      auto Options = at::TensorOptions().dtype(exec::toScalarType(Rec->Type));
      at::Tensor Local = at::from_blob(const_cast<uint8_t *>(Rec->data()), Rec->Shape, Options);
      R.Views.push_back(Local.storage().data());
      if (At.PartIndex >= 0) {
        // A part: its rows of the rank's whole parameter.
        at::Tensor Meta = at::empty(PT.Shape, at::TensorOptions().device(at::kMeta));
        int64_t Rows = Where->cutFor(PT, Meta, Tp).size(0);
        if (Local.dim() < 1 || At.PartRowOffset + Rows > Local.size(0))
          throw Error("error: " + Files->fileOf(Tp, At.Stage, E) + ": '" + At.Name + "' is " +
                      exec::shapeText(Local.sizes()) + ", too small to hold its part '" + PT.Name + "'");
        Local = Local.narrow(0, At.PartRowOffset, Rows);
      }
      ByRank.push_back(Local);
      R.Bytes += ByRank.back().nbytes();
    }
    at::Tensor Result = Where->join(PT, ByRank, Files->fileOf(0, At.Stage, E));
    std::vector<int64_t> Got(Result.sizes().begin(), Result.sizes().end());
    if (Got != PT.Shape)
      throw Error("error: " + Files->fileOf(0, At.Stage, E) + ": '" + At.Name + "' puts together as " +
                  exec::shapeText(Got) + ", not the model's " + exec::shapeText(PT.Shape));
    R.Tensors += 1;
    return Result;
  }
  uint64_t bytesOf(const Conversion &C, const WorkItem &It) const override {
    return static_cast<uint64_t>(elementsOf(plannedOf(C, It).Shape)) * 2; // bf16, for the progress line
  }

private:
  std::string Iter;
  Json Side;
  std::string HFDir;
  bool SideFromHF; ///< no bridge.json: the model from HFDir
  std::unique_ptr<LegacyCheckpoint> Files;
  std::unique_ptr<LegacyLayout> Where; ///< where its files keep each tensor
  std::unique_ptr<SafetensorsCheckpoint> HF; ///< the model's HF checkpoint, for the sidecar
};

} // namespace

std::unique_ptr<Source> hfSource(const std::string &Dir, Conversion &C, bool LocalSpec,
                                 const std::string &AdapterDir) {
  return std::make_unique<HFSource>(Dir, C, LocalSpec, AdapterDir);
}

std::unique_ptr<Source> checkpointSource(const std::string &Dir, const std::string &HFDir, Conversion &C) {
  std::string Iter = iterationDir(Dir);
  std::string SidePath = files::join(Iter, "bridge.json");
  Json Side;
  bool SideFromHF = false;
  if (files::exists(SidePath)) {
    Side = readSidecar(SidePath);
    C.Mapping = &mappingNamed(Side.at("mapping").get<std::string>());
    C.Fields = configFromJson(C.S, Side.at("megatron_config"), SidePath);
    C.HFConfig = Side.at("hf_config");
  } else if (!HFDir.empty()) {
    // A legacy checkpoint Megatron-LM saved: the model from the HF config,
    // the layout from its files' args (legacySidecar).
    C.HFConfig = readConfigJson(HFDir);
    C.Mapping = &mappingFor(C.HFConfig);
    C.Fields = importConfig(*C.Mapping, C.S, C.HFConfig);
    Side = legacySidecar(Iter, C.HFConfig, C.Mapping->Name, configToJson(C.S, C.Fields));
    SideFromHF = true;
  } else {
    throw Error("error: " + Iter + " has no bridge.json: it was not written by 'bridge-run import', so its "
                "model is unknown; for a legacy checkpoint, pass --hf with the model's HF checkpoint directory "
                "(or its config.json)");
  }
  C.LocalSpec = Side.value("layer_spec", "") == "local";
  if (Side.value("checkpoint_format", "torch_dist") == "torch")
    return std::make_unique<LegacySource>(Iter, std::move(Side), HFDir, SideFromHF);
  return std::make_unique<TorchDistSource>(Iter, std::move(Side), "its");
}

std::unique_ptr<Source> torchDistSource(const std::string &Iter, Conversion &C, const Json &Side,
                                        std::function<DType(const std::string &)> &KeyType) {
  C.LocalSpec = Side.value("layer_spec", "") == "local";
  auto Src = std::make_unique<TorchDistSource>(Iter, Side, "the");
  const TorchDistSource *Raw = Src.get();
  KeyType = [Raw](const std::string &Key) { return Raw->keyType(Key); };
  return Src;
}

} // namespace bridge
