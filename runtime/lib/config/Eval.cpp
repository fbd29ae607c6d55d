//===- Eval.cpp - the expression stack machine ------------------------------===//
//
// Runs the bytecode of bridge::ExprOp. Integers stay integers ('/' on two
// integers must divide exactly; '//' floors), a missing HF key reads as null,
// and arithmetic on null is an error naming the expression.
//
//===----------------------------------------------------------------------===//
#include "bridge/Config.h"

#include <cmath>
#include <optional>
#include <sstream>

namespace bridge {
namespace {

std::string show(const Json &V) { return V.dump(); }

[[noreturn]] void fail(const std::string &Where, const Expr &E, const std::string &Msg) {
  throw Error(Where + ": error: " + Msg + (E.Text ? std::string(" in '") + E.Text + "'" : std::string()));
}

/// The length argument of range(), mask() and repeat(): an int from 0 to
/// 2^24, so a hostile config cannot make one list take all memory.
int64_t listLength(const Json &V, const char *Fn, const std::string &Where, const Expr &E) {
  if (!V.is_number_integer() || V.get<int64_t>() < 0 || V.get<int64_t>() > (int64_t(1) << 24))
    fail(Where, E, std::string(Fn) + "() needs a count from 0 to 2^24, not " + show(V));
  return V.get<int64_t>();
}

const Json *lookupPath(const Json &Root, const char *Path) {
  const Json *Cur = &Root;
  std::string P = Path;
  size_t Start = 0;
  while (true) {
    size_t Dot = P.find('.', Start);
    std::string Key = P.substr(Start, Dot == std::string::npos ? std::string::npos : Dot - Start);
    if (!Cur->is_object())
      return nullptr;
    auto It = Cur->find(Key);
    if (It == Cur->end())
      return nullptr;
    Cur = &*It;
    if (Dot == std::string::npos)
      return Cur;
    Start = Dot + 1;
  }
}

bool isNum(const Json &V) { return V.is_number(); }

Json arith(ExprOp Op, const Json &L, const Json &R, const std::string &Where, const Expr &E) {
  if (Op == ExprOp::Add && L.is_string() && R.is_string())
    return L.get<std::string>() + R.get<std::string>();
  if (Op == ExprOp::Add && L.is_array() && R.is_array()) {
    Json Out = L;
    for (auto &X : R)
      Out.push_back(X);
    return Out;
  }
  if (!isNum(L) || !isNum(R))
    fail(Where, E, "arithmetic on " + show(L) + " and " + show(R));
  bool Ints = L.is_number_integer() && R.is_number_integer();
  if (Ints) {
    int64_t A = L.get<int64_t>(), B = R.get<int64_t>();
    switch (Op) {
    case ExprOp::Add:
      return A + B;
    case ExprOp::Sub:
      return A - B;
    case ExprOp::Mul:
      return A * B;
    case ExprOp::Div:
      if (B == 0 || A % B != 0)
        fail(Where, E, std::to_string(A) + " is not divisible by " + std::to_string(B));
      return A / B;
    case ExprOp::FloorDiv:
    case ExprOp::Mod: {
      if (B == 0)
        fail(Where, E, "division by zero");
      int64_t Q = A / B, M = A % B;
      if (M != 0 && ((M < 0) != (B < 0))) {
        --Q;
        M += B;
      }
      return Op == ExprOp::FloorDiv ? Q : M;
    }
    default:
      break;
    }
  }
  double A = L.get<double>(), B = R.get<double>();
  switch (Op) {
  case ExprOp::Add:
    return A + B;
  case ExprOp::Sub:
    return A - B;
  case ExprOp::Mul:
    return A * B;
  case ExprOp::Div:
    if (B == 0)
      fail(Where, E, "division by zero");
    return A / B;
  case ExprOp::FloorDiv:
    return std::floor(A / B);
  case ExprOp::Mod:
    return A - B * std::floor(A / B);
  default:
    return nullptr;
  }
}

bool equalValues(const Json &L, const Json &R) {
  if (isNum(L) && isNum(R))
    return L.get<double>() == R.get<double>();
  return L == R;
}

/// The functions of the mapping language (Builtins.def, which bridgec
/// checks calls against).
enum class Builtin : uint8_t {
#define BRIDGE_BUILTIN(Id, Name, Min, Max, Args, Result, Doc) Id,
#include "bridge/Builtins.def"
};

std::optional<Builtin> builtinNamed(const std::string &Name) {
  static const std::pair<const char *, Builtin> Names[] = {
#define BRIDGE_BUILTIN(Id, Name, Min, Max, Args, Result, Doc) {Name, Builtin::Id},
#include "bridge/Builtins.def"
  };
  for (auto &[Spelling, B] : Names)
    if (Name == Spelling)
      return B;
  return std::nullopt;
}

Json callBuiltin(const std::string &Name, std::vector<Json> &Args, const EvalEnv &Env, const std::string &Where,
                 const Expr &E) {
  std::optional<Builtin> B = builtinNamed(Name);
  if (!B)
    fail(Where, E, "unknown builtin '" + Name + "'");
  switch (*B) {
  case Builtin::Has:
    return !Args[0].is_null();
  case Builtin::Min:
  case Builtin::Max: {
    Json Best = Args[0];
    for (auto &A : Args) {
      if (!isNum(A))
        fail(Where, E, Name + "() of " + show(A));
      if ((Name == "min") == (A.get<double>() < Best.get<double>()))
        Best = A;
    }
    return Best;
  }
  case Builtin::Len: {
    if (Args[0].is_array())
      return static_cast<int64_t>(Args[0].size());
    if (Args[0].is_string())
      return static_cast<int64_t>(Args[0].get<std::string>().size());
    fail(Where, E, "len() of " + show(Args[0]));
  }
  case Builtin::At: {
    if (!Args[0].is_array() || !Args[1].is_number_integer())
      fail(Where, E, "at() needs a list and an int, not " + show(Args[0]) + " and " + show(Args[1]));
    int64_t I = Args[1].get<int64_t>();
    if (I < 0 || I >= static_cast<int64_t>(Args[0].size()))
      fail(Where, E, "index " + std::to_string(I) + " is outside " + show(Args[0]));
    return Args[0][I];
  }
  case Builtin::Count: {
    if (Args[0].is_string()) { // the characters of a string equal to a one-character string
      int64_t N = 0;
      for (char C : Args[0].get<std::string>())
        N += equalValues(Json(std::string(1, C)), Args[1]) ? 1 : 0;
      return N;
    }
    if (!Args[0].is_array())
      fail(Where, E, "count() needs a list or a string, not " + show(Args[0]));
    int64_t N = 0;
    for (auto &X : Args[0])
      N += equalValues(X, Args[1]) ? 1 : 0;
    return N;
  }
  case Builtin::Indicator: {
    if (!Args[0].is_array())
      fail(Where, E, "indicator() needs a list, not " + show(Args[0]));
    Json Out = Json::array();
    for (auto &X : Args[0])
      Out.push_back(int64_t(equalValues(X, Args[1]) ? 1 : 0));
    return Out;
  }
  case Builtin::Labels: {
    if (!Args[0].is_array())
      fail(Where, E, "labels() needs a list of 0/1 flags, not " + show(Args[0]));
    Json Out = Json::array();
    for (auto &X : Args[0]) {
      if (!X.is_number_integer() || (X.get<int64_t>() != 0 && X.get<int64_t>() != 1))
        fail(Where, E, "labels() needs 0/1 flags, not " + show(X) + " in " + show(Args[0]));
      Out.push_back(X.get<int64_t>() ? Args[2] : Args[1]);
    }
    return Out;
  }
  case Builtin::Repeat: {
    const int64_t N = listLength(Args[1], "repeat", Where, E);
    Json Out = Json::array();
    for (int64_t I = 0; I < N; ++I)
      Out.push_back(Args[0]);
    return Out;
  }
  case Builtin::Range: {
    const int64_t N = listLength(Args[0], "range", Where, E);
    Json Out = Json::array();
    for (int64_t I = 0; I < N; ++I)
      Out.push_back(I);
    return Out;
  }
  case Builtin::Mask: {
    // Per-layer flags from a list of layer indices (Qwen2-MoE's
    // mlp_only_layers); where() takes them back.
    const int64_t N = listLength(Args[0], "mask", Where, E);
    if (!Args[1].is_array())
      fail(Where, E, "mask() needs a list of indices, not " + show(Args[1]));
    Json Out = Json::array();
    for (int64_t I = 0; I < N; ++I)
      Out.push_back(int64_t(0));
    for (const Json &X : Args[1]) {
      if (!X.is_number_integer() || X.get<int64_t>() < 0 || X.get<int64_t>() >= N)
        fail(Where, E, "mask(): index " + show(X) + " is outside 0 .. " + std::to_string(N - 1));
      Out[static_cast<size_t>(X.get<int64_t>())] = int64_t(1);
    }
    return Out;
  }
  case Builtin::EveryNth: {
    // Per-layer flags from an interval (Qwen3-Next's full_attention_interval:
    // every k-th layer full attention, as transformers builds layer_types).
    const int64_t N = listLength(Args[0], "every_nth", Where, E);
    if (!Args[1].is_number_integer() || Args[1].get<int64_t>() <= 0)
      fail(Where, E, "every_nth() needs a positive interval, not " + show(Args[1]));
    const int64_t K = Args[1].get<int64_t>();
    Json Out = Json::array();
    for (int64_t I = 0; I < N; ++I)
      Out.push_back(int64_t((I + 1) % K == 0));
    return Out;
  }
  case Builtin::Where: {
    if (!Args[0].is_array())
      fail(Where, E, "where() needs a list, not " + show(Args[0]));
    Json Out = Json::array();
    for (size_t I = 0; I < Args[0].size(); ++I)
      if (equalValues(Args[0][I], Args[1]))
        Out.push_back(static_cast<int64_t>(I));
    return Out;
  }
  case Builtin::IndexOf: {
    if (!Args[0].is_array())
      fail(Where, E, "index_of() needs a list, not " + show(Args[0]));
    for (size_t I = 0; I < Args[0].size(); ++I)
      if (equalValues(Args[0][I], Args[1]))
        return static_cast<int64_t>(I);
    fail(Where, E, "index_of(): " + show(Args[1]) + " is not in " + show(Args[0]));
  }
  case Builtin::Int: {
    if (Args[0].is_number_integer())
      return Args[0];
    if (Args[0].is_number_float() && Args[0].get<double>() == std::floor(Args[0].get<double>()))
      return static_cast<int64_t>(Args[0].get<double>());
    fail(Where, E, "int() of " + show(Args[0]));
  }
  case Builtin::Float: {
    if (!isNum(Args[0]))
      fail(Where, E, "float() of " + show(Args[0]));
    return Args[0].get<double>();
  }
  case Builtin::ToPattern:
  case Builtin::FromPattern: {
    // A list of names <-> a string of one symbol each (a hybrid model's
    // layer types: transformers 5's layers_block_type and Megatron's
    // hybrid_override_pattern), through two parallel lists.
    bool ToPattern = Name == "to_pattern";
    const Json &From = Args[1], &To = Args[2];
    if (!From.is_array() || !To.is_array() || From.size() != To.size())
      fail(Where, E, Name + "() needs two lists of the same length, not " + show(From) + " and " + show(To));
    auto Translate = [&](const Json &X) -> Json {
      for (size_t K = 0; K < From.size(); ++K)
        if (equalValues(From[K], X))
          return To[K];
      fail(Where, E, Name + "(): " + show(X) + " is not one of " + show(From));
    };
    if (ToPattern) {
      if (!Args[0].is_array())
        fail(Where, E, "to_pattern() needs a list, not " + show(Args[0]));
      std::string Out;
      for (const Json &X : Args[0]) {
        Json S = Translate(X);
        if (!S.is_string())
          fail(Where, E, "to_pattern() makes a string of strings, not of " + show(S));
        Out += S.get<std::string>();
      }
      return Out;
    }
    if (!Args[0].is_string())
      fail(Where, E, "from_pattern() needs a string, not " + show(Args[0]));
    Json Out = Json::array();
    for (char C : Args[0].get<std::string>())
      Out.push_back(Translate(std::string(1, C)));
    return Out;
  }
  case Builtin::HybridLayer: {
    // The symbol of layer i in hybrid_override_pattern; null without one.
    if (!Env.Fields || !Env.Schema)
      fail(Where, E, "hybrid_layer() needs the Megatron config");
    for (uint32_t I = 0; I < Env.Schema->Fields.Size; ++I)
      if (std::string(Env.Schema->Fields[I].Name) == "hybrid_override_pattern") {
        const Json &P = (*Env.Fields)[I];
        if (P.is_null())
          return nullptr;
        if (!P.is_string())
          fail(Where, E, "hybrid_override_pattern must be a string, not " + show(P));
        int64_t Layer = Args[0].get<int64_t>();
        const std::string &Text = P.get_ref<const std::string &>();
        if (Layer < 0 || Layer >= static_cast<int64_t>(Text.size()))
          fail(Where, E, "hybrid_override_pattern \"" + Text + "\" has no symbol for layer " + std::to_string(Layer));
        return std::string(1, Text[static_cast<size_t>(Layer)]);
      }
    return nullptr;
  }
  case Builtin::IsLinearAttentionLayer: {
    // Megatron-Core's get_linear_attention_pattern: an int N makes every
    // N-th layer (1-based) full attention and the rest linear; a list gives
    // 1 for each linear layer. Only the gated_delta_net variant is linear.
    if (!Env.Fields || !Env.Schema)
      fail(Where, E, "is_linear_attention_layer() needs the Megatron config");
    const Json *Variant = nullptr, *Freq = nullptr;
    for (uint32_t I = 0; I < Env.Schema->Fields.Size; ++I) {
      std::string N = Env.Schema->Fields[I].Name;
      if (N == "experimental_attention_variant")
        Variant = &(*Env.Fields)[I];
      if (N == "linear_attention_freq")
        Freq = &(*Env.Fields)[I];
    }
    if (!Variant || *Variant != "gated_delta_net")
      return false;
    int64_t Layer = Args[0].get<int64_t>();
    if (!Freq || Freq->is_null())
      fail(Where, E, "experimental_attention_variant gated_delta_net needs linear_attention_freq");
    if (Freq->is_number_integer()) {
      if (Freq->get<int64_t>() <= 0)
        fail(Where, E, "linear_attention_freq must be positive, not " + show(*Freq));
      return (Layer + 1) % Freq->get<int64_t>() != 0;
    }
    if (Freq->is_array()) {
      if (Layer < 0 || Layer >= static_cast<int64_t>(Freq->size()))
        fail(Where, E, "linear_attention_freq has no entry for layer " + std::to_string(Layer));
      return (*Freq)[Layer] == 1;
    }
    fail(Where, E, "linear_attention_freq must be an int or a list, not " + show(*Freq));
  }
  case Builtin::IsMoeLayer: {
    if (!Env.Fields || !Env.Schema)
      fail(Where, E, "is_moe_layer() needs the Megatron config");
    const Json *Experts = nullptr, *Freq = nullptr;
    for (uint32_t I = 0; I < Env.Schema->Fields.Size; ++I) {
      std::string N = Env.Schema->Fields[I].Name;
      if (N == "num_moe_experts")
        Experts = &(*Env.Fields)[I];
      if (N == "moe_layer_freq")
        Freq = &(*Env.Fields)[I];
    }
    if (!Experts || Experts->is_null())
      return false;
    int64_t Layer = Args[0].get<int64_t>();
    if (!Freq || Freq->is_null())
      return true;
    if (Freq->is_number_integer())
      return Freq->get<int64_t>() > 0 && Layer % Freq->get<int64_t>() == 0;
    if (Freq->is_array()) {
      if (Layer < 0 || Layer >= static_cast<int64_t>(Freq->size()))
        fail(Where, E, "moe_layer_freq has no entry for layer " + std::to_string(Layer));
      return (*Freq)[Layer] == 1;
    }
    fail(Where, E, "moe_layer_freq must be an int or a list, not " + show(*Freq));
  }
  }
  fail(Where, E, "internal: builtin '" + Name + "' has no evaluation");
}

} // namespace

std::vector<std::string> hfSpellings(const std::string &Path, Span<HFAlias> Aliases) {
  std::vector<std::string> Own{Path};
  for (const HFAlias &A : Aliases) {
    std::string Pr = A.Primary;
    if (!Pr.empty() && (Path == Pr || Path.rfind(Pr + ".", 0) == 0))
      Own.push_back(A.Alternative + Path.substr(Pr.size()));
  }
  // A section alias ('alias hf = hf.text_config;') reads each spelling
  // inside the section first: transformers builds the language model from
  // its text_config, whatever a file also keeps at the top level.
  std::vector<std::string> All;
  for (const HFAlias &A : Aliases)
    if (!*A.Primary)
      for (const std::string &P : Own)
        All.push_back(std::string(A.Alternative) + "." + P);
  All.insert(All.end(), Own.begin(), Own.end());
  return All;
}

bool hfPathPresent(const Json &HF, const std::string &Path, Span<HFAlias> Aliases) {
  for (const std::string &P : hfSpellings(Path, Aliases))
    if (lookupPath(HF, P.c_str()))
      return true;
  return false;
}

Json evaluate(const Expr &E, const EvalEnv &Env, const std::string &Where) {
  std::vector<Json> Stack;
  auto Pop = [&]() {
    if (Stack.empty())
      fail(Where, E, "malformed expression table");
    Json V = std::move(Stack.back());
    Stack.pop_back();
    return V;
  };
  auto Truth = [&](const Json &V) {
    if (V.is_null())
      return false;
    if (!V.is_boolean())
      fail(Where, E, "expected true or false, got " + show(V));
    return V.get<bool>();
  };
  for (uint32_t PC = 0; PC < E.Code.Size; ++PC) {
    const Insn &I = E.Code[PC];
    switch (I.Op) {
    case ExprOp::PushInt:
      Stack.push_back(I.A);
      break;
    case ExprOp::PushFloat:
      Stack.push_back(I.F);
      break;
    case ExprOp::PushBool:
      Stack.push_back(I.A != 0);
      break;
    case ExprOp::PushString:
      Stack.push_back(std::string(I.S));
      break;
    case ExprOp::PushNull:
      Stack.push_back(nullptr);
      break;
    case ExprOp::LoadHF: {
      if (!Env.HF)
        fail(Where, E, std::string("hf.") + I.S + " is not available here");
      // The path as written, else its other spellings (of it or a prefix);
      // a section alias's spellings come first.
      const Json *V = nullptr;
      if (Env.Aliases.empty())
        V = lookupPath(*Env.HF, I.S);
      else
        for (const std::string &P : hfSpellings(I.S, Env.Aliases))
          if ((V = lookupPath(*Env.HF, P.c_str())))
            break;
      Stack.push_back(V ? *V : Json());
      break;
    }
    case ExprOp::LoadField:
      if (!Env.Fields || I.A < 0 || static_cast<size_t>(I.A) >= Env.Fields->size())
        fail(Where, E, std::string("config field '") + I.S + "' is not available here");
      Stack.push_back(Env.ResolveField ? (*Env.ResolveField)(static_cast<uint32_t>(I.A)) : (*Env.Fields)[I.A]);
      break;
    case ExprOp::LoadVar:
      if (!Env.Vars || I.A < 0 || static_cast<size_t>(I.A) >= Env.Vars->size())
        fail(Where, E, "loop variable out of range");
      Stack.push_back((*Env.Vars)[I.A]);
      break;
    case ExprOp::MakeList: {
      Json L = Json::array();
      std::vector<Json> Items;
      for (int64_t K = 0; K < I.A; ++K)
        Items.push_back(Pop());
      for (auto It = Items.rbegin(); It != Items.rend(); ++It)
        L.push_back(*It);
      Stack.push_back(L);
      break;
    }
    case ExprOp::Neg: {
      Json V = Pop();
      if (V.is_number_integer())
        Stack.push_back(-V.get<int64_t>());
      else if (V.is_number())
        Stack.push_back(-V.get<double>());
      else
        fail(Where, E, "negation of " + show(V));
      break;
    }
    case ExprOp::Not:
      Stack.push_back(!Truth(Pop()));
      break;
    case ExprOp::Add:
    case ExprOp::Sub:
    case ExprOp::Mul:
    case ExprOp::Div:
    case ExprOp::FloorDiv:
    case ExprOp::Mod: {
      Json R = Pop(), L = Pop();
      Stack.push_back(arith(I.Op, L, R, Where, E));
      break;
    }
    case ExprOp::Eq:
    case ExprOp::Ne: {
      Json R = Pop(), L = Pop();
      bool Eq = equalValues(L, R);
      Stack.push_back(I.Op == ExprOp::Eq ? Eq : !Eq);
      break;
    }
    case ExprOp::Lt:
    case ExprOp::Le:
    case ExprOp::Gt:
    case ExprOp::Ge: {
      Json R = Pop(), L = Pop();
      if (!isNum(L) || !isNum(R))
        fail(Where, E, "comparison of " + show(L) + " and " + show(R));
      double A = L.get<double>(), B = R.get<double>();
      bool V = I.Op == ExprOp::Lt ? A < B : I.Op == ExprOp::Le ? A <= B : I.Op == ExprOp::Gt ? A > B : A >= B;
      Stack.push_back(V);
      break;
    }
    case ExprOp::ToBool:
      Stack.push_back(Truth(Pop()));
      break;
    case ExprOp::JumpIfFalse:
      if (!Truth(Pop()))
        PC += static_cast<uint32_t>(I.A);
      break;
    case ExprOp::JumpIfTrue:
      if (Truth(Pop()))
        PC += static_cast<uint32_t>(I.A);
      break;
    case ExprOp::JumpIfNotNull:
      if (Stack.empty())
        fail(Where, E, "malformed expression table");
      if (!Stack.back().is_null())
        PC += static_cast<uint32_t>(I.A);
      else
        Stack.pop_back();
      break;
    case ExprOp::Jump:
      PC += static_cast<uint32_t>(I.A);
      break;
    case ExprOp::Call: {
      std::vector<Json> Args(static_cast<size_t>(I.A));
      for (int64_t K = I.A; K-- > 0;)
        Args[K] = Pop();
      Stack.push_back(callBuiltin(I.S, Args, Env, Where, E));
      break;
    }
    }
  }
  if (Stack.size() != 1)
    fail(Where, E, "malformed expression table");
  return Stack.back();
}

bool evaluateCondition(const Expr &E, const EvalEnv &Env, const std::string &Where) {
  if (E.Code.empty())
    return true;
  Json V = evaluate(E, Env, Where);
  if (V.is_null())
    return false;
  if (!V.is_boolean())
    throw Error(Where + ": error: condition '" + (E.Text ? E.Text : "") + "' is " + V.dump() + ", not true or false");
  return V.get<bool>();
}

} // namespace bridge
