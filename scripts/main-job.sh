#!/usr/bin/env bash
# The main job, given a build: makes the tiny Llama of examples/tiny-llama
# (random weights, by transformers), prints its plan for TP=2, imports it into
# a Megatron-Core torch_dist checkpoint, exports it back to HF safetensors and
# checks that the round trip is bit-identical.
#   scripts/main-job.sh [BUILD_DIR] [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
work=${2:-$build/examples}
run="$build/runtime/bridge-run"
python3 scripts/make_tiny_llama.py "$work/tiny-llama"
"$run" plan --hf "$work/tiny-llama" --tp 2
echo
"$run" import --hf "$work/tiny-llama" --out "$work/tiny-llama-megatron" --tp 2 --overwrite
"$run" export --megatron "$work/tiny-llama-megatron" --out "$work/tiny-llama-hf" --overwrite
python3 scripts/compare_checkpoints.py "$work/tiny-llama" "$work/tiny-llama-hf"
