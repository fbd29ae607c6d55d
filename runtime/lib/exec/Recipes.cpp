//===- Recipes.cpp - recipes as Megatron-Bridge YAML or Megatron-LM args --===//
//
// The table bridgec checked (bridge/Recipe.h) turned into what a training
// run takes: a Megatron-Bridge ConfigContainer override (YAML sections
// model, train, dataset, optimizer, scheduler, ddp, mixed_precision, peft,
// checkpoint) or Megatron-LM's command-line arguments, the model's own
// architecture included (from its config.json through the mapping, the same
// values import writes).
//
//===----------------------------------------------------------------------===//
#include "Checkpoint.h"

#include "bridge/Convert.h"
#include "bridge/Recipe.h"
#include "bridge/Registry.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace bridge {
namespace {

const RecipeEntry &recipeNamed(const std::string &Name) {
  // The recipes of the same model, for the message: the name up to its mode.
  std::string Stem = Name.substr(0, Name.rfind('_')), Near;
  for (const RecipeEntry &R : allRecipes()) {
    if (Name == R.Name)
      return R;
    if (std::string(R.Name).compare(0, Stem.size() + 1, Stem + "_") == 0)
      Near += std::string(Near.empty() ? "" : ", ") + R.Name;
  }
  throw Error("error: no recipe named '" + Name + "'" + (Near.empty() ? "" : " (of this model: " + Near + ")") +
              "; `bridge-run recipe list` shows them all");
}

Json settingsOf(const RecipeEntry &R) {
  Json S = Json::object();
  for (const RecipeSettingEntry &E : R.Settings)
    S[E.Key] = Json::parse(E.Json);
  return S;
}

Layout layoutOf(const Json &S) {
  Layout L;
  L.TP = S.at("tp").get<int>();
  L.PP = S.at("pp").get<int>();
  L.EP = S.at("ep").get<int>();
  L.ETP = S.at("etp").get<int>() ? S.at("etp").get<int>() : L.TP;
  L.VPP = S.at("vpp").get<int>();
  L.FirstStageLayers = S.at("first_stage_layers").get<int>();
  L.LastStageLayers = S.at("last_stage_layers").get<int>();
  return L;
}

/// A number as YAML and the command line write it: integers bare, floats
/// shortest (3.0e-04 as 0.0003).
std::string num(const Json &V) {
  if (V.is_number_integer())
    return std::to_string(V.get<int64_t>());
  char B[32];
  std::snprintf(B, sizeof B, "%.10g", V.get<double>());
  std::string T = B;
  // YAML 1.1 (PyYAML) reads 3e-05 as a string: the mantissa needs a point.
  if (size_t E = T.find('e'); E != std::string::npos && T.find('.') == std::string::npos)
    T.insert(E, ".0");
  else if (T.find_first_of(".e") == std::string::npos)
    T += ".0";
  return T;
}

/// Megatron-Bridge's name of a precision recipe (training/mixed_precision.py).
const char *bridgePrecision(const std::string &P) {
  if (P == "fp16-mixed")
    return "fp16_mixed";
  if (P == "bf16-fp8-current-scaling")
    return "bf16_with_fp8_current_scaling_mixed";
  if (P == "bf16-mxfp8")
    return "bf16_with_mxfp8_mixed";
  return "bf16_mixed";
}

/// The model's Megatron config, as import computes it from config.json.
struct ModelConfig {
  Json Config; ///< field name -> value
  Json Value(const char *Name) const { return Config.contains(Name) ? Config.at(Name) : Json(); }
};

ModelConfig modelConfig(const RecipeEntry &R) {
  Json HF = Json::parse(R.ModelConfig);
  return {configToJson(schema(), importConfig(mappingFor(HF), schema(), HF))};
}

} // namespace

std::vector<RecipeInfo> listRecipes() {
  std::vector<RecipeInfo> Out;
  for (const RecipeEntry &R : allRecipes()) {
    Json S = settingsOf(R);
    Out.push_back({R.Name, R.Source, S.at("model").get<std::string>(), S.at("mode").get<std::string>(),
                   S.at("gpus").get<int>(), layoutOf(S), R.WeightBytes, R.ActivationBytes, R.Parameters,
                   R.FlopsPerToken});
  }
  return Out;
}

