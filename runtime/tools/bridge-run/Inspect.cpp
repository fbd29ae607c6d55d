//===- Inspect.cpp - bridge-run inspect: what a new HF family needs -------===//
//
// From an HF checkpoint directory (config.json alone is enough):
//   - the shipped mapping that serves it (mappingFor), and with tensors at
//     hand whether its plan reads every one of them (expandPlan and
//     chooseAlternatives, then the HF side of import's coverage check);
//   - for a family no mapping serves: the config fields no shipped mapping
//     reads (the hf. paths of every mapping's config section, from the
//     tables), the tensor names grouped into patterns (numeric path
//     components become the captures {i}, then {e}), and for each pattern
//     the shipped rules whose source pattern reads it;
//   - with --draft, a .bridge file: the closest mapping's config, export and
//     rules (closest: most patterns read, then fewest tensors left over),
//     the rules of other mappings that read a pattern, and a TODO line for
//     each pattern no shipped rule reads.
//
//===----------------------------------------------------------------------===//
#include "Inspect.h"

#include "bridge/Config.h"
#include "bridge/Convert.h"
#include "bridge/Error.h"
#include "bridge/Files.h"
#include "bridge/Plan.h"
#include "bridge/Registry.h"
#include "bridge/Safetensors.h"
#include "bridge/StrictJson.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace bridge {
namespace {

// ---- what the checkpoint holds -----------------------------------------------

struct HFTensor {
  std::string DType;          ///< safetensors spelling; empty when only the index names it
  std::vector<int64_t> Shape;
  bool ShapeKnown = false;
};

struct TensorList {
  std::map<std::string, HFTensor> Tensors;
  std::string From; ///< "safetensors headers", "model.safetensors.index.json", or "" (none)
  std::string Note; ///< why the headers were not read, when the index was
  std::unique_ptr<SafetensorsCheckpoint> Ckpt;
};

TensorList readTensors(const std::string &Dir) {
  TensorList L;
  std::string Single = files::join(Dir, "model.safetensors"), Index = files::join(Dir, "model.safetensors.index.json");
  if (!files::exists(Single) && !files::exists(Index))
    return L;
  try {
    L.Ckpt = std::make_unique<SafetensorsCheckpoint>(Dir);
    for (const std::string &N : L.Ckpt->names()) {
      const TensorView *V = L.Ckpt->find(N);
      L.Tensors[N] = {std::string(safetensorsName(V->Type)), V->Shape, true};
    }
    L.From = "safetensors headers";
    return L;
  } catch (const Error &E) {
    if (!files::exists(Index))
      throw;
    L.Ckpt.reset();
    L.Note = E.what();
  }
  // Names only: the shards are not all here (or not readable).
  Json J = parseJson<Json>(files::readRegularFile(Index, files::kMaxIndexBytes, "model.safetensors.index.json"), Index,
                           "model.safetensors.index.json");
  if (!J.contains("weight_map") || !J["weight_map"].is_object())
    throw Error("error: " + Index + " has no weight_map object");
  for (auto &[N, F] : J["weight_map"].items())
    L.Tensors[N] = HFTensor();
  L.From = "model.safetensors.index.json";
  return L;
}

/// What a pass-through rule ('visual.** <- visual.**') expands to.
PassThroughLister listerOf(const TensorList &L) {
  if (L.Ckpt)
    return passThroughOf(*L.Ckpt);
  PassThroughLister P;
  P.BySource = true;
  P.List = [&L](const std::string &Prefix) {
    std::vector<std::pair<std::string, std::vector<int64_t>>> Out;
    for (auto It = L.Tensors.lower_bound(Prefix); It != L.Tensors.end() && It->first.rfind(Prefix, 0) == 0; ++It)
      Out.push_back({It->first, It->second.Shape});
    return Out;
  };
  return P;
}

// ---- the mappings ------------------------------------------------------------------

bool hidden(const RegistryEntry &E, const InspectOptions &O) {
  return std::find(O.IgnoreMappings.begin(), O.IgnoreMappings.end(), std::string(E.Name)) != O.IgnoreMappings.end();
}

std::vector<const RegistryEntry *> visibleMappings(const InspectOptions &O) {
  std::vector<const RegistryEntry *> Out;
  for (const RegistryEntry &E : allMappings())
    if (!hidden(E, O))
      Out.push_back(&E);
  return Out;
}

/// The mapping that serves \p HF (mappingFor), unless it is hidden.
const MappingTable *servingMapping(const Json &HF, const InspectOptions &O) {
  const MappingTable *T = nullptr;
  try {
    T = &mappingFor(HF);
  } catch (const Error &) {
    return nullptr;
  }
  for (const RegistryEntry &E : allMappings())
    if (E.Table == T && hidden(E, O))
      return nullptr;
  return T;
}

std::string oneLine(const char *Text) {
  std::string S;
  bool Blank = false;
  for (const char *P = Text ? Text : ""; *P; ++P) {
    bool IsBlank = *P == ' ' || *P == '\n' || *P == '\t' || *P == '\r';
    if (IsBlank && !Blank && !S.empty())
      S += ' ';
    if (!IsBlank)
      S += *P;
    Blank = IsBlank;
  }
  while (!S.empty() && S.back() == ' ')
    S.pop_back();
  return S;
}

std::string text(const Expr &E) { return oneLine(E.Text); }
bool present(const Expr &E) { return E.Code.Size > 0; }

void hfReads(const Expr &E, std::set<std::string> &Out) {
  for (const Insn &I : E.Code)
    if (I.Op == ExprOp::LoadHF && I.S)
      Out.insert(I.S);
}

/// The hf. paths a mapping's config section reads, and the sections its
/// aliases read the top level from ('alias hf = hf.text_config;').
void configReads(const MappingTable &T, std::set<std::string> &Paths, std::set<std::string> &Sections) {
  for (const ConfigRule &R : T.Config) {
    hfReads(R.Value, Paths);
    hfReads(R.When, Paths);
  }
  for (const Requirement &R : T.Requires)
    hfReads(R.Cond, Paths);
  for (const HFAlias &A : T.Aliases) {
    if (A.Primary && *A.Primary)
      Paths.insert(A.Primary);
    else if (A.Alternative)
      Sections.insert(A.Alternative);
    if (A.Alternative && *A.Alternative && A.Primary && *A.Primary)
      Paths.insert(A.Alternative);
  }
}

std::string firstComponent(const std::string &Path) { return Path.substr(0, Path.find('.')); }

/// Keys of config.json that describe no part of the model (generation,
/// tokenizer, bookkeeping): not worth a rule.
bool bookkeepingKey(const std::string &K) {
  static const std::set<std::string> Keys = {
      "_name_or_path", "transformers_version", "model_type", "architectures", "auto_map", "bos_token_id",
      "eos_token_id", "pad_token_id", "sep_token_id", "cls_token_id", "decoder_start_token_id", "use_cache",
      "output_attentions", "output_hidden_states", "return_dict", "torchscript", "id2label", "label2id",
      "tokenizer_class", "task_specific_params", "problem_type", "chunk_size_feed_forward", "is_encoder_decoder",
      "is_decoder", "add_cross_attention", "tie_encoder_decoder", "pruned_heads", "finetuning_task", "prefix",
      "use_bfloat16", "tf_legacy_loss", "bad_words_ids", "begin_suppress_tokens", "suppress_tokens",
      "forced_bos_token_id", "forced_eos_token_id", "max_length", "min_length", "do_sample", "early_stopping",
      "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p",
      "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
      "num_return_sequences", "output_scores", "return_dict_in_generate", "remove_invalid_values",
      "exponential_decay_length_penalty", "cross_attention_hidden_size", "_attn_implementation_autoset",
      "_attn_implementation", "output_router_logits", "router_aux_loss_coef", "pretraining_tp"};
  return Keys.count(K) > 0;
}

/// The keys of \p HF (dotted inside an aliased section) that no mapping of
/// \p Mappings reads, with their values.
std::vector<std::pair<std::string, Json>> unreadFields(const Json &HF, const std::vector<const MappingTable *> &Mappings) {
  std::set<std::string> Paths, Sections, Top;
  for (const MappingTable *T : Mappings)
    configReads(*T, Paths, Sections);
  for (const std::string &P : Paths)
    Top.insert(firstComponent(P));
  std::vector<std::pair<std::string, Json>> Out;
  if (!HF.is_object())
    return Out;
  for (auto &[K, V] : HF.items()) {
    if (bookkeepingKey(K))
      continue;
    if (Sections.count(K) && V.is_object()) {
      for (auto &[K2, V2] : V.items())
        if (!bookkeepingKey(K2) && !Top.count(K2))
          Out.push_back({K + "." + K2, V2});
      continue;
    }
    if (!Top.count(K) && !Sections.count(K))
      Out.push_back({K, V});
  }
  return Out;
}

// ---- coverage: the HF side of import's check ---------------------------------------

struct Coverage {
  bool Checked = false;
  std::vector<std::string> Unread, Missing;
  std::string Error; ///< the plan could not be made
  size_t problems() const {
    return Error.empty() ? Unread.size() + Missing.size() : std::numeric_limits<size_t>::max();
  }
};

/// Plans \p T for \p HF over the checkpoint's tensors and lists what no rule
/// reads, ties or ignores, and what the plan reads that is absent.
Coverage coverageOf(const MappingTable &T, const Json &HF, const TensorList &L) {
  Coverage C;
  if (L.Tensors.empty())
    return C;
  C.Checked = true;
  try {
    std::vector<Json> Fields = importConfig(T, schema(), HF);
    PassThroughLister Lister = listerOf(L);
    Plan P = expandPlan(T, schema(), Fields, true, &Lister, L.Tensors.size());
    chooseAlternatives(P, [&](const std::string &N) { return L.Tensors.count(N) > 0; });
    // Import's own check of the HF side (Sources.cpp checkAgainstHF).
    std::vector<std::string> Names;
    for (auto &[N, V] : L.Tensors)
      Names.push_back(N);
    HFCoverage Cov = hfCoverage(P, Names, [&](const std::string &N) -> const std::vector<int64_t> * {
      auto It = L.Tensors.find(N);
      return It != L.Tensors.end() && It->second.ShapeKnown ? &It->second.Shape : nullptr;
    });
    C.Missing = std::move(Cov.Missing);
    C.Unread = std::move(Cov.Unread);
  } catch (const Error &E) {
    C.Error = E.what();
  }
  return C;
}

// ---- patterns of tensor names ---------------------------------------------------------

std::string captureName(size_t K) { return K == 0 ? "i" : K == 1 ? "e" : "k" + std::to_string(K); }

bool allDigits(const std::string &S) {
  return !S.empty() && std::all_of(S.begin(), S.end(), [](char C) { return C >= '0' && C <= '9'; });
}

std::vector<std::string> splitDots(const std::string &S) {
  std::vector<std::string> Out;
  size_t Start = 0;
  for (;;) {
    size_t Dot = S.find('.', Start);
    Out.push_back(S.substr(Start, Dot == std::string::npos ? std::string::npos : Dot - Start));
    if (Dot == std::string::npos)
      return Out;
    Start = Dot + 1;
  }
}

struct Match {
  const RegistryEntry *Mapping;
  const char *Kind; ///< "rule", "ignore", "tie"
  SourceLoc Loc;
  const void *Rule;
};

struct Pattern {
  std::string Text;     ///< model.layers.{i}.mlp.experts.{e}.down_proj.weight
  std::string Skeleton; ///< every capture as {}
  size_t Count = 0;
  std::set<std::string> DTypes;
  /// Each shape and the capture values of the tensors that have it.
  std::map<std::vector<int64_t>, std::vector<std::vector<int64_t>>> Shapes;
  bool ShapeKnown = true;
  std::vector<std::set<int64_t>> Values; ///< per capture
  std::vector<Match> Matches;
  std::string First; ///< the first tensor's name
};

std::vector<Pattern> groupTensors(const TensorList &L) {
  std::map<std::string, Pattern> ByText;
  std::vector<std::string> Order;
  for (auto &[Name, T] : L.Tensors) {
    std::string Text, Skel;
    std::vector<int64_t> Idx;
    std::vector<std::string> Parts = splitDots(Name);
    for (size_t K = 0; K < Parts.size(); ++K) {
      std::string Sep = K ? "." : "";
      if (allDigits(Parts[K]) && Parts[K].size() < 10) {
        Text += Sep + "{" + captureName(Idx.size()) + "}";
        Skel += Sep + "{}";
        Idx.push_back(std::stoll(Parts[K]));
      } else {
        Text += Sep + Parts[K];
        Skel += Sep + Parts[K];
      }
    }
    auto [It, New] = ByText.try_emplace(Text);
    Pattern &P = It->second;
    if (New) {
      P.Text = Text;
      P.Skeleton = Skel;
      P.Values.resize(Idx.size());
      P.First = Name;
      Order.push_back(Text);
    }
    ++P.Count;
    if (!T.DType.empty())
      P.DTypes.insert(T.DType);
    P.ShapeKnown = P.ShapeKnown && T.ShapeKnown;
    if (T.ShapeKnown)
      P.Shapes[T.Shape].push_back(Idx);
    for (size_t K = 0; K < Idx.size(); ++K)
      P.Values[K].insert(Idx[K]);
  }
  // In the order of the checkpoint's first tensor of each (name order),
  // global tensors and layer tensors as they come.
  std::vector<Pattern> Out;
  for (const std::string &T : Order)
    Out.push_back(std::move(ByText[T]));
  return Out;
}

std::string shapeText(const std::vector<int64_t> &S) {
  std::string T = "[";
  for (size_t K = 0; K < S.size(); ++K)
    T += (K ? ", " : "") + std::to_string(S[K]);
  return T + "]";
}

/// "0..3" for a run, else the values (at most 8 of them).
std::string valuesText(const std::set<int64_t> &V) {
  if (V.empty())
    return "";
  if (*V.rbegin() - *V.begin() + 1 == static_cast<int64_t>(V.size()))
    return V.size() == 1 ? std::to_string(*V.begin()) : std::to_string(*V.begin()) + ".." + std::to_string(*V.rbegin());
  std::string S;
  size_t N = 0;
  for (int64_t X : V) {
    if (++N > 8) {
      S += ",...";
      break;
    }
    S += (S.empty() ? "" : ",") + std::to_string(X);
  }
  return S;
}

std::string indicesText(const Pattern &P) {
  std::string S;
  for (size_t K = 0; K < P.Values.size(); ++K)
    S += (S.empty() ? "" : " ") + captureName(K) + "=" + valuesText(P.Values[K]);
  return S;
}

/// The shape, or each shape with the indices that have it.
std::string patternShape(const Pattern &P) {
  if (!P.ShapeKnown || P.Shapes.empty())
    return "?";
  if (P.Shapes.size() == 1)
    return shapeText(P.Shapes.begin()->first);
  std::string S;
  for (auto &[Shape, Idx] : P.Shapes) {
    std::vector<std::set<int64_t>> V(P.Values.size());
    for (auto &I : Idx)
      for (size_t K = 0; K < I.size() && K < V.size(); ++K)
        V[K].insert(I[K]);
    std::string Where;
    for (size_t K = 0; K < V.size(); ++K)
      Where += (Where.empty() ? "" : " ") + captureName(K) + "=" + valuesText(V[K]);
    S += (S.empty() ? "" : " | ") + shapeText(Shape) + (Where.empty() ? "" : " (" + Where + ")");
  }
  return S;
}

std::string dtypeText(const Pattern &P) {
  std::string S;
  for (const std::string &D : P.DTypes)
    S += (S.empty() ? "" : "|") + D;
  return S.empty() ? "?" : S;
}

// ---- source patterns of the tables ------------------------------------------------------

/// A pattern of the tables with every capture as {} (a numeric component
/// too), and whether it names a prefix ('visual.**').
struct SourceSkeleton {
  std::string Text;
  bool Prefix = false;
};

SourceSkeleton skeletonOf(Span<PatternPiece> Pieces) {
  std::string Raw;
  for (const PatternPiece &P : Pieces)
    Raw += P.Literal ? std::string(P.Literal) : std::string("\x01");
  SourceSkeleton S;
  if (isPassThroughName(Raw)) {
    S.Prefix = true;
    S.Text = Raw.substr(0, Raw.size() - 2);
    return S;
  }
  std::vector<std::string> Parts = splitDots(Raw);
  for (size_t K = 0; K < Parts.size(); ++K) {
    std::string C = Parts[K] == "\x01" || allDigits(Parts[K]) ? "{}" : Parts[K];
    S.Text += (K ? "." : "") + C;
  }
  return S;
}

bool matches(const SourceSkeleton &S, const Pattern &P) {
  return S.Prefix ? P.Text.rfind(S.Text, 0) == 0 : S.Text == P.Skeleton;
}

void findMatches(std::vector<Pattern> &Patterns, const std::vector<const RegistryEntry *> &Mappings) {
  for (const RegistryEntry *E : Mappings) {
    const MappingTable &T = *E->Table;
    auto Add = [&](Span<PatternPiece> Pieces, const char *Kind, SourceLoc Loc, const void *Rule) {
      SourceSkeleton S = skeletonOf(Pieces);
      for (Pattern &P : Patterns)
        if (matches(S, P)) {
          bool Seen = false; // a rule reads a pattern once however many inputs name it
          for (const Match &M : P.Matches)
            Seen = Seen || (M.Mapping == E && M.Rule == Rule);
          if (!Seen)
            P.Matches.push_back({E, Kind, Loc, Rule});
        }
    };
    for (const TensorRule &R : T.Tensors)
      for (const Span<OpNode> &Alt : R.Alternatives)
        for (const OpNode &N : Alt)
          if (N.IsSource)
            Add(N.Source, "rule", R.Loc, &R);
    for (const IgnoreRule &R : T.Ignores)
      Add(R.Pattern, "ignore", R.Loc, &R);
    for (const TieRule &R : T.Ties)
      Add(R.Copy, "tie", R.Loc, &R);
  }
}

std::string locText(const SourceLoc &L) { return std::string(L.File) + ":" + std::to_string(L.Line); }

/// "mappings/common/gpt_decoder.bridge:68 (llama, mistral, +3)" per place.
std::string matchesText(const Pattern &P) {
  std::map<std::string, std::vector<std::string>> ByLoc;
  std::vector<std::string> Order;
  for (const Match &M : P.Matches) {
    std::string L = locText(M.Loc) + (std::string(M.Kind) == "rule" ? "" : " " + std::string(M.Kind));
    if (!ByLoc.count(L))
      Order.push_back(L);
    auto &V = ByLoc[L];
    if (std::find(V.begin(), V.end(), M.Mapping->Name) == V.end())
      V.push_back(M.Mapping->Name);
  }
  std::string S;
  for (size_t K = 0; K < Order.size() && K < 2; ++K) {
    auto &V = ByLoc[Order[K]];
    std::string Names;
    for (size_t J = 0; J < V.size() && J < 3; ++J)
      Names += (J ? ", " : "") + V[J];
    if (V.size() > 3)
      Names += ", +" + std::to_string(V.size() - 3);
    S += (K ? "; " : "") + Order[K] + " (" + Names + ")";
  }
  if (Order.size() > 2)
    S += "; +" + std::to_string(Order.size() - 2) + " more";
  return S.empty() ? "-" : S;
}

// ---- rendering table items as .bridge text -------------------------------------------------

const char *opName(Op K) {
  switch (K) {
#define BRIDGE_OP(Id, Name, MinIn, MaxIn, Params, Ranks, Style, Inverse)                                         \
  case Op::Id:                                                                                                   \
    return Name;
#include "bridge/Ops.def"
  }
  return "?";
}

const char *transformName(Transform T) {
  switch (T) {
  case Transform::None:
    return "?";
#define BRIDGE_TRANSFORM(Id, Name, Inputs, Doc)                                                                  \
  case Transform::Id:                                                                                            \
    return Name;
#include "bridge/Transforms.def"
  }
  return "?";
}

std::string renderPattern(Span<PatternPiece> Pieces) {
  std::string S;
  for (const PatternPiece &P : Pieces)
    S += P.Literal ? std::string(P.Literal) : "{" + text(P.Index) + "}";
  return S;
}

/// An op tree (postfix) as source text.
std::string renderSource(Span<OpNode> Nodes) {
  std::vector<std::string> Stack;
  for (const OpNode &N : Nodes) {
    if (N.IsSource) {
      Stack.push_back(renderPattern(N.Source) + (N.OptionalInput ? "?" : ""));
      continue;
    }
    std::vector<std::string> Args(N.NumInputs);
    for (size_t K = N.NumInputs; K-- > 0;) {
      Args[K] = Stack.empty() ? "?" : Stack.back();
      if (!Stack.empty())
        Stack.pop_back();
    }
    if (N.Kind == Op::Identity && Args.size() == 1 && N.Params.empty()) {
      Stack.push_back(Args[0]);
      continue;
    }
    for (const OpParam &P : N.Params)
      Args.push_back(std::string(P.Name) + " = " + text(P.Value));
    std::string Call = N.Kind == Op::Transform ? std::string("@") + transformName(N.Custom) : opName(N.Kind);
    Call += "(";
    for (size_t K = 0; K < Args.size(); ++K)
      Call += (K ? ", " : "") + Args[K];
    Stack.push_back(Call + ")");
  }
  return Stack.empty() ? "?" : Stack.back();
}

std::vector<std::string> renderLoops(Span<Loop> Loops) {
  std::vector<std::string> Out;
  for (const Loop &L : Loops) {
    std::string S = std::string("for ") + L.Var + " in ";
    if (L.Range >= 0 && static_cast<uint32_t>(L.Range) < schema().Ranges.Size)
      S += schema().Ranges[L.Range].Name;
    else
      S += text(L.Begin) + " .. " + text(L.End);
    if (present(L.Where))
      S += " where " + text(L.Where);
    Out.push_back(S + " {");
  }
  return Out;
}

std::string whenText(const Expr &E) { return present(E) ? " when " + text(E) : ""; }

/// One weights item: its loops and its statement.
struct Item {
  std::vector<std::string> Loops;
  std::string Body;
  std::string Comment; ///< a line before it
  bool Commented = false;
};

Item renderRule(const TensorRule &R) {
  Item I;
  I.Loops = renderLoops(R.Loops);
  std::string S = R.Optional ? "optional " : "";
  S += renderPattern(R.Target) + " <- ";
  for (size_t K = 0; K < R.Alternatives.Size; ++K)
    S += (K ? " | " : "") + renderSource(R.Alternatives[K]);
  I.Body = S + whenText(R.When) + ";";
  return I;
}

Item renderIgnore(const IgnoreRule &R) {
  return {renderLoops(R.Loops), "ignore " + renderPattern(R.Pattern) + whenText(R.When) + ";", "", false};
}

Item renderTie(const TieRule &R) {
  return {renderLoops(R.Loops), "tie " + renderPattern(R.Copy) + " = " + renderPattern(R.Of) + whenText(R.When) + ";",
          "", false};
}

std::string bridgeString(const std::string &S) {
  std::string Q = "\"";
  for (char C : S) {
    if (C == '"' || C == '\\')
      Q += '\\';
    Q += C == '\n' ? ' ' : C;
  }
  return Q + "\"";
}

std::string identifier(const std::string &S) {
  std::string Id;
  for (char C : S)
    Id += (std::isalnum(static_cast<unsigned char>(C)) || C == '_') ? C : '_';
  if (Id.empty() || std::isdigit(static_cast<unsigned char>(Id[0])))
    Id = "m_" + Id;
  return Id;
}

// ---- the closest mapping and the draft ------------------------------------------------------

struct Candidate {
  const RegistryEntry *E = nullptr;
  size_t Matched = 0;          ///< patterns one of its rules reads (config keys it reads, without tensors)
  size_t Problems = std::numeric_limits<size_t>::max(); ///< tensors left unread or missing under its plan
  size_t RulesUnmatched = 0;   ///< its tensor rules that read no pattern
};

bool ruleMatched(const void *Rule, const std::vector<Pattern> &Patterns) {
  for (const Pattern &P : Patterns)
    for (const Match &M : P.Matches)
      if (M.Rule == Rule)
        return true;
  return false;
}

Candidate closestMapping(const Json &HF, const TensorList &L, const std::vector<Pattern> &Patterns,
                         const std::vector<const RegistryEntry *> &Mappings) {
  std::vector<Candidate> Cs;
  for (const RegistryEntry *E : Mappings) {
    Candidate C;
    C.E = E;
    if (!Patterns.empty()) {
      for (const Pattern &P : Patterns)
        for (const Match &M : P.Matches)
          if (M.Mapping == E) {
            ++C.Matched;
            break;
          }
      for (const TensorRule &R : E->Table->Tensors)
        C.RulesUnmatched += !ruleMatched(&R, Patterns);
    } else {
      std::set<std::string> Paths, Sections;
      configReads(*E->Table, Paths, Sections);
      for (const std::string &P : Paths)
        C.Matched += hfPathPresent(HF, P, E->Table->Aliases);
    }
    Cs.push_back(C);
  }
  size_t Best = 0;
  for (const Candidate &C : Cs)
    Best = std::max(Best, C.Matched);
  // Among the best by patterns: the one whose plan leaves the fewest tensors
  // over (a config it refuses counts as the worst).
  for (Candidate &C : Cs)
    if (C.Matched == Best) {
      if (!L.Tensors.empty()) {
        C.Problems = coverageOf(*C.E->Table, HF, L).problems();
      } else {
        try {
          importConfig(*C.E->Table, schema(), HF);
          C.Problems = 0;
        } catch (const Error &) {
        }
      }
    }
  std::stable_sort(Cs.begin(), Cs.end(), [](const Candidate &A, const Candidate &B) {
    if (A.Matched != B.Matched)
      return A.Matched > B.Matched;
    if (A.Problems != B.Problems)
      return A.Problems < B.Problems;
    return A.RulesUnmatched < B.RulesUnmatched;
  });
  return Cs.empty() ? Candidate() : Cs.front();
}

bool sameLoc(const SourceLoc &A, const SourceLoc &B) {
  return A.Line == B.Line && A.Col == B.Col && std::string(A.File) == B.File;
}

struct DraftResult {
  std::string Text;
  size_t RulesCopied = 0, Todos = 0;
};

/// The draft .bridge file (see the file comment).
DraftResult writeDraft(const Json &HF, const std::string &Where, const Candidate &Closest,
                       const std::vector<Pattern> &Patterns, const std::vector<std::pair<std::string, Json>> &Unread,
                       const std::vector<std::pair<std::string, Json>> &NotByClosest) {
  DraftResult D;
  const MappingTable *T = Closest.E ? Closest.E->Table : nullptr;
  std::string ModelType = HF.contains("model_type") && HF["model_type"].is_string()
                              ? HF["model_type"].get<std::string>()
                              : std::string("unknown");
  std::vector<Json> Fields;
  bool HaveFields = false;
  std::string Refused; // why the closest mapping refuses this config
  if (T) {
    try {
      Fields = importConfig(*T, schema(), HF);
      HaveFields = true;
    } catch (const Error &E) {
      Refused = oneLine(E.what());
    }
  }
  EvalEnv Env;
  Env.HF = &HF;
  Env.Fields = HaveFields ? &Fields : nullptr;
  Env.Schema = &schema();
  if (T)
    Env.Aliases = T->Aliases;
  auto Holds = [&](const Expr &E, bool &Known) {
    Known = false;
    if (!HaveFields || !present(E))
      return true;
    try {
      bool V = evaluateCondition(E, Env, "draft");
      Known = true;
      return V;
    } catch (const Error &) {
      return true;
    }
  };

  // Weights first: which rules, and which boolean fields their checkpoint
  // needs set (a bias rule 'when add_qkv_bias' whose tensors are here).
  std::vector<Item> Items;
  std::set<std::string> Emitted, Targets;
  std::map<uint32_t, std::string> ForceTrue; // field -> the pattern that needs it
  auto Emit = [&](Item I, const std::string &Target) {
    std::string Key;
    for (auto &L : I.Loops)
      Key += L;
    if (!Emitted.insert(Key + I.Body).second)
      return;
    if (!Target.empty() && !Targets.insert(Key + Target).second) {
      I.Comment = "another rule above makes the same target; keep one";
      I.Commented = true;
    }
    if (!I.Commented)
      D.RulesCopied++;
    Items.push_back(std::move(I));
  };
  auto NoteFlag = [&](const TensorRule &R, const Pattern &P) {
    // 'when FIELD' of a bool field that does not hold for this config.
    if (R.When.Code.Size != 1 || R.When.Code[0].Op != ExprOp::LoadField)
      return;
    uint32_t F = static_cast<uint32_t>(R.When.Code[0].A);
    if (F >= schema().Fields.Size || schema().Fields[F].Kind != ValueKind::Bool)
      return;
    bool Known;
    if (!Holds(R.When, Known) && Known)
      ForceTrue.emplace(F, P.Text);
  };
  if (T) {
    // The closest mapping's rules: those that read a pattern, those that
    // do not apply to this config (kept for the family's other configs),
    // the rest as comments.
    for (const TensorRule &R : T->Tensors) {
      Item I = renderRule(R);
      std::string Target = renderPattern(R.Target);
      bool Known;
      if (ruleMatched(&R, Patterns) || Patterns.empty()) {
        for (const Pattern &P : Patterns)
          for (const Match &M : P.Matches)
            if (M.Rule == &R)
              NoteFlag(R, P);
      } else if (Holds(R.When, Known) || !Known) {
        I.Comment = "no tensor of this checkpoint matches this rule of " + std::string(T->Name);
        I.Commented = true;
      }
      Emit(I, Target);
    }
    for (const IgnoreRule &R : T->Ignores)
      Emit(renderIgnore(R), "");
    for (const TieRule &R : T->Ties)
      Emit(renderTie(R), "");
  }
  // Patterns the closest mapping does not read, but another mapping does.
  std::vector<const Pattern *> Todo;
  for (const Pattern &P : Patterns) {
    bool ByClosest = false;
    for (const Match &M : P.Matches)
      ByClosest = ByClosest || (Closest.E && M.Mapping == Closest.E);
    if (ByClosest)
      continue;
    if (P.Matches.empty()) {
      Todo.push_back(&P);
      continue;
    }
    const Match &M = P.Matches.front();
    std::string From = "from " + std::string(M.Mapping->Name) + " (" + locText(M.Loc) + ")";
    Item I;
    std::string Target;
    if (std::string(M.Kind) == "rule") {
      const auto &R = *static_cast<const TensorRule *>(M.Rule);
      I = renderRule(R);
      Target = renderPattern(R.Target);
      NoteFlag(R, P);
    } else if (std::string(M.Kind) == "ignore") {
      I = renderIgnore(*static_cast<const IgnoreRule *>(M.Rule));
    } else {
      I = renderTie(*static_cast<const TieRule *>(M.Rule));
    }
    I.Comment = From + (I.Commented ? "" : "; its config fields may be needed too");
    Emit(I, Target);
  }

  std::string &S = D.Text;
  S += "# Draft mapping for model_type " + bridgeString(ModelType) + ", written by bridge-run inspect from " + Where + ".\n";
  if (T)
    S += "# Config, export and rules copied from the closest shipped mapping, '" + std::string(T->Name) + "' (" +
         T->SourceFile + "),\n# and the rules of other shipped mappings that read a tensor of this checkpoint.\n";
  S += "# Lines 'TODO: ...' are what no shipped rule covers; check every line against the model's code.\n";
  if (!Refused.empty())
    S += "# NOTE: " + std::string(T->Name) + " refuses this config as it stands (its rules are still copied):\n#   " +
         Refused + "\n";
  S += "bridge " + identifier(ModelType) + " {\n";
  S += "  match model_type " + bridgeString(ModelType) + ";\n";
  if (HF.contains("architectures") && HF["architectures"].is_array())
    for (auto &A : HF["architectures"])
      if (A.is_string())
        S += "  match architecture " + bridgeString(A.get<std::string>()) + ";\n";
  if (T)
    for (const HFAlias &A : T->Aliases)
      S += std::string("  alias hf") + (A.Primary && *A.Primary ? std::string(".") + A.Primary : "") + " = hf." +
           A.Alternative + ";\n";
  S += "  config {\n";
  if (T) {
    for (const Requirement &R : T->Requires)
      S += "    require " + text(R.Cond) + ", " + bridgeString(R.Message ? R.Message : "") + ";\n";
    std::set<uint32_t> Done;
    for (const ConfigRule &R : T->Config) {
      const char *Name = schema().Fields[R.Field].Name;
      if (auto It = ForceTrue.find(R.Field); It != ForceTrue.end()) {
        if (Done.insert(R.Field).second)
          S += std::string("    # ") + T->Name + ": " + Name + " = " + text(R.Value) + whenText(R.When) +
               "; but the checkpoint has " + It->second + "\n    " + Name + " = true;\n";
        continue;
      }
      S += std::string("    ") + Name + " = " + text(R.Value) + whenText(R.When) + ";\n";
    }
    for (auto &[F, P] : ForceTrue)
      if (!Done.count(F))
        S += std::string("    # the checkpoint has ") + P + "\n    " + schema().Fields[F].Name + " = true;\n";
  } else {
    S += "    # TODO: no shipped mapping is close; map the fields Megatron-Core needs (docs/language.md section 4.3)\n";
    ++D.Todos;
  }
  for (auto &[K, V] : Unread) {
    std::string Val = V.dump();
    if (Val.size() > 60)
      Val = Val.substr(0, 57) + "...";
    S += "    # unread: hf." + K + " = " + Val + ": no shipped mapping reads it; check whether it changes the model\n";
  }
  for (auto &[K, V] : NotByClosest) {
    std::string Val = V.dump();
    if (Val.size() > 60)
      Val = Val.substr(0, 57) + "...";
    S += "    # not read by " + std::string(T->Name) + ": hf." + K + " = " + Val + " (another shipped mapping reads it)\n";
  }
  S += "  }\n";
  if (T) {
    std::string Export;
    for (const ExportRule &R : T->Export) {
      bool Reversed = false; // bridgec reverses plain renames again
      for (const ConfigRule &C : T->Config)
        Reversed = Reversed || sameLoc(C.Loc, R.Loc);
      if (!Reversed)
        Export += std::string("    hf.") + R.HFPath + " = " + text(R.Value) + whenText(R.When) + ";\n";
    }
    if (!Export.empty())
      S += "  export {\n" + Export + "  }\n";
  }
  S += "  weights {\n";
  std::vector<std::string> Open;
  auto Indent = [&] { return std::string(4 + 2 * Open.size(), ' '); };
  for (const Item &I : Items) {
    size_t Common = 0;
    while (Common < Open.size() && Common < I.Loops.size() && Open[Common] == I.Loops[Common])
      ++Common;
    while (Open.size() > Common) {
      Open.pop_back();
      S += Indent() + "}\n";
    }
    for (size_t K = Common; K < I.Loops.size(); ++K) {
      S += Indent() + I.Loops[K] + "\n";
      Open.push_back(I.Loops[K]);
    }
    if (!I.Comment.empty())
      S += Indent() + "# " + I.Comment + "\n";
    S += Indent() + (I.Commented ? "# " : "") + I.Body + "\n";
  }
  while (!Open.empty()) {
    Open.pop_back();
    S += Indent() + "}\n";
  }
  for (const Pattern *P : Todo) {
    S += "    # TODO: " + P->Text + " " + patternShape(*P) + " " + dtypeText(*P) + ": no shipped rule reads this\n";
    ++D.Todos;
  }
  S += "  }\n}\n";
  return D;
}

Json patternJson(const Pattern &P) {
  Json J;
  J["pattern"] = P.Text;
  J["count"] = P.Count;
  J["example"] = P.First;
  J["dtypes"] = Json::array();
  for (const std::string &D : P.DTypes)
    J["dtypes"].push_back(D);
  J["shape"] = P.ShapeKnown && P.Shapes.size() == 1 ? Json(P.Shapes.begin()->first) : Json();
  J["shapes"] = Json::array();
  if (P.ShapeKnown)
    for (auto &[Shape, Idx] : P.Shapes)
      J["shapes"].push_back({{"shape", Shape}, {"count", Idx.size()}, {"indices", Idx}});
  J["indices"] = Json::object();
  for (size_t K = 0; K < P.Values.size(); ++K)
    J["indices"][captureName(K)] = std::vector<int64_t>(P.Values[K].begin(), P.Values[K].end());
  J["matches"] = Json::array();
  for (const Match &M : P.Matches)
    J["matches"].push_back(
        {{"mapping", M.Mapping->Name}, {"kind", M.Kind}, {"file", M.Loc.File}, {"line", M.Loc.Line}});
  return J;
}

void printList(const char *Title, const std::vector<std::string> &Names) {
  if (Names.empty())
    return;
  std::printf("%s (%zu):\n", Title, Names.size());
  for (size_t K = 0; K < Names.size() && K < 50; ++K)
    std::printf("  %s\n", Names[K].c_str());
  if (Names.size() > 50)
    std::printf("  ... and %zu more\n", Names.size() - 50);
}

} // namespace

