#!/usr/bin/env bash
# Two builds of bridge-run on the same full-size checkpoints: every output
# file byte for byte, and each step's time side by side (a restructuring
# must change neither the bytes nor the speed). On a GPU host, one call:
#   bench/same-bytes.sh OLD_BRIDGE_RUN NEW_BRIDGE_RUN MODEL...
# MODEL as in bench/run.sh. For each: import (--device $DEVICE, default cuda), export of that
# import, reshard to TP 2 (and, for MoE, EP 2); one JSON line per step and one
# per comparison to $OUT/same-bytes.jsonl.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
old=$(realpath "$1"); new=$(realpath "$2"); shift 2
configs=${BRIDGE_HF_CONFIGS:-$here/configs}
out=${OUT:-/tmp/bench-out}
work=${BENCH_DIR:-/dev/shm/bridge-same-bytes}
log=$out/same-bytes.jsonl
mkdir -p "$out" "$work"
m() { python3 "$here/measure.py" --log "$log" "$@"; }
same() { # label dirA dirB
  if diff -r -q "$2" "$3" > "$work/diff.txt"; then
    echo "{\"label\": \"$1: byte-identical\", \"files\": $(find "$2" -type f | wc -l)}" >> "$log"
  else
    echo "{\"label\": \"$1: DIFFERENT\", \"diff\": $(head -5 "$work/diff.txt" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')}" >> "$log"
  fi
}
for model in "$@"; do
  case $model in
    llama3.1-8b) cfg=meta-llama__Llama-3.1-8B.json; gen=(); reshard=(--tp 2) ;;
    qwen3-30b-a3b-12l) cfg=Qwen__Qwen3-30B-A3B.json; gen=(--layers 12); reshard=(--tp 2 --ep 2) ;;
    deepseek-v3-4l-fp8) cfg=deepseek-ai__DeepSeek-V3.json; gen=(--layers 4 --fp8-block); reshard=(--tp 2 --ep 2) ;;
    *) echo "unknown model $model" >&2; exit 2 ;;
  esac
  rm -rf "$work"/*
  src=$work/src
  python3 "$here/gen_checkpoint.py" "$configs/$cfg" "$src" "${gen[@]}" 2>&1 | grep -v "token_id" | tail -1
  bytes=$(du -sb "$src" | cut -f1)
  for v in old new; do
    b=$old; [ $v = new ] && b=$new
    m --label "$model import ($v)" --bytes "$bytes" -- "$b" import --hf "$src" --out "$work/mg-$v" --device "${DEVICE:-cuda}" --quiet
  done
  same "$model import" "$work/mg-old" "$work/mg-new"
  rm -rf "$work/mg-old"
  mbytes=$(du -sb "$work/mg-new" | cut -f1)
  for v in old new; do
    b=$old; [ $v = new ] && b=$new
    m --label "$model export ($v)" --bytes "$mbytes" -- "$b" export --megatron "$work/mg-new" --out "$work/hf-$v" --quiet
  done
  same "$model export" "$work/hf-old" "$work/hf-new"
  rm -rf "$work/hf-old" "$work/hf-new"
  for v in old new; do
    b=$old; [ $v = new ] && b=$new
    m --label "$model reshard ${reshard[*]} ($v)" --bytes "$mbytes" -- \
      "$b" reshard --megatron "$work/mg-new" --out "$work/rs-$v" "${reshard[@]}" --quiet
  done
  same "$model reshard" "$work/rs-old" "$work/rs-new"
done
rm -rf "$work"
