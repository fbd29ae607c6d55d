"""`bridge-run reshard`: a torch_dist checkpoint written by import, re-cut for
another TP/PP/EP/ETP layout without going through HF tensors.

The oracle is `bridge-run import` of the same HF model at the target layout
(itself checked against megatron-core elsewhere): every file of the reshard,
`.distcp` data, `.metadata`, sidecar and run config, must be byte-identical to
it, after any chain of reshards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tiny_models


def _run(bridge_run, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(bridge_run.path), *args, "--quiet"], capture_output=True, text=True)


def _layout_args(layout: dict) -> list[str]:
    return [a for k, v in layout.items() for a in (f"--{k}", str(v))]


def _files(mg: Path) -> dict[str, bytes]:
    return {str(p.relative_to(mg)): p.read_bytes() for p in sorted(mg.rglob("*")) if p.is_file()}


def _assert_identical(got: Path, want: Path) -> None:
    a, b = _files(got), _files(want)
    assert sorted(a) == sorted(b)
    for name in b:
        assert a[name] == b[name], name


def _fits(ckpt, layout: dict) -> bool:
    cfg = ckpt.text_config_json
    tp, pp, ep = layout.get("tp", 1), layout.get("pp", 1), layout.get("ep", 1)
    kv = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    experts = cfg.get("num_experts") or cfg.get("num_local_experts") or cfg.get("n_routed_experts") or 1
    layers = cfg.get("num_hidden_layers") or len(cfg.get("layers_block_type") or [])
    return (cfg["num_attention_heads"] % tp == 0 and kv % tp == 0 and layers % pp == 0
            and experts % ep == 0)


CHAINS = [
    ("llama3.2-1b", [{"tp": 1}, {"tp": 2}, {"pp": 2}, {"tp": 1}]),
    ("qwen2.5-7b", [{"tp": 1}, {"pp": 2}, {"tp": 2, "pp": 2}, {"tp": 1}]),
    ("qwen3-30b-a3b", [{"tp": 1}, {"ep": 2}, {"tp": 2, "ep": 2, "etp": 1}, {"ep": 4}, {"tp": 1}]),
    ("mixtral-8x7b", [{"tp": 2, "ep": 2, "etp": 2}, {"tp": 1}, {"ep": 4}]),
    # A vision tower kept as HF has it travels through every layout unchanged.
    ("qwen2.5-vl-7b", [{"tp": 2}, {"pp": 2}, {"tp": 1}]),
    # Mamba in_proj and conv1d parts, each cut over TP on its own; MoE layers.
    ("nemotron-3-nano", [{"tp": 2}, {"tp": 2, "ep": 2}, {"pp": 2}, {"tp": 1}]),
    ("deepseek-v3", [{"tp": 1}, {"tp": 2}, {"tp": 4}, {"tp": 2, "ep": 2}, {"pp": 2}, {"tp": 1}]),
]


@pytest.mark.parametrize("family_id,chain", CHAINS, ids=[c[0] for c in CHAINS])
def test_reshard_chain_equals_direct_imports(bridge_run, tiny_checkpoints, tmp_path, family_id, chain):
    ckpt = tiny_checkpoints(family_id)
    assert all(_fits(ckpt, layout) for layout in chain), "a layout of the chain does not fit the tiny model"
    direct = {}

    def direct_import(layout: dict) -> Path:
        key = json.dumps(layout, sort_keys=True)
        if key not in direct:
            out = tmp_path / f"direct-{len(direct)}"
            r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(out), *_layout_args(layout))
            assert r.returncode == 0, r.stderr
            direct[key] = out
        return direct[key]

    current = direct_import(chain[0])
    for step, layout in enumerate(chain[1:], 1):
        out = tmp_path / f"reshard-{step}"
        r = _run(bridge_run, "reshard", "--megatron", str(current), "--out", str(out), *_layout_args(layout))
        assert r.returncode == 0, r.stderr
        _assert_identical(out, direct_import(layout))
        current = out
    # Back at the start: the first checkpoint, byte for byte.
    if chain[-1] == chain[0]:
        _assert_identical(current, direct[json.dumps(chain[0], sort_keys=True)])


def test_reshard_of_a_dequantized_fp8_import(bridge_run, tiny_checkpoints, tmp_path):
    """The sidecar records the FP8 source layout; a reshard keeps it, so its
    export still writes the dequantized model."""
    from test_fp8 import _quantize

    src = tmp_path / "fp8"
    _quantize(tiny_checkpoints("deepseek-v3").path, src)
    for name, layout in (("a", ["--tp", "1"]), ("b", ["--tp", "2", "--ep", "2"])):
        r = _run(bridge_run, "import", "--hf", str(src), "--out", str(tmp_path / name), *layout)
        assert r.returncode == 0, r.stderr
    r = _run(bridge_run, "reshard", "--megatron", str(tmp_path / "a"), "--out", str(tmp_path / "ab"),
             "--tp", "2", "--ep", "2")
    assert r.returncode == 0, r.stderr
    _assert_identical(tmp_path / "ab", tmp_path / "b")


def test_reshard_by_several_processes(bridge_run, tiny_checkpoints, tmp_path):
    import socket

    ckpt = tiny_checkpoints("qwen3-30b-a3b")
    for name, layout in (("a", []), ("b", ["--tp", "2", "--ep", "2"])):
        r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(tmp_path / name), *layout)
        assert r.returncode == 0, r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "3", "--master_addr",
                        "127.0.0.1", "--master_port", str(port), "--no-python", str(bridge_run.path), "reshard",
                        "--megatron", str(tmp_path / "a"), "--out", str(tmp_path / "ab"), "--tp", "2", "--ep", "2",
                        "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    from test_multiprocess import _assert_same_checkpoint

    _assert_same_checkpoint(tmp_path / "ab", tmp_path / "b")


def test_reshard_refuses_what_does_not_fit(bridge_run, tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints("qwen3-30b-a3b")
    mg = tmp_path / "mg"
    assert _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(mg)).returncode == 0
    # A layout the model does not divide: the import's own diagnostics, nothing written.
    r = _run(bridge_run, "reshard", "--megatron", str(mg), "--out", str(tmp_path / "x"), "--ep", "3")
    assert r.returncode == 1 and "num_moe_experts 4 is not divisible by EP 3" in r.stderr
    assert not (tmp_path / "x").exists()
    # Not a checkpoint written by import.
    bare = tmp_path / "bare"
    (bare / "iter_0000000").mkdir(parents=True)
    (bare / "latest_checkpointed_iteration.txt").write_text("0")
    r = _run(bridge_run, "reshard", "--megatron", str(bare), "--out", str(tmp_path / "y"), "--tp", "2")
    assert r.returncode == 1 and "has no bridge.json" in r.stderr
    # A key missing from the source's metadata is named.
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(mg), str(broken)], check=True)
    side = broken / "iter_0000000" / "bridge.json"
    data = json.loads(side.read_text())
    data["megatron_config"]["num_layers"] = data["megatron_config"]["num_layers"] + 1
    side.write_text(json.dumps(data))
    r = _run(bridge_run, "reshard", "--megatron", str(broken), "--out", str(tmp_path / "z"), "--tp", "2")
    assert r.returncode == 1 and "global shape that does not fit its config" in r.stderr, r.stderr
    assert not (tmp_path / "z").exists() and not list(tmp_path.glob("z.partial-*"))
    # The layer spec is the source's: --local-spec on a TE checkpoint is refused.
    r = _run(bridge_run, "reshard", "--megatron", str(mg), "--out", str(tmp_path / "w"), "--local-spec")
    assert r.returncode == 1 and "--local-spec does not apply" in r.stderr, r.stderr
    # The source itself is never the output, even with --overwrite; an
    # existing output is refused without --overwrite.
    r = _run(bridge_run, "reshard", "--megatron", str(mg), "--out", str(mg), "--tp", "2", "--overwrite")
    assert r.returncode == 1 and "is the input" in r.stderr, r.stderr
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "latest_checkpointed_iteration.txt").write_text("0")
    r = _run(bridge_run, "reshard", "--megatron", str(mg), "--out", str(tmp_path / "earlier"), "--tp", "2")
    assert r.returncode == 1 and "exists; pass --overwrite" in r.stderr


@pytest.mark.parametrize("family_id,layout", [("llama3.2-1b", ["--tp", "2", "--pp", "2"]),
                                              ("qwen3-30b-a3b", ["--tp", "2", "--ep", "2", "--etp", "1"])],
                         ids=["llama3.2-1b", "qwen3-30b-a3b"])
def test_reshard_into_the_legacy_format_equals_a_direct_legacy_import(bridge_run, tiny_checkpoints, tmp_path,
                                                                      family_id, layout):
    ckpt = tiny_checkpoints(family_id)
    assert _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(tmp_path / "dist")).returncode == 0
    r = _run(bridge_run, "reshard", "--megatron", str(tmp_path / "dist"), "--out", str(tmp_path / "legacy"),
             "--format", "torch", *layout)
    assert r.returncode == 0, r.stderr
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(tmp_path / "direct"), "--format", "torch",
             *layout)
    assert r.returncode == 0, r.stderr
    _assert_identical(tmp_path / "legacy", tmp_path / "direct")


FORMAT_CHAINS = [
    ("llama3.2-1b", [("torch_dist", {}), ("torch", {"tp": 2, "pp": 2}), ("torch_dist", {"tp": 2}),
                     ("torch", {}), ("torch_dist", {})]),
    ("qwen3-30b-a3b", [("torch_dist", {}), ("torch", {"tp": 2, "ep": 2, "etp": 1, "pp": 2}),
                       ("torch", {"ep": 4}), ("torch_dist", {"tp": 2, "ep": 2}), ("torch", {"tp": 2, "ep": 2, "etp": 2})]),
    ("mixtral-8x7b", [("torch_dist", {"tp": 2}), ("torch", {"tp": 2, "ep": 2, "etp": 2}), ("torch_dist", {})]),
    ("deepseek-v3", [("torch_dist", {}), ("torch", {"tp": 2, "ep": 2, "etp": 1}), ("torch_dist", {"tp": 4})]),
]


@pytest.mark.parametrize("family_id,chain", FORMAT_CHAINS, ids=[c[0] for c in FORMAT_CHAINS])
def test_reshard_between_formats_equals_direct_imports(bridge_run, tiny_checkpoints, tmp_path, family_id, chain):
    """torch_dist <-> legacy at changing layouts: every step's files equal a
    direct import of the HF model in that format and layout."""
    ckpt = tiny_checkpoints(family_id)
    current = None
    for step, (fmt, layout) in enumerate(chain):
        direct = tmp_path / f"direct-{step}"
        r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(direct), "--format", fmt,
                 *_layout_args(layout))
        assert r.returncode == 0, r.stderr
        if current is not None:
            out = tmp_path / f"reshard-{step}"
            r = _run(bridge_run, "reshard", "--megatron", str(current), "--out", str(out), "--format", fmt,
                     *_layout_args(layout))
            assert r.returncode == 0, r.stderr
            _assert_identical(out, direct)
            current = out
        else:
            current = direct


def test_reshard_of_a_broken_legacy_checkpoint_names_the_problem(bridge_run, tiny_checkpoints, tmp_path):
    import argparse
    import torch

    ckpt = tiny_checkpoints("llama3.2-1b")
    mg = tmp_path / "mg"
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(mg), "--format", "torch", "--tp", "2")
    assert r.returncode == 0, r.stderr
    rank1 = mg / "iter_0000000" / "mp_rank_01" / "model_optim_rng.pt"
    with torch.serialization.safe_globals([argparse.Namespace]):
        state = torch.load(str(rank1), weights_only=True)

    def broken(name, edit):
        d = tmp_path / name
        subprocess.run(["cp", "-r", str(mg), str(d)], check=True)
        s = {k: v for k, v in state.items()}
        s["model"] = dict(state["model"])
        edit(s["model"])
        torch.save(s, str(d / "iter_0000000" / "mp_rank_01" / "model_optim_rng.pt"))
        return d

    norm = "decoder.final_layernorm.weight"
    cases = [
        (broken("extra", lambda m: m.__setitem__("decoder.layers.9.mlp.linear_fc1.weight", torch.zeros(2))),
         "tensor(s) no planned tensor accounts for:", "mp_rank_01/model_optim_rng.pt: decoder.layers.9.mlp.linear_fc1"),
        (broken("missing", lambda m: m.pop(norm)), "tensor(s) the model needs are missing:",
         f"mp_rank_01/model_optim_rng.pt: {norm}"),
        (broken("differs", lambda m: m.__setitem__(norm, m[norm] + 1)), "differs between TP rank 0 and TP rank 1",
         norm),
    ]
    for d, what, where in cases:
        out = tmp_path / f"out-{d.name}"
        r = _run(bridge_run, "reshard", "--megatron", str(d), "--out", str(out))
        assert r.returncode == 1 and what in r.stderr and where in r.stderr, r.stderr
        assert not out.exists() and not list(tmp_path.glob(f"out-{d.name}.partial-*"))
    (mg / "iter_0000000" / "mp_rank_01" / "model_optim_rng.pt").unlink()
    r = _run(bridge_run, "reshard", "--megatron", str(mg), "--out", str(tmp_path / "gone"))
    assert r.returncode == 1 and "mp_rank_01/model_optim_rng.pt" in r.stderr and "one file per rank" in r.stderr
    # export reads torch_dist only, and says what to do.
    r = _run(bridge_run, "export", "--megatron", str(tmp_path / "extra"), "--out", str(tmp_path / "hf"))
    assert r.returncode == 1 and "export reads torch_dist: run 'bridge-run reshard" in r.stderr, r.stderr


def test_verify_checks_every_record_against_the_manifest(bridge_run, tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints("qwen3-30b-a3b")
    mg = tmp_path / "mg"
    assert _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(mg), "--tp", "2", "--ep", "2").returncode == 0
    r = subprocess.run([str(bridge_run.path), "verify", str(mg)], capture_output=True, text=True)
    assert r.returncode == 0 and "against manifest.json: all match" in r.stdout, r.stdout + r.stderr
    manifest = json.loads((mg / "iter_0000000" / "manifest.json").read_text())
    assert manifest["chunks"] and all(c["crc32"] for c in manifest["chunks"])
    # One flipped byte inside a tensor chunk: named by file, offset and key.
    chunk = max(manifest["chunks"], key=lambda c: c["length"])
    f = mg / "iter_0000000" / chunk["file"]
    data = bytearray(f.read_bytes())
    data[chunk["offset"] + chunk["length"] - 3] ^= 0x40
    f.write_bytes(bytes(data))
    r = subprocess.run([str(bridge_run.path), "verify", str(mg)], capture_output=True, text=True)
    assert r.returncode == 1 and chunk["key"] in r.stderr and "1 problem(s)" in r.stdout, r.stdout + r.stderr
    # An export against its source, and against something else.
    out = tmp_path / "hf"
    good = tmp_path / "good"
    assert _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(good)).returncode == 0
    assert _run(bridge_run, "export", "--megatron", str(good), "--out", str(out)).returncode == 0
    r = subprocess.run([str(bridge_run.path), "verify", str(out), "--against", str(ckpt.path)], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "all match" in r.stdout, r.stdout + r.stderr
    other = tiny_checkpoints("qwen3-8b").path
    r = subprocess.run([str(bridge_run.path), "verify", str(out), "--against", str(other)], capture_output=True,
                       text=True)
    assert r.returncode == 1 and "problem(s)" in r.stdout


def test_reshard_reads_a_legacy_checkpoint_megatron_lm_saved(bridge_run, tiny_checkpoints, tmp_path):
    """A legacy checkpoint without bridge.json, each rank file re-saved by
    torch.save as Megatron-LM writes it (args a Namespace holding Megatron's
    own enums, numpy RNG state, an optimizer): with --hf, reshard takes the
    model from the HF checkpoint and the layout from the files' args, and
    gives the bytes of a direct import."""
    import argparse

    import numpy as np
    import torch

    ckpt = tiny_checkpoints("qwen3-30b-a3b")
    legacy = tmp_path / "legacy"
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(legacy), "--format", "torch",
             "--tp", "2", "--pp", "2", "--ep", "2", "--etp", "1")
    assert r.returncode == 0, r.stderr
    it = legacy / "iter_0000000"
    (it / "bridge.json").unlink()
    try:
        from megatron.core.transformer.enums import AttnBackend
        backend = AttnBackend.auto
    except ImportError:  # the enum is only a planted name; any class of megatron's will do
        backend = None
    for f in it.glob("mp_rank_*/model_optim_rng.pt"):
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(str(f), weights_only=True)
        args = argparse.Namespace(**vars(state["args"]), attention_backend=backend)
        rng = np.random.RandomState(0).get_state()
        torch.save({"args": args, "checkpoint_version": 3.0, "iteration": 1000, "model": state["model"],
                    "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4}]},
                    "rng_state": [{"random_rng_state": (3, (1, 2), None), "np_rng_state": rng,
                                   "torch_rng_state": torch.get_rng_state()}]}, str(f))
    r = _run(bridge_run, "reshard", "--megatron", str(legacy), "--out", str(tmp_path / "x"))
    assert r.returncode == 1 and "pass --hf with the model's HF checkpoint directory" in r.stderr, r.stderr
    for fmt, layout in (("torch_dist", []), ("torch", ["--ep", "4"])):
        out, direct = tmp_path / f"from-legacy-{fmt}", tmp_path / f"direct-{fmt}"
        r = _run(bridge_run, "reshard", "--megatron", str(it), "--hf", str(ckpt.path), "--out", str(out),
                 "--format", fmt, *layout)
        assert r.returncode == 0, r.stderr
        r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(direct), "--format", fmt, *layout)
        assert r.returncode == 0, r.stderr
        _assert_identical(out, direct)
