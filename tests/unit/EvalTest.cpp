//===- EvalTest.cpp - the expression machine and config import/export ----===//
//
// Runs the generated tables of the shipped mappings on hand-made config.json
// values. The expected values are Megatron-Bridge's config semantics
// (shared/reference/megatron-bridge-semantics.md, section 7).
//
//===----------------------------------------------------------------------===//
#include "bridge/Config.h"
#include "bridge/Plan.h"
#include "bridge/Registry.h"
#include "bridge/StrictJson.h"

#include <doctest/doctest.h>

#include <map>

using namespace bridge;

namespace {
Json fieldOf(const std::vector<Json> &Fields, const char *Name) {
  for (uint32_t I = 0; I < schema().Fields.Size; ++I)
    if (std::string(schema().Fields[I].Name) == Name)
      return Fields[I];
  FAIL("no field " << Name);
  return nullptr;
}

Json tinyLlama() {
  return Json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 256,
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "tie_word_embeddings": true, "torch_dtype": "bfloat16", "hidden_act": "silu",
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"}})");
}
} // namespace

TEST_CASE("llama config: renames, derived kv_channels, defaults, llama3 rope scaling") {
  const MappingTable *T = findMappingByModelType("llama");
  REQUIRE(T);
  auto F = importConfig(*T, schema(), tinyLlama());
  CHECK(fieldOf(F, "num_layers") == 2);
  CHECK(fieldOf(F, "num_query_groups") == 2);
  CHECK(fieldOf(F, "kv_channels") == 16); // 64 / 4, head_dim absent
  CHECK(fieldOf(F, "normalization") == "RMSNorm");
  CHECK(fieldOf(F, "gated_linear_unit") == true);
  CHECK(fieldOf(F, "share_embeddings_and_output_weights") == true);
  CHECK(fieldOf(F, "rope_scaling") == true);
  CHECK(fieldOf(F, "rope_scaling_factor") == 32.0);
  CHECK(fieldOf(F, "rotary_base") == 500000.0);
  CHECK(fieldOf(F, "params_dtype") == "bfloat16");
  CHECK(fieldOf(F, "bf16") == true); // schema default over another field
  CHECK(fieldOf(F, "add_bias_linear") == false);
  CHECK(fieldOf(F, "num_moe_experts").is_null());
}

TEST_CASE("llama config export writes back what import read") {
  const MappingTable *T = findMappingByModelType("llama");
  Json HF = tinyLlama();
  Json Back = exportConfig(*T, schema(), importConfig(*T, schema(), HF));
  for (const char *K : {"hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                        "num_hidden_layers", "vocab_size", "max_position_embeddings", "rms_norm_eps",
                        "rope_theta", "tie_word_embeddings", "torch_dtype", "hidden_act", "rope_scaling",
                        "model_type", "architectures"})
    // Key order is not part of the contract.
    CHECK_MESSAGE(nlohmann::json::parse(Back[K].dump()) == nlohmann::json::parse(HF[K].dump()), K);
  CHECK(Back["head_dim"] == 16);
}

TEST_CASE("a config that is not exactly divisible is an error naming the rule") {
  const MappingTable *T = findMappingByModelType("llama");
  Json HF = tinyLlama();
  HF["num_attention_heads"] = 5;
  try {
    importConfig(*T, schema(), HF);
    FAIL("expected an error");
  } catch (const Error &E) {
    std::string M = E.what();
    CHECK(M.find("gpt_decoder.bridge:") != std::string::npos);
    CHECK(M.find("64 is not divisible by 5") != std::string::npos);
  }
}

TEST_CASE("a missing required HF field names the Megatron field") {
  const MappingTable *T = findMappingByModelType("llama");
  Json HF = tinyLlama();
  HF.erase("num_hidden_layers");
  CHECK_THROWS_WITH_AS(importConfig(*T, schema(), HF),
                       doctest::Contains("config.json has no 'num_hidden_layers' for Megatron field 'num_layers'"), Error);
}

TEST_CASE("a requirement on config.json alone is checked before the rules it guards") {
  // mistral3 requires vision_config before a rule copies it: without one, the
  // requirement's message, not the rule's missing key.
  const MappingTable *T = findMappingByModelType("mistral3");
  REQUIRE(T);
  Json HF = Json::parse(R"({"model_type": "mistral3", "text_config": {"model_type": "mistral"}})");
  CHECK_THROWS_WITH_AS(importConfig(*T, schema(), HF),
                       doctest::Contains("a Mistral 3 config.json has a vision_config section"), Error);
}

