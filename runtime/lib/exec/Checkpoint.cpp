//===- Checkpoint.cpp - torch_dist layout of planned tensors ----------------===//
#include "Checkpoint.h"

#include <chrono>
#include <cstdio>

#include "bridge/DType.h"
#include "bridge/Files.h"
#include "bridge/Registry.h"
#include "bridge/Sidecar.h"
#include "bridge/StrictJson.h"

#include <cctype>
#include <unistd.h>
#include <map>
#include <cstdlib>


namespace bridge {

Json readJsonFile(const std::string &Path) {
  std::string Name = Path.substr(Path.find_last_of('/') + 1);
  return parseJson<Json>(files::readRegularFile(Path, files::kMaxSidecarBytes, Name), Path, Name);
}

Json readSidecar(const std::string &Path) {
  Json Side = readJsonFile(Path);
  checkSidecar(Side, Path);
  return Side;
}

Json readConfigJson(const std::string &Path) {
  std::string File = files::isDirectory(Path) ? files::join(Path, "config.json") : Path;
  return parseJson<Json>(files::readRegularFile(File, files::kMaxConfigBytes, "config.json"), File, "config.json");
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
  // A hybrid model's MambaStack keys every layer by its global index.
  if (fieldValue(S, Fields, "is_hybrid_model") == true)
    return false;
  // TransformerBlock.sharded_state_dict: layers that differ (MoE beside
  // dense, linear beside full attention) are keyed one by one.
  const Json &Linear = fieldValue(S, Fields, "linear_attention_freq");
  if (Linear.is_array() || (Linear.is_number_integer() && Linear.get<int64_t>() > 1))
    return false;
  if (fieldGetter(S, Fields)("num_moe_experts") < 0)
    return true;
  const Json &Freq = fieldValue(S, Fields, "moe_layer_freq");
  return Freq.is_number_integer() && Freq.get<int64_t>() == 1;
}

std::vector<DistKey> groupByKey(const Plan &P, const SchemaTable &S, const std::vector<Json> &Fields,
                                bool LocalSpec) {
  std::map<std::string, int64_t> RangeSize; // capture variable -> count
  std::string LayerVar = rangeVar(S, "layers");
  for (const RangeInfo &R : S.Ranges) {
    EvalEnv Env{nullptr, &Fields, &S, nullptr};
    Json N = evaluate(R.Count, Env, std::string("range ") + R.Name);
    RangeSize[R.Var] = N.is_number_integer() ? N.get<int64_t>() : 0;
  }
  bool Stacked = layersStacked(S, Fields);
  std::map<std::string, size_t> Index;
  std::vector<DistKey> Keys;
  for (size_t T = 0; T < P.Tensors.size(); ++T) {
    const PlannedTensor &PT = P.Tensors[T];
    const ParamInfo &Prm = *PT.Param;
    // The key: the dist name with its captures filled in, except the layer
    // capture of a stacked model, which is taken out with the dot after it.
    // Every capture not left in the key becomes a leading axis.
    std::vector<bool> InKey(Prm.Captures.Size, false);
    std::string Key = PT.PassThrough ? PT.Name : ""; // a kept HF tensor is its own key
    bool Skip = false;
    for (const PatternPiece &Pc : PT.PassThrough ? Span<PatternPiece>() : LocalSpec ? Prm.LocalDist : Prm.Dist) {
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
        Skip = true;
        continue;
      }
      InKey[CI] = true;
      Key += std::to_string(PT.Captures[CI]);
    }
    std::vector<int64_t> Prefix, Axes;
    for (size_t CI = 0; CI < Prm.Captures.Size; ++CI)
      if (!InKey[CI]) {
        Prefix.push_back(PT.Captures[CI]);
        Axes.push_back(RangeSize[Prm.Captures[CI]]);
      }
    auto It = Index.find(Key);
    if (It == Index.end()) {
      DistKey K;
      K.Key = Key;
      K.PassThrough = PT.PassThrough;
      K.Axes = Axes;
      K.GlobalShape = Axes;
      K.GlobalShape.insert(K.GlobalShape.end(), PT.Shape.begin(), PT.Shape.end());
      It = Index.emplace(Key, Keys.size()).first;
      Keys.push_back(std::move(K));
    }
    DistKey &K = Keys[It->second];
    K.Members.push_back(T);
    K.Prefixes.push_back(Prefix);
  }
  for (DistKey &K : Keys) {
    // Members in axis order; every index of the axes exactly once.
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
    int64_t Want = 1;
    for (int64_t A : K.Axes)
      Want *= A;
    if (static_cast<int64_t>(K.Members.size()) != Want)
      throw Error("error: internal: key '" + K.Key + "' has " + std::to_string(K.Members.size()) + " of " +
                  std::to_string(Want) + " slices");
  }
  return Keys;
}