int runInspect(const InspectOptions &O) {
  Json HF = readConfigJson(O.HF);
  std::string Dir = files::isDirectory(O.HF) ? O.HF : O.HF.substr(0, O.HF.find_last_of('/') + 1);
  if (Dir.empty())
    Dir = ".";
  TensorList L = readTensors(Dir);
  std::vector<const RegistryEntry *> Mappings = visibleMappings(O);
  const MappingTable *Served = servingMapping(HF, O);

  std::string ModelType = HF.contains("model_type") ? HF["model_type"].dump() : "(none)";
  std::string Archs;
  if (HF.contains("architectures") && HF["architectures"].is_array())
    for (auto &A : HF["architectures"])
      if (A.is_string())
        Archs += (Archs.empty() ? "" : ", ") + A.get<std::string>();

  std::vector<Pattern> Patterns = groupTensors(L);
  findMatches(Patterns, Mappings);
  Json Out;
  Out["config"] = files::isDirectory(O.HF) ? files::join(O.HF, "config.json") : O.HF;
  Out["model_type"] = HF.contains("model_type") ? HF["model_type"] : Json();
  Out["architectures"] = HF.contains("architectures") ? HF["architectures"] : Json::array();
  Out["tensors_from"] = L.From.empty() ? Json() : Json(L.From);
  Out["tensor_count"] = L.Tensors.size();
  if (!L.Note.empty())
    Out["note"] = L.Note;

  if (Served) {
    Coverage C = coverageOf(*Served, HF, L);
    auto NotRead = unreadFields(HF, {Served});
    Out["mapping"] = Served->Name;
    Out["mapping_source"] = Served->SourceFile;
    Out["coverage"] = {{"checked", C.Checked},
                       {"complete", C.Checked && C.problems() == 0},
                       {"unread", C.Unread},
                       {"missing", C.Missing},
                       {"error", C.Error.empty() ? Json() : Json(C.Error)}};
    Out["fields_not_read_by_mapping"] = Json::object();
    for (auto &[K, V] : NotRead)
      Out["fields_not_read_by_mapping"][K] = V;
    Out["patterns"] = Json::array();
    for (const Pattern &P : Patterns)
      Out["patterns"].push_back(patternJson(P));
    if (O.AsJson) {
      std::cout << dumpPythonJson(Out, 2) << "\n";
      return 0;
    }
    std::printf("config.json: model_type %s, architectures %s\n", ModelType.c_str(), Archs.c_str());
    std::printf("mapping %s (%s) serves this config\n", Served->Name, Served->SourceFile);
    if (!C.Checked) {
      std::printf("no safetensors beside config.json: tensors not checked\n");
      return 0;
    }
    std::printf("%zu tensors (%s) in %zu patterns\n", L.Tensors.size(), L.From.c_str(), Patterns.size());
    if (!C.Error.empty()) {
      std::printf("the mapping cannot plan this checkpoint:\n%s\n", C.Error.c_str());
      return 1;
    }
    if (C.problems() == 0) {
      std::printf("every tensor is read by a rule of %s (or tied or ignored), and every tensor it reads is present\n",
                  Served->Name);
      return 0;
    }
    printList("tensors no rule reads or ignores", C.Unread);
    printList("tensors the mapping reads that are missing", C.Missing);
    return 1;
  }

  // A family no shipped mapping serves.
  auto Unread = unreadFields(HF, [&] {
    std::vector<const MappingTable *> V;
    for (const RegistryEntry *E : Mappings)
      V.push_back(E->Table);
    return V;
  }());
  Candidate Closest = closestMapping(HF, L, Patterns, Mappings);
  size_t Matched = 0;
  for (const Pattern &P : Patterns)
    Matched += !P.Matches.empty();
  Out["mapping"] = Json();
  Out["unread_fields"] = Json::object();
  for (auto &[K, V] : Unread)
    Out["unread_fields"][K] = V;
  Out["patterns"] = Json::array();
  for (const Pattern &P : Patterns)
    Out["patterns"].push_back(patternJson(P));
  Out["patterns_matched"] = Matched;
  if (Closest.E) {
    Out["closest"] = {{"mapping", Closest.E->Name},
                      {"source", Closest.E->Table->SourceFile},
                      {"patterns_matched", Closest.Matched},
                      {"tensors_left", Closest.Problems == std::numeric_limits<size_t>::max()
                                           ? Json()
                                           : Json(Closest.Problems)}};
  } else {
    Out["closest"] = Json();
  }
  std::vector<std::pair<std::string, Json>> NotByClosest;
  if (Closest.E) {
    std::set<std::string> Seen;
    for (auto &[K, V] : Unread)
      Seen.insert(K);
    for (auto &KV : unreadFields(HF, {Closest.E->Table}))
      if (!Seen.count(KV.first))
        NotByClosest.push_back(KV);
    Out["closest"]["fields_not_read"] = Json::object();
    for (auto &[K, V] : NotByClosest)
      Out["closest"]["fields_not_read"][K] = V;
  }
  DraftResult D;
  if (!O.Draft.empty()) {
    D = writeDraft(HF, O.HF, Closest, Patterns, Unread, NotByClosest);
    files::writeFile(O.Draft, D.Text);
    Out["draft"] = {{"path", O.Draft}, {"rules_copied", D.RulesCopied}, {"todo", D.Todos}};
  }
  if (O.AsJson) {
    std::cout << dumpPythonJson(Out, 2) << "\n";
    return 0;
  }
  std::printf("config.json: model_type %s, architectures %s\n", ModelType.c_str(), Archs.c_str());
  std::printf("no shipped mapping serves this config (supported: %s)\n", supportedModelTypes().c_str());
  std::printf("\nconfig fields no shipped mapping reads (%zu):\n", Unread.size());
  for (auto &[K, V] : Unread) {
    std::string Val = V.dump();
    if (Val.size() > 60)
      Val = Val.substr(0, 57) + "...";
    std::printf("  %-40s %s\n", K.c_str(), Val.c_str());
  }
  if (L.Tensors.empty()) {
    std::printf("\nno safetensors beside config.json: no tensor patterns\n");
  } else {
    std::printf("\n%zu tensors (%s) in %zu patterns, %zu read by a shipped rule:\n", L.Tensors.size(),
                L.From.c_str(), Patterns.size(), Matched);
    for (const Pattern &P : Patterns) {
      std::string Idx = indicesText(P);
      std::printf("  %s\n      %zu%s  %s  %s\n      read by: %s\n", P.Text.c_str(), P.Count,
                  Idx.empty() ? "" : (" (" + Idx + ")").c_str(), dtypeText(P).c_str(), patternShape(P).c_str(),
                  matchesText(P).c_str());
    }
  }
  if (Closest.E) {
    std::printf("\nclosest shipped mapping: %s (%s), %zu %s\n", Closest.E->Name, Closest.E->Table->SourceFile,
                Closest.Matched,
                Patterns.empty() ? "config field(s) read by its config section" : "pattern(s) read by its rules");
    if (!NotByClosest.empty()) {
      std::printf("config fields %s does not read (another shipped mapping does):\n", Closest.E->Name);
      for (auto &[K, V] : NotByClosest) {
        std::string Val = V.dump();
        std::printf("  %-40s %s\n", K.c_str(), Val.size() > 60 ? (Val.substr(0, 57) + "...").c_str() : Val.c_str());
      }
    }
  }
  if (!O.Draft.empty())
    std::printf("draft written to %s: %zu rule(s) copied, %zu TODO(s)\n", O.Draft.c_str(), D.RulesCopied, D.Todos);
  return 0;
}

} // namespace bridge
