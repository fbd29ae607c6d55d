//===- Import.cpp - HF safetensors to a Megatron-Core torch_dist checkpoint ===//
//
// Order of work: config and mapping; layout checks; the plan; coverage of
// both sides (every HF tensor consumed once or ignored, every Megatron tensor
// produced once); a dry run of every op chain on meta tensors, so shape
// errors surface before a byte is written; then the data, one Megatron key at
// a time (memory holds one layer's sources and result), chunks cut to each
// rank's slice; then metadata, sidecar, tracker last, and a rename of the
// finished directory into place.
//
//===----------------------------------------------------------------------===//
#include "Checkpoint.h"
#include "Resume.h"
#include "Legacy.h"
#include "CudaSupport.h"
#include "Ops.h"

#include "bridge/Convert.h"
#include "bridge/Files.h"
#include "bridge/Interrupt.h"
#include "bridge/LegacyWriter.h"
#include "bridge/OutputDir.h"
#include "bridge/ProcessGroup.h"
#include "bridge/Registry.h"
#include "bridge/Safetensors.h"
#include "bridge/TorchDistReader.h"
#include "bridge/TorchDistWriter.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <unistd.h>

namespace bridge {
namespace {

using exec::OpConfig;
using exec::OpParams;

at::Tensor viewOf(const TensorView &V) {
  // The mapping is read-only; ops never write into their inputs.
  return at::from_blob(const_cast<uint8_t *>(V.Data), std::vector<int64_t>(V.Shape.begin(), V.Shape.end()),
                       at::TensorOptions().dtype(exec::toScalarType(V.Type)));
}

OpParams evalParams(const OpNode &N, const EvalEnv &Env, const std::string &Where) {
  OpParams P;
  for (const OpParam &Pm : N.Params)
    P[Pm.Name] = evaluate(Pm.Value, Env, Where);
  return P;
}

/// Runs a rule's postfix op chain for one instance. \p Leaf gives each
/// source tensor by name, or only expert \p Slice of it when Slice >= 0 (a
/// stacked HF tensor read through 'expert': the slice alone is moved).
at::Tensor runChain(const PlannedTensor &PT, const std::vector<Json> &Fields, const SchemaTable &S,
                    const std::function<at::Tensor(const std::string &, int64_t Slice)> &Leaf,
                    const at::Device *Compute = nullptr) {
  const SourceChain &C = PT.chain();
  std::string Where = describe(PT.Rule->Loc);
  OpConfig Cfg(S, Fields);
  EvalEnv Env{nullptr, &Fields, &S, &PT.LoopVars};
  // An optional input the checkpoint lacks is an undefined tensor; an op
  // with one passes its first input through (an unquantized source).
  std::vector<at::Tensor> Stack;
  size_t NextSource = 0;
  bool SliceTaken = false; // the 'expert' right after this source is done
  for (const OpNode &N : C.Nodes) {
    if (N.IsSource) {
      size_t K = NextSource++;
      Stack.push_back(Leaf(C.Sources[K], C.SourceSlice[K]));
      SliceTaken = C.SourceSlice[K] >= 0;
      continue;
    }
    if (SliceTaken) {
      // Postfix order puts a one-input op right after its source.
      SliceTaken = false;
      if (N.Kind == Op::SelectExpert)
        continue;
    }
    std::vector<at::Tensor> In(Stack.end() - N.NumInputs, Stack.end());
    Stack.resize(Stack.size() - N.NumInputs);
    bool Absent = false;
    for (const at::Tensor &X : In)
      Absent |= !X.defined();
    // Passing an FP8 tensor through would cast it without its scale.
    if (Absent && (In[0].scalar_type() == at::kFloat8_e4m3fn || In[0].scalar_type() == at::kFloat8_e5m2))
      throw Error(Where + ": error: an FP8 tensor feeding '" + C.Recipe +
                  "' has no scale in the checkpoint; FP8 weights are not converted without their scales");
    // An op that computes (dequantization) runs on the compute device;
    // what follows it stays there. Ops that only move bytes run where their
    // inputs are (the host, for a view of the source).
    if (!Absent && Compute && exec::opComputes(N.Kind))
      for (at::Tensor &X : In) {
        if (Compute->is_cuda() && X.is_cpu()) {
          // Staged through pinned memory (reused blocks): a full-speed copy
          // where one from the mapped file would go through the driver's
          // small bounce buffer.
          at::Tensor Pinned = at::empty(X.sizes(), X.options().pinned_memory(true));
          Pinned.copy_(X);
          X = Pinned.to(*Compute, /*non_blocking=*/true);
        } else {
          X = X.to(*Compute);
        }
      }
    Stack.push_back(Absent ? In[0] : exec::forward(N.Kind, N.Custom, In, evalParams(N, Env, Where), Cfg, Where));
  }
  return Stack.back();
}

/// Tests of failure handling set BRIDGE_FAULT_INJECT=R:N[:kill|:pause]:
/// process R fails (with ':kill', dies by SIGKILL; with ':pause', waits up to
/// a minute for a signal, or until the file BRIDGE_FAULT_RELEASE names
/// exists) as it hands its N-th tensor to the writers.
void injectFault(int Rank, size_t Item) {
  static const char *Spec = std::getenv("BRIDGE_FAULT_INJECT");
  if (!Spec)
    return;
  int R = -1;
  size_t N = 0;
  char Mode[8] = "";
  if (std::sscanf(Spec, "%d:%zu:%7s", &R, &N, Mode) < 2 || R != Rank || N != Item)
    return;
  if (std::string(Mode) == "kill")
    ::kill(::getpid(), SIGKILL);
  if (std::string(Mode) == "pause") { // a window for a test's signal
    const char *Release = std::getenv("BRIDGE_FAULT_RELEASE");
    for (int Tick = 0; Tick < 6000 && !interruptSignal() && !(Release && files::exists(Release)); ++Tick)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return;
  }
  throw Error("error: fault injected by BRIDGE_FAULT_INJECT=" + std::string(Spec));
}

void writeText(const std::string &P, const std::string &Text) { files::writeFile(P, Text); }

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

/// One rank's local tensor of the legacy format (undefined: None, for a
/// Transformer Engine module's `_extra_state`).
struct LegacyPiece {
  int T, P, E;
  std::string Name;
  at::Tensor Value;
};

/// "\n<count> <What>:" and the first 25 names, one a line ("" when none).
std::string nameList(const char *What, const std::vector<std::string> &Names) {
  if (Names.empty())
    return "";
  std::string M = "\n" + std::to_string(Names.size()) + " " + What + ":";
  for (size_t I = 0; I < Names.size() && I < 25; ++I)
    M += "\n  " + Names[I];
  if (Names.size() > 25)
    M += "\n  ... and " + std::to_string(Names.size() - 25) + " more";
  return M;
}

/// Both sides of coverage (every HF tensor consumed once or ignored, every
/// Megatron tensor produced), then a dry run of every op chain on meta
/// tensors: shapes before any byte is written.
void checkAgainstHF(const ImportOptions &O, const MappingTable &T, const SchemaTable &S,
                    const std::vector<Json> &Fields, const Plan &P, const SafetensorsCheckpoint &Ckpt) {
  std::map<std::string, std::string> ConsumedBy;
  // A stacked HF tensor read one expert at a time: every slice exactly once.
  std::map<std::string, std::pair<std::set<int64_t>, const PlannedTensor *>> SlicesRead;
  // One read a row block at a time ('rows'): every block exactly once.
  struct Blocks {
    std::vector<std::pair<int64_t, int64_t>> Rows; ///< (first row, rows) of each read
    const PlannedTensor *By = nullptr;
  };
  std::map<std::string, Blocks> BlocksRead;
  std::vector<std::string> Missing;
  for (const PlannedTensor &PT : P.Tensors)
    for (size_t K = 0; K < PT.sources().size(); ++K) {
      const SourceChain &C = PT.chain();
      const std::string &Src = C.Sources[K];
      if (C.SourceOptional[K] && !Ckpt.find(Src))
        continue; // an optional input this checkpoint does not have
      int64_t Slice = C.SourceSlice[K];
      auto [FirstRow, Rows] = C.SourceRows[K];
      std::string Read = Slice >= 0      ? Src + " (expert " + std::to_string(Slice) + ")"
                         : FirstRow >= 0 ? Src + " (rows " + std::to_string(FirstRow) + " to " +
                                               std::to_string(FirstRow + Rows) + ")"
                                         : Src;
      auto [It, New] = ConsumedBy.emplace(Read, PT.LocalName);
      if (!New)
        throw Error(describe(PT.Rule->Loc) + ": error: HF tensor '" + Read + "' is read for both '" + It->second +
                    "' and '" + PT.LocalName + "'");
      if (Slice >= 0) {
        auto &Entry = SlicesRead[Src];
        Entry.first.insert(Slice);
        Entry.second = &PT;
      }
      if (FirstRow >= 0) {
        auto &Entry = BlocksRead[Src];
        Entry.Rows.push_back(C.SourceRows[K]);
        Entry.By = &PT;
      }
      if (!Ckpt.find(Src)) {
        std::string Others;
        for (size_t A = 1; A < PT.Alternatives.size(); ++A)
          Others += (A > 1 ? " or " : "; or instead ") + PT.Alternatives[A].Recipe;
        Missing.push_back(Src + "  (for " + PT.Name + Others + ")");
      }
    }
  for (auto &[Src, Entry] : SlicesRead) {
    if (auto Whole = ConsumedBy.find(Src); Whole != ConsumedBy.end())
      throw Error(describe(Entry.second->Rule->Loc) + ": error: HF tensor '" + Src + "' is read whole for '" +
                  Whole->second + "' and by expert for '" + Entry.second->LocalName + "'");
    const TensorView *V = Ckpt.find(Src);
    if (!V)
      continue; // reported as missing below
    int64_t Experts = V->Shape.empty() ? 0 : V->Shape[0];
    if (static_cast<int64_t>(Entry.first.size()) != Experts || *Entry.first.rbegin() != Experts - 1)
      throw Error(describe(Entry.second->Rule->Loc) + ": error: HF tensor '" + Src + "' stacks " +
                  std::to_string(Experts) + " experts on dim 0, but the mapping reads " +
                  std::to_string(Entry.first.size()) + " of them");
    ConsumedBy.emplace(Src, "(by expert)");
  }
  for (auto &[Src, Entry] : BlocksRead) {
    if (auto Whole = ConsumedBy.find(Src); Whole != ConsumedBy.end())
      throw Error(describe(Entry.By->Rule->Loc) + ": error: HF tensor '" + Src + "' is read whole for '" +
                  Whole->second + "' and by row block for '" + Entry.By->LocalName + "'");
    // The blocks, as read, must tile the tensor's rows: each row once.
    std::sort(Entry.Rows.begin(), Entry.Rows.end());
    int64_t Next = 0;
    for (auto &[First, Rows] : Entry.Rows) {
      if (First != Next)
        throw Error(describe(Entry.By->Rule->Loc) + ": error: the row blocks read of HF tensor '" + Src +
                    "' " + (First < Next ? "overlap" : "leave a gap") + " at row " + std::to_string(std::min(First, Next)));
      Next = First + Rows;
    }
    if (const TensorView *V = Ckpt.find(Src); V && (V->Shape.empty() || V->Shape[0] != Next))
      throw Error(describe(Entry.By->Rule->Loc) + ": error: the row blocks read of HF tensor '" + Src + "' cover " +
                  std::to_string(Next) + " rows, but it has " +
                  (V->Shape.empty() ? std::string("none") : std::to_string(V->Shape[0])));
    ConsumedBy.emplace(Src, "(by row block)");
  }
  for (auto &[Copy, Of] : P.Ties) {
    const TensorView *C = Ckpt.find(Copy), *F = Ckpt.find(Of);
    if (!C)
      continue;
    if (!F || C->Bytes != F->Bytes || C->Type != F->Type || std::memcmp(C->Data, F->Data, C->Bytes) != 0)
      throw Error("error: " + C->File + ": '" + Copy + "' differs from '" + Of +
                  "', but the config ties them (tie_word_embeddings); the checkpoint contradicts its config");
    ConsumedBy.emplace(Copy, "(tied to " + Of + ")");
  }
  for (const std::string &Ign : P.IgnoredPatterns)
    if (Ckpt.find(Ign))
      ConsumedBy.emplace(Ign, "(ignored)");
  std::vector<std::string> Unmapped;
  for (const std::string &N : Ckpt.names())
    if (!ConsumedBy.count(N))
      Unmapped.push_back(N);
  if (!Missing.empty() || !Unmapped.empty()) {
    std::string M =
        "error: the checkpoint in " + O.HFDir + " does not match mapping '" + T.Name + "' (" + T.SourceFile + "):";
    M += nameList("HF tensor(s) the mapping reads are missing", Missing);
    M += nameList("HF tensor(s) no rule reads or ignores", Unmapped);
    throw Error(M);
  }

  // -- dry run on meta tensors: shapes before any byte is written -------------------------
  for (const PlannedTensor &PT : P.Tensors) {
    at::Tensor Out = runChain(PT, Fields, S, [&](const std::string &Name, int64_t Slice) {
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

Summary importWith(const ImportOptions &O, const std::string &FromDir) {
  ProcessGroup One;
  ProcessGroup &G = O.Group ? *O.Group : One;
  auto Start = std::chrono::steady_clock::now();
  Summary Sum;
  const SchemaTable &S = schema();

  // -- config and mapping: from config.json, or from the sidecar of the
  // -- checkpoint to reshard (the same mapping, config and layer spec) -------------
  const bool Reshard = !FromDir.empty();
  bool SideFromHF = false; // a reshard whose source had no sidecar: made from --hf
  Json HF, FromSide;
  std::string FromIter;
  std::vector<Json> Fields;
  const MappingTable *Mapping = nullptr;
  if (Reshard) {
    FromIter = iterationDir(FromDir);
    std::string SidePath = files::join(FromIter, "bridge.json");
    if (files::exists(SidePath)) {
      FromSide = readSidecar(SidePath);
      Mapping = &mappingNamed(FromSide.at("mapping").get<std::string>());
      Fields = configFromJson(S, FromSide.at("megatron_config"), SidePath);
      HF = FromSide.at("hf_config");
    } else if (!O.HFDir.empty()) {
      // A legacy checkpoint Megatron-LM saved: the model from the HF config,
      // the layout from its files' args (legacySidecar).
      HF = readConfigJson(O.HFDir);
      Mapping = &mappingFor(HF);
      Fields = importConfig(*Mapping, S, HF);
      FromSide = legacySidecar(FromIter, HF, Mapping->Name, configToJson(S, Fields));
      SideFromHF = true;
    } else {
      throw Error("error: " + FromIter + " has no bridge.json: it was not written by 'bridge-run import', so its "
                  "model is unknown; for a legacy checkpoint, pass --hf with the model's HF checkpoint directory "
                  "(or its config.json)");
    }
  } else {
    HF = readConfigJson(files::join(O.HFDir, "config.json"));
    Mapping = &mappingFor(HF);
    Fields = importConfig(*Mapping, S, HF);
  }
  const MappingTable &T = *Mapping;
  Sum.Mapping = T.Name;
  const bool LocalSpec = Reshard ? FromSide.value("layer_spec", "") == "local" : O.LocalSpec;
  if (Reshard && O.LocalSpec && !LocalSpec)
    throw Error("error: " + FromIter + " holds Transformer Engine names; reshard keeps its source's layer spec, so "
                "--local-spec does not apply");

  // -- layout ------------------------------------------------------------------------
  std::vector<std::string> Problems = checkLayout(O.Par, fieldGetter(S, Fields));
  if (!Problems.empty()) {
    std::string M = "error: layout TP=" + std::to_string(O.Par.TP) + " PP=" + std::to_string(O.Par.PP) +
                    " EP=" + std::to_string(O.Par.EP) + " does not fit this model:";
    for (auto &P : Problems)
      M += "\n  " + P;
    throw Error(M);
  }

  // The legacy per-rank format: what this writer supports of it.
  const bool Legacy = O.Format == "torch";
  if (!Legacy && O.Format != "torch_dist")
    throw Error("error: unknown checkpoint format '" + O.Format + "' (torch_dist or torch)");
  if (Legacy) {
    if (O.Par.VPP > 1)
      throw Error("error: the legacy torch format is written without virtual pipeline stages (VPP " +
                  std::to_string(O.Par.VPP) + "); use torch_dist");
    if (G.size() > 1)
      throw Error("error: the legacy torch format is written by one process; run without torchrun or srun");
    if (fieldGetter(S, Fields)("num_moe_experts") > 0 && O.Par.ETP != 1 && O.Par.ETP != O.Par.TP)
      throw Error("error: the legacy torch format holds experts whole (ETP 1) or cut like the dense layers (ETP = TP "
                  "= " + std::to_string(O.Par.TP) + "), not ETP " + std::to_string(O.Par.ETP));
  }

  // -- the plan; the sources: an HF checkpoint, checked on both sides, or a
  // -- torch_dist checkpoint written by import (reshard) ---------------------------------
  // A hybrid model is Megatron-Core's MambaModel, not GPTModel.
  const bool Hybrid = fieldValue(S, Fields, "is_hybrid_model") == true;
  std::unique_ptr<SafetensorsCheckpoint> HFCkpt;
  std::unique_ptr<TorchDistCheckpoint> From;
  // Pass-through rules expand to what the source holds under their prefix:
  // the HF checkpoint's tensors, or a torch_dist source's keys.
  PassThroughLister Lister;
  if (!Reshard) {
    HFCkpt = std::make_unique<SafetensorsCheckpoint>(O.HFDir);
    Lister.List = [&](const std::string &Prefix) {
      std::vector<std::pair<std::string, std::vector<int64_t>>> Out;
      for (const std::string &N : HFCkpt->names())
        if (N.rfind(Prefix, 0) == 0)
          Out.push_back({N, HFCkpt->find(N)->Shape});
      return Out;
    };
  } else if (FromSide.value("checkpoint_format", "torch_dist") != "torch") {
    From = std::make_unique<TorchDistCheckpoint>(FromIter);
    Lister.BySource = false;
    Lister.List = [&](const std::string &Prefix) {
      std::vector<std::pair<std::string, std::vector<int64_t>>> Out;
      for (const std::string &K : From->tensorKeys())
        if (K.rfind(Prefix, 0) == 0)
          Out.push_back({K, From->tensor(K).Shape});
      return Out;
    };
  }
  // The declared counts are checked against the HF tensors: the source's,
  // or those the sidecar records it was imported from.
  uint64_t SourceTensors = HFCkpt                                      ? HFCkpt->names().size()
                           : FromSide.contains("hf_tensors") ? FromSide["hf_tensors"].size()
                                                                       : 0;
  Plan P = expandPlan(T, S, Fields, /*UseTENames=*/true, Lister.List ? &Lister : nullptr, SourceTensors);
  // Megatron-LM's legacy files hold each rank's module parameters; a hybrid
  // model's Mamba in_proj and conv1d are stored here in parts that a rank
  // holds interleaved, which this writer does not put together.
  if (Legacy && Hybrid)
    throw Error("error: mapping '" + std::string(T.Name) +
                "' is a hybrid Mamba model (MambaModel); the legacy per-rank format is written for GPT models only: "
                "use torch_dist");
  for (const PlannedTensor &PT : P.Tensors)
    if (PT.PassThrough && (Legacy || !Lister.List))
      throw Error("error: mapping '" + std::string(T.Name) + "' keeps '" + PT.LocalName +
                  "' as the HF module has it; the legacy per-rank format holds GPT models only: use torch_dist");
  std::unique_ptr<LegacyCheckpoint> LegacyFrom; // a legacy source's files
  std::unique_ptr<LegacyLayout> SourceLegacy;   // and where they keep each tensor
  if (Reshard && FromSide.value("checkpoint_format", "torch_dist") == "torch") {
    const Json &Lay = FromSide.at("layout");
    // The source's own layout, from its sidecar alone (none of the target's
    // options), checked like any layout before its files are read.
    Layout SourceLayout;
    SourceLayout.TP = Lay.at("tp").get<int>();
    SourceLayout.PP = Lay.at("pp").get<int>();
    SourceLayout.EP = Lay.at("ep").get<int>();
    SourceLayout.ETP = Lay.at("etp").get<int>();
    SourceLayout.FirstStageLayers = Lay.value("first_stage_layers", 0);
    SourceLayout.LastStageLayers = Lay.value("last_stage_layers", 0);
    std::vector<std::string> SourceProblems = checkLayout(SourceLayout, fieldGetter(S, Fields));
    if (!SourceProblems.empty())
      throw Error("error: " + FromIter + "/bridge.json records a layout that does not fit its model: " +
                  SourceProblems[0]);
    LegacyFrom = std::make_unique<LegacyCheckpoint>(FromIter, SourceLayout);
    SourceLegacy = std::make_unique<LegacyLayout>(S, Fields, SourceLayout, LocalSpec);
    // Coverage before anything is written: every tensor of every rank file
    // is one the plan reads (or the tied output layer's copy), and none is
    // missing.
    std::set<std::tuple<int, int, int, std::string>> Expected;
    for (const PlannedTensor &PT : P.Tensors) {
      LegacyLayout::Place At = SourceLegacy->place(PT);
      for (int E = 0; E < SourceLayout.EP; ++E)
        if (At.ExpertRank < 0 || E == At.ExpertRank)
          for (int Tp = 0; Tp < SourceLayout.TP; ++Tp) {
            Expected.insert({Tp, At.Stage, E, At.Name});
            if (SourceLegacy->tiedCopy() && At.Name == "embedding.word_embeddings.weight")
              Expected.insert({Tp, SourceLayout.PP - 1, E, "output_layer.weight"});
          }
    }
    std::vector<std::string> Missing, Unknown;
    for (const auto &[Tp, Pp, E, Name] : Expected)
      if (!LegacyFrom->find(Tp, Pp, E, Name))
        Missing.push_back(LegacyFrom->fileOf(Tp, Pp, E) + ": " + Name);
    for (const auto &Entry : LegacyFrom->tensors())
      if (!Expected.count(Entry))
        Unknown.push_back(LegacyFrom->fileOf(std::get<0>(Entry), std::get<1>(Entry), std::get<2>(Entry)) + ": " +
                          std::get<3>(Entry));
    if (!Missing.empty() || !Unknown.empty()) {
      std::string M = "error: the legacy checkpoint in " + FromIter + " does not match mapping '" + T.Name + "':";
      M += nameList("tensor(s) the model needs are missing", Missing);
      M += nameList("tensor(s) no planned tensor accounts for", Unknown);
      throw Error(M);
    }
  }
  if (SideFromHF && files::isDirectory(O.HFDir) &&
      (files::exists(files::join(O.HFDir, "model.safetensors")) ||
       files::exists(files::join(O.HFDir, "model.safetensors.index.json")))) {
    // Only for the sidecar: the HF layout export restores.
    HFCkpt = std::make_unique<SafetensorsCheckpoint>(O.HFDir);
    chooseAlternatives(P, [&](const std::string &Name) { return HFCkpt->find(Name) != nullptr; });
  } else if (!Reshard) {
    chooseAlternatives(P, [&](const std::string &Name) { return HFCkpt->find(Name) != nullptr; });
    checkAgainstHF(O, T, S, Fields, P, *HFCkpt);
  }

  // -- output directory: built aside, renamed into place when complete ----------------------
  const OutputDir OutTarget(O.OutDir, {O.HFDir, FromDir}, O.Overwrite);
  tokenizerFiles(Reshard ? files::join(FromIter, "tokenizer") : O.HFDir); // checked before anything is written
  const std::string &Out = OutTarget.path();
  if (O.Resume && Legacy)
    throw Error("error: --resume finishes torch_dist output; a legacy (--format torch) checkpoint is written in one "
                "pass, so run without --resume");
  // What this import is, for --resume to tell whether an interrupted one
  // was the same.
  Json Fingerprint;
  if (!Legacy)
    Fingerprint = resumeFingerprint(Reshard ? "reshard" : "import", T.Name, O.Format, LocalSpec, O.Par, G.size(),
                                    Reshard ? FromIter : O.HFDir, P);
  auto Since = [&](std::chrono::steady_clock::time_point T) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - T).count();
  };
  Sum.PrepareSeconds = Since(Start);
  // Rank 0 makes the directory, every process writes its files into it (a
  // file system all of them see), rank 0 renames it.
  std::string Tmp;
  bool Resumed = false;
  if (G.leader()) {
    Tmp = OutTarget.partialPath();
    if (O.Resume) {
      Resumed = !takeOverPartial(Out, Tmp, Fingerprint).empty();
      if (!Resumed && !O.Quiet)
        std::cerr << "bridge-run: no interrupted import of " << Out << " to resume; starting\n";
    } else if (std::vector<std::string> Left = partialsOf(Out); !Left.empty() && !O.Quiet) {
      std::cerr << "bridge-run: note: " << Left[0]
                << " holds an interrupted import; run with --resume to finish it instead\n";
    }
    if (!Resumed) {
      files::removeAll(Tmp);
      files::makeDirs(files::join(Tmp, "iter_0000000"));
      if (!Legacy)
        writeText(files::join(Tmp, "resume.json"), Fingerprint.dump() + "\n");
    }
  }
  {
    std::string Said = G.broadcast("partial", (Resumed ? "1" : "0") + Tmp);
    Resumed = Said[0] == '1';
    Tmp = Said.substr(1);
  }
  std::string Iter = files::join(Tmp, "iter_0000000");
  if (!files::exists(Iter))
    throw Error("error: process " + std::to_string(G.rank()) + " does not see " + Iter +
                ", which process 0 made: the output must lie on a file system every process shares");

  try {
    at::Device Dev(O.Device);
    const uint64_t WindowBudget = std::max<uint64_t>(O.MemoryBudget / 4, 1);
    std::optional<TorchDistWriter> W;
    std::optional<LegacyWriter> LW;
    if (Legacy)
      LW.emplace(Iter, O.Par.TP, O.Par.PP, O.Par.EP);
    // What an interrupted run of this import left and is still intact.
    Journals Left;
    if (Resumed)
      Left = readJournals(Iter, G.rank());
    if (!Legacy)
      W.emplace(Iter, O.Writers, std::max<uint64_t>(O.MemoryBudget - WindowBudget, 1), static_cast<unsigned>(G.rank()),
                Left.NextFile, /*Journal=*/true);
    std::vector<DistKey> Keys = groupByKey(P, S, Fields, LocalSpec);
    if (From)
      for (const DistKey &K : Keys) {
        const DistTensor &DT = From->tensor(K.Key); // throws naming the key when absent
        if (DT.Shape != K.GlobalShape)
          throw Error("error: " + FromIter + ": '" + K.Key + "' has a global shape that does not fit its config");
      }
    std::set<std::string> ExtraStates;
    std::map<std::string, DType> Declared; // the keys this process has records of, and their dtype
    // The work, in plan order: one item per planned tensor (a layer of a
    // key). Several processes take contiguous shares of equal bytes.
    struct Item {
      size_t Key, Member;
    };
    std::vector<Item> Items;
    {
      std::vector<Item> All;
      std::vector<double> Weight;
      double Total = 0;
      for (size_t KI = 0; KI < Keys.size(); ++KI)
        for (size_t M = 0; M < Keys[KI].Members.size(); ++M) {
          double N = 1;
          for (int64_t D : P.Tensors[Keys[KI].Members[M]].Shape)
            N *= static_cast<double>(D);
          All.push_back({KI, M});
          Weight.push_back(N);
          Total += N;
        }
      double Before = 0;
      for (size_t I = 0; I < All.size(); ++I) {
        int Owner = Total > 0 ? static_cast<int>((Before + Weight[I] / 2) / Total * G.size()) : 0;
        Before += Weight[I];
        if (std::min(Owner, G.size() - 1) == G.rank())
          Items.push_back(All[I]);
      }
    }
    // Resuming: an item whose every chunk an interrupted run wrote intact is
    // kept, not converted again (a key's extra state is kept the same way).
    if (Resumed) {
      std::map<std::pair<std::string, std::vector<int64_t>>, const JournaledRecord *> Chunk;
      std::map<std::string, const JournaledRecord *> Object;
      for (const JournaledRecord &R : Left.Kept)
        if (R.Object)
          Object.emplace(R.Key, &R);
        else
          Chunk.emplace(std::make_pair(R.Key, R.Offsets), &R);
      std::vector<const JournaledRecord *> Adopt;
      std::vector<Item> Rest;
      for (const Item &It : Items) {
        const DistKey &K = Keys[It.Key];
        std::vector<const JournaledRecord *> Mine;
        for (const ChunkSpec &Spec : chunksOf(P.Tensors[K.Members[It.Member]], O.Par)) {
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
          for (const std::string &E : extraStateKeys(K, Hybrid)) {
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
      Items = std::move(Rest);
    }
    uint64_t SourceBytes = 0;
    for (const Item &It : Items)
      if (Reshard) {
        int64_t N = 1;
        for (int64_t D : P.Tensors[Keys[It.Key].Members[It.Member]].Shape)
          N *= D;
        SourceBytes += static_cast<uint64_t>(N) * 2; // bf16, for the progress line
      } else {
        for (const std::string &Src : P.Tensors[Keys[It.Key].Members[It.Member]].sources())
          if (const TensorView *V = HFCkpt->find(Src))
            SourceBytes += V->Bytes;
      }
    // Of several processes, rank 0 shows its own share.
    Progress Bar(G.size() > 1 ? "import, process 0" : "import", Items.size(), SourceBytes,
                 !O.Quiet && G.leader() && ::isatty(2));
    // Read-ahead: the sources of the tensors to come, in the order they will
    // be read, kept up to a memory budget ahead of the converter (from disk
    // the kernel then reads while this thread converts and writers write).
    std::vector<const TensorView *> ReadOrder;
    for (const Item &It : Items)
      for (const std::string &Src : P.Tensors[Keys[It.Key].Members[It.Member]].sources())
        if (const TensorView *V = HFCkpt ? HFCkpt->find(Src) : nullptr)
          ReadOrder.push_back(V);
    size_t NextPrefetch = 0;
    uint64_t Prefetched = 0;
    std::set<const TensorView *> Asked;
    auto ReadAhead = [&](uint64_t Consumed) {
      while (NextPrefetch < ReadOrder.size() && Prefetched < Consumed + O.MemoryBudget) {
        const TensorView *V = ReadOrder[NextPrefetch++];
        if (Asked.insert(V).second) { // a stacked tensor is listed once per expert
          prefetch(*V);
          Prefetched += V->Bytes;
        }
      }
    };
    // Converters: several threads each turn one planned tensor into its
    // chunks (ops on the host, dequantization on the device), so one
    // tensor's copies overlap another's; this thread hands the results to
    // the writer strictly in plan order, so the output is the same whatever
    // the timing. At most Window tensors are converted ahead of the writer,
    // and the memory they own (results of ops, not views of the mapped
    // source) counts against the memory budget: a quarter of it is the
    // converters' (work in progress included), the rest the writers' queue.
    struct Converted {
      DType Type = DType::U8;
      std::vector<std::pair<ChunkSpec, at::Tensor>> Chunks;
      uint64_t BytesRead = 0, TensorsRead = 0;
      uint64_t OwnedBytes = 0; // held by the chunks, not views of the source
      std::vector<LegacyPiece> Pieces; // the legacy format's rank-local tensors
      std::exception_ptr Failure;
      bool Ready = false;
    };
    std::vector<Converted> Slots(Items.size());
    const size_t Threads = std::max<size_t>(1, std::min<size_t>(O.Converters, Items.size()));
    const size_t Window = 2 * Threads;
    // Bytes owned by results being converted (reserved up front at two
    // bytes an element, then corrected) or converted and not yet queued.
    int64_t WindowBytes = 0;
    auto Reserve = [&](size_t I) {
      int64_t N = 2;
      for (int64_t D : P.Tensors[Keys[Items[I].Key].Members[Items[I].Member]].Shape)
        N *= D;
      return N;
    };
    std::mutex Lock;
    std::condition_variable Changed;
    size_t NextItem = 0, Submitted = 0;
    bool Abort = false;
    // The legacy format: a planned tensor cut into its ranks' local
    // tensors, named with the layer index local to its stage and the expert
    // index local to its EP rank.
    const LegacyLayout Target(S, Fields, O.Par, LocalSpec);
    auto LegacyPieces = [&](const PlannedTensor &PT, at::Tensor X) {
      LegacyLayout::Place At = Target.place(PT);
      std::vector<at::Tensor> ByRank = Target.cut(PT, std::move(X));
      std::vector<LegacyPiece> Out;
      auto Put = [&](int P, const std::string &N, bool None) {
        for (int E = 0; E < O.Par.EP; ++E)
          if (At.ExpertRank < 0 || E == At.ExpertRank)
            for (int T = 0; T < O.Par.TP; ++T)
              Out.push_back({T, P, E, N, None ? at::Tensor() : ByRank[static_cast<size_t>(T)]});
      };
      Put(At.Stage, At.Name, false);
      // With PP > 1 the last stage allocates the tied output layer too.
      if (Target.tiedCopy() && At.Name == "embedding.word_embeddings.weight")
        Put(O.Par.PP - 1, "output_layer.weight", false);
      // Transformer Engine modules carry an `_extra_state` (None loads as
      // "no FP8 state"), as import writes for torch_dist.
      if (std::string Extra = Target.extraState(At.Name); !Extra.empty())
        Put(At.Stage, Extra, true);
      return Out;
    };
    std::set<std::tuple<int, int, int, std::string>> NonesWritten;
    auto Convert = [&](const Item &It, Converted &C) {
      const PlannedTensor &PT = P.Tensors[Keys[It.Key].Members[It.Member]];
      std::vector<const void *> SourceStorages;
      at::Tensor Result;
      if (LegacyFrom) {
        // Put together from each TP rank's local tensor (views of the mapped
        // files) of the stage and EP rank that hold it.
        LegacyLayout::Place At = SourceLegacy->place(PT);
        int E = At.ExpertRank < 0 ? 0 : At.ExpertRank;
        std::vector<at::Tensor> ByRank;
        for (int Tp = 0; Tp < SourceLegacy->layout().TP; ++Tp) {
          const TensorRecord *R = LegacyFrom->find(Tp, At.Stage, E, At.Name);
          auto Options = at::TensorOptions().dtype(exec::toScalarType(R->Type));
          ByRank.push_back(at::from_blob(const_cast<uint8_t *>(R->data()), R->Shape, Options));
          SourceStorages.push_back(ByRank.back().storage().data());
          C.BytesRead += ByRank.back().nbytes();
        }
        Result = SourceLegacy->join(PT, ByRank, LegacyFrom->fileOf(0, At.Stage, E));
        std::vector<int64_t> Got(Result.sizes().begin(), Result.sizes().end());
        if (Got != PT.Shape)
          throw Error("error: " + LegacyFrom->fileOf(0, At.Stage, E) + ": '" + At.Name + "' puts together as " +
                      exec::shapeText(Got) + ", not the model's " + exec::shapeText(PT.Shape));
        C.TensorsRead += 1;
      } else if (Reshard) {
        // The global tensor as the source checkpoint holds it: a view of its
        // mapped file where one chunk holds this layer, else assembled.
        const DistKey &K = Keys[It.Key];
        const DistTensor &DT = From->tensor(K.Key);
        std::vector<int64_t> Shape(DT.Shape.begin() + static_cast<std::ptrdiff_t>(K.Prefixes[It.Member].size()),
                                   DT.Shape.end());
        auto Options = at::TensorOptions().dtype(exec::toScalarType(DT.Type));
        if (const uint8_t *View = From->viewTensorAt(K.Key, K.Prefixes[It.Member])) {
          Result = at::from_blob(const_cast<uint8_t *>(View), Shape, Options);
          SourceStorages.push_back(Result.storage().data()); // owns nothing
        } else {
          auto Bytes = std::make_shared<std::vector<uint8_t>>(From->readTensorAt(K.Key, K.Prefixes[It.Member]));
          Result = at::from_blob(
              Bytes->data(), Shape, [Bytes](void *) mutable { Bytes.reset(); }, Options);
        }
        C.BytesRead += Result.nbytes();
        C.TensorsRead += 1;
      } else {
        Result = runChain(
            PT, Fields, S,
            [&](const std::string &Name, int64_t Slice) {
              const TensorView *V = HFCkpt->find(Name);
              if (!V)
                return at::Tensor(); // an absent optional input
              at::Tensor X = viewOf(*V);
              SourceStorages.push_back(X.storage().data());
              if (Slice >= 0)
                X = X.select(0, Slice); // a view of the mapped file: only this expert is read
              C.BytesRead += X.nbytes();
              C.TensorsRead += Slice <= 0; // a stacked tensor counts once
              return X;
            },
            &Dev);
      }
      at::Tensor Host = Result.contiguous();
      if (Host.is_cuda()) {
        // Into pinned memory: a fast copy, and the caching host allocator
        // reuses its blocks (no fresh pages to clear for every tensor).
        at::Tensor Pinned = at::empty(Host.sizes(), Host.options().device(at::kCPU).pinned_memory(true));
        Pinned.copy_(Host);
        Host = Pinned;
      }
      C.Type = exec::fromScalarType(Host.scalar_type());
      if (Legacy) {
        C.Pieces = LegacyPieces(PT, Host);
        for (const LegacyPiece &Pc : C.Pieces)
          if (Pc.Value.defined() && std::find(SourceStorages.begin(), SourceStorages.end(),
                                              Pc.Value.storage().data()) == SourceStorages.end())
            C.OwnedBytes += Pc.Value.nbytes();
        return;
      }
      for (const ChunkSpec &Spec : chunksOf(PT, O.Par)) {
        at::Tensor Part = Host;
        for (size_t D = 0; D < Spec.Offsets.size(); ++D)
          Part = Part.narrow(static_cast<int64_t>(D), Spec.Offsets[D], Spec.Sizes[D]);
        Part = Part.contiguous();
        if (std::find(SourceStorages.begin(), SourceStorages.end(), Part.storage().data()) == SourceStorages.end())
          C.OwnedBytes += Part.nbytes();
        C.Chunks.push_back({Spec, std::move(Part)});
      }
    };
    bool Computes = false;
    for (const PlannedTensor &PT : P.Tensors)
      for (const OpNode &N : PT.chain().Nodes)
        Computes |= !N.IsSource && exec::opComputes(N.Kind);
    // The device is tried here, on this thread, so that a bad one is an
    // error like any other (a converter thread could only stop).
    if (Computes)
      exec::ThreadStream Probe(static_cast<int>(Dev.type()), Dev.index());
    auto Work = [&] {
      // Each converter on a stream of its own: one thread's copies and
      // kernels overlap another's, and waiting for a result waits for this
      // thread's work only.
      // (Only where some op computes: a plan that only moves bytes never
      // starts the device.)
      std::optional<exec::ThreadStream> Stream;
      if (Computes)
        Stream.emplace(static_cast<int>(Dev.type()), Dev.index());
      for (;;) {
        size_t I;
        {
          std::unique_lock<std::mutex> G(Lock);
          // Nothing ahead of the writer (NextItem == Submitted) always
          // goes: one tensor larger than the budget still converts.
          Changed.wait(G, [&] {
            return Abort || NextItem >= Items.size() ||
                   (NextItem < Submitted + Window &&
                    (NextItem == Submitted || WindowBytes + Reserve(NextItem) <= int64_t(WindowBudget)));
          });
          if (Abort || NextItem >= Items.size())
            return;
          I = NextItem++;
          WindowBytes += Reserve(I);
        }
        Converted C;
        try {
          Convert(Items[I], C);
        } catch (...) {
          C.Failure = std::current_exception();
        }
        std::lock_guard<std::mutex> G(Lock);
        C.Ready = true;
        WindowBytes += int64_t(C.OwnedBytes) - Reserve(I);
        Slots[I] = std::move(C);
        Changed.notify_all();
      }
    };
    std::vector<std::thread> Pool;
    auto StopPool = [&] {
      {
        std::lock_guard<std::mutex> G(Lock);
        Abort = true;
        Changed.notify_all();
      }
      for (std::thread &T : Pool)
        if (T.joinable())
          T.join();
    };
    try {
      for (size_t T = 0; T < Threads; ++T)
        Pool.emplace_back(Work);
      for (size_t I = 0; I < Items.size(); ++I) {
        ReadAhead(Sum.BytesRead);
        G.check(); // another process failed: stop too
        checkInterrupt();
        injectFault(G.rank(), I);
        Converted C;
        {
          std::unique_lock<std::mutex> G(Lock);
          Changed.wait(G, [&] { return Slots[I].Ready; });
          C = std::move(Slots[I]);
          WindowBytes -= int64_t(C.OwnedBytes);
        }
        if (C.Failure)
          std::rethrow_exception(C.Failure);
        const DistKey &K = Keys[Items[I].Key];
        size_t Layer = Items[I].Member;
        if (Legacy) {
          // Each rank's local tensor goes to its file now (one thread: the
          // files' bytes follow the plan order).
          for (const LegacyPiece &Pc : C.Pieces) {
            if (!Pc.Value.defined()) { // one per module, however many of its tensors
              if (NonesWritten.insert({Pc.T, Pc.P, Pc.E, Pc.Name}).second)
                LW->addNone(Pc.T, Pc.P, Pc.E, Pc.Name);
              continue;
            }
            std::vector<int64_t> Shape(Pc.Value.sizes().begin(), Pc.Value.sizes().end());
            LW->addTensor(Pc.T, Pc.P, Pc.E, Pc.Name, exec::fromScalarType(Pc.Value.scalar_type()), Shape,
                          Pc.Value.data_ptr(), Pc.Value.nbytes());
          }
        } else if (auto [Was, First] = Declared.emplace(K.Key, C.Type); First) { // this process's first layer of it
          W->declareTensor(K.Key, C.Type, K.GlobalShape);
        } else if (C.Type != Was->second) {
          // One key holds one dtype: its layers must agree.
          throw Error(describe(P.Tensors[K.Members[Layer]].Rule->Loc) + ": error: '" +
                      P.Tensors[K.Members[Layer]].Name + "' comes out as " + std::string(torchName(C.Type)) + " but '" +
                      P.Tensors[K.Members[0]].Name + "', stored in the same key '" + K.Key + "', as " +
                      std::string(torchName(Was->second)));
        }
        for (auto &[Spec, Part] : C.Chunks) {
          // The writer's thread holds the chunk (a view of the mapped source
          // file when no op changed it) until its bytes are on disk.
          std::vector<int64_t> Offsets = K.Prefixes[Layer], Sizes(K.Prefixes[Layer].size(), 1);
          Offsets.insert(Offsets.end(), Spec.Offsets.begin(), Spec.Offsets.end());
          Sizes.insert(Sizes.end(), Spec.Sizes.begin(), Spec.Sizes.end());
          W->addChunk(K.Key, Offsets, Sizes, static_cast<const uint8_t *>(Part.data_ptr()), Part.nbytes(),
                     std::make_shared<at::Tensor>(Part));
        }
        C.Chunks.clear();
        C.Pieces.clear();
        Sum.BytesRead += C.BytesRead;
        Sum.TensorsRead += C.TensorsRead;
        ++Sum.TensorsWritten;
        Bar.step(C.BytesRead);
        if (!Legacy && Layer + 1 == K.Members.size())
          for (const std::string &E : extraStateKeys(K, Hybrid))
            if (ExtraStates.insert(E).second)
              W->addBytes(E, universalExtraStateRecord());
        std::lock_guard<std::mutex> G(Lock);
        Submitted = I + 1;
        Changed.notify_all();
      }
    } catch (...) {
      StopPool();
      throw;
    }
    StopPool();
    Bar.finish();
    if (Legacy) {
      LW->finish(LegacyLayout(S, Fields, O.Par, LocalSpec).args(S, Fields));
      writeText(files::join(Iter, "manifest.json"), LW->manifest().dump(1) + "\n");
    }
    else
      W->finishData();
    double DataSeconds = Since(Start) - Sum.PrepareSeconds;
    // Each process's records go to rank 0, which writes the metadata; the
    // totals to every process, for its summary.
    std::vector<std::string> Records = G.allGather("records", Legacy ? std::string() : W->records());
    std::vector<std::string> Totals = G.allGather(
        "totals", Json({Sum.BytesRead, Sum.TensorsRead, Sum.TensorsWritten, Legacy ? LW->bytesWritten() : W->bytesWritten(),
                                    Legacy ? LW->numFiles() : W->numFiles(), Sum.ResumedTensors, Sum.ResumedBytes})
                                  .dump());
    double PrepareSeconds = Sum.PrepareSeconds;
    Sum = Summary{Sum.Mapping};
    Sum.PrepareSeconds = PrepareSeconds;
    Sum.DataSeconds = DataSeconds; // this process's share; waiting for the others comes after
    for (const std::string &Text : Totals) {
      Json J = Json::parse(Text);
      Sum.BytesRead += J[0].get<uint64_t>();
      Sum.TensorsRead += J[1].get<uint64_t>();
      Sum.TensorsWritten += J[2].get<uint64_t>();
      Sum.BytesWritten += J[3].get<uint64_t>();
      Sum.FilesWritten += J[4].get<unsigned>();
      Sum.ResumedTensors += J[5].get<uint64_t>();
      Sum.ResumedBytes += J[6].get<uint64_t>();
    }
    if (Computes)
      Sum.PeakDeviceBytes = exec::peakDeviceBytes(static_cast<int>(Dev.type()), Dev.index());
    if (!G.leader()) {
      // Rank 0 finishes (metadata, sidecar, tracker, rename) alone.
      G.broadcast("committed", "");
      Sum.Seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - Start).count();
      return Sum;
    }
    for (size_t R = 1; R < Records.size(); ++R)
      W->addRecords(Records[R]);
    if (!Legacy)
      W->finishMetadata();
    if (Resumed) {
      // Files of the interrupted run none of whose records were kept.
      const std::vector<std::string> &Used = W->fileNames();
      for (const std::string &N : files::list(Iter))
        if (N.size() > 7 && N.compare(N.size() - 7, 7, ".distcp") == 0 &&
            std::find(Used.begin(), Used.end(), N) == Used.end())
          std::remove(files::join(Iter, N).c_str());
    }

    // Sidecar: what export needs to reproduce the HF checkpoint exactly
    // (a reshard keeps its source's, with the new layout).
    Json Side = FromSide;
    if (!Reshard || HFCkpt) {
      Side = Json::object(); // in import's order
      Side["format"] = 1;
      Side["mapping"] = T.Name;
      Side["megatron_config"] = configToJson(S, Fields);
      Side["hf_config"] = HF;
      Side["hf_sharded"] = HFCkpt->sharded();
      Json Tensors = Json::object();
      for (const std::string &N : HFCkpt->names()) {
        const TensorView *V = HFCkpt->find(N);
        Tensors[N] = {
            {"file", HFCkpt->fileOf().at(N)}, {"dtype", std::string(safetensorsName(V->Type))}, {"shape", V->Shape}};
      }
      Side["hf_tensors"] = Tensors;
      // Tensors read from another of their rule's source layouts: export
      // writes them in the first.
      Json Alternatives = Json::object();
      for (const PlannedTensor &PT : P.Tensors)
        if (PT.Chosen != 0)
          Alternatives[PT.LocalName] = PT.Chosen;
      if (!Alternatives.empty())
        Side["alternatives"] = Alternatives;
      Side["layer_spec"] = LocalSpec ? "local" : "transformer_engine";
    }
    Side["checkpoint_format"] = Legacy ? "torch" : "torch_dist";
    Side["layout"] = {{"tp", O.Par.TP}, {"pp", O.Par.PP}, {"ep", O.Par.EP}, {"etp", O.Par.ETP}, {"vpp", O.Par.VPP}};
    if (O.Par.FirstStageLayers || O.Par.LastStageLayers) {
      Side["layout"]["first_stage_layers"] = O.Par.FirstStageLayers;
      Side["layout"]["last_stage_layers"] = O.Par.LastStageLayers;
    }
    writeText(files::join(Iter, "bridge.json"), Side.dump(2) + "\n");
    writeText(files::join(Iter, "run_config.yaml"), runConfigYaml(S, Fields, O.Par, Legacy ? "torch" : "torch_dist"));
    std::string TrainState = trainStateArchive();
    writeText(files::join(Iter, "train_state.pt"), TrainState);
    copyTokenizerFiles(Reshard ? files::join(FromIter, "tokenizer") : O.HFDir, files::join(Iter, "tokenizer"));
    writeText(files::join(Tmp, "latest_train_state.pt"), TrainState);
    removeResumeFiles(Tmp, Iter);
    // The tracker last: a directory without it is not a checkpoint.
    writeText(files::join(Tmp, "latest_checkpointed_iteration.txt"), "0");
    OutTarget.commit(Tmp);
    G.broadcast("committed", "1");
  } catch (...) {
    if (!G.leader())
      throw; // rank 0 removes the directory
    if (int Signal = interruptSignal(); Signal && !Legacy) {
      // Interrupted (Ctrl-C, a scheduler's preemption): what is written
      // stays, never complete-looking, for --resume to finish.
      throw Error(std::string("error: interrupted by ") + (Signal == SIGINT ? "SIGINT" : "SIGTERM") +
                  "; nothing is at " + Out + ": the part written stays in " + Tmp +
                  ", and the same command with --resume finishes it");
    }
    try {
      files::removeAll(Tmp);
    } catch (...) {
    }
    throw;
  }
  Sum.Seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - Start).count();
  return Sum;
}

} // namespace

Summary runImport(const ImportOptions &O) {
  try {
    return importWith(O, "");
  } catch (const std::exception &X) {
    if (O.Group) // the others stop at their next check
      O.Group->fail(X.what());
    throw;
  }
}

Summary runReshard(const ImportOptions &O, const std::string &FromDir) {
  try {
    return importWith(O, FromDir);
  } catch (const std::exception &X) {
    if (O.Group)
      O.Group->fail(X.what());
    throw;
  }
}

} // namespace bridge
