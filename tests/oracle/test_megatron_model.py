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
    actual = megatron_oracle.state_dict_shapes(model)
    expected = {t["local_name"]: tuple(t["shape"]) for t in plan["tensors"]}
    assert len(expected) == len(plan["tensors"]), "duplicate local_name in the plan"

    assert actual == expected, _diff_report(actual, expected)

    feats = FEATURES[family_id]
    for name in feats.get("present", []):
        assert name in actual, f"{family_id} should exercise {name}"
    for name in feats.get("absent", []):
        assert name not in actual, f"{family_id} should not have {name}"

    # The plan's parameter count is the model's (tied weights once).
    n = sum(p.numel() for p in model.parameters())
    assert plan["parameters"] == n
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
    assert cfg.num_layers == pub["num_hidden_layers"]
    assert cfg.kv_channels == (
        pub.get("head_dim") or pub["hidden_size"] // pub["num_attention_heads"]
    )


_LAYER_INDEX = re.compile(r"^decoder\.layers\.(\d+)\.")


def test_plan_names_are_megatron_checkpoint_keys(
    bridge_run, tiny_checkpoints, megatron_models, family_id
):
    """The plan's default names (Transformer Engine spelling) against the keys
    megatron-core itself writes: the local spec's sharded_state_dict() maps
    input_layernorm / pre_mlp_layernorm onto the TE names
    (self_attention.linear_qkv.layer_norm_weight, mlp.linear_fc1.layer_norm_weight)
    and stacks the layers on a leading axis ('decoder.layers.<rest>', global
    shape (num_layers, *shape), offset i)."""
    ckpt = tiny_checkpoints(family_id)
    meg = bridge_run.config(str(ckpt.path))["megatron"]
    plan = bridge_run.plan(str(ckpt.path))  # default: TE names in "name"
    model = megatron_models(family_id)
    sharded = model.sharded_state_dict()
    num_layers = meg["num_layers"]

    errors = []
    seen = set()
    for t in plan["tensors"]:
        entry = sharded.get(t["local_name"])
        if entry is None:
            errors.append(f"{t['local_name']}: not in megatron-core's sharded_state_dict")
            continue
        seen.add(t["local_name"])
        shape = tuple(t["shape"])
        m = _LAYER_INDEX.match(t["name"])
        want_key = _LAYER_INDEX.sub("decoder.layers.", t["name"]) if m else t["name"]
        if entry.key != want_key:
            errors.append(f"{t['name']}: megatron-core checkpoint key is {entry.key}")
        if type(entry).__name__ == "ShardedTensor":
            want_shape = (num_layers, *shape) if m else shape
            if tuple(entry.global_shape) != want_shape:
                errors.append(f"{t['name']}: global shape {tuple(entry.global_shape)} != {want_shape}")
            if m and entry.global_offset[0] != int(m.group(1)):
                errors.append(f"{t['name']}: layer offset {entry.global_offset[0]}")
        else:  # ShardedTensorFactory (the gated fc1): the local tensor
            if tuple(entry.data.shape) != shape:
                errors.append(f"{t['name']}: tensor shape {tuple(entry.data.shape)} != {shape}")
    left = sorted(
        k for k in sharded if k not in seen and not k.endswith("_extra_state")
    )
    if left:
        errors.append(f"sharded_state_dict entries the plan does not name: {left}")
    assert not errors, "\n".join(errors)
