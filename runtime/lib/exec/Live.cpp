//===- Live.cpp - the live bridge: a running Megatron-Core model as source and sink ===//
//
// Load runs each planned tensor's chain forward from views of the mapped HF
// files and copies this rank's slice into its parameter; export gathers the
// slices of one bucket at a time (TP or ETP, then EP, then PP) into global
// tensors and runs their chains backwards into HF tensors. See Live.h.
//
//===----------------------------------------------------------------------===//
#include "Live.h"

#include "Checkpoint.h"
#include "CudaSupport.h"
#include "Ops.h"
#include "PinnedBlock.h"

#include "bridge/Files.h"
#include "bridge/OutputDir.h"
#include "bridge/Registry.h"
#include "bridge/Safetensors.h"
#include "bridge/Sidecar.h"
#include "bridge/StrictJson.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/floor_divide.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/remainder.h>
#include <ATen/ops/empty.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

namespace bridge::live {

namespace {

/// Byte offsets inside a packed buffer are kept multiples of this, so that
/// every tensor packed there can be viewed in its own dtype.
constexpr int64_t kPackAlign = 16;

int64_t aligned(int64_t Bytes) { return (Bytes + kPackAlign - 1) / kPackAlign * kPackAlign; }

/// Tensors laid end to end in one flat uint8 buffer, and back.
struct Packing {
  std::vector<int64_t> Offsets;
  int64_t Total = 0;

