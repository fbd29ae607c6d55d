//===- Recipes.cpp - training recipes: settings, layout, memory ----------===//
//
// Settings resolve in order: the defaults of RecipeKeys.def, each preset
// named after ':' (itself resolved the same way), the recipe's own. Then the
// model's facts come from its published config.json (recipes/models), and
// the layout is checked the way megatron-core and Megatron-LM check it
// (docs/recipes.md lists each rule with its source). The memory estimate
// follows Megatron-LM's theoretical_memory_usage (Korthikanti et al. 2022):
// weights with gradients and optimizer state, plus activations of the first
// pipeline stage, the most loaded.
//
//===----------------------------------------------------------------------===//
#include "bridgec/Sema/Recipes.h"

#include "bridgec/AST/Print.h"

#include "llvm/ADT/StringExtras.h"
#include "llvm/ADT/StringRef.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/SourceMgr.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <optional>
#include <set>

using namespace bridgec;
using namespace bridgec::recipe;
using llvm::SMRange;

namespace {

enum class KeyType { Int, Float, Bool, String, Enum, StringList };

struct KeyInfo {
  const char *Name;
  KeyType Type;
  const char *Allowed; ///< '|'-separated, for Enum and StringList
  const char *Default; ///< empty: required
  const char *Meaning;
};

const KeyInfo Keys[] = {
#define BRIDGE_RECIPE_KEY(Id, Name, Type, Allowed, Default, Meaning) {Name, KeyType::Type, Allowed, Default, Meaning},
#include "bridge/RecipeKeys.def"
};

const KeyInfo *keyInfo(llvm::StringRef Name) {
  for (const KeyInfo &K : Keys)
    if (Name == K.Name)
      return &K;
  return nullptr;
}

const char *typeWords(KeyType T) {
  switch (T) {
  case KeyType::Int:
    return "an integer";
  case KeyType::Float:
    return "a number";
  case KeyType::Bool:
    return "true or false";
  case KeyType::String:
  case KeyType::Enum:
    return "a string";
  case KeyType::StringList:
    return "a list of strings";
  }
  return "a value";
}

std::string exprWords(const ast::Expr &E) {
  switch (E.K) {
  case ast::Expr::Int:
    return "an integer";
  case ast::Expr::Float:
    return "a number";
  case ast::Expr::String:
    return "a string";
  case ast::Expr::Bool:
    return "a boolean";
  case ast::Expr::List:
    return "a list";
  case ast::Expr::Null:
    return "null";
  default:
    return "an expression ('" + ast::print(E) + "'; a recipe setting takes a literal)";
  }
}

/// The literal \p E as a value of key \p K, or false with the reason given.
bool toValue(const ast::Expr &E, const KeyInfo &K, Value &V) {
  const ast::Expr *X = &E;
  bool Negative = false;
  if (X->K == ast::Expr::Unary && X->Text == "-" && X->Ops.size() == 1 &&
      (X->Ops[0]->K == ast::Expr::Int || X->Ops[0]->K == ast::Expr::Float)) {
    Negative = true;
    X = X->Ops[0].get();
  }
  switch (K.Type) {
  case KeyType::Int:
    if (X->K != ast::Expr::Int)
      return false;
    V.K = Value::Int;
    V.I = Negative ? -X->IntVal : X->IntVal;
    return true;
  case KeyType::Float:
    if (X->K != ast::Expr::Int && X->K != ast::Expr::Float)
      return false;
    V.K = Value::Float;
    V.F = X->K == ast::Expr::Int ? double(X->IntVal) : X->FloatVal;
    if (Negative)
      V.F = -V.F;
    return true;
  case KeyType::Bool:
    if (X->K != ast::Expr::Bool || Negative)
      return false;
    V.K = Value::Bool;
    V.B = X->BoolVal;
    return true;
  case KeyType::String:
  case KeyType::Enum:
    if (X->K != ast::Expr::String || Negative)
      return false;
    V.K = Value::String;
    V.S = X->Text;
    return true;
  case KeyType::StringList:
    if (X->K != ast::Expr::List || Negative)
      return false;
    V.K = Value::StringList;
    for (const ast::ExprP &Item : X->Ops) {
      if (Item->K != ast::Expr::String)
        return false;
      V.L.push_back(Item->Text);
    }
    return true;
  }
  return false;
}

Value defaultValue(const KeyInfo &K) {
  Value V;
  llvm::StringRef D = K.Default;
  switch (K.Type) {
  case KeyType::Int:
    V.K = Value::Int;
    D.getAsInteger(10, V.I);
    break;
  case KeyType::Float:
    V.K = Value::Float;
    V.F = std::strtod(K.Default, nullptr);
    break;
  case KeyType::Bool:
    V.K = Value::Bool;
    V.B = D == "true";
    break;
  case KeyType::String:
  case KeyType::Enum:
    V.K = Value::String;
    V.S = K.Default;
    break;
  case KeyType::StringList:
    V.K = Value::StringList;
    break;
  }
  return V;
}

std::string gib(double Bytes) { return llvm::formatv("{0:f1}", Bytes / double(1ull << 30)).str(); }

/// Reads what the checks need from an HF config.json. Names differ between
/// families (num_experts, num_local_experts, n_routed_experts); each fact
/// takes the first spelling present. A VLM's language model is its
/// text_config; its vision tower is counted apart (on the first stage).
bool readFacts(const llvm::json::Object &Top, ModelFacts &F, std::string &Why) {
  const llvm::json::Object *Text = Top.getObject("text_config");
  const llvm::json::Object &C = Text ? *Text : Top;
  auto IntIn = [](const llvm::json::Object &O, std::initializer_list<const char *> Names, int64_t Default) {
    for (const char *N : Names)
      if (auto V = O.getInteger(N))
        return *V;
    return Default;
  };
  auto Int = [&](std::initializer_list<const char *> Names, int64_t Default) { return IntIn(C, Names, Default); };
  auto Str = [&](const char *Name) -> std::string {
    if (auto V = C.getString(Name))
      return V->str();
    return "";
  };
  // Layer kinds, one symbol a layer (Megatron-Core's hybrid pattern):
  // M Mamba, * attention, - MLP, E experts (a hybrid model's layer is one of
  // them); G Gated DeltaNet (beside an MLP or experts, as attention is).
  std::string Kinds = Str("hybrid_override_pattern");
  if (Kinds.empty())
    if (const llvm::json::Array *Types = C.getArray("layers_block_type"))
      for (const llvm::json::Value &T : *Types) {
        llvm::StringRef K = T.getAsString().getValueOr("");
        Kinds += K == "mamba" || K == "linear_attention" ? 'M' : K == "attention" || K == "full_attention" ? '*'
                 : K == "moe" ? 'E' : '-';
      }
  F.Layers = Kinds.empty() ? Int({"num_hidden_layers", "num_layers"}, 0) : static_cast<int64_t>(Kinds.size());
  F.Hidden = Int({"hidden_size"}, 0);
  F.Heads = Int({"num_attention_heads"}, 0);
  F.Vocab = Int({"vocab_size"}, 0);
  if (!F.Layers || !F.Hidden || !F.Heads || !F.Vocab) {
    Why = "it lacks num_hidden_layers, hidden_size, num_attention_heads or vocab_size";
    return false;
  }
  F.QueryGroups = Int({"num_key_value_heads"}, F.Heads);
  F.MaxPositions = Int({"max_position_embeddings"}, 0);
  F.HeadDim = Int({"head_dim", "attention_head_dim"}, F.Hidden / F.Heads);
  F.Ffn = Int({"intermediate_size"}, 4 * F.Hidden);
  F.Experts = Int({"num_experts", "num_local_experts", "n_routed_experts"}, 0);
  F.TopK = Int({"num_experts_per_tok", "moe_topk"}, F.Experts ? 2 : 0);
  F.MoeFfn = Int({"moe_intermediate_size"}, F.Ffn);
  F.SharedFfn = Int({"shared_expert_intermediate_size", "moe_shared_expert_intermediate_size"}, 0) +
                (C.getInteger("moe_shared_expert_intermediate_size") ? 0 : Int({"n_shared_experts"}, 0) * F.MoeFfn);
  // Absent, the transformers class default decides: tied for Gemma, untied
  // for every other shipped family.
  llvm::Optional<llvm::StringRef> Type = Top.getString("model_type");
  F.Tied = Type && Type->startswith("gemma");
  if (auto T = Top.getBoolean("tie_word_embeddings"))
    F.Tied = *T;
  if (auto T = C.getBoolean("tie_word_embeddings"))
    F.Tied = *T;
  // Gated DeltaNet layers: layer_types, else every full_attention_interval-th
  // layer full attention (Qwen3-Next, Qwen3.5).
  bool DeltaNet = C.getInteger("linear_num_value_heads").hasValue();
  std::vector<bool> Linear(static_cast<size_t>(F.Layers), false);
  if (DeltaNet) {
    if (const llvm::json::Array *Types = C.getArray("layer_types"))
      for (size_t I = 0; I < Types->size() && I < Linear.size(); ++I)
        Linear[I] = (*Types)[I].getAsString().getValueOr("") == "linear_attention";
    else
      for (int64_t I = 0, N = Int({"full_attention_interval"}, 4); I < F.Layers; ++I)
        Linear[static_cast<size_t>(I)] = (I + 1) % N != 0;
  }
  // Dense layers of a MoE stack: the first k (DeepSeek, GLM), or those
  // listed as MLP-only (Qwen); a hybrid model's are its '-' layers.
  F.DenseLayers = F.Experts ? Int({"first_k_dense_replace"}, 0) : F.Layers;
  if (const llvm::json::Array *Only = C.getArray("mlp_only_layers"); Only && F.Experts)
    F.DenseLayers += static_cast<int64_t>(Only->size());
  F.DenseLayers = std::min(F.DenseLayers, F.Layers);
  double H = double(F.Hidden);
  double Attention;
  if (auto KvLora = C.getInteger("kv_lora_rank")) { // multi-latent attention
    double Nope = double(Int({"qk_nope_head_dim"}, 128)), Rope = double(Int({"qk_rope_head_dim"}, 64));
    double V = double(Int({"v_head_dim"}, 128)), N = double(F.Heads);
    int64_t QLora = Int({"q_lora_rank"}, 0);
    double Q = QLora ? H * double(QLora) + double(QLora) * N * (Nope + Rope) : H * N * (Nope + Rope);
    Attention = Q + H * (double(*KvLora) + Rope) + double(*KvLora) * N * (Nope + V) + N * V * H;
  } else {
    // An output gate (Qwen3-Next, Qwen3.5) doubles q_proj.
    bool Gate = DeltaNet && C.getBoolean("attn_output_gate").getValueOr(true);
    Attention = H * double(F.Heads * F.HeadDim) * (Gate ? 2 : 1) + 2 * H * double(F.QueryGroups * F.HeadDim) +
                double(F.Heads * F.HeadDim) * H;
  }
  double DeltaNetMixer = 0;
  if (DeltaNet) {
    double NK = double(Int({"linear_num_key_heads"}, 16)), NV = double(Int({"linear_num_value_heads"}, 32));
    double DK = double(Int({"linear_key_head_dim"}, 128)), DV = double(Int({"linear_value_head_dim"}, 128));
    double Conv = double(Int({"linear_conv_kernel_dim"}, 4));
    // in_proj [q k v z b a], conv1d over [q k v], A_log and dt_bias, the
    // gated norm of one value head, out_proj.
    DeltaNetMixer = H * (2 * NK * DK + 2 * NV * DV + 2 * NV) + (2 * NK * DK + NV * DV) * Conv + 2 * NV + DV +
                    NV * DV * H;
  }
  double Mamba = 0;
  if (Kinds.find('M') != std::string::npos) {
    double Heads = double(Int({"mamba_num_heads"}, 2 * F.Hidden / Int({"mamba_head_dim"}, 64)));
    double Inner = Heads * double(Int({"mamba_head_dim"}, 64));
    double BC = 2 * double(Int({"n_groups"}, 8) * Int({"ssm_state_size"}, 128));
    double Conv = double(Int({"conv_kernel"}, 4));
    // in_proj [z x B C dt], conv1d over [x B C] with its bias, A_log, D,
    // dt_bias, the gated norm, out_proj.
    Mamba = H * (2 * Inner + BC + Heads) + (Inner + BC) * (Conv + 1) + 3 * Heads + Inner + Inner * H;
  }
  // A gated MLP has three matrices; a squared-ReLU one (Nemotron, Nemotron-H) two.
  std::string Act = Str("mlp_hidden_act").empty() ? Str("hidden_act") : Str("mlp_hidden_act");
  double Matrices = Act == "relu2" ? 2 : 3;
  double DenseMlp = Matrices * H * double(F.Ffn);
  double Shared = Matrices * H * double(F.SharedFfn) + (F.Experts ? H * double(F.Experts) : 0); // and the router
  if (C.getInteger("shared_expert_intermediate_size") && DeltaNet)
    Shared += H; // the shared expert's sigmoid gate
  F.ExpertsPerMoeLayer = F.Experts ? Matrices * H * double(F.MoeFfn) * double(F.Experts) : 0;
  double PerLayerSum = 0;
  int64_t MoeLayers = 0;
  if (!Kinds.empty()) {
    for (char K : Kinds) {
      PerLayerSum += K == 'M' ? Mamba : K == '*' ? Attention : K == '-' ? DenseMlp : K == 'E' ? Shared : 0;
      MoeLayers += K == 'E';
    }
  } else {
    MoeLayers = F.Layers - F.DenseLayers;
    for (int64_t I = 0; I < F.Layers; ++I)
      PerLayerSum += Linear[static_cast<size_t>(I)] ? DeltaNetMixer : Attention;
    PerLayerSum += double(F.DenseLayers) * DenseMlp + double(MoeLayers) * Shared;
  }
  F.DenseLayers = F.Layers - MoeLayers;
  F.NonExpertPerLayer = PerLayerSum / double(F.Layers);
  F.Embedding = double(F.Vocab) * H;
  // Training FLOPs of one token, counted as Megatron-LM and Megatron-Bridge
  // count model FLOPs (flop_utils.py): a matrix product costs 2 FLOPs per
  // weight a token passes through in the forward pass, and forward plus
  // backward (activation and weight gradients) is 3x the forward. So every
  // projection counted above as parameters costs 2x its parameters forward:
  // - attention: the Q (doubled by an output gate), K, V and output
  //   projections; multi-latent attention: the query LoRA down and up (or the
  //   plain query projection), the KV LoRA down (with the shared rotary key)
  //   and up into keys and values, the output projection;
  // - attention's core: QK^T and softmax(QK^T)V, 2 FLOPs per key a query
  //   attends to and per head dimension (query-key dims plus value dims; for
  //   MLA qk_nope + qk_rope and v_head_dim). A causal query sees s/2 keys on
  //   average (Megatron's count), a sliding window W < s sees
  //   W - W(W-1)/(2s) (the exact causal average); flopsPerToken adds these;
  // - a dense MLP: its two (squared ReLU) or three (gated) matrices;
  // - experts: the top-k routed experts' matrices (not all experts), the
  //   shared experts, the router (hidden x experts, which Megatron-Bridge
  //   leaves out) and a shared expert's gate;
  // - Gated DeltaNet: in_proj, the short convolution (kernel taps per
  //   channel), out_proj, and the delta-rule recurrence: 4 products of a
  //   key head dim x value head dim state per value head (read, decay,
  //   update, query), Megatron-Bridge's count;
  // - Mamba-2: in_proj, the convolution (left out by Megatron-Bridge),
  //   out_proj, and the SSD scan as Megatron-Bridge estimates it:
  //   7 x d_inner x ssm_state_size FLOPs (d_inner = mamba heads x head dim);
  // - multi-token-prediction layers (DeepSeek-V3, GLM-4.5 train one): a
  //   layer of the last layer's kind, the 2h -> h projection before it, and
  //   one more logits layer each;
  // - the logits layer: hidden x padded vocabulary (flopsPerToken).
  // Left out: norms, biases, softmax and activations, rotary embeddings,
  // the embedding lookup, and a VLM's vision tower (its cost depends on the
  // image patches per sample, not on the text token).
  {
    double TopKExperts = F.Experts ? Matrices * H * double(F.MoeFfn) * double(F.TopK) : 0;
    double Moe = 2 * (Shared + TopKExperts), Dense = 2 * DenseMlp;
    double AttentionLinear = 2 * Attention;
    double CoreWidth;
    if (auto KvLora = C.getInteger("kv_lora_rank"); KvLora && *KvLora)
      CoreWidth = double(F.Heads) * double(Int({"qk_nope_head_dim"}, 128) + Int({"qk_rope_head_dim"}, 64) +
                                          Int({"v_head_dim"}, 128));
    else
      CoreWidth = 2 * double(F.Heads * F.HeadDim);
    double DeltaNetFlops = 0;
    if (DeltaNet)
      DeltaNetFlops = 2 * DeltaNetMixer + 2 * 4 * double(Int({"linear_num_value_heads"}, 32)) *
                                              double(Int({"linear_key_head_dim"}, 128)) *
                                              double(Int({"linear_value_head_dim"}, 128));
    double MambaFlops = 0;
    if (Mamba > 0) {
      double Inner = double(Int({"mamba_num_heads"}, 2 * F.Hidden / Int({"mamba_head_dim"}, 64))) *
                     double(Int({"mamba_head_dim"}, 64));
      MambaFlops = 2 * Mamba + 7 * Inner * double(Int({"ssm_state_size"}, 128));
    }
    // Sliding windows: layer_types where given (gpt-oss), else every other
    // layer from the first (Gemma 2), every layer but each
    // sliding_window_pattern-th (Gemma 3), or every layer (Mistral, Phi-3);
    // none where use_sliding_window is false (Qwen).
    int64_t Window = C.getBoolean("use_sliding_window").getValueOr(true) ? Int({"sliding_window"}, 0) : 0;
    const llvm::json::Array *LayerTypes = C.getArray("layer_types");
    int64_t Pattern = Int({"sliding_window_pattern", "_sliding_window_pattern"}, 6);
    auto WindowOf = [&](int64_t I) -> int64_t {
      if (!Window)
        return 0;
      if (LayerTypes && !DeltaNet)
        return size_t(I) < LayerTypes->size() &&
                       (*LayerTypes)[size_t(I)].getAsString().getValueOr("") == "sliding_attention"
                   ? Window
                   : 0;
      if (Type && *Type == "gemma2")
        return I % 2 == 0 ? Window : 0;
      if (Type && Type->startswith("gemma3"))
        return (I + 1) % Pattern != 0 ? Window : 0;
      return Window;
    };
    double Fwd = 0;
    if (!Kinds.empty()) {
      for (size_t I = 0; I < Kinds.size(); ++I) {
        char K = Kinds[I];
        Fwd += K == 'M' ? MambaFlops : K == '*' ? AttentionLinear : K == '-' ? Dense : K == 'E' ? Moe : 0;
        if (K == '*')
          F.Cores.push_back({CoreWidth, WindowOf(int64_t(I))});
      }
    } else {
      for (int64_t I = 0; I < F.Layers; ++I) {
        if (Linear[size_t(I)]) {
          Fwd += DeltaNetFlops;
        } else {
          Fwd += AttentionLinear;
          F.Cores.push_back({CoreWidth, WindowOf(I)});
        }
      }
      Fwd += double(F.DenseLayers) * Dense + double(MoeLayers) * Moe;
      F.MtpLayers = Int({"num_nextn_predict_layers"}, 0);
      bool LastLinear = F.Layers > 0 && Linear[size_t(F.Layers - 1)];
      for (int64_t M = 0; M < F.MtpLayers; ++M) {
        Fwd += 2 * 2 * H * H + (LastLinear ? DeltaNetFlops : AttentionLinear) + (MoeLayers ? Moe : Dense);
        if (!LastLinear)
          F.Cores.push_back({CoreWidth, WindowOf(F.Layers - 1)});
      }
    }
    F.ForwardLinearFlops = Fwd;
  }
  // A VLM's vision tower (kept as the HF module, whole on the first stage):
  // its blocks' attention and MLP, the patch embedding and the merger into
  // the language model's width.
  if (const llvm::json::Object *V = Top.getObject("vision_config")) {
    double VH = double(IntIn(*V, {"hidden_size", "embed_dim"}, 0));
    double VI = double(IntIn(*V, {"intermediate_size"}, int64_t(4 * VH)));
    double Depth = double(IntIn(*V, {"depth", "num_hidden_layers"}, 0));
    double Patch = double(IntIn(*V, {"patch_size"}, 14)), Channels = double(IntIn(*V, {"in_channels", "num_channels"}, 3));
    double Temporal = double(IntIn(*V, {"temporal_patch_size"}, 1));
    double Merge = double(IntIn(*V, {"spatial_merge_size"}, 1));
    double Out = double(IntIn(*V, {"out_hidden_size"}, F.Hidden));
    // A SiLU tower's MLP is gated (Qwen2.5-VL), a GELU one (SigLIP) is not.
    llvm::StringRef Act = V->getString("hidden_act").getValueOr("");
    double VMatrices = Act == "silu" ? 3 : 2;
    // Learned patch positions where the tower has a fixed image size (SigLIP).
    double Image = double(IntIn(*V, {"image_size"}, 0));
    double Positions = Image > 0 ? (Image / Patch) * (Image / Patch) * VH : 0;
    // Into the language model: a merger of Merge x Merge patches (an MLP,
    // Qwen2.5-VL), else one projection (Gemma 3).
    double Merger = Merge > 1 ? Merge * Merge * VH * (Merge * Merge * VH) + Merge * Merge * VH * Out : VH * Out;
    F.Vision = Depth * (4 * VH * VH + VMatrices * VH * VI) + Channels * Temporal * Patch * Patch * VH + Positions +
               Merger;
  }
  return true;
}

} // namespace

