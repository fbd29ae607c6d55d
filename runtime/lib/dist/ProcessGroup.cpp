//===- ProcessGroup.cpp - The processes of one conversion -----------------===//
#include "bridge/ProcessGroup.h"

#include "bridge/Error.h"
#include "bridge/Interrupt.h"

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <algorithm>
#include <atomic>
#include <vector>
#include <cstdlib>
#include <map>
#include <thread>

namespace bridge {
namespace {

using Clock = std::chrono::steady_clock;

std::vector<uint8_t> bytes(const std::string &S) { return {S.begin(), S.end()}; }
std::string text(const std::vector<uint8_t> &B) { return {B.begin(), B.end()}; }

} // namespace


struct ProcessGroup::Impl {
  c10::intrusive_ptr<c10d::Store> Store, BeatStore;
  std::string Prefix;
  std::thread Beat;
  std::atomic<bool> Stop{false};
  // The last heartbeat count seen of each other member, and when it changed.
  std::map<int, std::pair<int64_t, Clock::time_point>> Seen;
  Clock::time_point LastCheck{};
  // Also when the constructor throws (a member that never joined): the
  // heartbeat thread must not outlive its state.
  ~Impl() {
    Stop = true;
    if (Beat.joinable())
      Beat.join();
  }
};

ProcessGroup::ProcessGroup() = default;

ProcessGroup::ProcessGroup(const GroupEnvironment &E) : Env(E) {
  if (Env.Size == 1)
    return;
  State = std::make_unique<Impl>();
  State->Prefix = "bridge-run/" + Env.RunId + "/";
  c10d::TCPStoreOptions Opts;
  Opts.port = static_cast<uint16_t>(Env.MasterPort);
  Opts.isServer = !Env.AgentStore && Env.Rank == 0;
  Opts.waitWorkers = false;
  Opts.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(Env.Timeout);
  std::string Where = Env.MasterAddr + ":" + std::to_string(Env.MasterPort);
  try {
    State->Store = c10::make_intrusive<c10d::TCPStore>(Env.MasterAddr, Opts);
    State->BeatStore = State->Store->clone();
    State->Store->add(State->Prefix + "joined", 1);
  } catch (const std::exception &X) {
    throw Error("error: process " + std::to_string(Env.Rank) + " of " + std::to_string(Env.Size) +
                " cannot reach the store at " + Where + ": " + X.what());
  }
  State->Beat = std::thread([S = State.get(), Key = State->Prefix + "beat/" + std::to_string(Env.Rank)] {
    while (!S->Stop) {
      try {
        S->BeatStore->add(Key, 1);
      } catch (...) {
        return; // the store is gone; the main thread finds out on its own
      }
      for (int I = 0; I < 10 && !S->Stop; ++I)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  // Every member present before any work, within the timeout.
  auto Deadline = Clock::now() + Env.Timeout;
  for (;;) {
    int64_t Joined = 0;
    try {
      Joined = State->Store->add(State->Prefix + "joined", 0);
    } catch (const std::exception &X) {
      throw Error("error: lost the store at " + Where + " while waiting for the others: " + X.what());
    }
    if (Joined >= Env.Size)
      break;
    if (Clock::now() > Deadline)
      throw Error("error: only " + std::to_string(Joined) + " of " + std::to_string(Env.Size) +
                  " processes joined at " + Where + " within " + std::to_string(Env.Timeout.count()) + " s");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

ProcessGroup::~ProcessGroup() {
  if (!State)
    return;
  if (Env.Rank == 0)
    farewell();
  else
    try {
      State->Store->set(State->Prefix + "bye/" + std::to_string(Env.Rank), bytes("1"));
    } catch (...) {
    }
  State->Stop = true;
  if (State->Beat.joinable())
    State->Beat.join();
}

void ProcessGroup::check() {
  if (!State)
    return;
  auto Now = Clock::now();
  if (Now - State->LastCheck < std::chrono::milliseconds(200))
    return;
  State->LastCheck = Now;
  poll(/*Failures=*/true);
}

bool ProcessGroup::silent(int R, Clock::time_point Now) {
  int64_t Beats = State->Store->add(State->Prefix + "beat/" + std::to_string(R), 0);
  auto &[Last, Since] = State->Seen.try_emplace(R, -1, Now).first->second;
  if (Beats != Last) {
    Last = Beats;
    Since = Now;
    return false;
  }
  return Now - Since > Env.Timeout;
}

void ProcessGroup::poll(bool Failures) {
  auto Now = Clock::now();
  try {
    std::string Failed = State->Prefix + "failed";
    if (Failures && State->Store->check({Failed}))
      throw Error("error: stopping, because " + text(State->Store->get(Failed)));
    for (int R = 0; R < Env.Size; ++R)
      if (R != Env.Rank && silent(R, Now))
        throw Error("error: stopping, because process " + std::to_string(R) + " of " + std::to_string(Env.Size) +
                    " went silent (no heartbeat for " + std::to_string(Env.Timeout.count()) + " s)");
  } catch (const Error &) {
    throw;
  } catch (const std::exception &X) {
    throw Error("error: stopping, because the store at " + Env.MasterAddr + ":" + std::to_string(Env.MasterPort) +
                " went away (process 0 ended?): " + X.what());
  }
}

void ProcessGroup::waitFor(const std::vector<std::string> &Keys, const std::string &Step) {
  for (;;) {
    try {
      if (State->Store->check(Keys))
        return;
    } catch (const std::exception &X) {
      throw Error("error: lost the store at " + Env.MasterAddr + ":" + std::to_string(Env.MasterPort) + " during '" +
                  Step + "': " + X.what());
    }
    check();
    checkInterrupt(); // Ctrl-C while waiting for the others
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

std::vector<std::string> ProcessGroup::allGather(const std::string &Name, const std::string &Value) {
  if (!State)
    return {Value};
  std::string Base = State->Prefix + Name + "/";
  std::vector<std::string> Keys;
  for (int R = 0; R < Env.Size; ++R)
    Keys.push_back(Base + std::to_string(R));
  try {
    State->Store->set(Keys[Env.Rank], bytes(Value));
  } catch (const std::exception &X) {
    throw Error(std::string("error: lost the store during '") + Name + "': " + X.what());
  }
  waitFor(Keys, Name);
  std::vector<std::string> All;
  for (const std::string &K : Keys)
    All.push_back(text(State->Store->get(K)));
  return All;
}

std::string ProcessGroup::broadcast(const std::string &Name, const std::string &Value) {
  if (!State)
    return Value;
  std::string Key = State->Prefix + Name;
  if (Env.Rank == 0) {
    State->Store->set(Key, bytes(Value));
    return Value;
  }
  waitFor({Key}, Name);
  return text(State->Store->get(Key));
}

void ProcessGroup::barrier(const std::string &Name) { allGather(Name, ""); }

void ProcessGroup::fail(const std::string &Message) noexcept {
  if (!State)
    return;
  try {
    State->Store->compareSet(State->Prefix + "failed", {},
                             bytes("process " + std::to_string(Env.Rank) + " of " + std::to_string(Env.Size) +
                                   " failed: " + Message));
  } catch (...) {
  }
}

void ProcessGroup::farewell() noexcept {
  if (!State || Env.Rank != 0 || Env.AgentStore)
    return; // torchrun's agent keeps its store up itself
  // Every other member either says goodbye or has gone silent; one that
  // died is not waited for, one still reading a report is.
  auto Deadline = Clock::now() + 2 * Env.Timeout;
  std::vector<bool> Done(static_cast<size_t>(Env.Size), false);
  Done[0] = true;
  try {
    while (Clock::now() < Deadline) {
      bool All = true;
      auto Now = Clock::now();
      for (int R = 1; R < Env.Size; ++R) {
        if (Done[static_cast<size_t>(R)])
          continue;
        if (State->Store->check({State->Prefix + "bye/" + std::to_string(R)}) || silent(R, Now))
          Done[static_cast<size_t>(R)] = true;
        else
          All = false;
      }
      if (All)
        return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  } catch (...) {
  }
}

} // namespace bridge
