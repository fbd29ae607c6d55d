//===- Checkpoint.cpp - torch_dist layout of planned tensors ----------------===//
#include "Checkpoint.h"

#include "bridge/Files.h"
#include "bridge/Registry.h"

#include <fstream>
#include <map>


namespace bridge {

Json readJsonFile(const std::string &Path) {
  std::ifstream In(Path);
  if (!In)
    throw Error("error: cannot open " + Path);
  try {
    return Json::parse(In);
  } catch (const std::exception &E) {
    throw Error("error: " + Path + " is not valid JSON: " + E.what());
  }
}

std::string supportedModelTypes() {
  std::string S;
  for (const RegistryEntry &E : allMappings())
    for (const char *M : E.Table->ModelTypes)
      S += (S.empty() ? "" : ", ") + std::string(M);
  return S;
}

const MappingTable &mappingFor(const Json &HF) {
  if (HF.contains("model_type") && HF["model_type"].is_string())
    if (const MappingTable *T = findMappingByModelType(HF["model_type"].get<std::string>()))
      return *T;
  if (HF.contains("architectures") && HF["architectures"].is_array())
    for (auto &A : HF["architectures"])
      if (A.is_string())
        if (const MappingTable *T = findMappingByArchitecture(A.get<std::string>()))
          return *T;
  std::string MT = HF.contains("model_type") ? HF["model_type"].dump() : "(none)";
  throw Error("error: no mapping for model_type " + MT + "; supported: " + supportedModelTypes());
}

bool layersStacked(const SchemaTable &S, const std::vector<Json> &Fields) {
  auto F = fieldGetter(S, Fields);
  if (F("num_moe_experts") < 0)
    return true;
  for (uint32_t I = 0; I < S.Fields.Size; ++I)
    if (std::string(S.Fields[I].Name) == "moe_layer_freq")
      return Fields[I].is_number_integer() && Fields[I].get<int64_t>() == 1;
  return true;
}

std::vector<DistKey> groupByKey(const Plan &P, const SchemaTable &S, const std::vector<Json> &Fields) {
  std::string LayerVar = "i";
  int64_t NumLayers = 1;
  for (const RangeInfo &R : S.Ranges)
    if (std::string(R.Name) == "layers") {
      LayerVar = R.Var;
      EvalEnv Env{nullptr, &Fields, &S, nullptr};
      NumLayers = evaluate(R.Count, Env, "range layers").get<int64_t>();
    }
  bool Stacked = layersStacked(S, Fields);
  std::map<std::string, size_t> Index;
  std::vector<DistKey> Keys;
  for (size_t T = 0; T < P.Tensors.size(); ++T) {
    const PlannedTensor &PT = P.Tensors[T];
    const ParamInfo &Prm = *PT.Param;
    // The TE name, with the layer capture (and the dot after it) taken out
    // when layers are stacked.
    std::string Key;
    int64_t Layer = -1;
    bool Skip = false;
    for (const PatternPiece &Pc : Prm.TE) {
      if (Pc.Literal) {
        std::string L = Pc.Literal;
        if (Skip && !L.empty() && L[0] == '.')
          L = L.substr(1);
        Skip = false;
        Key += L;
        continue;
      }
      int64_t CI = Pc.Index.Code[0].A;
      if (Stacked && std::string(Prm.Captures[CI]) == LayerVar) {
        Layer = PT.Captures[CI];
        Skip = true;
        continue;
      }
      Key += std::to_string(PT.Captures[CI]);
    }
    auto It = Index.find(Key);
    if (It == Index.end()) {
      DistKey K;
      K.Key = Key;
      K.GlobalShape = PT.Shape;
      if (Layer >= 0) {
        K.Stack = NumLayers;
        K.GlobalShape.insert(K.GlobalShape.begin(), NumLayers);
      }
      It = Index.emplace(Key, Keys.size()).first;
      Keys.push_back(std::move(K));
    }
    DistKey &K = Keys[It->second];
    K.Members.push_back(T);
    K.Prefixes.push_back(Layer >= 0 ? std::vector<int64_t>{Layer} : std::vector<int64_t>{});
  }
  for (DistKey &K : Keys) {
    // Members in axis order; a stacked key must have every layer once.
    std::vector<size_t> Order(K.Members.size());
    for (size_t I = 0; I < Order.size(); ++I)
      Order[I] = I;
    std::sort(Order.begin(), Order.end(), [&](size_t A, size_t B) { return K.Prefixes[A] < K.Prefixes[B]; });
    std::vector<size_t> M;
    std::vector<std::vector<int64_t>> Pre;
    for (size_t I : Order) {
      M.push_back(K.Members[I]);
      Pre.push_back(K.Prefixes[I]);
    }
    K.Members = M;
    K.Prefixes = Pre;
    if (K.Stack > 1 && static_cast<int64_t>(K.Members.size()) != K.Stack)
      throw Error("error: internal: stacked key '" + K.Key + "' has " + std::to_string(K.Members.size()) + " of " +
                  std::to_string(K.Stack) + " layers");
  }
  return Keys;
}

std::vector<std::string> extraStateKeys(const DistKey &K) {
  size_t Dot = K.Key.rfind('.');
  if (Dot == std::string::npos)
    return {};
  std::string Module = K.Key.substr(0, Dot);
  // GPTModel requests none for the embedding and drops the output layer's.
  if (Module.rfind("embedding", 0) == 0 || Module == "output_layer")
    return {};
  std::vector<std::string> Out;
  if (K.Stack > 1)
    for (int64_t L = 0; L < K.Stack; ++L)
      Out.push_back(Module + "._extra_state/shard_" + std::to_string(L) + "_" + std::to_string(K.Stack));
  else
    Out.push_back(Module + "._extra_state/shard_0_1");
  return Out;
}

void copyTokenizerFiles(const std::string &From, const std::string &To) {
  static const char *Names[] = {"tokenizer.json",   "tokenizer_config.json", "tokenizer.model",
                                "special_tokens_map.json", "vocab.json",     "merges.txt",
                                "added_tokens.json", "chat_template.jinja",  "generation_config.json"};
  for (const char *N : Names) {
    std::string Src = files::join(From, N);
    if (!files::exists(Src))
      continue;
    files::makeDirs(To);
    files::copyFile(Src, files::join(To, N));
  }
}

} // namespace bridge
