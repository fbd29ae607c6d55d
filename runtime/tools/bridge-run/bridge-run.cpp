//===- bridge-run.cpp - the conversion driver ------------------------------===//
//
// bridge-run list                          the families this build converts
// bridge-run config  --hf PATH             the Megatron config of an HF config.json
// bridge-run plan    --hf PATH             every Megatron tensor, its slices and stage
// bridge-run inspect --hf DIR [--draft FILE] what a new family needs (Inspect.cpp)
// bridge-run import  --hf DIR --out DIR    HF safetensors -> Megatron-Core torch_dist
// bridge-run export  --megatron DIR --out DIR   torch_dist -> HF safetensors
// bridge-run reshard --megatron DIR --out DIR   another layout or format
// bridge-run verify  DIR [--against SOURCE]     an output against its manifest
// bridge-run recipe  list | show NAME      the compiled training recipes
//
// Every option is one row of kOptions: its spelling, its value, the
// commands that take it, its help text and how it is applied. The usage
// text and the parser are made from that table.
//
// Exit codes: 0 success, 1 the input cannot be converted (message says why),
// 2 usage or I/O error.
//
//===----------------------------------------------------------------------===//
#include "bridge/Config.h"
#include "bridge/Convert.h"
#include "bridge/ExecModule.h"
#include "bridge/Interrupt.h"
#include "bridge/Layout.h"
#include "bridge/Plan.h"
#include "bridge/ProcessGroup.h"
#include "bridge/Registry.h"
#include "bridge/Safetensors.h"
#include "bridge/StrictJson.h"
#include "Inspect.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <tuple>
#include <cstring>
#include <fstream>
#include <iterator>
#include <iostream>
#include <sstream>
#include <string>
#include <sys/resource.h>
#include <sys/stat.h>

using namespace bridge;

