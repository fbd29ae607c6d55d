//===- OpsTest.cpp - every weight op against its inverse and its layout ----===//
//
// Each op that export inverts, applied and undone, gives its input back bit
// for bit, in the dtypes checkpoints hold; each layout op puts every element
// where shared/reference/megatron-bridge-semantics.md says (checked element
// by element with index arithmetic, not against a stored tensor); the
// slicing ops (expert, rows), whose inverse is export's assembly, tile their
// source; the dequantization ops agree with a reference written from their
// format's definition. Linked against the runtime and libtorch.
//
//===----------------------------------------------------------------------===//
#include "Ops.h"

#include "bridge/Registry.h"

#include <ATen/ATen.h>
// c10's logging defines a CHECK that aborts; the tests mean doctest's.
#undef CHECK
#include <doctest/doctest.h>

#include "TestUtil.h"

#include <cmath>
#include <cstring>

using namespace bridge;
using bridge::test::errorOf;
using namespace bridge::exec;

namespace {

/// Heads, query groups and head size as the ops read them.
struct Attention {
  std::vector<Json> Fields;
  OpConfig Cfg;
  Attention(int64_t Heads, int64_t Groups, int64_t HeadDim)
      : Fields(configFromJson(schema(), Json{{"num_attention_heads", Heads},
                                             {"num_query_groups", Groups},
                                             {"kv_channels", HeadDim}})),
        Cfg(schema(), Fields) {}
};

bool sameBytes(const at::Tensor &A, const at::Tensor &B) {
  if (A.scalar_type() != B.scalar_type() || A.sizes() != B.sizes())
    return false;
  at::Tensor X = A.contiguous(), Y = B.contiguous();
  return std::memcmp(X.data_ptr(), Y.data_ptr(), X.nbytes()) == 0;
}

at::Tensor randomOf(std::vector<int64_t> Shape, at::ScalarType T) {
  return at::randn(Shape, at::TensorOptions().dtype(at::kFloat)).to(T);
}

/// forward then inverse of \p Kind on \p In gives \p In back, bit for bit.
void checkRoundTrip(Op Kind, const std::vector<at::Tensor> &In, const OpConfig &Cfg, const OpParams &P = {},
                    Transform Custom = Transform::None) {
  at::Tensor Out = forward(Kind, Custom, In, P, Cfg, "test");
  std::vector<DType> Types;
  for (const at::Tensor &T : In)
    Types.push_back(fromScalarType(T.scalar_type()));
  std::vector<at::Tensor> Back = inverse(Kind, Custom, Out, static_cast<unsigned>(In.size()), P, Cfg, Types, "test");
  REQUIRE(Back.size() == In.size());
  for (size_t I = 0; I < In.size(); ++I)
    CHECK(sameBytes(Back[I], In[I]));
}


} // namespace