  void add(int64_t Bytes) {
    Offsets.push_back(Total);
    Total += aligned(Bytes);
  }
  static at::Tensor pack(const std::vector<at::Tensor> &Ts, const Packing &P, const at::Device &Dev) {
    at::Tensor Buf = at::empty({P.Total}, at::TensorOptions().dtype(at::kByte).device(Dev));
    for (size_t I = 0; I < Ts.size(); ++I) {
      at::Tensor Bytes = Ts[I].contiguous().view({-1}).view(at::kByte);
      Buf.narrow(0, P.Offsets[I], Bytes.numel()).copy_(Bytes);
    }
    return Buf;
  }
  at::Tensor unpack(const at::Tensor &Buf, size_t I, at::IntArrayRef Shape, at::ScalarType Type) const {
    int64_t Bytes = elementsOf(std::vector<int64_t>(Shape.begin(), Shape.end())) * c10::elementSize(Type);
    return Buf.narrow(0, Offsets[I], Bytes).view(Type).view(Shape);
  }
};

} // namespace

// -- the HF checkpoint -----------------------------------------------------------------

HFModel::HFModel(const std::string &Dir, const AdapterSpec *Adapters) : C(schema()), Dir(Dir) {
  Src = hfSource(Dir, C, /*LocalSpec=*/false);
  Src->open(C);
  PassThroughLister Lister = Src->passThrough();
  C.P = expandPlan(*C.Mapping, C.S, C.Fields, /*UseTENames=*/true, Lister.List ? &Lister : nullptr,
                   Src->hfTensorCount());
  // Alternatives chosen by what the checkpoint holds, coverage, every
  // chain run on meta tensors: a checkpoint that does not fit its mapping
  // fails here, before any model is touched.
  Src->check(C);
  if (Adapters) {
    // The adapters' matrices are never read from the checkpoint (a live
    // model's adapters are its own); export gives them back under the HF
    // modules' names.
    addAdapters(C.P, *Adapters);
    C.Adapter = {{"dim", Adapters->Dim}, {"alpha", Adapters->Alpha}, {"target_modules", Adapters->Targets}};
  }
  C.Keys = groupByKey(C.P, C.S, C.Fields, C.LocalSpec);
  Side = Src->sidecar(C);
  for (const PlannedTensor &PT : C.P.Tensors)
    if (PT.AdapterOf >= 0)
      for (size_t K = 0; K < PT.chain().Sources.size(); ++K) {
        if (PT.chain().SourceOptional[K])
          continue; // a weight's scale, never beside an adapter
        const std::string &S = PT.chain().Sources[K];
        const Json &W = Side.at("hf_tensors").at(S.substr(0, S.size() - 14) + ".weight"); // '.lora_A.weight'
        std::vector<int64_t> WS = W.at("shape").get<std::vector<int64_t>>();
        std::vector<int64_t> Shape = PT.AdapterMatrix == 'A' ? std::vector<int64_t>{Adapters->Dim, WS[1]}
                                                             : std::vector<int64_t>{WS[0], Adapters->Dim};
        // In fp32, as Megatron-Bridge's export_adapter_ckpt gives them (a
        // bf16 adapter loses nothing).
        Side["hf_tensors"][S] = {{"file", "adapter_model.safetensors"}, {"dtype", "F32"}, {"shape", Shape}};
      }
}

Json HFModel::megatronConfig() const { return configToJson(C.S, C.Fields); }

at::Tensor HFModel::hfTensor(const std::string &Name, int64_t Slice) const {
  Reading R;
  return Src->hfTensor(Name, Slice, R);
}

// -- one rank of the model -------------------------------------------------------------

std::string LiveModel::liveName(const PlannedTensor &PT) const {
  if (PT.PassThrough)
    return LocalSpec ? PT.LocalName : PT.Name;
  // Layers keep their global index (the caller made them global); experts
  // are named by their index within their EP rank, as the model names them.
  const Conversion &C = Model->conversion();
  const Placement P = placementOf(PT, L, C.S, C.Fields);
  const std::string ExpertVar = rangeVar(C.S, "experts");
  std::vector<int64_t> Caps = PT.Captures;
  for (size_t I = 0; I < PT.Param->Captures.Size; ++I)
    if (PT.Param->Captures[I] == ExpertVar && P.ExpertInRank >= 0)
      Caps[I] = P.ExpertInRank;
  std::string Name;
  for (const PatternPiece &Pc : LocalSpec ? PT.Param->Local : PT.Param->TE)
    Name += Pc.Literal ? std::string(Pc.Literal) : std::to_string(Caps[static_cast<size_t>(Pc.Index.Code[0].A)]);
  return Name;
}

int LiveModel::tpRankOf(const PlannedTensor &) const {
  // Experts are cut over ETP, which is 1 (whole) or TP (the same rank).
  return At.TP;
}

LiveModel::LiveModel(std::shared_ptr<const HFModel> M, const Layout &Par, Coordinates Where, bool Local,
                     std::vector<std::pair<std::string, at::Tensor>> Params, std::map<std::string, Remote> Others)
    : Model(std::move(M)), L(Par), At(Where), LocalSpec(Local), Elsewhere(std::move(Others)) {
  const Conversion &C = Model->conversion();
  std::string Context = "the model (TP " + std::to_string(L.TP) + ", PP " + std::to_string(L.PP) + ", EP " +
                        std::to_string(L.EP) + ", ETP " + std::to_string(L.ETP) + ") and mapping '" +
                        C.Mapping->Name + "' for " + Model->dir();
  std::vector<std::string> Problems = checkLayout(L, fieldGetter(C.S, C.Fields));
  if (!Problems.empty())
    throw Error("error: " + Context + " do not fit: " + Problems[0]);
  if (L.ETP != 1 && L.ETP != L.TP)
    throw Error("error: the live bridge cuts experts whole (ETP 1) or like the dense layers (ETP = TP = " +
                std::to_string(L.TP) + "), not ETP " + std::to_string(L.ETP));
  auto DataOf = [](const at::Tensor &T) -> const void * { return T.has_storage() ? T.data_ptr() : nullptr; };
  for (auto &[Name, T] : Params) {
    if (!ByName.emplace(Name, T).second)
      throw Error("error: the model has two parameters named '" + Name + "'");
    Inputs.push_back({T, DataOf(T), std::vector<int64_t>(T.sizes().begin(), T.sizes().end()), T.scalar_type()});
  }
  Cuts.emplace(C.S, C.Fields, L, LocalSpec);

  std::set<std::string> Used;
  std::vector<std::string> Missing, Unexpected, WrongShape;
  for (const std::string &Base : viewParts(WrongShape))
    Used.insert(Base);
  for (size_t I = 0; I < C.P.Tensors.size(); ++I) {
    const PlannedTensor &PT = C.P.Tensors[I];
    const Placement P = placementOf(PT, L, C.S, C.Fields);
    if (P.ExpertRank >= 0 && P.ExpertRank != At.EP)
      continue; // another EP rank's expert
    std::string Name = liveName(PT);
    if (PT.ParallelStyle == Style::Vocab && !PT.Expert && PT.Name.rfind("embedding.", 0) == 0)
      TiedFrom = I;
    auto It = ByName.find(Name);
    if (It == ByName.end()) {
      if (!Elsewhere.count(Name))
        Missing.push_back(Name);
      continue;
    }
    Used.insert(Name);
    Mine.push_back({I, It->second});
    // The model's own vocabulary padding (a multiple of TP at least).
    if (PT.ParallelStyle == Style::Vocab)
      Cuts->setPaddedVocab(It->second.size(0) * L.TP);
  }
  // With tied embeddings the last stage holds a copy of the embedding as
  // its output layer when it is not the first.
  const Json &Share = fieldValue(C.S, C.Fields, "share_embeddings_and_output_weights");
  if (Share.is_boolean() && Share.get<bool>() && TiedFrom) {
    auto It = ByName.find("output_layer.weight");
    if (It != ByName.end() && !Used.count(It->first)) {
      TiedCopy = It->second;
      Used.insert(It->first);
      Cuts->setPaddedVocab(TiedCopy.size(0) * L.TP);
    }
  }
  for (auto &[Name, T] : ByName)
    if (!Used.count(Name))
      Unexpected.push_back(Name);
  for (const Held &H : Mine) {
    std::vector<int64_t> Want = localShape(H.Planned);
    if (H.Param.sizes() != at::IntArrayRef(Want))
      WrongShape.push_back(liveName(C.P.Tensors[H.Planned]) + " is " + exec::shapeText(H.Param.sizes()) +
                           ", the mapping gives this rank " + exec::shapeText(Want));
  }
  if (TiedCopy.defined()) {
    std::vector<int64_t> Want = localShape(*TiedFrom);
    if (TiedCopy.sizes() != at::IntArrayRef(Want))
      WrongShape.push_back("output_layer.weight is " + exec::shapeText(TiedCopy.sizes()) + ", the tied embedding gives " +
                           exec::shapeText(Want));
  }
  if (!Missing.empty() || !Unexpected.empty() || !WrongShape.empty()) {
    std::string Msg = "error: " + Context + " do not match on rank (TP " + std::to_string(At.TP) + ", PP " +
                      std::to_string(At.PP) + ", EP " + std::to_string(At.EP) + "); nothing was written:";
    Msg += nameList("parameter(s) the mapping gives this rank are missing", Missing);
    Msg += nameList("parameter(s) the mapping does not produce", Unexpected);
    Msg += nameList("parameter(s) of another shape", WrongShape);
    throw Error(Msg);
  }
}

std::vector<int64_t> LiveModel::localShape(size_t Planned) const {
  const PlannedTensor &PT = Model->conversion().P.Tensors[Planned];
  at::Tensor Meta = at::empty(PT.Shape, at::TensorOptions().device(at::kMeta));
  at::Tensor Local = Cuts->cutFor(PT, Meta, tpRankOf(PT));
  return std::vector<int64_t>(Local.sizes().begin(), Local.sizes().end());
}

std::vector<std::string> LiveModel::viewParts(std::vector<std::string> &WrongShape) {
  // A parameter torch_dist keeps in parts (Mamba's in_proj [z | x | B | C |
  // dt] and conv1d [x | B | C]): the mapping names each part
  // '<parameter>.<part>', a name the model does not have. Each rank's
  // parameter is its slice of every part, laid end to end in rows in the
  // order the schema declares the parts (MambaMixer's order).
  const Conversion &C = Model->conversion();
  std::set<std::string> Planned;
  std::vector<std::pair<size_t, std::string>> Ours; // this rank's planned tensors, by live name
  for (size_t I = 0; I < C.P.Tensors.size(); ++I) {
    const PlannedTensor &PT = C.P.Tensors[I];
    const Placement P = placementOf(PT, L, C.S, C.Fields);
    if (P.ExpertRank >= 0 && P.ExpertRank != At.EP)
      continue;
    Ours.emplace_back(I, liveName(PT));
    Planned.insert(Ours.back().second);
  }
  std::map<std::string, std::vector<size_t>> PartsOf;
  for (auto &[I, Name] : Ours) {
    size_t Dot = Name.rfind('.');
    if (ByName.count(Name) || Elsewhere.count(Name) || Dot == std::string::npos)
      continue;
    std::string Base = Name.substr(0, Dot);
    if (!Planned.count(Base) && (ByName.count(Base) || Elsewhere.count(Base)))
      PartsOf[Base].push_back(I);
  }
  std::vector<std::string> Bases;
  for (auto &[Base, Parts] : PartsOf) {
    Bases.push_back(Base);
    std::sort(Parts.begin(), Parts.end(),
              [&](size_t A, size_t B) { return C.P.Tensors[A].Param < C.P.Tensors[B].Param; });
    if (auto It = Elsewhere.find(Base); It != Elsewhere.end()) {
      for (size_t I : Parts)
        Elsewhere.emplace(liveName(C.P.Tensors[I]), It->second);
      continue;
    }
    const at::Tensor &Param = ByName.at(Base);
    std::vector<std::pair<std::string, at::Tensor>> Views;
    std::vector<int64_t> Rows(static_cast<size_t>(Param.dim()), 0);
    std::string Names;
    bool Fits = Param.dim() > 0;
    for (size_t I : Parts) {
      std::vector<int64_t> Want = localShape(I);
      std::string Name = liveName(C.P.Tensors[I]);
      Names += (Names.empty() ? "" : ", ") + Name.substr(Base.size() + 1);
      Fits = Fits && Want.size() == Rows.size() &&
             std::equal(Want.begin() + 1, Want.end(), Param.sizes().begin() + 1) &&
             Rows[0] + Want[0] <= Param.size(0);
      if (Fits)
        Views.emplace_back(Name, Param.narrow(0, Rows[0], Want[0]));
      if (!Want.empty() && Want.size() == Rows.size()) {
        Rows[0] += Want[0];
        std::copy(Want.begin() + 1, Want.end(), Rows.begin() + 1);
      }
    }
    if (!Fits || Rows[0] != Param.size(0)) {
      WrongShape.push_back(Base + " is " + exec::shapeText(Param.sizes()) + ", its parts (" + Names +
                           ") give this rank " + exec::shapeText(Rows));
      for (size_t I : Parts) // reported once, as the parameter
        Elsewhere.emplace(liveName(C.P.Tensors[I]), Remote{At.PP, Param.scalar_type()});
      continue;
    }
    for (auto &[Name, View] : Views)
      ByName.emplace(Name, View);
  }
  return Bases;
}

bool LiveModel::unchanged() const {
  for (const Given &G : Inputs)
    if ((G.T.has_storage() ? G.T.data_ptr() : nullptr) != G.Data || G.T.scalar_type() != G.Type ||
        !std::equal(G.Sizes.begin(), G.Sizes.end(), G.T.sizes().begin(), G.T.sizes().end()))
      return false;
  return true;
}

std::vector<std::string> LiveModel::names() const {
  std::vector<std::string> Out;
  for (const Held &H : Mine)
    Out.push_back(liveName(Model->conversion().P.Tensors[H.Planned]));
  return Out;
}

std::vector<Op> LiveModel::appliedOps(const PlannedTensor &PT) const {
  // An op with an optional input the checkpoint lacks (a dequantization
  // without its scale) passes its first input through: it is not applied.
  const SourceChain &Ch = PT.chain();
  OpTree Tree(Ch.Nodes);
  std::vector<Op> Out;
  for (size_t I = 0; I < Ch.Nodes.Size; ++I) {
    const OpNode &N = Ch.Nodes[I];
    if (N.IsSource)
      continue;
    bool Absent = false;
    for (size_t Child : Tree.children(Ch.Nodes, I))
      if (Ch.Nodes[Child].IsSource && Ch.Nodes[Child].OptionalInput &&
          !Model->hfTensor(Ch.Sources[static_cast<size_t>(Tree.SourceOrdinal[Child])], -1).defined())
        Absent = true;
    if (!Absent)
      Out.push_back(N.Kind);
  }
  return Out;
}

bool LiveModel::movesRows(const PlannedTensor &PT) const {
  // Styles whose rank slices are sets of rows (dim 0).
  if (PT.ParallelStyle != Style::QKV && PT.ParallelStyle != Style::Gated && PT.ParallelStyle != Style::Column)
    return false;
  // Worth it when the rank holds some rows of the result (cut for more than
  // one rank), or when the chain keeps some rows of its sources (a row
  // block: one part of Mamba's in_proj, which is otherwise read whole for
  // each of its five parts).
  bool Some = (PT.Expert ? L.ETP : L.TP) >= 2 && Cuts->splits(PT);
  for (Op Kind : appliedOps(PT)) {
    switch (Kind) {
    case Op::RowBlock:
      Some = true;
      break;
    case Op::Identity:
    case Op::FuseQKV:
    case Op::FuseQKVGated:
    case Op::QKVFromConcat:
    case Op::FuseGatedMLP:
    case Op::GateUpConcat:
    case Op::GateUpInterleaved:
    case Op::RollRows:
    case Op::SelectExpert:
      break;
    default:
      return false; // values change (casts, offsets, dequantization) or dims move
    }
  }
  return Some;
}

at::Tensor LiveModel::ownRows(const PlannedTensor &PT) const {
  // Every op of the chain moves whole rows, so each row of the result is
  // one row of one source. The chain runs once on each source's row numbers
  // (a one-column tensor tagged with the source's ordinal), the rank's
  // slice is cut from that, and only those rows are read from the mapped
  // sources: a TP rank reads its own bytes, and no other rank's slice of a
  // fused tensor is made.
  const Conversion &C = Model->conversion();
  std::vector<at::Tensor> Sources;
  constexpr int64_t kTag = int64_t(1) << 40;
  auto Numbers = [&](const std::string &Name, int64_t Slice) {
    at::Tensor X = Model->hfTensor(Name, Slice);
    if (!X.defined())
      return X; // an optional input the checkpoint lacks: its op passes through
    if (X.dim() == 0)
      throw Error("error: '" + PT.Name + "': source '" + Name + "' has no rows to cut");
    Sources.push_back(X);
    at::Tensor Rows = at::arange(X.size(0), at::kLong).add(static_cast<int64_t>(Sources.size() - 1) * kTag);
    std::vector<int64_t> Shape(static_cast<size_t>(X.dim()), 1);
    Shape[0] = X.size(0);
    return Rows.view(Shape);
  };
  at::Tensor Origin = runChain(PT, C.Fields, C.S, Numbers);
  if (Origin.dim() != static_cast<int64_t>(PT.Shape.size()))
    return at::Tensor(); // not a plain row permutation after all: the general path
  at::Tensor Mine = Cuts->cutFor(PT, Origin.expand(PT.Shape), tpRankOf(PT));
  // One column holds the row numbers; the rank's slice keeps all columns.
  std::vector<int64_t> Shape(Mine.sizes().begin(), Mine.sizes().end());
  at::Tensor Rows = Mine.reshape({Mine.size(0), -1}).select(1, 0).contiguous();
  at::Tensor Out = at::empty(Shape, Sources.front().options());
  at::Tensor Which = at::floor_divide(Rows, kTag), Row = at::remainder(Rows, kTag);
  for (size_t K = 0; K < Sources.size(); ++K) {
    at::Tensor Here = at::nonzero(Which.eq(static_cast<int64_t>(K))).view({-1});
    if (Here.numel() == 0)
      continue;
    at::Tensor Read = Sources[K].index_select(0, Row.index_select(0, Here));
    BytesRead += Read.nbytes();
    Out.index_copy_(0, Here, Read);
  }
  return Out;
}

void LiveModel::load(uint64_t MemoryBudget) {
  const Conversion &C = Model->conversion();
  // Parameters on a GPU are filled by several threads, each on a stream of
  // its own: the reads from the mapped files (into pinned memory, reused
  // blocks) overlap each other and the copies to the device.
  const bool Cuda = !Mine.empty() && Mine.front().Param.is_cuda();
  BytesRead = 0;
  // A chain that only renames (and picks an expert) is a view of the
  // mapped file: its slice is all that is read and copied.
  auto RenamesOnly = [&](const PlannedTensor &PT) {
    for (Op Kind : appliedOps(PT))
      if (Kind != Op::SelectExpert && Kind != Op::Identity)
        return false;
    return true;
  };
  // One item of work: a parameter, or a block of rows of a renamed one. A
  // large renamed tensor (an embedding, the output layer) is cut into
  // blocks of rows that the threads share, and the rest is taken largest
  // first, so no thread is left copying one big tensor alone at the end.
  struct Item {
    size_t Planned;
    at::Tensor Param;
    bool Renames;
    int64_t Begin = 0, Rows = -1; // a block of dim 0; Rows -1: all of it
    uint64_t Bytes;               // its temporaries: sources and result, two bytes each
  };
  constexpr uint64_t kBlockBytes = uint64_t(64) << 20;
  std::vector<Item> Work;
  auto Add = [&](size_t Planned, const at::Tensor &Param) {
    const PlannedTensor &PT = C.P.Tensors[Planned];
    const bool Renames = RenamesOnly(PT);
    const uint64_t Bytes = static_cast<uint64_t>(Param.nbytes());
    if (!Cuda || !Renames || Param.dim() == 0 || Bytes <= 2 * kBlockBytes) {
      Work.push_back({Planned, Param, Renames, 0, -1, static_cast<uint64_t>(elementsOf(PT.Shape)) * 4});
      return;
    }
    const int64_t RowBytes = std::max<int64_t>(1, static_cast<int64_t>(Bytes) / Param.size(0));
    const int64_t Step = std::max<int64_t>(1, static_cast<int64_t>(kBlockBytes) / RowBytes);
    for (int64_t B = 0; B < Param.size(0); B += Step) {
      const int64_t N = std::min(Step, Param.size(0) - B);
      Work.push_back({Planned, Param, true, B, N, static_cast<uint64_t>(N * RowBytes)});
    }
  };
  for (Held &H : Mine)
    if (C.P.Tensors[H.Planned].AdapterOf < 0) // a model's adapters are its own, not the checkpoint's
      Add(H.Planned, H.Param);
  if (TiedCopy.defined())
    Add(*TiedFrom, TiedCopy);
  if (Cuda)
    std::stable_sort(Work.begin(), Work.end(), [](const Item &A, const Item &B) { return A.Bytes > B.Bytes; });

  const exec::Staging How = exec::stagingFromEnvironment();
  // A host tensor on \p Dev through the thread's pinned block.
  auto Staged = [](const at::Tensor &X, const at::Device &Dev, exec::PinnedBlock &Block) {
    at::Tensor Dst = at::empty(X.sizes(), X.options().device(Dev));
    Block.copy(X, Dst);
    return Dst;
  };
  auto Fill = [&](const Item &W, exec::PinnedBlock *Block) {
    const PlannedTensor &PT = C.P.Tensors[W.Planned];
    const bool Renames = W.Renames;
    at::Tensor Param = W.Rows < 0 ? W.Param : W.Param.narrow(0, W.Begin, W.Rows);
    const at::Device Dev = Param.device();
    // Chains other than renames run on the parameter's device from their
    // whole sources (or, moving rows only, from the rows the rank keeps).
    auto Leaf = [&](const std::string &Name, int64_t Slice) {
      at::Tensor X = Model->hfTensor(Name, Slice);
      if (X.defined() && !Renames) // a rename's slice is counted when copied
        BytesRead += X.nbytes();
      return X.defined() && !Renames && Block ? Staged(X, Dev, *Block) : X;
    };
    at::Tensor Local;
    if (!Renames && movesRows(PT))
      Local = ownRows(PT);
    if (!Local.defined()) {
      at::Tensor Global = runChain(PT, C.Fields, C.S, Leaf, Dev.is_cuda() ? &Dev : nullptr);
      Local = Cuts->cutFor(PT, Global, tpRankOf(PT));
    }
    if (W.Rows >= 0)
      Local = Local.narrow(0, W.Begin, W.Rows);
    if (Renames)
      BytesRead += Local.nbytes();
    if (Block && Local.is_cpu()) {
      if (Local.scalar_type() == Param.scalar_type() && Param.is_contiguous()) {
        Block->copy(Local, Param); // a rename: straight into the parameter
        return;
      }
      Local = Staged(Local, Dev, *Block);
    }
    if (Local.scalar_type() != Param.scalar_type())
      Local = Local.to(Param.scalar_type());
    Param.copy_(Local, /*non_blocking=*/true);
  };

  const size_t Threads = Cuda ? std::min<size_t>(8, Work.size()) : 1;
  std::atomic<size_t> Next{0};
  std::mutex Failed;
  std::exception_ptr Error;
  // The threads' temporaries on the device (staged sources, fused results)
  // are bounded by the budget: a thread waits until its tensor fits beside
  // those in flight, or runs alone.
  std::mutex BudgetLock;
  std::condition_variable BudgetFreed;
  uint64_t InFlight = 0;
  auto Run = [&] {
    c10::AutoGradMode NoGrad(false); // parameters are written in place
    std::optional<exec::ThreadStream> Stream;
    std::optional<exec::PinnedBlock> Block;
    if (Cuda) {
      Stream.emplace(static_cast<int>(c10::DeviceType::CUDA), Work.front().Param.device().index());
      Block.emplace(How, *Stream);
    }
    try {
      for (size_t I; (I = Next++) < Work.size();) {
        uint64_t Need = Work[I].Bytes;
        {
          std::unique_lock<std::mutex> Lock(BudgetLock);
          BudgetFreed.wait(Lock, [&] { return InFlight == 0 || InFlight + Need <= MemoryBudget; });
          InFlight += Need;
        }
        auto Release = [&] {
          if (Stream)
            Stream->synchronize(); // its temporaries are free once its copies are done
          std::lock_guard<std::mutex> Lock(BudgetLock);
          InFlight -= Need;
          BudgetFreed.notify_all();
        };
        try {
          Fill(Work[I], Block ? &*Block : nullptr);
        } catch (...) {
          Release();
          throw;
        }
        Release();
      }
    } catch (...) {
      std::lock_guard<std::mutex> Lock(Failed);
      if (!Error)
        Error = std::current_exception();
      Next = Work.size();
    }
  };
  std::vector<std::thread> Pool;
  for (size_t T = 1; T < Threads; ++T)
    Pool.emplace_back(Run);
  Run();
  for (std::thread &T : Pool)
    T.join();
  if (Error)
    std::rethrow_exception(Error);
}

std::unique_ptr<ExportStream> LiveModel::exportHF(Group *TP, Group *PP, Group *EP, Group *ETP, ExportOptions O) {
  return std::make_unique<ExportStream>(*this, TP, PP, EP, ETP, O);
}

// -- export ----------------------------------------------------------------------------

ExportStream::ExportStream(LiveModel &Model, Group *TPG, Group *PPG, Group *EPG, Group *ETPG, ExportOptions Opts)
    : M(Model), TP(TPG), PP(PPG), EP(EPG), ETP(ETPG), O(Opts), AllSlots(Model.exportSlots()),
      HF(Model.exportAssembler()) {
  const Conversion &C = M.Model->conversion();
  if (O.Adapters != AdapterExport::Without && C.P.Adapters.Dim == 0)
    throw Error("error: the model has no LoRA adapters to " +
                std::string(O.Adapters == AdapterExport::Merged ? "merge" : "export"));
  // A slot of experts holds one planned tensor per EP rank, its adapters'
  // slot the same experts' adapters in the same order.
  std::map<size_t, std::vector<const Slot *>> Before; // a weight's slot -> its adapters' slots
  std::map<size_t, size_t> SlotOfPlanned;
  for (size_t S = 0; S < AllSlots.size(); ++S)
    for (size_t Mem : AllSlots[S].Members)
      SlotOfPlanned[Mem] = S;
  for (const Slot &Sl : AllSlots) {
    const PlannedTensor &PT = C.P.Tensors[Sl.Members[0]];
    if (PT.AdapterOf < 0)
      continue;
    if (O.Adapters == AdapterExport::Only)
      Order.push_back(&Sl);
    if (O.Adapters == AdapterExport::Merged) {
      Before[SlotOfPlanned.at(static_cast<size_t>(PT.AdapterOf))].push_back(&Sl);
      for (size_t Mem : Sl.Members) {
        const PlannedTensor &Of = C.P.Tensors[Mem];
        auto &Pair = AdaptersOf[static_cast<size_t>(Of.AdapterOf)];
        (Of.AdapterMatrix == 'A' ? Pair.first : Pair.second) = Mem;
      }
    }
  }
  if (O.Adapters != AdapterExport::Only)
    for (size_t S = 0; S < AllSlots.size(); ++S) {
      if (C.P.Tensors[AllSlots[S].Members[0]].AdapterOf >= 0)
        continue;
      if (auto It = Before.find(S); It != Before.end())
        Order.insert(Order.end(), It->second.begin(), It->second.end());
      Order.push_back(&AllSlots[S]);
    }
  auto Check = [](Group *G, int Want, const char *What) {
    if (Want > 1 && (!G || G->size() != Want))
      throw Error(std::string("error: the live export needs the model's ") + What + " group of size " +
                  std::to_string(Want) + (G ? ", not " + std::to_string(G->size()) : std::string(", not none")));
  };
  Check(TP, M.L.TP, "tensor-parallel");
  Check(PP, M.L.PP, "pipeline-parallel");
  Check(EP, M.L.EP, "expert-parallel");
  Check(ETP, M.L.ETP, "expert-tensor-parallel");
}

const HFAssembler &LiveModel::exportAssembler() {
  if (!Assembler) {
    std::vector<std::string> NotExported; // the source tensors the mapping ignores: not streamed
    // Export writes a dequantized weight in the dtype its chain gives.
    Assembler.emplace(Model->conversion(), [](const std::string &) { return DType::BF16; }, Model->sidecar(),
                      Model->dir(), NotExported);
  }
  return *Assembler;
}

const ChainInverse &LiveModel::inverseOf(size_t Planned) {
  const Conversion &C = Model->conversion();
  if (Inverses.empty())
    Inverses.resize(C.P.Tensors.size());
  std::unique_ptr<ChainInverse> &I = Inverses[Planned];
  if (!I) {
    const HFAssembler &HF = exportAssembler();
    I = std::make_unique<ChainInverse>(C.P.Tensors[Planned], C,
                                       [&](const std::string &Name) { return HF.hfType(Name); });
  }
  return *I;
}

const std::vector<LiveModel::ExportSlot> &LiveModel::exportSlots() {
  if (Slots)
    return *Slots;
  const Conversion &C = Model->conversion();
  std::vector<ExportSlot> Out;
  std::map<std::string, size_t> SlotOf;
  for (size_t I = 0; I < C.P.Tensors.size(); ++I) {
    const PlannedTensor &PT = C.P.Tensors[I];
    std::string Name = liveName(PT);
    int Stage;
    at::ScalarType Type;
    at::Tensor Local;
    if (auto It = ByName.find(Name); It != ByName.end()) {
      Stage = At.PP;
      Type = It->second.scalar_type();
      Local = It->second;
    } else {
      const Remote &R = Elsewhere.at(Name); // the constructor checked it is there
      Stage = R.Stage;
      Type = R.Type;
    }
    auto [It, New] = SlotOf.emplace(Name, Out.size());
    if (New)
      Out.push_back({{}, Stage, placementOf(PT, L, C.S, C.Fields).ExpertRank >= 0, Type, 0, Local});
    ExportSlot &S = Out[It->second];
    S.Members.push_back(I); // experts come in expert order: by EP rank
    S.Bytes += static_cast<uint64_t>(elementsOf(PT.Shape)) * c10::elementSize(Type);
  }
  Slots = std::move(Out);
  return *Slots;
}

void ExportStream::convertSmallAhead() {
  // Several stages exchange model-dtype tensors; a rank that receives
  // nothing converts nothing.
  if (!O.Receive || (PP && PP->size() > 1))
    return;
  constexpr uint64_t kSmallBytes = uint64_t(1) << 20;
  const Conversion &C = M.Model->conversion();
  std::map<std::pair<at::ScalarType, at::ScalarType>, std::vector<size_t>> Groups; // (model, HF) dtypes -> slots
  for (size_t S = 0; S < Order.size(); ++S) {
    const Slot &Sl = slot(S);
    if (Sl.Expert || Sl.Stage != M.At.PP || Sl.Members.size() != 1 || Sl.Bytes > kSmallBytes ||
        !Sl.Local.defined() || M.Cuts->splits(C.P.Tensors[Sl.Members[0]]))
      continue;
    if (AdaptersOf.count(Sl.Members[0]) || C.P.Tensors[Sl.Members[0]].AdapterOf >= 0)
      continue; // merged (or an adapter): in fp32 first, cast once after
    const std::string *Name = M.inverseOf(Sl.Members[0]).wholeSource();
    if (!Name)
      continue;
    const at::ScalarType To = exec::toScalarType(HF.emitType(*Name, Sl.Type));
    if (To != Sl.Type)
      Groups[{Sl.Type, To}].push_back(S);
  }
  for (const auto &[Types, Members] : Groups) {
    if (Members.size() < 2)
      continue;
    std::vector<at::Tensor> Flat;
    for (size_t S : Members)
      Flat.push_back(slot(S).Local.reshape({-1}));
    const at::Tensor All = at::cat(Flat).to(Types.second);
    int64_t Offset = 0;
    for (size_t I = 0; I < Members.size(); ++I) {
      const Slot &Sl = slot(Members[I]);
      Converted[Sl.Members[0]] = All.narrow(0, Offset, Flat[I].numel()).view(Sl.Local.sizes());
      Offset += Flat[I].numel();
    }
  }
}

std::optional<std::vector<std::pair<std::string, at::Tensor>>> ExportStream::next() {
  if (Next == 0)
    convertSmallAhead();
  if (Next >= Order.size()) {
    if (O.Receive)
      HF.finish();
    return std::nullopt;
  }
  const Conversion &C = M.Model->conversion();
  const size_t First = Next;
  const int Stage = slot(First).Stage;
  uint64_t Bytes = 0;
  while (Next < Order.size() && slot(Next).Stage == Stage &&
         (Next == First || Bytes + slot(Next).Bytes <= O.BucketBytes))
    Bytes += slot(Next++).Bytes;
  const at::Device Dev = M.ByName.begin()->second.device();
  std::map<size_t, at::Tensor> Global; // planned tensor -> its global value
  uint64_t Held = 0;

  if (M.At.PP == Stage) {
    // TP (ETP for experts): each rank's slice of every split tensor, one
    // gather per group.
    for (bool Experts : {false, true}) {
      Group *G = Experts ? ETP : TP;
      std::vector<size_t> Split; // planned tensors to gather
      std::vector<at::Tensor> Locals;
      Packing P;
      for (size_t S = First; S < Next; ++S) {
        const Slot &Sl = slot(S);
        if (Sl.Expert != Experts)
          continue;
        size_t Mem = Sl.Members[Sl.Expert ? static_cast<size_t>(M.At.EP) : 0];
        const PlannedTensor &PT = C.P.Tensors[Mem];
        const at::Tensor &Local = Sl.Local;
        if (G && G->size() > 1 && M.Cuts->splits(PT)) {
          Split.push_back(Mem);
          Locals.push_back(Local);
          P.add(static_cast<int64_t>(Local.nbytes()));
        } else {
          // Held whole (or TP 1): the vocabulary's padding rows dropped.
          if (auto It = Converted.find(Mem); It != Converted.end())
            Global[Mem] = It->second;
          else
            Global[Mem] = M.Cuts->splits(PT) ? M.Cuts->join(PT, {Local}, "the live model") : Local;
        }
      }
      if (Split.empty())
        continue;
      at::Tensor Buf = Packing::pack(Locals, P, Dev);
      std::vector<at::Tensor> All = G->allGather(Buf);
      Held += static_cast<uint64_t>(P.Total) * (1 + All.size());
      for (size_t I = 0; I < Split.size(); ++I) {
        std::vector<at::Tensor> ByRank;
        for (const at::Tensor &R : All)
          ByRank.push_back(P.unpack(R, I, Locals[I].sizes(), Locals[I].scalar_type()));
        const PlannedTensor &PT = C.P.Tensors[Split[I]];
        Global[Split[I]] = M.Cuts->join(PT, ByRank, "the live model");
      }
    }
    // EP: every EP rank's experts of the same local index, one gather.
    if (EP && EP->size() > 1) {
      std::vector<size_t> Expert;
      std::vector<at::Tensor> Mine;
      Packing P;
      for (size_t S = First; S < Next; ++S)
        if (slot(S).Expert) {
          Expert.push_back(S);
          Mine.push_back(Global.at(slot(S).Members[static_cast<size_t>(M.At.EP)]));
          P.add(static_cast<int64_t>(Mine.back().nbytes()));
        }
      if (!Expert.empty()) {
        at::Tensor Buf = Packing::pack(Mine, P, Dev);
        std::vector<at::Tensor> All = EP->allGather(Buf);
        Held += static_cast<uint64_t>(P.Total) * (1 + All.size());
        for (size_t I = 0; I < Expert.size(); ++I)
          for (size_t R = 0; R < All.size(); ++R)
            if (static_cast<int>(R) != M.At.EP)
              Global[slot(Expert[I]).Members[R]] = P.unpack(All[R], I, Mine[I].sizes(), Mine[I].scalar_type());
      }
    }
  }
  // PP: the owning stage's global tensors to every other stage.
  if (PP && PP->size() > 1) {
    std::vector<size_t> Order;
    Packing P;
    for (size_t S = First; S < Next; ++S)
      for (size_t Mem : slot(S).Members) {
        Order.push_back(Mem);
        P.add(elementsOf(C.P.Tensors[Mem].Shape) * static_cast<int64_t>(c10::elementSize(slot(S).Type)));
      }
    at::Tensor Buf;
    if (M.At.PP == Stage) {
      std::vector<at::Tensor> Ts;
      for (size_t Mem : Order)
        Ts.push_back(Global.at(Mem));
      Buf = Packing::pack(Ts, P, Dev);
    } else {
      Buf = at::empty({P.Total}, at::TensorOptions().dtype(at::kByte).device(Dev));
    }
    PP->broadcast(Buf, Stage);
    Held += static_cast<uint64_t>(P.Total);
    if (M.At.PP != Stage) {
      size_t I = 0;
      for (size_t S = First; S < Next; ++S)
        for (size_t Mem : slot(S).Members)
          Global[Mem] = P.unpack(Buf, I++, C.P.Tensors[Mem].Shape, slot(S).Type);
    }
  }
  PeakBytes = std::max(PeakBytes, Held);

  std::vector<std::pair<std::string, at::Tensor>> Out;
  if (!O.Receive)
    return Out;
  auto Emit = [&](const std::string &Name, DType Type, const at::Tensor &V) {
    at::Tensor T = V.scalar_type() == exec::toScalarType(Type) ? V : V.to(exec::toScalarType(Type));
    Out.emplace_back(Name, O.ToCPU ? T.cpu() : T);
  };
  for (size_t S = First; S < Next; ++S)
    for (size_t Mem : slot(S).Members) {
      at::Tensor Value = Global.at(Mem);
      if (O.Adapters == AdapterExport::Merged) {
        if (C.P.Tensors[Mem].AdapterOf >= 0) {
          AdapterValues[Mem] = Value; // its weight's slot comes next
          continue;
        }
        if (auto It = AdaptersOf.find(Mem); It != AdaptersOf.end()) {
          // W + (alpha / dim) B A in fp32, in the order of PEFT's merge,
          // back in W's dtype; where the weight is (its GPU).
          const double Scale = C.P.Adapters.Alpha / static_cast<double>(C.P.Adapters.Dim);
          at::Tensor A = AdapterValues.at(It->second.first), B = AdapterValues.at(It->second.second);
          at::Tensor Delta = at::matmul(B.to(Value.device(), at::kFloat), A.to(Value.device(), at::kFloat));
          // A copy always: a weight held whole is the parameter itself.
          Value = Value.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true)
                      .add_(Delta.mul_(Scale))
                      .to(Value.scalar_type());
          AdapterValues.erase(It->second.first);
          AdapterValues.erase(It->second.second);
        }
      }
      std::vector<HFPiece> Pieces = M.inverseOf(Mem).run(Value);
      HF.put(Pieces, Emit);
    }
  return Out;
}

