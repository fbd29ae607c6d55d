"""The legacy per-rank `torch` format (`--format torch`): one
`mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt` per model-parallel rank.

Oracles: at TP=PP=EP=1 megatron-core's own GPTModel (local spec, CPU) takes
the file's model dict with load_state_dict(strict=True) and gives the HF
model's logits. At other layouts each rank's local tensors, put back together
by the rules of Megatron's parallel layers (column: dim 0; row: dim 1; gated
fc1: each rank's [gate_r; up_r]; vocabulary: padded rows at the end; layer
indices local to their pipeline stage; expert indices local to their EP rank),
give exactly that checked TP=1 model dict.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import pytest

import megatron_oracle
import tiny_models

LOGITS_ATOL = 1e-5


def _run(bridge_run, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(bridge_run.path), *args, "--quiet"], capture_output=True, text=True)


def _load(path: Path) -> dict:
    import torch

    # Megatron-Core >= 0.14 loads with weights_only and argparse.Namespace
    # among its safe globals; nothing else may be needed.
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(str(path), weights_only=True)


def _import_legacy(bridge_run, ckpt, out: Path, *layout: str) -> Path:
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(out), "--format", "torch", "--local-spec",
             *layout)
    assert r.returncode == 0, r.stderr
    return out / "iter_0000000"


def _is_gpt(meg: dict) -> bool:
    """A GPT model, which the legacy per-rank format holds: neither a hybrid
    Mamba model nor a VLM (their import is refused, as
    test_legacy_format_refuses_models_other_than_gpt checks)."""
    return not meg.get("hybrid_override_pattern") and not meg.get("vision_model")


# Every GPT family. Those megatron-core 0.16.1 cannot build on a CPU (Gemma's
# post norms and soft-capping, multi-latent attention) skip in build_gpt_model
# with the reason (megatron_oracle.POST_LAYERNORM_UNSUPPORTED, MLA_UNSUPPORTED).
@pytest.mark.families(where=_is_gpt)
def test_legacy_file_loads_into_megatron_core_with_hf_logits(bridge_run, tiny_checkpoints, mcore, tmp_path,
                                                             family_id):
    ckpt = tiny_checkpoints(family_id)
    it = _import_legacy(bridge_run, ckpt, tmp_path / "mg")
    assert sorted(p.name for p in it.glob("mp_rank_*")) == ["mp_rank_00"]
    state = _load(it / "mp_rank_00" / "model_optim_rng.pt")
    assert state["checkpoint_version"] == 3.0 and state["iteration"] == 0
    args = state["args"]
    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size) == (1, 1)
    assert args.num_layers == ckpt.config_json["num_hidden_layers"]
    assert args.padded_vocab_size % 128 == 0 and args.padded_vocab_size >= ckpt.config_json["vocab_size"]
    megatron_oracle.assert_logits_match(bridge_run, ckpt, None, LOGITS_ATOL, legacy_state=state["model"],
                                        padded_vocab=args.padded_vocab_size)


def _styles(bridge_run, ckpt) -> dict[str, tuple[str, bool]]:
    plan = bridge_run.plan(str(ckpt.path), local_names=True)
    return {t["name"]: (t["style"], t["expert"]) for t in plan["tensors"]}


def _assemble(it: Path, styles: dict, layers: int, experts: int, vocab: int) -> dict:
    """Every rank file of `it` put back into TP=1 tensors with global names."""
    import torch

    files = {}
    for d in it.glob("mp_rank_*"):
        parts = [int(x) for x in d.name[len("mp_rank_"):].split("_")]
        files[tuple(parts)] = _load(d / "model_optim_rng.pt")
    any_args = next(iter(files.values()))["args"]
    tp, pp, ep = (any_args.tensor_model_parallel_size, any_args.pipeline_model_parallel_size,
                  any_args.expert_model_parallel_size)
    etp = any_args.expert_tensor_parallel_size
    assert len(files) == tp * pp * ep
    pieces: dict[str, dict[int, "torch.Tensor"]] = {}
    for key, state in files.items():
        t = key[0]
        p = key[1] if pp > 1 else 0
        e = key[-1] if ep > 1 else 0
        for name, value in state["model"].items():
            assert value is not None, f"{name}: local-spec files hold no extra state"
            name = re.sub(r"decoder\.layers\.(\d+)\.", lambda m: f"decoder.layers.{int(m.group(1)) + p * (layers // pp)}.",
                          name)
            name = re.sub(r"local_experts\.(\d+)\.", lambda m: f"local_experts.{int(m.group(1)) + e * (experts // ep)}.",
                          name)
            slot = pieces.setdefault(name, {})
            if t in slot:  # the same local tensor in another EP rank's (or stage's) file
                assert torch.equal(slot[t], value), name
            slot[t] = value
    out = {}
    for name, by_rank in pieces.items():
        # A tied output layer (PP > 1: the last stage allocates it) is cut
        # like the embedding.
        style, expert = styles.get(name, ("vocab", False) if name == "output_layer.weight" else None)
        split = etp if expert else tp
        ranks = [by_rank[t] for t in range(tp)]
        if style == "replicated" or split == 1:
            for r in ranks[1:]:
                assert torch.equal(r, ranks[0]), name
            out[name] = ranks[0]
        elif style == "row":
            out[name] = torch.cat(ranks, 1)
        elif style == "gated":
            halves = [r.chunk(2, 0) for r in ranks]
            out[name] = torch.cat([h[0] for h in halves] + [h[1] for h in halves], 0)
        else:  # column, qkv, vocab
            out[name] = torch.cat(ranks, 0)
        if style == "vocab":
            assert torch.count_nonzero(out[name][vocab:]) == 0, f"{name}: padding rows are not zero"
            out[name] = out[name][:vocab]
    return out


SHARDED = [
    ("llama3.2-1b", ["--tp", "2", "--pp", "2"]),
    ("qwen2.5-7b", ["--tp", "2"]),
    ("qwen3-30b-a3b", ["--ep", "2", "--pp", "2"]),
    ("qwen3-30b-a3b", ["--tp", "2", "--ep", "4", "--etp", "1"]),
    ("mixtral-8x7b", ["--tp", "2", "--ep", "2", "--etp", "2"]),
    ("deepseek-v3", ["--tp", "2", "--ep", "2", "--etp", "1"]),
]


@pytest.mark.parametrize("family_id,layout", SHARDED,
                         ids=[f"{tiny_models.family_param_id(f)}-{'-'.join(a).replace('--', '')}" for f, a in SHARDED])
def test_rank_files_put_together_give_the_checked_model(bridge_run, tiny_checkpoints, tmp_path, family_id, layout):
    import torch

    ckpt = tiny_checkpoints(family_id)
    cfg = ckpt.config_json
    vocab = cfg["vocab_size"]
    experts = cfg.get("num_experts") or cfg.get("num_local_experts") or cfg.get("n_routed_experts") or 0
    one = _load(_import_legacy(bridge_run, ckpt, tmp_path / "one") / "mp_rank_00" / "model_optim_rng.pt")["model"]
    got = _assemble(_import_legacy(bridge_run, ckpt, tmp_path / "many", *layout), _styles(bridge_run, ckpt),
                    cfg["num_hidden_layers"], experts, vocab)
    if "output_layer.weight" in got and "output_layer.weight" not in one:
        # Tied embeddings: the last stage's copy equals the embedding.
        assert torch.equal(got.pop("output_layer.weight"), got["embedding.word_embeddings.weight"])
        assert "--pp" in layout
    assert sorted(got) == sorted(one)
    for name, value in one.items():
        if _styles(bridge_run, ckpt)[name][0] == "vocab":
            value = value[:vocab]
        assert got[name].dtype == value.dtype and torch.equal(got[name], value), name


def test_legacy_te_spec_names_and_extra_state(bridge_run, tiny_checkpoints, tmp_path):
    """Without --local-spec: Transformer Engine names, each TE module's
    `_extra_state` None (what TE's set_extra_state takes as 'no FP8 state')."""
    ckpt = tiny_checkpoints("llama3.2-1b")
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(tmp_path / "mg"), "--format", "torch")
    assert r.returncode == 0, r.stderr
    model = _load(tmp_path / "mg" / "iter_0000000" / "mp_rank_00" / "model_optim_rng.pt")["model"]
    assert "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight" in model
    assert model["decoder.layers.0.self_attention.linear_qkv._extra_state"] is None
    assert "embedding.word_embeddings._extra_state" not in model


