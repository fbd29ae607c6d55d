//===- Ops.cpp - forward and inverse of every weight op ---------------------===//
//
// Layouts follow shared/reference/megatron-bridge-semantics.md section 3:
// QKV interleaves per query group [q heads of the group; k; v]; the gated
// fc1 is [gate; up]; an output-gate QKV groups [q; gate; k; v].
//
//===----------------------------------------------------------------------===//
#include "Ops.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/stack.h>

#include <numeric>

namespace bridge::exec {
namespace {

[[noreturn]] void fail(const std::string &Where, const std::string &Msg) {
  throw Error(Where + ": error: " + Msg);
}

/// Dims after the first, for reshapes that keep the trailing layout.
std::vector<int64_t> withLead(std::vector<int64_t> Lead, const at::Tensor &T) {
  for (int64_t D = 1; D < T.dim(); ++D)
    Lead.push_back(T.size(D));
  return Lead;
}

/// \p Shape with its last dim multiplied by \p Factor.
std::vector<int64_t> withTail(std::vector<int64_t> Shape, int64_t Factor) {
  Shape.back() *= Factor;
  return Shape;
}

struct Heads {
  int64_t NH, NG, D, R;
};

Heads heads(const OpConfig &Cfg, const std::string &Where) {
  Heads H{Cfg.intField("num_attention_heads", Where), Cfg.intField("num_query_groups", Where),
          Cfg.intField("kv_channels", Where), 0};
  if (H.NG <= 0 || H.NH % H.NG != 0)
    fail(Where, "num_attention_heads " + std::to_string(H.NH) + " is not a multiple of num_query_groups " +
                    std::to_string(H.NG));
  H.R = H.NH / H.NG;
  return H;
}

void expectRows(const at::Tensor &T, int64_t Rows, const char *What, const std::string &Formula,
                const std::string &Where) {
  if (T.dim() < 1 || T.size(0) != Rows)
    fail(Where, std::string(What) + " has shape " + shapeText(T.sizes()) + " but needs " + std::to_string(Rows) +
                    " rows (" + Formula + ")");
}

/// Within each of \p Groups equal row groups of \p X, rows [Shift, end)
/// then rows [0, Shift).
at::Tensor rollRows(const at::Tensor &X, int64_t Shift, int64_t Groups, const std::string &Where) {
  if (Groups < 1 || X.dim() < 1 || X.size(0) % Groups)
    fail(Where, "roll_rows: " + shapeText(X.sizes()) + " has no " + std::to_string(Groups) + " equal row groups");
  const int64_t Rows = X.size(0) / Groups;
  if (Shift < 0 || Shift > Rows)
    fail(Where, "roll_rows: shift " + std::to_string(Shift) + " is outside a group of " + std::to_string(Rows) + " rows");
  at::Tensor G = X.reshape(withLead({Groups, Rows}, X));
  return at::cat({G.narrow(1, Shift, Rows - Shift), G.narrow(1, 0, Shift)}, 1).reshape(X.sizes());
}

at::Tensor fuseQKV(const at::Tensor &Q, const at::Tensor &K, const at::Tensor &V, const Heads &H,
                   const std::string &Where) {
  std::string Dims = std::to_string(H.NH) + " heads × " + std::to_string(H.D);
  expectRows(Q, H.NH * H.D, "q", "num_attention_heads × kv_channels = " + Dims, Where);
  expectRows(K, H.NG * H.D, "k", "num_query_groups × kv_channels", Where);
  expectRows(V, H.NG * H.D, "v", "num_query_groups × kv_channels", Where);
  if (Q.sizes().slice(1) != K.sizes().slice(1) || K.sizes().slice(1) != V.sizes().slice(1))
    fail(Where, "q, k and v differ in their trailing dims: " + shapeText(Q.sizes()) + ", " + shapeText(K.sizes()) +
                    ", " + shapeText(V.sizes()));
  at::Tensor Out = at::cat({Q.reshape(withLead({H.NG, H.R * H.D}, Q)), K.reshape(withLead({H.NG, H.D}, K)),
                            V.reshape(withLead({H.NG, H.D}, V))},
                           1);
  return Out.reshape(withLead({(H.NH + 2 * H.NG) * H.D}, Q));
}

/// The interleaved \p X as one buffer [q; k; v], filled by two strided
/// copies (q, then k and v together): on a GPU each copy is a kernel
/// launch, and an export runs this once per layer.
at::Tensor deinterleaveQKV(const at::Tensor &X, const Heads &H, const std::string &Where) {
  expectRows(X, (H.NH + 2 * H.NG) * H.D, "linear_qkv", "(heads + 2 × groups) × kv_channels", Where);
  at::Tensor G = X.reshape(withLead({H.NG, H.R + 2, H.D}, X));
  at::Tensor Out = at::empty(X.sizes(), X.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t QRows = H.NH * H.D, KRows = H.NG * H.D;
  Out.narrow(0, 0, QRows).view(withLead({H.NG, H.R, H.D}, X)).copy_(G.narrow(1, 0, H.R));
  Out.narrow(0, QRows, 2 * KRows).view(withLead({2, H.NG, H.D}, X)).copy_(G.narrow(1, H.R, 2).transpose(0, 1));
  return Out;
}

/// q, k and v: row ranges of deinterleaveQKV's buffer.
std::vector<at::Tensor> splitQKV(const at::Tensor &X, const Heads &H, const std::string &Where) {
  at::Tensor Out = deinterleaveQKV(X, H, Where);
  const int64_t QRows = H.NH * H.D, KRows = H.NG * H.D;
  return {Out.narrow(0, 0, QRows), Out.narrow(0, QRows, KRows), Out.narrow(0, QRows + KRows, KRows)};
}

int64_t paramInt(const OpParams &P, const char *Name, const std::string &Where) {
  auto It = P.find(Name);
  if (It == P.end() || !It->second.is_number_integer())
    fail(Where, std::string("op parameter '") + Name + "' must be an int");
  return It->second.get<int64_t>();
}

} // namespace

std::string shapeText(at::IntArrayRef S) {
  std::string T = "[";
  for (size_t I = 0; I < S.size(); ++I)
    T += (I ? ", " : "") + std::to_string(S[I]);
  return T + "]";
}

int64_t OpConfig::intField(const char *Name, const std::string &Where) const {
  for (uint32_t I = 0; I < S.Fields.Size; ++I)
    if (std::string(S.Fields[I].Name) == Name) {
      if (!Fields[I].is_number_integer())
        fail(Where, std::string("config field '") + Name + "' is " + Fields[I].dump() + ", not an int");
      return Fields[I].get<int64_t>();
    }
  fail(Where, std::string("internal: no config field '") + Name + "'");
}

at::ScalarType toScalarType(DType T) {
  switch (T) {
  case DType::F64:
    return at::kDouble;
  case DType::F32:
    return at::kFloat;
  case DType::F16:
    return at::kHalf;
  case DType::BF16:
    return at::kBFloat16;
  case DType::F8_E4M3:
    return at::kFloat8_e4m3fn;
  case DType::F8_E5M2:
    return at::kFloat8_e5m2;
  case DType::I64:
    return at::kLong;
  case DType::I32:
    return at::kInt;
  case DType::I16:
    return at::kShort;
  case DType::I8:
    return at::kChar;
  case DType::U8:
    return at::kByte;
  case DType::Bool:
    return at::kBool;
  }
  return at::kFloat;
}

DType fromScalarType(at::ScalarType T) {
  for (int I = 0; I <= static_cast<int>(DType::Bool); ++I)
    if (toScalarType(static_cast<DType>(I)) == T)
      return static_cast<DType>(I);
  throw Error(std::string("error: unsupported tensor type ") + c10::toString(T));
}

RowBlockSpec rowBlock(const OpParams &P, const std::string &Where, const at::Tensor *X) {
  std::vector<int64_t> Sizes = P.at("sizes").get<std::vector<int64_t>>();
  RowBlockSpec B;
  int64_t Index = paramInt(P, "index", Where);
  // Tables compiled before 'groups' existed carry no such parameter.
  B.Groups = P.count("groups") ? paramInt(P, "groups", Where) : 1;
  if (B.Groups < 1)
    fail(Where, "rows: groups must be at least 1, not " + std::to_string(B.Groups));
  for (size_t K = 0; K < Sizes.size(); ++K) {
    if (Sizes[K] < 0)
      fail(Where, "rows: block size " + std::to_string(Sizes[K]) + " is negative");
    if (static_cast<int64_t>(K) < Index)
      B.Offset += Sizes[K];
    B.Period += Sizes[K];
  }
  if (Index < 0 || Index >= static_cast<int64_t>(Sizes.size()))
    fail(Where, "rows: block " + std::to_string(Index) + " of " + P.at("sizes").dump() + " does not exist");
  B.Size = Sizes[static_cast<size_t>(Index)];
  if (X && (X->dim() < 1 || X->size(0) != B.Groups * B.Period))
    fail(Where, "rows: the blocks " + P.at("sizes").dump() + (B.Groups > 1 ? " repeated " + std::to_string(B.Groups) + " times" : "") +
                    " add up to " + std::to_string(B.Groups * B.Period) + " rows, but the tensor is " +
                    shapeText(X->sizes()));
  return B;
}

at::Tensor RowBlockSpec::slot(const at::Tensor &Whole) const {
  if (Groups == 1)
    return Whole.narrow(0, Offset, Size);
  return Whole.view(withLead({Groups, Period}, Whole)).narrow(1, Offset, Size);
}

at::Tensor RowBlockSpec::grouped(const at::Tensor &Block) const {
  // A block of another size stays as it is, for the caller to report.
  if (Groups == 1 || Block.dim() < 1 || Block.size(0) != Groups * Size)
    return Block;
  return Block.reshape(withLead({Groups, Size}, Block));
}

at::Tensor forward(Op Kind, Transform Custom, const std::vector<at::Tensor> &In, const OpParams &P,
                   const OpConfig &Cfg, const std::string &Where) {
  switch (Kind) {
  case Op::Identity:
    return In[0];
  case Op::FuseQKV:
    return fuseQKV(In[0], In[1], In[2], heads(Cfg, Where), Where);
  case Op::FuseQKVGated: {
    Heads H = heads(Cfg, Where);
    expectRows(In[0], 2 * H.NH * H.D, "q_proj (with gate)", "2 × num_attention_heads × kv_channels", Where);
    at::Tensor QG = In[0].reshape(withLead({H.NH, 2 * H.D}, In[0]));
    auto Parts = QG.split(H.D, 1); // per head [q_h; gate_h]
    at::Tensor Q = Parts[0].reshape(withLead({H.NG, H.R * H.D}, In[0]));
    at::Tensor G = Parts[1].reshape(withLead({H.NG, H.R * H.D}, In[0]));
    at::Tensor Out = at::cat({Q, G, In[1].reshape(withLead({H.NG, H.D}, In[1])),
                              In[2].reshape(withLead({H.NG, H.D}, In[2]))},
                             1);
    return Out.reshape(withLead({(2 * H.NH + 2 * H.NG) * H.D}, In[0]));
  }
  case Op::QKVFromConcat: {
    Heads H = heads(Cfg, Where);
    expectRows(In[0], (H.NH + 2 * H.NG) * H.D, "qkv", "(heads + 2 × groups) × kv_channels", Where);
    auto Parts = In[0].split_with_sizes({H.NH * H.D, H.NG * H.D, H.NG * H.D}, 0);
    return fuseQKV(Parts[0], Parts[1], Parts[2], H, Where);
  }
  case Op::FuseGatedMLP:
    if (In[0].sizes() != In[1].sizes())
      fail(Where, "gate " + shapeText(In[0].sizes()) + " and up " + shapeText(In[1].sizes()) + " differ in shape");
    return at::cat({In[0], In[1]}, 0);
  case Op::GateUpConcat:
    if (In[0].size(0) % 2)
      fail(Where, "gate_up has an odd number of rows " + std::to_string(In[0].size(0)));
    return In[0];
  case Op::GateUpInterleaved: {
    if (In[0].size(0) % 2)
      fail(Where, "gate_up has an odd number of rows " + std::to_string(In[0].size(0)));
    at::Tensor X = In[0].reshape(withLead({In[0].size(0) / 2, 2}, In[0]));
    return at::cat({X.select(1, 0), X.select(1, 1)}, 0);
  }
  case Op::SelectExpert: {
    int64_t E = paramInt(P, "index", Where);
    if (In[0].dim() < 1 || E < 0 || E >= In[0].size(0))
      fail(Where, "expert " + std::to_string(E) + " is outside " + shapeText(In[0].sizes()));
    return In[0].select(0, E);
  }
  case Op::RowBlock: {
    // Block 'index' of consecutive row blocks of the given sizes, which
    // must tile dim 0 (Mamba's in_proj: [z | x | B | C | dt]), or tile
    // each of 'groups' equal row groups, the block then being its rows of
    // every group, group after group (Qwen3-Next's in_proj_qkvz: per key
    // head [q | k | v | z]).
    RowBlockSpec B = rowBlock(P, Where, &In[0]);
    at::Tensor Rows = B.slot(In[0]);
    return B.Groups == 1 ? Rows : Rows.reshape(withLead({B.Groups * B.Size}, In[0]));
  }
  case Op::RollRows:
    return rollRows(In[0], paramInt(P, "shift", Where), paramInt(P, "groups", Where), Where);
  case Op::Shared:
    for (size_t I = 1; I < In.size(); ++I)
      if (In[I].sizes() != In[0].sizes() || In[I].scalar_type() != In[0].scalar_type() ||
          (!In[0].is_meta() && !at::equal(In[I], In[0])))
        fail(Where, "'shared' inputs 1 and " + std::to_string(I + 1) + " differ (" +
                        (In[I].sizes() == In[0].sizes() && In[I].scalar_type() == In[0].scalar_type()
                             ? std::string("in their values")
                             : shapeText(In[0].sizes()) + " and " + shapeText(In[I].sizes())) +
                        "); a fused module holds one copy");
    return In[0];
  case Op::Transpose:
    if (In[0].dim() != 2)
      fail(Where, "transpose needs a matrix, got " + shapeText(In[0].sizes()));
    return In[0].t().contiguous();
  case Op::Permute: {
    std::vector<int64_t> Dims = P.at("dims").get<std::vector<int64_t>>();
    if (static_cast<int64_t>(Dims.size()) != In[0].dim())
      fail(Where, "permute dims " + P.at("dims").dump() + " do not fit " + shapeText(In[0].sizes()));
    return In[0].permute(Dims).contiguous();
  }
  case Op::NormOffset:
    // In the tensor's own dtype, as Megatron-Bridge does.
    return In[0].add(P.at("delta").get<double>());
  case Op::Cast: {
    auto T = dtypeFromTorch(P.at("dtype").get<std::string>());
    if (!T)
      fail(Where, "unknown dtype " + P.at("dtype").dump());
    return In[0].to(toScalarType(*T));
  }
  case Op::DequantFP8Block: {
    int64_t Block = paramInt(P, "block", Where);
    const at::Tensor &W = In[0], &Scale = In[1];
    if (W.dim() != 2 || Scale.dim() != 2)
      fail(Where, "block dequantization needs a matrix and its scale matrix");
    int64_t M = W.size(0), N = W.size(1);
    int64_t BM = (M + Block - 1) / Block, BN = (N + Block - 1) / Block;
    if (Scale.size(0) != BM || Scale.size(1) != BN)
      fail(Where, "scale " + shapeText(Scale.sizes()) + " does not match " + std::to_string(Block) + "-blocks of " +
                      shapeText(W.sizes()));
    at::Tensor S = Scale.to(at::kFloat).repeat_interleave(Block, 0).repeat_interleave(Block, 1);
    return W.to(at::kFloat).mul(S.narrow(0, 0, M).narrow(1, 0, N)).to(at::kBFloat16);
  }
  case Op::DequantFP8Tensor: {
    // One scale for the tensor ([] or [1]) or one per output row ([M] or
    // [M, 1], compressed-tensors' channel strategy); fp32 product, then bf16
    // as for block scales.
    const at::Tensor &W = In[0], &Scale = In[1];
    at::Tensor S = Scale.to(at::kFloat);
    if (S.numel() != 1) {
      if (W.dim() < 1 || S.numel() != W.size(0) || S.dim() > 2 || (S.dim() == 2 && S.size(1) != 1))
        fail(Where, "scale " + shapeText(Scale.sizes()) + " is neither per tensor nor per output row of " +
                        shapeText(W.sizes()));
      std::vector<int64_t> Rows(W.dim(), 1);
      Rows[0] = W.size(0);
      S = S.reshape(Rows);
    } else {
      S = S.reshape({});
    }
    return W.to(at::kFloat).mul(S).to(at::kBFloat16);
  }
  case Op::DequantMXFP4: {
    // OCP MX: each byte holds two e2m1 values, the low nibble first; every
    // row of the last dim shares one e8m0 scale 2^(s - 127). Products are
    // exact in fp32 and in bf16 (same exponent range).
    const at::Tensor &Blocks = In[0], &Scales = In[1];
    if (Blocks.scalar_type() != at::kByte || Scales.scalar_type() != at::kByte)
      fail(Where, "MXFP4 blocks and scales must be uint8 (U8), got " + std::string(c10::toString(Blocks.scalar_type())) +
                      " and " + c10::toString(Scales.scalar_type()));
    std::vector<int64_t> Lead(Blocks.sizes().begin(), Blocks.sizes().end());
    if (Blocks.dim() < 2 || Lead.back() < 1 ||
        std::vector<int64_t>(Lead.begin(), Lead.end() - 1) != std::vector<int64_t>(Scales.sizes().begin(), Scales.sizes().end()))
      fail(Where, "MXFP4 blocks " + shapeText(Blocks.sizes()) + " need one scale per block, got scales " +
                      shapeText(Scales.sizes()));
    std::vector<int64_t> OutShape(Lead.begin(), Lead.end() - 2);
    OutShape.push_back(Lead[Lead.size() - 2] * Lead.back() * 2);
    if (Blocks.is_meta()) // the dry run: libtorch has no meta kernel for 'where'
      return at::empty(OutShape, Blocks.options().dtype(at::kBFloat16));
    // e2m1 -> fp32 bits: sign, 2-bit exponent (bias 1), 1-bit mantissa;
    // exponent 0 is 0 or the subnormal 0.5.
    at::Tensor Codes = at::stack({Blocks.bitwise_and(0x0F), Blocks.bitwise_right_shift(4)}, -1).to(at::kInt);
    at::Tensor Exp = Codes.bitwise_right_shift(1).bitwise_and(3), Man = Codes.bitwise_and(1);
    at::Tensor Normal = Exp.add(126).bitwise_left_shift(23).bitwise_or(Man.bitwise_left_shift(22));
    at::Tensor Values = at::where(Exp.gt(0), Normal, Man.mul(126 << 23))
                            .bitwise_or(Codes.bitwise_right_shift(3).bitwise_left_shift(31))
                            .view(at::kFloat);
    Values = Values.reshape(withTail(Lead, 2));
    // 2^(s - 127) built as fp32 bits: s is the biased exponent itself (s = 0
    // is the subnormal 2^-127; s = 255 gives inf, as transformers' ldexp).
    at::Tensor Scale =
        Scales.to(at::kInt).bitwise_left_shift(23).masked_fill(Scales.eq(0), 0x00400000).view(at::kFloat).unsqueeze(-1);
    return Values.mul(Scale).to(at::kBFloat16).reshape(OutShape);
  }
  case Op::Transform:
    switch (Custom) {
    case Transform::SwapHalves: {
      int64_t H = In[0].size(0) / 2;
      if (In[0].size(0) % 2)
        fail(Where, "swap_halves needs an even dim 0, got " + shapeText(In[0].sizes()));
      return at::cat({In[0].narrow(0, H, H), In[0].narrow(0, 0, H)}, 0);
    }
    case Transform::None:
      break;
    }
    break;
  }
  fail(Where, "internal: op has no forward");
}

bool opComputes(Op Kind) {
  return Kind == Op::DequantFP8Block || Kind == Op::DequantFP8Tensor || Kind == Op::DequantMXFP4;
}

std::vector<at::Tensor> inverse(Op Kind, Transform Custom, const at::Tensor &Out, unsigned NumInputs,
                                const OpParams &P, const OpConfig &Cfg, const std::vector<DType> &InputTypes,
                                const std::string &Where) {
  switch (Kind) {
  case Op::Identity:
    return {Out};
  case Op::FuseQKV:
    return splitQKV(Out, heads(Cfg, Where), Where);
  case Op::FuseQKVGated: {
    Heads H = heads(Cfg, Where);
    at::Tensor G = Out.reshape(withLead({H.NG, (2 * H.R + 2) * H.D}, Out));
    auto Parts = G.split_with_sizes({H.R * H.D, H.R * H.D, H.D, H.D}, 1);
    at::Tensor Q = Parts[0].reshape(withLead({H.NH, H.D}, Out)), Gate = Parts[1].reshape(withLead({H.NH, H.D}, Out));
    return {at::cat({Q, Gate}, 1).reshape(withLead({2 * H.NH * H.D}, Out)).contiguous(),
            Parts[2].reshape(withLead({H.NG * H.D}, Out)).contiguous(),
            Parts[3].reshape(withLead({H.NG * H.D}, Out)).contiguous()};
  }
  case Op::QKVFromConcat: {
    return {deinterleaveQKV(Out, heads(Cfg, Where), Where)};
  }
  case Op::FuseGatedMLP: {
    // Row halves of one contiguous tensor, by narrow: chunk goes through
    // split, which H100 call 9's profile of a Qwen3-MoE export showed as
    // 1,536 dispatches of about 18 us each (bench/results, -run9-profile-qwen).
    if (Out.dim() < 1 || Out.size(0) % 2)
      fail(Where, "gated_mlp needs an even dim 0, got " + shapeText(Out.sizes()));
    const at::Tensor X = Out.is_contiguous() ? Out : Out.contiguous();
    const int64_t Half = X.size(0) / 2;
    return {X.narrow(0, 0, Half), X.narrow(0, Half, Half)};
  }
  case Op::GateUpConcat:
    return {Out};
  case Op::GateUpInterleaved: {
    auto Parts = Out.chunk(2, 0);
    at::Tensor X = at::stack({Parts[0], Parts[1]}, 1);
    return {X.reshape(withLead({Out.size(0)}, Out)).contiguous()};
  }
  case Op::RollRows: {
    // The last shift rows of each group back to its front.
    int64_t Groups = paramInt(P, "groups", Where), Shift = paramInt(P, "shift", Where);
    if (Groups < 1 || Out.dim() < 1 || Out.size(0) % Groups)
      fail(Where, "roll_rows: " + shapeText(Out.sizes()) + " has no " + std::to_string(Groups) + " equal row groups");
    return {rollRows(Out, Out.size(0) / Groups - Shift, Groups, Where)};
  }
  case Op::Shared:
    return std::vector<at::Tensor>(NumInputs, Out);
  case Op::Transpose:
    return {Out.t().contiguous()};
  case Op::Permute: {
    std::vector<int64_t> Dims = P.at("dims").get<std::vector<int64_t>>(), Inv(Dims.size());
    for (size_t I = 0; I < Dims.size(); ++I)
      Inv[Dims[I]] = static_cast<int64_t>(I);
    return {Out.permute(Inv).contiguous()};
  }
  case Op::NormOffset:
    return {Out.sub(P.at("delta").get<double>())};
  case Op::Cast:
    if (InputTypes.empty())
      fail(Where, "cannot undo 'cast': the source dtype is unknown");
    return {Out.to(toScalarType(InputTypes[0]))};
  case Op::SelectExpert:
  case Op::RowBlock:
    fail(Where, "internal: a slice of an HF tensor is put back by export, not inverted");
  case Op::DequantFP8Block: {
    // Per block: scale = amax / 448 (e4m3's largest finite value; 1 for an
    // all-zero block), weight = value / scale rounded to e4m3, computed in
    // fp32 (DeepSeek's weight_quant). dequant_fp8_block takes it back.
    int64_t Block = paramInt(P, "block", Where);
    if (Out.dim() != 2)
      fail(Where, "block quantization needs a matrix, not " + shapeText(Out.sizes()));
    int64_t M = Out.size(0), N = Out.size(1);
    int64_t BM = (M + Block - 1) / Block, BN = (N + Block - 1) / Block;
    at::Tensor W = Out.to(at::kFloat);
    at::Tensor Padded = at::zeros({BM * Block, BN * Block}, W.options());
    Padded.narrow(0, 0, M).narrow(1, 0, N).copy_(W);
    at::Tensor Amax = Padded.view({BM, Block, BN, Block}).abs().amax({1, 3});
    at::Tensor Scale = Amax.div(448.0).masked_fill(Amax.eq(0), 1.0);
    at::Tensor S = Scale.repeat_interleave(Block, 0).repeat_interleave(Block, 1).narrow(0, 0, M).narrow(1, 0, N);
    return {W.div(S).clamp(-448.0, 448.0).to(at::kFloat8_e4m3fn), Scale};
  }
  case Op::DequantFP8Tensor:
  case Op::DequantMXFP4:
    fail(Where, "export of a dequantized tensor back to its quantized form is not implemented yet");
  case Op::Transform:
    if (Custom == Transform::SwapHalves)
      return {forward(Kind, Custom, {Out}, P, Cfg, Where)};
    break;
  }
  (void)NumInputs;
  fail(Where, "internal: op has no inverse");
}

} // namespace bridge::exec
