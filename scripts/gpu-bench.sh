#!/usr/bin/env bash
# The benchmark through the device tool, from what is committed.
#
# Here (the CPU machine), before the call:
#   scripts/gpu-bench.sh --prepare     # .gpu/bridgec and .gpu/head.tar (git archive HEAD): the device keeps
#                                      # files between calls and its .git is not this checkout's HEAD, so
#                                      # the committed sources travel as a tar; uncommitted edits in the
#                                      # tree (a helper's) cannot break the device's build
#   .peers/: ../shared/peers with its wheels in whl/ (../shared/peers/README.md says which and how)
# The device call (run's carry: [".gpu", ".peers"]), e.g.:
#   MODELS=llama3.1-8b VARIANTS="BRIDGE_WRITE_PIECE_KIB=0" BENCH_DISK_DIR=/tmp DISK_MODELS=llama3.1-8b \
#     bash scripts/gpu-bench.sh
# It builds the runtime (Release) in build-gpu and runs bench/run.sh on $MODELS with Megatron-Bridge's import
# beside each model (PEER_TIMEOUT, default 200 s); everything lands in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --prepare ]; then
  mkdir -p .gpu && cp build/compiler/bridgec .gpu/bridgec &&
    git archive HEAD -o .gpu/head.tar compiler mappings runtime recipes python cmake CMakeLists.txt bench grammar &&
    echo "prepared .gpu/ at $(git log --oneline -1 | cut -c1-60)"
  exit
fi
out=${OUT:-/tmp/gpu-bench}; mkdir -p "$out"
t0=$(date +%s)
[ -f .gpu/head.tar ] || { echo "no .gpu/head.tar: run scripts/gpu-bench.sh --prepare first" >&2; exit 1; }
tar -xf .gpu/head.tar
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DBRIDGE_BUILD_COMPILER=OFF \
  -DBRIDGEC_EXECUTABLE="$PWD/.gpu/bridgec" -DBRIDGE_BUILD_TESTS=OFF \
  -DPython3_EXECUTABLE="$(command -v python3)" > "$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
cmake --build build-gpu -j "$(nproc)" > "$out/build.log" 2>&1 || { grep -m5 error "$out/build.log"; exit 1; }
echo "build took $(( $(date +%s) - t0 )) s"
OUT=$out PEERS_DIR=$PWD/.peers PEER_TIMEOUT=${PEER_TIMEOUT:-200} SKIP_PYTHON=1 \
  BENCH_DISK_DIR=${BENCH_DISK_DIR:-} DISK_MODELS=${DISK_MODELS:-} DISK_DEVICES=cpu VARIANTS="${VARIANTS:-}" \
  bash bench/run.sh build-gpu/runtime/bridge-run $MODELS > "$out/run.log" 2>&1
echo "bench rc $?  total $(( $(date +%s) - t0 )) s"
cut -c1-300 "$out/bench.jsonl"