TEST_CASE("qkv: per query group [q heads of the group; k; v], and back") {
  for (auto [NH, NG] : {std::pair<int64_t, int64_t>{8, 2}, {8, 8}, {4, 1}}) {
    const int64_t D = 4, Hidden = 16;
    Attention A(NH, NG, D);
    for (at::ScalarType T : {at::kBFloat16, at::kFloat, at::kHalf}) {
      at::Tensor Q = randomOf({NH * D, Hidden}, T), K = randomOf({NG * D, Hidden}, T), V = randomOf({NG * D, Hidden}, T);
      at::Tensor Out = forward(Op::FuseQKV, Transform::None, {Q, K, V}, {}, A.Cfg, "test");
      const int64_t R = NH / NG;
      REQUIRE(Out.size(0) == (NH + 2 * NG) * D);
      for (int64_t G = 0; G < NG; ++G)
        for (int64_t Dd = 0; Dd < D; ++Dd) {
          int64_t Base = G * (R + 2) * D;
          for (int64_t H = 0; H < R; ++H)
            CHECK(sameBytes(Out[Base + H * D + Dd], Q[(G * R + H) * D + Dd]));
          CHECK(sameBytes(Out[Base + R * D + Dd], K[G * D + Dd]));
          CHECK(sameBytes(Out[Base + (R + 1) * D + Dd], V[G * D + Dd]));
        }
      checkRoundTrip(Op::FuseQKV, {Q, K, V}, A.Cfg);
      // Biases (one dim) follow the same rows.
      checkRoundTrip(Op::FuseQKV, {Q.select(1, 0).contiguous(), K.select(1, 0).contiguous(),
                                   V.select(1, 0).contiguous()},
                     A.Cfg);
      // An HF-fused [Q; K; V] (Phi-3) becomes the same interleaved tensor.
      at::Tensor Concat = forward(Op::QKVFromConcat, Transform::None, {at::cat({Q, K, V}, 0)}, {}, A.Cfg, "test");
      CHECK(sameBytes(Concat, Out));
      checkRoundTrip(Op::QKVFromConcat, {at::cat({Q, K, V}, 0)}, A.Cfg);
      // Export's split of a non-contiguous fused tensor (a column slice, as a
      // TP join may give): q, k and v, each contiguous.
      at::Tensor Slice = at::cat({Out, Out}, 1).narrow(1, Hidden, Hidden);
      REQUIRE(!Slice.is_contiguous());
      auto Parts = inverse(Op::FuseQKV, Transform::None, Slice, 3, {}, A.Cfg, {}, "test");
      CHECK(sameBytes(Parts[0], Q));
      CHECK(sameBytes(Parts[1], K));
      CHECK(sameBytes(Parts[2], V));
      CHECK((Parts[0].is_contiguous() && Parts[1].is_contiguous() && Parts[2].is_contiguous()));
    }
  }
  Attention A(8, 2, 4);
  at::Tensor Q = at::zeros({8 * 4 + 1, 16}), K = at::zeros({8, 16});
  CHECK(errorOf([&] { forward(Op::FuseQKV, Transform::None, {Q, K, K}, {}, A.Cfg, "rule"); })
            .find("rule: error: q has shape [33, 16] but needs 32 rows") == 0);
}

TEST_CASE("qkv_gated: HF q_proj [q_h; gate_h] per head, Megatron [q heads; gate heads; k; v] per group") {
  const int64_t NH = 4, NG = 2, D = 2, R = NH / NG;
  Attention A(NH, NG, D);
  at::Tensor Q = randomOf({2 * NH * D, 8}, at::kBFloat16), K = randomOf({NG * D, 8}, at::kBFloat16),
             V = randomOf({NG * D, 8}, at::kBFloat16);
  at::Tensor Out = forward(Op::FuseQKVGated, Transform::None, {Q, K, V}, {}, A.Cfg, "test");
  for (int64_t G = 0; G < NG; ++G)
    for (int64_t H = 0; H < R; ++H)
      for (int64_t Dd = 0; Dd < D; ++Dd) {
        int64_t Head = G * R + H, Base = G * (2 * R + 2) * D;
        CHECK(sameBytes(Out[Base + H * D + Dd], Q[Head * 2 * D + Dd]));              // query
        CHECK(sameBytes(Out[Base + (R + H) * D + Dd], Q[Head * 2 * D + D + Dd]));    // its gate
      }
  checkRoundTrip(Op::FuseQKVGated, {Q, K, V}, A.Cfg);
}

TEST_CASE("gated_mlp, gate_up and gate_up_interleaved: fc1 is [gate; up]") {
  Attention A(4, 2, 2);
  at::Tensor Gate = randomOf({6, 4}, at::kBFloat16), Up = randomOf({6, 4}, at::kBFloat16);
  at::Tensor Fc1 = forward(Op::FuseGatedMLP, Transform::None, {Gate, Up}, {}, A.Cfg, "test");
  CHECK(sameBytes(Fc1, at::cat({Gate, Up}, 0)));
  checkRoundTrip(Op::FuseGatedMLP, {Gate, Up}, A.Cfg);
  checkRoundTrip(Op::GateUpConcat, {at::cat({Gate, Up}, 0)}, A.Cfg);
  // gpt-oss: rows alternate gate, up.
  at::Tensor Interleaved = at::stack({Gate, Up}, 1).reshape({12, 4});
  CHECK(sameBytes(forward(Op::GateUpInterleaved, Transform::None, {Interleaved}, {}, A.Cfg, "test"), Fc1));
  checkRoundTrip(Op::GateUpInterleaved, {Interleaved}, A.Cfg);
  CHECK(errorOf([&] {
          forward(Op::GateUpInterleaved, Transform::None, {at::zeros({5, 4})}, {}, A.Cfg, "r");
        }).find("odd number of rows 5") != std::string::npos);
  // Export's halves of a non-contiguous fc1 (a column slice) are its rows, and an odd one is refused.
  at::Tensor Wide = at::cat({Fc1, Fc1}, 1), Slice = Wide.narrow(1, 0, 4);
  REQUIRE(!Slice.is_contiguous());
  auto Halves = inverse(Op::FuseGatedMLP, Transform::None, Slice, 2, {}, A.Cfg, {}, "test");
  CHECK(sameBytes(Halves[0], Gate));
  CHECK(sameBytes(Halves[1], Up));
  CHECK(errorOf([&] {
          inverse(Op::FuseGatedMLP, Transform::None, at::zeros({5, 4}), 2, {}, A.Cfg, {}, "r");
        }).find("gated_mlp needs an even dim 0") != std::string::npos);
}

