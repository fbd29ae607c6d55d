"""The "megatron" config against what transformers makes of the same checkpoint.

The expected value of each Megatron field comes from the transformers config
object (AutoConfig.from_pretrained, which resolves defaults and derived values
such as head_dim) or from the tensors transformers actually wrote (a bias or a
q/k norm exists only if the HF model has it). Nothing is hand-written.
"""

from __future__ import annotations

import pytest

import tiny_models


@pytest.fixture(params=tiny_models.family_ids(), ids=tiny_models.family_param_id)
def family_id(request):
    return request.param


def _norm(ckpt: tiny_models.TinyCheckpoint, full) -> dict:
    """normalization and layernorm_epsilon from the norm the HF model itself
    builds before its first layer's mixer (the model made on the meta device,
    no weights): its class says RMSNorm or LayerNorm, its own epsilon is the
    value, whatever the config calls it (rms_norm_eps; Nemotron-H's RMSNorm
    reads layer_norm_epsilon)."""
    import torch
    import transformers

    with torch.device("meta"):
        model = getattr(transformers, ckpt.family.auto_class).from_config(full)
    # (EXAONE 4 has no norm before the mixer: the one after it.)
    norm = next(m for name, m in model.named_modules()
                if name.endswith(("layers.0.input_layernorm", "layers.0.norm", "layers.0.post_attention_layernorm"))
                and not name.startswith(("visual.", "vision_tower.", "model.visual.", "model.vision_tower.")))
    kind = type(norm).__name__
    if "RMSNorm" in kind:
        kind = "RMSNorm"
    elif "LayerNorm" in kind:
        kind = "LayerNorm"
    else:
        raise AssertionError(f"no expectation written for the norm class {kind}")
    eps = getattr(norm, "variance_epsilon", None)
    return dict(normalization=kind, layernorm_epsilon=norm.eps if eps is None else eps)


def _embedding_scaling(ckpt: tiny_models.TinyCheckpoint, full) -> dict:
    """apply_embedding_scaling from the word embedding the HF model builds
    (on the meta device): a scaled one (Gemma's) multiplies by its
    embed_scale, which must then be sqrt(hidden_size)."""
    import torch
    import transformers

    with torch.device("meta"):
        model = getattr(transformers, ckpt.family.auto_class).from_config(full)
    embedding = next(m for name, m in model.named_modules()
                     if name.endswith("embed_tokens") and "vision" not in name and "visual" not in name)
    scale = getattr(embedding, "scalar_embed_scale", None)
    if scale is None or scale == 1.0:
        return dict(apply_embedding_scaling=False)
    assert scale == full.get_text_config().hidden_size ** 0.5, scale
    return dict(apply_embedding_scaling=True)


# Qwen3-Next's decoder: Gated DeltaNet beside output-gated attention.
GATED_DELTA_NET = ("qwen3_next", "qwen3_5_text", "qwen3_5_moe_text")


