//===- CppTableEmitter.cpp - model to constexpr tables ------------------===//
//
// Writes data only (mapping tables, and the recipe table of --emit=recipes):
// named constexpr arrays (children before parents, since a
// constant expression can only point at named storage) and one MappingTable
// per bridge. Expressions become bytecode for the runtime's stack machine
// (bridge::ExprOp); names resolve as Sema resolved them.
//
//===----------------------------------------------------------------------===//
#include "bridgec/Emit/Emitters.h"

#include "bridgec/AST/Print.h"

#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/Path.h"

#include <cstdio>

using namespace bridgec;

uint64_t bridgec::schemaFingerprint(llvm::StringRef Text) {
  uint64_t H = 1469598103934665603ull;
  for (unsigned char C : Text) {
    H ^= C;
    H *= 1099511628211ull;
  }
  return H;
}

namespace {

std::string cstr(const std::string &S) {
  std::string Out = "\"";
  for (char C : S) {
    if (C == '"' || C == '\\')
      Out += '\\';
    if (C == '\n') {
      Out += "\\n";
      continue;
    }
    Out += C;
  }
  return Out + "\"";
}

struct Insn {
  std::string Op;
  int64_t A = 0;
  double F = 0;
  std::string S;
  bool HasS = false;
};

class TableWriter {
public:
  TableWriter(const llvm::SourceMgr &SM, const model::Schema &Schema) : SM(SM), Schema(Schema) {}

  std::string Decls; ///< named arrays, in dependency order

  std::string fresh(const char *Prefix) { return std::string(Prefix) + std::to_string(Counter++); }

  /// Emits a constexpr array and returns a Span initializer for it.
  std::string array(const char *Type, const char *Prefix, const std::vector<std::string> &Items) {
    if (Items.empty())
      return "{nullptr, 0}";
    std::string Name = fresh(Prefix);
    Decls += "constexpr " + std::string(Type) + " " + Name + "[] = {\n";
    for (auto &I : Items)
      Decls += "  " + I + ",\n";
    Decls += "};\n";
    return "{" + Name + ", " + std::to_string(Items.size()) + "}";
  }

  /// The location as file:line:col, naming the file that holds it (an
  /// imported fragment, not the bridge that inherits it).
  std::string loc(llvm::SMRange R, const std::string &Fallback) {
    if (!R.Start.isValid())
      return "{" + cstr(Fallback) + ", 0, 0}";
    unsigned Buf = SM.FindBufferContainingLoc(R.Start);
    std::string File = Buf ? SM.getMemoryBuffer(Buf)->getBufferIdentifier().str() : Fallback;
    auto [Line, Col] = SM.getLineAndColumn(R.Start);
    return "{" + cstr(File) + ", " + std::to_string(Line) + ", " + std::to_string(Col) + "}";
  }

