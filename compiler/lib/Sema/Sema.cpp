//===- Sema.cpp - imports, the schema, checks, the semantic model -------===//
//
// Stages, in order: load the schema and the main file with its imports
// (cycles reported), build the schema model, resolve every bridge and fragment
// declaration once (names, types, ops, captures), then assemble each bridge of
// the main file from its fragments and check what only the whole bridge shows
// (duplicates, HF tensors claimed twice, export coverage, config order).
//
//===----------------------------------------------------------------------===//
#include "bridgec/Sema/Sema.h"

#include "bridgec/AST/Print.h"
#include "bridgec/Parse/Parser.h"

#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/GlobPattern.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"

#include <cstring>
#include <functional>
#include <optional>
#include <set>

using namespace bridgec;
using bridge::ValueKind;
using bridgec::model::isGlob;
using llvm::SMRange;

// ---- vocabularies shared with the runtime -----------------------------------------
namespace {

struct OpInfo {
  bridge::Op Id;
  const char *Name;
  unsigned MinIn, MaxIn;
  const char *Params;
  unsigned Ranks;
  bridge::Style Required;
};

const OpInfo Ops[] = {
#define BRIDGE_OP(Id, Name, MinIn, MaxIn, Params, Ranks, Sty, Inverse)                                  \
  {bridge::Op::Id, Name, MinIn, MaxIn, Params, Ranks, bridge::Style::Sty},
#include "bridge/Ops.def"
};

struct TransformInfo {
  bridge::Transform Id;
  const char *Name;
  unsigned Inputs;
};
const TransformInfo Transforms[] = {
#define BRIDGE_TRANSFORM(Id, Name, Inputs, Doc) {bridge::Transform::Id, Name, Inputs},
#include "bridge/Transforms.def"
};

struct StyleInfo {
  bridge::Style Id;
  const char *Name;
};
const StyleInfo Styles[] = {
#define BRIDGE_STYLE(Id, Name, Doc) {bridge::Style::Id, Name},
#include "bridge/Styles.def"
};

const char *styleName(bridge::Style S) {
  for (auto &I : Styles)
    if (I.Id == S)
      return I.Name;
  return "?";
}

std::optional<bridge::Style> styleByName(const std::string &N) {
  for (auto &I : Styles)
    if (N == I.Name && I.Id != bridge::Style::Any)
      return I.Id;
  return std::nullopt;
}

std::vector<std::string> styleNames() {
  std::vector<std::string> Out;
  for (auto &I : Styles)
    if (I.Id != bridge::Style::Any)
      Out.push_back(I.Name);
  return Out;
}

const char *kindName(ValueKind K) {
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

bool isList(ValueKind K) { return K == ValueKind::IntList || K == ValueKind::FloatList || K == ValueKind::List; }
bool isNumeric(ValueKind K) { return K == ValueKind::Int || K == ValueKind::Float; }

/// The static type of an expression: a kind, or the null literal.
struct Ty {
  ValueKind K = ValueKind::Any;
  bool Null = false;
  std::string str() const { return Null ? "null" : kindName(K); }
};

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

std::string model::Type::str() const {
  std::string S = kindName(Kind);
  if (!EnumValues.empty())
    S = "enum(" + llvm::join(EnumValues, ", ") + ")";
  return Optional ? S + "?" : S;
}

std::string model::Pattern::str() const {
  std::string S;
  for (auto &P : Pieces)
    S += P.E ? "{" + ast::print(*P.E) + "}" : P.Literal;
  return S;
}

std::string model::ExportRule::path() const { return llvm::join(Path, "."); }

// ---- loading ------------------------------------------------------------------------
bool Compilation::loadSchema(llvm::StringRef DisplayName, llvm::StringRef Text) {
  auto Buf = llvm::MemoryBuffer::getMemBufferCopy(Text, DisplayName);
  unsigned ID = Diags.getSourceMgr().AddNewSourceBuffer(std::move(Buf), llvm::SMLoc());
  Files.push_back(parseBuffer(ID, Diags));
  SchemaFile = Files.back().get();
  return true;
}

bool Compilation::loadMain(const std::string &Path) {
  std::vector<std::string> Stack;
  Main = load(Path, SMRange(), Stack);
  return Main != nullptr;
}

const ast::File *Compilation::load(const std::string &Path, SMRange ImportLoc, std::vector<std::string> &Stack) {
  llvm::SmallString<256> Canon(Path);
  llvm::sys::fs::make_absolute(Canon);
  llvm::sys::path::remove_dots(Canon, /*remove_dot_dot=*/true);
  std::string Key = Canon.str().str();
  for (size_t I = 0; I < Stack.size(); ++I)
    if (Stack[I] == Key) {
      std::string Chain;
      for (size_t J = I; J < Stack.size(); ++J)
        Chain += llvm::sys::path::filename(Stack[J]).str() + " -> ";
      Chain += llvm::sys::path::filename(Key).str();
      Diags.emit(DiagId::ImportCycle, ImportLoc, Chain);
      return nullptr;
    }
  if (auto It = ByPath.find(Key); It != ByPath.end())
    return It->second;
  auto BufOr = llvm::MemoryBuffer::getFile(Path);
  if (!BufOr) {
    Diags.emit(DiagId::CannotOpenFile, ImportLoc, Path, BufOr.getError().message());
    return nullptr;
  }
  unsigned ID = Diags.getSourceMgr().AddNewSourceBuffer(std::move(*BufOr), ImportLoc.Start);
  Files.push_back(parseBuffer(ID, Diags));
  const ast::File *F = Files.back().get();
  ByPath[Key] = F;
  Inputs.push_back(Path);
  Stack.push_back(Key);
  for (const ast::ImportDecl &Imp : F->Imports) {
    // Relative to the importing file, then each -I directory.
    std::vector<std::string> Candidates;
    llvm::SmallString<256> Local(llvm::sys::path::parent_path(Path));
    llvm::sys::path::append(Local, Imp.Path);
    Candidates.push_back(Local.str().str());
    for (const std::string &Dir : ImportDirs) {
      llvm::SmallString<256> C(Dir);
      llvm::sys::path::append(C, Imp.Path);
      Candidates.push_back(C.str().str());
    }
    std::string Found;
    for (const std::string &C : Candidates)
      if (llvm::sys::fs::exists(C)) {
        Found = C;
        break;
      }
    if (Found.empty()) {
      Diags.emit(DiagId::ImportNotFound, Imp.Range, Imp.Path, llvm::join(Candidates, ", "));
      continue;
    }
    load(Found, Imp.Range, Stack);
  }
  Stack.pop_back();
  return F;
}

// ---- analysis -----------------------------------------------------------------------
namespace {

/// Where an expression is evaluated, and what it may read.
struct Scope {
  std::vector<std::string> Vars; ///< loop variables or captures, innermost last
  bool AllowHF = false;
  const char *What = "an expression";
  std::vector<std::pair<std::vector<std::string>, SMRange>> *HFReads = nullptr;
  std::set<std::string> *FieldReads = nullptr;
  bool hasVar(const std::string &N) const {
    for (auto &V : Vars)
      if (V == N)
        return true;
    return false;
  }
};

/// Per-declaration results before fragments are merged.
struct Resolved {
  const ast::BridgeDecl *Decl = nullptr;
  std::vector<model::ConfigRule> Config;
  std::vector<std::set<std::string>> ConfigDeps; // parallel to Config
  std::vector<std::vector<std::pair<std::vector<std::string>, SMRange>>> ConfigHFReads;
  std::vector<model::ExportRule> Export;
  std::vector<model::TensorRule> Tensors;
  std::vector<model::IgnoreRule> Ignores;
  std::vector<model::TieRule> Ties;
  std::vector<std::string> ModelTypes, Architectures;
  std::vector<std::pair<std::string, std::string>> Aliases;
  std::vector<model::Requirement> Requires;
};

class Analyzer {
public:
  Analyzer(DiagnosticEngine &D, model::Schema &S) : D(D), S(S) {}

  // -- expressions -------------------------------------------------------------------
  Ty check(const ast::Expr &E, Scope &Sc) {
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
      return {Elem == ValueKind::Int ? ValueKind::IntList
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

  static Ty join(Ty A, Ty B) {
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

  void expectBool(const ast::Expr &E, Ty T, const std::string &What) {
    if (T.Null || T.K == ValueKind::Bool || T.K == ValueKind::Any)
      return;
    D.emit(DiagId::TypeMismatch, E.Range, "this expression", T.str(), What, "bool");
  }

  Ty checkBinary(const ast::Expr &E, Scope &Sc) {
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
    D.emit(DiagId::TypeMismatch, (LeftBad ? E.Ops[0] : E.Ops[1])->Range, LeftBad ? "the left operand" : "the right operand",
           (LeftBad ? L : R).str(), "operator '" + Op + "'", "int or float");
    return {};
  }

  Ty checkCall(const ast::Expr &E, Scope &Sc) {
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
      D.emit(DiagId::BadCall, E.Range, "unknown function '" + E.Text + "'" + didYouMean(E.Text, Names) +
                                           " (builtins: " + llvm::join(Names, ", ") + ")");
      return {};
    }
    if (E.Ops.size() < B->MinArgs || E.Ops.size() > B->MaxArgs) {
      D.emit(DiagId::BadCall, E.Range, "'" + E.Text + "' takes " + std::to_string(B->MinArgs) +
                                           (B->MaxArgs != B->MinArgs ? " or more" : "") + " argument(s) but is given " +
                                           std::to_string(E.Ops.size()) + "; " + B->Doc);
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
               K == 'n' ? "int or float" : K == 'i' ? "int" : K == 'l' ? "a list" : "a list or string");
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
      return {Args[0].K == ValueKind::IntList ? ValueKind::Int
              : Args[0].K == ValueKind::FloatList ? ValueKind::Float
                                                  : ValueKind::Any};
    case 'r':
      return {Args[0].K == ValueKind::Int ? ValueKind::IntList
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

  /// Checks that a value of type \p V may be stored in \p F.
  void checkAssignable(const ast::Expr &Value, Ty V, const model::Field &F, const std::string &What) {
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

  void checkEnumLiterals(const ast::Expr &E, const model::Field &F) {
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

  // -- patterns -----------------------------------------------------------------------
  /// Expands alternatives ('{q,k,v}') into one pattern each, checking captures.
  std::vector<model::Pattern> expand(const ast::Pattern &P, Scope &Sc) {
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

  static void appendLiteral(model::Pattern &P, const std::string &T) {
    if (!P.Pieces.empty() && !P.Pieces.back().E)
      P.Pieces.back().Literal += T;
    else
      P.Pieces.push_back({T, nullptr});
  }

  static void collectVars(const ast::Expr &E, const Scope &Sc, std::set<std::string> &Out) {
    if (E.K == ast::Expr::Name && Sc.hasVar(E.Text))
      Out.insert(E.Text);
    for (auto &O : E.Ops)
      collectVars(*O, Sc, Out);
  }

  // -- schema ---------------------------------------------------------------------------
  void buildSchema(const ast::SchemaDecl &SD) {
    S.Name = SD.Name;
    for (const ast::FieldDecl &F : SD.Fields) {
      model::Field MF;
      MF.Index = S.Fields.size();
      MF.Name = F.Name;
      MF.Loc = F.NameRange;
      MF.Default = F.Default;
      static const std::pair<const char *, ValueKind> Kinds[] = {
          {"int", ValueKind::Int},          {"float", ValueKind::Float},         {"bool", ValueKind::Bool},
          {"string", ValueKind::String},    {"enum", ValueKind::String},         {"int_list", ValueKind::IntList},
          {"float_list", ValueKind::FloatList}, {"list", ValueKind::List},       {"any", ValueKind::Any}};
      bool Known = false;
      for (auto &[N, K] : Kinds)
        if (F.Type.Name == N) {
          MF.Ty.Kind = K;
          Known = true;
        }
      if (!Known)
        D.emit(DiagId::SchemaError, F.Type.Range, "unknown type '" + F.Type.Name + "'");
      if (F.Type.Name == "enum" && F.Type.Values.empty())
        D.emit(DiagId::SchemaError, F.Type.Range, "'enum' needs a list of values, like 'enum(a, b)'");
      else if (F.Type.Name != "enum" && !F.Type.Values.empty())
        D.emit(DiagId::SchemaError, F.Type.Range, "only 'enum' takes a list of values");
      MF.Ty.EnumValues = F.Type.Values;
      MF.Ty.Optional = F.Type.Optional;
      if (S.FieldIndex.count(F.Name)) {
        D.emit(DiagId::SchemaError, F.NameRange, "field '" + F.Name + "' is declared twice");
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
        D.emit(DiagId::SchemaError, R.Count->Range, "a range counts with an int");
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

  struct Prefix {
    std::vector<std::string> Literals{""}; ///< text before/between captures
    std::vector<std::string> Captures;
    std::vector<ast::ExprP> Conditions;
  };

  /// Appends schema pattern \p P to \p Pre (captures must be bare names).
  bool extend(Prefix &Pre, const ast::Pattern &P) {
    for (const ast::PatternPiece &Pc : P.Pieces) {
      if (Pc.K == ast::PatternPiece::Literal) {
        Pre.Literals.back() += Pc.Text;
      } else if (Pc.K == ast::PatternPiece::Capture && Pc.E->K == ast::Expr::Name) {
        Pre.Captures.push_back(Pc.E->Text);
        Pre.Literals.push_back("");
      } else {
        D.emit(DiagId::SchemaError, Pc.Range, "schema names capture only bare names like '{i}'");
        return false;
      }
    }
    return true;
  }

  static std::string keyOf(const std::vector<std::string> &Literals) { return llvm::join(Literals, "{}"); }

  void addUse(const ast::UseDecl &U, const Prefix &Outer, std::map<std::string, const ast::BlockDecl *> &Blocks,
              unsigned Depth) {
    auto It = Blocks.find(U.Block);
    if (It == Blocks.end() || Depth > 8) {
      D.emit(DiagId::SchemaError, U.BlockRange, "unknown block '" + U.Block + "'");
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

  void addParam(const ast::ParamDecl &PD, const Prefix &Pre) {
    model::Param P;
    P.Index = S.Params.size();
    Prefix Local = Pre, TE = Pre;
    if (!extend(Local, PD.Local))
      return;
    if (PD.HasTE ? !extend(TE, PD.TE) : !extend(TE, PD.Local))
      return;
    if (TE.Captures != Local.Captures) {
      D.emit(DiagId::SchemaError, PD.TE.Range, "the TE name must capture the same names as the local name");
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
            D.emit(DiagId::SchemaError, Pat.Range,
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
      D.emit(DiagId::SchemaError, PD.Local.Range,
             Glob ? "a pass-through parameter ('.**') takes its shape from the checkpoint: write '[..]'"
                  : "'[..]' (the checkpoint's shape) is for pass-through parameters, whose name ends in '.**'");
    if (Glob && (!P.Captures.empty() || PD.HasTE || PD.HasDist || PD.HasLocalDist || PD.Expert))
      D.emit(DiagId::SchemaError, PD.Local.Range,
             "a pass-through parameter has one name: no captures, 'te', 'dist', 'localdist' or 'expert'");
    for (auto &Dim : PD.Shape) {
      Ty T = check(*Dim, Sc);
      if (!T.Null && T.K != ValueKind::Int && T.K != ValueKind::Any)
        D.emit(DiagId::SchemaError, Dim->Range, "a shape dimension must be an int, not '" + T.str() + "'");
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
        D.emit(DiagId::SchemaError, PD.Local.Range, "capture '{" + C + "}' is not the variable of any range");
    }
    auto St = styleByName(PD.Style);
    if (!St) {
      D.emit(DiagId::SchemaError, PD.StyleRange, "unknown parallel style '" + PD.Style + "'");
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
          D.emit(DiagId::SchemaError, PD.Local.Range,
                 "tensor '" + K + "' is declared twice; each declaration needs a 'when'");
          return;
        }
    S.ParamByKey[P.Key].push_back(P.Index);
    if (P.TEKey != P.Key)
      S.ParamByKey[P.TEKey].push_back(P.Index);
    S.Params.push_back(std::move(P));
  }

  // -- declarations ----------------------------------------------------------------------
  Resolved resolve(const ast::BridgeDecl &B) {
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

  // -- declared quantization ----------------------------------------------------------
  /// A glob of a 'quantized' declaration of the bridge being resolved.
  struct QuantizedGlob {
    std::string Glob;
    llvm::GlobPattern Pattern;
    std::string Op;     ///< the dequantization op
    std::string Suffix; ///< the scale's name: the tensor's plus this
    SMRange Range, DeclRange;
    bool Used = false;
  };
  std::vector<QuantizedGlob> Quantized;
  /// Building the inputs of a dequantization op: its sources are read as
  /// they are written.
  bool InDequant = false;

  void declareQuantized(const ast::BridgeDecl &B) {
    static const std::pair<const char *, const char *> Schemes[] = {{"fp8_block", "dequant_fp8_block"},
                                                                    {"fp8", "dequant_fp8"}};
    for (const ast::QuantizedDecl &Q : B.Quantized) {
      const char *Op = nullptr;
      std::vector<std::string> Names;
      for (auto &[Name, DequantOp] : Schemes) {
        Names.push_back(Name);
        if (Q.Scheme == Name)
          Op = DequantOp;
      }
      if (!Op) {
        D.emit(DiagId::UnknownQuantScheme, Q.SchemeRange, Q.Scheme, didYouMean(Q.Scheme, Names));
        continue;
      }
      if (Q.Param != "scale") {
        D.emit(DiagId::QuantScaleParam, Q.ParamRange, Q.Param);
        continue;
      }
      for (auto &[Glob, Range] : Q.Globs) {
        auto Pat = llvm::GlobPattern::create(Glob);
        if (!Pat) {
          llvm::consumeError(Pat.takeError());
          D.emit(DiagId::OpParam, Range, "\"" + Glob + "\" is not a glob ('*' any text, '?' one character)");
          continue;
        }
        Quantized.push_back({Glob, std::move(*Pat), Op, Q.Suffix, Range, Q.Range});
      }
    }
  }

  /// The declared quantization that reads HF source \p P, if any.
  QuantizedGlob *quantizedFor(const model::Pattern &P) {
    if (InDequant || Quantized.empty())
      return nullptr;
    std::string Name = P.str();
    for (QuantizedGlob &G : Quantized)
      if (G.Pattern.match(Name))
        return &G;
    return nullptr;
  }

  /// \p P as a pattern of the AST (captures keep their expressions), so a
  /// dequantization op built around it goes through buildSource as a written
  /// one does.
  static ast::Pattern astPattern(const model::Pattern &P, SMRange Range, const std::string &Suffix = "") {
    ast::Pattern Out;
    Out.Range = Range;
    for (const model::Pattern::Piece &Pc : P.Pieces) {
      ast::PatternPiece A;
      A.Range = Range;
      if (Pc.E) {
        A.K = ast::PatternPiece::Capture;
        A.E = Pc.E;
      } else {
        A.K = ast::PatternPiece::Literal;
        A.Text = Pc.Literal;
      }
      Out.Pieces.push_back(std::move(A));
    }
    if (!Suffix.empty()) {
      if (Out.Pieces.empty() || Out.Pieces.back().K != ast::PatternPiece::Literal) {
        ast::PatternPiece A;
        A.K = ast::PatternPiece::Literal;
        A.Range = Range;
        Out.Pieces.push_back(std::move(A));
      }
      Out.Pieces.back().Text += Suffix;
    }
    return Out;
  }

  void resolveItem(const ast::WeightItem &It, std::vector<model::Loop> &Loops, Scope &Sc, Resolved &R) {
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
        D.emit(DiagId::CaptureMismatch, It.Tie->Range, "both sides of 'tie' must name the same number of tensors");
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

  void resolveFor(const ast::ForBlock &F, std::vector<model::Loop> &Loops, Scope &Sc, Resolved &R) {
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

  /// Builds the postfix op nodes of \p Src; returns how many tensors it pushes.
  unsigned buildSource(const ast::Source &Src, Scope &Sc, std::vector<model::OpNode> &Out, std::set<std::string> &Vars,
                       bool &OK) {
    if (Src.K == ast::Source::PatternRef) {
      auto Pats = expand(Src.Pat, Sc);
      for (auto &P : Pats) {
        if (QuantizedGlob *Q = Src.OptionalInput ? nullptr : quantizedFor(P)) {
          // As if 'OP(P, P<suffix>?)' were written here.
          Q->Used = true;
          ast::Source Op;
          Op.K = ast::Source::Op;
          Op.Range = Op.OpNameRange = Src.Range;
          Op.OpName = Q->Op;
          for (bool Scale : {false, true}) {
            auto In = std::make_shared<ast::Source>();
            In->K = ast::Source::PatternRef;
            In->Range = Src.Range;
            In->Pat = astPattern(P, Src.Pat.Range, Scale ? Q->Suffix : "");
            In->OptionalInput = Scale;
            ast::OpArg A;
            A.Range = Src.Range;
            A.Src = In;
            Op.Args.push_back(std::move(A));
          }
          buildSource(Op, Sc, Out, Vars, OK);
          continue;
        }
        model::OpNode N;
        N.IsSource = true;
        N.OptionalInput = Src.OptionalInput;
        N.Source = P;
        N.Loc = Src.Range;
        for (auto &Pc : P.Pieces)
          if (Pc.E)
            collectVars(*Pc.E, Sc, Vars);
        Out.push_back(std::move(N));
      }
      return Pats.size();
    }
    model::OpNode N;
    N.Loc = Src.Range;
    N.Name = Src.OpName;
    unsigned MinIn = 0, MaxIn = 0;
    const char *ParamSpec = "";
    if (Src.Escape) {
      const TransformInfo *T = nullptr;
      std::vector<std::string> Names;
      for (auto &I : Transforms) {
        Names.push_back(I.Name);
        if (Src.OpName == I.Name)
          T = &I;
      }
      if (!T) {
        D.emit(DiagId::UnknownTransform, Src.OpNameRange, Src.OpName, didYouMean(Src.OpName, Names));
        OK = false;
        return 1;
      }
      N.Kind = bridge::Op::Transform;
      N.Custom = T->Id;
      MinIn = MaxIn = T->Inputs;
    } else {
      const OpInfo *Info = nullptr;
      std::vector<std::string> Names;
      for (auto &I : Ops) {
        if (I.Id == bridge::Op::Transform)
          continue;
        Names.push_back(I.Name);
        if (Src.OpName == I.Name)
          Info = &I;
      }
      if (!Info) {
        D.emit(DiagId::UnknownOp, Src.OpNameRange, Src.OpName, didYouMean(Src.OpName, Names));
        OK = false;
        return 1;
      }
      N.Kind = Info->Id;
      MinIn = Info->MinIn;
      MaxIn = Info->MaxIn;
      ParamSpec = Info->Params;
    }
    unsigned Inputs = 0;
    std::vector<const ast::OpArg *> Named;
    bool FirstInput = true;
    for (const ast::OpArg &A : Src.Args) {
      if (A.Src && A.Src->OptionalInput && FirstInput) {
        D.emit(DiagId::OpParam, A.Src->Range,
               "the first input of '" + Src.OpName + "' cannot be optional: it is what passes through when an "
               "optional input is absent");
        OK = false;
      }
      if (A.Src)
        FirstInput = false;
      if (A.Src) {
        // A dequantization op's inputs are read as written, never again
        // through a declared quantization.
        bool Was = InDequant;
        InDequant |= N.Kind == bridge::Op::DequantFP8Block || N.Kind == bridge::Op::DequantFP8Tensor ||
                     N.Kind == bridge::Op::DequantMXFP4;
        Inputs += buildSource(*A.Src, Sc, Out, Vars, OK);
        InDequant = Was;
      } else {
        Named.push_back(&A);
      }
    }
    if (Inputs < MinIn || Inputs > MaxIn) {
      D.emit(DiagId::OpArity, Src.OpNameRange, (Src.Escape ? "@" : "") + Src.OpName,
             MinIn == MaxIn ? std::to_string(MinIn) : std::to_string(MinIn) + "-" + std::to_string(MaxIn), Inputs);
      OK = false;
    }
    N.NumInputs = Inputs;
    // Parameters: 'name:type' or 'name:type=default', comma-separated.
    struct Spec {
      std::string Name, Type, Default;
    };
    std::vector<Spec> Specs;
    for (llvm::StringRef Item : llvm::split(llvm::StringRef(ParamSpec), ',')) {
      if (Item.empty())
        continue;
      auto [NameType, Default] = Item.split('=');
      auto [Name, Type] = NameType.split(':');
      Specs.push_back({Name.str(), Type.str(), Default.str()});
    }
    std::set<std::string> Seen;
    for (const ast::OpArg *A : Named) {
      const Spec *Sp = nullptr;
      std::vector<std::string> Names;
      for (auto &X : Specs) {
        Names.push_back(X.Name);
        if (X.Name == A->Param)
          Sp = &X;
      }
      if (!Sp) {
        D.emit(DiagId::OpParam, A->ParamRange,
               "op '" + Src.OpName + "' has no parameter '" + A->Param + "'" + didYouMean(A->Param, Names) +
                   (Names.empty() ? " (it takes none)" : " (parameters: " + llvm::join(Names, ", ") + ")"));
        OK = false;
        continue;
      }
      if (!Seen.insert(A->Param).second) {
        D.emit(DiagId::OpParam, A->ParamRange, "parameter '" + A->Param + "' is given twice");
        OK = false;
        continue;
      }
      Ty T = check(*A->Value, Sc);
      collectVars(*A->Value, Sc, Vars);
      bool Fits = T.K == ValueKind::Any && !T.Null;
      if (Sp->Type == "int")
        Fits |= T.K == ValueKind::Int;
      else if (Sp->Type == "number")
        Fits |= isNumeric(T.K);
      else if (Sp->Type == "string")
        Fits |= T.K == ValueKind::String;
      else if (Sp->Type == "int_list")
        Fits |= T.K == ValueKind::IntList;
      if (!Fits) {
        D.emit(DiagId::TypeMismatch, A->Value->Range, "the value", T.str(), "parameter '" + A->Param + "'", Sp->Type);
        OK = false;
      }
      N.Params.push_back({A->Param, A->Value});
    }
    for (auto &Sp : Specs) {
      if (Seen.count(Sp.Name))
        continue;
      if (Sp.Default.empty()) {
        D.emit(DiagId::OpParam, Src.OpNameRange,
               "op '" + Src.OpName + "' needs parameter '" + Sp.Name + "' (" + Sp.Type + ")");
        OK = false;
        continue;
      }
      auto E = std::make_shared<ast::Expr>();
      E->K = ast::Expr::Int;
      E->IntVal = std::stoll(Sp.Default);
      E->Text = Sp.Default;
      E->Range = Src.OpNameRange;
      N.Params.push_back({Sp.Name, E});
    }
    Out.push_back(std::move(N));
    return 1;
  }

  /// 'A.{x,y,z} <- rows(S, sizes = L);': one rule per part, part j reading
  /// row block j ('index = j'), as if written out; false when \p T is not
  /// of that form.
  bool resolveRowParts(const ast::TensorRule &T, std::vector<model::Loop> &Loops, Scope &Sc, Resolved &R) {
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

  void resolveTensor(const ast::TensorRule &T, std::vector<model::Loop> &Loops, Scope &Sc, Resolved &R) {
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
        D.emit(DiagId::BadTargetPiece, Pc.Range,
               "alternatives like '{a,b}' belong to HF names; a Megatron tensor name names one tensor (or, read "
               "from 'rows(X, sizes = ...)' without an index, one part per row block)");
        OK = false;
      } else if (Pc.E->K != ast::Expr::Name || !Sc.hasVar(Pc.E->Text)) {
        D.emit(DiagId::BadTargetPiece, Pc.Range,
               "a Megatron tensor name may capture only a loop variable, not '" + ast::print(*Pc.E) + "'");
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
        D.emit(DiagId::OpParam, Src.Range, "only an op input can be optional ('?'); a rule's source cannot");
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
          D.emit(DiagId::CaptureMismatch, Src.Range,
                 "the sources use loop variable '" + V + "' but the target '" + Target +
                     "' does not capture it; one Megatron tensor cannot come from several HF tensors");
          OK = false;
        } else if (InT && !InS) {
          D.emit(DiagId::CaptureMismatch, Src.Range,
                 "the target '" + Target + "' captures loop variable '" + V +
                     "' but no source uses it, so every instance would read the same HF tensor");
          OK = false;
        } else if (!InT && !InS && A == 0) {
          D.emit(DiagId::CaptureMismatch, T.Target.Range,
                 "loop variable '" + V + "' is bound but the target '" + Target +
                     "' does not capture it, so the rule would produce it once per iteration");
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
        D.emit(DiagId::StyleMismatch, T.StyleRange,
               "unknown parallel style '" + T.Style + "'" + didYouMean(T.Style, styleNames()) +
                   " (styles: " + llvm::join(styleNames(), ", ") + ")");
        return;
      }
      bool AnyFits = false;
      for (unsigned C : TR.Params)
        AnyFits |= S.Params[C].ParallelStyle == *St;
      if (!AnyFits) {
        D.emit(DiagId::StyleMismatch, T.StyleRange,
               "'" + Target + "' is '" + styleName(P.ParallelStyle) + "' in the schema, not '" + T.Style + "'");
        D.note(DiagId::NoteSchemaHere, P.Loc);
        return;
      }
    }
    for (const std::vector<model::OpNode> &Nodes : TR.Alternatives) {
      const model::OpNode &Root = Nodes.back();
      if (!Root.IsSource && Root.Kind != bridge::Op::Transform) {
        const OpInfo *Info = nullptr;
        for (auto &I : Ops)
          if (I.Id == Root.Kind)
            Info = &I;
        unsigned Rank = P.Shape.size();
        bool RankFits = !Info->Ranks, StyleFits = Info->Required == bridge::Style::Any;
        for (unsigned C : TR.Params) {
          RankFits |= (Info->Ranks >> S.Params[C].Shape.size()) & 1u;
          StyleFits |= S.Params[C].ParallelStyle == Info->Required;
        }
        if (!RankFits) {
          std::vector<std::string> Rs;
          for (unsigned K = 0; K < 8; ++K)
            if (Info->Ranks & (1u << K))
              Rs.push_back(std::to_string(K) + "-D");
          D.emit(DiagId::ShapeMismatch, Root.Loc,
                 "op '" + Root.Name + "' produces a " + llvm::join(Rs, " or ") + " tensor but '" + Target + "' is " +
                     std::to_string(Rank) + "-D in the schema");
          D.note(DiagId::NoteSchemaHere, P.Loc);
          return;
        }
        if (!StyleFits) {
          D.emit(DiagId::OpNeedsStyle, Root.Loc, Root.Name, styleName(Info->Required), Target,
                 styleName(P.ParallelStyle));
          D.note(DiagId::NoteSchemaHere, P.Loc);
          return;
        }
      }
    }
    R.Tensors.push_back(std::move(TR));
  }

  DiagnosticEngine &D;
  model::Schema &S;
};

// ---- whole-bridge checks ------------------------------------------------------------------
/// Text that identifies when a rule applies, with loop variables renamed by
/// position so that 'for i in layers' and 'for j in layers' compare equal.
std::string guardOf(const std::vector<model::Loop> &Loops, const ast::ExprP &When,
                    std::map<std::string, std::string> &Rename) {
  std::string G;
  for (size_t I = 0; I < Loops.size(); ++I) {
    Rename[Loops[I].Var] = "$" + std::to_string(I);
    G += "for $" + std::to_string(I) + " in " +
         (Loops[I].RangeIndex >= 0 ? "#" + std::to_string(Loops[I].RangeIndex)
                                   : ast::print(*Loops[I].Begin, &Rename) + ".." + ast::print(*Loops[I].End, &Rename));
    if (Loops[I].Where)
      G += " where " + ast::print(*Loops[I].Where, &Rename);
    G += "; ";
  }
  if (When)
    G += "when " + ast::print(*When, &Rename);
  return G;
}

/// Whether two patterns can spell the same name (a capture matches digits).
bool unifiable(const model::Pattern &A, const model::Pattern &B) {
  // Flatten to a token list: a char, or -1 for a capture.
  auto Flat = [](const model::Pattern &P) {
    std::vector<int> T;
    for (auto &Pc : P.Pieces) {
      if (Pc.E)
        T.push_back(-1);
      else
        for (char C : Pc.Literal)
          T.push_back(static_cast<unsigned char>(C));
    }
    return T;
  };
  std::vector<int> X = Flat(A), Y = Flat(B);
  std::map<std::pair<size_t, size_t>, bool> Memo;
  std::function<bool(size_t, size_t)> Go = [&](size_t I, size_t J) -> bool {
    if (I == X.size() || J == Y.size())
      return I == X.size() && J == Y.size();
    auto Key = std::make_pair(I, J);
    if (auto It = Memo.find(Key); It != Memo.end())
      return It->second;
    bool R;
    auto IsDigit = [](int C) { return C >= '0' && C <= '9'; };
    if (X[I] == -1 && Y[J] == -1)
      R = Go(I + 1, J + 1);
    else if (X[I] == -1)
      R = IsDigit(Y[J]) && (Go(I + 1, J + 1) || Go(I, J + 1));
    else if (Y[J] == -1)
      R = IsDigit(X[I]) && (Go(I + 1, J + 1) || Go(I + 1, J));
    else
      R = X[I] == Y[J] && Go(I + 1, J + 1);
    return Memo[Key] = R;
  };
  return Go(0, 0);
}

} // namespace

std::unique_ptr<model::MappingSet> Compilation::analyze() {
  TheSchema = std::make_unique<model::Schema>();
  Analyzer A(Diags, *TheSchema);
  if (!SchemaFile || SchemaFile->Schemas.size() != 1) {
    Diags.emit(DiagId::SchemaError, SMRange(), "the schema must declare exactly one 'schema'");
    return nullptr;
  }
  A.buildSchema(SchemaFile->Schemas[0]);
  if (!Main)
    return nullptr;

  // Every declaration in every loaded file, resolved once.
  std::map<std::string, const ast::BridgeDecl *> Decls;
  std::map<const ast::BridgeDecl *, Resolved> Res;
  for (auto &F : Files) {
    if (F.get() == SchemaFile)
      continue;
    for (auto &S : F->Schemas)
      Diags.emit(DiagId::SchemaError, S.Range, "a 'schema' may only appear in the schema file");
    for (auto &B : F->Bridges) {
      auto [It, New] = Decls.emplace(B.Name, &B);
      if (!New) {
        Diags.emit(DiagId::DuplicateDecl, B.NameRange, B.Name);
        Diags.note(DiagId::NotePreviousHere, It->second->NameRange);
        continue;
      }
      Res[&B] = A.resolve(B);
    }
  }

  auto Set = std::make_unique<model::MappingSet>();
  Set->TheSchema = TheSchema.get();
  std::map<std::string, std::string> MatchedBy;
  for (const ast::BridgeDecl &B : Main->Bridges) {
    if (B.IsFragment || Decls[B.Name] != &B)
      continue;
    // Linearize: bases depth-first in order, each once, then the bridge.
    std::vector<const ast::BridgeDecl *> Order;
    std::set<const ast::BridgeDecl *> Visiting, Done;
    std::function<void(const ast::BridgeDecl &)> Visit = [&](const ast::BridgeDecl &D) {
      if (Done.count(&D))
        return;
      Visiting.insert(&D);
      for (auto &Base : D.Bases) {
        auto It = Decls.find(Base.Name);
        if (It == Decls.end()) {
          std::vector<std::string> Frags;
          for (auto &[N, Dl] : Decls)
            if (Dl->IsFragment)
              Frags.push_back(N);
          Diags.emit(DiagId::UnknownBase, Base.Range, Base.Name, didYouMean(Base.Name, Frags));
          continue;
        }
        if (!It->second->IsFragment) {
          Diags.emit(DiagId::BaseNotFragment, Base.Range, Base.Name);
          continue;
        }
        if (Visiting.count(It->second)) {
          Diags.emit(DiagId::ImportCycle, Base.Range, "fragment '" + Base.Name + "' inherits from itself");
          continue;
        }
        Visit(*It->second);
      }
      Visiting.erase(&D);
      Done.insert(&D);
      Order.push_back(&D);
    };
    Visit(B);

    model::Bridge MB;
    MB.Name = B.Name;
    MB.Loc = B.NameRange;
    MB.File = Main->Path;
    // Config and export: keyed by field / path; 'override' replaces.
    std::map<unsigned, size_t> ConfigAt;
    std::vector<model::ConfigRule> Config;
    std::vector<std::set<std::string>> Deps;
    std::vector<std::pair<std::vector<std::string>, SMRange>> HFReads;
    std::map<std::string, size_t> ExportAt;
    std::vector<model::ExportRule> Export;
    std::vector<model::TensorRule> Tensors;
    std::vector<std::string> TensorGuards;
    for (const ast::BridgeDecl *D : Order) {
      Resolved &R = Res[D];
      for (auto &M : R.ModelTypes)
        MB.ModelTypes.push_back(M);
      for (auto &M : R.Architectures)
        MB.Architectures.push_back(M);
      for (auto &A : R.Aliases)
        if (std::find(MB.Aliases.begin(), MB.Aliases.end(), A) == MB.Aliases.end())
          MB.Aliases.push_back(A);
      for (auto &Rq : R.Requires)
        MB.Requires.push_back(Rq);
      for (size_t I = 0; I < R.Config.size(); ++I) {
        auto &C = R.Config[I];
        auto It = ConfigAt.find(C.Field);
        if (It != ConfigAt.end()) {
          if (!C.Override) {
            Diags.emit(DiagId::DuplicateConfigField, C.Loc, TheSchema->Fields[C.Field].Name);
            Diags.note(DiagId::NotePreviousHere, Config[It->second].Loc);
            continue;
          }
          Config[It->second] = C;
          Deps[It->second] = R.ConfigDeps[I];
        } else {
          if (C.Override)
            Diags.emit(DiagId::OverrideNothing, C.Loc, TheSchema->Fields[C.Field].Name);
          ConfigAt[C.Field] = Config.size();
          Config.push_back(C);
          Deps.push_back(R.ConfigDeps[I]);
        }
      }
      for (auto &E : R.Export) {
        auto It = ExportAt.find(E.path());
        if (It != ExportAt.end()) {
          if (!E.Override) {
            Diags.emit(DiagId::DuplicateExport, E.Loc, E.path());
            Diags.note(DiagId::NotePreviousHere, Export[It->second].Loc);
            continue;
          }
          Export[It->second] = E;
        } else {
          if (E.Override)
            Diags.emit(DiagId::OverrideNothing, E.Loc, "hf." + E.path());
          ExportAt[E.path()] = Export.size();
          Export.push_back(E);
        }
      }
      for (auto &T : R.Tensors) {
        std::map<std::string, std::string> Rename;
        std::string Guard = std::to_string(T.Params[0]) + "|" + guardOf(T.Loops, T.When, Rename);
        size_t Found = Tensors.size();
        for (size_t K = 0; K < Tensors.size(); ++K)
          if (TensorGuards[K] == Guard)
            Found = K;
        if (Found != Tensors.size()) {
          if (!T.Override) {
            Diags.emit(DiagId::DuplicateTarget, T.Target.Loc, T.Target.str());
            Diags.note(DiagId::NoteOtherRuleHere, Tensors[Found].Loc);
            continue;
          }
          Tensors[Found] = T;
        } else {
          if (T.Override)
            Diags.emit(DiagId::OverrideNothing, T.Loc, T.Target.str());
          Tensors.push_back(T);
          TensorGuards.push_back(Guard);
        }
      }
      for (auto &I : R.Ignores)
        MB.Ignores.push_back(I);
      for (auto &T : R.Ties)
        MB.Ties.push_back(T);
    }
    MB.Tensors = std::move(Tensors);
    if (MB.ModelTypes.empty())
      Diags.emit(DiagId::NoMatch, B.NameRange, B.Name);
    {
      std::set<std::string> Own;
      for (const ast::BridgeDecl *D : Order)
        for (const ast::MatchDecl &M : D->Matches) {
          if (M.Key != "model_type")
            continue;
          auto [It, New] = MatchedBy.emplace("model_type:" + M.Value, B.Name);
          if (!New || !Own.insert(M.Value).second)
            Diags.emit(DiagId::DuplicateMatch, M.Range, "model_type", M.Value, It->second);
        }
    }

    // HF tensors claimed twice, among all rules, ignores and ties.
    struct Claim {
      model::Pattern Pat;
      std::string Guard;
      SMRange Loc;
      // Alternatives of one rule may read the same tensor: one is taken.
      int Rule = -1, Alternative = -1;
      // Read through 'rows': the block taken ('index = ...' as written);
      // rules may share a tensor by taking different blocks of it.
      std::string Block;
    };
    std::vector<Claim> Claims;
    for (size_t R = 0; R < MB.Tensors.size(); ++R) {
      auto &T = MB.Tensors[R];
      std::map<std::string, std::string> Rn;
      std::string G = guardOf(T.Loops, T.When, Rn);
      for (size_t A = 0; A < T.Alternatives.size(); ++A) {
        const auto &Nodes = T.Alternatives[A];
        for (size_t K = 0; K < Nodes.size(); ++K) {
          if (!Nodes[K].IsSource)
            continue;
          Claim C{Nodes[K].Source, G, Nodes[K].Loc, static_cast<int>(R), static_cast<int>(A)};
          // Postfix order puts a one-input op right after its source.
          if (K + 1 < Nodes.size() && !Nodes[K + 1].IsSource && Nodes[K + 1].Kind == bridge::Op::RowBlock)
            for (auto &[Name, Value] : Nodes[K + 1].Params)
              if (Name == "index" && Value)
                C.Block = ast::print(*Value, &Rn);
          Claims.push_back(std::move(C));
        }
      }
    }
    for (auto &I : MB.Ignores) {
      std::map<std::string, std::string> Rn;
      Claims.push_back({I.Pat, guardOf(I.Loops, I.When, Rn), I.Loc});
    }
    for (auto &T : MB.Ties) {
      std::map<std::string, std::string> Rn;
      Claims.push_back({T.Copy, guardOf(T.Loops, T.When, Rn), T.Loc});
    }
    for (size_t I = 0; I < Claims.size(); ++I)
      for (size_t J = 0; J < I; ++J)
        if (Claims[I].Guard == Claims[J].Guard && unifiable(Claims[I].Pat, Claims[J].Pat) &&
            !(Claims[I].Rule >= 0 && Claims[I].Rule == Claims[J].Rule &&
              Claims[I].Alternative != Claims[J].Alternative) &&
            !(!Claims[I].Block.empty() && !Claims[J].Block.empty() && Claims[I].Block != Claims[J].Block)) {
          Diags.emit(DiagId::SourceClaimedTwice, Claims[I].Pat.Loc.isValid() ? Claims[I].Pat.Loc : Claims[I].Loc,
                     Claims[I].Pat.str());
          Diags.note(DiagId::NoteOtherRuleHere, Claims[J].Pat.Loc.isValid() ? Claims[J].Pat.Loc : Claims[J].Loc);
          break;
        }

    // Config order: dependencies first; cycles are errors.
    std::vector<int> State(Config.size(), 0);
    std::vector<size_t> Sorted;
    std::vector<std::string> Path;
    std::function<void(size_t)> Topo = [&](size_t I) {
      if (State[I] == 2)
        return;
      const std::string &Name = TheSchema->Fields[Config[I].Field].Name;
      if (State[I] == 1) {
        std::string Chain;
        bool On = false;
        for (auto &P : Path) {
          On |= P == Name;
          if (On)
            Chain += P + " -> ";
        }
        Diags.emit(DiagId::ConfigCycle, Config[I].Loc, Name, Chain + Name);
        return;
      }
      State[I] = 1;
      Path.push_back(Name);
      for (auto &Dep : Deps[I]) {
        auto FIt = TheSchema->FieldIndex.find(Dep);
        if (FIt == TheSchema->FieldIndex.end())
          continue;
        auto CIt = ConfigAt.find(FIt->second);
        if (CIt != ConfigAt.end())
          Topo(CIt->second);
      }
      Path.pop_back();
      State[I] = 2;
      Sorted.push_back(I);
    };
    for (size_t I = 0; I < Config.size(); ++I)
      Topo(I);
    for (size_t I : Sorted)
      MB.Config.push_back(Config[I]);

    // Export: explicit rules, plus the reverse of plain renames
    // ('field = hf.x' or 'field = hf.x ?? literal').
    for (auto &C : Config) {
      if (C.When)
        continue;
      const ast::Expr *V = C.Value.get();
      if (V->K == ast::Expr::Coalesce) {
        bool Literals = true;
        for (size_t K = 1; K < V->Ops.size(); ++K) {
          auto Kd = V->Ops[K]->K;
          Literals &= Kd == ast::Expr::Int || Kd == ast::Expr::Float || Kd == ast::Expr::String ||
                      Kd == ast::Expr::Bool || Kd == ast::Expr::Null;
        }
        V = Literals ? V->Ops[0].get() : nullptr;
      }
      if (!V || V->K != ast::Expr::HFPath)
        continue;
      std::string P = llvm::join(V->Path, ".");
      if (ExportAt.count(P))
        continue;
      model::ExportRule E;
      E.Path = V->Path;
      auto Ref = std::make_shared<ast::Expr>();
      Ref->K = ast::Expr::Name;
      Ref->Text = TheSchema->Fields[C.Field].Name;
      Ref->Range = C.Loc;
      E.Value = Ref;
      E.Derived = true;
      E.Loc = C.Loc;
      ExportAt[P] = Export.size();
      Export.push_back(E);
    }
    MB.Export = Export;
    // Every HF field read on import must be written back on export.
    // (Only the rules that survived overrides count.)
    std::vector<std::pair<std::vector<std::string>, SMRange>> FinalReads;
    std::function<void(const ast::Expr &)> Reads = [&](const ast::Expr &E) {
      if (E.K == ast::Expr::HFPath)
        FinalReads.push_back({E.Path, E.Range});
      for (auto &O : E.Ops)
        Reads(*O);
    };
    for (auto &C : MB.Config) {
      Reads(*C.Value);
      if (C.When)
        Reads(*C.When);
    }
    {
      {
        for (auto &[Path, Loc] : FinalReads) {
          std::string P = llvm::join(Path, ".");
          // A read through an alias is covered by writing the primary spelling.
          for (auto &[Primary, Alt] : MB.Aliases)
            if (P == Alt || llvm::StringRef(P).startswith(Alt + "."))
              P = Primary.empty() ? P.substr(std::min(P.size(), Alt.size() + 1)) : Primary + P.substr(Alt.size());
          bool Covered = P == "model_type" || P == "architectures";
          for (auto &E : Export) {
            std::string W = E.path();
            Covered |= P == W || llvm::StringRef(P).startswith(W + ".") || llvm::StringRef(W).startswith(P + ".");
          }
          if (!Covered) {
            Diags.emit(DiagId::NotExported, Loc, P);
            ExportAt[P] = ~size_t(0); // report each field once
            model::ExportRule Dummy;
            Dummy.Path = Path;
            Export.push_back(Dummy);
          }
        }
      }
    }
    Set->Bridges.push_back(std::move(MB));
  }
  if (Diags.hasErrors())
    return nullptr;
  return Set;
}
