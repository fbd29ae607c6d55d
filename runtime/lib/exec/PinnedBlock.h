//===- PinnedBlock.h - a loader thread's way from host memory to the GPU -===//
//
// How a loader thread's host tensor reaches the GPU: through one pinned
// block per thread, allocated once, in block-sized pieces, each read into
// the block (by the intra-op threads), copied to the device and waited for,
// as the files -> GPU floor of bench/live.py copies; or through a pinned
// copy of the whole tensor. With a 1 GiB load budget the block staging
// loaded Llama-3.1-8B in 0.58 s where the whole copies took 1.04 s, the
// floor 0.95-1.06 s (bench/results/2026-12-07-h100-live.md, call 8).
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_EXEC_PINNEDBLOCK_H
#define BRIDGE_EXEC_PINNEDBLOCK_H

#include "CudaSupport.h"

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace bridge::exec {

/// How a host tensor reaches the GPU. BRIDGE_LIVE_STAGING picks one, for
/// the benchmark's side-by-side runs (bench/live.sh STAGINGS).
enum class Staging {
  Block, ///< through the thread's pinned block, piece by piece
  Whole, ///< a pinned copy of each whole tensor
};

/// BRIDGE_LIVE_STAGING (block or whole; unset: block).
Staging stagingFromEnvironment();

class PinnedBlock {
public:
  static constexpr int64_t kBytes = int64_t(64) << 20;
  PinnedBlock(Staging How, ThreadStream &Stream, int64_t Bytes = kBytes) : How(How), Stream(Stream), Bytes(Bytes) {}

  /// \p Host's values into \p Dst, a contiguous device tensor of its shape
  /// and dtype. A non-contiguous \p Host goes by blocks of dim-0 rows.
  void copy(const at::Tensor &Host, const at::Tensor &Dst);

private:
  Staging How;
  ThreadStream &Stream;
  int64_t Bytes;
  at::Tensor Block; ///< pinned, allocated on the first copy
};

} // namespace bridge::exec

#endif
