#!/usr/bin/env python3
"""Write a full-size random HF checkpoint for a published config.json, without
building the model: names and shapes come from transformers on the meta
device, the bytes from torch's RNG (on the GPU when there is one), written in
~5 GB safetensors shards with an index, as save_pretrained lays them out.

  gen_checkpoint.py CONFIG.json OUT_DIR [--layers N] [--fp8-block]

--layers N keeps the first N decoder layers (a truncated model).
--fp8-block stores every 2-D '*_proj.weight' / expert weight (not the router)
as float8_e4m3fn with 128x128 'weight_scale_inv' blocks, as DeepSeek-V3 does.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

SHARD_BYTES = 5 * 1024**3


def shapes_of(config: dict) -> dict[str, tuple[torch.Size, torch.dtype]]:
    import transformers

    cfg = dict(config)
    cfg.pop("quantization_config", None)
    model_type = cfg.pop("model_type")
    cfg.pop("transformers_version", None)
    hf = transformers.AutoConfig.for_model(model_type, **cfg)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf)
    # save_pretrained's names (transformers 5 may fuse experts in memory and
    # split them again on save): ask it for the on-disk layout.
    sd = model.state_dict()
    try:
        from transformers.core_model_loading import revert_weight_conversion

        sd = revert_weight_conversion(model, sd)
    except Exception:  # noqa: BLE001 - older/newer transformers: names as in memory
        pass
    out = {}
    seen = set()
    for name, t in sd.items():
        if t.untyped_storage().data_ptr() in seen and "lm_head" in name and hf.tie_word_embeddings:
            continue
        out[name] = (t.shape, t.dtype)
    if hf.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("out")
    ap.add_argument("--layers", type=int)
    ap.add_argument("--fp8-block", action="store_true")
    ap.add_argument("--dtype", default="bfloat16")
    a = ap.parse_args()
    config = json.loads(Path(a.config).read_text())
    if a.layers:
        config["num_hidden_layers"] = a.layers
        for key in ("layer_types", "attn_type_list", "mlp_only_layers"):
            if isinstance(config.get(key), list):
                config[key] = config[key][: a.layers]
        config["num_nextn_predict_layers"] = 0 if "num_nextn_predict_layers" in config else None
        config = {k: v for k, v in config.items() if v is not None}
    dtype = getattr(torch, a.dtype)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    names = shapes_of(config)
    shard, shard_bytes, shards, weight_map, total = {}, 0, [], {}, 0
    gen = torch.Generator(device=dev).manual_seed(0)

    def flush():
        nonlocal shard, shard_bytes
        if shard:
            shards.append(shard)
            shard, shard_bytes = {}, 0

    pending = []
    for name, (shape, _) in names.items():
        quant = a.fp8_block and len(shape) == 2 and (name.endswith("_proj.weight") or ".experts." in name) \
            and ".mlp.gate." not in name and "embed" not in name and "lm_head" not in name
        if quant:
            w = (torch.randn(*shape, device=dev, generator=gen) * 4).to(torch.float8_e4m3fn)
            bm, bn = -(-shape[0] // 128), -(-shape[1] // 128)
            s = torch.rand(bm, bn, device=dev, generator=gen) * 1e-3
            items = [(name, w), (name + "_scale_inv", s)]
        else:
            items = [(name, (torch.randn(*shape, device=dev, generator=gen) * 0.02).to(dtype))]
        for n, t in items:
            nbytes = t.numel() * t.element_size()
            if shard_bytes + nbytes > SHARD_BYTES:
                pending.append(shard)
                shard, shard_bytes = {}, 0
            shard[n] = t.cpu()
            shard_bytes += nbytes
            total += nbytes
        if len(pending):
            _write(out, pending, weight_map)
            pending = []
    if shard:
        pending.append(shard)
    _write(out, pending, weight_map, final=True)
    files = sorted({f for f in weight_map.values()})
    count = len(files)
    # Rename to model-0000i-of-0000N.safetensors now that N is known.
    rename = {}
    for i, f in enumerate(files):
        new = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
        (out / f).rename(out / new)
        rename[f] = new
    weight_map = {k: rename[v] for k, v in weight_map.items()}
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    if a.fp8_block:
        config["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                         "weight_block_size": [128, 128]}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    print(f"{out}: {len(weight_map)} tensors, {total / 1e9:.2f} GB in {count} shards, {time.time() - start:.1f} s")


_counter = [0]


def _write(out: Path, shards: list, weight_map: dict, final: bool = False) -> None:
    for shard in shards:
        _counter[0] += 1
        name = f"part-{_counter[0]:05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        for k in shard:
            weight_map[k] = name


if __name__ == "__main__":
    main()
