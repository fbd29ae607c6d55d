"""(c) The Megatron side: a real Megatron-Core GPTModel (local layer spec, CPU)
built from `bridge-run config`'s "megatron" object must have exactly the
parameters `bridge-run plan --local-names` lists, with the same shapes.

This checks the schema's local names and shape formulas against megatron-core.
"""

from __future__ import annotations

import math
import re

import pytest

import megatron_oracle
import tiny_models

# What each family must exercise in the Megatron model (so that a family
# silently losing its feature is noticed): names that must / must not exist.
FEATURES = {
    "llama3.2-1b": dict(absent=["output_layer.weight"]),  # tied
    "llama3.1-8b": dict(present=["output_layer.weight"]),  # untied
    "mistral-7b": dict(present=["output_layer.weight"]),
    "gemma3-1b": dict(present=["decoder.layers.0.self_attention.q_layernorm.weight",
                               "decoder.layers.0.mlp.linear_fc2.post_layernorm.weight"]),
    "gemma2-9b": dict(present=["decoder.layers.0.self_attention.linear_proj.post_layernorm.weight"]),
    "nemotron-h-56b": dict(present=["decoder.layers.0.mixer.in_proj.weight", "decoder.layers.1.mlp.linear_fc1.weight",
                                    "decoder.layers.7.self_attention.linear_qkv.weight", "decoder.final_norm.weight"],
                           absent=["decoder.layers.0.mlp.router.weight"]),
    "nemotron-3-nano": dict(present=["decoder.layers.0.mixer.conv1d.weight", "decoder.layers.1.mlp.router.expert_bias",
                                     "decoder.layers.1.mlp.shared_experts.linear_fc1.weight",
                                     "decoder.layers.5.self_attention.linear_qkv.weight"]),
    "gemma3-vl-4b": dict(present=["language_model.decoder.layers.0.self_attention.q_layernorm.weight",
                                  "multi_modal_projector.proj.weight"]),
    "qwen2.5-vl-7b": dict(present=["language_model.decoder.layers.0.self_attention.linear_qkv.bias",
                                   "language_model.output_layer.weight", "visual.merger.mlp.0.weight"]),
    "phi3-mini": dict(present=["output_layer.weight"],
                      absent=["decoder.layers.0.self_attention.linear_qkv.bias"]),
    "qwen2.5-7b": dict(
        present=[
            "decoder.layers.0.self_attention.linear_qkv.bias",
            "decoder.layers.1.self_attention.linear_qkv.bias",
        ],
        absent=["decoder.layers.0.self_attention.linear_proj.bias"],
    ),
    "qwen3-8b": dict(
        present=[
            "decoder.layers.0.self_attention.q_layernorm.weight",
            "decoder.layers.0.self_attention.k_layernorm.weight",
        ]
    ),
    "qwen3-30b-a3b": dict(
        present=[
            "decoder.layers.1.mlp.router.weight",
            "decoder.layers.1.mlp.experts.local_experts.3.linear_fc1.weight",
            "decoder.layers.0.self_attention.q_layernorm.weight",
        ],
        absent=["decoder.layers.0.mlp.linear_fc1.weight"],
    ),
    "glm4.5-air": dict(
        present=["decoder.layers.1.mlp.shared_experts.linear_fc1.weight", "decoder.layers.1.mlp.router.expert_bias",
                 "decoder.layers.0.mlp.linear_fc1.weight", "decoder.layers.0.self_attention.linear_qkv.bias"],
    ),
    "olmoe-1b-7b": dict(
        present=["decoder.layers.0.self_attention.q_layernorm.weight", "decoder.layers.1.mlp.router.weight"],
        absent=["decoder.layers.0.mlp.linear_fc1.weight"],
    ),
    "minimax-m2": dict(
        present=["decoder.layers.0.self_attention.k_layernorm.weight", "decoder.layers.1.mlp.router.expert_bias"],
        absent=["decoder.layers.0.mlp.linear_fc1.weight"],
    ),
    "gpt-oss-20b": dict(
        present=["decoder.layers.0.self_attention.core_attention.softmax_offset",
                 "decoder.layers.1.mlp.router.bias", "decoder.layers.0.self_attention.linear_proj.bias",
                 "decoder.layers.0.mlp.experts.local_experts.3.linear_fc1.bias"],
    ),
    "mixtral-8x7b": dict(
        present=["decoder.layers.0.mlp.experts.local_experts.0.linear_fc2.weight"],
        absent=["decoder.layers.0.mlp.linear_fc1.weight"],
    ),
}