  // -- expressions ------------------------------------------------------------------
  void compile(const ast::Expr &E, const std::vector<std::string> &Vars, std::vector<Insn> &Out) {
    auto Emit = [&](const char *Op, int64_t A = 0) {
      Insn I;
      I.Op = Op;
      I.A = A;
      Out.push_back(I);
      return Out.size() - 1;
    };
    auto Patch = [&](size_t At) { Out[At].A = static_cast<int64_t>(Out.size() - At - 1); };
    switch (E.K) {
    case ast::Expr::Int:
      Emit("PushInt", E.IntVal);
      return;
    case ast::Expr::Float: {
      Insn I;
      I.Op = "PushFloat";
      I.F = E.FloatVal;
      Out.push_back(I);
      return;
    }
    case ast::Expr::String: {
      Insn I;
      I.Op = "PushString";
      I.S = E.Text;
      I.HasS = true;
      Out.push_back(I);
      return;
    }
    case ast::Expr::Bool:
      Emit("PushBool", E.BoolVal ? 1 : 0);
      return;
    case ast::Expr::Null:
      Emit("PushNull");
      return;
    case ast::Expr::HFPath: {
      Insn I;
      I.Op = "LoadHF";
      I.S = llvm::join(E.Path, ".");
      I.HasS = true;
      Out.push_back(I);
      return;
    }
    case ast::Expr::Name: {
      for (size_t K = Vars.size(); K-- > 0;)
        if (Vars[K] == E.Text) {
          Emit("LoadVar", static_cast<int64_t>(K));
          return;
        }
      Insn I;
      I.Op = "LoadField";
      I.A = Schema.FieldIndex.at(E.Text);
      I.S = E.Text;
      I.HasS = true;
      Out.push_back(I);
      return;
    }
    case ast::Expr::List:
      for (auto &O : E.Ops)
        compile(*O, Vars, Out);
      Emit("MakeList", static_cast<int64_t>(E.Ops.size()));
      return;
    case ast::Expr::Call: {
      for (auto &O : E.Ops)
        compile(*O, Vars, Out);
      Insn I;
      I.Op = "Call";
      I.A = static_cast<int64_t>(E.Ops.size());
      I.S = E.Text;
      I.HasS = true;
      Out.push_back(I);
      return;
    }
    case ast::Expr::Unary:
      compile(*E.Ops[0], Vars, Out);
      Emit(E.Text == "!" ? "Not" : "Neg");
      return;
    case ast::Expr::Binary: {
      const std::string &Op = E.Text;
      if (Op == "&&" || Op == "||") {
        // Short-circuit: the right side is evaluated only when needed.
        compile(*E.Ops[0], Vars, Out);
        Emit("ToBool");
        size_t Skip = Emit(Op == "&&" ? "JumpIfFalse" : "JumpIfTrue");
        compile(*E.Ops[1], Vars, Out);
        Emit("ToBool");
        size_t End = Emit("Jump");
        Patch(Skip);
        Emit("PushBool", Op == "&&" ? 0 : 1);
        Patch(End);
        return;
      }
      compile(*E.Ops[0], Vars, Out);
      compile(*E.Ops[1], Vars, Out);
      static const std::pair<const char *, const char *> Names[] = {
          {"+", "Add"}, {"-", "Sub"}, {"*", "Mul"}, {"/", "Div"}, {"//", "FloorDiv"}, {"%", "Mod"}, {"==", "Eq"},
          {"!=", "Ne"}, {"<", "Lt"},  {"<=", "Le"}, {">", "Gt"},  {">=", "Ge"}};
      for (auto &[Sp, N] : Names)
        if (Op == Sp)
          Emit(N);
      return;
    }
    case ast::Expr::Coalesce: {
      std::vector<size_t> Ends;
      for (size_t K = 0; K < E.Ops.size(); ++K) {
        compile(*E.Ops[K], Vars, Out);
        if (K + 1 < E.Ops.size())
          Ends.push_back(Emit("JumpIfNotNull"));
      }
      for (size_t At : Ends)
        Patch(At);
      return;
    }
    case ast::Expr::Ternary: {
      compile(*E.Ops[0], Vars, Out);
      Emit("ToBool");
      size_t Else = Emit("JumpIfFalse");
      compile(*E.Ops[1], Vars, Out);
      size_t End = Emit("Jump");
      Patch(Else);
      compile(*E.Ops[2], Vars, Out);
      Patch(End);
      return;
    }
    }
  }

  std::string expr(const ast::ExprP &E, const std::vector<std::string> &Vars) {
    if (!E)
      return "{{nullptr, 0}, nullptr}";
    std::vector<Insn> Code;
    compile(*E, Vars, Code);
    std::vector<std::string> Items;
    for (auto &I : Code) {
      char F[64];
      std::snprintf(F, sizeof F, "%.17g", I.F);
      Items.push_back("{bridge::ExprOp::" + I.Op + ", " + std::to_string(I.A) + ", " + F + ", " +
                      (I.HasS ? cstr(I.S) : std::string("nullptr")) + "}");
    }
    return "{" + array("bridge::Insn", "kCode", Items) + ", " + cstr(ast::print(*E)) + "}";
  }

  std::string pattern(const model::Pattern &P, const std::vector<std::string> &Vars) {
    std::vector<std::string> Items;
    for (auto &Pc : P.Pieces)
      Items.push_back(Pc.E ? "{nullptr, " + expr(Pc.E, Vars) + "}" : "{" + cstr(Pc.Literal) + ", {{nullptr, 0}, nullptr}}");
    return array("bridge::PatternPiece", "kPattern", Items);
  }