TEST_CASE("mistral sliding window maps to window_size and back") {
  const MappingTable *T = findMappingByModelType("mistral");
  REQUIRE(T);
  Json HF = tinyLlama();
  HF["model_type"] = "mistral";
  HF.erase("rope_scaling");
  HF["sliding_window"] = 4096;
  auto F = importConfig(*T, schema(), HF);
  CHECK(fieldOf(F, "window_size") == Json::array({4095, 0}));
  CHECK(exportConfig(*T, schema(), F)["sliding_window"] == 4096);
  HF["sliding_window"] = nullptr;
  auto G = importConfig(*T, schema(), HF);
  CHECK(fieldOf(G, "window_size").is_null());
  CHECK(exportConfig(*T, schema(), G)["sliding_window"].is_null());
}

TEST_CASE("gpt-oss layer_types become a per-layer window list (indicator) and come back (labels)") {
  const MappingTable *T = findMappingByModelType("gpt_oss");
  REQUIRE(T);
  Json HF = tinyLlama();
  HF["model_type"] = "gpt_oss";
  HF["architectures"] = Json::array({"GptOssForCausalLM"});
  HF["num_hidden_layers"] = 3;
  HF["num_local_experts"] = 4;
  HF["num_experts_per_tok"] = 2;
  HF["head_dim"] = 16;
  HF["sliding_window"] = 128;
  HF["layer_types"] = Json::array({"sliding_attention", "full_attention", "sliding_attention"});
  HF["rope_scaling"] = Json::parse(R"({"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                      "original_max_position_embeddings": 4096, "truncate": false})");
  auto F = importConfig(*T, schema(), HF);
  CHECK(fieldOf(F, "window_size") == Json::array({127, 0}));
  CHECK(fieldOf(F, "window_attn_skip_freq") == Json::array({1, 0, 1}));
  CHECK(fieldOf(F, "yarn_correction_range_round_to_int") == false);
  CHECK(fieldOf(F, "yarn_mscale_all_dim") == 0.0);
  Json Back = exportConfig(*T, schema(), F);
  CHECK(Back["layer_types"] == HF["layer_types"]);
  CHECK(Back["sliding_window"] == 128);
  HF["layer_types"][1] = "chunked_attention"; // anything but sliding_attention is not windowed
  CHECK(fieldOf(importConfig(*T, schema(), HF), "window_attn_skip_freq") == Json::array({1, 0, 1}));
}

TEST_CASE("plan: every tensor once, TE and local names, tied output layer") {
  const MappingTable *T = findMappingByModelType("llama");
  auto F = importConfig(*T, schema(), tinyLlama());
  Plan P = expandPlan(*T, schema(), F, /*UseTENames=*/true);
  CHECK(P.Tensors.size() == 2 + 6 * 2); // tied: no output_layer
  bool SawTE = false;
  for (auto &PT : P.Tensors)
    if (PT.Name == "decoder.layers.1.self_attention.linear_qkv.layer_norm_weight") {
      SawTE = true;
      CHECK(PT.LocalName == "decoder.layers.1.input_layernorm.weight");
      CHECK(PT.Shape == std::vector<int64_t>{64});
    }
  CHECK(SawTE);
  REQUIRE(P.Ties.size() == 1);
  CHECK(P.Ties[0].first == "lm_head.weight");
}

TEST_CASE("plan: qwen2 has qkv biases with the interleaved global shape") {
  const MappingTable *T = findMappingByModelType("qwen2");
  REQUIRE(T);
  Json HF = tinyLlama();
  HF["model_type"] = "qwen2";
  HF.erase("rope_scaling");
  auto F = importConfig(*T, schema(), HF);
  Plan P = expandPlan(*T, schema(), F);
  int Biases = 0;
  for (auto &PT : P.Tensors)
    if (PT.Name.find("linear_qkv.bias") != std::string::npos) {
      ++Biases;
      CHECK(PT.Shape == std::vector<int64_t>{(4 + 2 * 2) * 16});
      CHECK(PT.sources().size() == 3);
    }
  CHECK(Biases == 2);
}