namespace {

const char *CommandsText =
    "usage: bridge-run <command> [options]\n"
    "\n"
    "commands:\n"
    "  list                      the model families this build converts\n"
    "  config --hf PATH          the Megatron model config for an HF config.json,\n"
    "                            and the config.json export would write back\n"
    "  plan   --hf PATH          every Megatron tensor: its HF sources, op, global\n"
    "         [layout options]   shape, parallel style, pipeline stage and rank slice,\n"
    "                            and the bytes each rank holds (no weights are read)\n"
    "  inspect --hf DIR [--draft FILE]\n"
    "                            which mapping serves an HF checkpoint and whether it\n"
    "                            reads every tensor; for an unknown family, the config\n"
    "                            fields no mapping reads, the tensor names as patterns\n"
    "                            ({i} layer, {e} expert) with the shipped rules that\n"
    "                            read each, and with --draft a .bridge file to fill in\n"
    "                            (no weights are read)\n"
    "  import --hf DIR --out DIR HF safetensors checkpoint -> Megatron-Core torch_dist\n"
    "         [layout options]\n"
    "  export --megatron DIR --out DIR\n"
    "                            a checkpoint written by import -> HF safetensors\n"
    "  verify DIR [--against SOURCE]\n"
    "                            re-read an output (torch_dist, legacy or an HF export)\n"
    "                            and check every record against its manifest.json; with\n"
    "                            --against, check that an HF export holds its source's\n"
    "                            tensors bit for bit\n"
    "  recipe list               the compiled training recipes: model, mode, GPUs,\n"
    "                            layout and the memory estimate per GPU\n"
    "  recipe show NAME [--format megatron-bridge-yaml|megatron-lm-args]\n"
    "         [--checkpoint DIR] a recipe as a Megatron-Bridge override (default) or\n"
    "                            Megatron-LM arguments, starting from DIR\n"
    "  reshard --megatron DIR --out DIR [--hf HF] [layout options]\n"
    "                            a checkpoint written by import or reshard (torch_dist\n"
    "                            or legacy) -> the same model at another layout or\n"
    "                            format (--format): what import would write; a legacy\n"
    "                            checkpoint Megatron-LM saved needs --hf (its model)\n";

const char *ProcessesText =
    "\n"
    "several processes (import, reshard): start bridge-run with torchrun or srun; the\n"
    "processes share the work and write one checkpoint to a shared file system:\n"
    "  torchrun --nproc_per_node 4 --no-python bridge-run import --hf DIR --out DIR\n"
    "  (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, or srun's SLURM_*;\n"
    "  --device cuda uses GPU LOCAL_RANK; BRIDGE_DIST_TIMEOUT: seconds a silent\n"
    "  process is waited for, default 120)\n"
    "\n"
    "import, reshard and export load libbridge_exec.so from beside bridge-run;\n"
    "BRIDGE_EXEC_MODULE names another path\n";

[[noreturn]] void usageError(const std::string &Msg);

struct Options {
  std::string Command, HF, Out, Megatron, Device = "cpu", Format = "torch_dist", Target, Against, Recipe, Checkpoint,
      Quantize, Draft, Adapter, Base;
  std::vector<std::string> Rest; ///< words after the command (recipe list/show NAME)
  std::vector<std::string> IgnoreMappings; ///< inspect: mappings treated as absent
  bool FormatGiven = false, LayoutGiven = false;
  bool AsJson = false, LocalNames = false, Overwrite = false, Quiet = false, LocalSpec = false, Resume = false;
  bool AdapterOnly = false, MergeAdapters = false;
  Layout Par;
  unsigned Writers = 8, Converters = 4;
  uint64_t MemoryBudget = uint64_t(2) << 30;
};

/// The commands, as bits: which take an option.
enum CommandBit : unsigned {
  CmdList = 1u << 0,
  CmdConfig = 1u << 1,
  CmdPlan = 1u << 2,
  CmdImport = 1u << 3,
  CmdExport = 1u << 4,
  CmdReshard = 1u << 5,
  CmdVerify = 1u << 6,
  CmdRecipe = 1u << 7,
  CmdInspect = 1u << 8,
  CmdAll = (1u << 9) - 1,
};

const std::pair<const char *, unsigned> kCommands[] = {
    {"list", CmdList},     {"config", CmdConfig},   {"plan", CmdPlan},     {"import", CmdImport},
    {"export", CmdExport}, {"reshard", CmdReshard}, {"verify", CmdVerify}, {"recipe", CmdRecipe},
    {"inspect", CmdInspect},
};

unsigned commandBit(const std::string &Name) {
  for (auto &[N, Bit] : kCommands)
    if (Name == N)
      return Bit;
  return 0;
}

std::string commandNames(unsigned Bits) {
  std::string S;
  for (auto &[N, Bit] : kCommands)
    if (Bits & Bit)
      S += (S.empty() ? "" : ", ") + std::string(N);
  return S;
}

int numberArg(const std::string &Flag, const std::string &Text);
uint64_t sizeArg(const std::string &Text, const std::string &Flag);

/// One option: how it is spelled, the value it takes (null: a switch), the
/// commands that take it, its help text, and what it sets.
struct OptionDef {
  const char *Flag;
  const char *Value;
  unsigned Commands;
  bool Layout; ///< listed under "layout options"
  const char *Help;
  void (*Apply)(Options &O, const std::string &Flag, const std::string &Value);
};

constexpr unsigned CmdWrite = CmdImport | CmdExport | CmdReshard;
constexpr unsigned CmdLayout = CmdPlan | CmdImport | CmdReshard;

const OptionDef kOptions[] = {
    {"--tp", "N", CmdLayout, true, "tensor-parallel size",
     [](Options &O, const std::string &F, const std::string &V) { O.Par.TP = numberArg(F, V), O.LayoutGiven = true; }},
    {"--pp", "N", CmdLayout, true, "pipeline-parallel size",
     [](Options &O, const std::string &F, const std::string &V) { O.Par.PP = numberArg(F, V), O.LayoutGiven = true; }},
    {"--ep", "N", CmdLayout, true, "expert-parallel size",
     [](Options &O, const std::string &F, const std::string &V) { O.Par.EP = numberArg(F, V), O.LayoutGiven = true; }},
    {"--etp", "N", CmdLayout, true, "expert tensor-parallel size",
     [](Options &O, const std::string &F, const std::string &V) { O.Par.ETP = numberArg(F, V), O.LayoutGiven = true; }},
    {"--vpp", "N", CmdLayout, true, "virtual pipeline stages per rank",
     [](Options &O, const std::string &F, const std::string &V) { O.Par.VPP = numberArg(F, V), O.LayoutGiven = true; }},
    {"--first-stage-layers", "N", CmdLayout, true, "layers of the first pipeline stage (uneven stages)",
     [](Options &O, const std::string &F, const std::string &V) {
       O.Par.FirstStageLayers = numberArg(F, V), O.LayoutGiven = true;
     }},
    {"--last-stage-layers", "N", CmdLayout, true, "layers of the last pipeline stage (uneven stages)",
     [](Options &O, const std::string &F, const std::string &V) {
       O.Par.LastStageLayers = numberArg(F, V), O.LayoutGiven = true;
     }},
    {"--hf", "PATH", CmdConfig | CmdPlan | CmdImport | CmdReshard | CmdInspect, false,
     "an HF checkpoint directory or its config.json",
     [](Options &O, const std::string &, const std::string &V) { O.HF = V; }},
    {"--megatron", "DIR", CmdExport | CmdReshard, false, "a checkpoint written by import or reshard",
     [](Options &O, const std::string &, const std::string &V) { O.Megatron = V; }},
    {"--out", "DIR", CmdWrite, false,
     "the output directory (built beside it as\nDIR.partial-<pid>, renamed into place when complete)",
     [](Options &O, const std::string &, const std::string &V) {
       O.Out = V;
       // 'out/' (shell completion) names the same directory; the output is
       // built beside it as 'out.partial-<pid>', not inside it.
       while (O.Out.size() > 1 && O.Out.back() == '/')
         O.Out.pop_back();
     }},
    {"--json", nullptr, CmdList | CmdConfig | CmdPlan | CmdRecipe | CmdInspect, false, "machine-readable output",
     [](Options &O, const std::string &, const std::string &) { O.AsJson = true; }},
    {"--local-names", nullptr, CmdPlan, false,
     "name tensors as the local layer spec does\n(default: Transformer Engine names)",
     [](Options &O, const std::string &, const std::string &) { O.LocalNames = true; }},
    {"--device", "DEV", CmdWrite, false,
     "where dequantization runs: cpu (default), cuda,\ncuda:N (ops that only move bytes stay on the host)",
     [](Options &O, const std::string &, const std::string &V) { O.Device = V; }},
    {"--overwrite", nullptr, CmdWrite, false,
     "replace an existing output directory (one that\nbridge-run wrote, or an empty one; never an input)",
     [](Options &O, const std::string &, const std::string &) { O.Overwrite = true; }},
    {"--resume", nullptr, CmdImport | CmdReshard, false,
     "finish an interrupted run into the same --out (its\n<out>.partial-* directory): pieces whose CRC-32 still\n"
     "matches are kept, the rest redone",
     [](Options &O, const std::string &, const std::string &) { O.Resume = true; }},
    {"--quantize", "SCHEME", CmdExport, false,
     "fp8-block: write the weights the mapping reads through\ndequant_fp8_block as e4m3 with 128x128 block scales\n"
     "(weight_scale_inv, DeepSeek-V3's layout); default: as converted",
     [](Options &O, const std::string &F, const std::string &V) {
       if (V != "fp8-block")
         usageError(F + " takes fp8-block");
       O.Quantize = V;
     }},
    {"--adapter", "DIR", CmdImport, false,
     "an HF PEFT LoRA adapter of --hf, written beside the\nweights in Megatron-Bridge's LoRA layout (docs/lora.md)",
     [](Options &O, const std::string &, const std::string &V) { O.Adapter = V; }},
    {"--adapter-only", nullptr, CmdExport, false,
     "write the checkpoint's LoRA adapters alone, as an HF\nPEFT directory (adapter_config.json and\n"
     "adapter_model.safetensors)",
     [](Options &O, const std::string &, const std::string &) { O.AdapterOnly = true; }},
    {"--base", "DIR", CmdExport, false,
     "with --adapter-only or --merge-adapters: --megatron is a\nMegatron-Bridge LoRA run's checkpoint (adapters alone)\n"
     "on this base checkpoint, which import wrote",
     [](Options &O, const std::string &, const std::string &V) { O.Base = V; }},
    {"--merge-adapters", nullptr, CmdExport, false,
     "merge the checkpoint's LoRA adapters into the weights\n(W + alpha/dim * B A in fp32, on --device)",
     [](Options &O, const std::string &, const std::string &) { O.MergeAdapters = true; }},
    {"--local-spec", nullptr, CmdImport | CmdReshard, false,
     "key tensors for a model built with the local layer\nspec (no Transformer Engine); default: TE spec",
     [](Options &O, const std::string &, const std::string &) { O.LocalSpec = true; }},
    {"--writers", "N", CmdWrite, false,
     "threads writing the output (default 8); import writes\nN .distcp files, so its output depends on N",
     [](Options &O, const std::string &F, const std::string &V) {
       int N = numberArg(F, V);
       if (N < 1 || N > 256)
         usageError(F + " needs a number from 1 to 256");
       O.Writers = static_cast<unsigned>(N);
     }},
    {"--converters", "N", CmdWrite, false,
     "threads converting tensors (default 4; the output\ndoes not depend on N)",
     [](Options &O, const std::string &F, const std::string &V) {
       int N = numberArg(F, V);
       if (N < 1 || N > 256)
         usageError(F + " needs a number from 1 to 256");
       O.Converters = static_cast<unsigned>(N);
     }},
    {"--memory-budget", "SIZE", CmdWrite, false,
     "memory converted tensors may hold while they wait\nfor the writers, e.g. 512M, 4G (default 2G)",
     [](Options &O, const std::string &F, const std::string &V) { O.MemoryBudget = sizeArg(V, F); }},
    {"--recipe", "NAME", CmdImport, false, "the layout of a recipe (recipe list)",
     [](Options &O, const std::string &, const std::string &V) { O.Recipe = V; }},
    {"--format", "F", CmdImport | CmdReshard | CmdRecipe, false,
     "import, reshard: torch_dist (default) or torch, the\nlegacy per-rank mp_rank_*/model_optim_rng.pt files;\n"
     "recipe show: megatron-bridge-yaml or megatron-lm-args",
     [](Options &O, const std::string &, const std::string &V) { O.Format = V, O.FormatGiven = true; }},
    {"--checkpoint", "DIR", CmdRecipe, false, "recipe show: the checkpoint to start from",
     [](Options &O, const std::string &, const std::string &V) { O.Checkpoint = V; }},
    {"--draft", "FILE", CmdInspect, false, "inspect: write a draft .bridge file for a family no\nmapping serves",
     [](Options &O, const std::string &, const std::string &V) { O.Draft = V; }},
    {"--ignore-mapping", "NAME", CmdInspect, false,
     "inspect: treat shipped mapping NAME as absent (repeatable;\nfor testing drafts against a shipped family)",
     [](Options &O, const std::string &, const std::string &V) { O.IgnoreMappings.push_back(V); }},
    {"--against", "SOURCE", CmdVerify, false, "the HF source an export must hold bit for bit",
     [](Options &O, const std::string &, const std::string &V) { O.Against = V; }},
    {"--quiet", nullptr, CmdAll, false, "no progress line",
     [](Options &O, const std::string &, const std::string &) { O.Quiet = true; }},
};

const OptionDef *findOption(const std::string &Flag) {
  for (const OptionDef &D : kOptions)
    if (Flag == D.Flag)
      return &D;
  return nullptr;
}

/// The usage text: the commands, then every option of the table.
std::string usageText() {
  std::string U = CommandsText;
  auto Rows = [&](bool Layout) {
    for (const OptionDef &D : kOptions) {
      if (D.Layout != Layout)
        continue;
      std::string Left = std::string("  ") + D.Flag + (D.Value ? std::string(" ") + D.Value : "");
      std::string Help = D.Help;
      // Which commands take it, unless the help says so per command.
      if (D.Commands != CmdAll && !Layout && Help.find(':') == std::string::npos)
        Help += "\n(" + commandNames(D.Commands) + ")";
      size_t Start = 0;
      bool First = true;
      while (Start <= Help.size()) {
        size_t End = Help.find('\n', Start);
        std::string Line = Help.substr(Start, End == std::string::npos ? std::string::npos : End - Start);
        std::string Pad = First ? Left : "";
        if (First && Pad.size() >= 28) {
          U += Pad + "\n";
          Pad.clear();
        }
        U += Pad + std::string(28 - Pad.size(), ' ') + Line + "\n";
        First = false;
        if (End == std::string::npos)
          break;
        Start = End + 1;
      }
    }
  };
  U += "\nlayout options (plan, import, reshard; validated against the model; they\nshape chunks and plans):\n";
  Rows(true);
  U += "\noptions:\n";
  Rows(false);
  U += "  -h, --help                this text\n";
  U += ProcessesText;
  return U;
}

/// " (process R)" for every process but the first of several.
std::string who(int Rank) { return Rank ? " (process " + std::to_string(Rank) + ")" : std::string(); }

std::string human(uint64_t Bytes) {
  char B[32];
  if (Bytes >= (1ull << 30))
    std::snprintf(B, sizeof B, "%.2f GiB", Bytes / double(1ull << 30));
  else if (Bytes >= (1ull << 20))
    std::snprintf(B, sizeof B, "%.2f MiB", Bytes / double(1ull << 20));
  else
    std::snprintf(B, sizeof B, "%.1f KiB", Bytes / 1024.0);
  return B;
}

void printSummary(const char *What, const Summary &S, const std::string &Out) {
  double Rate = S.Seconds > 0 ? S.BytesRead / S.Seconds / 1e9 : 0;
  std::printf("%s done: mapping %s, %llu tensors read (%s), %llu written (%s) to %s in %.2f s (%.2f GB/s read)\n",
              What, S.Mapping.c_str(), static_cast<unsigned long long>(S.TensorsRead), human(S.BytesRead).c_str(),
              static_cast<unsigned long long>(S.TensorsWritten), human(S.BytesWritten).c_str(), Out.c_str(),
              S.Seconds, Rate);
  if (S.ResumedTensors)
    std::printf("resumed: %llu tensors (%s) an interrupted run wrote were checked against their CRC-32 and kept\n",
                static_cast<unsigned long long>(S.ResumedTensors), human(S.ResumedBytes).c_str());
  if (S.DataSeconds > 0)
    std::printf("time: %.2f s config, plan and checks; %.2f s tensors; %.2f s metadata and the rest\n",
                S.PrepareSeconds, S.DataSeconds, S.Seconds - S.PrepareSeconds - S.DataSeconds);
  // ru_maxrss counts the source file's mapped pages this process touched
  // (shared page cache, not memory it holds) as well as its own.
  struct rusage RU;
  if (::getrusage(RUSAGE_SELF, &RU) == 0)
    std::printf("peak resident set %s (includes mapped source pages)%s\n",
                human(static_cast<uint64_t>(RU.ru_maxrss) * 1024).c_str(),
                S.FilesWritten > 1 ? (", " + std::to_string(S.FilesWritten) + " files written in parallel").c_str()
                                   : "");
  if (S.PeakDeviceBytes)
    std::printf("peak GPU memory %s (the caching allocator's reserved peak)\n", human(S.PeakDeviceBytes).c_str());
}

int numberArg(const std::string &Flag, const std::string &Text) {
  char *End = nullptr;
  long V = std::strtol(Text.c_str(), &End, 10);
  if (Text.empty() || !End || *End || V < 0 || V > 1 << 20)
    usageError(Flag + " needs a non-negative number, not '" + Text + "'");
  return static_cast<int>(V);
}

/// "512M", "4G", "1.5G", "1000000" (bytes); K, M, G, T are powers of 1024.
uint64_t sizeArg(const std::string &Text, const std::string &Flag) {
  char *End = nullptr;
  double V = std::strtod(Text.c_str(), &End);
  std::string Unit = End ? End : "";
  double Scale = Unit.empty() || Unit == "B" ? 1 : 0;
  const char *Units = "KMGT";
  for (int K = 0; K < 4; ++K)
    if (Unit == std::string(1, Units[K]) || Unit == std::string(1, Units[K]) + "iB" ||
        Unit == std::string(1, Units[K]) + "B")
      Scale = std::pow(1024.0, K + 1);
  if (End == Text.c_str() || Scale == 0 || !(V > 0) || V * Scale > 1e18)
    usageError(Flag + " needs a size such as 512M or 4G, not '" + Text + "'");
  return static_cast<uint64_t>(V * Scale);
}

[[noreturn]] void usageError(const std::string &Msg) {
  std::cerr << "bridge-run: error: " << Msg << "\n\n" << usageText();
  std::exit(2);
}

/// Inside main's try: an unreadable or malformed config.json is an error
/// naming it (exit 1), like any other input.
Json readConfig(const std::string &Path) { return readConfigJson(Path); }

std::string shapeText(const std::vector<int64_t> &Shape) {
  std::string S = "[";
  for (size_t I = 0; I < Shape.size(); ++I)
    S += (I ? ", " : "") + std::to_string(Shape[I]);
  return S + "]";
}

int cmdList(const Options &O) {
  Json Out = Json::array();
  for (const RegistryEntry &E : allMappings()) {
    Json Row;
    Row["name"] = E.Name;
    Row["source"] = E.Table->SourceFile;
    Row["model_types"] = Json::array();
    for (const char *M : E.Table->ModelTypes)
      Row["model_types"].push_back(M);
    Row["architectures"] = Json::array();
    for (const char *A : E.Table->Architectures)
      Row["architectures"].push_back(A);
    Row["config_rules"] = E.Table->Config.Size;
    Row["tensor_rules"] = E.Table->Tensors.Size;
    Out.push_back(Row);
  }
  if (O.AsJson) {
    std::cout << Out.dump(2) << "\n";
    return 0;
  }
  // Columns as wide as their longest entry, so that every row lines up.
  std::vector<std::string> Types;
  int NameW = 7, TypesW = 11, SourceW = 6;
  for (auto &R : Out) {
    std::string T;
    for (auto &A : R["model_types"])
      T += (T.empty() ? "" : ",") + A.get<std::string>();
    Types.push_back(T);
    NameW = std::max(NameW, static_cast<int>(R["name"].get<std::string>().size()));
    TypesW = std::max(TypesW, static_cast<int>(T.size()));
    SourceW = std::max(SourceW, static_cast<int>(R["source"].get<std::string>().size()));
  }
  std::printf("%-*s %-*s %-*s %6s %6s\n", NameW, "mapping", TypesW, "model types", SourceW, "source", "config", "rules");
  for (size_t I = 0; I < Out.size(); ++I) {
    const Json &R = Out[I];
    std::printf("%-*s %-*s %-*s %6d %6d\n", NameW, R["name"].get<std::string>().c_str(), TypesW, Types[I].c_str(),
                SourceW, R["source"].get<std::string>().c_str(), R["config_rules"].get<int>(), R["tensor_rules"].get<int>());
  }
  return 0;
}

int cmdRecipe(const Options &O) {
  if (O.Rest.empty() || (O.Rest[0] != "list" && O.Rest[0] != "show"))
    usageError("recipe needs 'list' or 'show NAME'");
  if (O.Rest[0] == "list") {
    std::vector<RecipeInfo> All = listRecipes();
    if (O.AsJson) {
      Json J = Json::array();
      for (const RecipeInfo &R : All)
        J.push_back({{"name", R.Name},
                     {"source", R.Source},
                     {"model", R.Model},
                     {"mode", R.Mode},
                     {"gpus", R.Gpus},
                     {"layout", {{"tp", R.Par.TP}, {"pp", R.Par.PP}, {"vpp", R.Par.VPP}, {"ep", R.Par.EP},
                                 {"etp", R.Par.ETP}}},
                     {"estimate_gib", (R.WeightBytes + R.ActivationBytes) / double(1ull << 30)},
                     {"parameters", R.Parameters},
                     {"flops_per_token", R.FlopsPerToken}});
      std::printf("%s\n", J.dump(2).c_str());
      return 0;
    }
    std::printf("%-28s %-34s %-9s %5s  %-22s %s\n", "recipe", "model", "mode", "gpus", "layout", "estimate/GPU");
    for (const RecipeInfo &R : All) {
      char Lay[64];
      std::snprintf(Lay, sizeof Lay, "tp%d pp%d%s ep%d etp%d", R.Par.TP, R.Par.PP,
                    R.Par.VPP > 1 ? (" vpp" + std::to_string(R.Par.VPP)).c_str() : "", R.Par.EP, R.Par.ETP);
      std::printf("%-28s %-34s %-9s %5d  %-22s %.1f GiB\n", R.Name.c_str(), R.Model.c_str(), R.Mode.c_str(), R.Gpus,
                  Lay, (R.WeightBytes + R.ActivationBytes) / double(1ull << 30));
    }
    return 0;
  }
  if (O.Rest.size() != 2)
    usageError("recipe show needs a name: bridge-run recipe show NAME [--format megatron-bridge-yaml|megatron-lm-args]");
  std::vector<std::string> Notes;
  std::string Text = showRecipe(O.Rest[1], O.FormatGiven ? O.Format : "megatron-bridge-yaml", O.Checkpoint, Notes);
  std::fputs(Text.c_str(), stdout);
  for (const std::string &N : Notes)
    std::cerr << "bridge-run: note: " << N << "\n";
  return 0;
}

int cmdConfig(const Options &O) {
  Json HF = readConfig(O.HF);
  const MappingTable &T = mappingFor(HF);
  std::vector<Json> Fields = importConfig(T, schema(), HF);
  Json Back = exportConfig(T, schema(), Fields, &HF);
  if (O.AsJson) {
    Json Out;
    Out["mapping"] = T.Name;
    Out["megatron"] = configToJson(schema(), Fields);
    Out["export"] = Back;
    std::cout << dumpPythonJson(Out, 2) << "\n";
    return 0;
  }
  std::cout << "mapping " << T.Name << " (" << T.SourceFile << ")\n\nMegatron model config:\n";
  Json Megatron = configToJson(schema(), Fields);
  for (auto &[K, V] : Megatron.items())
    if (!V.is_null())
      std::printf("  %-40s %s\n", K.c_str(), V.dump().c_str());
  std::cout << "\nconfig.json written on export:\n" << dumpPythonJson(Back, 2) << "\n";
  return 0;
}

int cmdPlan(const Options &O) {
  Json HF = readConfig(O.HF);
  const MappingTable &T = mappingFor(HF);
  std::vector<Json> Fields = importConfig(T, schema(), HF);
  std::vector<std::string> Problems = checkLayout(O.Par, fieldGetter(schema(), Fields));
  if (!Problems.empty()) {
    std::string M = "error: the layout does not fit this model:";
    for (auto &Pr : Problems)
      M += "\n  " + Pr;
    throw Error(M);
  }
  // With the checkpoint at hand, pass-through rules (a VLM's vision tower)
  // list what it holds under their prefix; from config.json alone each is
  // one row, its pattern.
  std::unique_ptr<SafetensorsCheckpoint> HFCkpt;
  struct stat St;
  if (stat(O.HF.c_str(), &St) == 0 && S_ISDIR(St.st_mode) &&
      (stat((O.HF + "/model.safetensors").c_str(), &St) == 0 ||
       stat((O.HF + "/model.safetensors.index.json").c_str(), &St) == 0))
    HFCkpt = std::make_unique<SafetensorsCheckpoint>(O.HF);
  PassThroughLister Lister = HFCkpt ? passThroughOf(*HFCkpt) : PassThroughLister();
  Plan P = expandPlan(T, schema(), Fields, !O.LocalNames, HFCkpt ? &Lister : nullptr,
                      HFCkpt ? HFCkpt->names().size() : 0);
  // Where each tensor lives: its pipeline stage (layers; embedding first,
  // final norm and output layer last) and each TP/ETP rank's slice, and
  // the bytes every rank holds (params_dtype, as training keeps them).
  size_t Elem = 4;
  for (uint32_t I = 0; I < schema().Fields.Size; ++I)
    if (std::string(schema().Fields[I].Name) == "params_dtype" && Fields[I].is_string())
      Elem = Fields[I].get<std::string>() == "float32" ? 4 : 2;
  auto StageOf = [&](const PlannedTensor &PT) { return placementOf(PT, O.Par, schema(), Fields).Stage; };
  auto ExpertRank = [&](const PlannedTensor &PT) { return placementOf(PT, O.Par, schema(), Fields).ExpertRank; };
  std::map<std::tuple<int, int, int>, uint64_t> RankBytes; // (pp, tp, ep)
  std::vector<std::vector<std::pair<int, ChunkSpec>>> Slices;
  for (const PlannedTensor &PT : P.Tensors) {
    std::vector<ChunkSpec> Chunks = chunksOf(PT, O.Par);
    int T = PT.Expert ? O.Par.ETP : O.Par.TP;
    std::vector<std::pair<int, ChunkSpec>> Mine;
    for (size_t C = 0; C < Chunks.size(); ++C)
      Mine.push_back({Chunks.size() == 1 ? -1 : static_cast<int>(C % T), Chunks[C]});
    Slices.push_back(Mine);
    int Stage = StageOf(PT), ER = ExpertRank(PT);
    for (int TPR = 0; TPR < O.Par.TP; ++TPR)
      for (int EPR = 0; EPR < O.Par.EP; ++EPR) {
        if (ER >= 0 && ER != EPR)
          continue;
        uint64_t Bytes = 0;
        for (auto &[R, C] : Mine) {
          if ((R >= 0 && R != TPR % T) || (PT.PassThrough && PT.Shape.empty()))
            continue;
          uint64_t N = Elem;
          for (int64_t D : C.Sizes)
            N *= static_cast<uint64_t>(D);
          Bytes += N;
        }
        RankBytes[{Stage, TPR, EPR}] += Bytes;
      }
  }
  int64_t Elements = 0;
  for (auto &PT : P.Tensors) {
    if (PT.PassThrough && PT.Shape.empty())
      continue; // a kept module from config.json alone: its size is the checkpoint's
    int64_t N = 1;
    for (int64_t D : PT.Shape)
      N *= D;
    Elements += N;
  }
  if (O.AsJson) {
    Json Out;
    Out["mapping"] = T.Name;
    Out["tensors"] = Json::array();
    for (size_t K = 0; K < P.Tensors.size(); ++K) {
      const PlannedTensor &PT = P.Tensors[K];
      Json Alternatives = Json::array(); // every source layout the rule accepts
      for (const SourceChain &Ch : PT.Alternatives)
        Alternatives.push_back({{"recipe", Ch.Recipe}, {"sources", Ch.Sources}});
      Json Ranks = Json::array();
      for (auto &[R, C] : Slices[K])
        Ranks.push_back({{"tp_rank", R}, {"offsets", C.Offsets}, {"sizes", C.Sizes}});
      Out["tensors"].push_back({{"name", PT.Name},
                                {"local_name", PT.LocalName},
                                {"shape", PT.Shape},
                                {"style", styleName(PT.ParallelStyle)},
                                {"expert", PT.Expert},
                                {"pp_stage", StageOf(PT)},
                                {"slices", Ranks},
                                {"recipe", PT.recipe()},
                                {"sources", PT.sources()},
                                {"optional_sources", PT.chain().SourceOptional},
                                {"source_slices", PT.chain().SourceSlice},
                                {"source_rows", PT.chain().SourceRows},
                                {"alternatives", Alternatives}});
    }
    Out["ranks"] = Json::array();
    for (auto &[Key, Bytes] : RankBytes)
      Out["ranks"].push_back({{"pp", std::get<0>(Key)}, {"tp", std::get<1>(Key)}, {"ep", std::get<2>(Key)},
                              {"bytes", Bytes}});
    Out["ignored"] = P.IgnoredPatterns;
    Out["ties"] = Json::array();
    for (auto &[Copy, Of] : P.Ties)
      Out["ties"].push_back({{"copy", Copy}, {"of", Of}});
    Out["parameters"] = Elements;
    std::cout << Out.dump(2) << "\n";
    return 0;
  }
  std::cout << "mapping " << T.Name << " (" << T.SourceFile << ")\n\n";
  std::printf("layout TP=%d PP=%d EP=%d ETP=%d VPP=%d\n\n", O.Par.TP, O.Par.PP, O.Par.EP, O.Par.ETP, O.Par.VPP);
  std::printf("%-62s %-16s %-10s %-5s %-14s %s\n", "Megatron tensor", "global shape", "style", "stage", "rank slice",
              "from HF");
  for (size_t K = 0; K < P.Tensors.size(); ++K) {
    const PlannedTensor &PT = P.Tensors[K];
    const auto &S0 = Slices[K];
    std::string Recipe; // config alone: every source layout the rule accepts
    for (const SourceChain &Ch : PT.Alternatives)
      Recipe += (Recipe.empty() ? "" : " | ") + Ch.Recipe;
    std::string Slice = "whole";
    if (S0.size() > 1) {
      // e.g. "dim0 /2", "dim1 /2", "gate+up /2"
      size_t Dim = 0;
      for (size_t D = 0; D < PT.Shape.size(); ++D)
        if (S0[0].second.Sizes[D] != PT.Shape[D])
          Dim = D;
      int T = PT.Expert ? O.Par.ETP : O.Par.TP;
      Slice = (PT.ParallelStyle == Style::Gated ? std::string("gate+up") : "dim" + std::to_string(Dim)) + " /" +
              std::to_string(T);
    }
    std::printf("%-62s %-16s %-10s %-5d %-14s %s\n", PT.Name.c_str(),
                PT.PassThrough && PT.Shape.empty() ? "[as stored]" : shapeText(PT.Shape).c_str(),
                styleName(PT.ParallelStyle), StageOf(PT), Slice.c_str(), Recipe.c_str());
  }
  std::printf("\nbytes each rank holds (%zu-byte params):\n", Elem);
  uint64_t Peak = 0;
  for (auto &[Key, Bytes] : RankBytes) {
    std::printf("  pp %d  tp %d  ep %d   %s\n", std::get<0>(Key), std::get<1>(Key), std::get<2>(Key),
                human(Bytes).c_str());
    Peak = std::max(Peak, Bytes);
  }
  std::printf("  largest rank: %s\n", human(Peak).c_str());
  for (auto &[Copy, Of] : P.Ties)
    std::printf("tied: %s duplicates %s when present\n", Copy.c_str(), Of.c_str());
  std::printf("\n%zu Megatron tensors, %lld parameters; every tensor the schema requires is produced once\n",
              P.Tensors.size(), static_cast<long long>(Elements));
  for (const PlannedTensor &PT : P.Tensors)
    if (PT.PassThrough && PT.Shape.empty())
      std::printf("kept as stored, not counted above (plan the checkpoint directory to list them): %s <- %s\n",
                  PT.Name.c_str(), PT.recipe().c_str());
  return 0;
}

} // namespace

