#!/usr/bin/env python3
"""Run one command and report, as one JSON line appended to --log: wall time,
peak resident host memory of the process tree (ru_maxrss of the children),
and the peak GPU memory its processes held (sampled from nvidia-smi every
0.1 s; 0 without a GPU).

  measure.py --log results.jsonl --label NAME --bytes N -- CMD ARGS...
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import threading
import time


def gpu_sampler(pid_box: list, peak: list, stop: threading.Event) -> None:
    if not shutil.which("nvidia-smi"):
        return
    while not stop.is_set():
        try:
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=5).stdout
            used = sum(int(line.split(",")[1]) for line in out.strip().splitlines() if line.strip())
            peak[0] = max(peak[0], used)
        except Exception:  # noqa: BLE001 - sampling is best effort
            pass
        stop.wait(0.1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--bytes", type=int, default=0, help="bytes the step moves (for GB/s)")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    peak, stop = [0], threading.Event()
    t = threading.Thread(target=gpu_sampler, args=([], peak, stop), daemon=True)
    t.start()
    start = time.perf_counter()
    proc = subprocess.run(cmd)
    wall = time.perf_counter() - start
    stop.set()
    t.join()
    rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    rec = {"label": a.label, "rc": proc.returncode, "seconds": round(wall, 3), "bytes": a.bytes,
           "gb_per_s": round(a.bytes / wall / 1e9, 3) if a.bytes else None,
           "peak_host_gib": round(rss_kib / 1024**2, 3), "peak_gpu_gib": round(peak[0] / 1024, 3),
           "cmd": " ".join(cmd)}
    with open(a.log, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec), flush=True)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