std::vector<std::string> extraStateKeys(const DistKey &K, bool HybridModel) {
  size_t Dot = K.Key.rfind('.');
  if (Dot == std::string::npos || K.PassThrough) // a kept HF module has none
    return {};
  std::string Module = K.Key.substr(0, Dot);
  // None for the embedding; GPTModel drops the output layer's, MambaModel
  // (a hybrid model) keeps it. A VLM's GPT is the same under its prefix.
  auto Is = [&](const std::string &Name) {
    return Module == Name || (Module.size() > Name.size() &&
                              Module.compare(Module.size() - Name.size() - 1, std::string::npos, "." + Name) == 0);
  };
  if (Is("embedding.word_embeddings") || Is("embedding.position_embeddings") || (Is("output_layer") && !HybridModel))
    return {};
  // One object per slice of the leading axes: 'shard_<l>.<e>_<L>.<E>'.
  std::vector<std::string> Out;
  if (K.Axes.empty())
    return {Module + "._extra_state/shard_0_1"};
  std::string Sizes;
  for (int64_t A : K.Axes)
    Sizes += (Sizes.empty() ? "" : ".") + std::to_string(A);
  for (const std::vector<int64_t> &Pre : K.Prefixes) {
    std::string Off;
    for (int64_t V : Pre)
      Off += (Off.empty() ? "" : ".") + std::to_string(V);
    Out.push_back(Module + "._extra_state/shard_" + Off + "_" + Sizes);
  }
  return Out;
}

std::vector<std::string> tokenizerFiles(const std::string &From) {
  static const char *Names[] = {"tokenizer.json",   "tokenizer_config.json", "tokenizer.model",
                                "special_tokens_map.json", "vocab.json",     "merges.txt",
                                "added_tokens.json", "chat_template.jinja",  "generation_config.json"};
  std::vector<std::string> Present;
  for (const char *N : Names) {
    std::string Src = files::join(From, N);
    if (!files::exists(Src))
      continue;
    // The same rule as for shards: a link may not lead out of the checkpoint
    // (it would copy any file the user can read into the output).
    if (!files::resolvesInside(Src, From))
      throw Error("error: " + Src + " resolves outside the checkpoint directory " + From);
    uint64_t Size = 0;
    ::close(files::openRegularFile(Src, "the tokenizer file", Size)); // not a FIFO, not a device
    if (Size > files::kMaxTokenizerBytes)
      throw Error("error: the tokenizer file " + Src + " is " + std::to_string(Size) + " bytes; at most " +
                  std::to_string(files::kMaxTokenizerBytes >> 30) + " GiB are copied");
    Present.push_back(N);
  }
  return Present;
}

void copyTokenizerFiles(const std::string &From, const std::string &To) {
  for (const std::string &N : tokenizerFiles(From)) {
    files::makeDirs(To);
    files::copyRegularFile(files::join(From, N), files::join(To, N), files::kMaxTokenizerBytes, "the tokenizer file");
  }
}

namespace {
double nowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
} // namespace

Progress::Progress(const char *What, size_t Tensors, uint64_t Bytes, bool Enabled)
    : What(What), Tensors(Tensors), Bytes(Bytes), Enabled(Enabled), Start(nowSeconds()) {}

void Progress::step(uint64_t N) {
  ++Done;
  BytesDone += N;
  if (!Enabled)
    return;
  double Now = nowSeconds();
  if (Now - Last >= 0.2 || Done == Tensors) {
    Last = Now;
    draw();
  }
}

void Progress::draw() {
  double T = nowSeconds() - Start, Rate = T > 0 ? BytesDone / T : 0;
  double Left = Rate > 0 && Bytes > BytesDone ? (Bytes - BytesDone) / Rate : 0;
  std::fprintf(stderr, "\rbridge-run %s: %zu/%zu tensors  %.2f/%.2f GB  %.2f GB/s  %.0f s left   ", What, Done,
               Tensors, BytesDone / 1e9, Bytes / 1e9, Rate / 1e9, Left);
  std::fflush(stderr);
}

void Progress::finish() {
  if (Enabled && Done)
    std::fprintf(stderr, "\n");
}

/// The iteration directory of \p Dir: Dir itself, or the one its tracker
/// file names.
std::string iterationDir(const std::string &Dir) {
  if (files::exists(files::join(Dir, ".metadata")) || files::exists(files::join(Dir, "mp_rank_00")) ||
      files::exists(files::join(Dir, "mp_rank_00_000")) || files::exists(files::join(Dir, "mp_rank_00_000_000")))
    return Dir; // an iteration directory itself (torch_dist, or legacy)
  std::string Tracker = files::join(Dir, "latest_checkpointed_iteration.txt");
  if (!files::exists(Tracker))
    throw Error("error: " + Dir + " is not a checkpoint: no .metadata and no latest_checkpointed_iteration.txt");
  std::string It = files::readRegularFile(Tracker, 64, "the tracker file");
  while (!It.empty() && std::isspace(static_cast<unsigned char>(It.back())))
    It.pop_back();
  if (It == "release")
    return files::join(Dir, "release");
  char *End = nullptr;
  long N = std::strtol(It.c_str(), &End, 10);
  if (It.empty() || *End || N < 0)
    throw Error("error: " + Tracker + " holds '" + It + "', not an iteration");
  char Name[32];
  std::snprintf(Name, sizeof Name, "iter_%07ld", N);
  return files::join(Dir, Name);
}

const MappingTable &mappingNamed(const std::string &Name) {
  for (const RegistryEntry &E : allMappings())
    if (Name == E.Name)
      return *E.Table;
  throw Error("error: the checkpoint was written with mapping '" + Name + "', which this build does not have");
}

} // namespace bridge