  std::string loops(const std::vector<model::Loop> &Ls) {
    std::vector<std::string> Items, Vars;
    for (auto &L : Ls) {
      // A loop's bounds see the outer variables; its 'where' sees its own too.
      std::string Begin = expr(L.Begin, Vars), End = expr(L.End, Vars);
      Vars.push_back(L.Var);
      Items.push_back("{" + cstr(L.Var) + ", " + std::to_string(L.RangeIndex) + ", " + Begin + ", " + End + ", " +
                      expr(L.Where, Vars) + "}");
    }
    return array("bridge::Loop", "kLoops", Items);
  }

  static std::vector<std::string> varsOf(const std::vector<model::Loop> &Ls) {
    std::vector<std::string> V;
    for (auto &L : Ls)
      V.push_back(L.Var);
    return V;
  }

  std::string strings(const std::vector<std::string> &Ss) {
    std::vector<std::string> Items;
    for (auto &S : Ss)
      Items.push_back(cstr(S));
    return array("const char *", "kStrings", Items);
  }

  std::string literalPattern(const std::vector<std::string> &Literals) {
    std::vector<std::string> Items;
    for (size_t I = 0; I < Literals.size(); ++I) {
      if (!Literals[I].empty())
        Items.push_back("{" + cstr(Literals[I]) + ", {{nullptr, 0}, nullptr}}");
      if (I + 1 < Literals.size()) {
        std::string Code = array("bridge::Insn", "kCode",
                                 {"{bridge::ExprOp::LoadVar, " + std::to_string(I) + ", 0, nullptr}"});
        Items.push_back("{nullptr, {" + Code + ", nullptr}}");
      }
    }
    return array("bridge::PatternPiece", "kPattern", Items);
  }

  const llvm::SourceMgr &SM;
  const model::Schema &Schema;
  unsigned Counter = 0;
};

const char *styleId(bridge::Style S) {
  switch (S) {
#define BRIDGE_STYLE(Id, Name, Doc)                                                                     \
  case bridge::Style::Id:                                                                               \
    return #Id;
#include "bridge/Styles.def"
  }
  return "Any";
}

const char *opId(bridge::Op O) {
  switch (O) {
#define BRIDGE_OP(Id, Name, MinIn, MaxIn, Params, Ranks, Style, Inverse)                                \
  case bridge::Op::Id:                                                                                  \
    return #Id;
#include "bridge/Ops.def"
  }
  return "Identity";
}

const char *transformId(bridge::Transform T) {
  switch (T) {
  case bridge::Transform::None:
    return "None";
#define BRIDGE_TRANSFORM(Id, Name, Inputs, Doc)                                                         \
  case bridge::Transform::Id:                                                                           \
    return #Id;
#include "bridge/Transforms.def"
  }
  return "None";
}

const char *kindId(bridge::ValueKind K) {
  switch (K) {
  case bridge::ValueKind::Int:
    return "Int";
  case bridge::ValueKind::Float:
    return "Float";
  case bridge::ValueKind::Bool:
    return "Bool";
  case bridge::ValueKind::String:
    return "String";
  case bridge::ValueKind::IntList:
    return "IntList";
  case bridge::ValueKind::FloatList:
    return "FloatList";
  case bridge::ValueKind::List:
    return "List";
  case bridge::ValueKind::Any:
    return "Any";
  }
  return "Any";
}

void banner(llvm::raw_ostream &OS, const std::string &What) {
  OS << "/*===- bridgec generated file -------------------------------*- C++ -*-===*\\\n"
     << "|* " << What << "\n"
     << "|* Automatically generated by bridgec; do not edit.\n"
     << "\\*===----------------------------------------------------------------------===*/\n";
}

} // namespace

