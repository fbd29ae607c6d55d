//===- Layout.cpp - parallel layouts: validation, rank slices, stages ------===//
#include "bridge/Layout.h"

#include <cstdlib>

namespace bridge {

const Json &fieldValue(const SchemaTable &S, const std::vector<Json> &Fields, const char *Name) {
  static const Json Null;
  for (uint32_t I = 0; I < S.Fields.Size; ++I)
    if (std::string(S.Fields[I].Name) == Name)
      return Fields[I];
  return Null;
}

std::function<int64_t(const char *)> fieldGetter(const SchemaTable &S, const std::vector<Json> &Fields) {
  return [&S, &Fields](const char *Name) -> int64_t {
    for (uint32_t I = 0; I < S.Fields.Size; ++I)
      if (std::string(S.Fields[I].Name) == Name)
        return Fields[I].is_number_integer() ? Fields[I].get<int64_t>() : -1;
    return -1;
  };
}


std::vector<ChunkSpec> chunksOf(const PlannedTensor &PT, const Layout &L) {
  const std::vector<int64_t> &Shape = PT.Shape;
  int64_t T = PT.Expert ? L.ETP : L.TP;
  ChunkSpec Whole{std::vector<int64_t>(Shape.size(), 0), Shape};
  if (T <= 1 || Shape.empty())
    return {Whole};
  auto Split = [&](size_t Dim, int64_t Start, int64_t Length, std::vector<ChunkSpec> &Out) {
    int64_t Part = Length / T;
    for (int64_t R = 0; R < T; ++R) {
      ChunkSpec C = Whole;
      C.Offsets[Dim] = Start + R * Part;
      C.Sizes[Dim] = Part;
      Out.push_back(C);
    }
  };
  std::vector<ChunkSpec> Out;
  switch (PT.ParallelStyle) {
  case Style::Column:
  case Style::Vocab:
  case Style::QKV:
    if (Shape[0] % T != 0)
      return {Whole}; // an unpadded vocabulary: one chunk, the loader pads
    Split(0, 0, Shape[0], Out);
    return Out;
  case Style::Row:
    if (Shape.size() < 2 || Shape[1] % T != 0)
      return {Whole};
    Split(1, 0, Shape[1], Out);
    return Out;
  case Style::Gated: {
    // Rank p holds gate rows [p F/T, (p+1) F/T) and the same rows of up.
    int64_t F = Shape[0] / 2;
    if (F % T != 0)
      return {Whole};
    Split(0, 0, F, Out);
    Split(0, F, F, Out);
    return Out;
  }
  case Style::Replicated:
  case Style::Any:
    return {Whole};
  }
  return {Whole};
}

std::vector<std::string> checkLayout(const Layout &L, const std::function<int64_t(const char *)> &F) {
  std::vector<std::string> P;
  auto Positive = [&](int V, const char *N) {
    if (V < 1)
      P.push_back(std::string(N) + " must be at least 1, not " + std::to_string(V));
  };
  Positive(L.TP, "TP");
  Positive(L.PP, "PP");
  Positive(L.EP, "EP");
  Positive(L.ETP, "ETP");
  Positive(L.VPP, "VPP");
  if (!P.empty())
    return P;
  auto Divides = [&](const char *Field, int64_t By, const char *What) {
    int64_t V = F(Field);
    if (V >= 0 && V % By != 0)
      P.push_back(std::string(Field) + " " + std::to_string(V) + " is not divisible by " + What + " " +
                  std::to_string(By));
  };
  Divides("num_attention_heads", L.TP, "TP");
  Divides("num_query_groups", L.TP, "TP");
  Divides("ffn_hidden_size", L.TP, "TP");
  int64_t Layers = F("num_layers");
  if (L.FirstStageLayers || L.LastStageLayers) {
    int64_t Middle = Layers - L.FirstStageLayers - L.LastStageLayers;
    int64_t Stages = L.PP - (L.FirstStageLayers ? 1 : 0) - (L.LastStageLayers ? 1 : 0);
    if (Middle < 0 || (Stages > 0 && Middle % (Stages * L.VPP) != 0) || (Stages == 0 && Middle != 0))
      P.push_back("num_layers " + std::to_string(Layers) + " does not split into PP " + std::to_string(L.PP) +
                  " stages with " + std::to_string(L.FirstStageLayers) + " first and " +
                  std::to_string(L.LastStageLayers) + " last");
  } else if (Layers >= 0 && Layers % (L.PP * L.VPP) != 0) {
    std::string Msg = "num_layers " + std::to_string(Layers) + " is not divisible by PP x VPP = " +
                      std::to_string(L.PP * L.VPP);
    // Suggest explicit first/last stage sizes that split the rest evenly,
    // as close to an even split as possible.
    if (L.PP == 2 && L.VPP == 1) {
      Msg += "; e.g. --first-stage-layers " + std::to_string(Layers / 2) + " --last-stage-layers " +
             std::to_string(Layers - Layers / 2);
    } else if (L.PP > 2) {
      int64_t Per = Layers / L.PP, Best = -1, BestF = 0, BestL = 0;
      for (int64_t F = 1; F <= Layers; ++F)
        for (int64_t La = 1; F + La < Layers; ++La) {
          int64_t Mid = Layers - F - La;
          if (Mid % ((L.PP - 2) * L.VPP) != 0)
            continue;
          int64_t Cost = std::abs(F - Per) + std::abs(La - Per) + std::abs(Mid / (L.PP - 2) - Per);
          if (Best < 0 || Cost < Best) {
            Best = Cost;
            BestF = F;
            BestL = La;
          }
        }
      if (Best >= 0)
        Msg += "; e.g. --first-stage-layers " + std::to_string(BestF) + " --last-stage-layers " + std::to_string(BestL);
    }
    P.push_back(Msg);
  }
  if (F("num_moe_experts") >= 0) {
    Divides("num_moe_experts", L.EP, "EP");
    Divides("moe_ffn_hidden_size", L.ETP, "ETP");
  } else if (L.EP > 1) {
    P.push_back("EP " + std::to_string(L.EP) + " needs a model with experts");
  }
  return P;
}

int pipelineStage(const Layout &L, int64_t NumLayers, int64_t Layer) {
  if (L.PP <= 1)
    return 0;
  if (L.FirstStageLayers || L.LastStageLayers) {
    if (Layer < L.FirstStageLayers)
      return 0;
    if (L.LastStageLayers && Layer >= NumLayers - L.LastStageLayers)
      return L.PP - 1;
    int Middle = L.PP - (L.FirstStageLayers ? 1 : 0) - (L.LastStageLayers ? 1 : 0);
    int64_t Rest = NumLayers - L.FirstStageLayers - L.LastStageLayers;
    int64_t Per = Middle > 0 ? Rest / Middle : 1;
    return static_cast<int>((L.FirstStageLayers ? 1 : 0) + (Layer - L.FirstStageLayers) / Per);
  }
  // Megatron-Core: with V virtual stages, layer blocks of N/PP/V go round
  // robin over the PP ranks.
  int64_t Block = NumLayers / L.PP / L.VPP;
  return static_cast<int>((Layer / Block) % L.PP);
}

Placement placementOf(const PlannedTensor &PT, const Layout &L, const SchemaTable &S,
                      const std::vector<Json> &Fields) {
  auto Field = fieldGetter(S, Fields);
  const int64_t NumLayers = Field("num_layers"), NumExperts = Field("num_moe_experts");
  const std::string LayerVar = rangeVar(S, "layers"), ExpertVar = rangeVar(S, "experts");
  Placement P;
  bool InLayer = false;
  for (size_t C = 0; C < PT.Param->Captures.Size; ++C) {
    const std::string Var = PT.Param->Captures[C];
    const int64_t Index = PT.Captures[C];
    if (Var == LayerVar) {
      InLayer = true;
      P.Stage = pipelineStage(L, NumLayers, Index);
      // The first layer of that stage: the stage of each layer is monotone
      // in the layer index within one virtual chunk.
      int64_t First = Index;
      while (First > 0 && pipelineStage(L, NumLayers, First - 1) == P.Stage)
        --First;
      P.LayerInStage = Index - First;
    } else if (Var == ExpertVar && NumExperts > 0 && L.EP > 0) {
      int64_t PerRank = NumExperts / L.EP;
      P.ExpertRank = static_cast<int>(Index / PerRank);
      P.ExpertInRank = Index % PerRank;
    }
  }
  if (!InLayer) {
    const std::string &N = PT.LocalName;
    bool Last = N.find("decoder.final_") != std::string::npos || N.find("output_layer") != std::string::npos ||
                N.rfind("mtp.", 0) == 0;
    P.Stage = Last ? L.PP - 1 : 0;
  }
  return P;
}

} // namespace bridge
