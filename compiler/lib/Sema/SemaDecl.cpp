//===- SemaDecl.cpp - one bridge or fragment declaration --------------------===//
//
// Each declaration is resolved once, on its own, before any bridge is
// assembled from fragments: lets, match lines, aliases, requirements, config
// and export assignments here, then its weight rules (SemaWeights.cpp).
//
//===----------------------------------------------------------------------===//
#include "SemaImpl.h"

#include "llvm/ADT/StringExtras.h"

using namespace bridgec;
using namespace bridgec::sema;
using bridge::ValueKind;
using llvm::SMRange;

Resolved Analyzer::resolve(const ast::BridgeDecl &B) {
  Resolved R;
  R.Decl = &B;
  // A let's uses are already its expression; a let named like a field
  // would make the field unreachable by that name in this declaration.
  for (const ast::LetDecl &L : B.Lets)
    if (S.field(L.Name))
      D.emit(DiagId::LetIsField, L.NameRange, L.Name);
  for (const ast::MatchDecl &M : B.Matches) {
    if (M.Key == "model_type")
      R.ModelTypes.push_back(M.Value);
    else if (M.Key == "architecture")
      R.Architectures.push_back(M.Value);
    else
      D.emit(DiagId::BadMatchKey, M.KeyRange, M.Key);
  }
  for (const ast::AliasDecl &A : B.Aliases)
    R.Aliases.push_back({llvm::join(A.Primary, "."), llvm::join(A.Alternative, ".")});
  for (const ast::RequireStmt &Rq : B.Requires) {
    Scope Sc;
    Sc.AllowHF = true;
    Sc.What = "a requirement";
    expectBool(*Rq.Cond, check(*Rq.Cond, Sc), "'require'");
    R.Requires.push_back({Rq.Cond, Rq.Message, Rq.Range});
  }
  for (const ast::ConfigAssign &A : B.Config) {
    const model::Field *F = S.field(A.Field);
    std::vector<std::string> Names;
    for (auto &Fl : S.Fields)
      Names.push_back(Fl.Name);
    if (!F) {
      D.emit(DiagId::UnknownConfigField, A.FieldRange, A.Field, didYouMean(A.Field, Names));
      continue;
    }
    model::ConfigRule CR;
    CR.Field = F->Index;
    CR.Value = A.Value;
    CR.When = A.When;
    CR.Override = A.Override;
    CR.Loc = A.Range;
    std::set<std::string> Deps;
    std::vector<std::pair<std::vector<std::string>, SMRange>> Reads;
    Scope Sc;
    Sc.AllowHF = true;
    Sc.What = "a config value";
    Sc.FieldReads = &Deps;
    Sc.HFReads = &Reads;
    checkAssignable(*A.Value, check(*A.Value, Sc), *F, "config field '" + F->Name + "'");
    if (A.When)
      expectBool(*A.When, check(*A.When, Sc), "'when'");
    R.Config.push_back(CR);
    R.ConfigDeps.push_back(std::move(Deps));
    R.ConfigHFReads.push_back(std::move(Reads));
  }
  for (const ast::ExportAssign &A : B.Export) {
    model::ExportRule ER;
    ER.Path = A.Path;
    ER.Value = A.Value;
    ER.When = A.When;
    ER.Override = A.Override;
    ER.Loc = A.Range;
    Scope Sc;
    Sc.What = "an export block";
    check(*A.Value, Sc);
    if (A.When)
      expectBool(*A.When, check(*A.When, Sc), "'when'");
    R.Export.push_back(std::move(ER));
  }
  std::vector<model::Loop> Loops;
  Scope Sc;
  Sc.What = "a weight rule";
  declareQuantized(B);
  for (const ast::WeightItem &It : B.Weights)
    resolveItem(It, Loops, Sc, R);
  for (const QuantizedGlob &G : Quantized)
    if (!G.Used)
      D.emit(DiagId::UnusedQuantGlob, G.Range, G.Glob);
  Quantized.clear();
  return R;
}
