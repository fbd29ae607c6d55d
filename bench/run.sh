#!/usr/bin/env bash
# The conversion benchmark, on a GPU host, in one call per model set:
#   bench/run.sh BRIDGE_RUN MODEL...      (MODEL: llama3.1-8b | qwen3-30b-a3b-12l | deepseek-v3-4l-fp8)
# For each model: a full-size random checkpoint from the published config is
# generated on tmpfs ($BENCH_DIR, default /dev/shm/bridge-bench); then, on the
# same bytes: cp -r, a parallel chunked copy (as many threads as cores),
# bridge-run import with the ops on CUDA and on the CPU ($DEVICES), export,
# a byte comparison of the two imports, and the Python route
# (bench/python_baseline.py; SKIP_PYTHON=1 leaves it out). With
# BENCH_DISK_DIR the copies, import and export run again from and to that
# disk (for the models in $DISK_MODELS, default all). With PEERS_DIR,
# Megatron-Bridge's import of each checkpoint beside ours (tmpfs). An FP8
# model is also exported quantized (--quantize fp8-block). One JSON line per
# step goes to $OUT/bench.jsonl ($VARIANTS: more import/export runs with other
# options, see steps()) (bench/measure.py); bench/startup.sh's lines
# to $OUT/startup.jsonl.
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
# A step on the checkpoint in $1 (tmpfs or disk), outputs beside it.
# On disk every step starts from a cold page cache (where the host allows).
cold() { sync; [ "$1" = disk ] && { (echo 3 > /proc/sys/vm/drop_caches) 2>/dev/null || true; }; return 0; }
steps() {
  local where=$1 src=$2 dir=$3 bytes
  bytes=$(du -sb "$src" | cut -f1)
  cold "$where"
  m --label "$model [$where] cp -r" --bytes "$bytes" -- cp -r "$src" "$dir/cp"; rm -rf "$dir/cp"; cold "$where"
  # Both ways of copying: which is faster depends on the host; the faster is the floor.
  for method in copy_file_range read_write; do
    m --label "$model [$where] parallel copy ($method)" --bytes "$bytes" -- \
      python3 "$here/parallel_copy.py" "$src" "$dir/pcopy" --method "$method"
    rm -rf "$dir/pcopy"; cold "$where"
  done
  for dev in ${DEVICES:-cuda cpu}; do
    m --label "$model [$where] bridge-run import ($dev)" --bytes "$bytes" -- \
      "$bridge" import --hf "$src" --out "$dir/mg-$dev" --device "$dev"
    cold "$where"
  done
  # $VARIANTS: extra import/export runs with other options, ';'-separated
  # (e.g. "--writers 16;BRIDGE_WRITE_PIECE_KIB=0"), each labelled with its
  # options; a NAME=VALUE word is set in the environment.
  local variant word
  IFS=';' read -ra variants <<< "${VARIANTS:-}"
  for variant in "${variants[@]}"; do
    local vars=() args=()
    for word in $variant; do
      if [[ $word == *=* ]]; then vars+=("$word"); else args+=("$word"); fi
    done
    m --label "$model [$where] bridge-run import (cpu) $variant" --bytes "$bytes" -- \
      env "${vars[@]}" "$bridge" import --hf "$src" --out "$dir/mg-variant" --device cpu "${args[@]}"
    cold "$where"
    m --label "$model [$where] bridge-run export $variant" --bytes "$bytes" -- \
      env "${vars[@]}" "$bridge" export --megatron "$dir/mg-variant" --out "$dir/hf-variant" "${args[@]}"
    rm -rf "$dir/mg-variant" "$dir/hf-variant"; cold "$where"
  done
  mbytes=$(du -sb "$dir/mg-cuda" 2>/dev/null | cut -f1 || du -sb "$dir/mg-cpu" | cut -f1)
  # The same bytes on both devices (each run's files and metadata).
  if [ -d "$dir/mg-cuda" ] && [ -d "$dir/mg-cpu" ]; then
    (cd "$dir/mg-cpu/iter_0000000" && for f in *.distcp .metadata; do cmp "$f" "$dir/mg-cuda/iter_0000000/$f"; done) &&
      echo "{\"label\": \"$model [$where] cpu and cuda imports byte-identical\"}" >> "$log"
    rm -rf "$dir/mg-cpu"
  fi
  mg=$dir/mg-cuda; [ -d "$mg" ] || mg=$dir/mg-cpu
  # Export runs on the host whatever --device says (nothing in it computes).
  m --label "$model [$where] bridge-run export" --bytes "$mbytes" -- \
    "$bridge" export --megatron "$mg" --out "$dir/hf"
  rm -rf "$dir/hf"; cold "$where"
  if [[ $model == *fp8* ]]; then # FP8 out: quantized on the GPU, as the source was
    m --label "$model [$where] bridge-run export --quantize fp8-block (cuda)" --bytes "$mbytes" -- \
      "$bridge" export --megatron "$mg" --out "$dir/hf" --quantize fp8-block --device cuda
    rm -rf "$dir/hf"; cold "$where"
  fi
  # Megatron-Bridge 0.6.2's import of the same checkpoint ($PEERS_DIR: a copy
  # of ../shared/peers with its wheels in whl/), its output compared with ours
  # tensor by tensor; its time without its 12-20 s of Python imports is
  # convert_s in the logged line.
  if [ -n "${PEERS_DIR:-}" ] && [ -f "$PEERS_DIR/peer_mb.sh" ] && [ "$where" = tmpfs ]; then
    local rc=0
    MB_OVERWRITE=1 timeout "${PEER_TIMEOUT:-300}" bash "$PEERS_DIR/peer_mb.sh" "$src" "$dir/mb" "$mg" > "$out/mb-$model.log" 2>&1 || rc=$?
    python3 - "$out/mb-$model.log" "$model [$where] Megatron-Bridge import" "$rc" >> "$log" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
row = {"label": sys.argv[2], "rc": int(sys.argv[3])}
# peer_mb.sh prints each line twice, the second time cut to 600 characters
# in its summary: the first whole one counts.
for tag, key in (("@@MB_RESULT ", None), ("@@TIME ", "time"), ("@@MB_COMPARE ", "compare")):
    for line in text.splitlines():
        if line.startswith(tag):
            try:
                value = json.loads(line[len(tag):])
            except json.JSONDecodeError:
                continue
            row.update(value) if key is None else row.setdefault(key, value)
            break
row["equal_to_ours"] = "every tensor bit-identical" in text
print(json.dumps(row))
PY
    tail -1 "$log"; rm -rf "$dir/mb"; cold "$where"
  fi
  rm -rf "$mg"
}

