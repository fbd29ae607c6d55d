//===- Plan.cpp - weight rules expanded over a config -----------------------===//
//
// A rule's loops run over the schema's ranges (layers, experts) with their
// 'where' filters; each iteration renders the target and source names and
// the op tree's parameters. The expansion checks the declared counts
// against what is present first, then that every tensor the schema requires
// is produced once.
//
//===----------------------------------------------------------------------===//
#include "bridge/Plan.h"

#include "bridge/Safetensors.h"
#include "bridge/TorchDistReader.h"

#include <algorithm>
#include <functional>
#include <map>
#include <set>

namespace bridge {
namespace {

std::string renderPattern(Span<PatternPiece> P, const EvalEnv &Env, const std::string &Where) {
  std::string S;
  for (const PatternPiece &Pc : P) {
    if (Pc.Literal) {
      S += Pc.Literal;
      continue;
    }
    Json V = evaluate(Pc.Index, Env, Where);
    if (!V.is_number_integer() || V.get<int64_t>() < 0)
      throw Error(Where + ": error: tensor index '" + (Pc.Index.Text ? Pc.Index.Text : "") + "' is " + V.dump() +
                  ", not a non-negative int");
    S += std::to_string(V.get<int64_t>());
  }
  return S;
}

/// Runs \p Body for every assignment of \p Loops (with 'where' filters).
void forEachIteration(Span<Loop> Loops, const SchemaTable &S, const std::vector<Json> &Fields,
                      const std::string &Where, const std::function<void(const std::vector<int64_t> &)> &Body) {
  std::vector<int64_t> Vars;
  std::function<void(uint32_t)> Rec = [&](uint32_t Depth) {
    if (Depth == Loops.Size) {
      Body(Vars);
      return;
    }
    const Loop &L = Loops[Depth];
    EvalEnv Env{nullptr, &Fields, &S, &Vars};
    int64_t Begin = 0, End = 0;
    if (L.Range >= 0) {
      Json N = evaluate(S.Ranges[L.Range].Count, Env, Where);
      End = N.is_number_integer() ? N.get<int64_t>() : 0;
    } else {
      Json B = evaluate(L.Begin, Env, Where), E = evaluate(L.End, Env, Where);
      if (!B.is_number_integer() || !E.is_number_integer())
        throw Error(Where + ": error: loop bounds of '" + L.Var + "' are " + B.dump() + " and " + E.dump());
      Begin = B.get<int64_t>();
      End = E.get<int64_t>();
    }
    if (End - Begin > kMaxRangeCount)
      throw Error(Where + ": error: the loop over '" + L.Var + "' would run " + std::to_string(End - Begin) +
                  " times for this config; at most " + std::to_string(kMaxRangeCount) + " are converted");
    for (int64_t I = Begin; I < End; ++I) {
      Vars.push_back(I);
      EvalEnv Inner{nullptr, &Fields, &S, &Vars};
      if (evaluateCondition(L.Where, Inner, Where))
        Rec(Depth + 1);
      Vars.pop_back();
    }
  };
  Rec(0);
}

std::string nameOf(Span<PatternPiece> P, const std::vector<int64_t> &Captures) {
  std::string S;
  for (const PatternPiece &Pc : P) {
    if (Pc.Literal)
      S += Pc.Literal;
    else
      S += std::to_string(Captures[Pc.Index.Code[0].A]);
  }
  return S;
}

/// The op tree \p Nodes for one instance of its rule: the HF names it
/// reads and a readable recipe.
SourceChain chainOf(Span<OpNode> Nodes, const EvalEnv &Env, const std::string &Where) {
  SourceChain C;
  C.Nodes = Nodes;
  std::vector<std::string> Stack;
  std::vector<int> SourceOnStack; // the source ordinal of each stack entry, -1 for op results
  for (const OpNode &N : Nodes) {
    if (N.IsSource) {
      std::string Src = renderPattern(N.Source, Env, Where);
      SourceOnStack.push_back(static_cast<int>(C.Sources.size()));
      C.addSource(Src, N.OptionalInput);
      Stack.push_back(Src + (N.OptionalInput ? "?" : ""));
      continue;
    }
    // 'rows' straight on an HF tensor reads one row block of it.
    if (N.Kind == Op::RowBlock && SourceOnStack.back() >= 0) {
      Json Sizes, Index, Groups = 1;
      for (const OpParam &Pm : N.Params) {
        std::string Name = Pm.Name;
        (Name == "sizes" ? Sizes : Name == "index" ? Index : Groups) = evaluate(Pm.Value, Env, Where);
      }
      if (Sizes.is_array() && Index.is_number_integer() && Index.get<int64_t>() >= 0 &&
          Index.get<size_t>() < Sizes.size() && Groups.is_number_integer()) {
        int64_t First = 0;
        for (size_t B = 0; B < Index.get<size_t>(); ++B)
          First += Sizes[B].get<int64_t>();
        C.SourceRows[SourceOnStack.back()] = {First, Sizes[Index.get<size_t>()].get<int64_t>(),
                                              Groups.get<int64_t>()};
      }
    }
    // 'expert' straight on an HF tensor reads one slice of it: coverage
    // then counts (tensor, expert) pairs, not the tensor.
    if (N.Kind == Op::SelectExpert && SourceOnStack.back() >= 0)
      for (const OpParam &Pm : N.Params)
        if (std::string(Pm.Name) == "index")
          C.SourceSlice[SourceOnStack.back()] = evaluate(Pm.Value, Env, Where).get<int64_t>();
    SourceOnStack.resize(SourceOnStack.size() - N.NumInputs);
    SourceOnStack.push_back(-1);
    std::string Call;
    static const char *OpNames[] = {
#define BRIDGE_OP(Id, Name, MinIn, MaxIn, Params, Ranks, Style, Inverse) Name,
#include "bridge/Ops.def"
    };
    Call = OpNames[static_cast<int>(N.Kind)];
    std::string Args;
    for (uint16_t K = 0; K < N.NumInputs; ++K)
      Args += (K ? ", " : "") + Stack[Stack.size() - N.NumInputs + K];
    for (const OpParam &Pm : N.Params)
      Args += (Args.empty() ? "" : ", ") + std::string(Pm.Name) + " = " + evaluate(Pm.Value, Env, Where).dump();
    Stack.resize(Stack.size() - N.NumInputs);
    Stack.push_back(Call + "(" + Args + ")");
  }
  C.Recipe = Stack.back();
  return C;
}

} // namespace

PassThroughLister passThroughOf(const SafetensorsCheckpoint &HF) {
  PassThroughLister L;
  L.List = [&HF](const std::string &Prefix) {
    std::vector<std::pair<std::string, std::vector<int64_t>>> Out;
    for (const std::string &N : HF.names())
      if (N.rfind(Prefix, 0) == 0)
        Out.push_back({N, HF.find(N)->Shape});
    return Out;
  };
  return L;
}

PassThroughLister passThroughOf(const TorchDistCheckpoint &Megatron) {
  PassThroughLister L;
  L.BySource = false;
  L.List = [&Megatron](const std::string &Prefix) {
    std::vector<std::pair<std::string, std::vector<int64_t>>> Out;
    for (const std::string &K : Megatron.tensorKeys())
      if (K.rfind(Prefix, 0) == 0)
        Out.push_back({K, Megatron.tensor(K).Shape});
    return Out;
  };
  return L;
}

bool isPassThroughName(std::string_view Name) {
  return Name.size() >= 3 && Name.substr(Name.size() - 3) == ".**";
}

namespace {
/// Checks every range count of this config against kMaxRangeCount and, with
/// a checkpoint at hand, the layers against its \p SourceTensors; returns
/// how many Megatron tensors the plan may hold.
uint64_t checkDeclaredCounts(const SchemaTable &S, const std::vector<Json> &Fields, uint64_t SourceTensors) {
  for (const RangeInfo &R : S.Ranges) {
    EvalEnv Env{nullptr, &Fields, &S, nullptr};
    Json V = evaluate(R.Count, Env, std::string("range ") + R.Name);
    if (!V.is_number_integer())
      continue; // a range this model does not have (no experts)
    int64_t N = V.get<int64_t>();
    if (N > kMaxRangeCount)
      throw Error("error: the config declares " + std::to_string(N) + " " + R.Name + "; at most " +
                  std::to_string(kMaxRangeCount) + " are converted");
    if (SourceTensors && std::string(R.Name) == "layers" && static_cast<uint64_t>(N) > SourceTensors)
      throw Error("error: the config declares " + std::to_string(N) + " layers, but the checkpoint holds only " +
                  std::to_string(SourceTensors) + " tensors; each layer has at least one");
  }
  return SourceTensors ? kPlannedTensorsPerSource * SourceTensors + kPlannedTensorsSlack : kMaxPlannedTensors;
}
} // namespace

Plan expandPlan(const MappingTable &T, const SchemaTable &S, const std::vector<Json> &Fields, bool UseTENames,
                const PassThroughLister *Lister, uint64_t SourceTensors) {
  Plan P;
  const uint64_t MaxPlanned = checkDeclaredCounts(S, Fields, SourceTensors);
  auto TooMany = [&](uint64_t N) {
    if (N > MaxPlanned)
      throw Error("error: the config's layer and expert counts make more than " + std::to_string(MaxPlanned) +
                  " Megatron tensors" +
                  (SourceTensors ? " for a checkpoint of " + std::to_string(SourceTensors) + " tensors"
                                 : std::string(" (the most planned from config.json alone)")));
  };
  // What the schema requires for this config: name -> (param, captures).
  struct Required {
    uint32_t Param;
    std::vector<int64_t> Captures;
  };
  std::map<std::string, Required> Needed;
  for (uint32_t PI = 0; PI < S.Params.Size; ++PI) {
    const ParamInfo &Prm = S.Params[PI];
    std::vector<int64_t> Counts;
    for (const char *C : Prm.Captures) {
      int64_t N = 0;
      for (const RangeInfo &R : S.Ranges)
        if (std::string(R.Var) == C) {
          EvalEnv Env{nullptr, &Fields, &S, nullptr};
          Json V = evaluate(R.Count, Env, std::string("range ") + R.Name);
          N = V.is_number_integer() ? V.get<int64_t>() : 0;
        }
      Counts.push_back(N);
    }
    std::vector<int64_t> Caps;
    std::function<void(size_t)> Rec = [&](size_t D) {
      if (D == Counts.size()) {
        EvalEnv Env{nullptr, &Fields, &S, &Caps};
        for (const Expr &C : Prm.Conditions)
          if (!evaluateCondition(C, Env, describe(Prm.Loc)))
            return;
        Needed[nameOf(Prm.Local, Caps)] = {PI, Caps};
        TooMany(Needed.size());
        return;
      }
      for (int64_t I = 0; I < Counts[D]; ++I) {
        Caps.push_back(I);
        Rec(D + 1);
        Caps.pop_back();
      }
    };
    Rec(0);
  }

  std::map<std::string, std::string> ProducedBy;
  std::set<std::string> PassThroughRuleSeen;
  // One pass-through rule: a tensor per name the checkpoint holds under
  // the prefix, renamed from one prefix to the other and otherwise kept.
  auto expandPassThrough = [&](const TensorRule &R, const ParamInfo &Prm, const EvalEnv &Env,
                               const std::string &Where) {
    std::string Target = renderPattern(R.Target, Env, Where);
    PassThroughRuleSeen.insert(nameOf(Prm.Local, {}));
    if (R.Alternatives.Size != 1 || R.Alternatives[0].Size != 1 || !R.Alternatives[0][0].IsSource)
      throw Error(Where + ": error: a pass-through rule reads one name ending in '.**'");
    const OpNode &Src = R.Alternatives[0][0];
    std::string Source = renderPattern(Src.Source, Env, Where);
    std::string TPrefix = Target.substr(0, Target.size() - 2), SPrefix = Source.substr(0, Source.size() - 2);
    std::vector<std::pair<std::string, std::vector<int64_t>>> Under;
    if (Lister) {
      const std::string &Prefix = Lister->BySource ? SPrefix : TPrefix;
      for (auto &[Name, Shape] : Lister->List(Prefix))
        Under.push_back({Name.substr(Prefix.size()), Shape});
      // A kept module with nothing in it is a checkpoint without the module
      // (a VLM saved without its vision tower), not an empty module.
      if (Under.empty() && !R.Optional)
        throw Error(Where + ": error: the " + std::string(Lister->BySource ? "HF" : "Megatron") +
                    " checkpoint holds no tensor under '" + Prefix + "', which '" + Target + " <- " + Source +
                    "' keeps; is it the model's whole checkpoint?");
    } else {
      Under.push_back({"**", {}}); // config.json alone: the rule itself
    }
    for (auto &[Suffix, Shape] : Under) {
      PlannedTensor PT;
      PT.Name = PT.LocalName = TPrefix + Suffix;
      auto [It, New] = ProducedBy.emplace(PT.LocalName, Where);
      if (!New)
        throw Error(Where + ": error: Megatron tensor '" + PT.LocalName + "' is also produced by the rule at " +
                    It->second);
      PT.Shape = Shape;
      PT.ParallelStyle = Prm.ParallelStyle;
      PT.Expert = false;
      PT.Optional = R.Optional;
      PT.PassThrough = true;
      PT.Rule = &R;
      PT.Param = &Prm;
      SourceChain C;
      C.Nodes = R.Alternatives[0];
      C.Recipe = SPrefix + Suffix;
      C.addSource(SPrefix + Suffix, false);
      PT.Alternatives.push_back(std::move(C));
      P.Tensors.push_back(std::move(PT));
      TooMany(P.Tensors.size());
    }
  };
  for (const TensorRule &R : T.Tensors) {
    std::string Where = describe(R.Loc);
    forEachIteration(R.Loops, S, Fields, Where, [&](const std::vector<int64_t> &Vars) {
      EvalEnv Env{nullptr, &Fields, &S, &Vars};
      if (!evaluateCondition(R.When, Env, Where))
        return;
      // The target's captures, then the schema declaration that applies.
      std::vector<int64_t> Caps;
      for (const PatternPiece &Pc : R.Target)
        if (!Pc.Literal)
          Caps.push_back(evaluate(Pc.Index, Env, Where).get<int64_t>());
      const ParamInfo *Prm = nullptr;
      for (uint32_t C : R.Params) {
        const ParamInfo &Cand = S.Params[C];
        EvalEnv CEnv{nullptr, &Fields, &S, &Caps};
        bool Holds = true;
        for (const Expr &Cond : Cand.Conditions)
          Holds = Holds && evaluateCondition(Cond, CEnv, describe(Cand.Loc));
        if (Holds) {
          Prm = &Cand;
          break;
        }
      }
      std::string Written = renderPattern(R.Target, Env, Where);
      if (!Prm)
        throw Error(Where + ": error: Megatron tensor '" + Written +
                    "' does not exist in this model configuration (its schema conditions do not hold)");
      std::string Local = nameOf(Prm->Local, Caps);
      if (isPassThroughName(Local)) {
        expandPassThrough(R, *Prm, Env, Where);
        return;
      }
      if (!Needed.count(Local))
        throw Error(Where + ": error: Megatron tensor '" + Local +
                    "' does not exist in this model configuration (an index outside its range?)");
      auto [It, New] = ProducedBy.emplace(Local, Where);
      if (!New)
        throw Error(Where + ": error: Megatron tensor '" + Local + "' is also produced by the rule at " + It->second);
      PlannedTensor PT;
      PT.LocalName = Local;
      PT.Name = UseTENames ? nameOf(Prm->TE, Caps) : Local;
      for (const Expr &D : Prm->Shape) {
        Json V = evaluate(D, EvalEnv{nullptr, &Fields, &S, &Caps}, describe(Prm->Loc));
        PT.Shape.push_back(V.is_number_integer() ? V.get<int64_t>() : -1);
      }
      PT.ParallelStyle = Prm->ParallelStyle;
      PT.Expert = Prm->Expert;
      PT.Optional = R.Optional;
      PT.Rule = &R;
      PT.Param = Prm;
      PT.Captures = Caps;
      PT.LoopVars = Vars;
      for (const Span<OpNode> &Nodes : R.Alternatives)
        PT.Alternatives.push_back(chainOf(Nodes, Env, Where));
      P.Tensors.push_back(std::move(PT));
      TooMany(P.Tensors.size());
    });
  }
  // Every required tensor must be produced (a pass-through parameter by
  // its rule, whatever the checkpoint holds under the prefix).
  std::vector<std::string> Missing;
  for (auto &[Name, Req] : Needed)
    if (!ProducedBy.count(Name) && !(isPassThroughName(Name) && PassThroughRuleSeen.count(Name)))
      Missing.push_back(Name);
  if (!Missing.empty()) {
    std::string List;
    for (size_t I = 0; I < Missing.size() && I < 20; ++I)
      List += "\n  " + Missing[I];
    if (Missing.size() > 20)
      List += "\n  ... and " + std::to_string(Missing.size() - 20) + " more";
    throw Error(std::string("error: mapping '") + T.Name + "' (" + T.SourceFile + ") produces no rule for " +
                std::to_string(Missing.size()) + " Megatron tensor(s) this configuration needs:" + List);
  }
  // Megatron-Bridge's order: non-layer tensors first, then by layer, expert
  // and name (its collective-safe global order).
  auto Key = [](const std::string &N) {
    auto Num = [&](const std::string &Tag) -> int64_t {
      size_t P = N.find(Tag);
      if (P == std::string::npos)
        return -1;
      P += Tag.size();
      size_t E = P;
      while (E < N.size() && std::isdigit(static_cast<unsigned char>(N[E])))
        ++E;
      return E > P ? std::stoll(N.substr(P, E - P)) : -1;
    };
    int64_t Expert = Num("local_experts.");
    return std::make_tuple(N.rfind("mtp.", 0) == 0 ? 1 : 0, Num("layers."), Expert, N);
  };
  std::stable_sort(P.Tensors.begin(), P.Tensors.end(),
                   [&](const PlannedTensor &A, const PlannedTensor &B) { return Key(A.LocalName) < Key(B.LocalName); });
  for (const IgnoreRule &R : T.Ignores)
    forEachIteration(R.Loops, S, Fields, describe(R.Loc), [&](const std::vector<int64_t> &Vars) {
      EvalEnv Env{nullptr, &Fields, &S, &Vars};
      if (evaluateCondition(R.When, Env, describe(R.Loc)))
        P.IgnoredPatterns.push_back(renderPattern(R.Pattern, Env, describe(R.Loc)));
    });
  for (const TieRule &R : T.Ties)
    forEachIteration(R.Loops, S, Fields, describe(R.Loc), [&](const std::vector<int64_t> &Vars) {
      EvalEnv Env{nullptr, &Fields, &S, &Vars};
      if (evaluateCondition(R.When, Env, describe(R.Loc)))
        P.Ties.push_back({renderPattern(R.Copy, Env, describe(R.Loc)), renderPattern(R.Of, Env, describe(R.Loc))});
    });
  return P;
}

void chooseAlternatives(Plan &P, const std::function<bool(const std::string &)> &Present) {
  for (PlannedTensor &PT : P.Tensors) {
    PT.Chosen = 0;
    for (size_t A = 0; A < PT.Alternatives.size(); ++A) {
      const SourceChain &C = PT.Alternatives[A];
      bool Complete = true;
      for (size_t K = 0; K < C.Sources.size() && Complete; ++K)
        Complete = C.SourceOptional[K] || Present(C.Sources[K]);
      if (Complete) {
        PT.Chosen = A;
        break;
      }
    }
  }
}

HFCoverage hfCoverage(const Plan &P, const std::vector<std::string> &Names,
                      const std::function<const std::vector<int64_t> *(const std::string &)> &ShapeOf) {
  const std::set<std::string> Held(Names.begin(), Names.end());
  auto Present = [&](const std::string &N) { return Held.count(N) > 0; };
  HFCoverage Out;
  std::map<std::string, std::string> ConsumedBy;
  // A stacked HF tensor read one expert at a time: every slice exactly once.
  std::map<std::string, std::pair<std::set<int64_t>, const PlannedTensor *>> SlicesRead;
  // One read a row block at a time ('rows'): every block exactly once.
  struct Blocks {
    std::vector<std::pair<int64_t, int64_t>> Rows; ///< (first row, rows) of each read, within a row group
    int64_t Groups = 1;                            ///< the row groups the blocks repeat in
    const PlannedTensor *By = nullptr;
  };
  std::map<std::string, Blocks> BlocksRead;
  for (const PlannedTensor &PT : P.Tensors)
    for (size_t K = 0; K < PT.sources().size(); ++K) {
      const SourceChain &C = PT.chain();
      const std::string &Src = C.Sources[K];
      if (C.SourceOptional[K] && !Present(Src))
        continue; // an optional input this checkpoint does not have
      int64_t Slice = C.SourceSlice[K];
      auto [FirstRow, Rows, Groups] = C.SourceRows[K];
      std::string Read = Slice >= 0      ? Src + " (expert " + std::to_string(Slice) + ")"
                         : FirstRow >= 0 ? Src + " (rows " + std::to_string(FirstRow) + " to " +
                                               std::to_string(FirstRow + Rows) +
                                               (Groups > 1 ? " of each of " + std::to_string(Groups) + " row groups" : "") + ")"
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
        if (!Entry.Rows.empty() && Entry.Groups != Groups)
          throw Error(describe(PT.Rule->Loc) + ": error: the row blocks read of HF tensor '" + Src +
                      "' are read in " + std::to_string(Groups) + " row groups here and " +
                      std::to_string(Entry.Groups) + " for '" + Entry.By->LocalName + "'");
        Entry.Rows.push_back({FirstRow, Rows});
        Entry.Groups = Groups;
        Entry.By = &PT;
      }
      if (!Present(Src)) {
        std::string Others;
        for (size_t A = 1; A < PT.Alternatives.size(); ++A)
          Others += (A > 1 ? " or " : "; or instead ") + PT.Alternatives[A].Recipe;
        Out.Missing.push_back(Src + "  (for " + PT.Name + Others + ")");
      }
    }
  for (auto &[Src, Entry] : SlicesRead) {
    if (auto Whole = ConsumedBy.find(Src); Whole != ConsumedBy.end())
      throw Error(describe(Entry.second->Rule->Loc) + ": error: HF tensor '" + Src + "' is read whole for '" +
                  Whole->second + "' and by expert for '" + Entry.second->LocalName + "'");
    ConsumedBy.emplace(Src, "(by expert)");
    const std::vector<int64_t> *Shape = Present(Src) ? ShapeOf(Src) : nullptr;
    if (!Shape)
      continue; // missing (reported), or its shape unknown
    int64_t Experts = Shape->empty() ? 0 : (*Shape)[0];
    if (static_cast<int64_t>(Entry.first.size()) != Experts || *Entry.first.rbegin() != Experts - 1)
      throw Error(describe(Entry.second->Rule->Loc) + ": error: HF tensor '" + Src + "' stacks " +
                  std::to_string(Experts) + " experts on dim 0, but the mapping reads " +
                  std::to_string(Entry.first.size()) + " of them");
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
    const std::vector<int64_t> *Shape = Present(Src) ? ShapeOf(Src) : nullptr;
    if (Shape && (Shape->empty() || (*Shape)[0] != Next * Entry.Groups))
      throw Error(describe(Entry.By->Rule->Loc) + ": error: the row blocks read of HF tensor '" + Src + "' cover " +
                  std::to_string(Next * Entry.Groups) + " rows, but it has " +
                  (Shape->empty() ? std::string("none") : std::to_string((*Shape)[0])));
    ConsumedBy.emplace(Src, "(by row block)");
  }
  for (auto &[Copy, Of] : P.Ties)
    if (Present(Copy))
      ConsumedBy.emplace(Copy, "(tied to " + Of + ")");
  for (const std::string &Ign : P.IgnoredPatterns)
    if (Present(Ign))
      ConsumedBy.emplace(Ign, "(ignored)");
  for (const std::string &N : Names)
    if (!ConsumedBy.count(N))
      Out.Unread.push_back(N);
  return Out;
}

} // namespace bridge
