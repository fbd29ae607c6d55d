//===- Adapters.cpp - LoRA adapters planned beside the weights they adapt -===//
//
// An adapter is not written in any .bridge file: it follows its weight's
// rule. Its B matrix ([out, r]) has the weight's rows, so the weight's op
// chain, which only moves rows (renames, the QKV interleave, [gate; up],
// row blocks), fuses and splits it exactly as it does the weight; its A
// matrix ([r, in]) is one per Megatron module, a copy of which every HF
// module fused into it holds. The keys are the weight's with
// '.adapter.linear_in' / '.adapter.linear_out' before '.weight', the
// tensor-parallel styles Megatron-Bridge's ParallelLinearAdapter gives them.
//
//===----------------------------------------------------------------------===//
#include "bridge/Plan.h"

#include <deque>
#include <map>
#include <set>

namespace bridge {

struct DerivedParams {
  std::deque<std::string> Text;
  std::deque<std::vector<PatternPiece>> Patterns;
  std::deque<ParamInfo> Params;
  std::deque<std::vector<OpNode>> Chains;
};

namespace {

/// Megatron-Bridge's LoRA target module names (peft/lora.py): the linear
/// layers of attention (standard and multi-latent) and of dense MLPs.
const std::set<std::string> &adaptableModules() {
  static const std::set<std::string> Names{"linear_qkv",         "linear_proj",         "linear_fc1",
                                           "linear_fc2",         "linear_q_proj",       "linear_q_down_proj",
                                           "linear_q_up_proj",   "linear_kv_down_proj", "linear_kv_up_proj"};
  return Names;
}

/// Ops that move whole rows and nothing else: applied to B ([out, r])
/// instead of the weight ([out, in]), they put each row where they put the
/// weight's row.
bool movesRowsOnly(Op Kind) {
  switch (Kind) {
  case Op::Identity:
  case Op::FuseQKV:
  case Op::FuseQKVGated:
  case Op::QKVFromConcat:
  case Op::FuseGatedMLP:
  case Op::GateUpConcat:
  case Op::GateUpInterleaved:
  case Op::RowBlock:
  case Op::RollRows:
    return true;
  default:
    return false;
  }
}

const std::string kWeight = ".weight";

bool endsWith(const std::string &S, const std::string &Suffix) {
  return S.size() >= Suffix.size() && S.compare(S.size() - Suffix.size(), Suffix.size(), Suffix) == 0;
}

/// \p Name with its trailing '.weight' replaced by the adapter matrix's.
std::string adapterKey(const std::string &Name, char Matrix) {
  return Name.substr(0, Name.size() - kWeight.size()) +
         (Matrix == 'A' ? ".adapter.linear_in.weight" : ".adapter.linear_out.weight");
}

class Deriver {
public:
  explicit Deriver(DerivedParams &D) : D(D) {}

  /// The schema declaration of \p Base's adapter matrix \p Matrix.
  const ParamInfo *param(const ParamInfo &Base, char Matrix) {
    auto [It, New] = Made.emplace(std::make_pair(&Base, Matrix), nullptr);
    if (!New)
      return It->second;
    ParamInfo P = Base;
    P.Key = text(adapterKey(Base.Key, Matrix));
    P.TEKey = text(adapterKey(Base.TEKey, Matrix));
    P.Local = pattern(Base.Local, Matrix);
    P.TE = pattern(Base.TE, Matrix);
    P.Dist = pattern(Base.Dist, Matrix);
    P.LocalDist = pattern(Base.LocalDist, Matrix);
    P.Shape = {};      // the plan holds the concrete shape
    P.Conditions = {}; // the weight's held
    P.ParallelStyle = adapterStyle(Base.ParallelStyle, Matrix);
    D.Params.push_back(P);
    return It->second = &D.Params.back();
  }