void bridgec::emitMappingTables(const model::MappingSet &Set, const llvm::SourceMgr &SM, uint64_t SchemaHash,
                                llvm::raw_ostream &OS) {
  std::string Files;
  for (auto &B : Set.Bridges)
    Files += (Files.empty() ? "" : ", ") + B.Name;
  banner(OS, "Mapping tables: " + Files);
  OS << "#ifdef BRIDGE_GET_TABLES\n"
     << "static_assert(bridge::kTableAbiVersion == 2, \"generated by an incompatible bridgec\");\n";
  for (const model::Bridge &B : Set.Bridges) {
    TableWriter W(SM, *Set.TheSchema);
    std::vector<std::string> Config, Export, Tensors, Ignores, Ties;
    for (auto &C : B.Config)
      Config.push_back("{" + std::to_string(C.Field) + ", " + W.expr(C.Value, {}) + ", " + W.expr(C.When, {}) + ", " +
                       W.loc(C.Loc, B.File) + "}");
    for (auto &E : B.Export)
      Export.push_back("{" + cstr(E.path()) + ", " + W.expr(E.Value, {}) + ", " + W.expr(E.When, {}) + ", " +
                       W.loc(E.Loc, B.File) + "}");
    for (auto &T : B.Tensors) {
      auto Vars = TableWriter::varsOf(T.Loops);
      std::vector<std::string> Alternatives;
      for (auto &Alt : T.Alternatives) {
        std::vector<std::string> Nodes;
        for (auto &N : Alt) {
          std::vector<std::string> Params;
          for (auto &[Name, Value] : N.Params)
            Params.push_back("{" + cstr(Name) + ", " + W.expr(Value, Vars) + "}");
          std::string Src = N.IsSource ? W.pattern(N.Source, Vars) : "{nullptr, 0}";
          Nodes.push_back(std::string("{") + (N.IsSource ? "true" : "false") + ", " +
                          (N.OptionalInput ? "true" : "false") + ", bridge::Op::" + opId(N.Kind) +
                          ", bridge::Transform::" + transformId(N.Custom) + ", " + std::to_string(N.NumInputs) +
                          ", " + Src + ", " + W.array("bridge::OpParam", "kParams", Params) + "}");
        }
        Alternatives.push_back(W.array("bridge::OpNode", "kNodes", Nodes));
      }
      std::string Target = W.pattern(T.Target, Vars);
      std::string Loops = W.loops(T.Loops);
      std::string AltSpan = W.array("bridge::Span<bridge::OpNode>", "kAlternatives", Alternatives);
      std::vector<std::string> Cands;
      for (unsigned C : T.Params)
        Cands.push_back(std::to_string(C));
      std::string CandSpan = W.array("uint32_t", "kCandidates", Cands);
      Tensors.push_back("{" + CandSpan + ", " + (T.TargetIsTE ? "true" : "false") + ", " + Target +
                        ", " + Loops + ", " + AltSpan + ", " + W.expr(T.When, Vars) + ", " +
                        (T.Optional ? "true" : "false") + ", " + W.loc(T.Loc, B.File) + "}");
    }
    for (auto &I : B.Ignores) {
      auto Vars = TableWriter::varsOf(I.Loops);
      std::string Pat = W.pattern(I.Pat, Vars), Loops = W.loops(I.Loops);
      Ignores.push_back("{" + Pat + ", " + Loops + ", " + W.expr(I.When, Vars) + ", " + W.loc(I.Loc, B.File) + "}");
    }
    for (auto &T : B.Ties) {
      auto Vars = TableWriter::varsOf(T.Loops);
      std::string Copy = W.pattern(T.Copy, Vars), Of = W.pattern(T.Of, Vars), Loops = W.loops(T.Loops);
      Ties.push_back("{" + Copy + ", " + Of + ", " + Loops + ", " + W.expr(T.When, Vars) + ", " +
                     W.loc(T.Loc, B.File) + "}");
    }
    std::vector<std::string> Requires;
    for (auto &Rq : B.Requires)
      Requires.push_back("{" + W.expr(Rq.Cond, {}) + ", " + cstr(Rq.Message) + ", " + W.loc(Rq.Loc, B.File) + "}");
    std::vector<std::string> Aliases;
    for (auto &[Primary, Alt] : B.Aliases)
      Aliases.push_back("{" + cstr(Primary) + ", " + cstr(Alt) + "}");
    std::string Table = "constexpr bridge::MappingTable kTable = {\n  " + cstr(B.Name) + ", " + cstr(B.File) + ",\n  " +
                        W.strings(B.ModelTypes) + ", " + W.strings(B.Architectures) + ",\n  " +
                        W.array("bridge::HFAlias", "kAliases", Aliases) + ",\n  " +
                        W.array("bridge::Requirement", "kRequires", Requires) + ",\n  " +
                        W.array("bridge::ConfigRule", "kConfig", Config) + ",\n  " +
                        W.array("bridge::ExportRule", "kExport", Export) + ",\n  " +
                        W.array("bridge::TensorRule", "kTensors", Tensors) + ",\n  " +
                        W.array("bridge::IgnoreRule", "kIgnores", Ignores) + ",\n  " +
                        W.array("bridge::TieRule", "kTies", Ties) + "};\n";
    OS << "namespace bridge::gen::mapping_" << B.Name << " {\n"
       << "constexpr unsigned long long kSchemaHash = " << llvm::format_hex(SchemaHash, 18) << "ull;\n"
       << W.Decls << Table << "} // namespace bridge::gen::mapping_" << B.Name << "\n";
  }
  OS << "#endif // BRIDGE_GET_TABLES\n\n#ifdef BRIDGE_GET_REGISTRY_ENTRY\n";
  for (const model::Bridge &B : Set.Bridges)
    OS << "  {" << cstr(B.Name) << ", &bridge::gen::mapping_" << B.Name << "::kTable},\n";
  OS << "#endif // BRIDGE_GET_REGISTRY_ENTRY\n\n#ifdef BRIDGE_GET_SCHEMA_CHECK\n";
  for (const model::Bridge &B : Set.Bridges)
    OS << "static_assert(bridge::gen::mapping_" << B.Name
       << "::kSchemaHash == bridge::gen::schema::kSchemaHash, \"" << B.Name
       << " was compiled against another schema\");\n";
  OS << "#endif // BRIDGE_GET_SCHEMA_CHECK\n";
}