bash "$here/startup.sh" "$bridge" 20 > /dev/null
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
  steps tmpfs "$src" "$work"
  if [ -z "${SKIP_PYTHON:-}" ]; then
    bytes=$(du -sb "$src" | cut -f1)
    m --label "$model [tmpfs] python route (safetensors+torch+DCP)" --bytes "$bytes" -- \
      python3 "$here/python_baseline.py" --hf "$src" --out "$work/dcp" --bridge-run "$bridge" --device cuda
    rm -rf "$work/dcp"
  fi
  # From disk ($BENCH_DISK_DIR): the source copied there, the page cache
  # dropped where allowed, output written there.
  if [ -n "${BENCH_DISK_DIR:-}" ] && [[ " ${DISK_MODELS:-$model} " == *" $model "* ]]; then
    disk=$BENCH_DISK_DIR/bridge-bench; rm -rf "$disk"; mkdir -p "$disk"
    cp -r "$src" "$disk/src"; rm -rf "$work"/*; sync
    (echo 3 > /proc/sys/vm/drop_caches) 2>/dev/null && echo "page cache dropped" || echo "page cache not dropped"
    DEVICES=${DISK_DEVICES:-cuda} steps disk "$disk/src" "$disk"
    rm -rf "$disk"
  fi
done
rm -rf "$work"
