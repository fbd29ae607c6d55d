//===- Peft.cpp - LoRA adapters: HF PEFT directories in and out -----------===//
//
// HF PEFT adapts each HF module on its own: q_proj, k_proj and v_proj each
// have their A ([r, in]) and B ([out, r]). Megatron-Bridge's LoRA adapts a
// Megatron module once: linear_qkv has one A and one B whose rows are the
// fused weight's. Import keeps every delta exact:
//  - where the modules fused into one Megatron module hold the same A (an
//    adapter Megatron exported), that A is the module's and B is fused as the
//    weight is (rank r);
//  - otherwise the As are stacked, block k of the rank being module k's:
//    A = [A_q; A_k; A_v] and B = fused([B_q 0 0], [0 B_k 0], [0 0 B_v]), so
//    B A = fused(B_q A_q, B_k A_k, B_v A_v). Megatron-Bridge has one rank for
//    every module, so every module gets blocks (rank r times the most
//    modules fused into one) and alpha grows with it: alpha / dim is PEFT's
//    lora_alpha / r.
// Export gives each HF module the module's A and its rows of B; where the
// import stacked, a module whose B is zero outside its own block gets its
// block back (rank r), so HF -> Megatron -> HF is bit for bit, and a module
// trained beyond its block keeps the whole rank (PEFT's rank_pattern).
//
//===----------------------------------------------------------------------===//
#include "Peft.h"
#include "CudaSupport.h"

#include "bridge/Files.h"
#include "bridge/Pickle.h"
#include "bridge/StrictJson.h"
#include "bridge/TorchDistReader.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