void bridgec::emitSchemaTable(const model::Schema &S, const llvm::SourceMgr &SM, uint64_t SchemaHash,
                              llvm::raw_ostream &OS) {
  banner(OS, "Megatron-side schema '" + S.Name + "'");
  TableWriter W(SM, S);
  std::vector<std::string> Fields, Ranges, Params;
  std::string File = "compiler/schema/megatron.bridge";
  for (auto &F : S.Fields)
    Fields.push_back("{" + cstr(F.Name) + ", bridge::ValueKind::" + kindId(F.Ty.Kind) + ", " +
                     (F.Ty.Optional ? "true" : "false") + ", " + W.strings(F.Ty.EnumValues) + ", " +
                     W.expr(F.Default, {}) + "}");
  for (auto &R : S.Ranges)
    Ranges.push_back("{" + cstr(R.Name) + ", " + cstr(R.Var) + ", " + W.expr(R.Count, {}) + "}");
  for (auto &P : S.Params) {
    std::vector<std::string> Shape, Conds;
    for (auto &D : P.Shape)
      Shape.push_back(W.expr(D, P.Captures));
    for (auto &C : P.Conditions)
      Conds.push_back(W.expr(C, P.Captures));
    std::string Local = W.literalPattern(P.LocalLiterals), TE = W.literalPattern(P.TELiterals);
    auto DistPattern = [&](const std::vector<std::pair<std::string, int>> &Pieces) {
      std::vector<std::string> Items;
      for (auto &[Lit, Cap] : Pieces) {
        if (Cap < 0) {
          if (!Lit.empty())
            Items.push_back("{" + cstr(Lit) + ", {{nullptr, 0}, nullptr}}");
          continue;
        }
        std::string Code =
            W.array("bridge::Insn", "kCode", {"{bridge::ExprOp::LoadVar, " + std::to_string(Cap) + ", 0, nullptr}"});
        Items.push_back("{nullptr, {" + Code + ", nullptr}}");
      }
      return W.array("bridge::PatternPiece", "kPattern", Items);
    };
    std::string Dist = DistPattern(P.DistPieces), LocalDist = DistPattern(P.LocalDistPieces);
    std::string Caps = W.strings(P.Captures), ShapeSpan = W.array("bridge::Expr", "kShape", Shape),
                CondSpan = W.array("bridge::Expr", "kConds", Conds);
    Params.push_back("{" + cstr(P.Key) + ", " + cstr(P.TEKey) + ", " + Local + ", " + TE + ", " + Dist + ", " + LocalDist + ", " + Caps + ", " +
                     ShapeSpan + ", " + CondSpan + ", bridge::Style::" + styleId(P.ParallelStyle) + ", " +
                     (P.Expert ? "true" : "false") + ", " + W.loc(P.Loc, File) + "}");
  }
  std::string FieldSpan = W.array("bridge::FieldInfo", "kFields", Fields);
  std::string RangeSpan = W.array("bridge::RangeInfo", "kRanges", Ranges);
  std::string ParamSpan = W.array("bridge::ParamInfo", "kParams", Params);
  OS << "#ifdef BRIDGE_GET_SCHEMA\n"
     << "static_assert(bridge::kTableAbiVersion == 2, \"generated by an incompatible bridgec\");\n"
     << "namespace bridge::gen::schema {\n"
     << "constexpr unsigned long long kSchemaHash = " << llvm::format_hex(SchemaHash, 18) << "ull;\n"
     << W.Decls << "constexpr bridge::SchemaTable kSchema = {" << cstr(S.Name) << ", " << FieldSpan << ", "
     << RangeSpan << ", " << ParamSpan << "};\n"
     << "} // namespace bridge::gen::schema\n#endif // BRIDGE_GET_SCHEMA\n";
}