TEST_CASE("transpose, permute, cast, identity, swap_halves: undone bit for bit") {
  Attention A(4, 2, 2);
  at::Tensor M = randomOf({6, 4}, at::kBFloat16);
  CHECK(sameBytes(forward(Op::Transpose, Transform::None, {M}, {}, A.Cfg, "t"), M.t()));
  checkRoundTrip(Op::Transpose, {M}, A.Cfg);
  checkRoundTrip(Op::Identity, {M}, A.Cfg);
  at::Tensor X = randomOf({2, 3, 4}, at::kFloat);
  OpParams Dims{{"dims", Json::array({2, 0, 1})}};
  at::Tensor P = forward(Op::Permute, Transform::None, {X}, Dims, A.Cfg, "t");
  CHECK(P.sizes() == at::IntArrayRef({4, 2, 3}));
  CHECK(sameBytes(P[3][1][2], X[1][2][3]));
  checkRoundTrip(Op::Permute, {X}, A.Cfg, Dims);
  // bf16 and fp16 widen to fp32 exactly and come back.
  for (at::ScalarType T : {at::kBFloat16, at::kHalf})
    checkRoundTrip(Op::Cast, {randomOf({5, 3}, T)}, A.Cfg, {{"dtype", "float32"}});
  at::Tensor H = randomOf({6, 2}, at::kBFloat16);
  at::Tensor S = forward(Op::Transform, Transform::SwapHalves, {H}, {}, A.Cfg, "t");
  CHECK(sameBytes(S, at::cat({H.narrow(0, 3, 3), H.narrow(0, 0, 3)}, 0)));
  checkRoundTrip(Op::Transform, {H}, A.Cfg, {}, Transform::SwapHalves);
  CHECK(errorOf([&] { forward(Op::Transform, Transform::SwapHalves, {at::zeros({5})}, {}, A.Cfg, "r"); })
            .find("swap_halves needs an even dim 0") != std::string::npos);
}

TEST_CASE("norm_offset: in the tensor's own dtype, undone exactly where the sum is representable") {
  Attention A(4, 2, 2);
  // Multiples of 2^-8 below 1 in fp32: x + 1 and back are exact.
  at::Tensor X = at::randint(-255, 256, {64}, at::TensorOptions().dtype(at::kFloat)).div(256);
  at::Tensor Y = forward(Op::NormOffset, Transform::None, {X}, {{"delta", 1.0}}, A.Cfg, "t");
  CHECK(sameBytes(Y, X.add(1.0)));
  checkRoundTrip(Op::NormOffset, {X}, A.Cfg, {{"delta", 1.0}});
}

