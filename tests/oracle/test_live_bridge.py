"""The live bridge (python/bridge, docs/live-bridge.md) against the real
things, on CPU with gloo: Megatron-Core models built by bridge's provider at
several layouts under torchrun, filled by load_hf_weights, compared with
`bridge-run import` + dist_checkpointing.load and with transformers' logits,
streamed back out by export_hf_weights bit for bit, and written by
save_hf_pretrained into a checkpoint transformers loads. Each job's ranks
report to JSON files (tests/live/live_worker.py); the assertions are here.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORKER = ROOT / "tests" / "live" / "live_worker.py"
PACKAGE = ROOT / "build" / "python"  # the default build; else beside the bridge-run tested
LOGITS_ATOL = 1e-5


_BUILD: list[Path] = []


@pytest.fixture(autouse=True)
def _build_of(bridge_run):
    # The package is built beside the bridge-run under test: BUILD/python.
    _BUILD[:] = [Path(bridge_run.path).resolve().parents[1]]


def _package() -> Path:
    package = _BUILD[0] / "python" if _BUILD else PACKAGE
    if not list((package / "bridge").glob("_C*.so")):
        pytest.fail(f"the live bridge's extension is not built in {package / 'bridge'} (cmake --build build)")
    return package


def _bridge_run(bridge_run, *args: str) -> None:
    r = subprocess.run([str(bridge_run.path), *args, "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def _env(**extra: str) -> dict:
    # The package first; whatever the caller's PYTHONPATH adds (megatron-core
    # installed with --target on a GPU host) after it.
    path = os.pathsep.join(p for p in (str(_package()), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job(nproc: int, out: Path, *args: str, device: str = "cpu") -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    env = _env(OMP_NUM_THREADS="1")
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        env.pop("CUDA_VISIBLE_DEVICES", None)  # conftest hides the GPU from CPU runs
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                        "--master-port", str(_port()), str(WORKER), "--out", str(out), "--device", device,
                        *args],
                       env=env, capture_output=True, text=True, timeout=600)
    reports = [json.loads((out / f"rank-{r_}.json").read_text()) for r_ in range(nproc)
               if (out / f"rank-{r_}.json").exists()]
    assert len(reports) == nproc, f"torchrun exit {r.returncode}:\n{r.stderr[-4000:]}"
    for rep in reports:
        assert "error" not in rep, f"rank {rep['rank']}:\n{rep['error']}"
    return reports


# Virtual pipeline stages need more layers than the tiny models' two.
FOUR_LAYERS = "llama3.1-8b-4l"


def _four_layers(out: Path):
    """The tiny Llama-3.1-8B with four layers, made by transformers."""
    import torch
    import transformers

    import tiny_models

    family = tiny_models.FAMILY_BY_ID["llama3.1-8b"]
    cfg = tiny_models.tiny_hf_config(family)
    cfg.num_hidden_layers = 4
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.05)
    model.save_pretrained(out)
    return tiny_models.TinyCheckpoint(family=family, path=out, origin="tiny", tensors={}, num_parameters=0)


@pytest.fixture(scope="module")
def prepared(bridge_run, tiny_checkpoints, tmp_path_factory):
    """family -> (checkpoint, what `bridge-run export` of its import writes)."""
    cache = {}

    def get(family: str):
        if family not in cache:
            root = tmp_path_factory.mktemp(f"live-{family}")
            ckpt = _four_layers(root / "src") if family == FOUR_LAYERS else tiny_checkpoints(family)
            mg = root / "mg"
            # A hybrid model is built with the TE spec's torch_dist keys
            # (megatron_model.mamba_local_spec): import with those.
            hybrid = family in HYBRID
            _bridge_run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(mg),
                        *([] if hybrid else ["--local-spec"]))
            hf = root / "hf"
            _bridge_run(bridge_run, "export", "--megatron", str(mg), "--out", str(hf))
            cache[family] = (ckpt, hf, mg)
        return cache[family]

    return get


# (family, layout flags, processes). llama3.1-8b: dense, untied (with four
# layers for virtual pipeline stages); llama3.2-1b:
# tied embeddings (megatron-core 0.16.1 moves a tied embedding to CUDA when
# PP > 1, so only TP here); qwen3-30b-a3b: MoE with q/k norms.
LAYOUTS = [
    ("llama3.1-8b", ["--tp", "2"], 2),
    ("llama3.1-8b", ["--pp", "2"], 2),
    ("llama3.1-8b", ["--tp", "2", "--pp", "2"], 4),
    ("llama3.2-1b", ["--tp", "2"], 2),
    ("qwen3-30b-a3b", ["--ep", "2"], 2),
    ("qwen3-30b-a3b", ["--tp", "2", "--etp", "1"], 2),
    ("qwen3-30b-a3b", ["--pp", "2", "--ep", "2"], 4),
    (FOUR_LAYERS, ["--pp", "2", "--vpp", "2"], 2),
    # One layout for each other family megatron-core builds on CPU, for its
    # ops: biases (Qwen2.5), sliding windows (Mistral, Phi-3, gpt-oss), the
    # fused qkv_concat (Phi-3), shared experts and dense first layers (GLM),
    # full-width q/k norms (OLMoE, MiniMax-M2: TP 1 only in our builder),
    # interleaved gate/up of stacked experts with biases (gpt-oss).
    ("mistral-7b", ["--tp", "2"], 2),
    ("qwen2.5-7b", ["--tp", "2"], 2),
    ("qwen3-8b", ["--tp", "2"], 2),
    ("phi3-mini", ["--tp", "2"], 2),
    ("gemma-7b", ["--tp", "2"], 2),
    ("nemotron-4-15b", ["--tp", "2"], 2),
    ("mixtral-8x7b", ["--ep", "2"], 2),
    ("glm4.5-air", ["--tp", "2"], 2),
    ("glm4.5-air", ["--ep", "2"], 2),
    ("olmoe-1b-7b", ["--ep", "2"], 2),
    ("minimax-m2", ["--ep", "2"], 2),
    ("gpt-oss-20b", ["--ep", "2"], 2),
    ("gpt-oss-20b", ["--tp", "2", "--etp", "1"], 2),
    # Hybrid Mamba models (MambaModel): in_proj and conv1d are one parameter
    # each that the mapping writes in parts (row blocks), cut part by part
    # over TP. No virtual pipeline stages: megatron-core 0.16.1's MambaStack
    # asserts virtual_pipeline_model_parallel_size is None. No logits: its
    # Mamba mixer runs only with mamba_ssm's kernels (MAMBA_FORWARD_UNAVAILABLE).
    ("nemotron-h-56b", ["--tp", "2"], 2),
    ("nemotron-h-56b", ["--pp", "2"], 2),
    ("nemotron-3-nano", ["--ep", "2"], 2),
    # Gated DeltaNet (Qwen3-Next): in_proj and conv1d are one parameter each
    # that the mapping writes in parts, cut part by part over TP; megatron-
    # core computes it on CPU with its own torch delta rule, so logits too.
    ("qwen3-next-80b-a3b", ["--tp", "2"], 2),
    ("qwen3-next-80b-a3b", ["--ep", "2"], 2),
    ("qwen3.5-27b", ["--tp", "2"], 2),
    # A VLM (Megatron-Bridge's Qwen25VLModel shape): the GPTModel under
    # language_model, the HF vision tower whole on every TP rank of the first
    # stage. Gemma 3 VL: megatron-core 0.16.1 cannot build Gemma's language
    # model (megatron_model.POST_LAYERNORM_UNSUPPORTED).
    ("qwen2.5-vl-7b", ["--tp", "2"], 2),
    ("qwen2.5-vl-7b", ["--pp", "2"], 2),
]

# Families whose MambaModel megatron-core builds here but cannot run.
HYBRID = {"nemotron-h-56b", "nemotron-3-nano"}
# Vision-language models, and where their vision tower's tensors are.
VLM = {"qwen2.5-vl-7b"}
VISION_PREFIXES = ("visual.", "vision_tower.")


def _vision_tower_bytes(ckpt: Path) -> int:
    from safetensors import safe_open

    n = 0
    for f in ckpt.glob("*.safetensors"):
        with safe_open(str(f), "pt") as s:
            n += sum(s.get_tensor(k).nbytes for k in s.keys() if k.startswith(VISION_PREFIXES))
    return n


# On a GPU host (--bridge-device cuda): world size 1 on the one GPU, NCCL.
CUDA_LAYOUTS = [("llama3.1-8b", [], 1), ("llama3.2-1b", [], 1), ("qwen3-30b-a3b", [], 1)]


def _zero_exports(bridge_run, ckpt) -> str:
    """JSON: each HF tensor a zero Megatron tensor does not export as zero,
    and its value: a norm_offset(H, delta) rule's H is the Megatron tensor
    minus delta (Qwen3-Next's gated norm)."""
    out = {}
    for t in bridge_run.plan(str(ckpt.path))["tensors"]:
        m = re.fullmatch(r"norm_offset\((.+), delta = (.+)\)", t["recipe"])
        if m:
            out[m.group(1)] = -float(m.group(2))
    return json.dumps(out)


def _layout_id(f, layout, nproc):
    return f"{f}-{'-'.join(layout).replace('--', '') or 'one'}"


@pytest.mark.parametrize("family,layout,nproc", LAYOUTS + CUDA_LAYOUTS,
                         ids=[_layout_id(*x) for x in LAYOUTS + CUDA_LAYOUTS])
def test_load_and_export_match_the_real_things(bridge_run, bridge_device, prepared, tmp_path, family, layout,
                                               nproc):
    if (bridge_device == "cuda") != ((family, layout, nproc) in CUDA_LAYOUTS):
        pytest.skip("CPU layouts run with gloo, the CUDA ones on a GPU host (--bridge-device cuda)")
    # torch_dist holds global tensors: one import serves every layout.
    ckpt, exported, mg = prepared(family)
    reports = _job(nproc, tmp_path / "job", "--hf", str(ckpt.path), *layout, "--megatron", str(mg),
                   "--exported", str(exported), "--bucket", "3000", "--offsets", _zero_exports(bridge_run, ckpt),
                   device=bridge_device)
    for rep in reports:
        # Load: every parameter of every rank as import + dist_checkpointing.load gives it.
        assert rep["compared_to_import"] > 0
        assert rep["unequal_to_import"] == [], rep
        # Logits (where megatron-core runs a forward without a pipeline schedule).
        if "logits_max_diff" in rep:
            assert rep["logits_max_diff"] <= LOGITS_ATOL, rep
        # Export: bridge-run export's tensors, bit for bit, each once, nothing else.
        assert rep["export_count"] > 0
        assert rep["export_missing"] == [] and rep["export_extra"] == [] and rep["export_unequal"] == [], rep
        assert "export_twice" not in rep, rep
        assert rep["export_devices"] == ["cpu"], rep  # cpu=True
        # Exported again after the weights changed in place (zeroed): the
        # kept live model streams the new values.
        assert rep["export_again_count"] == rep["export_count"], rep
        assert rep["export_again_nonzero"] == [], rep
        # ... and after they were given new storage (ones), the new values.
        assert rep["export_swapped_count"] == rep["export_count"], rep
        assert rep["export_swapped_zero"] == [], rep
    if family in HYBRID:
        from megatron_oracle import MAMBA_FORWARD_UNAVAILABLE

        assert all(rep["logits_skipped"] == MAMBA_FORWARD_UNAVAILABLE for rep in reports), reports[0]
    elif "--pp" not in layout:
        assert all("logits_max_diff" in rep for rep in reports)
    if family in VLM:
        assert all(rep["vision_max_diff"] <= LOGITS_ATOL for rep in reports if "logits_max_diff" in rep), reports
    if layout == ["--tp", "2"]:
        # Each TP rank reads its own slices (fused QKV and gate/up included):
        # together they read the checkpoint once, plus the replicated norms
        # and a VLM's vision tower, which every rank reads whole.
        whole = _vision_tower_bytes(ckpt.path)
        total = reports[0]["hf_bytes"] - whole
        for rep in reports:
            assert 0 < rep["load"]["bytes_read"] - whole < 0.6 * total, rep["load"]
        assert sum(rep["load"]["bytes_read"] - whole for rep in reports) < 1.1 * total


def test_a_bf16_model_with_fp32_norms_streams_its_bf16_checkpoint_bit_for_bit(bridge_run, tmp_path):
    """A bf16 checkpoint in a bf16 model whose local-spec norms torch keeps
    in float32: export converts those back, the small ones all together
    (ExportStream::convertSmallAhead), each to its own place."""
    import torch
    import transformers

    import tiny_models

    family = tiny_models.FAMILY_BY_ID["llama3.1-8b"]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(tiny_models.tiny_hf_config(family))
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.add_(torch.randn_like(tensor) * 0.05)  # norms unlike one another
    model.to(torch.bfloat16).save_pretrained(tmp_path / "src")
    exported = tmp_path / "exported"
    _bridge_run(bridge_run, "import", "--hf", str(tmp_path / "src"), "--out", str(tmp_path / "mg"), "--local-spec")
    _bridge_run(bridge_run, "export", "--megatron", str(tmp_path / "mg"), "--out", str(exported))
    reports = _job(2, tmp_path / "job", "--hf", str(tmp_path / "src"), "--tp", "2", "--params-dtype", "bfloat16",
                   "--exported", str(exported), "--bucket", "3000")
    for rep in reports:
        assert rep["param_dtypes"] == ["torch.bfloat16", "torch.float32"], rep["param_dtypes"]
        assert rep["export_count"] > 0
        assert rep["export_missing"] == [] and rep["export_extra"] == [] and rep["export_unequal"] == [], rep
        assert rep["export_again_nonzero"] == [] and rep["export_swapped_zero"] == [], rep


def test_save_hf_pretrained_gives_a_checkpoint_transformers_loads(bridge_run, prepared, tmp_path):
    import torch
    import transformers

    ckpt, exported, _ = prepared("qwen3-30b-a3b")
    out = tmp_path / "saved"
    _job(2, tmp_path / "job", "--hf", str(ckpt.path), "--tp", "2", "--save", str(out))
    # The same writers as `bridge-run export`: the same files, byte for byte.
    shards = sorted(p.name for p in exported.glob("*.safetensors"))
    assert shards == sorted(p.name for p in out.glob("*.safetensors"))
    for name in shards + ["config.json"]:
        assert (out / name).read_bytes() == (exported / name).read_bytes(), name
    _bridge_run(bridge_run, "verify", str(out), "--against", str(ckpt.path))
    auto = getattr(transformers, ckpt.family.auto_class)
    ours = auto.from_pretrained(str(out), dtype=torch.float32).eval()
    ref = auto.from_pretrained(str(ckpt.path), dtype=torch.float32).eval()
    torch.manual_seed(0)
    tokens = torch.randint(0, ref.config.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(ours(tokens).logits, ref(tokens).logits)


def test_only_the_receiving_rank_gets_the_stream(prepared, tmp_path):
    ckpt, exported, _ = prepared("qwen3-30b-a3b")
    reports = _job(2, tmp_path / "job", "--hf", str(ckpt.path), "--ep", "2", "--exported", str(exported),
                   "--receivers", "1")
    by_rank = {rep["rank"]: rep for rep in reports}
    assert by_rank[0]["export_count"] == 0  # took part in the collectives, kept nothing
    got = by_rank[1]
    assert got["export_count"] > 0 and got["export_missing"] == [] and got["export_unequal"] == [], got


def test_a_model_of_another_family_is_refused_by_name(prepared, tmp_path):
    llama, _, _ = prepared("llama3.1-8b")
    qwen, _, _ = prepared("qwen3-30b-a3b")
    reports = _job(2, tmp_path / "job", "--hf", str(llama.path), "--tp", "2", "--mismatch", str(qwen.path))
    for rep in reports:
        msg = rep["mismatch"]
        assert msg.startswith("error: the model (TP 2"), msg
        assert "nothing was written" in msg
        assert "decoder.layers.0.mlp.router.weight" in msg  # missing, by name
        assert "decoder.layers.0.mlp.linear_fc1.weight" in msg  # unexpected, by name


def test_a_wrong_path_is_a_clear_error(tmp_path):
    env = _env(CUDA_VISIBLE_DEVICES="")
    code = ("from bridge import AutoBridge, BridgeError\n"
            "try:\n    AutoBridge.from_hf_pretrained(%r)\nexcept BridgeError as e:\n    print(e)\n"
            % str(tmp_path / "nowhere"))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "nowhere" in r.stdout and "config.json" in r.stdout, r.stdout


def test_the_layer_spec_is_one_choice():
    """The provider's layer spec: Transformer Engine's when it imports, the
    local one otherwise or when forced; TE asked for without TE is an error.
    (Transformer Engine is installed on no machine of this suite.)"""
    import importlib.util

    import megatron_oracle

    assert megatron_oracle.which_layer_spec(False) == "local"
    if importlib.util.find_spec("transformer_engine") is not None:
        assert megatron_oracle.which_layer_spec(None) == megatron_oracle.which_layer_spec(True)
        return
    assert megatron_oracle.which_layer_spec(None) == "local"
    with pytest.raises(megatron_oracle.MegatronUnavailable, match="transformer_engine does not import"):
        megatron_oracle.which_layer_spec(True)


def test_supports_and_families():
    env = _env(CUDA_VISIBLE_DEVICES="")
    code = ("from bridge import AutoBridge\n"
            "print(AutoBridge.supports({'model_type': 'llama', 'architectures': ['LlamaForCausalLM']}))\n"
            "print(AutoBridge.supports({'model_type': 'no-such-model'}))\n"
            "print(' '.join(AutoBridge.list_supported_models()))\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    yes, no, families = r.stdout.splitlines()
    assert (yes, no) == ("True", "False")
    assert {"llama", "qwen3_moe"} <= set(families.split())
