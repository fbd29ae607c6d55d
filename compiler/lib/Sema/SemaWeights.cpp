//===- SemaWeights.cpp - weight rules and patterns --------------------------===//
//
// A declaration's weights: loops over schema ranges, tensor rules (target,
// sources, captures, style), ignores and ties. Sources themselves, ops and
// declared quantization are built in SemaOps.cpp.
//
//===----------------------------------------------------------------------===//
#include "SemaImpl.h"

#include "bridgec/AST/Print.h"

#include "llvm/ADT/StringExtras.h"

#include <algorithm>

using namespace bridgec;
using namespace bridgec::sema;
using bridge::ValueKind;
using bridgec::model::isGlob;
using llvm::SMRange;

std::string model::Pattern::str() const {
  std::string S;
  for (auto &P : Pieces)
    S += P.E ? "{" + ast::print(*P.E) + "}" : P.Literal;
  return S;
}

std::string sema::printPiece(const ast::PatternPiece &Pc) {
  ast::Pattern One;
  One.Pieces.push_back(Pc);
  return ast::print(One);
}

/// Expands alternatives ('{q,k,v}') into one pattern each, checking captures.
std::vector<model::Pattern> Analyzer::expand(const ast::Pattern &P, Scope &Sc) {
  std::vector<model::Pattern> Out(1);
  Out[0].Loc = P.Range;
  for (const ast::PatternPiece &Pc : P.Pieces) {
    if (Pc.K == ast::PatternPiece::Alternatives) {
      std::vector<model::Pattern> Next;
      for (auto &Prefix : Out)
        for (auto &Alt : Pc.Alts) {
          model::Pattern N = Prefix;
          appendLiteral(N, Alt);
          Next.push_back(std::move(N));
        }
      Out = std::move(Next);
      continue;
    }
    if (Pc.K == ast::PatternPiece::Literal) {
      for (auto &O : Out)
        appendLiteral(O, Pc.Text);
      continue;
    }
    Ty T = check(*Pc.E, Sc);
    if (!T.Null && T.K != ValueKind::Int && T.K != ValueKind::Any)
      D.emit(DiagId::TypeMismatch, Pc.E->Range, "the index", T.str(), "a tensor name", "int");
    for (auto &O : Out)
      O.Pieces.push_back({"", Pc.E});
  }
  return Out;
}

void Analyzer::appendLiteral(model::Pattern &P, const std::string &T) {
  if (!P.Pieces.empty() && !P.Pieces.back().E)
    P.Pieces.back().Literal += T;
  else
    P.Pieces.push_back({T, nullptr});
}

void Analyzer::collectVars(const ast::Expr &E, const Scope &Sc, std::set<std::string> &Out) {
  if (E.K == ast::Expr::Name && Sc.hasVar(E.Text))
    Out.insert(E.Text);
  for (auto &O : E.Ops)
    collectVars(*O, Sc, Out);
}

