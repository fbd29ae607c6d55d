//===- GroupEnvironment.cpp - Which process of which job this is ----------===//
//
// Read from torchrun's or srun's variables; no libtorch, so that bridge-run
// knows its rank (for its messages) before it loads the converter module.
//
//===----------------------------------------------------------------------===//
#include "bridge/Error.h"
#include "bridge/ProcessGroup.h"

#include <cstdlib>
#include <string>

namespace bridge {
namespace {

const char *env(const char *Name) {
  const char *V = std::getenv(Name);
  return V && *V ? V : nullptr;
}

int intEnv(const char *Name, int Default) {
  const char *V = env(Name);
  if (!V)
    return Default;
  char *End = nullptr;
  long N = std::strtol(V, &End, 10);
  if (*End || N < 0 || N > (1 << 24))
    throw Error(std::string("error: ") + Name + "='" + V + "' is not a non-negative number");
  return static_cast<int>(N);
}

} // namespace

GroupEnvironment groupEnvironment() {
  GroupEnvironment E;
  // torchrun's variables first; srun's only inside a job step (a batch
  // script's own environment names the whole job's task count).
  bool Torchrun = env("WORLD_SIZE") != nullptr;
  bool Srun = !Torchrun && env("SLURM_STEP_NUM_TASKS") && env("SLURM_PROCID");
  if (!Torchrun && !Srun)
    return E;
  E.Size = intEnv(Torchrun ? "WORLD_SIZE" : "SLURM_STEP_NUM_TASKS", 1);
  E.Rank = intEnv(Torchrun ? "RANK" : "SLURM_PROCID", 0);
  E.LocalRank = intEnv(Torchrun ? "LOCAL_RANK" : "SLURM_LOCALID", 0);
  if (E.Size < 1 || E.Rank >= E.Size)
    throw Error("error: rank " + std::to_string(E.Rank) + " does not lie in a world of " + std::to_string(E.Size) +
                " process(es) (" + (Torchrun ? "RANK, WORLD_SIZE" : "SLURM_PROCID, SLURM_STEP_NUM_TASKS") + ")");
  if (E.Size == 1)
    return E;
  if (const char *A = env("MASTER_ADDR"))
    E.MasterAddr = A;
  else if (const char *L = Srun ? env("SLURM_LAUNCH_NODE_IPADDR") : nullptr)
    E.MasterAddr = L;
  else
    throw Error("error: " + std::to_string(E.Size) +
                " processes but no MASTER_ADDR: set it to the address of the host of rank 0");
  E.MasterPort = intEnv("MASTER_PORT", 29500);
  if (E.MasterPort < 1 || E.MasterPort > 65535)
    throw Error("error: MASTER_PORT=" + std::to_string(E.MasterPort) + " is not a port");
  E.AgentStore = Torchrun && env("TORCHELASTIC_USE_AGENT_STORE") &&
                 std::string(env("TORCHELASTIC_USE_AGENT_STORE")) == "True";
  if (const char *R = env("TORCHELASTIC_RUN_ID"))
    E.RunId = std::string(R) + "." + std::to_string(intEnv("TORCHELASTIC_RESTART_COUNT", 0));
  else if (const char *J = env("SLURM_JOB_ID"))
    E.RunId = std::string(J) + "." + (env("SLURM_STEP_ID") ? env("SLURM_STEP_ID") : "0");
  else
    E.RunId = "0";
  E.Timeout = std::chrono::seconds(std::max(1, intEnv("BRIDGE_DIST_TIMEOUT", 120)));
  return E;
}

} // namespace bridge
