//===- ConfigMap.cpp - config import/export and rule expansion ------------===//
#include "bridge/Config.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <tuple>
#include <functional>
#include <map>
#include <set>

namespace bridge {
namespace {

std::string kindName(ValueKind K) {
  switch (K) {
  case ValueKind::Int:
    return "int";
  case ValueKind::Float:
    return "float";
  case ValueKind::Bool:
    return "bool";
  case ValueKind::String:
    return "string";
  case ValueKind::IntList:
    return "int_list";
  case ValueKind::FloatList:
    return "float_list";
  case ValueKind::List:
    return "list";
  case ValueKind::Any:
    return "any";
  }
  return "?";
}

/// Converts \p V to the field's type, or explains why it cannot be.
bool coerce(const FieldInfo &F, Json &V, std::string &Why) {
  switch (F.Kind) {
  case ValueKind::Int:
    if (V.is_number_integer())
      return true;
    // A whole float within int64 (9.2e18); beyond it the cast is undefined
    // (found by fuzzing: 1.5e65 for an int field).
    if (V.is_number_float() && V.get<double>() == std::floor(V.get<double>()) &&
        std::fabs(V.get<double>()) < 9.2e18) {
      V = static_cast<int64_t>(V.get<double>());
      return true;
    }
    break;
  case ValueKind::Float:
    if (V.is_number()) {
      V = V.get<double>();
      return true;
    }
    break;
  case ValueKind::Bool:
    if (V.is_boolean())
      return true;
    break;
  case ValueKind::String:
    if (V.is_string()) {
      if (F.EnumValues.empty())
        return true;
      std::string Options;
      for (const char *E : F.EnumValues) {
        if (V.get<std::string>() == E)
          return true;
        Options += (Options.empty() ? "" : ", ") + std::string(E);
      }
      Why = V.dump() + " is not one of: " + Options;
      return false;
    }
    break;
  case ValueKind::IntList:
    if (V.is_array()) {
      for (auto &X : V)
        if (!X.is_number_integer()) {
          Why = V.dump() + " is not a list of ints";
          return false;
        }
      return true;
    }
    break;
  case ValueKind::FloatList:
  case ValueKind::List:
    if (V.is_array())
      return true;
    break;
  case ValueKind::Any:
    return true;
  }
  Why = V.dump() + (F.Kind == ValueKind::Int || F.Kind == ValueKind::IntList ? " is not an " : " is not a ") + kindName(F.Kind);
  return false;
}

void setPath(Json &Root, const std::string &Path, const Json &V) {
  Json *Cur = &Root;
  size_t Start = 0;
  while (true) {
    size_t Dot = Path.find('.', Start);
    std::string Key = Path.substr(Start, Dot == std::string::npos ? std::string::npos : Dot - Start);
    if (Dot == std::string::npos) {
      (*Cur)[Key] = V;
      return;
    }
    Json &Next = (*Cur)[Key];
    if (!Next.is_object())
      Next = Json::object();
    Cur = &Next;
    Start = Dot + 1;
  }
}

} // namespace

std::vector<Json> importConfig(const MappingTable &T, const SchemaTable &S, const Json &HF) {
  std::vector<Json> Fields(S.Fields.Size);
  std::vector<bool> Set(S.Fields.Size, false), Defaulting(S.Fields.Size, false);
  EvalEnv Env{&HF, &Fields, &S, nullptr, T.Aliases};
  // A field no rule has set takes its schema default when first read. Rules
  // run in dependency order (bridgec sorts them), so a rule that could set
  // the field has already run.
  std::function<Json(uint32_t)> Resolve = [&](uint32_t I) -> Json {
    if (Set[I] || Defaulting[I] || S.Fields[I].Default.Code.empty())
      return Fields[I];
    Defaulting[I] = true;
    Json V = evaluate(S.Fields[I].Default, Env, std::string("schema default of '") + S.Fields[I].Name + "'");
    Defaulting[I] = false;
    std::string Why;
    if (!V.is_null() && !coerce(S.Fields[I], V, Why))
      throw Error(std::string("error: schema default of '") + S.Fields[I].Name + "': " + Why);
    Fields[I] = V;
    Set[I] = true;
    return V;
  };
  Env.ResolveField = &Resolve;
  auto Check = [&](const Requirement &Rq) {
    if (!evaluateCondition(Rq.Cond, Env, describe(Rq.Loc)))
      throw Error(describe(Rq.Loc) + ": error: " + Rq.Message + " (mapping '" + T.Name + "' requires '" +
                  Rq.Cond.Text + "')");
  };
  auto ReadsMegatron = [](const Expr &E) {
    for (const Insn &I : E.Code)
      if (I.Op == ExprOp::LoadField)
        return true;
    return false;
  };
  // A requirement on config.json alone is checked before any rule runs: it
  // guards the rules (a section they read, a combination they cannot
  // convert), whose own errors would otherwise come first and hide it.
  for (const Requirement &Rq : T.Requires)
    if (!ReadsMegatron(Rq.Cond))
      Check(Rq);
  for (const ConfigRule &R : T.Config) {
    std::string Where = describe(R.Loc);
    if (!evaluateCondition(R.When, Env, Where))
      continue;
    Json V = evaluate(R.Value, Env, Where);
    const FieldInfo &F = S.Fields[R.Field];
    // A plain rename of a key config.json lacks is an error, not a null: a
    // renamed key (num_experts -> num_local_experts) must not drop a field.
    if (V.is_null() && R.Value.Code.Size == 1 && R.Value.Code[0].Op == ExprOp::LoadHF &&
        !hfPathPresent(HF, R.Value.Code[0].S, T.Aliases))
      throw Error(Where + ": error: config.json has no '" + R.Value.Code[0].S + "' for Megatron field '" + F.Name +
                  "'; where it may be absent, write 'hf." + R.Value.Code[0].S + " ?? <default>'");
    if (V.is_null()) {
      // An optional field takes the null (DeepSeek-V2-Lite's q_lora_rank);
      // a required one falls back to the schema default, checked below.
      if (F.Optional)
        Set[R.Field] = true;
      continue;
    }
    std::string Why;
    if (!coerce(F, V, Why))
      throw Error(Where + ": error: config field '" + F.Name + "': " + Why + " (from '" + R.Value.Text + "')");
    Fields[R.Field] = V;
    Set[R.Field] = true;
  }
  for (uint32_t I = 0; I < S.Fields.Size; ++I) {
    if (Set[I])
      continue;
    const FieldInfo &F = S.Fields[I];
    Resolve(I);
    if (Fields[I].is_null() && !F.Optional)
      throw Error(std::string("error: Megatron config field '") + F.Name + "' has no value: mapping '" + T.Name +
                  "' (" + T.SourceFile + ") sets none from this config.json and the schema has no default");
  }
  // The others see the finished Megatron config too.
  for (const Requirement &Rq : T.Requires)
    if (ReadsMegatron(Rq.Cond))
      Check(Rq);
  return Fields;
}

Json configToJson(const SchemaTable &S, const std::vector<Json> &Fields) {
  Json Out = Json::object();
  // Every field, nulls included: an optional field set to null (no query
  // LoRA) differs from Megatron-Core's default (512).
  for (uint32_t I = 0; I < S.Fields.Size; ++I)
    Out[S.Fields[I].Name] = Fields[I];
  return Out;
}

std::vector<Json> configFromJson(const SchemaTable &S, const Json &Obj, const std::string &File) {
  const std::string In = File.empty() ? std::string() : File + ": ";
  std::vector<Json> Fields(S.Fields.Size);
  for (uint32_t I = 0; I < S.Fields.Size; ++I) {
    auto It = Obj.find(S.Fields[I].Name);
    if (It == Obj.end())
      continue;
    // A sidecar is input like any other: each value of its field's type.
    Fields[I] = *It;
    std::string Why;
    if (!Fields[I].is_null() && !coerce(S.Fields[I], Fields[I], Why))
      throw Error("error: " + In + "Megatron config field '" + std::string(S.Fields[I].Name) + "': " +
                  (Why.size() > 200 ? Why.substr(0, 200) + "..." : Why));
  }
  for (auto It = Obj.begin(); It != Obj.end(); ++It) {
    bool Known = false;
    for (const FieldInfo &F : S.Fields)
      Known |= It.key() == F.Name;
    if (!Known)
      throw Error("error: " + In + "unknown Megatron config field '" + It.key() + "'");
  }
  return Fields;
}

namespace {
Json *findPath(Json &Root, const std::string &Path) {
  Json *Cur = &Root;
  size_t Start = 0;
  while (true) {
    size_t Dot = Path.find('.', Start);
    std::string Key = Path.substr(Start, Dot == std::string::npos ? std::string::npos : Dot - Start);
    if (!Cur->is_object() || !Cur->contains(Key))
      return nullptr;
    Cur = &(*Cur)[Key];
    if (Dot == std::string::npos)
      return Cur;
    Start = Dot + 1;
  }
}

void erasePath(Json &Root, const std::string &Path) {
  size_t Dot = Path.rfind('.');
  Json *Parent = Dot == std::string::npos ? &Root : findPath(Root, Path.substr(0, Dot));
  if (Parent && Parent->is_object())
    Parent->erase(Dot == std::string::npos ? Path : Path.substr(Dot + 1));
}
} // namespace

Json exportConfig(const MappingTable &T, const SchemaTable &S, const std::vector<Json> &Fields,
                  const Json *Reference) {
  Json HF = Json::object();
  if (T.Architectures.Size)
    HF["architectures"] = Json::array({T.Architectures[0]});
  if (T.ModelTypes.Size)
    HF["model_type"] = T.ModelTypes[0];
  // A mapping that serves several model types writes back the source's.
  if (Reference && Reference->contains("model_type"))
    for (const char *M : T.ModelTypes)
      if ((*Reference)["model_type"] == M)
        HF["model_type"] = M;
  if (Reference && Reference->contains("architectures") && (*Reference)["architectures"].is_array()) {
    bool Known = !(*Reference)["architectures"].empty();
    for (auto &A : (*Reference)["architectures"]) {
      bool Found = false;
      for (const char *Ar : T.Architectures)
        Found |= A == Ar;
      Known &= Found;
    }
    if (Known)
      HF["architectures"] = (*Reference)["architectures"];
  }
  EvalEnv Env{nullptr, &Fields, &S, nullptr};
  for (const ExportRule &R : T.Export) {
    std::string Where = describe(R.Loc);
    if (!evaluateCondition(R.When, Env, Where))
      continue;
    setPath(HF, R.HFPath, evaluate(R.Value, Env, Where));
  }
  // Spell aliased fields the way the source config did.
  if (Reference) {
    Json Ref = *Reference;
    // A dict the source kept under the other spelling may hold keys Megatron
    // does not model (rope_type "default"), at any depth (transformers 5
    // nests Gemma 3's rotary parameters by layer type); keep the source's.
    std::function<void(Json &, const Json &)> AddBack = [&](Json &Out, const Json &RefV) {
      for (auto It = RefV.begin(); It != RefV.end(); ++It) {
        if (!Out.contains(It.key()))
          Out[It.key()] = It.value();
        else if (Out[It.key()].is_object() && It.value().is_object())
          AddBack(Out[It.key()], It.value());
      }
    };
    // Field aliases, relative to one level of the config (the top, or a
    // section a section alias reads).
    auto SpellFields = [&](Json &Out, const Json &RefRoot) {
      Json RefCopy = RefRoot;
      for (const HFAlias &A : T.Aliases) {
        if (!*A.Primary || findPath(RefCopy, A.Primary) || !findPath(RefCopy, A.Alternative))
          continue;
        Json *V = findPath(Out, A.Primary);
        if (!V)
          continue;
        Json Value = *V;
        erasePath(Out, A.Primary);
        if (Value.is_null())
          continue;
        Json *Existing = findPath(Out, A.Alternative);
        if (Existing && Existing->is_object() && Value.is_object())
          Existing->update(Value);
        else
          setPath(Out, A.Alternative, Value);
      }
      // Under either spelling: a dict the source wrote as rope_scaling
      // keeps its 'type: mrope' as well as one written as rope_parameters.
      for (const HFAlias &A : T.Aliases) {
        if (!*A.Primary)
          continue;
        for (const char *Spelling : {A.Alternative, A.Primary}) {
          std::string Root = std::string(Spelling).substr(0, std::string(Spelling).find('.'));
          Json *O = findPath(Out, Root);
          const Json *RefV = findPath(RefCopy, Root);
          if (O && RefV && O->is_object() && RefV->is_object())
            AddBack(*O, *RefV);
        }
      }
    };
    SpellFields(HF, Ref);
    // Then section aliases: what the source did not keep at the top level
    // goes into the section (a VLM's text_config), spelled as there; the
    // section keeps the source's other keys (its model_type, layer_types).
    for (const HFAlias &A : T.Aliases) {
      const Json *RefSection = *A.Primary ? nullptr : findPath(Ref, A.Alternative);
      if (!RefSection || !RefSection->is_object())
        continue;
      std::string Root = std::string(A.Alternative).substr(0, std::string(A.Alternative).find('.'));
      Json Moved = Json::object();
      std::vector<std::string> Keys;
      for (auto It = HF.begin(); It != HF.end(); ++It)
        if (It.key() != Root && !Ref.contains(It.key()))
          Keys.push_back(It.key());
      for (const std::string &K : Keys) {
        if (!HF[K].is_null())
          Moved[K] = HF[K];
        HF.erase(K);
      }
      SpellFields(Moved, *RefSection);
      AddBack(Moved, *RefSection);
      Json *Existing = findPath(HF, A.Alternative);
      if (Existing && Existing->is_object())
        Moved.update(*Existing);
      setPath(HF, A.Alternative, Moved);
    }
    // Everything else the source config says and Megatron does not model
    // (token ids, use_cache, a Mamba mixer's time-step limits, fields the
    // model class ignores) is carried over as it was: a field left out
    // would take transformers' class default, which need not be the
    // source's (Nemotron-H's pad_token_id outside a small vocabulary stops
    // the model from loading). Not quantization_config: export writes the
    // weights dequantized.
    Ref.erase("quantization_config");
    AddBack(HF, Ref);
  }
  return HF;
}

} // namespace bridge
