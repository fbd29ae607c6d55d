//===- CudaSupport.h - Per-thread CUDA streams and device memory figures -===//
//
// The one place the runtime names c10's CUDA API, so the converters'
// translation units need no CUDA headers. Every function is a no-op (or
// returns zero) for a non-CUDA device.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_EXEC_CUDASUPPORT_H
#define BRIDGE_EXEC_CUDASUPPORT_H

#include <cstdint>
#include <memory>

namespace bridge::exec {

/// While alive, the calling thread's current stream on the device is a
/// stream of its own (from c10's pool), not the legacy default stream that
/// serialises every thread's copies and kernels: converter threads then
/// overlap their H2D copies, kernels and D2H copies, and a thread waiting
/// for its result waits for its own work only.
class ThreadStream {
public:
  /// DeviceType: c10's enum value; for anything but CUDA this does nothing.
  ThreadStream(int DeviceType, int DeviceIndex);
  ~ThreadStream();
  /// Waits until the work queued on the thread's stream is done.
  void synchronize();
  ThreadStream(const ThreadStream &) = delete;
  ThreadStream &operator=(const ThreadStream &) = delete;

private:
  struct Impl;
  std::unique_ptr<Impl> State;
};

/// Peak bytes the caching allocator has held on the device since the
/// process started (reserved: what the device actually gave up), or 0.
uint64_t peakDeviceBytes(int DeviceType, int DeviceIndex);

} // namespace bridge::exec

#endif
