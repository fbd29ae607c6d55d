//===- Model.h - the checked, immutable semantic model ------------*- C++ -*-===//
//
// Sema builds this once from the AST (plus imports and the schema); emitters
// and dumpers only read it. Expressions stay AST nodes: Sema has checked them,
// and their names resolve by a fixed rule (a loop variable of the enclosing
// rule first, then a Megatron config field).
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGEC_SEMA_MODEL_H
#define BRIDGEC_SEMA_MODEL_H

#include "bridge/Table.h"
#include "bridgec/AST/AST.h"

#include <map>
#include <string>
#include <vector>

namespace bridgec::model {

using llvm::SMRange;

/// A pass-through name ('visual.**'): every tensor under the prefix.
inline bool isGlob(const std::string &Name) {
  return Name.size() >= 3 && Name.compare(Name.size() - 3, 3, ".**") == 0;
}

struct Type {
  bridge::ValueKind Kind = bridge::ValueKind::Any;
  bool Optional = false;
  std::vector<std::string> EnumValues;
  std::string str() const;
};

struct Field {
  unsigned Index;
  std::string Name;
  Type Ty;
  ast::ExprP Default;
  SMRange Loc;
};

struct Range {
  unsigned Index;
  std::string Name;
  std::string Var;
  ast::ExprP Count;
  SMRange Loc;
};

/// A name pattern: literal text between captures. Literals.size() is
/// Captures.size() + 1 for schema parameters.
struct Param {
  unsigned Index;
  std::string Key;   ///< local-spec spelling, '{}' per capture
  std::string TEKey; ///< TE spelling (equal to Key when the same)
  std::vector<std::string> LocalLiterals, TELiterals;
  /// The torch_dist key: literal text and capture positions; captures it
  /// leaves out become leading axes of the stored tensor.
  std::vector<std::pair<std::string, int>> DistPieces, LocalDistPieces;
  std::vector<std::string> Captures;
  std::vector<ast::ExprP> Shape;
  std::vector<ast::ExprP> Conditions;
  bridge::Style ParallelStyle;
  bool Expert;
  SMRange Loc;
};

struct Schema {
  std::string Name;
  std::vector<Field> Fields;
  std::map<std::string, unsigned> FieldIndex;
  std::vector<Range> Ranges;
  std::map<std::string, unsigned> RangeIndex;
  std::vector<Param> Params;
  std::map<std::string, std::vector<unsigned>> ParamByKey; ///< local and TE keys
  const Field *field(const std::string &N) const {
    auto It = FieldIndex.find(N);
    return It == FieldIndex.end() ? nullptr : &Fields[It->second];
  }
};

/// A pattern of a rule, alternatives already expanded.
struct Pattern {
  struct Piece {
    std::string Literal; ///< when E is null
    ast::ExprP E;
  };
  std::vector<Piece> Pieces;
  SMRange Loc;
  std::string str() const; ///< canonical spelling ('{i}' for captures)
};

struct Loop {
  std::string Var;
  int RangeIndex = -1; ///< into Schema::Ranges, or -1 with Begin/End
  ast::ExprP Begin, End, Where;
  SMRange Loc;
};

struct OpNode {
  bool IsSource = false;
  bool OptionalInput = false; ///< a source the checkpoint may lack
  bridge::Op Kind = bridge::Op::Identity;
  bridge::Transform Custom = bridge::Transform::None;
  std::string Name; ///< op or transform name
  unsigned NumInputs = 0;
  Pattern Source;
  std::vector<std::pair<std::string, ast::ExprP>> Params; ///< defaults filled in
  SMRange Loc;
};

struct TensorRule {
  std::vector<unsigned> Params; ///< candidates with the target's name
  bool TargetIsTE = false;
  Pattern Target;
  std::vector<Loop> Loops;
  /// Each alternative source layout's op tree, postfix; the first is the
  /// preferred one (and the one export inverts).
  std::vector<std::vector<OpNode>> Alternatives;
  ast::ExprP When;
  bool Optional = false;
  bool Override = false;
  SMRange Loc;
};

struct IgnoreRule {
  Pattern Pat;
  std::vector<Loop> Loops;
  ast::ExprP When;
  SMRange Loc;
};

struct TieRule {
  Pattern Copy, Of;
  std::vector<Loop> Loops;
  ast::ExprP When;
  SMRange Loc;
};

struct ConfigRule {
  unsigned Field;
  ast::ExprP Value, When;
  bool Override = false;
  SMRange Loc;
};

struct Requirement {
  ast::ExprP Cond;
  std::string Message;
  SMRange Loc;
};

struct ExportRule {
  std::vector<std::string> Path;
  ast::ExprP Value, When;
  bool Override = false;
  bool Derived = false; ///< reversed automatically from a config rename
  SMRange Loc;
  std::string path() const;
};

struct Bridge {
  std::string Name;
  std::string File;
  SMRange Loc;
  std::vector<std::string> ModelTypes, Architectures;
  /// HF config spellings: (primary, alternative) dotted paths.
  std::vector<std::pair<std::string, std::string>> Aliases;
  std::vector<Requirement> Requires; ///< checked before the config map
  std::vector<ConfigRule> Config; ///< dependency order
  std::vector<ExportRule> Export;
  std::vector<TensorRule> Tensors;
  std::vector<IgnoreRule> Ignores;
  std::vector<TieRule> Ties;
};

/// The result of compiling one main file: the bridges it declares.
struct MappingSet {
  const Schema *TheSchema = nullptr;
  std::vector<Bridge> Bridges;
};

} // namespace bridgec::model

#endif
