//===- Recipe.h - the recipe table bridgec generates --------------*- C++ -*-===//
//
// Each recipe as bridgec checked it: every setting of RecipeKeys.def (its
// value as JSON text, defaults filled in), the model's published config.json
// and the memory estimate. The runtime turns it into a Megatron-Bridge YAML
// override or Megatron-LM arguments (runtime/lib/recipe), and `import
// --recipe` takes its layout.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_RECIPE_H
#define BRIDGE_RECIPE_H

#include "bridge/Table.h"

namespace bridge {

inline constexpr unsigned kRecipeTableVersion = 3;

struct RecipeSettingEntry {
  const char *Key;
  const char *Json; ///< the value as JSON text
};

struct RecipeEntry {
  const char *Name;
  const char *Source; ///< "file:line" of its declaration
  Span<RecipeSettingEntry> Settings;
  const char *ModelConfig; ///< the model's config.json text
  double WeightBytes, ActivationBytes; ///< the estimate per GPU bridgec checked
  double Parameters;                   ///< the model's, as bridgec counts them from its config
  double FlopsPerToken;                ///< training FLOPs of one token (forward and backward) at seq_length
};

/// Every compiled recipe, in declaration order (defined by the generated
/// table; empty when the build has none).
Span<RecipeEntry> allRecipes();

} // namespace bridge

#endif