double ModelFacts::total() const {
  return NonExpertPerLayer * double(Layers) + ExpertsPerMoeLayer * double(Layers - DenseLayers) +
         Embedding * (Tied ? 1 : 2) + Vision;
}

double ModelFacts::flopsPerToken(int64_t SeqLength, int64_t TP) const {
  double S = double(SeqLength);
  int64_t Multiple = 128 * std::max<int64_t>(TP, 1);
  double PaddedVocab = double((Vocab + Multiple - 1) / Multiple * Multiple);
  double Fwd = ForwardLinearFlops + 2 * double(Hidden) * PaddedVocab * double(1 + MtpLayers);
  for (const CoreAttention &A : Cores) {
    double W = double(A.Window);
    double Context = A.Window > 0 && W < S ? W - W * (W - 1) / (2 * S) : S / 2;
    Fwd += 2 * A.Width * Context;
  }
  return 3 * Fwd;
}

std::string Value::json() const {
  switch (K) {
  case Int:
    return std::to_string(I);
  case Float: {
    char Buf[32];
    std::snprintf(Buf, sizeof Buf, "%.15g", F);
    std::string T = Buf;
    // A float stays a float in JSON: 1.0, not 1.
    if (T.find_first_of(".eEn") == std::string::npos)
      T += ".0";
    return T;
  }
  case Bool:
    return B ? "true" : "false";
  case String: {
    std::string Out;
    llvm::raw_string_ostream OS(Out);
    OS << llvm::json::Value(S);
    return OS.str();
  }
  case StringList: {
    std::string Out = "[";
    for (size_t I = 0; I < L.size(); ++I) {
      Value Item;
      Item.K = String;
      Item.S = L[I];
      Out += (I ? ", " : "") + Item.json();
    }
    return Out + "]";
  }
  }
  return "null";
}

