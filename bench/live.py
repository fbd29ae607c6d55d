#!/usr/bin/env python3
"""The live bridge against the peers on one GPU: load_hf_weights from tmpfs
and export_hf_weights of the whole model, each peer in its own process on
the same random checkpoint, with the copy floor measured in the same call.

  bench/live.py MODEL_DIR --peer ours|mbridge|megatron-bridge [--log results.jsonl] [--check]

One JSON line per step to --log: seconds, bytes, extra GPU memory (the
peak allocated during the step above what the model itself holds), and with
--check whether every exported tensor equals the checkpoint's bit for bit.
After the first export, --again N more are timed (an RL loop's steady state:
the median and the fastest are logged); --profile DIR writes a
torch.profiler table of one steady export of ours.
The model is built with the local layer spec (no Transformer Engine), bf16,
on a world of one process (NCCL). `ours` is this project's package
(PYTHONPATH=build/python); `mbridge` is mbridge 0.15.1 on the same
megatron-core; `megatron-bridge` is Megatron-Bridge 0.6.2 on its own
megatron-core 0.19.2 (PYTHONPATH to a site holding the wheels that
../shared/peers/README.md lists, BRIDGE_PEERS_DIR to a copy of
../shared/peers for its stubs; bench/live.sh sets both up).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import time
from pathlib import Path

import torch
import torch.distributed as dist


def log(path: str | None, **row) -> None:
    print(json.dumps(row), flush=True)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def init_world() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", rank=0, world_size=1)
    from megatron.core import parallel_state, tensor_parallel

    parallel_state.initialize_model_parallel(1, 1)
    tensor_parallel.model_parallel_cuda_manual_seed(1234)


def checkpoint_bytes(hf: Path) -> int:
    return sum(f.stat().st_size for f in hf.glob("*.safetensors"))


def source_tensors(hf: Path):
    """name -> an open handle of the shard that holds it."""
    from safetensors import safe_open

    out = {}
    for f in sorted(hf.glob("*.safetensors")):
        h = safe_open(str(f), framework="pt", device="cpu")
        for k in h.keys():
            out[k] = h
    return out


def timed(fn):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t, torch.cuda.max_memory_allocated() - base


def steady(export, name: str, a) -> None:
    """An RL loop's every later step: the export timed AGAIN times after the
    first, the median and the fastest logged."""
    times = []
    for _ in range(a.again):
        (n, b), seconds, _ = timed(export)
        times.append(seconds)
    times.sort()
    log(a.log, label=f"{name}, again", seconds=round(times[len(times) // 2], 4), fastest=round(times[0], 4),
        runs=len(times), tensors=n, bytes=b)


def profile(export, name: str, a) -> None:
    """Where one steady export spends its time (torch.profiler, CPU and CUDA
    self times), as a table in PROFILE_DIR."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    export()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        export()
        torch.cuda.synchronize()
    out = Path(a.profile) / f"{name.replace(' ', '_')}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    averages = prof.key_averages()
    out.write_text(averages.table(sort_by="self_cpu_time_total", row_limit=20) + "\n" +
                   averages.table(sort_by="self_cuda_time_total", row_limit=12))


def floor_to_gpu(hf: Path, a, threads: int = 8, chunk: int = 64 << 20) -> None:
    """The floor of a load: every byte of the checkpoint's files read from
    tmpfs into pinned memory and copied to the GPU, by `threads` threads in
    `chunk`-byte pieces, each thread on its own stream (what a loader that
    converts nothing could do)."""
    from concurrent.futures import ThreadPoolExecutor

    files = sorted(hf.glob("*.safetensors"))
    total = sum(f.stat().st_size for f in files)
    dst = torch.empty(total, dtype=torch.uint8, device="cuda")
    pieces, offset = [], 0
    for f in files:
        size = f.stat().st_size
        for start in range(0, size, chunk):
            pieces.append((f, start, min(chunk, size - start), offset + start))
        offset += size

    def work(part):
        stream = torch.cuda.Stream()
        pinned = torch.empty(chunk, dtype=torch.uint8, pin_memory=True)
        view = memoryview(pinned.numpy())
        with torch.cuda.stream(stream):
            for f, start, n, at in part:
                with open(f, "rb", buffering=0) as h:
                    h.seek(start)
                    got = h.readinto(view[:n])
                    assert got == n
                dst[at:at + n].copy_(pinned[:n], non_blocking=True)
                stream.synchronize()

    torch.cuda.synchronize()
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, [pieces[i::threads] for i in range(threads)]))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    del dst
    torch.cuda.empty_cache()
    log(a.log, label=f"{a.name} floor: files to GPU ({threads} threads, pinned)", seconds=round(seconds, 3),
        bytes=total, gb_per_s=round(total / seconds / 1e9, 3))


