#!/usr/bin/env bash
# On a GPU host: import and export with the ops on CUDA give exactly the
# bytes the CPU path gives (same .distcp records, same .metadata, same
# safetensors), and the round trip reproduces the source.
#   tests/gpu/cpu_cuda_parity.sh BUILD_DIR WORK_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
build=$1 work=$2
run="$build/runtime/bridge-run"
rm -rf "$work" && mkdir -p "$work"
python3 scripts/make_tiny_llama.py "$work/hf" >/dev/null
for dev in cpu cuda; do
  "$run" import --hf "$work/hf" --out "$work/mg-$dev" --tp 2 --pp 2 --device "$dev" --quiet
  "$run" export --megatron "$work/mg-$dev" --out "$work/hf-$dev" --device "$dev" --quiet
done
files=$(cd "$work/mg-cpu/iter_0000000" && ls *.distcp)
[ "$files" = "$(cd "$work/mg-cuda/iter_0000000" && ls *.distcp)" ]
for f in $files .metadata common.pt bridge.json; do
  cmp "$work/mg-cpu/iter_0000000/$f" "$work/mg-cuda/iter_0000000/$f"
done
cmp "$work/hf-cpu/model.safetensors" "$work/hf-cuda/model.safetensors"
python3 scripts/compare_checkpoints.py "$work/hf" "$work/hf-cuda"
echo "cpu/cuda parity: torch_dist and safetensors outputs byte-identical"
