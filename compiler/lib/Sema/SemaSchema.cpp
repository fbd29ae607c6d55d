//===- SemaSchema.cpp - the schema model and parallel styles ----------------===//
//
// The schema file declares Megatron's config fields, the ranges loops run
// over, and every parameter tensor with its names (local, TE, torch_dist),
// shape and parallel style; blocks of parameters are placed by 'use'.
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

namespace {

struct StyleInfo {
  bridge::Style Id;
  const char *Name;
};
const StyleInfo Styles[] = {
#define BRIDGE_STYLE(Id, Name, Doc) {bridge::Style::Id, Name},
#include "bridge/Styles.def"
};

std::string keyOf(const std::vector<std::string> &Literals) { return llvm::join(Literals, "{}"); }

/// How schema errors name a field or parameter ('schema {0}: {1}').
std::string fieldSubject(const std::string &Name) { return "field '" + Name + "'"; }
std::string paramSubject(const ast::ParamDecl &PD) { return "parameter '" + ast::print(PD.Local) + "'"; }

} // namespace

const char *sema::styleName(bridge::Style S) {
  for (auto &I : Styles)
    if (I.Id == S)
      return I.Name;
  return "?";
}

std::optional<bridge::Style> sema::styleByName(const std::string &N) {
  for (auto &I : Styles)
    if (N == I.Name && I.Id != bridge::Style::Any)
      return I.Id;
  return std::nullopt;
}

std::vector<std::string> sema::styleNames() {
  std::vector<std::string> Out;
  for (auto &I : Styles)
    if (I.Id != bridge::Style::Any)
      Out.push_back(I.Name);
  return Out;
}

/// A schema name being built by nested 'use's.
struct Analyzer::Prefix {
  std::vector<std::string> Literals{""}; ///< text before/between captures
  std::vector<std::string> Captures;
  std::vector<ast::ExprP> Conditions;
};

void Analyzer::buildSchema(const ast::SchemaDecl &SD) {
  S.Name = SD.Name;
  for (const ast::FieldDecl &F : SD.Fields) {
    model::Field MF;
    MF.Index = S.Fields.size();
    MF.Name = F.Name;
    MF.Loc = F.NameRange;
    MF.Default = F.Default;
    static const std::pair<const char *, ValueKind> Kinds[] = {{"int", ValueKind::Int},
                                                               {"float", ValueKind::Float},
                                                               {"bool", ValueKind::Bool},
                                                               {"string", ValueKind::String},
                                                               {"enum", ValueKind::String},
                                                               {"int_list", ValueKind::IntList},
                                                               {"float_list", ValueKind::FloatList},
                                                               {"list", ValueKind::List},
                                                               {"any", ValueKind::Any}};
    bool Known = false;
    for (auto &[N, K] : Kinds)
      if (F.Type.Name == N) {
        MF.Ty.Kind = K;
        Known = true;
      }
    if (!Known)
      D.emit(DiagId::SchemaError, F.Type.Range, fieldSubject(F.Name), "unknown type '" + F.Type.Name + "'");
    if (F.Type.Name == "enum" && F.Type.Values.empty())
      D.emit(DiagId::SchemaError, F.Type.Range, fieldSubject(F.Name),
             "'enum' needs a list of values, like 'enum(a, b)'");
    else if (F.Type.Name != "enum" && !F.Type.Values.empty())
      D.emit(DiagId::SchemaError, F.Type.Range, fieldSubject(F.Name),
             "only 'enum' takes a list of values, not '" + F.Type.Name + "'");
    MF.Ty.EnumValues = F.Type.Values;
    MF.Ty.Optional = F.Type.Optional;
    if (S.FieldIndex.count(F.Name)) {
      D.emit(DiagId::SchemaError, F.NameRange, fieldSubject(F.Name), "declared twice; delete one");
      continue;
    }
    S.FieldIndex[F.Name] = MF.Index;
    S.Fields.push_back(std::move(MF));
  }
  // Defaults and ranges may name any field, so check them once all exist.
  for (model::Field &F : S.Fields)
    if (F.Default) {
      Scope Sc;
      Sc.What = "a schema default";
      checkAssignable(*F.Default, check(*F.Default, Sc), F, "field '" + F.Name + "'");
    }
  for (const ast::RangeDecl &R : SD.Ranges) {
    Scope Sc;
    Sc.What = "a range";
    Ty T = check(*R.Count, Sc);
    if (!T.Null && T.K != ValueKind::Int && T.K != ValueKind::Any)
      D.emit(DiagId::SchemaError, R.Count->Range, "range '" + R.Name + "'",
             "its count must be an int, not '" + T.str() + "'");
    S.RangeIndex[R.Name] = S.Ranges.size();
    S.Ranges.push_back({static_cast<unsigned>(S.Ranges.size()), R.Name, R.Var, R.Count, R.Range});
  }
  std::map<std::string, const ast::BlockDecl *> Blocks;
  for (auto &B : SD.Blocks)
    Blocks[B.Name] = &B;
  Prefix Top;
  for (auto &P : SD.Params)
    addParam(P, Top);
  for (auto &U : SD.Uses)
    addUse(U, Top, Blocks, 0);
}

