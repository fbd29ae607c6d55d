//===- AST.h - syntax tree of .bridge files ----------------------*- C++ -*-===//
//
// Our own AST: no ANTLR type appears here. Every node carries the source
// range it was parsed from, so every later diagnostic can point at it.
// The tree is built once by Parse/ and only read afterwards.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGEC_AST_AST_H
#define BRIDGEC_AST_AST_H

#include "llvm/Support/SMLoc.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace bridgec::ast {

using llvm::SMRange;

struct Expr;
using ExprP = std::shared_ptr<const Expr>;

/// An expression over HF config fields (hf.a.b), Megatron config fields and
/// loop variables (bare names), literals, calls of builtins and operators.
struct Expr {
  enum Kind { Int, Float, String, Bool, Null, HFPath, Name, Call, List, Unary, Binary, Coalesce, Ternary };
  Kind K;
  SMRange Range;
  int64_t IntVal = 0;
  double FloatVal = 0;
  bool BoolVal = false;
  std::string Text;              ///< string value, name, callee, operator spelling, or number spelling
  std::vector<std::string> Path; ///< HFPath segments after 'hf.'
  std::vector<ExprP> Ops;        ///< operands / call arguments / list items
  /// Non-empty on a use of a 'let' (this node is the copy of its
  /// expression put there): the use as written ('x', or '-x' folded), which
  /// the formatter prints instead of the expression.
  std::string LetUse;
};

/// A piece of a tensor-name pattern. Literal pieces hold text including
/// dots ("model.layers."), captures hold an expression ("{i}", "{k + n}"),
/// alternatives hold names ("{q,k,v}").
struct PatternPiece {
  enum Kind { Literal, Capture, Alternatives };
  Kind K;
  SMRange Range;
  std::string Text;
  ExprP E;
  std::vector<std::string> Alts;
};

struct Pattern {
  SMRange Range;
  std::vector<PatternPiece> Pieces;
};

/// 'when COND { ... }' in a config, export or weights section: a guard
/// written once for the rules inside. The builder expands it: each rule's
/// When is the conjunction of its groups' conditions (outermost first) and
/// its own, so later phases see only plain rules; the groups stay for the
/// formatter and for locations.
struct GuardGroup {
  SMRange Range;
  ExprP Cond;                              ///< as written
  std::shared_ptr<const GuardGroup> Outer; ///< the enclosing group, if any
};
using GuardGroupP = std::shared_ptr<const GuardGroup>;

struct Source;
using SourceP = std::shared_ptr<const Source>;

struct OpArg {
  SMRange Range;
  std::string Param; ///< non-empty for 'name = expr'
  SMRange ParamRange;
  ExprP Value;       ///< for named params
  SourceP Src;       ///< for tensor inputs
};

/// The right-hand side of a weight rule: a tensor pattern or an op applied to
/// inputs ('qkv(...)', '@custom(...)').
struct Source {
  enum Kind { PatternRef, Op };
  Kind K;
  SMRange Range;
  Pattern Pat;
  std::string OpName;
  SMRange OpNameRange;
  bool Escape = false; ///< '@name(...)': a registered runtime transform
  /// 'name?' as an op input: when the checkpoint lacks it, the op is not
  /// applied and passes its first input through (FP8 scales).
  bool OptionalInput = false;
  std::vector<OpArg> Args;
};

struct TensorRule {
  SMRange Range;
  bool Optional = false;
  bool Override = false;
  Pattern Target;
  /// One or more ('a | b'): alternative source layouts, the first preferred.
  std::vector<SourceP> Alternatives;
  std::string Style; ///< empty when not written
  SMRange StyleRange;
  ExprP When;          ///< in effect: the enclosing groups' conditions && OwnWhen
  ExprP OwnWhen;       ///< the rule's own 'when', as written
  GuardGroupP Group;   ///< the innermost enclosing guarded group, if any
};

struct IgnoreRule {
  SMRange Range;
  Pattern Pat;
  ExprP When;          ///< in effect: the enclosing groups' conditions && OwnWhen
  ExprP OwnWhen;       ///< the rule's own 'when', as written
  GuardGroupP Group;   ///< the innermost enclosing guarded group, if any
};

