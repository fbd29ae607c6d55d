//===- PlanTest.cpp - plan expansion, placement, chunks, shard headers ----===//
//
// Where each planned tensor lives under a layout (placementOf: stage, expert
// rank, index within each; chunksOf: each TP/ETP rank's slice per parallel
// style), checked against Megatron-Core's rules written out as index
// arithmetic; and the safetensors reader on malformed headers and indexes,
// each an error naming the file and the tensor.
//
//===----------------------------------------------------------------------===//
#include "bridge/Error.h"
#include "bridge/Files.h"
#include "bridge/Layout.h"
#include "bridge/Plan.h"
#include "bridge/Registry.h"
#include "bridge/Safetensors.h"

#include <doctest/doctest.h>

#include "TestUtil.h"

#include <cstdint>
#include <fstream>
#include <map>
#include <unistd.h>

using namespace bridge;
using bridge::test::errorOf;

namespace {

Json llamaConfig(int Layers, bool Tied) {
  Json HF = Json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "torch_dtype": "bfloat16", "hidden_act": "silu"})");
  HF["num_hidden_layers"] = Layers;
  HF["tie_word_embeddings"] = Tied;
  return HF;
}

struct Planned {
  std::vector<Json> Fields;
  Plan P;
  const PlannedTensor &operator[](const std::string &LocalName) const {
    for (const PlannedTensor &PT : P.Tensors)
      if (PT.LocalName == LocalName)
        return PT;
    FAIL("no planned tensor " << LocalName);
    return P.Tensors.front();
  }
};

Planned planOf(const char *ModelType, const Json &HF) {
  const MappingTable *T = findMappingByModelType(ModelType);
  REQUIRE(T);
  Planned Out{importConfig(*T, schema(), HF), {}};
  Out.P = expandPlan(*T, schema(), Out.Fields);
  return Out;
}


} // namespace

TEST_CASE("placementOf: layers by stage (even, uneven, virtual), the rest first or last") {
  Planned L = planOf("llama", llamaConfig(4, /*Tied=*/false));
  auto At = [&](const std::string &Name, const Layout &Lay) { return placementOf(L[Name], Lay, schema(), L.Fields); };
  Layout Two;
  Two.PP = 2;
  for (int Layer = 0; Layer < 4; ++Layer) {
    Placement P = At("decoder.layers." + std::to_string(Layer) + ".self_attention.linear_qkv.weight", Two);
    CHECK(P.Stage == Layer / 2);
    CHECK(P.LayerInStage == Layer % 2);
    CHECK(P.ExpertRank == -1);
  }
  CHECK(At("embedding.word_embeddings.weight", Two).Stage == 0);
  CHECK(At("decoder.final_layernorm.weight", Two).Stage == 1);
  CHECK(At("output_layer.weight", Two).Stage == 1);
  CHECK(At("output_layer.weight", Two).LayerInStage == -1);
  // Uneven: one layer first, one last, the middle stage the other two.
  Layout Uneven;
  Uneven.PP = 3;
  Uneven.FirstStageLayers = 1;
  Uneven.LastStageLayers = 1;
  const int StageOfLayer[] = {0, 1, 1, 2}, InStage[] = {0, 0, 1, 0};
  for (int Layer = 0; Layer < 4; ++Layer) {
    Placement P = At("decoder.layers." + std::to_string(Layer) + ".mlp.linear_fc2.weight", Uneven);
    CHECK(P.Stage == StageOfLayer[Layer]);
    CHECK(P.LayerInStage == InStage[Layer]);
  }
  // Virtual stages: blocks of N/PP/VPP layers go round robin over the ranks.
  Layout Virtual;
  Virtual.PP = 2;
  Virtual.VPP = 2;
  for (int Layer = 0; Layer < 4; ++Layer)
    CHECK(At("decoder.layers." + std::to_string(Layer) + ".mlp.linear_fc2.weight", Virtual).Stage == Layer % 2);
}