namespace bridge {
namespace {

const std::string kPrefix = "base_model.model.";
const std::string kAdapterFile = "adapter_model.safetensors";
const size_t kLoraSuffix = 14; // ".lora_A.weight", ".lora_B.weight"

/// 'm' of an adapter matrix's name 'm.lora_A.weight'.
std::string moduleOfMatrix(const std::string &Name) { return Name.substr(0, Name.size() - kLoraSuffix); }

std::string leafOf(const std::string &Module) { return Module.substr(Module.rfind('.') + 1); }

at::Tensor viewOf(const TensorView &V) {
  return at::from_blob(const_cast<uint8_t *>(V.Data), std::vector<int64_t>(V.Shape.begin(), V.Shape.end()),
                       at::TensorOptions().dtype(exec::toScalarType(V.Type)));
}

/// The HF modules whose weights one Megatron weight is made of, in the
/// order of its rule (each once).
std::vector<std::string> membersOf(const PlannedTensor &PT) {
  std::vector<std::string> Out;
  std::set<std::string> Seen;
  const SourceChain &C = PT.chain();
  for (size_t K = 0; K < C.Sources.size(); ++K)
    if (!C.SourceOptional[K] && Seen.insert(hfModuleOf(C.Sources[K])).second)
      Out.push_back(hfModuleOf(C.Sources[K]));
  return Out;
}

} // namespace

void planPeftImport(const std::string &AdapterDir, const std::string &BaseDir, Conversion &C,
                    SafetensorsCheckpoint &Ckpt) {
  const std::string ConfigPath = files::join(AdapterDir, "adapter_config.json");
  const std::string FilePath = files::join(AdapterDir, kAdapterFile);
  if (!files::exists(ConfigPath))
    throw Error("error: " + AdapterDir + " holds no adapter_config.json: is it an HF PEFT adapter directory?");
  if (!files::exists(FilePath))
    throw Error("error: " + AdapterDir + " holds no " + kAdapterFile +
                " (an adapter_model.bin, PEFT's older pickle, is not read: save it with safe_serialization)");
  Json Cfg = readConfigJson(ConfigPath);
  auto Refuse = [&](const std::string &Why) { throw Error("error: " + ConfigPath + ": " + Why); };
  const std::string Type = Cfg.value("peft_type", "");
  if (Type != "LORA")
    Refuse("peft_type is '" + Type + "'; only LoRA adapters are converted (Megatron-Bridge's LoRA)");
  if (Cfg.value("use_dora", false))
    Refuse("use_dora is set: DoRA adapters are not converted (their magnitude vectors have no place in "
           "Megatron-Bridge's LoRA)");
  if (Cfg.value("use_rslora", false))
    Refuse("use_rslora is set: rank-stabilized scaling (alpha / sqrt(r)) is not converted yet");
  for (const char *Field : {"rank_pattern", "alpha_pattern"})
    if (Cfg.contains(Field) && !Cfg[Field].is_null() && !Cfg[Field].empty())
      Refuse(std::string(Field) + " gives modules their own rank or alpha; Megatron-Bridge's LoRA has one of each");
  if (Cfg.value("lora_bias", false) || Cfg.value("bias", std::string("none")) != "none")
    Refuse("the adapter trains biases (bias / lora_bias); Megatron-Bridge's LoRA has none");
  for (const char *Field : {"modules_to_save", "target_parameters", "layer_replication"})
    if (Cfg.contains(Field) && !Cfg[Field].is_null() && !Cfg[Field].empty())
      Refuse(std::string(Field) + " is set: only LoRA's A and B matrices are converted");
  if (!Cfg.contains("r") || !Cfg["r"].is_number_integer() || Cfg["r"].get<int64_t>() < 1)
    Refuse("r (the rank) is missing or not a positive integer");
  if (!Cfg.contains("lora_alpha") || !Cfg["lora_alpha"].is_number())
    Refuse("lora_alpha is missing or not a number");
  const int64_t R = Cfg["r"].get<int64_t>();
  const double Alpha = Cfg["lora_alpha"].get<double>();

  // -- every tensor of the file: a LoRA matrix of a module the base has --------------------
  auto File = std::make_shared<SafetensorsFile>(FilePath);
  struct Matrices {
    const TensorView *A = nullptr, *B = nullptr;
  };
  std::map<std::string, Matrices> ByModule;
  std::optional<DType> AdapterType;
  for (const auto &[Key, V] : File->tensors()) {
    auto Bad = [&](const std::string &Why) { throw Error("error: " + FilePath + ": '" + Key + "' " + Why); };
    if (Key.rfind(kPrefix, 0) != 0)
      Bad("is not named as PEFT saves a LoRA tensor ('" + kPrefix + "<module>.lora_A.weight')");
    std::string Rest = Key.substr(kPrefix.size());
    char Matrix = 0;
    for (char M : {'A', 'B'})
      if (Rest.size() > kLoraSuffix &&
          Rest.compare(Rest.size() - kLoraSuffix, kLoraSuffix, std::string(".lora_") + M + ".weight") == 0)
        Matrix = M;
    if (!Matrix)
      Bad("is not a LoRA A or B matrix (embedding adapters, DoRA magnitudes and biases are not converted)");
    std::string Module = Rest.substr(0, Rest.size() - kLoraSuffix);
    const TensorView *W = Ckpt.find(Module + ".weight");
    if (!W)
      Bad("adapts module '" + Module + "', which the base checkpoint " + BaseDir + " does not have (no '" + Module +
          ".weight')");
    if (V.Shape.size() != 2 || W->Shape.size() != 2)
      Bad("is not a matrix beside a matrix weight");
    std::vector<int64_t> Want = Matrix == 'A' ? std::vector<int64_t>{R, W->Shape[1]} : std::vector<int64_t>{W->Shape[0], R};
    if (V.Shape != Want)
      Bad("has shape " + exec::shapeText(V.Shape) + " where rank r = " + std::to_string(R) + " and the weight " +
          exec::shapeText(W->Shape) + " give " + exec::shapeText(Want) +
          (V.Shape[Matrix == 'A' ? 0 : 1] != R ? " (a rank other than adapter_config.json's r)" : ""));
    if (AdapterType && *AdapterType != V.Type)
      Bad("is stored in another dtype than the adapter's other tensors");
    AdapterType = V.Type;
    (Matrix == 'A' ? ByModule[Module].A : ByModule[Module].B) = &V;
  }
  if (ByModule.empty())
    throw Error("error: " + FilePath + " holds no LoRA tensor");
  for (auto &[Module, M] : ByModule)
    if (!M.A || !M.B)
      throw Error("error: " + FilePath + ": module '" + Module + "' has a lora_" + (M.A ? "A" : "B") +
                  " without its lora_" + (M.A ? "B" : "A"));

  // -- the Megatron weights adapted, and whether their HF modules share an A --------------------
  chooseAlternatives(C.P, [&](const std::string &Name) { return Ckpt.find(Name) != nullptr; });
  std::set<std::string> Targets, Used;
  std::vector<size_t> Adapted;
  bool Stack = false;
  size_t MostFused = 1;
  for (size_t I = 0; I < C.P.Tensors.size(); ++I) {
    const PlannedTensor &PT = C.P.Tensors[I];
    std::vector<std::string> Members = PT.PassThrough ? std::vector<std::string>{} : membersOf(PT);
    bool Any = false;
    for (const std::string &M : Members)
      Any |= ByModule.count(M) != 0;
    if (!Any)
      continue;
    std::string Module = adapterModuleOf(PT);
    if (Module.empty())
      throw Error("error: " + FilePath + ": module '" + Members[0] + "' is adapted, but Megatron tensor '" +
                  PT.LocalName + "' is made from it by '" + PT.recipe() +
                  "', which LoRA does not follow (routed experts, embeddings, norms and dequantized weights take "
                  "no adapter here)");
    Targets.insert(Module);
    Adapted.push_back(I);
    MostFused = std::max(MostFused, Members.size());
    const TensorView *First = nullptr;
    for (const std::string &M : Members) {
      auto It = ByModule.find(M);
      Used.insert(M);
      if (It == ByModule.end()) {
        Stack |= Members.size() > 1; // a module left out: its block stays zero
        continue;
      }
      if (First && (First->Bytes != It->second.A->Bytes ||
                    std::memcmp(First->Data, It->second.A->Data, First->Bytes) != 0))
        Stack = true;
      First = It->second.A;
    }
  }
  // Every adapted module feeds an adapted weight (not a kept pass-through
  // module, nor one no rule reads).
  for (auto &[Module, M] : ByModule)
    if (!Used.count(Module))
      throw Error("error: " + FilePath + ": module '" + Module +
                  "' is adapted, but no Megatron weight the mapping makes from it takes an adapter (a module kept as "
                  "the HF checkpoint has it, such as a vision tower, or one the mapping does not read)");
  // Megatron-Bridge adapts every instance of a target module: the layers the
  // adapter leaves out get zeros (no change to their output).
  for (size_t I = 0; I < C.P.Tensors.size(); ++I)
    if (!C.P.Tensors[I].PassThrough && Targets.count(adapterModuleOf(C.P.Tensors[I])) &&
        std::find(Adapted.begin(), Adapted.end(), I) == Adapted.end())
      Adapted.push_back(I);
  std::sort(Adapted.begin(), Adapted.end());
  const int64_t Blocks = Stack ? static_cast<int64_t>(MostFused) : 1;
  const int64_t Dim = R * Blocks;

  // -- the matrices the plan reads, per HF module ---------------------------------------------
  auto Options = at::TensorOptions().dtype(exec::toScalarType(*AdapterType));
  std::map<std::string, at::Tensor> Made;
  auto Put = [&](const std::string &Name, const at::Tensor &X) {
    auto [It, New] = Made.emplace(Name, X);
    if (!New && !(It->second.sizes() == X.sizes() && at::equal(It->second, X)))
      throw Error("error: " + FilePath + ": HF module '" + hfModuleOf(Name) +
                  "' feeds two Megatron weights that need different adapter layouts; not converted");
  };
  for (size_t I : Adapted) {
    const PlannedTensor &PT = C.P.Tensors[I];
    std::vector<std::string> Members = membersOf(PT);
    const int64_t In = PT.Shape[1];
    std::vector<at::Tensor> ABlocks;
    for (int64_t K = 0; K < Blocks; ++K) {
      auto It = K < static_cast<int64_t>(Members.size()) ? ByModule.find(Members[K]) : ByModule.end();
      ABlocks.push_back(It != ByModule.end() ? viewOf(*It->second.A) : at::zeros({R, In}, Options));
    }
    at::Tensor A;
    if (Blocks > 1) {
      A = at::cat(ABlocks, 0);
    } else {
      A = at::zeros({R, In}, Options);
      for (const std::string &M : Members)
        if (auto It = ByModule.find(M); It != ByModule.end())
          A = viewOf(*It->second.A);
    }
    for (size_t K = 0; K < Members.size(); ++K) {
      const TensorView *W = Ckpt.find(Members[K] + ".weight");
      at::Tensor B = at::zeros({W->Shape[0], Dim}, Options);
      if (auto It = ByModule.find(Members[K]); It != ByModule.end())
        B.narrow(1, Blocks > 1 ? static_cast<int64_t>(K) * R : 0, R).copy_(viewOf(*It->second.B));
      Put(hfAdapterName(Members[K], 'A'), A.contiguous());
      Put(hfAdapterName(Members[K], 'B'), B);
    }
  }
  for (auto &[Name, X] : Made) {
    // Its own copy: the adapter file is unmapped when this returns.
    auto Owner = std::make_shared<at::Tensor>(X.clone(at::MemoryFormat::Contiguous));
    TensorView V;
    V.Name = Name;
    V.Type = *AdapterType;
    V.Shape = std::vector<int64_t>(Owner->sizes().begin(), Owner->sizes().end());
    V.Data = static_cast<const uint8_t *>(Owner->data_ptr());
    V.Bytes = Owner->nbytes();
    V.File = kAdapterFile;
    Ckpt.add(std::move(V), Owner);
  }

  AdapterSpec Spec{Dim, Alpha / static_cast<double>(R) * static_cast<double>(Dim),
                   std::vector<std::string>(Targets.begin(), Targets.end())};
  addAdapters(C.P, Spec);
  Json Record = {{"dim", Spec.Dim},
                 {"alpha", Spec.Alpha},
                 {"target_modules", Spec.Targets},
                 {"dtype", std::string(safetensorsName(*AdapterType))},
                 {"hf_blocks", Blocks},
                 {"hf_adapter_config", Cfg}};
  C.Adapter = Record;
}

Json peftRunAdapter(const std::string &Iter) {
  TorchDistCheckpoint Ckpt(Iter);
  int64_t Dim = 0;
  std::set<std::string> Targets;
  const std::string In = ".adapter.linear_in.weight";
  for (const std::string &Key : Ckpt.tensorKeys()) {
    if (Key.size() <= In.size() || Key.compare(Key.size() - In.size(), In.size(), In) != 0)
      continue;
    const std::vector<int64_t> &Shape = Ckpt.tensor(Key).Shape; // [..., dim, in]
    std::string Module = Key.substr(0, Key.size() - In.size());
    Targets.insert(Module.substr(Module.rfind('.') + 1));
    if (Shape.size() < 2 || (Dim && Shape[Shape.size() - 2] != Dim))
      throw Error("error: " + Iter + ": '" + Key + "' does not have the rank of the other adapters");
    Dim = Shape[Shape.size() - 2];
  }
  if (Targets.empty())
    throw Error("error: " + Iter + " holds no LoRA adapter ('<module>.adapter.linear_in.weight')");
  // Megatron-Bridge writes its run config beside the torch_dist files (or
  // in the directory above): the PEFT object's fields under 'peft:'.
  std::string Path = files::join(Iter, "run_config.yaml");
  if (!files::exists(Path))
    Path = files::join(Iter, "../run_config.yaml");
  if (!files::exists(Path))
    throw Error("error: " + Iter + " has no run_config.yaml (nor its parent): the adapters' alpha is unknown");
  std::string Text = files::readRegularFile(Path, files::kMaxConfigBytes, "run_config.yaml");
  std::optional<double> Alpha;
  std::optional<int64_t> RunDim;
  std::string Target;
  bool InPeft = false;
  size_t At = 0;
  while (At < Text.size()) {
    size_t End = Text.find('\n', At);
    std::string Line = Text.substr(At, End == std::string::npos ? std::string::npos : End - At);
    At = End == std::string::npos ? Text.size() : End + 1;
    if (!Line.empty() && Line[0] != ' ' && Line[0] != '#') {
      InPeft = Line.rfind("peft:", 0) == 0;
      continue;
    }
    if (!InPeft)
      continue;
    size_t Colon = Line.find(':');
    size_t First = Line.find_first_not_of(' ');
    if (Colon == std::string::npos || First == std::string::npos || First != 2)
      continue; // a nested value
    std::string Field = Line.substr(First, Colon - First), Value = Line.substr(Colon + 1);
    Value.erase(0, Value.find_first_not_of(' '));
    try {
      if (Field == "alpha")
        Alpha = std::stod(Value);
      else if (Field == "dim")
        RunDim = std::stoll(Value);
      else if (Field == "_target_")
        Target = Value;
    } catch (const std::exception &) {
      throw Error("error: " + Path + ": peft." + Field + " is '" + Value + "', not a number");
    }
  }
  if (!Target.empty() && (Target.size() < 5 || Target.compare(Target.size() - 5, 5, ".LoRA") != 0))
    throw Error("error: " + Path + ": the run's PEFT is " + Target +
                "; only Megatron-Bridge's LoRA (megatron.bridge.peft.lora.LoRA) is converted");
  if (!Alpha)
    throw Error("error: " + Path + " has no peft.alpha: the adapters' scale is unknown");
  if (RunDim && *RunDim != Dim)
    throw Error("error: " + Path + ": peft.dim is " + std::to_string(*RunDim) + " but the adapters in " + Iter +
                " have rank " + std::to_string(Dim) + " (normalize_moe_lora is not converted)");
  return Json{{"dim", Dim}, {"alpha", *Alpha}, {"target_modules", std::vector<std::string>(Targets.begin(), Targets.end())}};
}

AdapterSpec adapterSpecOf(const Json &Adapter, const std::string &SidePath) {
  AdapterSpec S;
  try {
    S.Dim = Adapter.at("dim").get<int64_t>();
    S.Alpha = Adapter.at("alpha").get<double>();
    S.Targets = Adapter.at("target_modules").get<std::vector<std::string>>();
  } catch (const std::exception &) {
    throw Error("error: " + SidePath + ": 'adapter' needs dim, alpha and target_modules");
  }
  if (S.Dim < 1)
    throw Error("error: " + SidePath + ": adapter dim " + std::to_string(S.Dim) + " is not positive");
  return S;
}

namespace {

/// HF PEFT's directory, written once every adapter tensor is in: small (the
/// adapters of a 70B model at rank 64 are about 0.4 GB), so they are held
/// until the end, where the modules the import stacked get their blocks back.
class PeftSink final : public Sink {
public:
  PeftSink(const Conversion &C, const Json &Side, std::string SidePath, DType Type)
      : Adapter(Side.at("adapter")), SidePath(std::move(SidePath)), Type(Type),
        HF(C, [Type](const std::string &) { return Type; }, adapterSide(C, Side, Type), this->SidePath,
           NotExported) {}