/// Appends schema pattern \p P to \p Pre (captures must be bare names).
bool Analyzer::extend(Prefix &Pre, const ast::Pattern &P) {
  for (const ast::PatternPiece &Pc : P.Pieces) {
    if (Pc.K == ast::PatternPiece::Literal) {
      Pre.Literals.back() += Pc.Text;
    } else if (Pc.K == ast::PatternPiece::Capture && Pc.E->K == ast::Expr::Name) {
      Pre.Captures.push_back(Pc.E->Text);
      Pre.Literals.push_back("");
    } else {
      D.emit(DiagId::SchemaError, Pc.Range, "name '" + ast::print(P) + "'",
             "its captures must be bare names like '{i}', not '" + printPiece(Pc) + "'");
      return false;
    }
  }
  return true;
}

void Analyzer::addUse(const ast::UseDecl &U, const Prefix &Outer, std::map<std::string, const ast::BlockDecl *> &Blocks,
                      unsigned Depth) {
  auto It = Blocks.find(U.Block);
  if (It == Blocks.end() || Depth > 8) {
    D.emit(DiagId::SchemaError, U.BlockRange, "'use " + U.Block + "'", "no block '" + U.Block + "' is declared");
    return;
  }
  Prefix Pre = Outer;
  if (!extend(Pre, U.At))
    return;
  if (!U.At.Pieces.empty()) // 'use b;' puts the block's names where the use is
    Pre.Literals.back() += ".";
  if (U.When) {
    Scope Sc;
    Sc.Vars = Pre.Captures;
    Sc.What = "a schema condition";
    expectBool(*U.When, check(*U.When, Sc), "a schema condition");
    Pre.Conditions.push_back(U.When);
  }
  for (auto &P : It->second->Params)
    addParam(P, Pre);
  for (auto &Inner : It->second->Uses)
    addUse(Inner, Pre, Blocks, Depth + 1);
}

