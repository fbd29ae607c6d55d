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


def _layer_kinds(meg: dict) -> list[str]:
    """Each decoder layer's parts, as the converted config describes them:
    'M' a Mamba mixer, '*' attention, 'G' Gated DeltaNet, '-' a dense MLP,
    'E' experts. A hybrid model's layer is one part (hybrid_override_pattern);
    a GPT layer is attention (Gated DeltaNet where linear_attention_freq says
    so) and an MLP, experts where moe_layer_freq says so."""
    if meg.get("hybrid_override_pattern"):
        return list(meg["hybrid_override_pattern"])
    n, freq = meg["num_layers"], meg.get("moe_layer_freq", 1)
    if not meg.get("num_moe_experts"):
        moe = [False] * n
    elif isinstance(freq, list):
        moe = [bool(x) for x in freq]
    else:
        moe = [i % freq == 0 for i in range(n)]
    linear = meg.get("linear_attention_freq")
    if meg.get("experimental_attention_variant") != "gated_delta_net":
        gdn = [False] * n
    elif isinstance(linear, list):
        gdn = [bool(x) for x in linear]
    else:
        gdn = [(i + 1) % linear != 0 for i in range(n)]
    return [("G" if g else "*") + ("E" if m else "-") for g, m in zip(gdn, moe)]


def _feature_names(meg: dict) -> tuple[list[str], list[str]]:
    """(present, absent): the parameter names the converted config's features
    imply, layer by layer, so that a feature megatron-core's model does not
    build from the config (a bias, a q/k norm, a router's expert bias, a dense
    first layer) is noticed. test_tiny_model_keeps_the_published_features
    checks that the tiny config has the published model's features."""
    prefix = megatron_oracle.language_model_prefix(meg)
    present: list[str] = []
    absent: list[str] = []

    def want(cond, name: str) -> None:
        (present if cond else absent).append(prefix + name)

    hybrid = bool(meg.get("hybrid_override_pattern"))
    linear_bias = bool(meg.get("add_bias_linear"))
    post_norm = bool(meg.get("post_layernorm"))
    want(not meg.get("share_embeddings_and_output_weights"), "output_layer.weight")
    want(True, "decoder.final_norm.weight" if hybrid else "decoder.final_layernorm.weight")
    for i, kinds in enumerate(_layer_kinds(meg)):
        layer = f"decoder.layers.{i}."
        if "M" in kinds:
            want(True, layer + "mixer.in_proj.weight")
            want(True, layer + "mixer.conv1d.weight")
        if "G" in kinds:
            for name in ("in_proj.weight", "conv1d.weight", "A_log", "dt_bias", "out_norm.weight",
                         "out_proj.weight"):
                want(True, layer + "self_attention." + name)
            want(False, layer + "self_attention.linear_qkv.weight")
        if "*" in kinds:
            attn = layer + "self_attention."
            if meg.get("multi_latent_attention"):
                q_lora = bool(meg.get("q_lora_rank"))
                want(q_lora, attn + "linear_q_down_proj.weight")
                want(q_lora, attn + "q_layernorm.weight")
                want(not q_lora, attn + "linear_q_proj.weight")
                want(True, attn + "linear_kv_down_proj.weight")
                want(True, attn + "kv_layernorm.weight")
            else:
                want(True, attn + "linear_qkv.weight")
                want(meg.get("add_qkv_bias"), attn + "linear_qkv.bias")
                want(meg.get("qk_layernorm"), attn + "q_layernorm.weight")
                want(meg.get("qk_layernorm"), attn + "k_layernorm.weight")
            want(linear_bias, attn + "linear_proj.bias")
            want(post_norm, attn + "linear_proj.post_layernorm.weight")
            want(meg.get("softmax_type") == "learnable", attn + "core_attention.softmax_offset")
        if "-" in kinds:
            want(True, layer + "mlp.linear_fc1.weight")
            want(linear_bias, layer + "mlp.linear_fc1.bias")
            want(post_norm, layer + "mlp.linear_fc2.post_layernorm.weight")
        if "E" in kinds:
            mlp = layer + "mlp."
            last = f"experts.local_experts.{meg['num_moe_experts'] - 1}."
            want(True, mlp + "router.weight")
            want(linear_bias, mlp + "router.bias")
            want(meg.get("moe_router_enable_expert_bias"), mlp + "router.expert_bias")
            want(meg.get("moe_shared_expert_intermediate_size"), mlp + "shared_experts.linear_fc1.weight")
            want(True, mlp + last + "linear_fc1.weight")
            want(True, mlp + last + "linear_fc2.weight")
            want(linear_bias, mlp + last + "linear_fc1.bias")
            want(False, mlp + "linear_fc1.weight")
        else:
            want(False, layer + "mlp.router.weight")
    return present, absent