TEST_CASE("config.json: Python's NaN and Infinity literals read as strings, strings left alone") {
  Json J = parseJson<Json>(
      R"({"time_step_limit": [0.0, Infinity], "a": -Infinity, "b": NaN, "s": "Infinity \" NaN", "n": 1})",
      "config.json", "config.json");
  CHECK(J["time_step_limit"][1] == std::string(kPythonFloat) + "Infinity");
  CHECK(J["a"] == std::string(kPythonFloat) + "-Infinity");
  CHECK(J["b"] == std::string(kPythonFloat) + "NaN");
  CHECK(J["s"] == "Infinity \" NaN");
  CHECK(J["n"] == 1);
  CHECK_THROWS(parseJson<Json>("{\"x\": Inf}", "config.json", "config.json"));
  // Written back as Python wrote them; a string that says Infinity stays one.
  CHECK(dumpPythonJson(J, -1) ==
        R"({"time_step_limit":[0.0,Infinity],"a":-Infinity,"b":NaN,"s":"Infinity \" NaN","n":1})");
}

TEST_CASE("nemotron_h: layers_block_type becomes hybrid_override_pattern and comes back") {
  Json HF = Json::parse(R"({
    "architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h",
    "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 16, "vocab_size": 256, "max_position_embeddings": 128, "layer_norm_epsilon": 1e-05,
    "mamba_num_heads": 8, "mamba_head_dim": 16, "n_groups": 2, "ssm_state_size": 16,
    "layers_block_type": ["linear_attention", "moe", "full_attention", "mlp"],
    "n_routed_experts": 4, "moe_intermediate_size": 32, "moe_shared_expert_intermediate_size": 64,
    "num_experts_per_tok": 2, "routed_scaling_factor": 2.5, "n_group": 1, "topk_group": 1})");
  const MappingTable &T = *findMappingByModelType(HF["model_type"].get<std::string>());
  std::vector<Json> F = importConfig(T, schema(), HF);
  CHECK(fieldOf(F, "hybrid_override_pattern") == "ME*-");
  CHECK(fieldOf(F, "num_layers") == 4);
  CHECK(fieldOf(F, "is_hybrid_model") == true);
  CHECK(fieldOf(F, "num_moe_experts") == 4);
  CHECK(fieldOf(F, "moe_router_score_function") == "sigmoid");
  Json Back = exportConfig(T, schema(), F, &HF);
  CHECK(Back["layers_block_type"] == HF["layers_block_type"]);
  CHECK(Back["hybrid_override_pattern"] == "ME*-");
  // The plan: a Mamba layer's in_proj in its five torch_dist parts, each a
  // row block of the one HF tensor.
  Plan P = expandPlan(T, schema(), F);
  std::map<int64_t, int64_t> Rows; // first row -> rows, of the in_proj blocks
  for (const PlannedTensor &PT : P.Tensors)
    if (PT.LocalName.rfind("decoder.layers.0.mixer.in_proj.weight.", 0) == 0) {
      CHECK(PT.sources() == std::vector<std::string>{"backbone.layers.0.mixer.in_proj.weight"});
      Rows[PT.chain().SourceRows[0][0]] = PT.chain().SourceRows[0][1];
    }
  // [z | x | B | C | dt]: 128, 128, 32, 32, 8 rows.
  CHECK(Rows == std::map<int64_t, int64_t>{{0, 128}, {128, 128}, {256, 32}, {288, 32}, {320, 8}});
  // A pattern that does not cover every layer is an error naming the layer.
  HF["num_hidden_layers"] = 5;
  CHECK_THROWS_WITH_AS(importConfig(T, schema(), HF), doctest::Contains("num_hidden_layers differs"), Error);
}

