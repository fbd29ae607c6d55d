//===- Legacy.cpp - Megatron-LM's legacy per-rank format: names and cuts --===//
#include "Legacy.h"

#include "bridge/Files.h"
#include "bridge/LegacyWriter.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace bridge {

LegacyLayout::LegacyLayout(const SchemaTable &S, const std::vector<Json> &Fields, const Layout &Par, bool Local)
    : L(Par), LocalSpec(Local), S(S), Fields(Fields) {
  const Json &Share = fieldValue(S, Fields, "share_embeddings_and_output_weights");
  Tied = Share.is_boolean() && Share.get<bool>();
  const Json &V = fieldValue(S, Fields, "vocab_size"), &D = fieldValue(S, Fields, "make_vocab_size_divisible_by");
  int64_t Vocab = V.is_number_integer() ? V.get<int64_t>() : 0;
  int64_t Multiple = (D.is_number_integer() && D.get<int64_t>() > 0 ? D.get<int64_t>() : 128) * L.TP;
  PaddedVocab = (Vocab + Multiple - 1) / Multiple * Multiple;
}

LegacyLayout::Place LegacyLayout::place(const PlannedTensor &PT) const {
  // Where it lives is the one rule every format shares; a rank file names
  // layers and experts by their index within the stage and the EP rank.
  const Placement At = placementOf(PT, L, S, Fields);
  const std::string LayerVar = rangeVar(S, "layers"), ExpertVar = rangeVar(S, "experts");
  std::vector<int64_t> Caps = PT.Captures;
  for (size_t C = 0; C < PT.Param->Captures.Size; ++C) {
    std::string Var = PT.Param->Captures[C];
    if (Var == LayerVar && At.LayerInStage >= 0)
      Caps[C] = At.LayerInStage;
    else if (Var == ExpertVar && At.ExpertInRank >= 0)
      Caps[C] = At.ExpertInRank;
  }
  Place Where{"", At.Stage, At.ExpertRank};
  for (const PatternPiece &Pc : LocalSpec ? PT.Param->Local : PT.Param->TE)
    Where.Name += Pc.Literal ? std::string(Pc.Literal) : std::to_string(Caps[static_cast<size_t>(Pc.Index.Code[0].A)]);
  if (auto It = Parts.find(&PT); It != Parts.end()) {
    Where.Name = partParameter(Where.Name);
    Where.PartIndex = It->second.Index;
    Where.PartCount = It->second.Count;
    Where.PartRowOffset = It->second.RowOffset;
  }
  return Where;
}

std::string partParameter(const std::string &Name) {
  size_t Last = Name.rfind('.');
  if (Last == std::string::npos || Last == 0)
    return "";
  size_t Prev = Name.rfind('.', Last - 1);
  std::string Next = Name.substr(Prev == std::string::npos ? 0 : Prev + 1, Last - (Prev == std::string::npos ? 0 : Prev + 1));
  return Next == "weight" || Next == "bias" ? Name.substr(0, Last) : "";
}

void LegacyLayout::learnParts(const Plan &P) {
  // Group the parts of each parameter (its global name) in schema order; a
  // part's rows on a rank are its TP slice (cutFor on a meta tensor).
  std::map<std::string, std::vector<const PlannedTensor *>> ByParameter;
  for (const PlannedTensor &PT : P.Tensors)
    if (std::string Base = partParameter(PT.Name); !Base.empty())
      ByParameter[Base].push_back(&PT);
  Parts.clear();
  for (auto &[Base, Of] : ByParameter) {
    std::sort(Of.begin(), Of.end(), [](const PlannedTensor *A, const PlannedTensor *B) { return A->Param < B->Param; });
    int64_t Offset = 0;
    for (size_t I = 0; I < Of.size(); ++I) {
      Parts[Of[I]] = {Base, static_cast<int>(I), static_cast<int>(Of.size()), Offset};
      at::Tensor Meta = at::empty(Of[I]->Shape, at::TensorOptions().device(at::kMeta));
      Offset += cutFor(*Of[I], Meta, 0).size(0);
    }
  }
}

std::string LegacyLayout::extraState(const std::string &Name) const {
  size_t Dot = Name.rfind('.');
  if (LocalSpec || Dot == std::string::npos)
    return "";
  std::string Module = Name.substr(0, Dot);
  if (Module.rfind("embedding", 0) == 0 || Module == "output_layer")
    return "";
  return Module + "._extra_state";
}