struct TieRule {
  SMRange Range;
  Pattern Copy; ///< the HF tensor that duplicates ...
  Pattern Of;   ///< ... this one
  ExprP When;          ///< in effect: the enclosing groups' conditions && OwnWhen
  ExprP OwnWhen;       ///< the rule's own 'when', as written
  GuardGroupP Group;   ///< the innermost enclosing guarded group, if any
};

struct ForBlock;
struct WeightBlock;
struct WeightUse;
struct WeightItem {
  enum Kind { TensorItem, IgnoreItem, TieItem, ForItem, BlockItem, UseItem };
  Kind K;
  std::shared_ptr<const TensorRule> Tensor;
  std::shared_ptr<const IgnoreRule> Ignore;
  std::shared_ptr<const TieRule> Tie;
  std::shared_ptr<const ForBlock> For;
  std::shared_ptr<const WeightBlock> Block;
  std::shared_ptr<const WeightUse> Use;
};

/// 'block NAME { ... }' in a weights section: rules with relative names,
/// for 'use' to instantiate. Later phases see only its uses' expansions.
struct WeightBlock {
  SMRange Range;
  std::string Name;
  SMRange NameRange;
  std::vector<WeightItem> Items; ///< as written (relative names)
  GuardGroupP Group;             ///< the innermost enclosing guarded group, if any
};

/// 'use NAME at PREFIX from HF_PREFIX;': the block's rules with PREFIX
/// before each Megatron name and HF_PREFIX before each HF name, built by
/// the builder as if written out here (Expanded, in the block's order);
/// the use itself stays for the formatter.
struct WeightUse {
  SMRange Range;
  std::string Name;
  SMRange NameRange;
  Pattern At, From;
  std::vector<WeightItem> Expanded;
  GuardGroupP Group; ///< the innermost enclosing guarded group, if any
};

struct ForBlock {
  SMRange Range;
  std::string Var;
  SMRange VarRange;
  std::string RangeName; ///< named range ('layers'); empty when bounds are given
  SMRange RangeNameRange;
  ExprP Begin, End;      ///< 'a .. b' (half-open)
  ExprP Where;
  std::vector<WeightItem> Items;
  GuardGroupP Group; ///< the innermost enclosing guarded group, if any
};

struct MatchDecl {
  SMRange Range;
  std::string Key;
  SMRange KeyRange;
  std::string Value;
};

/// 'alias hf.a = hf.b;': two spellings of one HF config field.
struct AliasDecl {
  SMRange Range;
  std::vector<std::string> Primary, Alternative;
};

struct ConfigAssign {
  SMRange Range;
  bool Override = false;
  std::string Field;
  SMRange FieldRange;
  ExprP Value;
  ExprP When;          ///< in effect: the enclosing groups' conditions && OwnWhen
  ExprP OwnWhen;       ///< the rule's own 'when', as written
  GuardGroupP Group;   ///< the innermost enclosing guarded group, if any
};

/// 'require cond, "message";' in a config block.
struct RequireStmt {
  SMRange Range;
  ExprP Cond;
  std::string Message;
};

struct ExportAssign {
  SMRange Range;
  bool Override = false;
  std::vector<std::string> Path; ///< HF path after 'hf.'
  SMRange PathRange;
  ExprP Value;
  ExprP When;          ///< in effect: the enclosing groups' conditions && OwnWhen
  ExprP OwnWhen;       ///< the rule's own 'when', as written
  GuardGroupP Group;   ///< the innermost enclosing guarded group, if any
};

struct NameRef {
  std::string Name;
  SMRange Range;
};

/// 'let NAME = EXPR;' in a bridge or fragment: a name for an expression. The
/// builder puts a copy of Value at each use (Expr::LetUse marks it), so later
/// phases see only the expression written out; the declaration stays for the
/// formatter and for Sema's check of its name.
struct LetDecl {
  SMRange Range;
  std::string Name;
  SMRange NameRange;
  ExprP Value;
};