TEST_CASE("expert and rows: the slices export assembles tile their source exactly") {
  Attention A(4, 2, 2);
  at::Tensor Stack = randomOf({4, 3, 2}, at::kBFloat16);
  std::vector<at::Tensor> Experts;
  for (int64_t E = 0; E < 4; ++E)
    Experts.push_back(forward(Op::SelectExpert, Transform::None, {Stack}, {{"index", E}}, A.Cfg, "t"));
  CHECK(sameBytes(at::stack(Experts, 0), Stack));
  CHECK(errorOf([&] { forward(Op::SelectExpert, Transform::None, {Stack}, {{"index", 4}}, A.Cfg, "r"); })
            .find("expert 4 is outside [4, 3, 2]") != std::string::npos);
  at::Tensor In = randomOf({10, 3}, at::kBFloat16);
  Json Sizes = Json::array({2, 5, 0, 3});
  std::vector<at::Tensor> Blocks;
  for (int64_t I = 0; I < 4; ++I)
    Blocks.push_back(forward(Op::RowBlock, Transform::None, {In}, {{"sizes", Sizes}, {"index", I}}, A.Cfg, "t"));
  CHECK(sameBytes(at::cat(Blocks, 0), In));
  CHECK(errorOf([&] {
          forward(Op::RowBlock, Transform::None, {In}, {{"sizes", Json::array({2, 5})}, {"index", 0}}, A.Cfg, "r");
        }).find("add up to 7 rows") != std::string::npos);
  // Grouped: each of 2 row groups is [a (2 rows) | b (1 row)]; block a is
  // rows 0, 1, 3, 4 and block b rows 2, 5. Export puts each back through the
  // slot the forward read, which must tile the tensor again.
  at::Tensor G = randomOf({6, 3}, at::kBFloat16);
  Json GSizes = Json::array({2, 1});
  at::Tensor GA = forward(Op::RowBlock, Transform::None, {G}, {{"sizes", GSizes}, {"index", 0}, {"groups", 2}}, A.Cfg, "t");
  at::Tensor GB = forward(Op::RowBlock, Transform::None, {G}, {{"sizes", GSizes}, {"index", 1}, {"groups", 2}}, A.Cfg, "t");
  CHECK(sameBytes(GA, at::cat({G.narrow(0, 0, 2), G.narrow(0, 3, 2)}, 0)));
  CHECK(sameBytes(GB, at::cat({G.narrow(0, 2, 1), G.narrow(0, 5, 1)}, 0)));
  at::Tensor Back = at::zeros_like(G);
  for (auto [I, Block] : {std::pair<int64_t, at::Tensor>{0, GA}, {1, GB}}) {
    exec::OpParams P{{"sizes", GSizes}, {"index", I}, {"groups", 2}};
    RowBlockSpec Spec = rowBlock(P, "t", &Back);
    Spec.slot(Back).copy_(Spec.grouped(Block));
  }
  CHECK(sameBytes(Back, G));
  CHECK(errorOf([&] {
          forward(Op::RowBlock, Transform::None, {G}, {{"sizes", GSizes}, {"index", 0}, {"groups", 3}}, A.Cfg, "r");
        }).find("repeated 3 times add up to 9 rows") != std::string::npos);
  CHECK(errorOf([&] {
          inverse(Op::SelectExpert, Transform::None, Stack[0], 1, {{"index", 0}}, A.Cfg, {}, "r");
        }).find("put back by export") != std::string::npos);
}

TEST_CASE("shared: equal inputs read as one, given back to each") {
  Attention A(4, 2, 2);
  at::Tensor X = randomOf({3, 5}, at::kBFloat16);
  CHECK(sameBytes(forward(Op::Shared, Transform::None, {X, X.clone(), X.clone()}, {}, A.Cfg, "t"), X));
  std::vector<at::Tensor> Back = inverse(Op::Shared, Transform::None, X, 3, {}, A.Cfg, {}, "t");
  REQUIRE(Back.size() == 3);
  for (const at::Tensor &B : Back)
    CHECK(sameBytes(B, X));
  checkRoundTrip(Op::Shared, {X, X.clone()}, A.Cfg);
  at::Tensor Y = X.clone();
  Y.view(-1)[7] += 1;
  CHECK(errorOf([&] { forward(Op::Shared, Transform::None, {X, Y}, {}, A.Cfg, "s"); })
            .find("'shared' inputs 1 and 2 differ") != std::string::npos);
  CHECK(errorOf([&] { forward(Op::Shared, Transform::None, {X, X.narrow(0, 0, 2)}, {}, A.Cfg, "s"); })
            .find("differ") != std::string::npos);
}