  /// 'shared(a1, ..., an)': n sources and the op.
  Span<OpNode> sharedChain(uint16_t N) {
    auto [It, New] = Shared.emplace(N, Span<OpNode>());
    if (!New)
      return It->second;
    std::vector<OpNode> Nodes;
    for (uint16_t I = 0; I < N; ++I)
      Nodes.push_back(OpNode{true, false, Op::Identity, Transform::None, 0, {}, {}});
    Nodes.push_back(OpNode{false, false, Op::Shared, Transform::None, N, {}, {}});
    D.Chains.push_back(std::move(Nodes));
    const std::vector<OpNode> &Kept = D.Chains.back();
    return It->second = Span<OpNode>{Kept.data(), static_cast<uint32_t>(Kept.size())};
  }

private:
  const char *text(std::string S) {
    D.Text.push_back(std::move(S));
    return D.Text.back().c_str();
  }
  /// The weight's name pattern, its last literal's '.weight' made the
  /// matrix's (adaptable weights end in a literal: no routed experts).
  Span<PatternPiece> pattern(Span<PatternPiece> Base, char Matrix) {
    std::vector<PatternPiece> Pieces(Base.begin(), Base.end());
    // The last literal: TE's grouped experts put the expert after it
    // ('mlp.experts.linear_fc1.weight{e}').
    for (size_t I = Pieces.size(); I-- > 0;)
      if (Pieces[I].Literal) {
        if (endsWith(Pieces[I].Literal, kWeight))
          Pieces[I].Literal = text(adapterKey(Pieces[I].Literal, Matrix));
        break;
      }
    D.Patterns.push_back(std::move(Pieces));
    const std::vector<PatternPiece> &Kept = D.Patterns.back();
    return Span<PatternPiece>{Kept.data(), static_cast<uint32_t>(Kept.size())};
  }