Layout recipeLayoutFor(const std::string &Name, const std::string &HFDir, std::vector<std::string> &Notes) {
  const RecipeEntry &R = recipeNamed(Name);
  Json S = settingsOf(R);
  std::string Path = HFDir;
  if (Path.size() < 5 || Path.compare(Path.size() - 5, 5, ".json") != 0)
    Path += "/config.json";
  Json HF = readConfigJson(Path), Model = Json::parse(R.ModelConfig);
  const MappingTable &Mine = mappingFor(HF), &Its = mappingFor(Model);
  if (std::string(Mine.Name) != Its.Name)
    throw Error("error: recipe " + std::string(R.Name) + " is for " + S.at("model").get<std::string>() + " (mapping " + std::string(Its.Name) +
                "), but " + Path + " is a " + Mine.Name + " model");
  // The same family at another size: the layout still applies where it
  // divides the model (import checks that), but the recipe was not sized
  // for it.
  Json A = configToJson(schema(), importConfig(Mine, schema(), HF));
  Json B = configToJson(schema(), importConfig(Its, schema(), Model));
  for (const char *F : {"num_layers", "hidden_size", "num_attention_heads", "num_moe_experts"})
    if (A.value(F, Json()) != B.value(F, Json())) {
      Notes.push_back("recipe " + std::string(R.Name) + " was sized for " + S.at("model").get<std::string>() + " (" + F + " " +
                      B.value(F, Json()).dump() + "); this checkpoint has " + F + " " + A.value(F, Json()).dump() +
                      ": its layout is used as it is");
      break;
    }
  return layoutOf(S);
}

