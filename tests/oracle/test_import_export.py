"""Import and export against the real libraries.

For each family and layout: a tiny random model made by transformers is
imported with `bridge-run import`, loaded by megatron-core's
dist_checkpointing into a GPTModel built from the converted config (local
layer spec, CPU, fp32), and its logits are compared with the HF model's; the
import is exported with `bridge-run export` and every tensor must be
bit-identical to the source, with the same names, dtypes and shard files.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import megatron_oracle
import tiny_models

# (TP, PP): what the checkpoint is prepared for. torch_dist stores global
# tensors, so the layout changes validation and chunking, not values.
LAYOUTS = [(1, 1), (2, 1), (4, 1), (1, 2), (2, 2)]

# Both models run in fp32 on CPU (the configs say bf16; bf16 rounding would
# hide real errors). Measured: max |diff| about 2e-7 on logits of magnitude
# about 0.5; the two libraries order a few reductions differently.
LOGITS_ATOL = 1e-5


def _run(bridge_run: tiny_models.BridgeRun, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(bridge_run.path), *args], capture_output=True, text=True)


def _layout_fits(ckpt: tiny_models.TinyCheckpoint, tp: int, pp: int, ep: int = 1) -> bool:
    cfg = ckpt.text_config_json
    groups = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    experts = cfg.get("num_experts") or cfg.get("num_local_experts") or cfg.get("n_routed_experts") or 0
    if ep > 1 and (not experts or experts % ep):
        return False
    # transformers 5 saves a hybrid model's layer kinds, not their number.
    layers = cfg.get("num_hidden_layers") or len(cfg.get("layers_block_type") or [])
    return groups % tp == 0 and layers % pp == 0


def _read_all(path: Path) -> dict:
    from safetensors import safe_open

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                out[k] = (f.name, st.get_tensor(k))
    return out


@pytest.fixture(scope="module")
def imported(tmp_path_factory, tiny_checkpoints, bridge_run, bridge_device):
    """(family, tp, pp) -> the imported checkpoint directory, built once."""
    cache: dict = {}

    def get(family_id: str, tp: int, pp: int, local_spec: bool = False) -> Path:
        key = (family_id, tp, pp, local_spec)
        if key not in cache:
            ckpt = tiny_checkpoints(family_id)
            out = tmp_path_factory.mktemp("import") / f"{family_id}-tp{tp}-pp{pp}{'-local' if local_spec else ''}"
            # The CPU oracle model has no Transformer Engine: key the tensors as
            # its local layer spec does (differs for MoE pre_mlp_layernorm).
            extra = ["--local-spec"] if local_spec else []
            r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(out), "--tp", str(tp),
                     "--pp", str(pp), "--quiet", "--device", bridge_device, *extra)
            assert r.returncode == 0, r.stderr
            cache[key] = out
        return cache[key]

    return get


@pytest.mark.parametrize("family_id", tiny_models.family_ids(), ids=tiny_models.family_param_id)
@pytest.mark.parametrize("tp,pp", LAYOUTS, ids=[f"tp{t}-pp{p}" for t, p in LAYOUTS])
def test_round_trip_is_bit_exact(bridge_run, bridge_device, tiny_checkpoints, imported, tmp_path, family_id, tp, pp):
    ckpt = tiny_checkpoints(family_id)
    if not _layout_fits(ckpt, tp, pp):
        pytest.skip("layout does not divide this model")
    mg = imported(family_id, tp, pp)
    out = tmp_path / "hf"
    r = _run(bridge_run, "export", "--megatron", str(mg), "--out", str(out), "--quiet", "--device", bridge_device)
    assert r.returncode == 0, r.stderr
    source, back = _read_all(ckpt.path), _read_all(out)
    assert sorted(back) == sorted(source)
    for name, (file, tensor) in source.items():
        bfile, btensor = back[name]
        assert bfile == file, name
        assert btensor.dtype == tensor.dtype, name
        assert btensor.shape == tensor.shape, name
        assert btensor.view(-1).view(dtype=__import__("torch").uint8).equal(
            tensor.view(-1).view(dtype=__import__("torch").uint8)), f"{name} differs after the round trip"
    src_full = json.loads((ckpt.path / "config.json").read_text())
    out_full = json.loads((out / "config.json").read_text())
    # A VLM: the vision section and special tokens as they were, the
    # language model's fields in its text section.
    for k in ("vision_config", "image_token_id", "image_token_index", "mm_tokens_per_image"):
        assert out_full.get(k) == src_full.get(k), k
    src_cfg, out_cfg = tiny_models.text_section(src_full), tiny_models.text_section(out_full)
    for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
              "num_hidden_layers", "vocab_size", "rms_norm_eps", "tie_word_embeddings", "model_type",
              "architectures", "rope_parameters", "rope_scaling", "rope_theta", "sliding_window", "head_dim",
              "num_experts", "num_local_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob"):
        if k not in src_cfg:
            continue
        if k == "head_dim" and src_cfg[k] is None:
            # null means hidden_size / num_attention_heads to transformers;
            # export writes the number.
            assert out_cfg.get(k) == src_cfg["hidden_size"] // src_cfg["num_attention_heads"]
            continue
        if k in ("rope_parameters", "rope_scaling"):
            assert (tiny_models.rope_as_transformers_reads_it(out_cfg.get(k))
                    == tiny_models.rope_as_transformers_reads_it(src_cfg[k])), k
            continue
        if k == "architectures":
            # The class transformers builds (Sarvam's published name is none of its own).
            assert tiny_models.transformers_architectures(out_cfg) == tiny_models.transformers_architectures(src_cfg)
            continue
        assert out_cfg.get(k) == src_cfg[k], k


def _is_moe(meg: dict) -> bool:
    """A mixture of experts, by its converted config (a hybrid model's
    expert layers included; the HF configs' expert counts are no guide:
    transformers saves NemotronHConfig's n_routed_experts default in the
    dense Nemotron-H's config.json too)."""
    return bool(meg.get("num_moe_experts"))


# (TP, EP, ETP) for mixtures of experts: experts are stored one chunk per
# (layer, expert); ETP cuts each expert's slice like TP cuts a dense MLP.
MOE_LAYOUTS = [(1, 2, 1), (2, 2, 1), (1, 4, 1), (2, 4, 2), (1, 2, 2)]


@pytest.mark.families(where=_is_moe)
@pytest.mark.parametrize("tp,ep,etp", MOE_LAYOUTS, ids=[f"tp{t}-ep{e}-etp{x}" for t, e, x in MOE_LAYOUTS])
def test_moe_round_trip_is_bit_exact(bridge_run, bridge_device, tiny_checkpoints, tmp_path, family_id, tp, ep, etp):
    ckpt = tiny_checkpoints(family_id)
    if not _layout_fits(ckpt, tp, 1, ep):
        pytest.skip("layout does not divide this model")
    mg, out = tmp_path / "mg", tmp_path / "hf"
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(mg), "--tp", str(tp), "--ep", str(ep),
             "--etp", str(etp), "--quiet", "--device", bridge_device)
    assert r.returncode == 0, r.stderr
    r = _run(bridge_run, "export", "--megatron", str(mg), "--out", str(out), "--quiet", "--device", bridge_device)
    assert r.returncode == 0, r.stderr
    import torch

    source, back = _read_all(ckpt.path), _read_all(out)
    assert sorted(back) == sorted(source)
    for name, (file, tensor) in source.items():
        assert back[name][0] == file and back[name][1].dtype == tensor.dtype
        assert back[name][1].view(-1).view(dtype=torch.uint8).equal(tensor.view(-1).view(dtype=torch.uint8)), name


