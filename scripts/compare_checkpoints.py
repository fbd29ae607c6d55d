#!/usr/bin/env python3
"""Compares two HF safetensors checkpoints tensor by tensor, bit for bit
(names, dtypes, shapes, bytes, shard files). Exit 1 on any difference."""
import pathlib
import sys

from safetensors import safe_open


def load(d: pathlib.Path):
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                out[k] = (f.name, st.get_tensor(k))
    return out


def main():
    a, b = (load(pathlib.Path(p)) for p in sys.argv[1:3])
    bad = sorted(set(a) ^ set(b))
    for k in sorted(set(a) & set(b)):
        (fa, ta), (fb, tb) = a[k], b[k]
        if fa != fb or ta.dtype != tb.dtype or ta.shape != tb.shape or not ta.view(-1).view(
                dtype=__import__("torch").uint8).equal(tb.view(-1).view(dtype=__import__("torch").uint8)):
            bad.append(k)
    if bad:
        print(f"{len(bad)} tensor(s) differ: {', '.join(bad[:10])}")
        return 1
    print(f"round trip: all {len(a)} tensors bit-identical ({sys.argv[1]} vs {sys.argv[2]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
