//===- Table.h - the data bridgec generates ----------------------*- C++ -*-===//
//
// Plain aggregates that generated tables instantiate as constexpr data; the
// algorithms that interpret them live in runtime/lib. Shared by bridgec (which
// writes them) and the runtime (which reads them): bump kTableAbiVersion when
// a layout changes; generated files static_assert it.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_TABLE_H
#define BRIDGE_TABLE_H

#include <cstddef>
#include <cstdint>

namespace bridge {

inline constexpr unsigned kTableAbiVersion = 2;

/// A pointer and a count, usable in constant expressions.
template <typename T> struct Span {
  const T *Data = nullptr;
  uint32_t Size = 0;
  constexpr const T *begin() const { return Data; }
  constexpr const T *end() const { return Data + Size; }
  constexpr const T &operator[](uint32_t I) const { return Data[I]; }
  constexpr bool empty() const { return Size == 0; }
};

enum class Op : uint8_t {
#define BRIDGE_OP(Id, Name, MinIn, MaxIn, Params, Ranks, Style, Inverse) Id,
#include "bridge/Ops.def"
};

enum class Style : uint8_t {
#define BRIDGE_STYLE(Id, Name, Doc) Id,
#include "bridge/Styles.def"
};

enum class Transform : uint8_t {
  None,
#define BRIDGE_TRANSFORM(Id, Name, Inputs, Doc) Id,
#include "bridge/Transforms.def"
};

enum class ValueKind : uint8_t { Int, Float, Bool, String, IntList, FloatList, List, Any };

/// Expression bytecode for a small stack machine (runtime/lib/config/Eval).
/// Jumps are relative to the next instruction.
enum class ExprOp : uint8_t {
  PushInt,     ///< A = value (I64)
  PushFloat,   ///< F = value
  PushBool,    ///< A = 0/1
  PushString,  ///< S = value
  PushNull,
  LoadHF,      ///< S = dotted path in config.json; null when absent
  LoadField,   ///< A = schema field index; S = its name
  LoadVar,     ///< A = loop variable / capture index
  MakeList,    ///< A = number of items popped
  Neg, Not,
  Add, Sub, Mul, Div, FloorDiv, Mod,
  Eq, Ne, Lt, Le, Gt, Ge,
  JumpIfFalse, ///< pops the condition; A = offset
  JumpIfTrue,  ///< pops the condition; A = offset
  JumpIfNotNull, ///< keeps the value if not null, else pops it; A = offset
  Jump,        ///< A = offset
  ToBool,      ///< checks that the top is a bool (null counts as false)
  Call,        ///< S = builtin name, A = argument count
};

struct Insn {
  ExprOp Op;
  int64_t A;
  double F;
  const char *S;
};

struct Expr {
  Span<Insn> Code; ///< empty = absent
  const char *Text; ///< the source text, for messages
};

struct SourceLoc {
  const char *File;
  uint32_t Line;
  uint32_t Col;
};

// ---- schema ------------------------------------------------------------------
struct FieldInfo {
  const char *Name;
  ValueKind Kind;
  bool Optional;
  Span<const char *> EnumValues;
  Expr Default;
};

struct RangeInfo {
  const char *Name;
  const char *Var; ///< capture name of schema patterns that range over it
  Expr Count;
};

/// A tensor-name pattern: literal text and captured indices, alternating.
/// For schema parameters the captures are positional; for rules they are
/// expressions over loop variables.
struct PatternPiece {
  const char *Literal; ///< non-null for literal text
  Expr Index;          ///< for captures
};

struct ParamInfo {
  const char *Key;   ///< local-spec name with '{}' per capture
  const char *TEKey; ///< Transformer Engine name, or the same as Key
  Span<PatternPiece> Local;
  Span<PatternPiece> TE;
  /// The torch_dist key; captures it lacks become leading axes.
  Span<PatternPiece> Dist;
  /// The key a local-spec (no Transformer Engine) model uses.
  Span<PatternPiece> LocalDist;
  Span<const char *> Captures;
  Span<Expr> Shape;        ///< global shape, over config fields
  Span<Expr> Conditions;   ///< all must hold for the tensor to exist
  Style ParallelStyle;
  bool Expert;
  SourceLoc Loc;
};

struct SchemaTable {
  const char *Name;
  Span<FieldInfo> Fields;
  Span<RangeInfo> Ranges;
  Span<ParamInfo> Params;
};

// ---- mappings ------------------------------------------------------------------
struct Loop {
  const char *Var;
  int32_t Range; ///< schema range index, or -1 when Begin/End are given
  Expr Begin, End, Where;
};

struct OpParam {
  const char *Name;
  Expr Value;
};

/// One node of a rule's op tree in postfix order: sources push a tensor, ops
/// pop NumInputs tensors and push their result.
struct OpNode {
  bool IsSource;
  bool OptionalInput; ///< a source the checkpoint may lack; then the op passes its first input through
  Op Kind;
  Transform Custom;
  uint16_t NumInputs;
  Span<PatternPiece> Source;
  Span<OpParam> Params;
};

struct TensorRule {
  /// Schema parameters with the target's name; the runtime takes the one
  /// whose conditions hold (e.g. MLA and standard attention both have
  /// 'self_attention.q_layernorm.weight', with different shapes).
  Span<uint32_t> Params;
  bool TargetIsTE;     ///< the rule named the TE spelling
  Span<PatternPiece> Target;
  Span<Loop> Loops;
  /// Alternative source layouts ('a | b'), each an op tree; import reads the
  /// first whose HF tensors all exist, export writes the first.
  Span<Span<OpNode>> Alternatives;
  Expr When;
  bool Optional;
  SourceLoc Loc;
};

struct IgnoreRule {
  Span<PatternPiece> Pattern;
  Span<Loop> Loops;
  Expr When;
  SourceLoc Loc;
};

struct TieRule {
  Span<PatternPiece> Copy;
  Span<PatternPiece> Of;
  Span<Loop> Loops;
  Expr When;
  SourceLoc Loc;
};

struct ConfigRule {
  uint32_t Field;
  Expr Value;
  Expr When;
  SourceLoc Loc;
};

struct ExportRule {
  const char *HFPath;
  Expr Value;
  Expr When;
  SourceLoc Loc;
};

/// Two spellings of one HF config field (dotted paths).
struct HFAlias {
  const char *Primary;
  const char *Alternative;
};

/// A condition the HF config must meet.
struct Requirement {
  Expr Cond;
  const char *Message;
  SourceLoc Loc;
};

struct MappingTable {
  const char *Name;
  const char *SourceFile;
  Span<const char *> ModelTypes;
  Span<const char *> Architectures;
  Span<HFAlias> Aliases;
  Span<Requirement> Requires;
  Span<ConfigRule> Config;  ///< in dependency order
  Span<ExportRule> Export;
  Span<TensorRule> Tensors;
  Span<IgnoreRule> Ignores;
  Span<TieRule> Ties;
};

struct RegistryEntry {
  const char *Name;
  const MappingTable *Table;
};

} // namespace bridge

#endif
