//===- LegacyWriter.h - Megatron-LM's per-rank torch checkpoint ----------===//
//
// The legacy `torch` format (../shared/reference/megatron-checkpoint-format.md
// §5): one `mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt` per model-parallel
// rank, each a torch.save of {'args': Namespace, 'checkpoint_version': 3.0,
// 'iteration': 0, 'model': {local name: rank-local tensor}}. Every tensor's
// bytes go to its rank's file when added; the pickle naming them is written
// last (torch.load finds records by name).
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_LEGACYWRITER_H
#define BRIDGE_LEGACYWRITER_H

#include "bridge/Config.h"
#include "bridge/DType.h"

#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

namespace bridge {

class LegacyWriter {
public:
  LegacyWriter(std::string IterDir, int TP, int PP, int EP);
  ~LegacyWriter();
  LegacyWriter(const LegacyWriter &) = delete;
  LegacyWriter &operator=(const LegacyWriter &) = delete;

  /// The directory of rank (T, P, E) under a TP×PP×EP layout:
  /// mp_rank_TT, with _PPP when PP > 1 and _EEE when EP > 1.
  static std::string rankDir(int PP, int EP, int T, int P, int E);
  /// A tensor of rank (T, P, E)'s model dict, in the order added.
  void addTensor(int T, int P, int E, const std::string &Name, DType Type, const std::vector<int64_t> &Shape,
                 const void *Data, size_t Bytes);
  /// A model-dict entry holding None (a Transformer Engine `_extra_state`).
  void addNone(int T, int P, int E, const std::string &Name);
  /// Every file's pickle, with \p Args as its 'args' Namespace (scalars,
  /// strings, null and lists of them), then the files closed.
  void finish(const Json &Args);
  uint64_t bytesWritten() const { return Written; }
  size_t numFiles() const { return Files.size(); }
  /// After finish(): for each rank file (relative to the iteration
  /// directory), each tensor's storage entry and the CRC-32 of its bytes,
  /// taken as written: manifest.json, which `bridge-run verify` checks.
  Json manifest() const;

private:
  struct RankFile;
  RankFile &file(int T, int P, int E);
  std::string Dir;
  int TP, PP, EP;
  std::map<std::tuple<int, int, int>, std::unique_ptr<RankFile>> Files;
  uint64_t Written = 0;
};

} // namespace bridge

#endif