  bool hfSide() const override { return true; }
  std::string dataDir() const override { return ""; }
  void begin(const Conversion &C, const std::string &Dir, int, bool) override {
    Conv = &C;
    OutDir = Dir;
  }
  DType hfType(const std::string &) const override { return Type; }

  struct Pieces : Prepared {
    std::vector<HFPiece> Of;
  };
  std::unique_ptr<Prepared> prepare(const Conversion &, const WorkItem &, at::Tensor, std::vector<HFPiece> P,
                                    const Reading &) override {
    auto Out = std::make_unique<Pieces>();
    Out->Of = std::move(P);
    return Out;
  }
  uint64_t put(const Conversion &, const WorkItem &, Prepared &P) override {
    uint64_t N = 0;
    HF.put(static_cast<Pieces &>(P).Of, [&](const std::string &Name, DType, const at::Tensor &V) {
      Held[Name] = V.contiguous().cpu().clone();
      ++N;
    });
    return N;
  }
  uint64_t bytesWritten() const override { return Bytes; }
  unsigned numFiles() const override { return 1; }
  void finish(const Conversion &, const std::string &, const std::string &, const std::vector<std::string> &,
              bool) override {}

  /// The directory, once every adapter matrix is in.
  void finishData() override {
    HF.finish();
    const Conversion &C = *Conv;
    const std::string &Tmp = OutDir;
    const int64_t Dim = Adapter.at("dim").get<int64_t>();
    const double Alpha = Adapter.at("alpha").get<double>();
    const int64_t Blocks = Adapter.value("hf_blocks", int64_t{1});
    const int64_t R = Dim / Blocks;
    Json HFConfig = Adapter.value("hf_adapter_config", Json::object());
    // Each HF module's place in its Megatron module's rank: the order of
    // the A chain's sources (the rule's order), as the import stacked them.
    std::map<std::string, int64_t> BlockOf;
    for (const PlannedTensor &PT : C.P.Tensors)
      if (PT.AdapterMatrix == 'A')
        for (size_t K = 0; K < PT.chain().Sources.size(); ++K)
          BlockOf[moduleOfMatrix(PT.chain().Sources[K])] = static_cast<int64_t>(K);
    std::vector<TensorToWrite> Out;
    Json RankPattern = Json::object(), AlphaPattern = Json::object();
    std::set<std::string> Leaves;
    for (auto &[Module, K] : BlockOf) {
      at::Tensor A = Held.at(hfAdapterName(Module, 'A')), B = Held.at(hfAdapterName(Module, 'B'));
      bool Own = Blocks > 1;
      if (Own) {
        at::Tensor Rest = B.clone();
        Rest.narrow(1, K * R, R).zero_();
        Own = !Rest.ne(0).any().item<bool>();
      }
      if (Own) {
        A = A.narrow(0, K * R, R).contiguous();
        B = B.narrow(1, K * R, R).contiguous();
      } else if (Blocks > 1) {
        // Trained beyond its block: the whole rank, at the same scale.
        RankPattern[Module] = Dim;
        AlphaPattern[Module] = Alpha;
      }
      // A module the HF adapter left out (layers_to_transform, a member of a
      // fused module it did not target) was imported as zeros: left out again.
      if (!A.ne(0).any().item<bool>() && !B.ne(0).any().item<bool>())
        continue;
      Leaves.insert(leafOf(Module));
      for (auto &[Name, X] : {std::pair<std::string, at::Tensor>{hfAdapterName(Module, 'A'), A},
                              std::pair<std::string, at::Tensor>{hfAdapterName(Module, 'B'), B}}) {
        at::Tensor H = X.to(exec::toScalarType(Type)).contiguous();
        TensorToWrite T{kPrefix + Name, Type, std::vector<int64_t>(H.sizes().begin(), H.sizes().end()), {}};
        T.Bytes.assign(static_cast<const uint8_t *>(H.data_ptr()),
                       static_cast<const uint8_t *>(H.data_ptr()) + H.nbytes());
        Bytes += H.nbytes();
        Out.push_back(std::move(T));
      }
    }
    std::vector<const TensorToWrite *> Ptrs;
    for (const TensorToWrite &T : Out)
      Ptrs.push_back(&T);
    writeSafetensors(files::join(Tmp, kAdapterFile), Ptrs, {{"format", "pt"}});
    // Checksums of what was written, for `bridge-run verify` and --overwrite.
    Json Manifest = {{"format", "safetensors"}, {"tensors", Json::object()}};
    for (const TensorToWrite &T : Out)
      Manifest["tensors"][T.Name] = {{"file", kAdapterFile}, {"crc32", crc32(T.data(), T.size())}};
    files::writeFile(files::join(Tmp, "manifest.json"), Manifest.dump(1) + "\n");

    // PEFT's scale is lora_alpha / r; Megatron-Bridge's alpha / dim.
    const double HFAlpha = Alpha * static_cast<double>(R) / static_cast<double>(Dim);
    Json Config = HFConfig.is_object() && !HFConfig.empty() ? HFConfig : Json::object();
    if (!Config.contains("lora_alpha") || Config["lora_alpha"].get<double>() != HFAlpha)
      Config["lora_alpha"] = HFAlpha;
    Config["r"] = R;
    Config["peft_type"] = "LORA";
    // Every module written is a target (training in Megatron may have made a
    // module the HF adapter left out non-zero: PEFT would ignore it).
    std::set<std::string> Targets = Leaves;
    if (Config.contains("target_modules") && Config["target_modules"].is_array())
      for (const Json &T : Config["target_modules"])
        if (T.is_string())
          Targets.insert(T.get<std::string>());
    Config["target_modules"] = std::vector<std::string>(Targets.begin(), Targets.end());
    Config["rank_pattern"] = RankPattern;
    Config["alpha_pattern"] = AlphaPattern;
    for (auto &[Field, Default] : std::initializer_list<std::pair<const char *, Json>>{
             {"task_type", "CAUSAL_LM"},
             {"bias", "none"},
             {"fan_in_fan_out", false},
             {"lora_dropout", 0.0},
             {"use_rslora", false},
             {"use_dora", false},
             {"inference_mode", true},
             {"init_lora_weights", true},
             {"modules_to_save", nullptr},
             {"base_model_name_or_path", nullptr}})
      if (!Config.contains(Field))
        Config[Field] = Default;
    files::writeFile(files::join(Tmp, "adapter_config.json"), Config.dump(2) + "\n");
  }

private:
  /// What the HF assembler needs of the HF tensors it gives back: the
  /// adapter matrices of every HF module behind an adapted weight.
  static Json adapterSide(const Conversion &C, const Json &Side, DType Type) {
    Json Tensors = Json::object();
    const int64_t Dim = Side.at("adapter").at("dim").get<int64_t>();
    for (const PlannedTensor &PT : C.P.Tensors)
      for (size_t K = 0; K < PT.chain().Sources.size(); ++K) {
        if (PT.chain().SourceOptional[K])
          continue; // a weight's scale, absent beside an adapter
        const std::string &S = PT.chain().Sources[K];
        const std::string Module = moduleOfMatrix(S);
        const Json &W = Side.at("hf_tensors").at(Module + ".weight");
        std::vector<int64_t> WS = W.at("shape").get<std::vector<int64_t>>();
        std::vector<int64_t> Shape = PT.AdapterMatrix == 'A' ? std::vector<int64_t>{Dim, WS[1]}
                                                             : std::vector<int64_t>{WS[0], Dim};
        Tensors[S] = {{"file", kAdapterFile}, {"dtype", std::string(safetensorsName(Type))}, {"shape", Shape}};
      }
    return Json{{"hf_tensors", Tensors}};
  }

