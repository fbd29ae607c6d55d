//===- Export.cpp - a torch_dist checkpoint back to HF safetensors ----------===//
//
// The inverse of import, a set-up of the same pipeline: the model and the HF
// layout to restore come from the checkpoint's bridge.json; every planned
// tensor is read from the torch_dist files one layer at a time, its op chain
// runs backwards, and each HF tensor goes into the shard file the source
// checkpoint had it in, so a round trip reproduces the source bit for bit.
//
//===----------------------------------------------------------------------===//
#include "Peft.h"
#include "Pipeline.h"

#include "bridge/Files.h"
#include "bridge/Registry.h"

#include <iostream>

namespace bridge {

Summary runExport(const ExportOptions &O) {
  auto Begin = std::chrono::steady_clock::now();
  Conversion C(schema());
  // --base: the adapters of a Megatron-Bridge LoRA run (its checkpoints
  // hold the adapters alone) on the base checkpoint import wrote.
  const std::string AdapterIter = iterationDir(O.MegatronDir);
  const std::string Iter = O.BaseDir.empty() ? AdapterIter : iterationDir(O.BaseDir);
  if (!O.BaseDir.empty() && !O.AdapterOnly && !O.MergeAdapters)
    throw Error("error: --base takes the adapters of --megatron; give --adapter-only or --merge-adapters");
  std::string SidePath = files::join(Iter, "bridge.json");
  if (!files::exists(SidePath))
    throw Error("error: " + Iter +
                " has no bridge.json: it was not written by 'bridge-run import', so the HF layout to restore is "
                "unknown" + (O.BaseDir.empty() && (O.AdapterOnly || O.MergeAdapters)
                                 ? std::string(" (the checkpoint of a Megatron-Bridge LoRA run: give its base "
                                               "checkpoint with --base)")
                                 : std::string()));
  Json Side = readSidecar(SidePath);
  if (!O.BaseDir.empty())
    Side["adapter"] = peftRunAdapter(AdapterIter);
  if (Side.value("checkpoint_format", "torch_dist") != "torch_dist")
    throw Error("error: " + Iter + " holds the legacy per-rank format; export reads torch_dist: run 'bridge-run "
                "reshard --megatron " + O.MegatronDir + " --out DIR' first");
  C.Mapping = &mappingNamed(Side.at("mapping").get<std::string>());
  C.Fields = configFromJson(C.S, Side.at("megatron_config"), SidePath);
  C.HFConfig = Side.at("hf_config");
  if (!Side.contains("hf_tensors"))
    throw Error("error: " + SidePath + ": hf_tensors is missing: the HF layout to restore is unknown");

  std::function<DType(const std::string &)> KeyType, AdapterKeyType;
  std::unique_ptr<Source> Src = torchDistSource(Iter, C, Side, KeyType);
  Src->open(C);
  std::unique_ptr<Source> AdapterSrc;
  if (!O.BaseDir.empty()) {
    const bool LocalSpec = C.LocalSpec; // the base's layer spec names both
    AdapterSrc = torchDistSource(AdapterIter, C, Side, AdapterKeyType);
    AdapterSrc->open(C);
    C.LocalSpec = LocalSpec;
  }
  PassThroughLister Lister = Src->passThrough();
  C.P = expandPlan(*C.Mapping, C.S, C.Fields, /*UseTENames=*/true, &Lister, Src->hfTensorCount());

  // LoRA adapters (docs/lora.md): planned beside their weights, then
  // written alone (--adapter-only) or merged into them (--merge-adapters).
  const bool HasAdapters = Side.contains("adapter");
  if (O.AdapterOnly && O.MergeAdapters)
    throw Error("error: --adapter-only and --merge-adapters exclude each other");
  if ((O.AdapterOnly || O.MergeAdapters) && !HasAdapters)
    throw Error("error: " + SidePath + " records no LoRA adapters: " + Iter +
                " was imported without --adapter, so --adapter-only and --merge-adapters have nothing to export");
  std::unique_ptr<Conversion> Adapters;
  if (HasAdapters) {
    Plan Full = C.P;
    addAdapters(Full, adapterSpecOf(Side["adapter"], SidePath));
    Adapters = std::make_unique<Conversion>(C.S);
    Adapters->Mapping = C.Mapping;
    Adapters->Fields = C.Fields;
    Adapters->HFConfig = C.HFConfig;
    Adapters->LocalSpec = C.LocalSpec;
    Adapters->P.Adapters = Full.Adapters;
    Adapters->P.Derived = Full.Derived;
    Adapters->P.Tensors.assign(Full.Tensors.begin() + static_cast<std::ptrdiff_t>(C.P.Tensors.size()),
                               Full.Tensors.end());
    Adapters->Keys = groupByKey(Adapters->P, C.S, C.Fields, C.LocalSpec);
    if (Adapters->Keys.empty())
      throw Error("error: " + SidePath + ": no weight of this model is in the adapters' target modules (" +
                  Side["adapter"].value("target_modules", Json::array()).dump() + ")");
  }
  if (O.AdapterOnly) {
    C.P = Adapters->P;
    C.Keys = Adapters->Keys;
    if (AdapterSrc) {
      Src = std::move(AdapterSrc);
      KeyType = AdapterKeyType;
    }
    Src->checkKeys(C);
    std::unique_ptr<Sink> Snk = peftSink(C, Side, SidePath, KeyType(C.Keys.at(0).Key));
    PipelineOptions PO;
    PO.OutDir = O.OutDir;
    PO.Inputs = {O.MegatronDir, O.BaseDir};
    PO.Overwrite = O.Overwrite;
    PO.Quiet = O.Quiet;
    PO.Device = O.Device;
    PO.Converters = O.Converters;
    PO.MemoryBudget = O.MemoryBudget;
    PO.Label = "export";
    PO.Start = Begin;
    Summary Sum = runPipeline(*Src, C, *Snk, PO);
    Sum.TensorsRead = C.Keys.size();
    Sum.Seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - Begin).count();
    return Sum;
  }
  C.Keys = groupByKey(C.P, C.S, C.Fields, C.LocalSpec);
  if (O.MergeAdapters)
    Src = mergingSource(std::move(Src), std::move(Adapters), C, O.Device, std::move(AdapterSrc));
  else if (HasAdapters && !O.Quiet)
    std::cerr << "bridge-run export: " << Iter
              << " holds LoRA adapters, which are not in this export: --merge-adapters merges them into the "
                 "weights, --adapter-only writes them as an HF PEFT adapter\n";
  Src->checkKeys(C);
  if (!O.Quantize.empty()) {
    if (O.Quantize != "fp8-block")
      throw Error("error: unknown --quantize scheme '" + O.Quantize + "' (fp8-block)");
    bool Declared = false;
    for (const PlannedTensor &PT : C.P.Tensors)
      for (const OpNode &N : PT.Alternatives[0].Nodes)
        Declared |= !N.IsSource && N.Kind == Op::DequantFP8Block;
    if (!Declared)
      throw Error("error: mapping '" + std::string(C.Mapping->Name) +
                  "' reads no weight through dequant_fp8_block, so --quantize fp8-block has nothing to quantize");
    C.QuantizeFP8Block = true;
  }
  std::vector<std::string> NotExported;
  std::unique_ptr<Sink> Snk = safetensorsSink(C, KeyType, Side, SidePath, O.Writers, O.MemoryBudget,
                                              Src->tokenizerDir(), NotExported);

  PipelineOptions PO;
  PO.OutDir = O.OutDir;
  PO.Inputs = {O.MegatronDir, O.BaseDir};
  PO.Overwrite = O.Overwrite;
  PO.Quiet = O.Quiet;
  // Export's inverses only move bytes (a dequantized weight is written as
  // it is), so they run on the host, where the bytes are; the device name
  // is still checked.
  PO.Device = O.Device;
  PO.Converters = O.Converters;
  PO.MemoryBudget = O.MemoryBudget;
  PO.Label = "export";
  PO.Start = Begin;
  Summary Sum = runPipeline(*Src, C, *Snk, PO);
  // What export reads are torch_dist keys (each layer by layer); the
  // pipeline counts the planned tensors it gets from them.
  Sum.TensorsRead = C.Keys.size();
  if (!NotExported.empty() && !O.Quiet) {
    std::cerr << "bridge-run export: " << NotExported.size()
              << " source tensor(s) the mapping ignores were not written back, e.g. " << NotExported[0] << "\n";
  }
  Sum.Seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - Begin).count();
  return Sum;
}

} // namespace bridge
