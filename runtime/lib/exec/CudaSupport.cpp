//===- CudaSupport.cpp - Per-thread CUDA streams and device memory figures ===//
#include "CudaSupport.h"

#include <c10/core/Device.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>

namespace bridge::exec {

struct ThreadStream::Impl {
  std::optional<c10::cuda::CUDAStreamGuard> Guard;
};

ThreadStream::ThreadStream(int DeviceType, int DeviceIndex) : State(std::make_unique<Impl>()) {
  if (static_cast<c10::DeviceType>(DeviceType) != c10::DeviceType::CUDA)
    return;
  auto Index = static_cast<c10::DeviceIndex>(DeviceIndex < 0 ? c10::cuda::current_device() : DeviceIndex);
  State->Guard.emplace(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, Index));
}

ThreadStream::~ThreadStream() = default;

void ThreadStream::synchronize() {
  if (State->Guard)
    State->Guard->current_stream().synchronize();
}

uint64_t peakDeviceBytes(int DeviceType, int DeviceIndex) {
  if (static_cast<c10::DeviceType>(DeviceType) != c10::DeviceType::CUDA)
    return 0;
  // An allocator that never allocated (a plan that only moves bytes) has
  // no stats to give.
  try {
    auto Index = static_cast<c10::DeviceIndex>(DeviceIndex < 0 ? c10::cuda::current_device() : DeviceIndex);
    auto Stats = c10::cuda::CUDACachingAllocator::getDeviceStats(Index);
    using c10::CachingAllocator::StatType;
    return static_cast<uint64_t>(Stats.reserved_bytes[static_cast<size_t>(StatType::AGGREGATE)].peak);
  } catch (const std::exception &) {
    return 0;
  }
}

} // namespace bridge::exec
