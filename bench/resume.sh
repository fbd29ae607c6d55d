#!/usr/bin/env bash
# Kill-and-resume on a full-size checkpoint (GPU host, after bench/run.sh made
# it): an import killed (SIGKILL) at tensor N, then the same command with
# --resume, each timed by bench/measure.py, and the result compared byte for
# byte with an uninterrupted import's tensors through export.
#   bench/resume.sh BRIDGE_RUN HF_DIR N
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bridge=$(realpath "$1"); src=$2; at=$3
out=${OUT:-/tmp/bench-out}; log=$out/bench.jsonl; work=$(dirname "$src")
mkdir -p "$out"
# bench/run.sh removes its checkpoints when done: make Llama-3.1-8B again.
[ -f "$src/config.json" ] || python3 "$here/gen_checkpoint.py" "$here/configs/meta-llama__Llama-3.1-8B.json" "$src" | tail -1
m() { python3 "$here/measure.py" --log "$log" "$@"; }
rm -rf "$work/resumed" "$work"/resumed.partial-* "$work/resumed-hf"
BRIDGE_FAULT_INJECT=0:$at:kill m --label "import killed at tensor $at" -- "$bridge" import --hf "$src" --out "$work/resumed" --quiet || true
ls -d "$work"/resumed.partial-* > /dev/null
m --label "import --resume" -- "$bridge" import --hf "$src" --out "$work/resumed" --resume --quiet
"$bridge" verify "$work/resumed"
"$bridge" export --megatron "$work/resumed" --out "$work/resumed-hf" --quiet
"$bridge" verify "$work/resumed-hf" --against "$src"
rm -rf "$work/resumed" "$work/resumed-hf"
