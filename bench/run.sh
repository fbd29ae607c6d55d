#!/usr/bin/env bash
# The conversion benchmark, on a GPU host, in one call per model set:
#   bench/run.sh BRIDGE_RUN MODEL...      (MODEL: llama3.1-8b | qwen3-30b-a3b-12l | deepseek-v3-4l-fp8)
# For each model: a full-size random checkpoint from the published config is
# generated on tmpfs ($BENCH_DIR, default /dev/shm/bridge-bench); then, on the
# same bytes: cp -r, a parallel chunked copy (as many threads as cores),
# bridge-run import and export on CUDA, and the Python route
# (bench/python_baseline.py). One JSON line per step goes to $OUT/bench.jsonl
# (bench/measure.py); bench/table.py turns it into bench/results/*.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bridge=$(realpath "$1"); shift
configs=${BRIDGE_HF_CONFIGS:-$here/configs}
out=${OUT:-/tmp/bench-out}
work=${BENCH_DIR:-/dev/shm/bridge-bench}
log=$out/bench.jsonl
mkdir -p "$out" "$work"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/card.txt" 2>/dev/null || true
nproc >> "$out/card.txt"; df -h "$work" | tail -1 >> "$out/card.txt"; free -g | sed -n 2p >> "$out/card.txt"
m() { python3 "$here/measure.py" --log "$log" "$@"; }
for model in "$@"; do
  case $model in
    llama3.1-8b) cfg=meta-llama__Llama-3.1-8B.json; gen=() ;;
    qwen3-30b-a3b-12l) cfg=Qwen__Qwen3-30B-A3B.json; gen=(--layers 12) ;;
    deepseek-v3-4l-fp8) cfg=deepseek-ai__DeepSeek-V3.json; gen=(--layers 4 --fp8-block) ;;
    *) echo "unknown model $model" >&2; exit 2 ;;
  esac
  src=$work/$model
  rm -rf "$work"/*
  python3 "$here/gen_checkpoint.py" "$configs/$cfg" "$src" "${gen[@]}" 2>&1 | grep -v "token_id" | tail -1
  bytes=$(du -sb "$src" | cut -f1)
  m --label "$model cp -r" --bytes "$bytes" -- cp -r "$src" "$work/cp"; rm -rf "$work/cp"
  m --label "$model parallel copy" --bytes "$bytes" -- python3 "$here/parallel_copy.py" "$src" "$work/pcopy"; rm -rf "$work/pcopy"
  m --label "$model bridge-run import (cuda)" --bytes "$bytes" -- "$bridge" import --hf "$src" --out "$work/mg" --device cuda
  mbytes=$(du -sb "$work/mg" | cut -f1)
  m --label "$model bridge-run export (cuda)" --bytes "$mbytes" -- "$bridge" export --megatron "$work/mg" --out "$work/hf" --device cuda
  rm -rf "$work/hf" "$work/mg"
  m --label "$model python route (safetensors+torch+DCP)" --bytes "$bytes" -- \
    python3 "$here/python_baseline.py" --hf "$src" --out "$work/dcp" --bridge-run "$bridge" --device cuda
  rm -rf "$work/dcp"
done
rm -rf "$work"
