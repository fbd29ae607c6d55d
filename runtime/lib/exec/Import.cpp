//===- Import.cpp - import and reshard: set-ups of the pipeline -----------===//
//
// Both write a Megatron checkpoint (torch_dist or legacy) and differ only in
// the source: import reads an HF checkpoint and runs the ops forward;
// reshard reads a checkpoint written by import or reshard (or a legacy one
// Megatron-LM saved) and re-cuts its global tensors for another layout.
// Order of work: the model from the source; layout checks; the plan;
// coverage of both sides and a dry run of every op chain on meta tensors
// (the source's check), so errors surface before a byte is written; then
// runPipeline.
//
//===----------------------------------------------------------------------===//
#include "Peft.h"
#include "Pipeline.h"
#include "Resume.h"

#include "bridge/ProcessGroup.h"
#include "bridge/Registry.h"

#include <cstdio>

namespace bridge {
namespace {

/// From \p Src, whose model is in \p C, to the Megatron checkpoint \p O
/// describes; \p Command names it in resume.json.
Summary toCheckpoint(const ImportOptions &O, Source &Src, Conversion &C, const char *Command,
                     std::vector<std::string> Inputs, std::chrono::steady_clock::time_point Start) {
  ProcessGroup One;
  ProcessGroup &G = O.Group ? *O.Group : One;
  const SchemaTable &S = C.S;
  const MappingTable &T = *C.Mapping;

  // -- layout ------------------------------------------------------------------------
  std::vector<std::string> Problems = checkLayout(O.Par, fieldGetter(S, C.Fields));
  if (!Problems.empty()) {
    std::string M = "error: layout TP=" + std::to_string(O.Par.TP) + " PP=" + std::to_string(O.Par.PP) +
                    " EP=" + std::to_string(O.Par.EP) + " does not fit this model:";
    for (auto &P : Problems)
      M += "\n  " + P;
    throw Error(M);
  }

  // The legacy per-rank format: what its writer supports of it.
  const bool Legacy = O.Format == "torch";
  if (!Legacy && O.Format != "torch_dist")
    throw Error("error: unknown checkpoint format '" + O.Format + "' (torch_dist or torch)");
  if (Legacy) {
    if (O.Par.VPP > 1)
      throw Error("error: the legacy torch format is written without virtual pipeline stages (VPP " +
                  std::to_string(O.Par.VPP) + "); use torch_dist");
    if (G.size() > 1)
      throw Error("error: the legacy torch format is written by one process; run without torchrun or srun");
    if (fieldGetter(S, C.Fields)("num_moe_experts") > 0 && O.Par.ETP != 1 && O.Par.ETP != O.Par.TP)
      throw Error("error: the legacy torch format holds experts whole (ETP 1) or cut like the dense layers (ETP = TP "
                  "= " + std::to_string(O.Par.TP) + "), not ETP " + std::to_string(O.Par.ETP));
  }

  // -- the plan over what the source holds, checked against it ------------------------------
  Src.open(C);
  PassThroughLister Lister = Src.passThrough();
  C.P = expandPlan(T, S, C.Fields, /*UseTENames=*/true, Lister.List ? &Lister : nullptr, Src.hfTensorCount());
  // A checkpoint with LoRA adapters is resharded with them.
  if (!Src.hfSide()) {
    Json Side = Src.sidecar(C);
    if (Side.contains("adapter")) {
      addAdapters(C.P, adapterSpecOf(Side["adapter"], Src.dir() + "/bridge.json"));
      C.Adapter = Side["adapter"];
    }
  }
  // Megatron-LM's legacy files hold each rank's module parameters; a hybrid
  // model's Mamba in_proj and conv1d are stored here in parts that a rank
  // holds interleaved, which this writer does not put together.
  if (Legacy && C.hybrid())
    throw Error("error: mapping '" + std::string(T.Name) +
                "' is a hybrid Mamba model (MambaModel); the legacy per-rank format is written for GPT models only: "
                "use torch_dist");
  for (const PlannedTensor &PT : C.P.Tensors)
    if (PT.PassThrough && (Legacy || !Lister.List))
      throw Error("error: mapping '" + std::string(T.Name) + "' keeps '" + PT.LocalName +
                  "' as the HF module has it; the legacy per-rank format holds GPT models only: use torch_dist");
  Src.check(C);
  if (C.P.Adapters.Dim > 0) {
    if (Legacy)
      throw Error("error: LoRA adapters are written in torch_dist only, not the legacy torch format");
    // Beside a column-parallel weight A is cut on its rank.
    if (C.P.Adapters.Dim % O.Par.TP)
      throw Error("error: the LoRA adapters' rank " + std::to_string(C.P.Adapters.Dim) +
                  " (Megatron's dim) does not divide over TP=" + std::to_string(O.Par.TP) +
                  " ranks; Megatron-Bridge cuts A of a column-parallel module on its rank");
  }
  C.Keys = groupByKey(C.P, S, C.Fields, C.LocalSpec);
  if (C.P.Adapters.Dim > 0 && !O.Quiet && G.leader()) {
    // What a LoRA run that resumes from this needs in its peft config.
    std::string Targets;
    for (const std::string &T : C.P.Adapters.Targets)
      Targets += (Targets.empty() ? "" : ", ") + T;
    const int64_t Blocks = C.Adapter.value("hf_blocks", int64_t{1});
    std::fprintf(stderr, "bridge-run %s: LoRA adapters on %s: peft.dim %lld, peft.alpha %.17g%s\n", Command,
                 Targets.c_str(), static_cast<long long>(C.P.Adapters.Dim), C.P.Adapters.Alpha,
                 Blocks > 1 ? " (the HF modules Megatron fuses had their own A: stacked, docs/lora.md)" : "");
  }

  // -- the sink and the pipeline ------------------------------------------------------------
  const uint64_t WindowBudget = std::max<uint64_t>(O.MemoryBudget / 4, 1);
  std::unique_ptr<Sink> Snk =
      Legacy ? legacySink(O.Par, Src.sidecar(C), Src.tokenizerDir())
             : torchDistSink(O.Par, O.Writers, std::max<uint64_t>(O.MemoryBudget - WindowBudget, 1), Src.sidecar(C),
                             Src.tokenizerDir());
  PipelineOptions PO;
  PO.OutDir = O.OutDir;
  PO.Inputs = std::move(Inputs);
  PO.Overwrite = O.Overwrite;
  PO.Quiet = O.Quiet;
  PO.Resume = O.Resume;
  PO.Device = O.Device;
  PO.Converters = O.Converters;
  PO.MemoryBudget = O.MemoryBudget;
  PO.Group = O.Group;
  PO.Label = "import";
  PO.Fingerprint = [&, Command] {
    return resumeFingerprint(Command, T.Name, O.Format, C.LocalSpec, O.Par, G.size(), Src.dir(), C.P);
  };
  PO.Start = Start;
  return runPipeline(Src, C, *Snk, PO);
}

} // namespace

Summary runImport(const ImportOptions &O) {
  try {
    auto Start = std::chrono::steady_clock::now();
    Conversion C(schema());
    std::unique_ptr<Source> Src = hfSource(O.HFDir, C, O.LocalSpec, O.AdapterDir);
    return toCheckpoint(O, *Src, C, "import", {O.HFDir, O.AdapterDir}, Start);
  } catch (const std::exception &X) {
    if (O.Group) // the others stop at their next check
      O.Group->fail(X.what());
    throw;
  }
}

Summary runReshard(const ImportOptions &O, const std::string &FromDir) {
  try {
    auto Start = std::chrono::steady_clock::now();
    Conversion C(schema());
    // The mapping, config and layer spec are the source checkpoint's.
    std::unique_ptr<Source> Src = checkpointSource(FromDir, O.HFDir, C);
    if (O.LocalSpec && !C.LocalSpec)
      throw Error("error: " + Src->dir() + " holds Transformer Engine names; reshard keeps its source's layer spec, "
                  "so --local-spec does not apply");
    return toCheckpoint(O, *Src, C, "reshard", {O.HFDir, FromDir}, Start);
  } catch (const std::exception &X) {
    if (O.Group)
      O.Group->fail(X.what());
    throw;
  }
}

GroupSummary runImportInGroup(ImportOptions O) {
  ProcessGroup Group(groupEnvironment());
  if (Group.size() > 1) {
    O.Group = &Group;
    if (O.Device == "cuda") // one GPU per process on its host
      O.Device = "cuda:" + std::to_string(Group.localRank());
  }
  return {runImport(O), Group.size(), Group.leader()};
}

GroupSummary runReshardInGroup(ImportOptions O, const std::string &FromDir) {
  ProcessGroup Group(groupEnvironment());
  if (Group.size() > 1)
    O.Group = &Group;
  return {runReshard(O, FromDir), Group.size(), Group.leader()};
}

} // namespace bridge