namespace {
at::Tensor cutChunk(const at::Tensor &X, const ChunkSpec &Spec) {
  at::Tensor Part = X;
  for (size_t D = 0; D < Spec.Offsets.size(); ++D)
    Part = Part.narrow(static_cast<int64_t>(D), Spec.Offsets[D], Spec.Sizes[D]);
  return Part;
}
} // namespace

bool LegacyLayout::splits(const PlannedTensor &PT) const {
  return PT.ParallelStyle == Style::Vocab || chunksOf(PT, L).size() > 1;
}

at::Tensor LegacyLayout::cutFor(const PlannedTensor &PT, at::Tensor X, int Rank) const {
  const int TP = L.TP;
  if (PT.ParallelStyle == Style::Vocab) {
    // The model allocates the padded vocabulary: zero rows at the end.
    if (X.size(0) > PaddedVocab)
      throw Error("error: '" + PT.Name + "' has " + std::to_string(X.size(0)) +
                  " rows, more than the padded vocabulary (" + std::to_string(PaddedVocab) + ") the config gives");
    int64_t Rows = PaddedVocab / TP, First = Rank * Rows;
    if (First + Rows <= X.size(0))
      return X.narrow(0, First, Rows);
    std::vector<int64_t> Pad(X.sizes().begin(), X.sizes().end());
    Pad[0] = First + Rows - std::max(First, X.size(0));
    at::Tensor Zeros = at::zeros(Pad, X.options());
    if (First >= X.size(0))
      return Zeros;
    return at::cat({X.narrow(0, First, X.size(0) - First), Zeros}, 0);
  }
  std::vector<ChunkSpec> Chunks = chunksOf(PT, L);
  // A split style that comes back whole did not divide: every rank would
  // hold the whole tensor, which no model of this layout loads.
  bool Splits = PT.ParallelStyle != Style::Replicated && PT.ParallelStyle != Style::Any &&
                !(PT.ParallelStyle == Style::Row && PT.Shape.size() == 1); // a row-parallel bias is whole
  if (Splits && Chunks.size() == 1 && (PT.Expert ? L.ETP : L.TP) > 1)
    throw Error("error: '" + PT.Name + "' cannot be cut for TP " + std::to_string(PT.Expert ? L.ETP : L.TP) +
                ": its split dimension does not divide");
  size_t R = static_cast<size_t>(Rank);
  if (Chunks.size() == 1) // replicated, or experts held whole (ETP 1)
    return X;
  if (PT.ParallelStyle == Style::Gated) // rank-local [gate_r; up_r]
    return at::cat({cutChunk(X, Chunks[R]), cutChunk(X, Chunks[Chunks.size() / 2 + R])}, 0);
  return cutChunk(X, Chunks[R]);
}

std::vector<at::Tensor> LegacyLayout::cut(const PlannedTensor &PT, at::Tensor X) const {
  std::vector<at::Tensor> ByRank(static_cast<size_t>(L.TP));
  for (int T = 0; T < L.TP; ++T)
    ByRank[static_cast<size_t>(T)] = cutFor(PT, X, T).contiguous();
  return ByRank;
}