namespace {

class RecipeChecker {
public:
  RecipeChecker(DiagnosticEngine &Diags, std::string ModelsDir) : Diags(Diags), ModelsDir(std::move(ModelsDir)) {}

  std::vector<Recipe> run(const std::vector<const ast::File *> &Files) {
    std::vector<const ast::RecipeDecl *> Order;
    for (const ast::File *F : Files)
      for (const ast::RecipeDecl &D : F->Recipes) {
        auto [It, New] = Decls.emplace(D.Name, &D);
        if (!New) {
          Diags.emit(DiagId::DuplicateRecipe, D.NameRange, D.Name);
          Diags.note(DiagId::NotePreviousHere, It->second->NameRange);
          continue;
        }
        Order.push_back(&D);
      }
    for (const ast::RecipeDecl *D : Order)
      checkOwnSettings(*D);
    std::vector<Recipe> Out;
    for (const ast::RecipeDecl *D : Order) {
      if (D->IsPreset)
        continue;
      std::vector<std::string> Stack;
      Resolved R;
      if (!resolve(*D, R, Stack))
        continue;
      Recipe Rc;
      Rc.Name = D->Name;
      Rc.Loc = D->NameRange;
      if (check(*D, R, Rc))
        Out.push_back(std::move(Rc));
    }
    return Out;
  }