TEST_CASE("qwen2_5_vl: the language fields read from text_config, written back there") {
  Json HF = Json::parse(R"({
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
    "tie_word_embeddings": false, "dtype": "bfloat16", "image_token_id": 151655, "video_token_id": 151656,
    "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    "vision_config": {"depth": 2, "hidden_size": 32, "out_hidden_size": 64},
    "text_config": {"model_type": "qwen2_5_vl_text", "hidden_size": 64, "intermediate_size": 128,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
                    "vocab_size": 256, "max_position_embeddings": 128, "rms_norm_eps": 1e-06,
                    "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6}}})");
  const MappingTable &T = *findMappingByModelType(HF["model_type"].get<std::string>());
  std::vector<Json> F = importConfig(T, schema(), HF);
  CHECK(fieldOf(F, "hidden_size") == 64);
  CHECK(fieldOf(F, "mrope_section") == Json::array({2, 3, 3}));
  CHECK(fieldOf(F, "vision_model") == "qwen2_5_vl");
  CHECK(fieldOf(F, "params_dtype") == "bfloat16");
  // Every key of the source comes back where it was; what the source left
  // out (defaults) goes into its text section.
  Json Back = exportConfig(T, schema(), F, &HF);
  auto Same = [](const Json &A, const Json &B) { // key order aside
    return nlohmann::json::parse(A.dump()) == nlohmann::json::parse(B.dump());
  };
  for (auto It = HF.begin(); It != HF.end(); ++It)
    if (It.key() != "text_config")
      CHECK_MESSAGE(Same(Back[It.key()], It.value()), It.key());
  for (auto It = HF["text_config"].begin(); It != HF["text_config"].end(); ++It)
    CHECK_MESSAGE(Same(Back["text_config"][It.key()], It.value()), It.key());
  CHECK(Back["text_config"]["hidden_act"] == "silu");
  CHECK(!Back.contains("hidden_size"));
}

namespace {
/// Evaluates the call NAME(args...) of Builtins.def on literal arguments.
Json call(const char *Name, std::vector<Json> Args) {
  std::vector<Insn> Code;
  std::vector<std::string> Strings;
  Strings.reserve(Args.size() + 1);
  for (const Json &A : Args) {
    if (A.is_number_integer()) {
      Code.push_back({ExprOp::PushInt, A.get<int64_t>(), 0, nullptr});
    } else if (A.is_string()) {
      Strings.push_back(A.get<std::string>());
      Code.push_back({ExprOp::PushString, 0, 0, Strings.back().c_str()});
    } else {
      for (const Json &X : A)
        Code.push_back({ExprOp::PushInt, X.get<int64_t>(), 0, nullptr});
      Code.push_back({ExprOp::MakeList, static_cast<int64_t>(A.size()), 0, nullptr});
    }
  }
  Code.push_back({ExprOp::Call, static_cast<int64_t>(Args.size()), 0, Name});
  Expr E{{Code.data(), static_cast<uint32_t>(Code.size())}, Name};
  EvalEnv Env;
  return evaluate(E, Env, "test");
}
} // namespace

TEST_CASE("range, mask, where and index_of: per-layer lists from lists of layers and back") {
  CHECK(call("range", {4}) == Json::array({0, 1, 2, 3}));
  CHECK(call("range", {0}) == Json::array());
  CHECK(call("mask", {5, Json::array({0, 3})}) == Json::array({1, 0, 0, 1, 0}));
  CHECK(call("where", {Json::array({1, 0, 0, 1, 0}), 1}) == Json::array({0, 3}));
  CHECK(call("where", {call("mask", {6, Json::array({2, 5})}), 1}) == Json::array({2, 5}));
  CHECK(call("index_of", {Json::array({7, 8, 9}), 9}) == 2);
  CHECK_THROWS_WITH_AS(call("mask", {3, Json::array({3})}), doctest::Contains("outside 0 .. 2"), Error);
  CHECK_THROWS_WITH_AS(call("index_of", {Json::array({7}), 9}), doctest::Contains("is not in"), Error);
  CHECK_THROWS_WITH_AS(call("range", {-1}), doctest::Contains("range() needs a count"), Error);
  // A hostile count is refused before any list is built, by every builtin that builds one.
  const int64_t Huge = int64_t(1) << 40;
  CHECK_THROWS_WITH_AS(call("range", {Huge}), doctest::Contains("range() needs a count from 0 to 2^24"), Error);
  CHECK_THROWS_WITH_AS(call("mask", {Huge, Json::array()}), doctest::Contains("mask() needs a count"), Error);
  CHECK_THROWS_WITH_AS(call("repeat", {1, Huge}), doctest::Contains("repeat() needs a count"), Error);
  CHECK(call("repeat", {7, 2}) == Json::array({7, 7}));
}
