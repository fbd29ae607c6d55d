//===- Legacy.h - Megatron-LM's legacy per-rank format: names and cuts --*- C++ -*-===//
//
// Where the legacy `torch` format keeps a planned (global) tensor under a
// layout, and how it cuts it: the rank files that hold it, its local name
// (layer index local to its pipeline stage, expert index local to its EP
// rank), each TP rank's local tensor (docs/formats.md). cut() and join() are
// each other's inverse. LegacyCheckpoint reads such a checkpoint's files.
// Private to runtime/lib/exec.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_LIB_EXEC_LEGACY_H
#define BRIDGE_LIB_EXEC_LEGACY_H

#include "bridge/Config.h"
#include "bridge/Layout.h"
#include "bridge/Plan.h"
#include "bridge/Unpickle.h"

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

namespace bridge {

class LegacyLayout {
public:
  LegacyLayout(const SchemaTable &S, const std::vector<Json> &Fields, const Layout &L, bool LocalSpec);

  struct Place {
    std::string Name; ///< the local name in its rank files (a part's: its parameter's)
    int Stage;
    int ExpertRank; ///< -1: a dense tensor, in every EP rank's file
    /// A torch_dist part of one module parameter (Mamba's in_proj.weight.z,
    /// Gated DeltaNet's in_proj.weight.query): in a rank file the parameter
    /// is whole, each rank's slice of every part end to end in rows, in the
    /// order the schema declares the parts (as the module allocates it).
    int PartIndex = -1, PartCount = 0;
    int64_t PartRowOffset = 0; ///< rows of the parts before it, per rank
  };
  Place place(const PlannedTensor &PT) const;
  /// Learns which planned tensors are parts of one parameter (call once
  /// with the plan before place() is asked about parts).
  void learnParts(const Plan &P);
  /// Each TP rank's local tensor of the global \p X (views where no copy is
  /// needed).
  std::vector<at::Tensor> cut(const PlannedTensor &PT, at::Tensor X) const;
  /// TP rank \p Rank's local tensor of the global \p X (cut's element \p
  /// Rank, made alone: a view where no copy is needed).
  at::Tensor cutFor(const PlannedTensor &PT, at::Tensor X, int Rank) const;
  /// Whether TP ranks hold different parts of \p PT (cut splits it).
  bool splits(const PlannedTensor &PT) const;
  /// The global tensor from each TP rank's local one: cut's inverse (the
  /// vocabulary's padding rows dropped, replicas checked equal).
  at::Tensor join(const PlannedTensor &PT, const std::vector<at::Tensor> &ByRank, const std::string &Where) const;
  /// The vocabulary the model allocates: the next multiple of
  /// make_vocab_size_divisible_by x TP.
  int64_t paddedVocab() const { return PaddedVocab; }
  /// A live model allocated its own padded vocabulary (\p Rows in all).
  void setPaddedVocab(int64_t Rows) { PaddedVocab = Rows; }
  /// With tied embeddings and PP > 1 the last stage holds a copy of the
  /// embedding as output_layer.weight.
  bool tiedCopy() const { return Tied && L.PP > 1; }
  /// The module `_extra_state` a Transformer Engine spec adds for \p Name's
  /// module, or "" (local spec; embedding; output layer).
  std::string extraState(const std::string &Name) const;
  /// The 'args' Namespace of its files.
  Json args(const SchemaTable &S, const std::vector<Json> &Fields) const;
  const Layout &layout() const { return L; }

private:
  Layout L;
  bool LocalSpec, Tied;
  const SchemaTable &S;
  const std::vector<Json> &Fields; ///< outlive the layout (the import's config)
  int64_t PaddedVocab;
  struct PartOf {
    std::string Parameter;
    int Index, Count;
    int64_t RowOffset;
  };
  std::map<const PlannedTensor *, PartOf> Parts;
};

/// The module parameter a torch_dist part is a part of ('….in_proj.weight'
/// for '….in_proj.weight.z': a name whose next-to-last component is
/// 'weight' or 'bias'), or "" for a whole parameter.
std::string partParameter(const std::string &Name);

/// The files of a legacy checkpoint's iteration directory, mapped and read
/// with the restricted unpickler (tensors borrowed from the mapping).
class LegacyCheckpoint {
public:
  LegacyCheckpoint(const std::string &IterDir, const Layout &L);
  ~LegacyCheckpoint();
  /// Rank (T, P, E)'s tensor \p Name, or null.
  const TensorRecord *find(int T, int P, int E, const std::string &Name) const;
  /// Every (rank, name) that holds a tensor, for coverage; None entries
  /// (extra state) are listed apart.
  std::vector<std::tuple<int, int, int, std::string>> tensors() const;
  std::string fileOf(int T, int P, int E) const;

private:
  struct RankFile;
  std::map<std::tuple<int, int, int>, std::unique_ptr<RankFile>> Files;
  Layout L;
  std::string Dir;
};

/// The sidecar import would have written for a legacy checkpoint that has
/// none (one Megatron-LM saved): the mapping and config from the HF
/// config.json in \p HFDir, the layout from the 'args' of its rank files,
/// the layer spec from their tensor names. Throws naming what is missing.
Json legacySidecar(const std::string &IterDir, const Json &HFConfig, const std::string &Mapping,
                   const Json &MegatronConfig);

} // namespace bridge

#endif
