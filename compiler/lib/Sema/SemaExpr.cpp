//===- SemaExpr.cpp - types of expressions and builtin calls ----------------===//
//
// Every expression gets a static type (a value kind, or null); operators and
// builtins check theirs. A builtin's arity, argument kinds and result kind
// come from runtime/include/bridge/Builtins.def, so the runtime and the
// checks cannot disagree.
//
//===----------------------------------------------------------------------===//
#include "SemaImpl.h"

#include "llvm/ADT/StringExtras.h"

#include <algorithm>
#include <cstring>

using namespace bridgec;
using namespace bridgec::sema;
using bridge::ValueKind;
using llvm::SMRange;

namespace {

struct BuiltinInfo {
  const char *Name;
  unsigned MinArgs, MaxArgs;
  const char *ArgKinds; ///< a letter per argument, the last repeating (Builtins.def)
  char Result;          ///< the result's kind (Builtins.def)
  const char *Doc;
};
const BuiltinInfo Builtins[] = {
#define BRIDGE_BUILTIN(Id, Name, Min, Max, Args, Result, Doc) {Name, Min, Max, Args, Result, Doc},
#include "bridge/Builtins.def"
};

} // namespace

const char *sema::kindName(ValueKind K) {
  switch (K) {
  case ValueKind::Int:
    return "int";
  case ValueKind::Float:
    return "float";
  case ValueKind::Bool:
    return "bool";
  case ValueKind::String:
    return "string";
  case ValueKind::IntList:
    return "int_list";
  case ValueKind::FloatList:
    return "float_list";
  case ValueKind::List:
    return "list";
  case ValueKind::Any:
    return "any";
  }
  return "?";
}

std::string model::Type::str() const {
  std::string S = kindName(Kind);
  if (!EnumValues.empty())
    S = "enum(" + llvm::join(EnumValues, ", ") + ")";
  return Optional ? S + "?" : S;
}

Ty Analyzer::check(const ast::Expr &E, Scope &Sc) {
  switch (E.K) {
  case ast::Expr::Int:
    return {ValueKind::Int};
  case ast::Expr::Float:
    return {ValueKind::Float};
  case ast::Expr::String:
    return {ValueKind::String};
  case ast::Expr::Bool:
    return {ValueKind::Bool};
  case ast::Expr::Null:
    return {ValueKind::Any, true};
  case ast::Expr::HFPath:
    if (!Sc.AllowHF) {
      D.emit(DiagId::UnknownName, E.Range, "hf." + llvm::join(E.Path, "."),
             std::string("; the HF config cannot be read in ") + Sc.What +
                 ", only Megatron config fields and loop variables");
      return {};
    }
    if (Sc.HFReads)
      Sc.HFReads->push_back({E.Path, E.Range});
    return {ValueKind::Any};
  case ast::Expr::Name: {
    if (Sc.hasVar(E.Text))
      return {ValueKind::Int};
    if (const model::Field *F = S.field(E.Text)) {
      if (Sc.FieldReads)
        Sc.FieldReads->insert(E.Text);
      return {F->Ty.Kind};
    }
    std::vector<std::string> Cands = Sc.Vars;
    for (auto &F : S.Fields)
      Cands.push_back(F.Name);
    D.emit(DiagId::UnknownName, E.Range, E.Text, didYouMean(E.Text, Cands));
    return {};
  }
  case ast::Expr::List: {
    ValueKind Elem = ValueKind::Any;
    bool First = true;
    for (auto &Op : E.Ops) {
      Ty T = check(*Op, Sc);
      if (First)
        Elem = T.K;
      else if (Elem != T.K)
        Elem = isNumeric(Elem) && isNumeric(T.K) ? ValueKind::Float : ValueKind::Any;
      First = false;
    }
    return {Elem == ValueKind::Int     ? ValueKind::IntList
            : Elem == ValueKind::Float ? ValueKind::FloatList
                                       : ValueKind::List};
  }
  case ast::Expr::Call:
    return checkCall(E, Sc);
  case ast::Expr::Unary: {
    Ty T = check(*E.Ops[0], Sc);
    if (E.Text == "!") {
      expectBool(*E.Ops[0], T, "operator '!'");
      return {ValueKind::Bool};
    }
    if (!T.Null && T.K != ValueKind::Any && !isNumeric(T.K))
      D.emit(DiagId::TypeMismatch, E.Ops[0]->Range, "the operand", T.str(), "unary '-'", "int or float");
    return T;
  }
  case ast::Expr::Binary:
    return checkBinary(E, Sc);
  case ast::Expr::Coalesce: {
    Ty Acc;
    bool First = true;
    for (auto &Op : E.Ops) {
      Ty T = check(*Op, Sc);
      Acc = First ? T : join(Acc, T);
      First = false;
    }
    return Acc;
  }
  case ast::Expr::Ternary: {
    Ty C = check(*E.Ops[0], Sc);
    expectBool(*E.Ops[0], C, "the condition of '?:'");
    return join(check(*E.Ops[1], Sc), check(*E.Ops[2], Sc));
  }
  }
  return {};
}

