//===- PinnedBlock.cpp - a loader thread's way from host memory to the GPU ===//
#include "PinnedBlock.h"

#include "bridge/Error.h"

#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdlib>
#include <string>

namespace bridge::exec {

Staging stagingFromEnvironment() {
  const char *V = std::getenv("BRIDGE_LIVE_STAGING");
  const std::string S = V ? V : "";
  if (S.empty() || S == "block")
    return Staging::Block;
  if (S == "whole")
    return Staging::Whole;
  throw Error("error: BRIDGE_LIVE_STAGING is '" + S + "'; expected block or whole");
}

void PinnedBlock::copy(const at::Tensor &Host, const at::Tensor &Dst) {
  const int64_t Total = static_cast<int64_t>(Host.nbytes());
  if (Total == 0)
    return;
  const int64_t RowBytes = Host.dim() ? Total / std::max<int64_t>(1, Host.size(0)) : Total;
  if (How == Staging::Whole || (!Host.is_contiguous() && RowBytes > Bytes)) {
    at::Tensor Pinned = at::empty(Host.sizes(), Host.options().pinned_memory(true));
    Pinned.copy_(Host);
    Dst.copy_(Pinned, /*non_blocking=*/true);
    return;
  }
  if (!Block.defined())
    Block = at::empty({Bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  if (Host.is_contiguous()) {
    // at::Tensor::copy_ reads with the intra-op threads: a tensor over the
    // load's memory budget runs alone, and one thread's memcpy of it made
    // the whole load 4x slower than the floor (call 7).
    at::Tensor HostBytes = Host.view({-1}).view(at::kByte), DstBytes = Dst.view({-1}).view(at::kByte);
    for (int64_t Off = 0; Off < Total; Off += Bytes) {
      const int64_t N = std::min(Bytes, Total - Off);
      Block.narrow(0, 0, N).copy_(HostBytes.narrow(0, Off, N));
      DstBytes.narrow(0, Off, N).copy_(Block.narrow(0, 0, N), /*non_blocking=*/true);
      Stream.synchronize(); // the next piece reuses the block
    }
    return;
  }
  const int64_t Rows = std::max<int64_t>(1, Bytes / RowBytes);
  for (int64_t R = 0; R < Host.size(0); R += Rows) {
    const int64_t N = std::min(Rows, Host.size(0) - R);
    at::Tensor Part = Host.narrow(0, R, N);
    at::Tensor Pinned = Block.narrow(0, 0, N * RowBytes).view(Host.scalar_type()).view(Part.sizes());
    Pinned.copy_(Part);
    Dst.narrow(0, R, N).copy_(Pinned, /*non_blocking=*/true);
    Stream.synchronize();
  }
}

} // namespace bridge::exec