  DerivedParams &D;
  std::map<std::pair<const ParamInfo *, char>, const ParamInfo *> Made;
  std::map<uint16_t, Span<OpNode>> Shared;
};

/// A name pattern with its captures filled in.
std::string render(Span<PatternPiece> Pattern, const std::vector<int64_t> &Captures) {
  std::string Out;
  for (const PatternPiece &Pc : Pattern)
    Out += Pc.Literal ? std::string(Pc.Literal) : std::to_string(Captures[static_cast<size_t>(Pc.Index.Code[0].A)]);
  return Out;
}

/// \p Base with every source read as its HF module's matrix \p Matrix.
SourceChain renamedChain(const SourceChain &Base, char Matrix) {
  SourceChain C = Base;
  for (size_t K = 0; K < C.Sources.size(); ++K)
    // A scale (optional) is never held beside an adapter: its op passes B on.
    C.Sources[K] = C.SourceOptional[K] ? C.Sources[K] + ".lora_" + Matrix
                                       : hfAdapterName(hfModuleOf(C.Sources[K]), Matrix);
  std::string Recipe = Base.Recipe;
  for (size_t I = 0; I < Base.Sources.size(); ++I)
    for (size_t At = Recipe.find(Base.Sources[I]); At != std::string::npos;
         At = Recipe.find(Base.Sources[I], At + C.Sources[I].size())) {
      Recipe.replace(At, Base.Sources[I].size(), C.Sources[I]);
    }
  C.Recipe = Recipe;
  return C;
}

} // namespace

std::string hfModuleOf(const std::string &Weight) {
  return endsWith(Weight, kWeight) ? Weight.substr(0, Weight.size() - kWeight.size()) : "";
}

std::string hfAdapterName(const std::string &Module, char Matrix) {
  return Module + (Matrix == 'A' ? ".lora_A.weight" : ".lora_B.weight");
}

Style adapterStyle(Style Weight, char Matrix) {
  switch (Weight) {
  case Style::Column:
  case Style::QKV:
  case Style::Gated:
    // ColumnParallelLinear adapters: A is cut on its rank rows (its output
    // gathered), B like the weight's rows.
    return Matrix == 'A' ? Style::Column : Weight;
  case Style::Row:
    // A row-parallel A takes the weight's input columns; B, a column-
    // parallel linear with its output gathered, its rows.
    return Matrix == 'A' ? Style::Row : Style::Column;
  default:
    // A weight whole on every rank (TE's duplicated TELinear, MLA's down
    // projections): Megatron-Bridge still builds both as column-parallel
    // linears, B gathering its output (peft/utils.py, ParallelLinearAdapter).
    return Style::Column;
  }
}

std::string adapterModuleOf(const PlannedTensor &PT) {
  // Routed experts are adapted one by one where the HF checkpoint names
  // each expert's modules (a stacked HF tensor is read through 'expert',
  // which is not a row move: PEFT adapts such a parameter as a whole).
  if (PT.PassThrough || PT.AdapterOf >= 0 || PT.Shape.size() != 2 || !endsWith(PT.LocalName, kWeight))
    return "";
  if (PT.ParallelStyle == Style::Vocab)
    return "";
  std::string Module = PT.LocalName.substr(0, PT.LocalName.size() - kWeight.size());
  Module = Module.substr(Module.rfind('.') + 1);
  if (!adaptableModules().count(Module))
    return "";
  // Dequantization whose scale the checkpoint may lack (an optional input)
  // passes the weight through when it is absent, and an adapter's matrices
  // have no scale; a scale the rule requires is not a '.weight'.
  for (const SourceChain &C : PT.Alternatives) {
    for (const OpNode &N : C.Nodes)
      if (!N.IsSource && !movesRowsOnly(N.Kind) && N.Kind != Op::DequantFP8Tensor &&
          N.Kind != Op::DequantFP8Block && N.Kind != Op::DequantMXFP4)
        return "";
    for (size_t K = 0; K < C.Sources.size(); ++K)
      if (!C.SourceOptional[K] && hfModuleOf(C.Sources[K]).empty())
        return "";
  }
  return Module;
}

void addAdapters(Plan &P, const AdapterSpec &A) {
  auto Storage = std::make_shared<DerivedParams>();
  Deriver Make(*Storage);
  const std::set<std::string> Targets(A.Targets.begin(), A.Targets.end());
  const size_t Weights = P.Tensors.size();
  for (size_t W = 0; W < Weights; ++W) {
    const std::string Module = adapterModuleOf(P.Tensors[W]);
    if (Module.empty() || !Targets.count(Module))
      continue;
    for (char Matrix : {'A', 'B'}) {
      const PlannedTensor &Base = P.Tensors[W];
      PlannedTensor T;
      T.Param = Make.param(*Base.Param, Matrix);
      T.LocalName = adapterKey(Base.LocalName, Matrix);
      // TE's grouped experts end in the expert ('...linear_fc1.weight3').
      T.Name = endsWith(Base.Name, kWeight) ? adapterKey(Base.Name, Matrix) : render(T.Param->TE, Base.Captures);
      T.Shape = Matrix == 'A' ? std::vector<int64_t>{A.Dim, Base.Shape[1]} : std::vector<int64_t>{Base.Shape[0], A.Dim};
      T.ParallelStyle = T.Param->ParallelStyle;
      T.Expert = Base.Expert;
      T.Optional = false;
      T.Rule = Base.Rule;
      T.Captures = Base.Captures;
      T.LoopVars = Base.LoopVars;
      T.Chosen = Base.Chosen;
      T.AdapterOf = static_cast<int64_t>(W);
      T.AdapterMatrix = Matrix;
      for (const SourceChain &C : Base.Alternatives) {
        if (Matrix == 'B') {
          T.Alternatives.push_back(renamedChain(C, 'B'));
          continue;
        }
        // A: the HF modules' A matrices, one each, read as one.
        // A module read in row blocks (Phi-3's qkv_proj) holds one A.
        SourceChain S;
        std::set<std::string> Seen;
        for (size_t K = 0; K < C.Sources.size(); ++K) {
          if (C.SourceOptional[K])
            continue;
          std::string Name = hfAdapterName(hfModuleOf(C.Sources[K]), 'A');
          if (!Seen.insert(Name).second)
            continue;
          S.addSource(Name, false);
          S.Recipe += (S.Recipe.empty() ? "" : ", ") + Name;
        }
        S.Nodes = Make.sharedChain(static_cast<uint16_t>(S.Sources.size()));
        S.Recipe = "shared(" + S.Recipe + ")";
        T.Alternatives.push_back(std::move(S));
      }
      P.Tensors.push_back(std::move(T));
    }
  }
  P.Adapters = A;
  P.Derived = std::move(Storage);
}

} // namespace bridge