  std::vector<std::string> modelFiles() const { return {Read.begin(), Read.end()}; }

private:
  DiagnosticEngine &Diags;
  std::string ModelsDir;
  std::set<std::string> Read;
  std::map<std::string, const ast::RecipeDecl *> Decls;
  std::map<const ast::RecipeDecl *, std::map<std::string, std::pair<Value, SMRange>>> Own;

  /// Every setting with the place that set it (invalid: a default).
  using Resolved = std::map<std::string, std::pair<Value, SMRange>>;

  void checkOwnSettings(const ast::RecipeDecl &D) {
    auto &Mine = Own[&D];
    std::map<std::string, SMRange> Seen;
    for (const ast::RecipeSetting &S : D.Settings) {
      const KeyInfo *K = keyInfo(S.Key);
      if (!K) {
        std::string Hint;
        unsigned Best = 3;
        for (const KeyInfo &C : Keys) {
          unsigned Dist = llvm::StringRef(S.Key).edit_distance(C.Name);
          if (Dist < Best) {
            Best = Dist;
            Hint = std::string("; did you mean '") + C.Name + "'?";
          }
        }
        Diags.emit(DiagId::UnknownRecipeSetting, S.KeyRange, S.Key, Hint);
        continue;
      }
      if (auto [It, New] = Seen.emplace(S.Key, S.KeyRange); !New) {
        Diags.emit(DiagId::DuplicateRecipeSetting, S.KeyRange, S.Key, D.Name);
        Diags.note(DiagId::NotePreviousHere, It->second);
        continue;
      }
      Value V;
      if (!toValue(*S.Value, *K, V)) {
        Diags.emit(DiagId::RecipeSettingType, S.Value->Range, S.Key, typeWords(K->Type), exprWords(*S.Value));
        continue;
      }
      if (!allowed(S, *K, V))
        continue;
      Mine[S.Key] = {V, S.Value->Range};
    }
    for (const ast::NameRef &B : D.Bases) {
      auto It = Decls.find(B.Name);
      if (It == Decls.end() || !It->second->IsPreset)
        Diags.emit(DiagId::UnknownPreset, B.Range, B.Name);
    }
  }