void Analyzer::addParam(const ast::ParamDecl &PD, const Prefix &Pre) {
  model::Param P;
  P.Index = S.Params.size();
  Prefix Local = Pre, TE = Pre;
  if (!extend(Local, PD.Local))
    return;
  if (PD.HasTE ? !extend(TE, PD.TE) : !extend(TE, PD.Local))
    return;
  if (TE.Captures != Local.Captures) {
    D.emit(DiagId::SchemaError, PD.TE.Range, paramSubject(PD),
           "the TE name must capture the same names as the local name");
    return;
  }
  P.LocalLiterals = Local.Literals;
  P.TELiterals = TE.Literals;
  // The torch_dist keys: the TE name, or a 'dist' name under the same
  // prefix whose captures must be a subset of the parameter's; and the key
  // a local-spec model uses ('localdist', else the same).
  auto DistOf = [&](const ast::Pattern &Pat, std::vector<std::pair<std::string, int>> &Out) {
    Prefix DistP = Pre;
    if (!extend(DistP, Pat))
      return false;
    for (size_t K = 0; K < DistP.Literals.size(); ++K) {
      Out.push_back({DistP.Literals[K], -1});
      if (K < DistP.Captures.size()) {
        auto It = std::find(Local.Captures.begin(), Local.Captures.end(), DistP.Captures[K]);
        if (It == Local.Captures.end()) {
          D.emit(DiagId::SchemaError, Pat.Range, paramSubject(PD),
                 "the dist name captures '" + DistP.Captures[K] + "', which the parameter does not");
          return false;
        }
        Out.push_back({"", static_cast<int>(It - Local.Captures.begin())});
      }
    }
    return true;
  };
  if (!DistOf(PD.HasDist ? PD.Dist : PD.HasTE ? PD.TE : PD.Local, P.DistPieces))
    return;
  if (PD.HasLocalDist ? !DistOf(PD.LocalDist, P.LocalDistPieces) : false)
    return;
  if (!PD.HasLocalDist)
    P.LocalDistPieces = P.DistPieces;
  P.Captures = Local.Captures;
  P.Key = keyOf(Local.Literals);
  P.TEKey = keyOf(TE.Literals);
  P.Conditions = Pre.Conditions;
  Scope Sc;
  Sc.Vars = P.Captures;
  Sc.What = "a schema shape";
  // A pass-through parameter ('prefix.**') is every tensor under the
  // prefix with the checkpoint's own shape, so it has '[..]' and nothing else.
  bool Glob = isGlob(P.Key);
  if (Glob != PD.ShapeFromCheckpoint)
    D.emit(DiagId::SchemaError, PD.Local.Range, paramSubject(PD),
           Glob ? "a pass-through parameter ('.**') takes its shape from the checkpoint: write '[..]'"
                : "'[..]' (the checkpoint's shape) is for pass-through parameters, whose name ends in '.**'");
  if (Glob && (!P.Captures.empty() || PD.HasTE || PD.HasDist || PD.HasLocalDist || PD.Expert))
    D.emit(DiagId::SchemaError, PD.Local.Range, paramSubject(PD),
           "a pass-through parameter has one name: no captures, 'te', 'dist', 'localdist' or 'expert'");
  for (auto &Dim : PD.Shape) {
    Ty T = check(*Dim, Sc);
    if (!T.Null && T.K != ValueKind::Int && T.K != ValueKind::Any)
      D.emit(DiagId::SchemaError, Dim->Range, paramSubject(PD),
             "a shape dimension must be an int, not '" + T.str() + "'");
    P.Shape.push_back(Dim);
  }
  if (PD.When) {
    expectBool(*PD.When, check(*PD.When, Sc), "a schema condition");
    P.Conditions.push_back(PD.When);
  }
  for (auto &C : P.Captures) {
    bool Known = false;
    for (auto &Rg : S.Ranges)
      Known |= Rg.Var == C;
    if (!Known)
      D.emit(DiagId::SchemaError, PD.Local.Range, paramSubject(PD),
             "capture '{" + C + "}' is not the variable of any range");
  }
  auto St = styleByName(PD.Style);
  if (!St) {
    D.emit(DiagId::SchemaError, PD.StyleRange, paramSubject(PD),
           "unknown parallel style '" + PD.Style + "'" + didYouMean(PD.Style, styleNames()) +
               " (styles: " + llvm::join(styleNames(), ", ") + ")");
    return;
  }
  P.ParallelStyle = *St;
  P.Expert = PD.Expert;
  P.Loc = PD.Range;
  // One name may have several declarations (MLA and standard attention
  // both have q_layernorm), but only when each is conditional.
  for (const std::string &K : {P.Key, P.TEKey})
    for (unsigned Other : S.ParamByKey[K])
      if (P.Conditions.empty() || S.Params[Other].Conditions.empty()) {
        D.emit(DiagId::SchemaError, PD.Local.Range, paramSubject(PD),
               "tensor '" + K + "' is declared twice; each declaration needs a 'when'");
        return;
      }
  S.ParamByKey[P.Key].push_back(P.Index);
  if (P.TEKey != P.Key)
    S.ParamByKey[P.TEKey].push_back(P.Index);
  S.Params.push_back(std::move(P));
}