def _features(meg: dict) -> dict:
    """What a converted config exercises, independent of its sizes."""
    return dict(
        layer_kinds="".join(sorted(set("".join(_layer_kinds(meg))))),
        tied=bool(meg.get("share_embeddings_and_output_weights")),
        **{key: bool(meg.get(key)) for key in (
            "add_qkv_bias", "add_bias_linear", "qk_layernorm", "post_layernorm", "multi_latent_attention",
            "q_lora_rank", "moe_router_enable_expert_bias", "moe_shared_expert_intermediate_size", "window_size",
            "vision_model")},
        softmax_type=meg.get("softmax_type"),
        normalization=meg.get("normalization"),
        position_embedding_type=meg.get("position_embedding_type"),
    )


@pytest.fixture(params=tiny_models.family_ids(), ids=tiny_models.family_param_id)
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
    # The torch_dist parts of Mamba (in_proj .z .x .B .C .dt, conv1d .x .B
    # .C) and Gated DeltaNet (in_proj .query .key .value .z .beta .alpha,
    # conv1d .query .key .value) are rows of one module parameter: together
    # they must be that parameter, in rows.
    merged: dict = {}
    for name, shape in expected.items():
        base = name.rsplit(".", 1)[0]
        if name not in actual and base in actual and ("mixer." in name or ".self_attention." in name):
            rows = merged.get(base, (0,) + shape[1:])
            assert rows[1:] == shape[1:], (name, shape, rows)
            merged[base] = (rows[0] + shape[0],) + shape[1:]
        else:
            merged[name] = shape
    expected = merged

    assert actual == expected, _diff_report(actual, expected)

    present, absent = _feature_names(meg)
    missing = [name for name in present if name not in actual]
    assert not missing, f"{family_id}: its config's features imply {missing}; megatron-core's model has none"
    extra = [name for name in absent if name in actual]
    assert not extra, f"{family_id}: its config has not the features of {extra}; megatron-core's model has them"

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
    # head_dim as transformers reads it (an MLA config aliases it to
    # qk_rope_head_dim, which is what Megatron-Bridge's config map takes).
    head_dim = raw.get("head_dim") or getattr(text, "head_dim", None)
    assert cfg.kv_channels == (head_dim or field("hidden_size") // field("num_attention_heads"))


def test_tiny_model_keeps_the_published_features(bridge_run, tiny_checkpoints, tmp_path, family_id):
    """The shrink keeps what defines the family: the tiny checkpoint's
    converted config has the features of the published full-size model's
    (a bias, tied embeddings, q/k norms, experts and their shared expert, a
    dense first layer, Mamba layers, a window...), so that the tests above
    still exercise them."""
    fam = tiny_models.FAMILY_BY_ID[family_id]
    pub = tiny_models.published_config(fam)
    if pub is None:
        pytest.skip(f"no published config in {tiny_models.SHARED_HF_CONFIGS}")
    full = bridge_run.config(str(tiny_models.write_config_dir(pub, tmp_path / family_id)))["megatron"]
    tiny = bridge_run.config(str(tiny_checkpoints(family_id).path))["megatron"]
    want, got = _features(full), _features(tiny)
    assert got == want, {k: (want[k], got[k]) for k in want if want[k] != got[k]}


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