  bool allowed(const ast::RecipeSetting &S, const KeyInfo &K, const Value &V) {
    llvm::SmallVector<llvm::StringRef, 8> Options;
    llvm::StringRef(K.Allowed).split(Options, '|', -1, false);
    auto OneOf = [&](const std::string &X) {
      return std::find(Options.begin(), Options.end(), X) != Options.end();
    };
    std::string List = llvm::join(Options, ", ");
    if (K.Type == KeyType::Enum && !OneOf(V.S)) {
      Diags.emit(DiagId::RecipeBadValue, S.Value->Range, S.Key, "\"" + V.S + "\"", "one of " + List);
      return false;
    }
    if (K.Type == KeyType::StringList)
      for (const std::string &X : V.L)
        if (!OneOf(X)) {
          Diags.emit(DiagId::RecipeBadValue, S.Value->Range, S.Key, "a list holding \"" + X + "\"",
                     "its items are from " + List);
          return false;
        }
    if (K.Type == KeyType::Int && V.I < 0) {
      Diags.emit(DiagId::RecipeBadValue, S.Value->Range, S.Key, std::to_string(V.I), "it is a count, at least 0");
      return false;
    }
    if (K.Type == KeyType::Float && V.F < 0) {
      Diags.emit(DiagId::RecipeBadValue, S.Value->Range, S.Key, ast::print(*S.Value), "it is at least 0");
      return false;
    }
    static const char *const Positive[] = {"gpus", "tp", "pp", "vpp", "cp", "ep", "seq_length", "micro_batch",
                                           "global_batch", "train_iters", "gpu_memory_gib"};
    for (const char *P : Positive)
      if (S.Key == P && V.I < 1) {
        Diags.emit(DiagId::RecipeBadValue, S.Value->Range, S.Key, std::to_string(V.I), "it is at least 1");
        return false;
      }
    return true;
  }

