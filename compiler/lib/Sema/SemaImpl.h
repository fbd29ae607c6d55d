//===- SemaImpl.h - state shared by the Sema translation units ---*- C++ -*-===//
//
// Private to compiler/lib/Sema. Checking is split by job, one file each:
//   SemaLoad.cpp    reading the main file and its imports (cycles reported)
//   SemaSchema.cpp  the schema model: fields, ranges, parameters, styles
//   SemaExpr.cpp    types of expressions and builtin calls (Builtins.def)
//   SemaDecl.cpp    one bridge or fragment declaration: matches, config, export
//   SemaWeights.cpp weight rules: patterns, loops, tensor/ignore/tie rules
//   SemaOps.cpp     rule sources: ops, transforms, declared quantization
//   SemaBridge.cpp  a whole bridge: inheritance, duplicates, claims, coverage
//   Sema.cpp        the order of the stages
// The Analyzer resolves each declaration once; assembleBridge then combines
// a bridge of the main file with its fragments.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGEC_LIB_SEMA_SEMAIMPL_H
#define BRIDGEC_LIB_SEMA_SEMAIMPL_H

#include "bridgec/AST/AST.h"
#include "bridgec/Basic/Diagnostic.h"
#include "bridgec/Sema/Model.h"

#include "llvm/Support/GlobPattern.h"

#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace bridgec::sema {

// ---- value kinds and parallel styles ------------------------------------------------
const char *kindName(bridge::ValueKind K);
inline bool isList(bridge::ValueKind K) {
  return K == bridge::ValueKind::IntList || K == bridge::ValueKind::FloatList || K == bridge::ValueKind::List;
}
inline bool isNumeric(bridge::ValueKind K) { return K == bridge::ValueKind::Int || K == bridge::ValueKind::Float; }

const char *styleName(bridge::Style S);
/// The style spelled \p N, never 'any' (which only ops declare).
std::optional<bridge::Style> styleByName(const std::string &N);
/// Every style a rule or parameter may name.
std::vector<std::string> styleNames();

/// One piece of a name as written: 'text', '{i}' or '{a,b}'.
std::string printPiece(const ast::PatternPiece &Pc);

/// The static type of an expression: a kind, or the null literal.
struct Ty {
  bridge::ValueKind K = bridge::ValueKind::Any;
  bool Null = false;
  std::string str() const { return Null ? "null" : kindName(K); }
};

/// Where an expression is evaluated, and what it may read.
struct Scope {
  std::vector<std::string> Vars; ///< loop variables or captures, innermost last
  bool AllowHF = false;
  const char *What = "an expression";
  std::vector<std::pair<std::vector<std::string>, llvm::SMRange>> *HFReads = nullptr;
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
  std::vector<std::vector<std::pair<std::vector<std::string>, llvm::SMRange>>> ConfigHFReads;
  std::vector<model::ExportRule> Export;
  std::vector<model::TensorRule> Tensors;
  std::vector<model::IgnoreRule> Ignores;
  std::vector<model::TieRule> Ties;
  std::vector<std::string> ModelTypes, Architectures;
  std::vector<std::pair<std::string, std::string>> Aliases;
  std::vector<model::Requirement> Requires;
};

/// Builds the schema model, then resolves declarations one at a time
/// against it.
class Analyzer {
public:
  Analyzer(DiagnosticEngine &D, model::Schema &S) : D(D), S(S) {}

  void buildSchema(const ast::SchemaDecl &SD);
  Resolved resolve(const ast::BridgeDecl &B);

private:
  // -- expressions (SemaExpr.cpp) ---------------------------------------------------
  Ty check(const ast::Expr &E, Scope &Sc);
  static Ty join(Ty A, Ty B);
  void expectBool(const ast::Expr &E, Ty T, const std::string &What);
  Ty checkBinary(const ast::Expr &E, Scope &Sc);
  Ty checkCall(const ast::Expr &E, Scope &Sc);
  /// Checks that a value of type \p V may be stored in \p F.
  void checkAssignable(const ast::Expr &Value, Ty V, const model::Field &F, const std::string &What);
  void checkEnumLiterals(const ast::Expr &E, const model::Field &F);

  // -- schema (SemaSchema.cpp) --------------------------------------------------------
  struct Prefix;
  bool extend(Prefix &Pre, const ast::Pattern &P);
  void addUse(const ast::UseDecl &U, const Prefix &Outer, std::map<std::string, const ast::BlockDecl *> &Blocks,
              unsigned Depth);
  void addParam(const ast::ParamDecl &PD, const Prefix &Pre);

  // -- weight rules (SemaWeights.cpp) ---------------------------------------------------
  std::vector<model::Pattern> expand(const ast::Pattern &P, Scope &Sc);
  static void appendLiteral(model::Pattern &P, const std::string &T);
  static void collectVars(const ast::Expr &E, const Scope &Sc, std::set<std::string> &Out);
  void resolveItem(const ast::WeightItem &It, std::vector<model::Loop> &Loops, Scope &Sc, Resolved &R);
  void resolveFor(const ast::ForBlock &F, std::vector<model::Loop> &Loops, Scope &Sc, Resolved &R);
  bool resolveRowParts(const ast::TensorRule &T, std::vector<model::Loop> &Loops, Scope &Sc, Resolved &R);
  void resolveTensor(const ast::TensorRule &T, std::vector<model::Loop> &Loops, Scope &Sc, Resolved &R);

  // -- sources, ops and declared quantization (SemaOps.cpp) ---------------------------
  /// A glob of a 'quantized' declaration of the bridge being resolved.
  struct QuantizedGlob {
    std::string Glob;
    llvm::GlobPattern Pattern;
    std::string Op;     ///< the dequantization op
    std::string Suffix; ///< the scale's name: the tensor's plus this
    llvm::SMRange Range, DeclRange;
    bool Used = false;
  };
  void declareQuantized(const ast::BridgeDecl &B);
  QuantizedGlob *quantizedFor(const model::Pattern &P);
  static ast::Pattern astPattern(const model::Pattern &P, llvm::SMRange Range, const std::string &Suffix = "");
  unsigned buildSource(const ast::Source &Src, Scope &Sc, std::vector<model::OpNode> &Out, std::set<std::string> &Vars,
                       bool &OK);
  bool opsFitTarget(const model::TensorRule &TR, const model::Param &P, const std::string &Target);

  DiagnosticEngine &D;
  model::Schema &S;
  std::vector<QuantizedGlob> Quantized;
  /// Building the inputs of a dequantization op: its sources are read as
  /// they are written.
  bool InDequant = false;
};

// ---- whole bridges (SemaBridge.cpp) -------------------------------------------------
/// Every bridge and fragment declaration of the loaded files, each resolved
/// once, by name.
struct ResolvedDecls {
  std::map<std::string, const ast::BridgeDecl *> ByName;
  std::map<const ast::BridgeDecl *, Resolved> ByDecl;
};

/// Bridge \p B of the main file \p File merged with the fragments it
/// inherits, checked for what only the whole bridge shows. \p MatchedBy maps
/// each 'model_type:<value>' matched so far to its bridge.
model::Bridge assembleBridge(const ast::BridgeDecl &B, const std::string &File, ResolvedDecls &Decls,
                             const model::Schema &S, std::map<std::string, std::string> &MatchedBy,
                             DiagnosticEngine &Diags);

} // namespace bridgec::sema

#endif
