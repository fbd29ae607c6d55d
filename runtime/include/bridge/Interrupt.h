//===- Interrupt.h - SIGINT and SIGTERM stop a conversion cleanly --------===//
//
// A conversion interrupted by Ctrl-C or a scheduler's SIGTERM stops at its
// next tensor, removes its partial output and exits 128 + the signal, like
// any failure; a second signal ends the process at once (the partial
// directory then stays, never complete-looking: docs/reliability.md).
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_INTERRUPT_H
#define BRIDGE_INTERRUPT_H

namespace bridge {

/// Installs the handlers (once; a second signal takes the default action).
void catchInterrupts();
/// The signal caught, or 0.
int interruptSignal();
/// Throws bridge::Error naming the signal if one was caught.
void checkInterrupt();

} // namespace bridge

#endif