TEST_CASE("roll_rows: each group's first rows move last, and back") {
  Attention A(4, 2, 2);
  // Two heads of 4 rows, rotary part 1 first: [r a b c | r' a' b' c'] ->
  // [a b c r | a' b' c' r'].
  at::Tensor X = at::arange(8, at::kFloat).reshape({8, 1}).repeat({1, 3});
  at::Tensor Got = forward(Op::RollRows, Transform::None, {X}, {{"shift", 1}, {"groups", 2}}, A.Cfg, "t");
  at::Tensor Rows = at::tensor(std::vector<int64_t>{1, 2, 3, 0, 5, 6, 7, 4});
  CHECK(sameBytes(Got, X.index_select(0, Rows)));
  checkRoundTrip(Op::RollRows, {randomOf({8, 3}, at::kBFloat16)}, A.Cfg, {{"shift", 3}, {"groups", 2}});
  checkRoundTrip(Op::RollRows, {randomOf({6}, at::kBFloat16)}, A.Cfg, {{"shift", 2}, {"groups", 1}});
  CHECK(errorOf([&] {
          forward(Op::RollRows, Transform::None, {X}, {{"shift", 1}, {"groups", 3}}, A.Cfg, "r");
        }).find("has no 3 equal row groups") != std::string::npos);
  CHECK(errorOf([&] {
          forward(Op::RollRows, Transform::None, {X}, {{"shift", 5}, {"groups", 2}}, A.Cfg, "r");
        }).find("shift 5 is outside a group of 4 rows") != std::string::npos);
}

TEST_CASE("dequantization agrees with its format's definition") {
  Attention A(4, 2, 2);
  // FP8 e4m3 with 128x128 block scales (the last block partial), fp32 product, bf16.
  at::Tensor W = randomOf({130, 200}, at::kFloat).to(at::kFloat8_e4m3fn);
  at::Tensor Scale = at::rand({2, 2}).add(0.5);
  at::Tensor Got = forward(Op::DequantFP8Block, Transform::None, {W, Scale}, {{"block", 128}}, A.Cfg, "t");
  at::Tensor Want = at::empty({130, 200}, at::kFloat);
  for (int64_t I = 0; I < 130; I += 43)
    for (int64_t J = 0; J < 200; J += 37) {
      float Ref = W[I][J].to(at::kFloat).item<float>() * Scale[I / 128][J / 128].item<float>();
      CHECK(Got[I][J].item<float>() == at::scalar_tensor(Ref).to(at::kBFloat16).item<float>());
    }
  (void)Want;
  // Per-tensor and per-row scales.
  at::Tensor Row = at::rand({130}).add(0.5);
  at::Tensor PerRow = forward(Op::DequantFP8Tensor, Transform::None, {W, Row}, {}, A.Cfg, "t");
  CHECK(sameBytes(PerRow, W.to(at::kFloat).mul(Row.unsqueeze(1)).to(at::kBFloat16)));
  at::Tensor One = at::full({}, 0.75);
  CHECK(sameBytes(forward(Op::DequantFP8Tensor, Transform::None, {W, One}, {}, A.Cfg, "t"),
                  W.to(at::kFloat).mul(0.75).to(at::kBFloat16)));
  // MXFP4: two e2m1 codes a byte, low nibble first, one e8m0 scale per block.
  static const float E2M1[16] = {0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0f, -0.5, -1, -1.5, -2, -3, -4, -6};
  at::Tensor Blocks = at::randint(0, 256, {3, 2, 4}, at::TensorOptions().dtype(at::kByte));
  // Ordinary exponents, the smallest (0: 2^-127) and the largest (255: inf).
  at::Tensor Scales =
      at::tensor(std::vector<uint8_t>{120, 127, 130, 0, 255, 1}, at::TensorOptions().dtype(at::kByte)).reshape({3, 2});
  at::Tensor Out = forward(Op::DequantMXFP4, Transform::None, {Blocks, Scales}, {}, A.Cfg, "t");
  REQUIRE(Out.sizes() == at::IntArrayRef({3, 16}));
  for (int64_t R = 0; R < 3; ++R)
    for (int64_t B = 0; B < 2; ++B)
      for (int64_t K = 0; K < 4; ++K) {
        uint8_t Byte = Blocks[R][B][K].item<uint8_t>();
        int S = Scales[R][B].item<uint8_t>();
        for (int N = 0; N < 2; ++N) {
          // x · 2^(s − 127) in fp32, as transformers computes it (s = 255:
          // infinite, and 0 · inf is NaN).
          float Ref = E2M1[N ? Byte >> 4 : Byte & 15] * std::ldexp(1.0f, S - 127);
          float V = Out[R][B * 8 + K * 2 + N].item<float>();
          if (std::isnan(Ref))
            CHECK(std::isnan(V));
          else
            CHECK(V == at::scalar_tensor(Ref).to(at::kBFloat16).item<float>());
        }
      }
  CHECK(errorOf([&] {
          inverse(Op::DequantFP8Tensor, Transform::None, PerRow, 2, {}, A.Cfg, {}, "r");
        }).find("not implemented yet") != std::string::npos);
}