void Analyzer::resolveItem(const ast::WeightItem &It, std::vector<model::Loop> &Loops, Scope &Sc, Resolved &R) {
  switch (It.K) {
  case ast::WeightItem::ForItem:
    return resolveFor(*It.For, Loops, Sc, R);
  case ast::WeightItem::BlockItem:
    return; // seen through its uses
  case ast::WeightItem::UseItem:
    for (const ast::WeightItem &Sub : It.Use->Expanded)
      resolveItem(Sub, Loops, Sc, R);
    return;
  case ast::WeightItem::TensorItem:
    return resolveTensor(*It.Tensor, Loops, Sc, R);
  case ast::WeightItem::IgnoreItem: {
    if (isGlob(ast::print(It.Ignore->Pat))) {
      D.emit(DiagId::PassThroughElsewhere, It.Ignore->Pat.Range, ast::print(It.Ignore->Pat), "ignore");
      return;
    }
    model::IgnoreRule IR;
    IR.Loops = Loops;
    IR.Loc = It.Ignore->Range;
    IR.When = It.Ignore->When;
    if (IR.When)
      expectBool(*IR.When, check(*IR.When, Sc), "'when'");
    for (auto &P : expand(It.Ignore->Pat, Sc)) {
      IR.Pat = P;
      R.Ignores.push_back(IR);
    }
    return;
  }
  case ast::WeightItem::TieItem: {
    for (const ast::Pattern *Pat : {&It.Tie->Copy, &It.Tie->Of})
      if (isGlob(ast::print(*Pat))) {
        D.emit(DiagId::PassThroughElsewhere, Pat->Range, ast::print(*Pat), "tie");
        return;
      }
    model::TieRule TR;
    TR.Loops = Loops;
    TR.Loc = It.Tie->Range;
    TR.When = It.Tie->When;
    if (TR.When)
      expectBool(*TR.When, check(*TR.When, Sc), "'when'");
    auto Copies = expand(It.Tie->Copy, Sc), Ofs = expand(It.Tie->Of, Sc);
    if (Copies.size() != Ofs.size()) {
      D.emit(DiagId::CaptureMismatch, It.Tie->Range, ast::print(It.Tie->Copy),
             "names " + std::to_string(Copies.size()) + " tensor(s) but 'tie' copies it from '" +
                 ast::print(It.Tie->Of) + "', which names " + std::to_string(Ofs.size()) +
                 "; both sides of 'tie' must name the same number of tensors");
      return;
    }
    for (size_t I = 0; I < Copies.size(); ++I) {
      TR.Copy = Copies[I];
      TR.Of = Ofs[I];
      R.Ties.push_back(TR);
    }
    return;
  }
  }
}

void Analyzer::resolveFor(const ast::ForBlock &F, std::vector<model::Loop> &Loops, Scope &Sc, Resolved &R) {
  model::Loop L;
  L.Var = F.Var;
  L.Loc = F.Range;
  if (Sc.hasVar(F.Var))
    D.emit(DiagId::DuplicateLoopVar, F.VarRange, F.Var);
  else if (S.field(F.Var))
    D.emit(DiagId::LoopVarIsField, F.VarRange, F.Var);
  if (!F.RangeName.empty()) {
    auto It = S.RangeIndex.find(F.RangeName);
    if (It == S.RangeIndex.end()) {
      std::vector<std::string> Names;
      for (auto &Rg : S.Ranges)
        Names.push_back(Rg.Name);
      D.emit(DiagId::UnknownRange, F.RangeNameRange, F.RangeName,
             didYouMean(F.RangeName, Names) + " (ranges: " + llvm::join(Names, ", ") + ", or 'a .. b')");
      return;
    }
    L.RangeIndex = It->second;
  } else {
    for (auto &Bound : {F.Begin, F.End}) {
      Ty T = check(*Bound, Sc);
      if (!T.Null && T.K != ValueKind::Int && T.K != ValueKind::Any)
        D.emit(DiagId::TypeMismatch, Bound->Range, "the bound", T.str(), "a loop range", "int");
    }
    L.Begin = F.Begin;
    L.End = F.End;
  }
  Sc.Vars.push_back(F.Var);
  if (F.Where) {
    expectBool(*F.Where, check(*F.Where, Sc), "'where'");
    L.Where = F.Where;
  }
  Loops.push_back(L);
  for (auto &It : F.Items)
    resolveItem(It, Loops, Sc, R);
  Loops.pop_back();
  Sc.Vars.pop_back();
}