@pytest.fixture(params=tiny_models.family_ids())
def family_id(request):
    return request.param


@pytest.fixture(scope="module")
def megatron_models(bridge_run, tiny_checkpoints, mcore):
    """family id -> GPTModel built from bridge-run's config of the tiny checkpoint."""
    cache = {}

    def get(family_id):
        if family_id not in cache:
            ckpt = tiny_checkpoints(family_id)
            meg = bridge_run.config(str(ckpt.path))["megatron"]
            cache[family_id] = megatron_oracle.build_gpt_model(meg)
        return cache[family_id]

    return get


def _diff_report(megatron: dict, plan: dict) -> str:
    only_m = sorted(set(megatron) - set(plan))
    only_p = sorted(set(plan) - set(megatron))
    shapes = sorted(
        f"{k}: megatron-core {megatron[k]} vs plan {plan[k]}"
        for k in set(megatron) & set(plan)
        if megatron[k] != plan[k]
    )
    return (
        f"only in megatron-core: {only_m}\n"
        f"only in plan: {only_p}\n"
        f"shape differences: {shapes}"
    )


def test_state_dict_matches_plan(bridge_run, tiny_checkpoints, megatron_models, family_id):
    ckpt = tiny_checkpoints(family_id)
    plan = bridge_run.plan(str(ckpt.path), local_names=True)

    model = megatron_models(family_id)
    meg = bridge_run.config(str(ckpt.path))["megatron"]
    prefix = megatron_oracle.language_model_prefix(meg)
    actual = {prefix + k: v for k, v in megatron_oracle.state_dict_shapes(model).items()}
    expected = {t["local_name"]: tuple(t["shape"]) for t in plan["tensors"]}
    assert len(expected) == len(plan["tensors"]), "duplicate local_name in the plan"
    # A VLM's vision tower is the HF module, kept as it is: the plan's names
    # under it are the checkpoint's, with the checkpoint's shapes.
    kept = {t["local_name"]: tuple(t["shape"]) for t in plan["tensors"] if not t["local_name"].startswith(prefix)}
    if prefix:
        assert kept and all(ckpt.tensors[n] == shape for n, shape in kept.items() if n in ckpt.tensors), kept
        assert set(n for n in ckpt.tensors if n.startswith(("visual.", "vision_tower."))) <= set(kept)
        expected = {k: v for k, v in expected.items() if k.startswith(prefix)}
        n_kept = sum(math.prod(s) for s in kept.values())
    else:
        n_kept = 0
    # A hybrid model's torch_dist parts (Mamba in_proj .z .x .B .C .dt,
    # conv1d .x .B .C) are rows of one module parameter: together they must
    # be that parameter, in rows.
    merged: dict = {}
    for name, shape in expected.items():
        base = name.rsplit(".", 1)[0]
        if name not in actual and base in actual and "mixer." in name:
            rows = merged.get(base, (0,) + shape[1:])
            assert rows[1:] == shape[1:], (name, shape, rows)
            merged[base] = (rows[0] + shape[0],) + shape[1:]
        else:
            merged[name] = shape
    expected = merged

    assert actual == expected, _diff_report(actual, expected)

    feats = FEATURES[family_id]
    for name in feats.get("present", []):
        assert name in actual or name in kept, f"{family_id} should exercise {name}"
    for name in feats.get("absent", []):
        assert name not in actual, f"{family_id} should not have {name}"

    # The plan's parameter count is the model's (tied weights once).
    n = sum(p.numel() for p in model.parameters())
    # The router's expert bias is a persistent buffer, stored and converted.
    n += sum(v.numel() for k, v in model.state_dict().items() if k.endswith("router.expert_bias"))
    assert plan["parameters"] == n + n_kept
    assert n == sum(math.prod(s) for s in actual.values())


def test_dense_config_accepted_verbatim(bridge_run, tiny_checkpoints, mcore, family_id):
    """Every TransformerConfig field bridge-run emits, passed unchanged, must be
    accepted by TransformerConfig.__post_init__."""
    ckpt = tiny_checkpoints(family_id)
    meg = bridge_run.config(str(ckpt.path))["megatron"]
    routed = megatron_oracle.route_megatron_config(meg, megatron_compatible=False)
    megatron_oracle.make_transformer_config(routed)


