#!/usr/bin/env bash
# Run on the GPU host (device tool), from the repository root, with the
# bridgec built here carried along (build/compiler/bridgec): builds the
# runtime against that host's torch and runs the GPU-labelled tests plus the
# unit, golden and main-job tests. Results go to $OUT when set.
#   scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__)' | tee -a "$out/gpu.txt"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBRIDGE_BUILD_COMPILER=OFF \
  -DBRIDGEC_EXECUTABLE="$PWD/build/compiler/bridgec" -DBRIDGE_BUILD_TESTS=ON \
  -DPython3_EXECUTABLE="$(command -v python3)" > "$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
cmake --build build-gpu -j 16 > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
ctest --test-dir build-gpu --output-on-failure -L "gpu|unit|runtime" -E main-job-plan 2>&1 | tee "$out/ctest.log"