TEST_CASE("placementOf: experts spread evenly over the EP ranks") {
  Json HF = llamaConfig(2, true);
  HF["model_type"] = "qwen3_moe";
  HF["architectures"] = Json::array({"Qwen3MoeForCausalLM"});
  HF["num_experts"] = 8;
  HF["num_experts_per_tok"] = 2;
  HF["moe_intermediate_size"] = 32;
  HF["head_dim"] = 16;
  Planned M = planOf("qwen3_moe", HF);
  Layout EP;
  EP.EP = 4;
  for (int E = 0; E < 8; ++E) {
    Placement P = placementOf(M["decoder.layers.1.mlp.experts.local_experts." + std::to_string(E) + ".linear_fc1.weight"],
                              EP, schema(), M.Fields);
    CHECK(P.ExpertRank == E / 2);
    CHECK(P.ExpertInRank == E % 2);
    CHECK(P.LayerInStage == 1);
  }
  CHECK(placementOf(M["decoder.layers.0.mlp.router.weight"], EP, schema(), M.Fields).ExpertRank == -1);
}

TEST_CASE("chunksOf: each rank's slice by parallel style") {
  Planned L = planOf("llama", llamaConfig(2, /*Tied=*/false));
  Layout TP2;
  TP2.TP = 2;
  auto Chunks = [&](const std::string &Name) { return chunksOf(L[Name], TP2); };
  // QKV: whole query groups per rank, (4 + 2*2) heads of 16 rows, 2 groups.
  auto Q = Chunks("decoder.layers.0.self_attention.linear_qkv.weight");
  REQUIRE(Q.size() == 2);
  CHECK(Q[1].Offsets == std::vector<int64_t>{64, 0});
  CHECK(Q[1].Sizes == std::vector<int64_t>{64, 64});
  // Gated fc1 [gate; up]: rank p holds gate_p and up_p (chunks p and T + p).
  auto G = Chunks("decoder.layers.0.mlp.linear_fc1.weight");
  REQUIRE(G.size() == 4);
  const int64_t Starts[] = {0, 64, 128, 192};
  for (int C = 0; C < 4; ++C) {
    CHECK(G[C].Offsets == std::vector<int64_t>{Starts[C], 0});
    CHECK(G[C].Sizes == std::vector<int64_t>{64, 64});
  }
  // Row-parallel: the input dim.
  auto R = Chunks("decoder.layers.1.mlp.linear_fc2.weight");
  REQUIRE(R.size() == 2);
  CHECK(R[1].Offsets == std::vector<int64_t>{0, 64});
  CHECK(R[1].Sizes == std::vector<int64_t>{64, 64});
  // Vocab: rows; replicated norms whole.
  CHECK(Chunks("embedding.word_embeddings.weight").size() == 2);
  CHECK(Chunks("decoder.final_layernorm.weight").size() == 1);
  // A vocabulary TP does not divide stays one chunk (the loader pads it).
  Json Odd = llamaConfig(2, false);
  Odd["vocab_size"] = 255;
  Planned O = planOf("llama", Odd);
  CHECK(chunksOf(O["embedding.word_embeddings.weight"], TP2).size() == 1);
}

namespace {
/// A safetensors file of \p Header (as written) and \p Data bytes.
std::string shard(const std::string &Dir, const std::string &Name, const std::string &Header,
                  const std::string &Data = "") {
  std::string Path = Dir + "/" + Name;
  std::ofstream Out(Path, std::ios::binary);
  uint64_t N = Header.size();
  for (int I = 0; I < 8; ++I)
    Out.put(static_cast<char>(N >> (8 * I)));
  Out << Header << Data;
  return Path;
}
struct Dir {
  std::string Path;
  Dir() {
    char T[] = "/tmp/bridge-plan-XXXXXX";
    Path = ::mkdtemp(T);
  }
  ~Dir() { files::removeAll(Path); }
};
} // namespace