def test_published_config_accepted_by_transformer_config(
    bridge_run, tmp_path, mcore, family_id
):
    """The full-size published config (not shrunk) builds a TransformerConfig
    (with the translations of megatron_oracle.route_megatron_config)."""
    fam = tiny_models.FAMILY_BY_ID[family_id]
    pub = tiny_models.published_config(fam)
    if pub is None:
        pytest.skip(f"no published config in {tiny_models.SHARED_HF_CONFIGS}")
    d = tiny_models.write_config_dir(pub, tmp_path / family_id)
    meg = bridge_run.config(str(d))["megatron"]
    cfg = megatron_oracle.make_transformer_config(megatron_oracle.route_megatron_config(meg))
    # The published file's text fields; where a sparse VLM text section
    # leaves one out, transformers' class default.
    import transformers

    raw = tiny_models.text_section(pub)
    text = transformers.AutoConfig.from_pretrained(str(d)).get_text_config()
    field = lambda k: raw[k] if k in raw else getattr(text, k)  # noqa: E731
    assert cfg.num_layers == field("num_hidden_layers")
    head_dim = raw.get("head_dim") if "head_dim" in raw or tiny_models.text_section(pub) is pub else text.head_dim
    assert cfg.kv_channels == (head_dim or field("hidden_size") // field("num_attention_heads"))


def test_import_has_exactly_the_keys_megatron_core_requests(
    bridge_run, tiny_checkpoints, megatron_models, family_id, tmp_path
):
    """`bridge-run import --local-spec` against what megatron-core itself asks
    of a checkpoint: every ShardedTensor of the model's sharded_state_dict()
    (factories applied: the gated fc1 halves) is in our .metadata with its
    global shape, we store no tensor it does not ask for, and every
    _extra_state object it asks for is there."""
    import subprocess

    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, apply_factories
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    ckpt = tiny_checkpoints(family_id)
    out = tmp_path / "mg"
    # A hybrid model is built here with the TE spec's torch_dist keys
    # (megatron_oracle.mamba_local_spec): import with those.
    hybrid = bool(bridge_run.config(str(ckpt.path))["megatron"].get("hybrid_override_pattern"))
    r = subprocess.run([str(bridge_run.path), "import", "--hf", str(ckpt.path), "--out", str(out),
                        *([] if hybrid else ["--local-spec"]), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    md = FileSystemReader(str(out / "iter_0000000")).read_metadata().state_dict_metadata
    ours = {k: tuple(v.size) for k, v in md.items() if not isinstance(v, BytesStorageMetadata)}
    our_bytes = {k for k, v in md.items() if isinstance(v, BytesStorageMetadata)}

    prefix = megatron_oracle.language_model_prefix(bridge_run.config(str(ckpt.path))["megatron"])
    sharded = megatron_models(family_id).sharded_state_dict(prefix=prefix)
    apply_factories(sharded)
    # The vision tower and projector of a VLM: not the GPT's; compared in
    # test_state_dict_matches_plan.
    ours = {k: v for k, v in ours.items() if k.startswith(prefix)}
    wanted, objects = {}, set()
    for v in nested_values(sharded):
        if isinstance(v, ShardedTensor):
            assert wanted.setdefault(v.key, tuple(v.global_shape)) == tuple(v.global_shape), v.key
        elif isinstance(v, ShardedObject):
            objects.add(v.unique_key)
    assert ours == wanted, (
        f"missing: {sorted(set(wanted) - set(ours))}\nextra: {sorted(set(ours) - set(wanted))}\n"
        f"shapes: {[(k, ours[k], wanted[k]) for k in set(ours) & set(wanted) if ours[k] != wanted[k]]}")
    assert objects <= our_bytes, f"_extra_state objects not written: {sorted(objects - our_bytes)}"
    # A kept HF module (a VLM's vision tower) has none; nor has a VLM's GPT
    # embedding, nor its output layer (GPTModel drops it).
    stray = sorted(k for k in our_bytes if k.startswith(("visual.", "vision_tower.", prefix + "embedding.",
                                                          prefix + "output_layer.")) and prefix)
    assert not stray, f"_extra_state objects no module has: {stray}"
