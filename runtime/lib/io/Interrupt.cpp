//===- Interrupt.cpp - SIGINT and SIGTERM stop a conversion cleanly ------===//
#include "bridge/Interrupt.h"

#include "bridge/Error.h"

#include <atomic>
#include <csignal>
#include <cstring>
#include <string>

namespace bridge {
namespace {

std::atomic<int> Caught{0}; // lock-free: safe in a handler, read by every thread

extern "C" void onInterrupt(int Signal) {
  Caught = Signal;
  // The next one is not caught: a second Ctrl-C ends the process at once.
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
}

} // namespace

void catchInterrupts() {
  struct sigaction A;
  std::memset(&A, 0, sizeof A);
  A.sa_handler = onInterrupt;
  sigemptyset(&A.sa_mask);
  ::sigaction(SIGINT, &A, nullptr);
  ::sigaction(SIGTERM, &A, nullptr);
}

int interruptSignal() { return Caught; }

void checkInterrupt() {
  if (int S = Caught.load())
    throw Error(std::string("error: interrupted by ") + (S == SIGINT ? "SIGINT" : S == SIGTERM ? "SIGTERM" : "a signal") +
                "; nothing was written");
}

} // namespace bridge