Ty Analyzer::join(Ty A, Ty B) {
  if (A.Null)
    return B;
  if (B.Null)
    return A;
  if (A.K == ValueKind::Any)
    return B;
  if (B.K == ValueKind::Any || A.K == B.K)
    return A;
  if (isNumeric(A.K) && isNumeric(B.K))
    return {ValueKind::Float};
  if (isList(A.K) && isList(B.K))
    return {ValueKind::List};
  return {ValueKind::Any};
}

void Analyzer::expectBool(const ast::Expr &E, Ty T, const std::string &What) {
  if (T.Null || T.K == ValueKind::Bool || T.K == ValueKind::Any)
    return;
  D.emit(DiagId::TypeMismatch, E.Range, "this expression", T.str(), What, "bool");
}

Ty Analyzer::checkBinary(const ast::Expr &E, Scope &Sc) {
  Ty L = check(*E.Ops[0], Sc), R = check(*E.Ops[1], Sc);
  const std::string &Op = E.Text;
  if (Op == "&&" || Op == "||") {
    expectBool(*E.Ops[0], L, "operator '" + Op + "'");
    expectBool(*E.Ops[1], R, "operator '" + Op + "'");
    return {ValueKind::Bool};
  }
  if (Op == "==" || Op == "!=")
    return {ValueKind::Bool};
  auto Dyn = [](Ty T) { return T.K == ValueKind::Any && !T.Null; };
  if (Op == "<" || Op == "<=" || Op == ">" || Op == ">=") {
    for (auto [T, X] : {std::pair{L, E.Ops[0]}, std::pair{R, E.Ops[1]}})
      if (!Dyn(T) && !isNumeric(T.K))
        D.emit(DiagId::TypeMismatch, X->Range, "the operand", T.str(), "operator '" + Op + "'", "int or float");
    return {ValueKind::Bool};
  }
  // Arithmetic.
  if (Op == "/" && E.Ops[0]->K == ast::Expr::Int && E.Ops[1]->K == ast::Expr::Int &&
      (E.Ops[1]->IntVal == 0 || E.Ops[0]->IntVal % E.Ops[1]->IntVal != 0))
    D.emit(DiagId::InexactDivision, E.Range, E.Ops[0]->IntVal, E.Ops[1]->IntVal);
  if (Dyn(L) || Dyn(R))
    return {Dyn(L) ? R.K : L.K};
  if (isNumeric(L.K) && isNumeric(R.K)) {
    if (Op == "//" || Op == "%")
      return {L.K == ValueKind::Int && R.K == ValueKind::Int ? ValueKind::Int : ValueKind::Float};
    return {L.K == ValueKind::Int && R.K == ValueKind::Int ? ValueKind::Int : ValueKind::Float};
  }
  if (Op == "+" && L.K == R.K && (L.K == ValueKind::String || isList(L.K)))
    return L;
  if (Op == "+" && isList(L.K) && isList(R.K))
    return {ValueKind::List};
  bool LeftBad = !isNumeric(L.K);
  D.emit(DiagId::TypeMismatch, (LeftBad ? E.Ops[0] : E.Ops[1])->Range,
         LeftBad ? "the left operand" : "the right operand", (LeftBad ? L : R).str(), "operator '" + Op + "'",
         "int or float");
  return {};
}