int main(int argc, char **argv) {
  Options O;
  // Options may come before the command; each is checked against it after.
  std::vector<const OptionDef *> Given;
  for (int I = 1; I < argc; ++I) {
    std::string A = argv[I];
    if (A == "-h" || A == "--help") {
      std::cout << usageText();
      return 0;
    }
    if (!A.empty() && A[0] == '-') {
      std::string Value;
      size_t Eq = A.find('=');
      std::string Flag = A.substr(0, Eq); // --tp=2 as well as --tp 2
      const OptionDef *D = findOption(Flag);
      if (!D)
        usageError("unknown option '" + A + "'");
      if (D->Value) {
        if (Eq != std::string::npos)
          Value = A.substr(Eq + 1);
        else if (++I < argc)
          Value = argv[I];
        else
          usageError(Flag + " needs " + (std::string(D->Value) == "N" ? "a number" : std::string("a ") + D->Value));
      } else if (Eq != std::string::npos) {
        usageError(Flag + " takes no value");
      }
      D->Apply(O, Flag, Value);
      Given.push_back(D);
    } else if (O.Command.empty()) {
      O.Command = A;
    } else if (O.Command == "verify" && O.Target.empty()) {
      O.Target = A;
    } else if (O.Command == "recipe") {
      O.Rest.push_back(A);
    } else {
      usageError("unexpected argument '" + A + "'");
    }
  }
  if (!O.Command.empty()) {
    unsigned Bit = commandBit(O.Command);
    if (!Bit)
      usageError("unknown command '" + O.Command + "'");
    for (const OptionDef *D : Given)
      if (!(D->Commands & Bit))
        usageError(std::string(D->Flag) + " does not apply to " + O.Command + " (it applies to " +
                   commandNames(D->Commands) + ")");
  }
  if (O.Command.empty())
    usageError("no command");
  const bool FormatIsCheckpoint = O.Command != "recipe";
  if (FormatIsCheckpoint && O.Format != "torch_dist" && O.Format != "torch")
    usageError("--format needs torch_dist or torch, not '" + O.Format + "'");
  int Rank = 0; // of several processes, for messages
  if (O.Command == "import" || O.Command == "export" || O.Command == "reshard")
    catchInterrupts();
  try {
    if (O.Command == "list")
      return cmdList(O);
    if (O.Command == "recipe")
      return cmdRecipe(O);
    if (O.Command == "config" || O.Command == "plan") {
      if (O.HF.empty())
        usageError(O.Command + " needs --hf PATH");
      return O.Command == "config" ? cmdConfig(O) : cmdPlan(O);
    }
    if (O.Command == "inspect") {
      if (O.HF.empty())
        usageError("inspect needs --hf DIR");
      InspectOptions IO;
      IO.HF = O.HF;
      IO.Draft = O.Draft;
      IO.IgnoreMappings = O.IgnoreMappings;
      IO.AsJson = O.AsJson;
      return runInspect(IO);
    }
    if (O.Command == "import") {
      if (O.HF.empty() || O.Out.empty())
        usageError("import needs --hf DIR and --out DIR");
      if (!O.Recipe.empty()) {
        if (O.LayoutGiven)
          usageError("--recipe gives the layout; leave out --tp, --pp, --ep, --etp, --vpp and the stage sizes");
        std::vector<std::string> Notes;
        O.Par = recipeLayoutFor(O.Recipe, O.HF, Notes);
        if (!O.Quiet)
          for (const std::string &N : Notes)
            std::cerr << "bridge-run: note: " << N << "\n";
      }
      ImportOptions IO{O.HF, O.Out, O.Par, O.Device, O.Overwrite, O.Quiet, O.LocalSpec, O.Writers, O.MemoryBudget,
                       O.Converters};
      // Under torchrun or srun the processes share the work (ProcessGroup.h).
      Rank = groupEnvironment().Rank;
      IO.Format = O.Format;
      IO.Resume = O.Resume;
      IO.AdapterDir = O.Adapter;
      GroupSummary G = execImportInGroup(IO);
      if (G.Leader)
        printSummary(G.Size > 1 ? ("import by " + std::to_string(G.Size) + " processes").c_str() : "import",
                     G.Sum, O.Out);
      return 0;
    }
    if (O.Command == "reshard") {
      if (O.Megatron.empty() || O.Out.empty())
        usageError("reshard needs --megatron DIR and --out DIR");
      ImportOptions IO{O.HF, O.Out, O.Par, O.Device, O.Overwrite, O.Quiet, O.LocalSpec, O.Writers, O.MemoryBudget,
                       O.Converters};
      Rank = groupEnvironment().Rank;
      IO.Format = O.Format;
      IO.Resume = O.Resume;
      GroupSummary G = execReshardInGroup(IO, O.Megatron);
      if (G.Leader)
        printSummary(G.Size > 1 ? ("reshard by " + std::to_string(G.Size) + " processes").c_str() : "reshard",
                     G.Sum, O.Out);
      return 0;
    }
    if (O.Command == "verify") {
      if (O.Target.empty())
        usageError("verify needs a directory: bridge-run verify DIR [--against SOURCE]");
      VerifyReport R = runVerify(O.Target, O.Against);
      for (size_t I = 0; I < R.Problems.size() && I < 50; ++I)
        std::cerr << "bridge-run: error: " << R.Problems[I] << "\n";
      if (R.Problems.size() > 50)
        std::cerr << "bridge-run: ... and " << R.Problems.size() - 50 << " more\n";
      std::printf("verify %s: %llu %s (%s) checked%s: %s\n", O.Target.c_str(),
                  static_cast<unsigned long long>(R.Checked), O.Against.empty() ? "records" : "tensors",
                  human(R.Bytes).c_str(), O.Against.empty() ? " against manifest.json" : (" against " + O.Against).c_str(),
                  R.Problems.empty() ? "all match" : (std::to_string(R.Problems.size()) + " problem(s)").c_str());
      return R.Problems.empty() ? 0 : 1;
    }
    if (O.Command == "export") {
      if (O.Megatron.empty() || O.Out.empty())
        usageError("export needs --megatron DIR and --out DIR");
      ExportOptions EO{O.Megatron, O.Out, O.Device, O.Overwrite, O.Quiet, O.Writers, O.MemoryBudget, O.Converters,
                       O.Quantize};
      if (O.AdapterOnly && O.MergeAdapters)
        usageError("--adapter-only and --merge-adapters exclude each other");
      EO.AdapterOnly = O.AdapterOnly;
      EO.MergeAdapters = O.MergeAdapters;
      EO.BaseDir = O.Base;
      printSummary(O.AdapterOnly ? "export of the adapters" : "export", execExport(EO), O.Out);
      return 0;
    }
    usageError("unknown command '" + O.Command + "'");
  } catch (const Error &E) {
    std::cerr << "bridge-run" << who(Rank) << ": " << E.what() << "\n";
    return interruptSignal() ? 128 + interruptSignal() : 1;
  } catch (const std::exception &E) {
    // Library errors (I/O, torch) that are not ours: still no partial output.
    std::cerr << "bridge-run" << who(Rank) << ": error: " << E.what() << "\n";
    return 1;
  }
}