/// 'A.{x,y,z} <- rows(S, sizes = L);': one rule per part, part j reading
/// row block j ('index = j'), as if written out; false when \p T is not
/// of that form.
bool Analyzer::resolveRowParts(const ast::TensorRule &T, std::vector<model::Loop> &Loops, Scope &Sc, Resolved &R) {
  size_t At = T.Target.Pieces.size();
  for (size_t I = 0; I < T.Target.Pieces.size(); ++I)
    if (T.Target.Pieces[I].K == ast::PatternPiece::Alternatives) {
      if (At != T.Target.Pieces.size())
        return false; // two alternative pieces: reported as before
      At = I;
    }
  if (At == T.Target.Pieces.size() || T.Alternatives.size() != 1)
    return false;
  const ast::Source &Src = *T.Alternatives[0];
  if (Src.K != ast::Source::Op || Src.Escape || Src.OpName != "rows")
    return false;
  for (const ast::OpArg &A : Src.Args)
    if (A.Param == "index")
      return false;
  const ast::PatternPiece &Parts = T.Target.Pieces[At];
  for (size_t J = 0; J < Parts.Alts.size(); ++J) {
    ast::TensorRule Part = T;
    ast::PatternPiece Lit;
    Lit.K = ast::PatternPiece::Literal;
    Lit.Range = Parts.Range;
    Lit.Text = Parts.Alts[J];
    Part.Target.Pieces[At] = std::move(Lit);
    auto Rows = std::make_shared<ast::Source>(Src);
    auto Index = std::make_shared<ast::Expr>();
    Index->K = ast::Expr::Int;
    Index->Range = Parts.Range;
    Index->IntVal = static_cast<int64_t>(J);
    Index->Text = std::to_string(J);
    ast::OpArg A;
    A.Range = Parts.Range;
    A.Param = "index";
    A.ParamRange = Parts.Range;
    A.Value = Index;
    Rows->Args.push_back(std::move(A));
    Part.Alternatives = {Rows};
    resolveTensor(Part, Loops, Sc, R);
  }
  return true;
}

