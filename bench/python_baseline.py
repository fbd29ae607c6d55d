#!/usr/bin/env python3
"""The route users take today, idealized: read the HF safetensors with the
safetensors library, apply the same transforms with torch (QKV interleave per
query group, gate/up fusion, FP8 block dequantization, expert slicing), hold
the Megatron state dict in memory, and save it with
torch.distributed.checkpoint (one process, no model built). Megatron-Bridge
does this and more (it also builds the model); this is its floor.

  python_baseline.py --hf DIR --out DIR --bridge-run PATH [--device cuda]

The tensor names and recipes come from `bridge-run plan --json` (the same
mapping), so both routes move the same bytes.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors import safe_open


def split_args(text: str) -> list[str]:
    depth, out, cur = 0, [], ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


class Reader:
    def __init__(self, hf: Path, device: str):
        index = hf / "model.safetensors.index.json"
        if index.exists():
            self.file_of = json.loads(index.read_text())["weight_map"]
        else:
            with safe_open(str(hf / "model.safetensors"), "pt") as f:
                self.file_of = {k: "model.safetensors" for k in f.keys()}
        self.handles = {f: safe_open(str(hf / f), "pt", device="cpu") for f in set(self.file_of.values())}
        self.device = device
        self.bytes = 0

    def has(self, name: str) -> bool:
        return name in self.file_of

    def get(self, name: str) -> torch.Tensor:
        t = self.handles[self.file_of[name]].get_tensor(name)
        self.bytes += t.numel() * t.element_size()
        return t.to(self.device)


def evaluate(recipe: str, r: Reader, meg: dict) -> torch.Tensor | None:
    recipe = recipe.strip()
    if "(" not in recipe:
        name = recipe.rstrip("?")
        if recipe.endswith("?") and not r.has(name):
            return None
        return r.get(name)
    op, rest = recipe.split("(", 1)
    op = op.strip()
    args = split_args(rest[: rest.rindex(")")])
    params = {a.split("=")[0].strip(): a.split("=", 1)[1].strip() for a in args if "=" in a and "(" not in a.split("=")[0]}
    ins = [evaluate(a, r, meg) for a in args if not ("=" in a and "(" not in a.split("=")[0])]
    if op == "qkv":
        q, k, v = ins
        ng, nh, d = meg["num_query_groups"], meg["num_attention_heads"], meg["kv_channels"]
        rest_shape = q.shape[1:]
        parts = [q.reshape(ng, nh // ng * d, *rest_shape), k.reshape(ng, d, *rest_shape), v.reshape(ng, d, *rest_shape)]
        return torch.cat(parts, 1).reshape(-1, *rest_shape)
    if op == "gated_mlp":
        return torch.cat(ins, 0)
    if op == "dequant_fp8_block":
        w, s = ins
        if s is None:
            return w
        m, n = w.shape
        full = s.float().repeat_interleave(128, 0).repeat_interleave(128, 1)[:m, :n]
        return (w.float() * full).to(torch.bfloat16)
    if op == "dequant_fp8":
        w, s = ins
        return w if s is None else (w.float() * s.float().reshape(-1, *([1] * (w.dim() - 1)))).to(torch.bfloat16)
    if op == "expert":
        return ins[0][int(params["index"])]
    if op == "transpose":
        return ins[0].t().contiguous()
    if op == "gate_up_interleaved":
        x = ins[0]
        return torch.cat([x[0::2], x[1::2]], 0)
    raise SystemExit(f"python_baseline: no transform for op {op!r} ({recipe})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--bridge-run", required=True)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    plan = json.loads(subprocess.run([a.bridge_run, "plan", "--hf", a.hf, "--json"], capture_output=True, text=True,
                                     check=True).stdout)
    meg = json.loads(subprocess.run([a.bridge_run, "config", "--hf", a.hf, "--json"], capture_output=True, text=True,
                                    check=True).stdout)["megatron"]
    start = time.time()
    r = Reader(Path(a.hf), a.device)
    state = {}
    for t in plan["tensors"]:
        state[t["name"]] = evaluate(t["recipe"], r, meg).contiguous().cpu()
    read_s = time.time() - start
    dcp.save(state, checkpoint_id=a.out, no_dist=True)
    total = sum(v.numel() * v.element_size() for v in state.values())
    print(json.dumps({"tensors": len(state), "bytes_read": r.bytes, "bytes_written": total,
                      "read_transform_s": round(read_s, 2), "total_s": round(time.time() - start, 2)}))


if __name__ == "__main__":
    main()
