//===- Layout.h - parallel layouts: validation, rank slices, stages -*- C++ -*-===//
//
// How a parallel layout cuts a planned tensor: each TP (or, for experts,
// ETP) rank's slice per parallel style, and which pipeline stage holds a
// layer. Used by plan (per-rank bytes) and by import (chunk alignment).
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_LAYOUT_H
#define BRIDGE_LAYOUT_H

#include "bridge/Config.h"
#include "bridge/Convert.h"
#include "bridge/Plan.h"

namespace bridge {

/// One rank's slice of a tensor (no stacked axis).
struct ChunkSpec {
  std::vector<int64_t> Offsets, Sizes;
};

/// The slices of \p PT under \p L: one per TP (ETP) rank in rank order, or
/// for the gated fc1 the gate slices then the up slices (rank p holds chunks
/// p and T + p); a single whole chunk when not split.
std::vector<ChunkSpec> chunksOf(const PlannedTensor &PT, const Layout &L);

/// Reads integer config fields by name (-1 when null or not an int).
std::function<int64_t(const char *)> fieldGetter(const SchemaTable &S, const std::vector<Json> &Fields);
/// A config field's value by name (null when the schema lacks it).
const Json &fieldValue(const SchemaTable &S, const std::vector<Json> &Fields, const char *Name);

/// The pipeline stage that holds decoder layer \p Layer.
int pipelineStage(const Layout &L, int64_t NumLayers, int64_t Layer);

/// Where a planned tensor lives under a layout: the one rule every format
/// (torch_dist's plan, the legacy rank files) and `plan`'s per-rank bytes
/// use.
struct Placement {
  int Stage = 0;       ///< pipeline stage
  int ExpertRank = -1; ///< expert-parallel rank; -1: not an expert
  int64_t LayerInStage = -1;  ///< the layer's index within its stage; -1: not a layer
  int64_t ExpertInRank = -1;  ///< the expert's index within its rank; -1: not an expert
};
/// A decoder layer's tensor is on its layer's stage; outside the layers,
/// the final norm, the output layer and MTP are on the last stage, the
/// embedding and what feeds it (a VLM's vision tower and projector) on the
/// first. Experts are spread evenly over the EP ranks.
Placement placementOf(const PlannedTensor &PT, const Layout &L, const SchemaTable &S,
                      const std::vector<Json> &Fields);

} // namespace bridge

#endif