def _expected(ckpt: tiny_models.TinyCheckpoint) -> dict:
    import transformers

    full = transformers.AutoConfig.from_pretrained(ckpt.path)
    if full.model_type == "nemotron_h":
        return dict(_expected_nemotron_h(full, ckpt.tensors), **_norm(ckpt, full))
    # A VLM: its language model's config is the text section; its layers
    # are wherever transformers saved the decoder ('language_model.model.').
    cfg = full.get_text_config()
    keys = ckpt.tensors
    # The language model's prefix, from its first layer's attention.
    # Sarvam MoE's saved names are its own (attention.dense, query_key_value,
    # query_layernorm): read its attention under them.
    sarvam = cfg.model_type == "sarvam_moe"
    # The first layer with attention (Qwen3-Next's first layers are linear).
    layer_types = getattr(cfg, "layer_types", None) or []
    first = layer_types.index("full_attention") if "linear_attention" in layer_types else 0
    o_proj = f"layers.{first}.attention.dense.weight" if sarvam else f"layers.{first}.self_attn.o_proj.weight"
    lm = next(k[: -len(o_proj)] for k in keys
              if k.endswith(o_proj) and not k.startswith(("visual.", "vision_tower.")))
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    heads = cfg.num_attention_heads
    if getattr(cfg, "kv_lora_rank", None):
        # Multi-latent attention: the HF module's own sizes.
        layer0 = "model.layers.0.self_attn."
        assert keys[layer0 + "kv_b_proj.weight"] == (
            heads * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank)
        exp = dict(
            num_layers=cfg.num_hidden_layers, hidden_size=cfg.hidden_size, num_attention_heads=heads,
            vocab_size=cfg.vocab_size, activation_func=cfg.hidden_act,
            share_embeddings_and_output_weights=bool(cfg.tie_word_embeddings), multi_latent_attention=True,
            q_lora_rank=cfg.q_lora_rank, kv_lora_rank=cfg.kv_lora_rank, qk_head_dim=cfg.qk_nope_head_dim,
            qk_pos_emb_head_dim=cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim,
            num_moe_experts=cfg.n_routed_experts, moe_router_topk=cfg.num_experts_per_tok,
            moe_ffn_hidden_size=cfg.moe_intermediate_size,
            moe_shared_expert_intermediate_size=cfg.moe_intermediate_size * cfg.n_shared_experts,
            moe_layer_freq=[0] * cfg.first_k_dense_replace + [1] * (cfg.num_hidden_layers - cfg.first_k_dense_replace),
            moe_router_topk_scaling_factor=cfg.routed_scaling_factor,
            rotary_base=rope.get("rope_theta"),
            rotary_scaling_factor=rope.get("factor", 1.0) if rope.get("rope_type") == "yarn" else 1.0,
            **_norm(ckpt, full),
            **_embedding_scaling(ckpt, full),
        )
        if cfg.model_type == "sarvam_mla":
            # DeepseekV3ForCausalLM's router, whatever the file says: sigmoid
            # scores in fp32, the expert bias for the choice, renormalized
            # top-k, groups as transformers scores them; rope on interleaved pairs.
            for i in range(cfg.num_hidden_layers):
                assert (f"model.layers.{i}.mlp.gate.e_score_correction_bias" in keys) == (i >= cfg.first_k_dense_replace)
            assert cfg.norm_topk_prob and cfg.rope_interleave
            exp.update(moe_router_score_function="sigmoid", moe_router_enable_expert_bias=True,
                       moe_router_dtype="fp32", moe_router_num_groups=cfg.n_group, moe_router_group_topk=cfg.topk_group)
        if cfg.model_type == "glm_moe_dsa":
            # GlmMoeDsaTopkRouter (sigmoid in fp32, the expert bias for the
            # choice) on the layers mlp_layer_types makes sparse; DeepSeek
            # Sparse Attention with the indexer's sizes as the HF module has them.
            sparse = [int(t == "sparse") for t in cfg.mlp_layer_types]
            for i in range(cfg.num_hidden_layers):
                assert (f"model.layers.{i}.mlp.gate.e_score_correction_bias" in keys) == bool(sparse[i])
            idx = "model.layers.0.self_attn.indexer."
            assert keys[idx + "wq_b.weight"] == (cfg.index_n_heads * cfg.index_head_dim, cfg.q_lora_rank)
            assert keys[idx + "wk.weight"] == (cfg.index_head_dim, cfg.hidden_size)
            assert keys[idx + "weights_proj.weight"] == (cfg.index_n_heads, cfg.hidden_size)
            assert set(cfg.indexer_types) == {"full"}
            exp.update(moe_layer_freq=sparse, moe_router_score_function="sigmoid", moe_router_enable_expert_bias=True,
                       moe_router_dtype="fp32", moe_router_num_groups=cfg.n_group, moe_router_group_topk=cfg.topk_group,
                       experimental_attention_variant="dsa", dsa_indexer_n_heads=cfg.index_n_heads,
                       dsa_indexer_head_dim=cfg.index_head_dim, dsa_indexer_topk=cfg.index_topk)
        return exp
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    # The attention's real q rows / heads (what the HF module uses).
    attn = lm + f"layers.{first}.self_attn."
    if sarvam:
        attn = lm + "layers.0.attention."
        assert keys[attn + "query_key_value.weight"][0] == (heads + 2 * cfg.num_key_value_heads) * head_dim
    elif attn + "qkv_proj.weight" in keys:  # HF-fused [q; k; v] (Phi-3)
        assert keys[attn + "qkv_proj.weight"][0] == (heads + 2 * cfg.num_key_value_heads) * head_dim
    elif getattr(cfg, "model_type", None) in GATED_DELTA_NET:
        # The output gate: q_proj holds a gate row for each query row.
        assert keys[attn + "q_proj.weight"][0] == 2 * heads * head_dim
    else:
        assert keys[attn + "q_proj.weight"][0] == heads * head_dim
    exp = dict(
        num_layers=cfg.num_hidden_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=getattr(cfg, "intermediate_size", None),
        num_attention_heads=heads,
        num_query_groups=cfg.num_key_value_heads,
        kv_channels=head_dim,
        vocab_size=cfg.vocab_size,
        **_norm(ckpt, full),
        **_embedding_scaling(ckpt, full),
        activation_func=getattr(cfg, "hidden_act", None) or getattr(cfg, "hidden_activation", None),
        share_embeddings_and_output_weights=bool(full.tie_word_embeddings),
        add_qkv_bias=any(attn + n in keys for n in ("q_proj.bias", "qkv_proj.bias", "query_key_value.bias")),
        add_bias_linear=attn + "o_proj.bias" in keys or attn + "dense.bias" in keys,
        qk_layernorm=attn + "q_norm.weight" in keys or attn + "query_layernorm.weight" in keys,
        rotary_base=rope.get("rope_theta"),
        params_dtype=str(cfg.dtype).replace("torch.", "") if cfg.dtype else "float32",
    )
    rope_type = rope.get("rope_type", "default")
    exp["rope_scaling"] = rope_type == "llama3"
    if rope_type == "llama3":
        exp["rope_scaling_factor"] = rope["factor"]
    elif rope_type == "yarn":
        exp.update(position_embedding_type="yarn", yarn_rotary_scaling_factor=rope["factor"],
                   yarn_original_max_position_embeddings=rope["original_max_position_embeddings"],
                   yarn_beta_fast=rope.get("beta_fast", 32.0), yarn_beta_slow=rope.get("beta_slow", 1.0),
                   yarn_correction_range_round_to_int=rope.get("truncate", True))
    elif rope_type != "default":
        raise AssertionError(f"no expectation written for rope_type {rope_type!r}")
    # transformers 5 resolves whether the sliding window is used (Qwen2 with
    # use_sliding_window=false has sliding_window None). HF's window counts the
    # current token; Megatron's (left, right) excludes it.
    window = getattr(cfg, "sliding_window", None)
    exp["window_size"] = [window - 1, 0] if window else None
    if getattr(cfg, "layer_types", None) and window:
        exp["window_attn_skip_freq"] = [int(t == "sliding_attention") for t in cfg.layer_types]
    if attn + "sinks" in keys:
        exp["softmax_type"] = "learnable"
    if rope.get("mrope_section") and cfg.model_type not in GATED_DELTA_NET:
        # (Qwen3.5's language model alone: its text positions are the same on
        # the three sections, which is the plain rotary.)
        # Qwen2.5-VL: multimodal rotary sections, of the default rotary.
        exp.update(position_embedding_type="mrope", mrope_section=list(rope["mrope_section"]))
    if cfg.model_type == "gemma3_text":
        # Gemma 2's conversion, plus q/k norms and two rotary bases by layer
        # type; the global layers' linear scaling (4B and larger).
        full_rope = rope["full_attention"]
        exp.update(activation_func="fast_gelu", layernorm_zero_centered_gamma=True, post_layernorm=True,
                   query_pre_attn_scalar=cfg.query_pre_attn_scalar,
                   rotary_base=full_rope["rope_theta"],
                   rotary_base_local=rope["sliding_attention"]["rope_theta"],
                   seq_len_interpolation_factor=full_rope["factor"] if full_rope.get("rope_type") == "linear" else None,
                   share_embeddings_and_output_weights=bool(full.tie_word_embeddings))
    if full is not cfg:
        # The vision side: its config as the checkpoint has it, its width
        # (the projector's input) and the special tokens.
        vision = full.vision_config
        exp.update(vision_model={"qwen2_5_vl": "qwen2_5_vl", "gemma3": "siglip", "mistral3": "pixtral"}[full.model_type],
                   image_token_id=getattr(full, "image_token_id", None) or getattr(full, "image_token_index"))
        if full.model_type == "gemma3":
            exp.update(vision_hidden_size=vision.hidden_size, mm_tokens_per_image=full.mm_tokens_per_image,
                       vision_start_token_id=full.boi_token_index, vision_end_token_id=full.eoi_token_index)
        elif full.model_type == "qwen2_5_vl":
            exp.update(video_token_id=full.video_token_id, vision_start_token_id=full.vision_start_token_id,
                       vision_end_token_id=full.vision_end_token_id)
    if "partial_rotary_factor" in rope:
        # The rotary embedding on that part of each head (Nemotron, GLM-4.5).
        exp["rotary_percent"] = rope["partial_rotary_factor"]
    if cfg.model_type == "exaone4":
        # Norms after attention and the MLP and none before (no input_layernorm
        # was written); a layer without a window has no rotary.
        assert lm + "layers.0.input_layernorm.weight" not in keys
        assert lm + "layers.0.post_feedforward_layernorm.weight" in keys
        exp.update(post_layernorm=True, pre_layernorm=False)
        if window:
            exp["no_rope_freq"] = [int(t == "full_attention") for t in cfg.layer_types]
    if cfg.model_type == "exaone_moe":
        # A layer without a window has no rotary; dense and sparse layers by
        # mlp_layer_types; DeepSeek-V3's router (sigmoid scores, expert bias
        # stored beside the gate, renormalized top-k), a shared expert.
        if window:
            exp["no_rope_freq"] = [int(t == "full_attention") for t in cfg.layer_types]
        sparse = [int(t == "sparse") for t in cfg.mlp_layer_types]
        for i, s in enumerate(sparse):
            assert (lm + f"layers.{i}.mlp.e_score_correction_bias" in keys) == bool(s)
        assert cfg.norm_topk_prob
        exp.update(num_moe_experts=cfg.num_experts, moe_router_topk=cfg.num_experts_per_tok,
                   moe_ffn_hidden_size=cfg.moe_intermediate_size, moe_layer_freq=sparse,
                   moe_shared_expert_intermediate_size=cfg.moe_intermediate_size * cfg.num_shared_experts,
                   moe_router_score_function="sigmoid", moe_router_enable_expert_bias=True,
                   moe_router_topk_scaling_factor=cfg.routed_scaling_factor, moe_router_num_groups=cfg.n_group,
                   moe_router_group_topk=cfg.topk_group)
    if sarvam:
        # GLM-4.5's MoE layer: the first first_k_dense_replace layers dense, a
        # sigmoid router with the expert bias saved beside the gate
        # (mlp.gate.expert_bias), renormalized and scaled top-k, a shared expert.
        sparse = [int(i >= cfg.first_k_dense_replace) for i in range(cfg.num_hidden_layers)]
        for i, s in enumerate(sparse):
            assert (lm + f"layers.{i}.mlp.gate.expert_bias" in keys) == bool(s)
        assert cfg.norm_topk_prob
        exp.update(num_moe_experts=cfg.n_routed_experts, moe_router_topk=cfg.num_experts_per_tok,
                   moe_ffn_hidden_size=cfg.moe_intermediate_size, moe_layer_freq=sparse,
                   moe_shared_expert_intermediate_size=cfg.moe_intermediate_size * cfg.n_shared_experts,
                   moe_router_score_function="sigmoid", moe_router_enable_expert_bias=True,
                   moe_router_dtype="fp32", moe_router_topk_scaling_factor=cfg.routed_scaling_factor,
                   moe_router_num_groups=cfg.n_group, moe_router_group_topk=cfg.topk_group)
    if cfg.model_type == "hy_v3":
        # Dense and sparse layers by mlp_layer_types; a sigmoid router in fp32
        # (the expert bias saved as mlp.expert_bias, for the choice only), the
        # top k renormalized and scaled, a shared expert; no aux loss.
        sparse = [int(t == "sparse") for t in cfg.mlp_layer_types]
        for i, s in enumerate(sparse):
            assert (lm + f"layers.{i}.mlp.expert_bias" in keys) == bool(s)
            assert (lm + f"layers.{i}.mlp.router.gate.weight" in keys) == bool(s)
        exp.update(num_moe_experts=cfg.num_experts, moe_router_topk=cfg.num_experts_per_tok,
                   moe_ffn_hidden_size=cfg.moe_intermediate_size, moe_layer_freq=sparse,
                   moe_shared_expert_intermediate_size=cfg.moe_intermediate_size * cfg.num_shared_experts,
                   moe_router_score_function="sigmoid", moe_router_enable_expert_bias=True,
                   moe_router_dtype="fp32", moe_router_topk_scaling_factor=cfg.router_scaling_factor,
                   moe_router_load_balancing_type="none", moe_aux_loss_coeff=0.0)
    if cfg.model_type in GATED_DELTA_NET:
        # As Megatron-Bridge's Qwen3NextBridge and Qwen35Bridge: Gated DeltaNet where
        # layer_types says linear_attention, with the sizes of the module HF
        # wrote; zero-centred norms; output-gated attention; every layer MoE
        # with a sigmoid-gated shared expert, the router in fp32.
        nk, nv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
        dk, dv = cfg.linear_key_head_dim, cfg.linear_value_head_dim
        gdn = lm + "layers.0.linear_attn."
        if cfg.model_type == "qwen3_next":  # per key head [q | k | v | z] and [b | a]
            assert keys[gdn + "in_proj_qkvz.weight"][0] == 2 * nk * dk + 2 * nv * dv
            assert keys[gdn + "in_proj_ba.weight"][0] == 2 * nv
        else:  # Qwen3.5: [q | k | v], z, b, a
            assert keys[gdn + "in_proj_qkv.weight"][0] == 2 * nk * dk + nv * dv
            assert keys[gdn + "in_proj_z.weight"][0] == nv * dv
            assert keys[gdn + "in_proj_b.weight"][0] == keys[gdn + "in_proj_a.weight"][0] == nv
        assert keys[gdn + "conv1d.weight"] == (2 * nk * dk + nv * dv, 1, cfg.linear_conv_kernel_dim)
        exp.update(layernorm_zero_centered_gamma=True, attention_output_gate=True,
                   experimental_attention_variant="gated_delta_net",
                   linear_attention_freq=[int(t == "linear_attention") for t in layer_types],
                   linear_conv_kernel_dim=cfg.linear_conv_kernel_dim, linear_key_head_dim=dk,
                   linear_value_head_dim=dv, linear_num_key_heads=nk, linear_num_value_heads=nv)
        if cfg.model_type == "qwen3_5_text":
            exp.update(num_moe_experts=None, gated_linear_unit=True)
        else:
            assert keys[lm + "layers.0.mlp.shared_expert_gate.weight"] == (1, cfg.hidden_size)
            exp.update(num_moe_experts=cfg.num_experts, moe_router_topk=cfg.num_experts_per_tok,
                       moe_ffn_hidden_size=cfg.moe_intermediate_size,
                       moe_shared_expert_intermediate_size=cfg.shared_expert_intermediate_size,
                       moe_shared_expert_gate=True, moe_router_pre_softmax=not getattr(cfg, "norm_topk_prob", True),
                       moe_router_dtype="fp32")
            if not hasattr(cfg, "intermediate_size"):
                del exp["ffn_hidden_size"]  # no dense MLP (Qwen3.5 MoE): Megatron-Core's default stands
    if cfg.model_type == "nemotron":
        # As Megatron-Bridge's NemotronBridge: relu2 is squared_relu, the MLP has
        # no gate (no gate_proj was written), LayerNorm1P multiplies by (w + 1).
        assert cfg.hidden_act == "relu2" and lm + "layers.0.mlp.gate_proj.weight" not in keys
        exp.update(activation_func="squared_relu", gated_linear_unit=False, layernorm_zero_centered_gamma=True)
    if cfg.model_type == "gemma":
        # As Megatron-Bridge's GemmaBridge: the tanh GELU is fast_gelu, norms
        # multiply by (1 + w), embeddings tied unless the config says not.
        exp.update(activation_func="fast_gelu", layernorm_zero_centered_gamma=True,
                   share_embeddings_and_output_weights=bool(cfg.tie_word_embeddings))
    if cfg.model_type == "gemma2":
        # As Megatron-Bridge converts Gemma 2: the tanh GELU is fast_gelu, norms
        # multiply by (1 + w), a norm follows attention and MLP, scores are
        # soft-capped and scaled by query_pre_attn_scalar.
        exp.update(activation_func="fast_gelu", layernorm_zero_centered_gamma=True, post_layernorm=True,
                   query_pre_attn_scalar=cfg.query_pre_attn_scalar,
                   attn_logit_softcapping=cfg.attn_logit_softcapping,
                   final_logit_softcapping=cfg.final_logit_softcapping,
                   share_embeddings_and_output_weights=bool(cfg.tie_word_embeddings))
        assert "model.layers.0.post_feedforward_layernorm.weight" in keys
    if getattr(cfg, "swiglu_limit", None) is not None:
        # gpt-oss: gate * sigmoid(alpha * gate) * (up + 1), both clamped.
        exp.update(activation_func="quick_gelu" if cfg.swiglu_alpha == 1.702 else "?", glu_linear_offset=1.0,
                   activation_func_clamp_value=cfg.swiglu_limit, add_qkv_bias=True)
    return exp