Ty Analyzer::checkCall(const ast::Expr &E, Scope &Sc) {
  const BuiltinInfo *B = nullptr;
  for (auto &I : Builtins)
    if (E.Text == I.Name)
      B = &I;
  std::vector<Ty> Args;
  for (auto &A : E.Ops)
    Args.push_back(check(*A, Sc));
  if (!B) {
    std::vector<std::string> Names;
    for (auto &I : Builtins)
      Names.push_back(I.Name);
    D.emit(DiagId::BadCall, E.Range, E.Text,
           "no such function" + didYouMean(E.Text, Names) + " (builtins: " + llvm::join(Names, ", ") + ")");
    return {};
  }
  if (E.Ops.size() < B->MinArgs || E.Ops.size() > B->MaxArgs) {
    D.emit(DiagId::BadCall, E.Range, E.Text,
           "it takes " + std::to_string(B->MinArgs) + (B->MaxArgs != B->MinArgs ? " or more" : "") +
               " argument(s) but is given " + std::to_string(E.Ops.size()) + "; " + B->Doc);
    return {};
  }
  // Argument kinds: 'n' number, 'i' int, 'l' list, 's' list or string, '*' anything.
  const char *Spec = B->ArgKinds;
  for (size_t I = 0; I < Args.size(); ++I) {
    char K = Spec[std::min(I, std::strlen(Spec) - 1)];
    ValueKind A = Args[I].K;
    bool OK = A == ValueKind::Any || K == '*' || (K == 'n' && isNumeric(A)) || (K == 'i' && A == ValueKind::Int) ||
              (K == 'l' && isList(A)) || (K == 's' && (isList(A) || A == ValueKind::String));
    if (!OK && !Args[I].Null)
      D.emit(DiagId::TypeMismatch, E.Ops[I]->Range, "argument " + std::to_string(I + 1), Args[I].str(),
             "'" + E.Text + "'",
             K == 'n'   ? "int or float"
             : K == 'i' ? "int"
             : K == 'l' ? "a list"
                        : "a list or string");
  }
  switch (B->Result) {
  case 'b':
    return {ValueKind::Bool};
  case 'i':
    return {ValueKind::Int};
  case 'f':
    return {ValueKind::Float};
  case 's':
    return {ValueKind::String};
  case 'L':
    return {ValueKind::List};
  case 'I':
    return {ValueKind::IntList};
  case 'e':
    return {Args[0].K == ValueKind::IntList     ? ValueKind::Int
            : Args[0].K == ValueKind::FloatList ? ValueKind::Float
                                                : ValueKind::Any};
  case 'r':
    return {Args[0].K == ValueKind::Int     ? ValueKind::IntList
            : Args[0].K == ValueKind::Float ? ValueKind::FloatList
                                            : ValueKind::List};
  default: { // 'j'
    Ty Acc = Args[0];
    for (size_t I = 1; I < Args.size(); ++I)
      Acc = join(Acc, Args[I]);
    return Acc;
  }
  }
}

void Analyzer::checkAssignable(const ast::Expr &Value, Ty V, const model::Field &F, const std::string &What) {
  bool OK = true;
  if (V.Null)
    OK = F.Ty.Optional;
  else if (V.K == ValueKind::Any || F.Ty.Kind == ValueKind::Any)
    OK = true;
  else if (V.K == F.Ty.Kind)
    OK = true;
  else if (V.K == ValueKind::Int && F.Ty.Kind == ValueKind::Float)
    OK = true;
  else if (isList(V.K) && isList(F.Ty.Kind))
    OK = V.K == ValueKind::List || F.Ty.Kind == ValueKind::List || F.Ty.Kind == ValueKind::FloatList;
  else
    OK = false;
  if (!OK) {
    D.emit(DiagId::TypeMismatch, Value.Range, "the value", V.str(), What, F.Ty.str());
    return;
  }
  if (!F.Ty.EnumValues.empty())
    checkEnumLiterals(Value, F);
}

void Analyzer::checkEnumLiterals(const ast::Expr &E, const model::Field &F) {
  if (E.K == ast::Expr::String) {
    for (auto &V : F.Ty.EnumValues)
      if (V == E.Text)
        return;
    D.emit(DiagId::BadEnumValue, E.Range, E.Text, F.Name, llvm::join(F.Ty.EnumValues, ", "));
    return;
  }
  if (E.K == ast::Expr::Ternary) {
    checkEnumLiterals(*E.Ops[1], F);
    checkEnumLiterals(*E.Ops[2], F);
  } else if (E.K == ast::Expr::Coalesce) {
    for (auto &O : E.Ops)
      checkEnumLiterals(*O, F);
  }
}