@pytest.mark.families(where=_is_moe)
def test_ep_must_divide_experts(bridge_run, tiny_checkpoints, tmp_path, family_id):
    ckpt = tiny_checkpoints(family_id)
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(tmp_path / "mg"), "--ep", "3", "--quiet")
    assert r.returncode == 1 and "num_moe_experts 4 is not divisible by EP 3" in r.stderr
    assert not (tmp_path / "mg").exists()


@pytest.mark.parametrize("family_id", tiny_models.family_ids(), ids=tiny_models.family_param_id)
def test_megatron_core_loads_the_import_and_logits_match(bridge_run, tiny_checkpoints, imported, mcore, family_id):
    """dist_checkpointing.load into a GPTModel built from the converted config;
    same input, same logits as transformers (fp32, CPU)."""
    ckpt = tiny_checkpoints(family_id)
    mg = imported(family_id, 2, 1, local_spec=True)  # chunks cut for TP=2; loaded at TP=1
    megatron_oracle.assert_logits_match(bridge_run, ckpt, mg, LOGITS_ATOL)


@pytest.mark.parametrize("family_id", tiny_models.family_ids(), ids=tiny_models.family_param_id)
def test_export_loads_in_transformers_with_the_source_logits(bridge_run, tiny_checkpoints, imported, tmp_path,
                                                             family_id):
    """The exported directory is a checkpoint transformers loads as the same
    model: the same class, and the same logits as the source, exactly (the
    config export is what this checks beyond the bytes: rope scaling, window
    pattern, layer kinds, a VLM's sections). For the families megatron-core
    cannot run (Gemma, DeepSeek, Nemotron-H) this is the end-to-end check."""
    import torch
    import transformers

    ckpt = tiny_checkpoints(family_id)
    out = tmp_path / "hf"
    r = _run(bridge_run, "export", "--megatron", str(imported(family_id, 2 if _layout_fits(ckpt, 2, 1) else 1, 1)),
             "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    auto = getattr(transformers, ckpt.family.auto_class)
    models = [auto.from_pretrained(str(p), dtype=torch.float32).eval() for p in (ckpt.path, out)]
    assert type(models[0]) is type(models[1])
    vocab = models[0].config.get_text_config().vocab_size
    torch.manual_seed(0)
    tokens = torch.randint(0, vocab, (2, 16))
    with torch.no_grad():
        src, back = (m(tokens).logits for m in models)
    assert torch.equal(src, back), f"max |diff| {(src - back).abs().max().item()}"