TEST_CASE("dequant_fp8_block's inverse: 128x128 blocks, scale amax / 448, and back") {
  Attention A(4, 2, 2);
  // A partial last block, an all-zero block (scale 1) and one large value.
  at::Tensor X = randomOf({130, 200}, at::kFloat).mul(3.0);
  X.narrow(0, 0, 128).narrow(1, 128, 72).zero_();
  X[129][5] = 1000.0f;
  std::vector<at::Tensor> QS = inverse(Op::DequantFP8Block, Transform::None, X, 2, {{"block", 128}}, A.Cfg, {}, "r");
  REQUIRE(QS.size() == 2);
  const at::Tensor &Q = QS[0], &Scale = QS[1];
  CHECK((Q.scalar_type() == at::kFloat8_e4m3fn));
  CHECK((Scale.scalar_type() == at::kFloat));
  REQUIRE(Scale.sizes() == at::IntArrayRef({2, 2}));
  for (int64_t BI = 0; BI < 2; ++BI)
    for (int64_t BJ = 0; BJ < 2; ++BJ) {
      at::Tensor Block = X.narrow(0, BI * 128, BI ? 2 : 128).narrow(1, BJ * 128, BJ ? 72 : 128);
      float Amax = Block.abs().max().item<float>();
      CHECK(Scale[BI][BJ].item<float>() == (Amax == 0 ? 1.0f : Amax / 448.0f));
    }
  // Each element: value / its block's scale, rounded to e4m3 (the largest
  // element of a block lands on 448).
  for (int64_t I = 0; I < 130; I += 13)
    for (int64_t J = 0; J < 200; J += 11) {
      float Want = at::scalar_tensor(X[I][J].item<float>() / Scale[I / 128][J / 128].item<float>())
                       .to(at::kFloat8_e4m3fn)
                       .to(at::kFloat)
                       .item<float>();
      CHECK(Q[I][J].to(at::kFloat).item<float>() == Want);
    }
  CHECK(Q[129][5].to(at::kFloat).item<float>() == 448.0f);
  // Quantizing what dequantization gives is the same e4m3 tensor again.
  at::Tensor Back = forward(Op::DequantFP8Block, Transform::None, {Q, Scale}, {{"block", 128}}, A.Cfg, "t");
  at::Tensor Again =
      inverse(Op::DequantFP8Block, Transform::None, Back.to(at::kFloat), 2, {{"block", 128}}, A.Cfg, {}, "r")[0];
  CHECK(at::equal(Again.view(at::kByte), Q.view(at::kByte)));
  CHECK(errorOf([&] {
          inverse(Op::DequantFP8Block, Transform::None, X.view({-1}), 2, {{"block", 128}}, A.Cfg, {}, "r");
        }).find("needs a matrix") != std::string::npos);
}

// -- the live load's way to the GPU ----------------------------------------------------

#include "PinnedBlock.h"

TEST_CASE("PinnedBlock: every staging gives the GPU the host tensor, contiguous or a column slice, in pieces") {
  if (!at::hasCUDA()) {
    MESSAGE("no CUDA device: the pinned block runs on the GPU host (scripts/gpu-check.sh)");
    return;
  }
  ThreadStream Stream(static_cast<int>(c10::DeviceType::CUDA), 0);
  const at::Tensor Host = at::randn({300, 70});
  const at::Tensor Slice = Host.narrow(1, 10, 40); // not contiguous: by blocks of rows
  for (Staging How : {Staging::Block, Staging::Whole}) {
    PinnedBlock Block(How, Stream, /*Bytes=*/1000); // 1000 bytes: many pieces, a short last one
    for (const at::Tensor &From : {Host, Slice, Host.narrow(0, 7, 1), Host.reshape({-1})}) {
      at::Tensor Dst = at::empty(From.sizes(), From.options().device(at::kCUDA));
      Block.copy(From, Dst);
      Stream.synchronize();
      CHECK(at::equal(Dst.cpu(), From));
    }
  }
}