def run_ours(hf: Path, a) -> None:
    floor_to_gpu(hf, a)
    from bridge import AutoBridge

    bridge = AutoBridge.from_hf_pretrained(hf)
    provider = bridge.to_megatron_provider()
    provider.params_dtype = torch.bfloat16
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    model_bytes = sum(p.numel() * p.element_size() for m in model for p in m.parameters())
    budget = {} if a.memory_budget is None else {"memory_budget": a.memory_budget << 20}
    _, load_s, load_extra = timed(lambda: bridge.load_hf_weights(model, **budget))
    log(a.log, label=f"{a.name} ours load_hf_weights", seconds=round(load_s, 3), bytes=checkpoint_bytes(hf),
        model_bytes=model_bytes, extra_gpu_bytes=load_extra)
    if a.loads > 1:
        # A diagnostic, not the result: what the first load paid once (pinned
        # blocks, the mapping's page tables) shows as the difference.
        again = sorted(timed(lambda: bridge.load_hf_weights(model, **budget))[1] for _ in range(a.loads - 1))
        log(a.log, label=f"{a.name} ours load_hf_weights, again", seconds=round(again[len(again) // 2], 3),
            fastest=round(again[0], 3), runs=len(again))

    largest = max(p.numel() * p.element_size() for m in model for p in m.parameters())

    def export():
        n = b = 0
        for name, t in bridge.export_hf_weights(model, cpu=False, bucket_size=a.bucket):
            n += 1
            b += t.numel() * t.element_size()
        return n, b

    (n, b), export_s, export_extra = timed(export)
    log(a.log, label=f"{a.name} ours export_hf_weights", seconds=round(export_s, 3), tensors=n, bytes=b,
        extra_gpu_bytes=export_extra, bucket_bytes=a.bucket, largest_tensor_bytes=largest)
    steady(export, f"{a.name} ours export_hf_weights", a)
    if a.profile:
        profile(export, f"{a.name} ours export", a)
    if a.check:
        check(a, "ours", bridge.export_hf_weights(model, cpu=False, bucket_size=a.bucket), hf)


def check(a, who: str, stream, hf: Path) -> None:
    src = source_tensors(hf)
    seen, unequal = set(), []
    for name, t in stream:
        seen.add(name)
        if name not in src:
            unequal.append(f"{name}: not in the source")
            continue
        want = src[name].get_tensor(name).to(t.device)
        if want.dtype != t.dtype or not torch.equal(want, t):
            unequal.append(name)
    missing = sorted(set(src) - seen)
    log(a.log, label=f"{a.name} {who} export equals the source", exported=len(seen), missing=missing[:10],
        missing_count=len(missing), unequal=unequal[:10], unequal_count=len(unequal))


def run_mbridge(hf: Path, a) -> None:
    import mbridge.core.llm_bridge as llm_bridge
    from mbridge import AutoBridge

    orig = llm_bridge.get_gpt_decoder_block_spec

    def local_block_spec(config, use_transformer_engine=True, **kw):  # no Transformer Engine here
        return orig(config, use_transformer_engine=False, **kw)

    llm_bridge.get_gpt_decoder_block_spec = local_block_spec
    bridge = AutoBridge.from_pretrained(str(hf))
    hc = bridge.hf_config
    if not hasattr(hc, "rope_theta"):  # transformers 5 keeps it in rope_parameters
        hc.rope_theta = (getattr(hc, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    # The local spec names the norms apart; mbridge's mappings know only TE's fused names.
    cls = type(bridge)
    if hasattr(cls, "_MLP_MAPPING"):
        cls._MLP_MAPPING = dict(cls._MLP_MAPPING)
        cls._MLP_MAPPING["pre_mlp_layernorm.weight"] = ["model.layers.{layer_number}.post_attention_layernorm.weight"]
    if hasattr(cls, "_OTHER_MAPPING"):
        cls._OTHER_MAPPING = dict(getattr(cls, "_OTHER_MAPPING", {}) or {})
        cls._OTHER_MAPPING["input_layernorm.weight"] = ["model.layers.{layer_number}.input_layernorm.weight"]
    # Torch norms (no TE, no Apex) refuse persist_layer_norm; mbridge sets it.
    bridge.set_extra_args(masked_softmax_fusion=False, perform_initialization=False, persist_layer_norm=False,
                          moe_grouped_gemm=False)
    model = bridge.get_model(wrap_with_ddp=False, bf16=True)
    _, load_s, load_extra = timed(lambda: bridge.load_weights(model, str(hf)))
    log(a.log, label=f"{a.name} mbridge load_weights", seconds=round(load_s, 3), bytes=checkpoint_bytes(hf),
        extra_gpu_bytes=load_extra)

    def export():
        n = b = 0
        for name, t in bridge.export_weights(model):
            n += 1
            b += t.numel() * t.element_size()
        return n, b

    (n, b), export_s, export_extra = timed(export)
    log(a.log, label=f"{a.name} mbridge export_weights", seconds=round(export_s, 3), tensors=n, bytes=b,
        extra_gpu_bytes=export_extra)
    steady(export, f"{a.name} mbridge export_weights", a)
    if a.check:
        check(a, "mbridge", bridge.export_weights(model), hf)


def run_megatron_bridge(hf: Path, a) -> None:
    """Megatron-Bridge 0.6.2 (its own megatron-core 0.19.2, in a site of its
    own): the stubs of ../shared/peers/mb_stubs.py (copied beside the
    checkout into $BRIDGE_PEERS_DIR) let it import without Transformer
    Engine and its training-only dependencies; its provider gets the local
    layer spec and the forward-only fusions turned off, as
    ../shared/peers/mb_import.py does for its import."""
    import importlib.util
    import sys

    sys.path.insert(0, os.environ["BRIDGE_PEERS_DIR"])
    import mb_stubs  # noqa: F401  (before megatron.bridge)
    from megatron.bridge import AutoBridge
    from megatron.bridge.models.gpt_provider import local_layer_spec

    bridge = AutoBridge.from_hf_pretrained(str(hf))
    provider = bridge.to_megatron_provider(load_weights=False)
    provider.transformer_layer_spec = local_layer_spec
    if importlib.util.find_spec("transformer_engine") is None:
        # Its bridges turn on kernels that need Transformer Engine (Qwen3-MoE:
        # grouped GEMM and fused permutation); without them its experts are
        # the local spec's SequentialMLP, as ours are.
        for f in ("apply_rope_fusion", "bias_activation_fusion", "masked_softmax_fusion", "persist_layer_norm",
                  "bias_dropout_fusion", "gradient_accumulation_fusion", "moe_grouped_gemm", "moe_permute_fusion"):
            if getattr(provider, f, False):
                setattr(provider, f, False)
    provider.params_dtype = torch.bfloat16
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    _, load_s, load_extra = timed(lambda: bridge.load_hf_weights(model))
    log(a.log, label=f"{a.name} megatron-bridge load_hf_weights", seconds=round(load_s, 3),
        bytes=checkpoint_bytes(hf), extra_gpu_bytes=load_extra)

    def export():
        n = b = 0
        for name, t in bridge.export_hf_weights(model, cpu=False, show_progress=False):
            n += 1
            b += t.numel() * t.element_size()
        return n, b

    (n, b), export_s, export_extra = timed(export)
    log(a.log, label=f"{a.name} megatron-bridge export_hf_weights", seconds=round(export_s, 3), tensors=n, bytes=b,
        extra_gpu_bytes=export_extra)
    steady(export, f"{a.name} megatron-bridge export_hf_weights", a)
    if a.check:
        check(a, "megatron-bridge", bridge.export_hf_weights(model, cpu=False, show_progress=False), hf)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("hf")
    ap.add_argument("--peer", choices=["ours", "mbridge", "megatron-bridge"], default="ours")
    ap.add_argument("--name", default="")
    ap.add_argument("--log")
    ap.add_argument("--bucket", type=int, default=256 << 20)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--again", type=int, default=5, help="steady exports timed after the first (median logged)")
    ap.add_argument("--memory-budget", type=int, help="MiB of temporaries in flight during our load (default: ours)")
    ap.add_argument("--loads", type=int, default=1, help="loads timed (ours); the later ones logged apart")
    ap.add_argument("--profile", help="a directory for a torch.profiler table of one steady export (ours)")
    a = ap.parse_args()
    hf = Path(a.hf)
    a.name = a.name or hf.name
    if a.peer == "megatron-bridge":
        # It sets up torch.distributed and its parallel state itself.
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ.setdefault("MASTER_PORT", str(s.getsockname()[1]))
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", "0")
        run_megatron_bridge(hf, a)
    else:
        init_world()
        {"ours": run_ours, "mbridge": run_mbridge}[a.peer](hf, a)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
