#!/usr/bin/env bash
# Scaling of a multi-process import over GPUs, on one host, in one call:
#   bench/scaling.sh BRIDGE_RUN [NPROCS...]        (default: 1 2 4)
# Generates the Qwen3-30B-A3B checkpoint on tmpfs (full size when the tmpfs
# holds source and output twice over, else $LAYERS layers, default 12; or,
# with MODEL=deepseek-v3-4l-fp8, DeepSeek-V3's first 4 layers in FP8), takes
# a parallel copy of it as the floor, then imports it with torchrun at each
# process count (--device cuda, GPU LOCAL_RANK each). One JSON line per step
# in $OUT/scaling.jsonl; the wall time includes torchrun's start-up, and the
# "own clock" lines give bridge-run's time from start of work to rename.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bridge=$(realpath "$1"); shift
counts=${*:-1 2 4}
out=${OUT:-/tmp/bench-out}
work=${BENCH_DIR:-/dev/shm/bridge-scaling}
log=$out/scaling.jsonl
mkdir -p "$out" "$work"
rm -rf "${work:?}"/*
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$out/card.txt" 2>/dev/null || true
nproc >> "$out/card.txt"; df -h "$work" | tail -1 >> "$out/card.txt"; free -g | sed -n 2p >> "$out/card.txt"
free_gb=$(df --output=avail -B1G "$work" | tail -1)
case ${MODEL:-qwen3-30b-a3b} in
  qwen3-30b-a3b)
    cfg=Qwen__Qwen3-30B-A3B.json; gen=(); label=qwen3-30b-a3b
    if [ "$free_gb" -lt 150 ]; then gen=(--layers "${LAYERS:-12}"); label=qwen3-30b-a3b-${LAYERS:-12}l; fi ;;
  deepseek-v3-4l-fp8) # dequantization: the one step that runs on the GPUs
    cfg=deepseek-ai__DeepSeek-V3.json; gen=(--layers 4 --fp8-block); label=deepseek-v3-4l-fp8 ;;
  *) echo "unknown MODEL $MODEL" >&2; exit 2 ;;
esac
python3 "$here/gen_checkpoint.py" "$here/configs/$cfg" "$work/src" "${gen[@]}" 2>&1 |
  grep -v token_id | tail -1
bytes=$(du -sb "$work/src" | cut -f1)
m() { python3 "$here/measure.py" --log "$log" "$@"; }
m --label "$label parallel copy" --bytes "$bytes" -- python3 "$here/parallel_copy.py" "$work/src" "$work/pcopy"
rm -rf "$work/pcopy"
# The launcher alone (python, torch's import, the rendezvous), and one
# process without it: what a torchrun wall time holds beyond the import.
m --label "torchrun alone (1 process running true)" --bytes 0 -- \
  python3 -m torch.distributed.run --standalone --nproc_per_node 1 --no-python true
m --label "$label import, 1 process, no launcher" --bytes "$bytes" -- \
  "$bridge" import --hf "$work/src" --out "$work/mg" --device cuda --quiet | tee -a "$out/scaling.txt" | grep -E "done:|time:"
rm -rf "$work/mg"
for n in $counts; do
  m --label "$label import, $n process(es)" --bytes "$bytes" -- \
    python3 -m torch.distributed.run --standalone --nproc_per_node "$n" --no-python \
    "$bridge" import --hf "$work/src" --out "$work/mg" --device cuda --quiet |
    tee -a "$out/scaling.txt" | grep -E "done:|time:"
  rm -rf "$work/mg"
done
rm -rf "$work"
