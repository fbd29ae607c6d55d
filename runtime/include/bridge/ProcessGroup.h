//===- ProcessGroup.h - The processes of one conversion -------------------===//
//
// Several processes, started by torchrun or srun, convert one checkpoint
// together: each reads its share of the sources and writes its own files;
// what they must agree on (the output directory, each one's records, the end)
// goes through a c10d TCPStore, the rendezvous torchrun itself uses. Data
// never moves between processes: a tensor is read, converted and written by
// one of them.
//
// No wait can hang: every process beats a heartbeat into the store, and a
// process waiting for another gives up with an error when that one reported a
// failure, or stopped beating for the timeout, or the store went away.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_PROCESSGROUP_H
#define BRIDGE_PROCESSGROUP_H

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace bridge {

struct GroupEnvironment {
  int Rank = 0, Size = 1, LocalRank = 0;
  std::string MasterAddr;
  int MasterPort = 29500;
  bool AgentStore = false; ///< torchrun's agent hosts the store (clients only)
  std::string RunId;       ///< separates runs sharing an agent's store
  std::chrono::seconds Timeout{120}; ///< a silent peer is given up after this
};

/// RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (torchrun), else
/// SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and SLURM_LAUNCH_NODE_IPADDR
/// (srun); TORCHELASTIC_USE_AGENT_STORE, TORCHELASTIC_RUN_ID or
/// SLURM_JOB_ID/SLURM_STEP_ID; BRIDGE_DIST_TIMEOUT (seconds). A group of one
/// when neither names a world size above one. Throws Error on values that
/// contradict each other.
GroupEnvironment groupEnvironment();

class ProcessGroup {
public:
  /// A group of one: every collective returns at once.
  ProcessGroup();
  /// Joins the group the environment describes (rank 0 hosts the store unless
  /// torchrun's agent does); waits up to the timeout for every member.
  explicit ProcessGroup(const GroupEnvironment &Env);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup &) = delete;
  ProcessGroup &operator=(const ProcessGroup &) = delete;

  int rank() const { return Env.Rank; }
  int size() const { return Env.Size; }
  int localRank() const { return Env.LocalRank; }
  bool leader() const { return Env.Rank == 0; }

  /// Every member's \p Value for the step \p Name, in rank order.
  std::vector<std::string> allGather(const std::string &Name, const std::string &Value);
  /// Rank 0's \p Value for the step \p Name (the others' is ignored).
  std::string broadcast(const std::string &Name, const std::string &Value);
  /// Returns when every member has reached the step \p Name.
  void barrier(const std::string &Name);
  /// Throws Error if another member has failed or gone silent; cheap to call
  /// often (the store is asked at most every 200 ms).
  void check();
  /// Tells the others this member failed (the first report wins); they throw
  /// at their next wait or check.
  void fail(const std::string &Message) noexcept;
  /// Rank 0, after the others' last wait: holds the store up until every
  /// member has said goodbye (or gone silent), so none loses it mid-read.
  void farewell() noexcept;

private:
  struct Impl;
  GroupEnvironment Env;
  std::unique_ptr<Impl> State;
  void waitFor(const std::vector<std::string> &Keys, const std::string &Step);
  /// Throws if another member reported a failure (when \p Failures) or went
  /// silent, or the store is gone.
  void poll(bool Failures);
  /// Whether member \p R's heartbeat has not moved for the timeout.
  bool silent(int R, std::chrono::steady_clock::time_point Now);
};

} // namespace bridge

#endif