/// 'quantized SCHEME(scale = "SUFFIX") for "GLOB", ...;' at the start of a
/// weights section: the HF sources of the bridge's rules matching a glob are
/// dequantized by the scheme's op with NAME + SUFFIX as the optional scale.
struct QuantizedDecl {
  SMRange Range;
  std::string Scheme;
  SMRange SchemeRange;
  std::string Param; ///< must be 'scale'
  SMRange ParamRange;
  std::string Suffix;
  std::vector<std::pair<std::string, SMRange>> Globs;
};

struct BridgeDecl {
  SMRange Range;
  bool IsFragment = false;
  std::string Name;
  SMRange NameRange;
  std::vector<NameRef> Bases;
  std::vector<MatchDecl> Matches;
  std::vector<AliasDecl> Aliases;
  std::vector<ConfigAssign> Config;
  std::vector<RequireStmt> Requires;
  std::vector<ExportAssign> Export;
  std::vector<QuantizedDecl> Quantized;
  std::vector<WeightItem> Weights;
  std::vector<LetDecl> Lets;
  /// Where the first config, export and weights section starts (invalid
  /// when there is none): the formatter prints each 'let' before the
  /// section that followed it.
  llvm::SMLoc ConfigAt, ExportAt, WeightsAt;
};

// ---- schema -------------------------------------------------------------------
struct TypeRef {
  SMRange Range;
  std::string Name;                ///< int, float, bool, string, enum, int_list, float_list, list
  std::vector<std::string> Values; ///< enum values
  bool Optional = false;
};

struct FieldDecl {
  SMRange Range;
  std::string Name;
  SMRange NameRange;
  TypeRef Type;
  ExprP Default;
};

struct RangeDecl {
  SMRange Range;
  std::string Name;
  std::string Var; ///< the capture name schema patterns use for it
  ExprP Count;
};

struct ParamDecl {
  SMRange Range;
  Pattern Local;
  std::vector<ExprP> Shape;
  /// '[..]': a pass-through parameter ('prefix.**') takes each tensor's
  /// shape from the checkpoint.
  bool ShapeFromCheckpoint = false;
  std::string Style;
  SMRange StyleRange;
  bool HasTE = false;
  Pattern TE;
  bool HasDist = false;
  Pattern Dist; ///< torch_dist key when not the TE name with captures as axes
  bool HasLocalDist = false;
  Pattern LocalDist; ///< torch_dist key a local-spec model uses, when it differs
  bool Expert = false;
  ExprP When;
};

struct UseDecl {
  SMRange Range;
  std::string Block;
  SMRange BlockRange;
  Pattern At;
  ExprP When;
};

struct BlockDecl {
  SMRange Range;
  std::string Name;
  std::vector<ParamDecl> Params;
  std::vector<UseDecl> Uses;
};

struct SchemaDecl {
  SMRange Range;
  std::string Name;
  std::vector<FieldDecl> Fields;
  std::vector<RangeDecl> Ranges;
  std::vector<BlockDecl> Blocks;
  std::vector<ParamDecl> Params;
  std::vector<UseDecl> Uses;
};

struct ImportDecl {
  SMRange Range;
  std::string Path;
};

// ---- recipes ------------------------------------------------------------------
struct RecipeSetting {
  SMRange Range;
  std::string Key;
  SMRange KeyRange;
  ExprP Value;
};

/// 'recipe NAME : presets { key = value; ... }', or a 'preset' (settings to
/// inherit, never listed by itself).
struct RecipeDecl {
  SMRange Range;
  bool IsPreset = false;
  std::string Name;
  SMRange NameRange;
  std::vector<NameRef> Bases;
  std::vector<RecipeSetting> Settings;
};

/// A '#' comment, kept so the formatter can reprint it.
struct Comment {
  llvm::SMLoc Loc;
  std::string Text;
};

struct File {
  std::string Path;
  std::vector<Comment> Comments; ///< in source order
  unsigned BufferID = 0;
  std::vector<ImportDecl> Imports;
  std::vector<BridgeDecl> Bridges;
  std::vector<SchemaDecl> Schemas;
  std::vector<RecipeDecl> Recipes;
};

} // namespace bridgec::ast

#endif
