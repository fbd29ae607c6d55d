#!/usr/bin/env python3
"""Run one command and report, as one JSON line appended to --log: wall time,
peak resident host memory of the process tree (ru_maxrss of the children,
which counts mapped file pages), peak anonymous memory of the process
(RssAnon sampled every 0.05 s: what it holds beyond the files it maps),
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


def anon_sampler(pid: int, peak: list, stop: threading.Event) -> None:
    """Peak RssAnon of the process (KiB): memory it holds itself, without the
    pages of files it maps (which ru_maxrss counts: a converter that maps its
    source shows the source's size there)."""
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
        except OSError:
            return
        stop.wait(0.05)


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
    proc = subprocess.Popen(cmd)
    anon = [0]
    a_stop = threading.Event()
    ta = threading.Thread(target=anon_sampler, args=(proc.pid, anon, a_stop), daemon=True)
    ta.start()
    proc.wait()
    wall = time.perf_counter() - start
    stop.set()
    a_stop.set()
    t.join()
    ta.join()
    rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    rec = {"label": a.label, "rc": proc.returncode, "seconds": round(wall, 3), "bytes": a.bytes,
           "gb_per_s": round(a.bytes / wall / 1e9, 3) if a.bytes else None,
           "peak_host_gib": round(rss_kib / 1024**2, 3), "peak_anon_gib": round(anon[0] / 1024**2, 3),
           "peak_gpu_gib": round(peak[0] / 1024, 3),
           "cmd": " ".join(cmd)}
    with open(a.log, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec), flush=True)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