void ExportStream::drain() {
  while (next())
    ;
}

uint64_t ExportStream::save(const std::string &OutDir, bool Overwrite, unsigned Writers) {
  if (!O.Receive)
    throw Error("error: this rank does not receive the export; save it on the rank that does");
  const Conversion &C = M.Model->conversion();
  OutputDir Out(OutDir, {M.Model->dir()}, Overwrite);
  std::string Partial = Out.partialPath();
  files::makeDirs(Partial);
  uint64_t Written = 0;
  try {
    std::map<std::string, TensorLayout> Known;
    for (auto &[Name, K] : HF.known())
      Known[Name] = {K.Type, K.Shape};
    if (O.Adapters == AdapterExport::Only)
      throw Error("error: save writes an HF checkpoint; an adapter alone is saved by save_hf_adapter");
    std::map<std::string, std::string> FileOf = HF.fileOf();
    for (auto It = FileOf.begin(); It != FileOf.end();)
      It = It->second == "adapter_model.safetensors" ? FileOf.erase(It) : std::next(It); // the adapters' names
    SafetensorsWriter W(Partial, FileOf, M.Model->sidecar().value("hf_sharded", false), std::move(Known), Writers);
    while (auto Batch = next())
      for (auto &[Name, T] : *Batch) {
        at::Tensor Host = T.contiguous().cpu();
        TensorToWrite TW{Name, exec::fromScalarType(Host.scalar_type()),
                         std::vector<int64_t>(Host.sizes().begin(), Host.sizes().end()), {}};
        // The writer holds the tensor until its bytes are on disk.
        TW.Data = static_cast<const uint8_t *>(Host.data_ptr());
        TW.Size = Host.nbytes();
        TW.Owner = std::make_shared<at::Tensor>(Host);
        W.add(std::move(TW));
        ++Written;
      }
    W.finish();
    files::writeFile(files::join(Partial, "config.json"), dumpPythonJson(exportedHFConfig(C), 2) + "\n");
    Json Manifest = {{"format", "safetensors"}, {"tensors", Json::object()}};
    for (const auto &[Name, Crc] : W.checksums())
      Manifest["tensors"][Name] = {{"file", HF.fileOf().at(Name)}, {"crc32", Crc}};
    files::writeFile(files::join(Partial, "manifest.json"), Manifest.dump(1) + "\n");
    copyTokenizerFiles(M.Model->dir(), Partial);
    Out.commit(Partial);
  } catch (...) {
    files::removeAll(Partial);
    throw;
  }
  return Written;
}

} // namespace bridge::live