void Analyzer::resolveTensor(const ast::TensorRule &T, std::vector<model::Loop> &Loops, Scope &Sc, Resolved &R) {
  if (resolveRowParts(T, Loops, Sc, R))
    return;
  model::TensorRule TR;
  TR.Loops = Loops;
  TR.When = T.When;
  TR.Optional = T.Optional;
  TR.Override = T.Override;
  TR.Loc = T.Range;
  bool OK = true;
  // Target: literal text and bare loop variables only.
  std::vector<std::string> Literals{""};
  std::set<std::string> TargetVars;
  for (const ast::PatternPiece &Pc : T.Target.Pieces) {
    if (Pc.K == ast::PatternPiece::Literal) {
      Literals.back() += Pc.Text;
      appendLiteral(TR.Target, Pc.Text);
    } else if (Pc.K == ast::PatternPiece::Alternatives) {
      D.emit(DiagId::BadTargetPiece, Pc.Range, ast::print(T.Target), printPiece(Pc),
             "alternatives like '{a,b}' belong to HF names; a Megatron name names one tensor (or, read "
             "from 'rows(X, sizes = ...)' without an index, one part per row block)");
      OK = false;
    } else if (Pc.E->K != ast::Expr::Name || !Sc.hasVar(Pc.E->Text)) {
      D.emit(DiagId::BadTargetPiece, Pc.Range, ast::print(T.Target), printPiece(Pc),
             "it may capture only a bare loop variable, like '{i}'");
      OK = false;
    } else {
      Literals.push_back("");
      TargetVars.insert(Pc.E->Text);
      TR.Target.Pieces.push_back({"", Pc.E});
    }
  }
  TR.Target.Loc = T.Target.Range;
  if (!OK)
    return;
  std::string Key = llvm::join(Literals, "{}");
  auto PIt = S.ParamByKey.find(Key);
  if (PIt == S.ParamByKey.end()) {
    // Suggest schema names spelled with the schema's capture names.
    std::vector<std::string> Names;
    for (const model::Param &Prm : S.Params)
      for (auto *Lits : {&Prm.LocalLiterals, &Prm.TELiterals}) {
        std::string N = (*Lits)[0];
        for (size_t K = 1; K < Lits->size(); ++K)
          N += "{" + Prm.Captures[K - 1] + "}" + (*Lits)[K];
        if (std::find(Names.begin(), Names.end(), N) == Names.end())
          Names.push_back(N);
      }
    std::string Written = ast::print(T.Target);
    D.emit(DiagId::UnknownTarget, T.Target.Range, Written, didYouMean(Written, Names));
    return;
  }
  TR.Params = PIt->second;
  const model::Param &P = S.Params[TR.Params[0]];
  TR.TargetIsTE = Key == P.TEKey && P.TEKey != P.Key;
  // Sources: each alternative on its own, as if it were the only one.
  std::vector<std::set<std::string>> SourceVars(T.Alternatives.size());
  for (size_t A = 0; A < T.Alternatives.size(); ++A) {
    const ast::Source &Src = *T.Alternatives[A];
    TR.Alternatives.emplace_back();
    unsigned Produced = buildSource(Src, Sc, TR.Alternatives.back(), SourceVars[A], OK);
    if (!OK)
      return;
    if (Src.K == ast::Source::PatternRef && Src.OptionalInput) {
      D.emit(DiagId::OpParam, Src.Range, "rename",
             "a rule's plain source cannot be optional ('?'); only the inputs of an op after the first can");
      return;
    }
    if (Produced != 1) {
      // A plain source (a rename) names one tensor; alternatives made more.
      D.emit(DiagId::OpArity, Src.Range, "rename", 1, Produced);
      return;
    }
  }
  // A pass-through rule ('a.** <- b.**') renames every tensor under one
  // prefix to the other, unchanged: one plain source, also ending in '.**'.
  if (isGlob(Key)) {
    for (const ast::SourceP &Src : T.Alternatives)
      if (T.Alternatives.size() != 1 || Src->K != ast::Source::PatternRef || !isGlob(ast::print(Src->Pat))) {
        D.emit(DiagId::PassThroughRule, Src->Range, ast::print(T.Target));
        return;
      }
    if (!Sc.Vars.empty()) {
      D.emit(DiagId::PassThroughRule, T.Target.Range, ast::print(T.Target));
      return;
    }
  } else {
    for (const ast::SourceP &Src : T.Alternatives)
      if (Src->K == ast::Source::PatternRef && isGlob(ast::print(Src->Pat))) {
        D.emit(DiagId::PassThroughSource, Src->Range, ast::print(Src->Pat), ast::print(T.Target));
        return;
      }
  }
  if (T.When) {
    Scope WSc = Sc;
    expectBool(*T.When, check(*T.When, WSc), "'when'");
  }
  // Captures: every loop variable in scope must index the target (else one
  // tensor is produced many times), and the sources must use exactly those.
  std::string Target = ast::print(T.Target);
  for (size_t A = 0; A < T.Alternatives.size(); ++A) {
    for (const std::string &V : Sc.Vars) {
      const ast::Source &Src = *T.Alternatives[A];
      bool InT = TargetVars.count(V), InS = SourceVars[A].count(V);
      if (!InT && InS) {
        D.emit(DiagId::CaptureMismatch, Src.Range, Target,
               "does not capture loop variable '" + V +
                   "' but the sources use it; one Megatron tensor cannot come from several HF tensors");
        OK = false;
      } else if (InT && !InS) {
        D.emit(DiagId::CaptureMismatch, Src.Range, Target,
               "captures loop variable '" + V +
                   "' but no source uses it, so every instance would read the same HF tensor");
        OK = false;
      } else if (!InT && !InS && A == 0) {
        D.emit(DiagId::CaptureMismatch, T.Target.Range, Target,
               "does not capture loop variable '" + V +
                   "', which an enclosing loop binds, so the rule would produce it once per iteration");
        OK = false;
      }
    }
  }
  if (!OK)
    return;
  // Style and rank against the schema.
  if (!T.Style.empty()) {
    auto St = styleByName(T.Style);
    if (!St) {
      D.emit(DiagId::StyleMismatch, T.StyleRange, T.Style, Target,
             "no such style" + didYouMean(T.Style, styleNames()) + " (styles: " + llvm::join(styleNames(), ", ") + ")");
      return;
    }
    bool AnyFits = false;
    for (unsigned C : TR.Params)
      AnyFits |= S.Params[C].ParallelStyle == *St;
    if (!AnyFits) {
      D.emit(DiagId::StyleMismatch, T.StyleRange, T.Style, Target,
             "the schema declares it '" + std::string(styleName(P.ParallelStyle)) + "'; drop ': " + T.Style +
                 "' or write ': " + styleName(P.ParallelStyle) + "'");
      D.note(DiagId::NoteSchemaHere, P.Loc);
      return;
    }
  }
  if (!opsFitTarget(TR, P, Target))
    return;
  R.Tensors.push_back(std::move(TR));
}