def _expected_nemotron_h(cfg, keys: dict) -> dict:
    """A hybrid Mamba model (Megatron-Core MambaModel), from transformers'
    NemotronHConfig and the tensors its model wrote."""
    layer0 = "backbone.layers.0.mixer."
    heads, head_dim, groups, state = cfg.mamba_num_heads, cfg.mamba_head_dim, cfg.n_groups, cfg.ssm_state_size
    # The Mamba mixer HF wrote: in_proj [z | x | B | C | dt], conv1d [x | B | C].
    assert keys[layer0 + "in_proj.weight"][0] == 2 * heads * head_dim + 2 * groups * state + heads
    assert keys[layer0 + "conv1d.weight"] == (heads * head_dim + 2 * groups * state, 1, cfg.conv_kernel)
    attn = next(k for k in keys if k.endswith("mixer.q_proj.weight"))
    exp = dict(
        hybrid_override_pattern=cfg.hybrid_override_pattern, num_layers=cfg.num_hidden_layers,
        hidden_size=cfg.hidden_size, ffn_hidden_size=cfg.intermediate_size,
        num_attention_heads=cfg.num_attention_heads, num_query_groups=cfg.num_key_value_heads,
        kv_channels=keys[attn][0] // cfg.num_attention_heads, vocab_size=cfg.vocab_size,
        activation_func="squared_relu", gated_linear_unit=False, position_embedding_type="none",
        share_embeddings_and_output_weights=bool(cfg.tie_word_embeddings),
        add_qkv_bias=attn.replace("weight", "bias") in keys, add_bias_linear=False,
        mamba_num_heads=heads, mamba_head_dim=head_dim, mamba_num_groups=groups, mamba_state_dim=state,
        is_hybrid_model=True,
    )
    if "E" in cfg.hybrid_override_pattern:
        # Megatron-Bridge's Nemotron-H MoE: sigmoid scores, expert bias for the
        # choice, renormalized top-k scaled by routed_scaling_factor.
        gate = next(k for k in keys if k.endswith("mixer.gate.weight"))
        assert keys[gate][0] == cfg.n_routed_experts
        exp.update(num_moe_experts=cfg.n_routed_experts, moe_router_topk=cfg.num_experts_per_tok,
                   moe_ffn_hidden_size=cfg.moe_intermediate_size,
                   moe_shared_expert_intermediate_size=cfg.moe_shared_expert_intermediate_size,
                   moe_router_score_function="sigmoid", moe_router_enable_expert_bias=True,
                   moe_router_topk_scaling_factor=cfg.routed_scaling_factor, moe_router_num_groups=cfg.n_group,
                   moe_router_group_topk=cfg.topk_group)
    else:
        exp["num_moe_experts"] = None
    return exp