TEST_CASE("safetensors: malformed headers are errors naming the file and the tensor") {
  Dir D;
  const std::string Ok = R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})";
  CHECK_NOTHROW(SafetensorsFile(shard(D.Path, "ok.safetensors", Ok, std::string(8, '\0'))));
  struct Case {
    const char *Header, *Data, *Message;
  } Cases[] = {
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", "", "outside the data area of 0 bytes"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", "1234", "holds 4 bytes but its dtype and shape need 8"},
      {R"({"w": {"dtype": "BX16", "shape": [2], "data_offsets": [0, 4]}})", "1234", "tensor 'w' has unknown dtype 'BX16'"},
      {R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 4]}})", "1234", "tensor 'w' has a negative or non-integer dimension"},
      {R"({"w": {"dtype": "F32", "shape": 2, "data_offsets": [0, 4]}})", "1234", "tensor 'w' has a shape that is not a list"},
      {R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}})", "1234", "tensor 'w' has data_offsets [4, 0]"},
      {R"({"w": {"dtype": "F32", "shape": [1]}})", "1234", "tensor 'w' lacks dtype, shape or data_offsets"},
      {R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
           "v": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}})", "12345678", "two tensors overlap"},
      {R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})",
       "1234", "has the key 'w' twice"},
      {R"({"__metadata__": {"format": 1}})", "", "__metadata__ value of 'format' is not a string"},
      {R"([1, 2])", "", "the header is not a JSON object"},
      {R"({"w": )", "", "the header is not valid JSON"},
      {R"({"w": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 4]}})", "1234",
       "tensor 'w' is impossibly large"},
  };
  int I = 0;
  for (const Case &C : Cases) {
    std::string Path = shard(D.Path, "bad" + std::to_string(I++) + ".safetensors", C.Header, C.Data);
    std::string E = errorOf([&] { SafetensorsFile F(Path); });
    CHECK_MESSAGE(E.find(Path) != std::string::npos, E);
    CHECK_MESSAGE(E.find(C.Message) != std::string::npos, C.Message << " in: " << E);
  }
  // Shorter than the length prefix, and a length past the end.
  std::ofstream(D.Path + "/short.safetensors") << "abc";
  CHECK(errorOf([&] { SafetensorsFile F(D.Path + "/short.safetensors"); }).find("shorter than the 8-byte header") !=
        std::string::npos);
  std::string Past = D.Path + "/past.safetensors";
  {
    std::ofstream Out(Past, std::ios::binary);
    Out.put(char(100));
    Out << std::string(7, '\0') << "{}";
  }
  CHECK(errorOf([&] { SafetensorsFile F(Past); }).find("header length 100 runs past the end of the file") !=
        std::string::npos);
}

TEST_CASE("safetensors: an index must name its shards, inside the directory, each tensor once") {
  Dir D;
  shard(D.Path, "a.safetensors", R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", "1234");
  shard(D.Path, "b.safetensors", R"({"v": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", "1234");
  auto WithIndex = [&](const std::string &Index) {
    std::ofstream(D.Path + "/model.safetensors.index.json") << Index;
    return errorOf([&] { SafetensorsCheckpoint C(D.Path); });
  };
  CHECK(WithIndex(R"({"weight_map": {"w": "a.safetensors", "v": "b.safetensors"}})").empty());
  CHECK(WithIndex(R"({"weight_map": {"w": "a.safetensors", "v": "../b.safetensors"}})")
            .find("weight_map entry 'v' names '../b.safetensors', outside the checkpoint directory") !=
        std::string::npos);
  CHECK(WithIndex(R"({"weight_map": {"w": "a.safetensors"}, "x": 1, "weight_map": {}})").find("twice") !=
        std::string::npos);
  CHECK(WithIndex(R"({"weight_map": {"w": "a.safetensors", "v": "a.safetensors"}})")
            .find("tensor 'v' is listed in the index but missing from the file") != std::string::npos);
  CHECK(WithIndex(R"({"weight_map": {"w": "b.safetensors", "v": "b.safetensors"}})")
            .find("tensor 'w' is listed in the index but missing from the file") != std::string::npos);
  CHECK(WithIndex(R"({"weight_map": []})").find("has no weight_map object") != std::string::npos);
  CHECK(WithIndex(R"({"weight_map": {"w": 3}})").find("weight_map entry 'w' is not a file name") !=
        std::string::npos);
}
