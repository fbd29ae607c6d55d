//===- Recipes.h - training recipes: checked settings ---------------*- C++ -*-===//
//
// A recipe's settings resolved through its presets and defaults
// (runtime/include/bridge/RecipeKeys.def), its model's facts read from the
// published config.json, the layout checked against the model and the GPUs,
// and a memory estimate per GPU. Emitted as a table the runtime formats as a
// Megatron-Bridge YAML override or Megatron-LM arguments.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGEC_SEMA_RECIPES_H
#define BRIDGEC_SEMA_RECIPES_H

#include "bridgec/AST/AST.h"
#include "bridgec/Basic/Diagnostic.h"

#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/raw_ostream.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace bridgec::recipe {

/// A setting's value: one of the RecipeKeys.def types.
struct Value {
  enum Kind { Int, Float, Bool, String, StringList } K = Int;
  int64_t I = 0;
  double F = 0;
  bool B = false;
  std::string S;
  std::vector<std::string> L;
  /// JSON text: what the table holds.
  std::string json() const;
};

/// What the recipe checks need of a model, from its HF config.json.
struct ModelFacts {
  int64_t Layers = 0, DenseLayers = 0, Hidden = 0, Heads = 0, QueryGroups = 0, HeadDim = 0, Ffn = 0;
  int64_t Experts = 0, TopK = 0, MoeFfn = 0, SharedFfn = 0, Vocab = 0;
  int64_t MaxPositions = 0; ///< max_position_embeddings (0: not given)
  bool Tied = false;
  /// Parameters: attention and dense MLP or shared experts per layer (on
  /// average), routed experts per MoE layer, embedding (one copy).
  double NonExpertPerLayer = 0, ExpertsPerMoeLayer = 0, Embedding = 0;
  /// A VLM's vision tower (the HF module, whole on the first stage).
  double Vision = 0;
  double total() const;
  /// Training FLOPs of one token (Recipes.cpp lists the terms): the forward
  /// FLOPs that do not depend on the sequence length, logits aside (their
  /// vocabulary is padded by TP); multi-token-prediction layers; and per
  /// attention layer the width of its score and value products with its
  /// sliding window (0: full causal attention).
  double ForwardLinearFlops = 0;
  int64_t MtpLayers = 0;
  struct CoreAttention {
    double Width = 0; ///< heads x (query-key head dim + value head dim)
    int64_t Window = 0;
  };
  std::vector<CoreAttention> Cores;
  /// Forward and backward FLOPs of one token at \p SeqLength, the vocabulary
  /// padded to a multiple of 128 x \p TP (Megatron-LM's make_vocab_size_divisible_by).
  double flopsPerToken(int64_t SeqLength, int64_t TP) const;
};

/// Bytes per GPU, the terms of the estimate (first pipeline stage, the most
/// loaded).
struct MemoryEstimate {
  double Weights = 0, Activations = 0; ///< weights: with grads and optimizer state
  double total() const { return Weights + Activations; }
};

struct Recipe {
  std::string Name;
  ast::SMRange Loc;
  std::map<std::string, Value> Settings; ///< every key, defaults included
  std::string ModelConfigText;           ///< the config.json, as published
  ModelFacts Facts;
  MemoryEstimate Memory;
  double FlopsPerToken = 0; ///< Facts.flopsPerToken at the recipe's seq_length and TP
};

/// Checks every recipe and preset of \p Files (diagnostics to \p Diags) and
/// returns the recipes (not presets), in declaration order. Model configs
/// are read from \p ModelsDir (their paths put in \p ModelFiles).
std::vector<Recipe> checkRecipes(const std::vector<const ast::File *> &Files, const std::string &ModelsDir,
                                 DiagnosticEngine &Diags, std::vector<std::string> *ModelFiles = nullptr);

} // namespace bridgec::recipe

#endif
