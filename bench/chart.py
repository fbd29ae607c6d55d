#!/usr/bin/env python3
"""A bench call's table as a chart: each step's seconds as a horizontal bar,
one panel per model, ours, the floors and the peers told apart by colour.

  bench/chart.py RESULTS.jsonl OUT.png [--title TEXT]

Reads the JSON lines bench/measure.py, bench/live.py and bench/run.sh write
(label, seconds); a label's first word is its model. Lines without seconds
(checks, byte comparisons) are left out. Needs matplotlib (pip).
"""
from __future__ import annotations

import argparse
import json
from collections import OrderedDict


def kind(label: str) -> str:
    low = label.lower()
    if "floor" in low or "parallel copy" in low or "cp -r" in low:
        return "floor"
    if "megatron-bridge" in low or "mbridge" in low or "python route" in low:
        return "peer"
    return "ours"


COLOURS = {"ours": "#1f77b4", "floor": "#7f7f7f", "peer": "#d62728"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("out")
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    by_model: OrderedDict[str, list[tuple[str, float]]] = OrderedDict()
    with open(a.results) as f:
        for line in f:
            row = json.loads(line)
            seconds = row.get("seconds", row.get("convert_s"))
            if seconds is None or row.get("rc", 0) != 0:
                continue
            model, _, step = row["label"].partition(" ")
            by_model.setdefault(model, []).append((step, float(seconds)))
    if not by_model:
        raise SystemExit(f"{a.results}: no line with seconds")
    fig, axes = plt.subplots(len(by_model), 1, figsize=(10, 1.2 + 0.38 * sum(len(v) for v in by_model.values())),
                             squeeze=False)
    for ax, (model, steps) in zip(axes[:, 0], by_model.items()):
        names = [s for s, _ in steps][::-1]
        values = [v for _, v in steps][::-1]
        bars = ax.barh(names, values, color=[COLOURS[kind(n)] for n in names])
        ax.bar_label(bars, labels=[f"{v:.3g} s" for v in values], padding=3, fontsize=8)
        ax.set_title(model, fontsize=10, loc="left")
        ax.set_xscale("log")
        ax.tick_params(axis="y", labelsize=8)
        ax.set_xlabel("seconds (log scale)", fontsize=8)
    fig.legend(handles=[Patch(color=c, label=k) for k, c in COLOURS.items()], loc="upper right", fontsize=8)
    if a.title:
        fig.suptitle(a.title, fontsize=11)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)


if __name__ == "__main__":
    main()