std::string showRecipe(const std::string &Name, const std::string &Format, const std::string &Checkpoint,
                       std::vector<std::string> &Notes) {
  const RecipeEntry &R = recipeNamed(Name);
  Json S = settingsOf(R);
  const Layout L = layoutOf(S);
  const std::string Mode = S.at("mode").get<std::string>(), Model = S.at("model").get<std::string>();
  const bool Peft = Mode == "peft";
  std::ostringstream O;
  char Estimate[160];
  std::snprintf(Estimate, sizeof Estimate, "%.1f GiB per GPU (%.1f weights and optimizer state, %.1f activations)",
                (R.WeightBytes + R.ActivationBytes) / double(1ull << 30), R.WeightBytes / double(1ull << 30),
                R.ActivationBytes / double(1ull << 30));
  if (Format == "megatron-bridge-yaml") {
    O << "# Megatron-Bridge override: recipe " << R.Name << " (" << R.Source << "), " << Mode << " of " << Model
      << "\n# on " << S.at("gpus").get<int>() << (S.at("gpus").get<int>() == 1 ? " GPU" : " GPUs") << " of " << S.at("gpu_memory_gib").get<int>()
      << " GiB; estimated " << Estimate << "\n";
    O << "model:\n";
    O << "  tensor_model_parallel_size: " << L.TP << "\n";
    O << "  pipeline_model_parallel_size: " << L.PP << "\n";
    O << "  virtual_pipeline_model_parallel_size: " << (L.VPP > 1 ? std::to_string(L.VPP) : "null") << "\n";
    O << "  context_parallel_size: " << S.at("cp").get<int>() << "\n";
    O << "  expert_model_parallel_size: " << L.EP << "\n";
    O << "  expert_tensor_parallel_size: " << L.ETP << "\n";
    if (L.FirstStageLayers)
      O << "  num_layers_in_first_pipeline_stage: " << L.FirstStageLayers << "\n";
    if (L.LastStageLayers)
      O << "  num_layers_in_last_pipeline_stage: " << L.LastStageLayers << "\n";
    O << "  sequence_parallel: " << (S.at("sequence_parallel").get<bool>() ? "true" : "false") << "\n";
    O << "  seq_length: " << num(S.at("seq_length")) << "\n";
    std::string Recompute = S.at("recompute").get<std::string>();
    if (Recompute == "full")
      O << "  recompute_granularity: full\n  recompute_method: uniform\n  recompute_num_layers: 1\n";
    else if (Recompute == "selective")
      O << "  recompute_granularity: selective\n";
    O << "train:\n";
    O << "  micro_batch_size: " << num(S.at("micro_batch")) << "\n";
    O << "  global_batch_size: " << num(S.at("global_batch")) << "\n";
    O << "  train_iters: " << num(S.at("train_iters")) << "\n";
    O << "dataset:\n  seq_length: " << num(S.at("seq_length")) << "\n";
    O << "optimizer:\n";
    O << "  optimizer: " << S.at("optimizer").get<std::string>() << "\n";
    O << "  use_distributed_optimizer: " << (S.at("distributed_optimizer").get<bool>() ? "true" : "false") << "\n";
    for (const char *K : {"lr", "min_lr", "weight_decay", "adam_beta1", "adam_beta2", "adam_eps", "clip_grad"})
      O << "  " << K << ": " << num(S.at(K)) << "\n";
    O << "scheduler:\n";
    O << "  lr_decay_style: " << S.at("lr_decay").get<std::string>() << "\n";
    O << "  lr_warmup_iters: " << num(S.at("warmup_iters")) << "\n";
    O << "  lr_decay_iters: " << num(S.at("train_iters")) << "\n";
    // Held constant: Megatron-Bridge's scheduler otherwise overrides it.
    O << "  weight_decay_incr_style: constant\n";
    O << "  start_weight_decay: " << num(S.at("weight_decay")) << "\n";
    O << "  end_weight_decay: " << num(S.at("weight_decay")) << "\n";
    O << "ddp:\n  use_distributed_optimizer: " << (S.at("distributed_optimizer").get<bool>() ? "true" : "false")
      << "\n";
    O << "mixed_precision: " << bridgePrecision(S.at("precision").get<std::string>()) << "\n";
    if (!Checkpoint.empty())
      O << "checkpoint:\n  " << (Mode == "pretrain" ? "load: " : "pretrained_checkpoint: ") << Checkpoint << "\n";
    if (Peft) {
      O << "peft:\n  _target_: megatron.bridge.peft.lora.LoRA\n";
      O << "  dim: " << num(S.at("lora_dim")) << "\n  alpha: " << num(S.at("lora_alpha")) << "\n";
      O << "  dropout: " << num(S.at("lora_dropout")) << "\n  target_modules:\n";
      for (const Json &T : S.at("lora_targets"))
        O << "    - " << T.get<std::string>() << "\n";
    }
    return O.str();
  }
  if (Format != "megatron-lm-args")
    throw Error("error: unknown recipe format '" + Format + "' (megatron-bridge-yaml or megatron-lm-args)");

  std::vector<std::string> A;
  auto Arg = [&](const std::string &Flag, const std::string &Value = "") {
    A.push_back(Value.empty() ? Flag : Flag + " " + Value);
  };
  // The architecture, as import writes it for this model.
  ModelConfig M = modelConfig(R);
  auto Int = [&](const char *F) { return std::to_string(M.Value(F).get<int64_t>()); };
  // Megatron-LM spells a config field's flag with dashes.
  auto FlagOf = [](const char *F) {
    std::string Flag = "--" + std::string(F);
    std::replace(Flag.begin(), Flag.end(), '_', '-');
    return Flag;
  };
  Arg("--num-layers", Int("num_layers"));
  Arg("--hidden-size", Int("hidden_size"));
  Arg("--ffn-hidden-size", Int("ffn_hidden_size"));
  Arg("--num-attention-heads", Int("num_attention_heads"));
  if (M.Value("multi_latent_attention").is_boolean() && M.Value("multi_latent_attention").get<bool>()) {
    Arg("--multi-latent-attention");
    if (!M.Value("q_lora_rank").is_null())
      Arg("--q-lora-rank", Int("q_lora_rank"));
    Arg("--kv-lora-rank", Int("kv_lora_rank"));
    Arg("--qk-head-dim", Int("qk_head_dim"));
    Arg("--qk-pos-emb-head-dim", Int("qk_pos_emb_head_dim"));
    Arg("--v-head-dim", Int("v_head_dim"));
  } else {
    if (M.Value("num_query_groups").get<int64_t>() != M.Value("num_attention_heads").get<int64_t>()) {
      Arg("--group-query-attention");
      Arg("--num-query-groups", Int("num_query_groups"));
    }
    Arg("--kv-channels", Int("kv_channels"));
  }
  Arg("--max-position-embeddings", Int("max_position_embeddings"));
  Arg("--position-embedding-type", M.Value("position_embedding_type").get<std::string>());
  if (M.Value("position_embedding_type") == "rope") {
    Arg("--rotary-base", num(M.Value("rotary_base")));
    if (M.Value("rope_scaling").is_boolean() && M.Value("rope_scaling").get<bool>()) {
      Arg("--use-rope-scaling");
      Arg("--rope-scaling-factor", num(M.Value("rope_scaling_factor")));
    }
  }
  if (M.Value("position_embedding_type") == "rope" && M.Value("rotary_percent").is_number() &&
      M.Value("rotary_percent").get<double>() != 1.0)
    Arg("--rotary-percent", num(M.Value("rotary_percent")));
  Arg("--normalization", M.Value("normalization").get<std::string>());
  Arg("--norm-epsilon", num(M.Value("layernorm_epsilon")));
  auto On = [&](const char *F) { return M.Value(F).is_boolean() && M.Value(F).get<bool>(); };
  if (On("layernorm_zero_centered_gamma"))
    Arg("--apply-layernorm-1p");
  if (M.Value("gated_linear_unit").get<bool>() && M.Value("activation_func") == "silu")
    Arg("--swiglu");
  if (!M.Value("gated_linear_unit").get<bool>() && M.Value("activation_func") == "squared_relu")
    Arg("--squared-relu");
  if (On("attention_output_gate"))
    Arg("--attention-output-gate");
  // Gated DeltaNet layers (Qwen3-Next).
  if (M.Value("experimental_attention_variant").is_string()) {
    Arg("--experimental-attention-variant", M.Value("experimental_attention_variant").get<std::string>());
    const Json &Freq = M.Value("linear_attention_freq");
    Arg("--linear-attention-freq", Freq.is_array() ? "'" + Freq.dump() + "'" : num(Freq)); // a Python list it evaluates
    for (const char *F : {"linear_conv_kernel_dim", "linear_key_head_dim", "linear_value_head_dim",
                          "linear_num_key_heads", "linear_num_value_heads"}) {
      const std::string Flag = FlagOf(F);
      Arg(Flag, Int(F));
    }
  }
  // A hybrid Mamba model (pretrain_mamba.py's arguments).
  if (M.Value("hybrid_override_pattern").is_string()) {
    Arg("--hybrid-override-pattern", M.Value("hybrid_override_pattern").get<std::string>());
    for (const char *F : {"mamba_state_dim", "mamba_head_dim", "mamba_num_groups", "mamba_num_heads"})
      if (M.Value(F).is_number_integer()) {
        const std::string Flag = FlagOf(F);
        Arg(Flag, Int(F));
      }
  }
  if (!M.Value("add_bias_linear").get<bool>())
    Arg("--disable-bias-linear");
  if (M.Value("add_qkv_bias").get<bool>())
    Arg("--add-qkv-bias");
  if (M.Value("qk_layernorm").get<bool>())
    Arg("--qk-layernorm");
  if (!M.Value("share_embeddings_and_output_weights").get<bool>())
    Arg("--untie-embeddings-and-output-weights");
  Arg("--make-vocab-size-divisible-by", Int("make_vocab_size_divisible_by"));
  if (const Json &E = M.Value("num_moe_experts"); E.is_number_integer() && E.get<int64_t>() > 0) {
    Arg("--num-experts", Int("num_moe_experts"));
    Arg("--moe-router-topk", Int("moe_router_topk"));
    Arg("--moe-ffn-hidden-size", Int("moe_ffn_hidden_size"));
    if (const Json &Sh = M.Value("moe_shared_expert_intermediate_size"); Sh.is_number_integer() && Sh.get<int64_t>())
      Arg("--moe-shared-expert-intermediate-size", Int("moe_shared_expert_intermediate_size"));
    // Router and layer pattern, where the model sets them.
    for (const char *F : {"moe_router_score_function", "moe_router_num_groups", "moe_router_group_topk",
                          "moe_router_topk_scaling_factor", "moe_router_load_balancing_type", "moe_aux_loss_coeff",
                          "moe_router_dtype"}) {
      const Json &V = M.Value(F);
      const std::string Flag = FlagOf(F);
      if (V.is_string())
        Arg(Flag, V.get<std::string>());
      else if (V.is_number() && V.get<double>() != 0)
        Arg(Flag, num(V));
    }
    for (const char *F : {"moe_router_pre_softmax", "moe_router_enable_expert_bias", "moe_shared_expert_gate"})
      if (M.Value(F).is_boolean() && M.Value(F).get<bool>()) {
        const std::string Flag = FlagOf(F);
        Arg(Flag);
      }
    if (const Json &Freq = M.Value("moe_layer_freq"); Freq.is_array())
      Arg("--moe-layer-freq", "'" + Freq.dump() + "'"); // a Python list Megatron-LM evaluates
    Arg("--moe-grouped-gemm");
    Arg("--moe-token-dispatcher-type", "alltoall");
  }
  if (const Json &Mtp = M.Value("mtp_num_layers"); Mtp.is_number_integer() && Mtp.get<int64_t>() > 0)
    Arg("--mtp-num-layers", Int("mtp_num_layers"));
  // The layout and the training.
  Arg("--tensor-model-parallel-size", std::to_string(L.TP));
  Arg("--pipeline-model-parallel-size", std::to_string(L.PP));
  if (L.VPP > 1)
    Arg("--num-virtual-stages-per-pipeline-rank", std::to_string(L.VPP));
  if (L.FirstStageLayers)
    Arg("--decoder-first-pipeline-num-layers", std::to_string(L.FirstStageLayers));
  if (L.LastStageLayers)
    Arg("--decoder-last-pipeline-num-layers", std::to_string(L.LastStageLayers));
  Arg("--context-parallel-size", num(S.at("cp")));
  Arg("--expert-model-parallel-size", std::to_string(L.EP));
  Arg("--expert-tensor-parallel-size", std::to_string(L.ETP));
  if (S.at("sequence_parallel").get<bool>())
    Arg("--sequence-parallel");
  Arg("--seq-length", num(S.at("seq_length")));
  Arg("--micro-batch-size", num(S.at("micro_batch")));
  Arg("--global-batch-size", num(S.at("global_batch")));
  Arg("--train-iters", num(S.at("train_iters")));
  Arg("--optimizer", S.at("optimizer").get<std::string>());
  if (S.at("distributed_optimizer").get<bool>())
    Arg("--use-distributed-optimizer");
  Arg("--lr", num(S.at("lr")));
  Arg("--min-lr", num(S.at("min_lr")));
  Arg("--lr-decay-style", S.at("lr_decay").get<std::string>());
  Arg("--lr-warmup-iters", num(S.at("warmup_iters")));
  Arg("--lr-decay-iters", num(S.at("train_iters")));
  Arg("--weight-decay", num(S.at("weight_decay")));
  Arg("--adam-beta1", num(S.at("adam_beta1")));
  Arg("--adam-beta2", num(S.at("adam_beta2")));
  Arg("--adam-eps", num(S.at("adam_eps")));
  Arg("--clip-grad", num(S.at("clip_grad")));
  std::string P = S.at("precision").get<std::string>();
  Arg(P == "fp16-mixed" ? "--fp16" : "--bf16");
  if (P == "bf16-fp8-current-scaling") {
    Arg("--fp8-format", "e4m3");
    Arg("--fp8-recipe", "tensorwise");
  } else if (P == "bf16-mxfp8") {
    Arg("--fp8-format", "e4m3");
    Arg("--fp8-recipe", "mxfp8");
  }
  std::string Recompute = S.at("recompute").get<std::string>();
  if (Recompute == "full") {
    Arg("--recompute-granularity", "full");
    Arg("--recompute-method", "uniform");
    Arg("--recompute-num-layers", "1");
  } else if (Recompute == "selective") {
    Arg("--recompute-granularity", "selective");
  }
  Arg("--ckpt-format", "torch_dist");
  if (!Checkpoint.empty()) {
    Arg("--load", Checkpoint);
    if (Mode != "pretrain")
      Arg("--finetune");
  }
  if (M.Value("post_layernorm").is_boolean() && M.Value("post_layernorm").get<bool>())
    Notes.push_back("Megatron-LM has no layer for " + Model +
                    " (norms after attention and MLP, logit soft-capping): these arguments describe its layout "
                    "and training, not a model Megatron-LM can build; train it with Megatron-Bridge (--format "
                    "megatron-bridge-yaml)");
  if (M.Value("hybrid_override_pattern").is_string())
    Notes.push_back(Model + " is a hybrid Mamba model: run these arguments with Megatron-LM's pretrain_mamba.py, "
                            "not pretrain_gpt.py");
  if (M.Value("vision_model").is_string())
    Notes.push_back(Model + " is a vision-language model: these arguments describe its language model; Megatron-LM "
                            "builds no HF vision tower, so train it with Megatron-Bridge (--format "
                            "megatron-bridge-yaml)");
  if (Peft)
    Notes.push_back("Megatron-LM has no LoRA: recipe " + std::string(R.Name) + "'s adapters (dim " + num(S.at("lora_dim")) +
                    ", alpha " + num(S.at("lora_alpha")) +
                    ") are left out of these arguments; train it with Megatron-Bridge (--format "
                    "megatron-bridge-yaml)");
  O << "# recipe " << R.Name << " (" << R.Source << "), " << Mode << " of " << Model << " on "
    << S.at("gpus").get<int>() << (S.at("gpus").get<int>() == 1 ? " GPU" : " GPUs") << "; estimated " << Estimate << "\n";
  for (size_t I = 0; I < A.size(); ++I)
    O << A[I] << (I + 1 < A.size() ? " \\\n" : "\n");
  return O.str();
}

} // namespace bridge
