#!/usr/bin/env bash
# The live bridge's benchmark on one GPU, one call: for each model a random
# checkpoint from its published config in tmpfs, the copy floors, then
# bench/live.py for ours, mbridge and Megatron-Bridge, each in its own
# process on the same checkpoint, every exported tensor checked.
#   bench/live.sh BUILD_DIR MODEL...      (MODEL: llama3.1-8b | qwen3-30b-a3b-12l | qwen3-30b-a3b)
# Wheels (carried as .whl/, see the device README): megatron-core 0.16.1,
# mbridge 0.15.1, einops into /tmp/site; Megatron-Bridge's set
# (../shared/peers/WHEELS.sha256, plus einops and huggingface_hub 1.x, which
# transformers 5.12.1 needs beside a newer hub) in .whl-mb/ into /tmp/site-mb; a copy of
# ../shared/peers in .peers/. A peer whose site is missing is skipped.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(realpath "$1"); shift
out=${OUT:-/tmp/bench-out}; mkdir -p "$out"
log=$out/live.jsonl
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$out/gpu.txt"
for model in "$@"; do
  case $model in
    llama3.1-8b) cfg=meta-llama__Llama-3.1-8B.json; gen=() ;;
    qwen3-30b-a3b-12l) cfg=Qwen__Qwen3-30B-A3B.json; gen=(--layers 12) ;;
    qwen3-30b-a3b) cfg=Qwen__Qwen3-30B-A3B.json; gen=() ;;
    *) echo "unknown model $model" >&2; exit 2 ;;
  esac
  src=/dev/shm/live-$model
  rm -rf /dev/shm/live-*
  python3 "$here/gen_checkpoint.py" "$here/configs/$cfg" "$src" "${gen[@]}" 2>&1 | grep -v token_id | tail -1
  for method in copy_file_range read_write; do
    mkdir -p /dev/shm/live-floor
    python3 "$here/measure.py" --log "$log" --label "$model parallel copy ($method, tmpfs floor)" \
      --bytes "$(du -sb "$src" | cut -f1)" -- python3 "$here/parallel_copy.py" "$src" /dev/shm/live-floor/x \
      --method "$method" > /dev/null
    rm -rf /dev/shm/live-floor
  done
  # STAGINGS: the load's ways to the GPU side by side, each WAY[:BUDGET_MIB]
  # (BRIDGE_LIVE_STAGING, runtime/lib/exec/PinnedBlock.h; load_hf_weights'
  # memory_budget); the first is the default's and is profiled.
  first=1
  for entry in ${STAGINGS:-whole}; do
    staging=${entry%%:*}; budget=; [ "$entry" = "$staging" ] || budget=${entry#*:}
    name=$model; [ $first = 1 ] || name="$model staging=$entry"
    BRIDGE_LIVE_STAGING=$staging PYTHONPATH="$build/python:/tmp/site" python3 "$here/live.py" "$src" --peer ours \
      --name "$name" --log "$log" --check --loads "${LOADS:-1}" ${budget:+--memory-budget "$budget"} \
      $([ $first = 1 ] && echo --profile "$out/profile") 2>&1 | grep '"label"'
    first=0
  done
  [ -d /tmp/site/mbridge ] && PYTHONPATH=/tmp/site python3 "$here/live.py" "$src" --peer mbridge --name "$model" --log "$log" --check 2>&1 | grep -E '"label"|Error' | tail -4
  [ -d /tmp/site-mb/megatron/bridge ] && BRIDGE_PEERS_DIR="${BRIDGE_PEERS_DIR:-$here/../.peers}" PYTHONPATH=/tmp/site-mb \
    python3 "$here/live.py" "$src" --peer megatron-bridge --name "$model" --log "$log" --check 2>&1 | grep -E '"label"|Error' | tail -4
done
rm -rf /dev/shm/live-*