at::Tensor LegacyLayout::join(const PlannedTensor &PT, const std::vector<at::Tensor> &ByRank,
                              const std::string &Where) const {
  const int TP = L.TP;
  if (PT.ParallelStyle == Style::Vocab) {
    at::Tensor X = TP == 1 ? ByRank[0] : at::cat(ByRank, 0);
    if (X.size(0) < PT.Shape[0])
      throw Error(Where + ": error: '" + PT.Name + "' holds " + std::to_string(X.size(0)) +
                  " vocabulary rows in all, fewer than the model's " + std::to_string(PT.Shape[0]));
    return X.narrow(0, 0, PT.Shape[0]);
  }
  std::vector<ChunkSpec> Chunks = chunksOf(PT, L);
  if (Chunks.size() == 1) {
    for (int T = 1; T < TP; ++T)
      if (!at::equal(ByRank[static_cast<size_t>(T)], ByRank[0]))
        throw Error(Where + ": error: '" + PT.Name + "' differs between TP rank 0 and TP rank " + std::to_string(T) +
                    ", but every rank holds it whole");
    return ByRank[0];
  }
  if (PT.ParallelStyle == Style::Gated) {
    std::vector<at::Tensor> Gates, Ups;
    for (const at::Tensor &R : ByRank) {
      int64_t Half = R.size(0) / 2;
      Gates.push_back(R.narrow(0, 0, Half));
      Ups.push_back(R.narrow(0, Half, Half));
    }
    Gates.insert(Gates.end(), Ups.begin(), Ups.end());
    return at::cat(Gates, 0);
  }
  // Column-like styles cut dim 0, row-parallel ones dim 1 (chunksOf's cut).
  int64_t Dim = 0;
  for (size_t D = 0; D < Chunks[0].Sizes.size(); ++D)
    if (Chunks[0].Sizes[D] != PT.Shape[D])
      Dim = static_cast<int64_t>(D);
  return at::cat(ByRank, Dim);
}

Json LegacyLayout::args(const SchemaTable &S, const std::vector<Json> &Fields) const {
  Json A = Json::object();
  Json Config = configToJson(S, Fields);
  for (auto It = Config.begin(); It != Config.end(); ++It)
    if (!It.value().is_object())
      A[It.key()] = It.value();
  const Json &Position = fieldValue(S, Fields, "position_embedding_type");
  A["untie_embeddings_and_output_weights"] = !Tied;
  A["add_position_embedding"] = Position.is_string() && Position.get<std::string>() == "learned_absolute";
  A["padded_vocab_size"] = PaddedVocab;
  A["tensor_model_parallel_size"] = L.TP;
  A["pipeline_model_parallel_size"] = L.PP;
  A["expert_model_parallel_size"] = L.EP;
  A["expert_tensor_parallel_size"] = L.ETP;
  A["virtual_pipeline_model_parallel_size"] = nullptr;
  A["ckpt_format"] = "torch";
  A["iteration"] = 0;
  A["consumed_train_samples"] = 0;
  A["consumed_valid_samples"] = 0;
  return A;
}

namespace {

/// A rank file mapped read-only and unpickled, its tensors borrowed from
/// the mapping (declared first, so destroyed last).
struct MappedRankFile {
  std::string Path;
  files::MappedFile Map;
  PyValuePtr Root;

  /// \p Missing: what to add when the file cannot be opened.
  MappedRankFile(std::string FilePath, const std::string &Missing = "") : Path(std::move(FilePath)), Map(Path) {
    if (!Map.ok())
      throw Error("error: cannot read " + Path + ": " + Map.why() + Missing);
    if (Map.size() == 0)
      throw Error("error: " + Path + " is empty");
    Root = readTorchSave(Map.bytes(), Path, LegacyCheckpointGlobals, /*Borrow=*/true);
  }
  MappedRankFile(const MappedRankFile &) = delete;
  MappedRankFile &operator=(const MappedRankFile &) = delete;
};

} // namespace

struct LegacyCheckpoint::RankFile : MappedRankFile {
  using MappedRankFile::MappedRankFile;
  std::map<std::string, const TensorRecord *> Tensors;
  std::vector<std::string> Nones;
};

LegacyCheckpoint::LegacyCheckpoint(const std::string &IterDir, const Layout &Par) : L(Par), Dir(IterDir) {
  for (int P = 0; P < L.PP; ++P)
    for (int E = 0; E < L.EP; ++E)
      for (int T = 0; T < L.TP; ++T) {
        auto F = std::make_unique<RankFile>(
            files::join(files::join(IterDir, LegacyWriter::rankDir(L.PP, L.EP, T, P, E)), "model_optim_rng.pt"),
            " (a TP=" + std::to_string(L.TP) + " PP=" + std::to_string(L.PP) + " EP=" + std::to_string(L.EP) +
                " legacy checkpoint has one file per rank)");
        const PyValue *Model = F->Root->find("model");
        if (!Model || Model->Tag != PyValue::Kind::Dict)
          throw Error("error: " + F->Path + " has no 'model' dict: not a Megatron-LM legacy checkpoint file");
        for (const auto &[K, V] : Model->Entries) {
          if (K->Tag != PyValue::Kind::Str)
            throw Error("error: " + F->Path + ": a key of 'model' is not a string");
          if (V->Tag == PyValue::Kind::Tensor)
            F->Tensors[K->Text] = V->Tensor.get();
          else if (V->Tag == PyValue::Kind::None ||
                   (K->Text.size() > 13 && K->Text.compare(K->Text.size() - 13, 13, "._extra_state") == 0))
            F->Nones.push_back(K->Text); // extra state, whatever its form
          else
            throw Error("error: " + F->Path + ": 'model' entry '" + K->Text + "' is neither a tensor nor extra state");
        }
        Files[{T, P, E}] = std::move(F);
      }
}