  /// Defaults, then each preset, then \p D's own settings.
  bool resolve(const ast::RecipeDecl &D, Resolved &R, std::vector<std::string> &Stack) {
    if (std::find(Stack.begin(), Stack.end(), D.Name) != Stack.end()) {
      Diags.emit(DiagId::PresetCycle, D.NameRange, llvm::join(Stack, " -> ") + " -> " + D.Name);
      return false;
    }
    if (Stack.empty())
      for (const KeyInfo &K : Keys)
        if (*K.Default)
          R[K.Name] = {defaultValue(K), SMRange()};
    Stack.push_back(D.Name);
    for (const ast::NameRef &B : D.Bases) {
      auto It = Decls.find(B.Name);
      if (It == Decls.end() || !It->second->IsPreset)
        return false; // reported
      if (!resolve(*It->second, R, Stack))
        return false;
    }
    Stack.pop_back();
    for (auto &[Key, V] : Own[&D])
      R[Key] = V;
    return true;
  }

  bool check(const ast::RecipeDecl &D, Resolved &R, Recipe &Out) {
    bool OK = true;
    for (const KeyInfo &K : Keys)
      if (!R.count(K.Name)) {
        Diags.emit(DiagId::RecipeMissingSetting, D.NameRange, D.Name, K.Name, K.Meaning);
        OK = false;
      }
    if (!OK)
      return false;
    // Where a setting came from, for the caret: its own line, else the name.
    auto At = [&](const char *Key) { return R[Key].second.isValid() ? R[Key].second : D.NameRange; };
    auto I = [&](const char *Key) { return R[Key].first.I; };
    auto F = [&](const char *Key) { return R[Key].first.F; };
    auto B = [&](const char *Key) { return R[Key].first.B; };
    auto S = [&](const char *Key) { return R[Key].first.S; };

    // The model.
    std::string Model = S("model");
    std::string File = Model.find('/') != std::string::npos ? Model.substr(0, Model.find('/')) + "__" + Model.substr(Model.find('/') + 1)
                                                : Model;
    llvm::SmallString<256> Path(ModelsDir);
    llvm::sys::path::append(Path, File + ".json");
    auto Buf = llvm::MemoryBuffer::getFile(Path);
    if (!Buf) {
      Diags.emit(DiagId::ModelConfigUnreadable, At("model"), Model,
                 "cannot read " + Path.str().str() + ": " + Buf.getError().message());
      return false;
    }
    llvm::Expected<llvm::json::Value> Json = llvm::json::parse((*Buf)->getBuffer());
    if (!Json) {
      Diags.emit(DiagId::ModelConfigUnreadable, At("model"), Model,
                 Path.str().str() + " is not JSON: " + llvm::toString(Json.takeError()));
      return false;
    }
    const llvm::json::Object *Obj = Json->getAsObject();
    // A config that leaves sizes to transformers' class defaults (Gemma 3's
    // text_config) has them beside it, as scripts/class_defaults.py wrote them
    // from transformers: {"section": <"text_config" or "">, "defaults": {...}};
    // a key the file gives wins.
    llvm::json::Value Merged = Obj ? llvm::json::Value(llvm::json::Object(*Obj)) : llvm::json::Value(nullptr);
    llvm::SmallString<256> DefaultsPath(ModelsDir);
    llvm::sys::path::append(DefaultsPath, File + ".defaults.json");
    if (auto DefBuf = llvm::MemoryBuffer::getFile(DefaultsPath); DefBuf && Obj) {
      llvm::Expected<llvm::json::Value> Def = llvm::json::parse((*DefBuf)->getBuffer());
      const llvm::json::Object *D = Def ? Def->getAsObject() : nullptr;
      const llvm::json::Object *Values = D ? D->getObject("defaults") : nullptr;
      llvm::StringRef Section = D ? D->getString("section").getValueOr("") : "";
      llvm::json::Object *Into = Merged.getAsObject();
      if (!Section.empty())
        Into = Into->getObject(Section);
      if (!Values || !Into) {
        Diags.emit(DiagId::ModelConfigUnreadable, At("model"), Model,
                   DefaultsPath.str().str() + " is not {\"section\": ..., \"defaults\": {...}} for this config" +
                       (Def ? "" : ": " + llvm::toString(Def.takeError())));
        return false;
      }
      for (const auto &[Key, V] : *Values)
        Into->try_emplace(Key, V);
      Read.insert(DefaultsPath.str().str());
    }
    Obj = Merged.getAsObject();
    std::string Why;
    if (!Obj || !readFacts(*Obj, Out.Facts, Why)) {
      Diags.emit(DiagId::ModelConfigUnreadable, At("model"), Model, Path.str().str() + ": " + (Obj ? Why : "not an object"));
      return false;
    }
    Out.ModelConfigText = (*Buf)->getBuffer().str();
    Read.insert(Path.str().str());
    const ModelFacts &M = Out.Facts;

    const int64_t TP = I("tp"), PP = I("pp"), VPP = I("vpp"), CP = I("cp"), EP = I("ep");
    const int64_t ETP = I("etp") ? I("etp") : TP;
    const int64_t Gpus = I("gpus");
    std::string Mode = S("mode");

    // -- the layout against the model (TransformerConfig's checks) --------------
    std::string Name = "'" + Model + "'";
    auto ModelFail = [&](const char *Key, const std::string &Msg) {
      Diags.emit(DiagId::LayoutDoesNotFitModel, At(Key), Name, Msg);
      OK = false;
    };
    if (M.Heads % TP)
      ModelFail("tp", llvm::formatv("tp {0} does not divide its {1} attention heads", TP, M.Heads).str());
    if (TP > M.QueryGroups)
      ModelFail("tp", llvm::formatv("tp {0} is more than its {1} query groups (each rank needs a whole group)", TP,
                                    M.QueryGroups).str());
    else if (M.QueryGroups % TP)
      ModelFail("tp", llvm::formatv("tp {0} does not divide its {1} query groups", TP, M.QueryGroups).str());
    if (EP > 1 && !M.Experts)
      ModelFail("ep", llvm::formatv("ep {0} needs experts, and it has none", EP).str());
    else if (M.Experts && M.Experts % EP)
      ModelFail("ep", llvm::formatv("ep {0} does not divide its {1} experts", EP, M.Experts).str());
    if (ETP != TP && ETP != 1 && M.Experts)
      ModelFail("etp", llvm::formatv("etp {0} is neither 1 nor tp {1}", ETP, TP).str());
    const int64_t First = I("first_stage_layers"), Last = I("last_stage_layers");
    if (First || Last) {
      if (PP < 2)
        ModelFail(First ? "first_stage_layers" : "last_stage_layers", "uneven pipeline stages need pp > 1");
      else {
        int64_t Middle = M.Layers - First - Last, MiddleStages = PP - (First ? 1 : 0) - (Last ? 1 : 0);
        if (Middle < 0 || (MiddleStages == 0 && Middle) || (MiddleStages && Middle % MiddleStages) ||
            (MiddleStages && Middle / MiddleStages % VPP) || First % VPP || Last % VPP)
          ModelFail(First ? "first_stage_layers" : "last_stage_layers",
                    llvm::formatv("its {0} layers do not split into a first stage of {1}, a last of {2} and {3} "
                                  "middle stages{4}",
                                  M.Layers, First, Last, MiddleStages,
                                  VPP > 1 ? llvm::formatv(" of {0} virtual stages each", VPP).str() : "")
                        .str());
      }
    } else if (M.Layers % (PP * VPP)) {
      ModelFail(VPP > 1 ? "vpp" : "pp", llvm::formatv("its {0} layers are not divisible by pp {1} * vpp {2}",
                                                        M.Layers, PP, VPP).str());
    }
    if (VPP > 1 && PP < 2)
      ModelFail("vpp", "virtual pipeline stages need pp > 1");

    // -- the layout against the GPUs (parallel_state's checks) -------------------
    const int64_t Dense = TP * PP * CP, Expert = ETP * EP * PP;
    const int64_t Minimum = std::max(TP * CP, ETP * EP) * PP;
    if (Gpus % Dense || Gpus % Expert || Gpus < Minimum) {
      Diags.emit(DiagId::LayoutDoesNotFitGpus, At("gpus"), Gpus, Dense, Expert, Minimum);
      OK = false;
    }
    const int64_t DP = std::max<int64_t>(Gpus / Dense, 1);
    if (I("global_batch") % (I("micro_batch") * DP)) {
      Diags.emit(DiagId::BatchDoesNotDivide, At("global_batch"), I("global_batch"), I("micro_batch"), DP, Gpus, TP,
                 PP, CP);
      OK = false;
    }
    // MoELayer refuses to train with TP > 1 and no sequence parallelism.
    if (M.Experts && TP > 1 && !B("sequence_parallel")) {
      Diags.emit(DiagId::SequenceParallelNeeded, At("sequence_parallel"), Name, TP);
      OK = false;
    }
    auto Inconsistent = [&](const char *Key, const std::string &Msg) {
      Diags.emit(DiagId::RecipeInconsistent, At(Key), Key, Msg);
      OK = false;
    };
    if (B("sequence_parallel") && TP == 1)
      Inconsistent("sequence_parallel", "it needs tp > 1, and tp is 1 (megatron-core refuses it otherwise)");
    if (CP > 1 && I("seq_length") % (2 * CP))
      Inconsistent("seq_length", llvm::formatv("{0} is not a multiple of 2 * cp = {1}", I("seq_length"),
                                               2 * CP).str());
    if (M.MaxPositions && I("seq_length") > M.MaxPositions)
      Inconsistent("seq_length", llvm::formatv("{0} exceeds the model's max_position_embeddings {1}",
                                               I("seq_length"), M.MaxPositions).str());
    if (F("min_lr") > F("lr"))
      Inconsistent("min_lr", R["min_lr"].first.json() + " is above lr " + R["lr"].first.json());
    if (I("warmup_iters") > I("train_iters"))
      Inconsistent("warmup_iters", llvm::formatv("{0} is more than train_iters {1}", I("warmup_iters"),
                                                 I("train_iters")).str());
    const bool Lora = I("lora_dim") || I("lora_alpha") || !R["lora_targets"].first.L.empty();
    if (Mode == "peft" && (!I("lora_dim") || !I("lora_alpha") || R["lora_targets"].first.L.empty()))
      Inconsistent("mode", "mode \"peft\" needs lora_dim, lora_alpha and lora_targets set");
    if (Mode != "peft" && Lora)
      Inconsistent(I("lora_dim") ? "lora_dim" : I("lora_alpha") ? "lora_alpha" : "lora_targets",
                   "LoRA settings belong to mode \"peft\", and mode is \"" + Mode + "\"");
    if (!OK)
      return false;

    // -- memory per GPU ------------------------------------------------------------
    // Parameters on the most loaded GPU: the first stage's layers (its
    // explicit size, else an even share) and the embedding, split by TP;
    // routed experts split by EP and ETP.
    const double Stage = First ? double(std::max(First, Last)) : std::ceil(double(M.Layers) / double(PP));
    const double MoeShare = double(M.Layers - M.DenseLayers) / double(M.Layers);
    // A VLM's vision tower is the HF module, whole on the first stage.
    double DenseParams = (Stage * M.NonExpertPerLayer + M.Embedding * (PP == 1 && !M.Tied ? 2 : 1)) / double(TP) +
                         M.Vision;
    double ExpertParams = Stage * MoeShare * M.ExpertsPerMoeLayer / double(EP * ETP);
    const bool DistOpt = B("distributed_optimizer");
    if (Mode == "peft") {
      // The base is frozen (bf16 weights only); adapters train: r*(in+out)
      // per adapted matrix and layer, with gradients and Adam state.
      double H = double(M.Hidden), Adapter = 0;
      for (const std::string &T : R["lora_targets"].first.L) {
        double Out = T == "linear_qkv" ? double((M.Heads + 2 * M.QueryGroups) * M.HeadDim)
                     : T == "linear_fc1" ? 2.0 * double(M.Ffn)
                     : T == "linear_fc2" ? double(M.Ffn)
                                         : double(M.Heads * M.HeadDim);
        Adapter += double(I("lora_dim")) * (H + Out);
      }
      Out.Memory.Weights = 2 * (DenseParams + ExpertParams) + 18 * Stage * Adapter / double(TP);
    } else {
      double DenseShard = double(DP * CP), ExpertShard = double(std::max<int64_t>(Gpus / Expert, 1));
      Out.Memory.Weights = DenseParams * (DistOpt ? 6 + 12 / DenseShard : 18) +
                           ExpertParams * (DistOpt ? 6 + 12 / ExpertShard : 18);
    }
    // Activations of one micro batch per layer (flash attention, so no
    // s*s scores): s*b*h*(18 + 4*ffn/h) bytes with sequence parallelism,
    // split by TP and CP; the MLP term counts the experts a token visits.
    const double Sq = double(I("seq_length")), Mb = double(I("micro_batch")), H = double(M.Hidden);
    const double FfnActive = M.Experts ? double(M.TopK * M.MoeFfn + M.SharedFfn) : double(M.Ffn);
    double PerLayer = Sq * Mb * H * (18 + 4 * FfnActive / H);
    if (TP > 1 && !B("sequence_parallel"))
      PerLayer = Sq * Mb * H * (10 + (8 + 4 * FfnActive / H) / double(TP)) * double(TP); // norms replicated
    PerLayer /= double(TP * CP);
    if (S("recompute") == "full")
      PerLayer = 2 * Sq * Mb * H / double(TP * CP); // the layer's input only
    // The first stage holds PP micro batches in flight (1F1B), more when
    // interleaved.
    const double Microbatches = double(I("global_batch")) / (Mb * double(DP));
    double InFlight = std::min(double(PP), Microbatches);
    if (VPP > 1)
      InFlight = double(PP) * (1 + double(PP - 1) / double(PP * VPP));
    double Logits = PP == 1 ? 4 * Sq * Mb * double(M.Vocab) / double(TP * CP) : 0; // fp32 logits
    Out.Memory.Activations = PerLayer * Stage * InFlight + Logits;
    Out.FlopsPerToken = M.flopsPerToken(I("seq_length"), TP);
    const double Budget = double(I("gpu_memory_gib")) * double(1ull << 30);
    if (Out.Memory.total() > Budget) {
      Diags.emit(DiagId::MemoryEstimateTooLarge, At("gpus"), gib(Out.Memory.total()),
                 "weights, gradients and optimizer state " + gib(Out.Memory.Weights) + " GiB, activations " +
                     gib(Out.Memory.Activations) + " GiB",
                 I("gpu_memory_gib"));
      return false;
    }
    for (auto &[Key, V] : R)
      Out.Settings[Key] = V.first;
    return true;
  }
};

} // namespace

std::vector<Recipe> bridgec::recipe::checkRecipes(const std::vector<const ast::File *> &Files,
                                                  const std::string &ModelsDir, DiagnosticEngine &Diags,
                                                  std::vector<std::string> *ModelFiles) {
  RecipeChecker C(Diags, ModelsDir);
  std::vector<Recipe> Out = C.run(Files);
  if (ModelFiles)
    *ModelFiles = C.modelFiles();
  return Out;
}