def test_legacy_format_refusals(bridge_run, tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints("qwen3-30b-a3b")
    r = _run(bridge_run, "import", "--hf", str(tiny_checkpoints("mixtral-8x7b").path), "--out", str(tmp_path / "b"),
             "--format", "torch", "--tp", "2", "--ep", "2", "--etp", "1")
    assert r.returncode == 0, r.stderr  # experts whole: allowed
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(tmp_path / "c"), "--format", "legacy")
    assert r.returncode == 2 and "--format needs torch_dist or torch, not 'legacy'" in r.stderr
    r = _run(bridge_run, "import", "--hf", str(tiny_checkpoints("llama3.2-1b").path), "--out", str(tmp_path / "d"),
             "--format", "torch", "--vpp", "2")
    assert r.returncode == 1 and "without virtual pipeline stages" in r.stderr, r.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.families(where=lambda meg: not _is_gpt(meg))
def test_legacy_format_refuses_models_other_than_gpt(bridge_run, tiny_checkpoints, tmp_path, family_id):
    """A VLM's kept vision tower and a hybrid model's Mamba parts have no
    place in Megatron-LM's per-rank GPT files: refused before anything is
    written."""
    meg = bridge_run.config(str(tiny_checkpoints(family_id).path))["megatron"]
    if meg.get("hybrid_override_pattern"):
        why = "is a hybrid Mamba model (MambaModel); the legacy per-rank format is written for GPT models"
    else:
        assert meg.get("vision_model"), f"{family_id} is a GPT model: the legacy logits test takes it"
        why = "as the HF module has it; the legacy per-rank format holds GPT models only"
    r = _run(bridge_run, "import", "--hf", str(tiny_checkpoints(family_id).path), "--out", str(tmp_path / "mg"),
             "--format", "torch")
    assert r.returncode == 1 and why in r.stderr, r.stderr
    assert not (tmp_path / "mg").exists()