LegacyCheckpoint::~LegacyCheckpoint() = default;

const TensorRecord *LegacyCheckpoint::find(int T, int P, int E, const std::string &Name) const {
  auto It = Files.find({T, P, E});
  if (It == Files.end())
    return nullptr;
  auto J = It->second->Tensors.find(Name);
  return J == It->second->Tensors.end() ? nullptr : J->second;
}

std::vector<std::tuple<int, int, int, std::string>> LegacyCheckpoint::tensors() const {
  std::vector<std::tuple<int, int, int, std::string>> Out;
  for (const auto &[Rank, F] : Files)
    for (const auto &[Name, _] : F->Tensors)
      Out.emplace_back(std::get<0>(Rank), std::get<1>(Rank), std::get<2>(Rank), Name);
  return Out;
}

std::string LegacyCheckpoint::fileOf(int T, int P, int E) const {
  auto It = Files.find({T, P, E});
  return It == Files.end() ? Dir : It->second->Path;
}

Json legacySidecar(const std::string &IterDir, const Json &HFConfig, const std::string &Mapping,
                   const Json &MegatronConfig) {
  // The first rank file names the layout in its args.
  std::string First;
  if (DIR *D = ::opendir(IterDir.c_str())) {
    while (const struct dirent *E = ::readdir(D)) {
      std::string Name = E->d_name;
      if (Name.rfind("mp_rank_", 0) == 0 && (First.empty() || Name < First))
        First = Name;
    }
    ::closedir(D);
  }
  if (First.empty())
    throw Error("error: " + IterDir + " holds no mp_rank_* directory: not a legacy checkpoint");
  MappedRankFile File(files::join(files::join(IterDir, First), "model_optim_rng.pt"));
  const std::string &Path = File.Path;
  const PyValuePtr &Root = File.Root;
  Json Side;
  const PyValue *Args = Root->find("args");
  if (!Args)
    throw Error("error: " + Path + " has no 'args': the layout it was saved at is unknown");
  auto IntArg = [&](const char *Name, int64_t Default) -> int64_t {
    const PyValue *V = Args->find(Name);
    if (!V || V->Tag == PyValue::Kind::None)
      return Default;
    if (V->Tag != PyValue::Kind::Int)
      throw Error("error: " + Path + ": args." + Name + " is not an integer");
    return V->Int;
  };
  int64_t TP = IntArg("tensor_model_parallel_size", -1);
  if (TP < 1)
    throw Error("error: " + Path + ": args has no tensor_model_parallel_size");
  int64_t VPP = IntArg("virtual_pipeline_model_parallel_size", 1);
  if (VPP > 1)
    throw Error("error: " + Path + " was saved with virtual pipeline stages (" + std::to_string(VPP) +
                "), which this reader does not take");
  Side["layout"] = {{"tp", TP},
                    {"pp", IntArg("pipeline_model_parallel_size", 1)},
                    {"ep", IntArg("expert_model_parallel_size", 1)},
                    {"etp", IntArg("expert_tensor_parallel_size", TP)},
                    {"vpp", 1}};
  const PyValue *Model = Root->find("model");
  bool TE = false;
  if (Model)
    for (const auto &[K, V] : Model->Entries)
      TE |= K->Tag == PyValue::Kind::Str && K->Text.find(".layer_norm_weight") != std::string::npos;
  Side["layer_spec"] = TE ? "transformer_engine" : "local";
  Side["format"] = 1;
  Side["mapping"] = Mapping;
  Side["megatron_config"] = MegatronConfig;
  Side["hf_config"] = HFConfig;
  Side["checkpoint_format"] = "torch";
  return Side;
}

} // namespace bridge