// ---- recipes -------------------------------------------------------------------
void bridgec::emitRecipeTable(const std::vector<recipe::Recipe> &Recipes, const llvm::SourceMgr &SM,
                                      llvm::raw_ostream &OS) {
  OS << "// Generated by bridgec --emit=recipes. Do not edit.\n";
  OS << "#include \"bridge/Recipe.h\"\n\n";
  OS << "static_assert(bridge::kRecipeTableVersion == 3, \"bridgec and the runtime disagree on the recipe table\");\n\n";
  OS << "namespace {\n";
  for (size_t N = 0; N < Recipes.size(); ++N) {
    const recipe::Recipe &R = Recipes[N];
    OS << "// " << R.Name << ": " << llvm::formatv("{0:f1}", R.Facts.total() / 1e9) << "B parameters, "
       << llvm::formatv("{0:f2}", R.FlopsPerToken / 1e9) << " GFLOPs per training token; per GPU "
       << llvm::formatv("{0:f1}", R.Memory.Weights / double(1ull << 30)) << " GiB weights and optimizer state, "
       << llvm::formatv("{0:f1}", R.Memory.Activations / double(1ull << 30)) << " GiB activations\n";
    OS << "constexpr bridge::RecipeSettingEntry Settings" << N << "[] = {\n";
    for (auto &[Key, V] : R.Settings)
      OS << "    {" << cstr(Key) << ", " << cstr(V.json()) << "},\n";
    OS << "};\n";
    // The config as a raw string would need a delimiter it does not hold;
    // an escaped string is simpler and as exact.
    OS << "constexpr const char *Model" << N << " = " << cstr(R.ModelConfigText) << ";\n";
  }
  OS << "constexpr bridge::RecipeEntry Recipes[] = {\n";
  for (size_t N = 0; N < Recipes.size(); ++N) {
    const recipe::Recipe &R = Recipes[N];
    unsigned Buffer = SM.FindBufferContainingLoc(R.Loc.Start);
    std::string Where = Buffer ? llvm::formatv("{0}:{1}", llvm::sys::path::filename(SM.getMemoryBuffer(Buffer)->getBufferIdentifier()),
                                               SM.getLineAndColumn(R.Loc.Start, Buffer).first)
                                     .str()
                               : R.Name;
    OS << "    {" << cstr(R.Name) << ", " << cstr(Where) << ", {Settings" << N << ", " << R.Settings.size()
       << "}, Model" << N << ", " << llvm::formatv("{0:e}", R.Memory.Weights) << ", "
       << llvm::formatv("{0:e}", R.Memory.Activations) << ", " << llvm::formatv("{0:e}", R.Facts.total()) << ", "
       << llvm::formatv("{0:e}", R.FlopsPerToken) << "},\n";
  }
  if (Recipes.empty())
    OS << "    {\"\", \"\", {}, \"\", 0, 0, 0, 0},\n";
  OS << "};\n} // namespace\n\n";
  OS << "bridge::Span<bridge::RecipeEntry> bridge::allRecipes() { return {Recipes, " << Recipes.size() << "}; }\n";
}