  Json Adapter;
  std::string SidePath;
  DType Type;
  const Conversion *Conv = nullptr;
  std::string OutDir;
  std::vector<std::string> NotExported;
  HFAssembler HF;
  std::map<std::string, at::Tensor> Held;
  uint64_t Bytes = 0;
};

/// A torch_dist source whose weights come out with their adapters merged.
class MergingSource final : public Source {
public:
  MergingSource(std::unique_ptr<Source> Inner, std::unique_ptr<Conversion> Adapters, const Conversion &Weights,
                std::string Device, std::unique_ptr<Source> AdapterSource)
      : Inner(std::move(Inner)), Adapters(std::move(Adapters)), Device(std::move(Device)),
        Own(std::move(AdapterSource)) {
    From = Own ? Own.get() : this->Inner.get();
    Scale = this->Adapters->P.Adapters.Alpha / static_cast<double>(this->Adapters->P.Adapters.Dim);
    for (size_t K = 0; K < this->Adapters->Keys.size(); ++K)
      for (size_t M = 0; M < this->Adapters->Keys[K].Members.size(); ++M) {
        const PlannedTensor &PT = this->Adapters->P.Tensors[this->Adapters->Keys[K].Members[M]];
        (PT.AdapterMatrix == 'A' ? ItemsOf[PT.AdapterOf].first : ItemsOf[PT.AdapterOf].second) = WorkItem{K, M};
      }
    (void)Weights;
  }
  bool hfSide() const override { return false; }
  const std::string &dir() const override { return Inner->dir(); }
  std::string tokenizerDir() const override { return Inner->tokenizerDir(); }
  void open(const Conversion &C) override {
    Inner->open(C);
    if (Own)
      Own->open(C);
  }
  PassThroughLister passThrough() const override { return Inner->passThrough(); }
  uint64_t hfTensorCount() const override { return Inner->hfTensorCount(); }
  void check(Conversion &C) override { Inner->check(C); }
  void checkKeys(const Conversion &C) const override {
    Inner->checkKeys(C);
    From->checkKeys(*Adapters);
  }
  Json sidecar(const Conversion &C) const override { return Inner->sidecar(C); }
  at::Tensor global(const Conversion &C, const WorkItem &It, Reading &R) const override {
    at::Tensor W = Inner->global(C, It, R);
    auto Found = ItemsOf.find(static_cast<int64_t>(C.Keys[It.Key].Members[It.Member]));
    if (Found == ItemsOf.end())
      return W;
    Reading Read; // the adapters' bytes are read, not views handed on
    at::Tensor A = From->global(*Adapters, Found->second.first, Read);
    at::Tensor B = From->global(*Adapters, Found->second.second, Read);
    R.Bytes += Read.Bytes;
    const at::Device Dev(Device);
    // (B A) * scale, then added: the order of PEFT's merge_and_unload.
    at::Tensor Delta = at::matmul(B.to(Dev, at::kFloat), A.to(Dev, at::kFloat)).mul_(Scale);
    // A copy always: W may be a view of the mapped (read-only) checkpoint.
    at::Tensor Sum = W.to(Dev, at::kFloat, /*non_blocking=*/false, /*copy=*/true).add_(Delta);
    return Sum.to(at::kCPU, W.scalar_type()).contiguous();
  }
  uint64_t bytesOf(const Conversion &C, const WorkItem &It) const override { return Inner->bytesOf(C, It); }

private:
  std::unique_ptr<Source> Inner;
  std::unique_ptr<Conversion> Adapters;
  std::string Device;
  std::unique_ptr<Source> Own; ///< the adapters' checkpoint, when not Inner
  Source *From = nullptr;      ///< where the adapters are read
  double Scale = 0;
  std::map<int64_t, std::pair<WorkItem, WorkItem>> ItemsOf;
};

} // namespace

std::unique_ptr<Sink> peftSink(const Conversion &C, const Json &Side, std::string SidePath, DType Type) {
  return std::make_unique<PeftSink>(C, Side, std::move(SidePath), Type);
}

std::unique_ptr<Source> mergingSource(std::unique_ptr<Source> Inner, std::unique_ptr<Conversion> Adapters,
                                      const Conversion &Weights, std::string Device,
                                      std::unique_ptr<Source> AdapterSource) {
  return std::make_unique<MergingSource>(std::move(Inner), std::move(Adapters), Weights, std::move(Device),
                                         std::move(AdapterSource));
}

} // namespace bridge
