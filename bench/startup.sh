#!/usr/bin/env bash
# Start-up of the commands that convert nothing: wall time and peak resident
# memory of `bridge-run --help`, `list`, `config`, `plan` and `recipe list`
# (median of N runs, /usr/bin/time), and of `import` on a tiny checkpoint
# for comparison, which opens the converter module (libtorch).
#   bench/startup.sh BRIDGE_RUN [N]      (JSON lines to $OUT/startup.jsonl)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$(realpath "$1"); n=${2:-20}
out=${OUT:-/tmp/bench-out}; mkdir -p "$out"
cfg=$here/configs/meta-llama__Llama-3.1-8B.json
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/hf" && cp "$cfg" "$work/hf/config.json"
measure() { # label, command...: wall time and peak RSS of each run (os.wait4's rusage)
  python3 - "$n" "$@" <<'PY' | sed "s|^|{\"label\": \"$1\", |" | tee -a "$out/startup.jsonl"
import json, os, statistics, subprocess, sys, time
n, cmd = int(sys.argv[1]), sys.argv[3:]
ms, mb = [], []
for _ in range(n):
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    ms.append((time.perf_counter() - t) * 1000)
    mb.append(usage.ru_maxrss / 1024)
    if status:
        sys.exit(f"failed ({status}): {cmd}")
print(json.dumps({"runs": n, "median_ms": round(statistics.median(ms), 1), "median_rss_mb": round(statistics.median(mb), 1)})[1:])
PY
}
measure "bridge-run --help" "$bin" --help
measure "bridge-run list" "$bin" list
measure "bridge-run config (Llama-3.1-8B)" "$bin" config --hf "$work/hf"
measure "bridge-run plan --tp 8 (Llama-3.1-8B)" "$bin" plan --hf "$work/hf" --tp 8
measure "bridge-run recipe list" "$bin" recipe list
