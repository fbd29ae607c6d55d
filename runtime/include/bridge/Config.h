//===- Config.h - evaluating the generated tables ----------------*- C++ -*-===//
//
// Config import (HF config.json -> Megatron model config), config export (the
// reverse), and the expansion of weight rules over layers and experts into
// concrete tensor names. Values are JSON values; expressions are the
// bytecode bridgec emitted. Errors name the .bridge line that failed.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_CONFIG_H
#define BRIDGE_CONFIG_H

#include "bridge/Error.h"
#include "bridge/Table.h"

#include <nlohmann/json.hpp>

#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace bridge {

using Json = nlohmann::ordered_json;

/// What an expression may read.
struct EvalEnv {
  const Json *HF = nullptr;               ///< config.json; null during export
  const std::vector<Json> *Fields = nullptr; ///< Megatron config, by schema index
  const SchemaTable *Schema = nullptr;
  const std::vector<int64_t> *Vars = nullptr; ///< loop variables / captures
  Span<HFAlias> Aliases;                    ///< other spellings of HF fields
  /// When set, reads Megatron fields through it (config import applies a
  /// field's schema default the first time a rule reads it unset).
  const std::function<Json(uint32_t)> *ResolveField = nullptr;
};

/// Every spelling of \p Path (dotted) the aliases allow, in the order they
/// are tried: as written and through each alias of it or of a prefix of it,
/// each first inside every section an alias with an empty primary names
/// ('alias hf = hf.text_config;'), then at the top level.
std::vector<std::string> hfSpellings(const std::string &Path, Span<HFAlias> Aliases);

/// Whether \p Path (dotted) is in \p HF, under its own spelling or an alias.
bool hfPathPresent(const Json &HF, const std::string &Path, Span<HFAlias> Aliases);

/// Evaluates \p E; throws Error with \p Where prepended.
Json evaluate(const Expr &E, const EvalEnv &Env, const std::string &Where);
/// Evaluates a condition: a bool, or null meaning false. An absent
/// expression is true.
bool evaluateCondition(const Expr &E, const EvalEnv &Env, const std::string &Where);

std::string describe(const SourceLoc &L);

/// The capture variable that schema patterns use for range \p RangeName
/// ("layers" -> "i" in megatron.bridge); empty when the schema has no such
/// range. Lets the runtime find layer and expert indices without assuming
/// the schema's spelling.
std::string rangeVar(const SchemaTable &S, std::string_view RangeName);

/// HF config.json -> Megatron model config (every schema field, defaults
/// applied), in schema order.
std::vector<Json> importConfig(const MappingTable &T, const SchemaTable &S, const Json &HF);
/// The Megatron config as a JSON object (null fields left out).
Json configToJson(const SchemaTable &S, const std::vector<Json> &Fields);
/// The inverse: a JSON object back to schema-ordered fields.
std::vector<Json> configFromJson(const SchemaTable &S, const Json &Obj, const std::string &File = "");
/// Megatron model config -> the HF config.json the export writes. With a
/// \p Reference (the source config.json), fields with aliases are spelled
/// as the reference spelled them.
Json exportConfig(const MappingTable &T, const SchemaTable &S, const std::vector<Json> &Fields,
                  const Json *Reference = nullptr);

const char *styleName(Style S);

} // namespace bridge

#endif
