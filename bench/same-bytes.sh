#!/usr/bin/env bash
# Two builds of bridge-run on the same full-size checkpoints: every output
# file byte for byte, and each step's time side by side (a restructuring
# must change neither the bytes nor the speed). On a GPU host, one call:
#   bench/same-bytes.sh OLD_BRIDGE_RUN NEW_BRIDGE_RUN MODEL...
# MODEL as in bench/run.sh. For each: import (--device $DEVICE, default cuda), export of that
# import, reshard to TP 2 (and, for MoE, EP 2); one JSON line per step and one
# per comparison to $OUT/same-bytes.jsonl. Outputs are compared by each
# file's SHA-256, so one output of each step is on disk at a time.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
old=$(realpath "$1"); new=$(realpath "$2"); shift 2
configs=${BRIDGE_HF_CONFIGS:-$here/configs}
out=${OUT:-/tmp/bench-out}
work=${BENCH_DIR:-/dev/shm/bridge-same-bytes}
log=$out/same-bytes.jsonl
mkdir -p "$out" "$work"
m() { python3 "$here/measure.py" --log "$log" "$@"; }
# Every file's SHA-256 under a directory (paths relative to it): two trees
# are compared by their lists, so only one of them need be on disk.
digests() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
same() { # label listA listB
  if cmp -s "$2" "$3"; then
    echo "{\"label\": \"$1: byte-identical\", \"files\": $(wc -l < "$2")}" >> "$log"
  else
    echo "{\"label\": \"$1: DIFFERENT\", \"diff\": $(diff "$2" "$3" | head -5 | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')}" >> "$log"
  fi
}
# Runs step $1 with both builds into $work/$2-old and $work/$2-new; keeps
# only the new output (the input of the next steps).
both() {
  local label=$1 dir=$2 bytes=$3; shift 3
  for v in old new; do
    b=$old; [ $v = new ] && b=$new
    m --label "$model $label ($v)" --bytes "$bytes" -- "$b" "$@" --out "$work/$dir-$v" --quiet
    digests "$work/$dir-$v" > "$work/$dir-$v.sha256"
    if [ $v = old ]; then rm -rf "$work/$dir-old"; fi
  done
  same "$model $label" "$work/$dir-old.sha256" "$work/$dir-new.sha256"
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
  both import mg "$(du -sb "$src" | cut -f1)" import --hf "$src" --device "${DEVICE:-cuda}"
  mbytes=$(du -sb "$work/mg-new" | cut -f1)
  both export hf "$mbytes" export --megatron "$work/mg-new"
  rm -rf "$work/hf-new"
  both "reshard ${reshard[*]}" rs "$mbytes" reshard --megatron "$work/mg-new" "${reshard[@]}"
  rm -rf "$work/rs-new"
done
rm -rf "$work"