def test_megatron_config_agrees_with_transformers(bridge_run, tiny_checkpoints, family_id):
    ckpt = tiny_checkpoints(family_id)
    meg = bridge_run.config(str(ckpt.path))["megatron"]
    errors = []
    expected = _expected(ckpt)
    if "vision_model" in expected:
        # The vision config is kept as the checkpoint spells it.
        import json

        saved = json.loads((ckpt.path / "config.json").read_text())["vision_config"]
        if meg.get("vision_config") != saved:
            errors.append(f"vision_config: bridge-run {meg.get('vision_config')!r}, config.json {saved!r}")
    for key, want in expected.items():
        got = meg.get(key)
        same = (
            float(got) == float(want)
            if isinstance(want, float) and isinstance(got, (int, float))
            else got == want
        )
        if not same:
            errors.append(f"{key}: bridge-run {got!r}, transformers {want!r}")
    assert not errors, "\n".join(errors)


def test_nemotron_file_saved_before_transformers_5(bridge_run, tiny_checkpoints, tmp_path):
    """Minitron's and Nemotron-4's published files keep partial_rotary_factor
    at the top level and have no rope_parameters: transformers 5 reads it
    from there, and so does the conversion."""
    import json
    import shutil

    import transformers

    hf = tmp_path / "hf"
    shutil.copytree(tiny_checkpoints("nemotron-4-15b").path, hf)
    cfg = json.loads((hf / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    cfg.update(partial_rotary_factor=0.25, rope_theta=rope["rope_theta"])
    (hf / "config.json").write_text(json.dumps(cfg))
    want = transformers.AutoConfig.from_pretrained(hf).rope_parameters["partial_rotary_factor"]
    assert want == 0.25
    assert bridge_run.config(str(hf))["megatron"]["rotary_percent"] == want


def test_sarvam_moe_file_in_sarvams_own_names(bridge_run, tiny_checkpoints, tmp_path):
    """Sarvam-30B's published file (written for its remote code) names the
    experts num_experts and num_shared_experts, the q/k/v biases use_qkv_bias,
    and keeps rope_theta at the top level; transformers reads them through its
    attribute_map, and so does the conversion."""
    import json
    import shutil

    import transformers

    hf = tmp_path / "hf"
    shutil.copytree(tiny_checkpoints("sarvam-30b").path, hf)
    cfg = json.loads((hf / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    cfg.update(num_experts=cfg.pop("n_routed_experts"), num_shared_experts=2,
               use_qkv_bias=cfg.pop("attention_bias"), rope_theta=rope["rope_theta"])
    cfg.pop("n_shared_experts")
    (hf / "config.json").write_text(json.dumps(cfg))
    want = transformers.AutoConfig.from_pretrained(hf)
    assert want.n_shared_experts == 2 and want.attention_bias is False
    meg = bridge_run.config(str(hf))["megatron"]
    assert meg["num_moe_experts"] == want.n_routed_experts
    assert meg["moe_shared_expert_intermediate_size"] == want.moe_intermediate_size * want.n_shared_experts
    assert meg["add_qkv_bias"] is False
    assert meg["rotary_base"] == want.rope_parameters["rope_theta"]
    # (bridge_run caches its answers by directory: the biased file is another.)
    biased = tiny_models.write_config_dir(dict(cfg, use_qkv_bias=True), tmp_path / "biased")
    assert transformers.AutoConfig.from_pretrained(biased).attention_bias is True
    assert bridge_run.config(str(biased))["megatron"]["add_qkv_bias"] is True
