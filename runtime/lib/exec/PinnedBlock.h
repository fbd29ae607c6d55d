//===- PinnedBlock.h - a loader thread's way from host memory to the GPU -===//
//
// A host tensor reaches the GPU through one pinned block per thread,
// allocated once, in block-sized pieces: each piece read into the block,
// copied to the device on the thread's stream and waited for, as the
// files -> GPU floor of bench/live.py copies. Pinning a fresh buffer for
// each tensor costs more than its copy.
//
//===----------------------------------------------------------------------===//
#ifndef BRIDGE_EXEC_PINNEDBLOCK_H
#define BRIDGE_EXEC_PINNEDBLOCK_H

#include "CudaSupport.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>

namespace bridge::exec {

/// How a host tensor reaches the GPU. BRIDGE_LIVE_STAGING picks one, for
/// the benchmark's side-by-side runs (bench/live.sh STAGINGS).
enum class Staging {
  Block,     ///< through the thread's pinned block, read from the file when mapped
  BlockCopy, ///< through the thread's pinned block, copied out of the mapping
  Whole,     ///< a pinned copy of each whole tensor
};

/// BRIDGE_LIVE_STAGING (block, block-copy or whole; unset: block).
Staging stagingFromEnvironment();

class PinnedBlock {
public:
  static constexpr int64_t kBytes = int64_t(64) << 20;
  /// Reads the bytes a file's mapping holds at Mapped into Dst without
  /// touching the mapping; false when Mapped is in no mapped file.
  using MappedReader = std::function<bool(const void *Mapped, size_t Bytes, void *Dst)>;

  PinnedBlock(Staging How, ThreadStream &Stream, MappedReader Read, int64_t Bytes = kBytes)
      : How(How), Stream(Stream), Read(std::move(Read)), Bytes(Bytes) {}

  /// \p Host's values into \p Dst, a contiguous device tensor of its shape
  /// and dtype. A non-contiguous \p Host goes by blocks of dim-0 rows.
  void copy(const at::Tensor &Host, const at::Tensor &Dst);

private:
  Staging How;
  ThreadStream &Stream;
  MappedReader Read;
  int64_t Bytes;
  at::Tensor Block; ///< pinned, allocated on the first copy
};

} // namespace bridge::exec

#endif
