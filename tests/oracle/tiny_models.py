"""Tiny Hugging Face checkpoints for the oracle tests, built by transformers.

Each family starts from a real published ``config.json`` (``../shared/hf-configs`` beside the checkout,
or the directory in ``$BRIDGE_HF_CONFIGS``) and is shrunk to tiny dimensions while
keeping what defines the family: biases, the tie flag, rope scaling, sliding
window, GQA, whether ``head_dim`` is spelled out. When the published configs are
not on this machine (CI), the transformers config class defaults for the
family's ``model_type`` are shrunk the same way, plus the family's ``traits``.

The model is instantiated by transformers with random weights under
``torch.manual_seed`` and written with ``save_pretrained``, so tensor names,
shapes and the ``config.json`` layout are whatever the real library produces.

This module also wraps the ``bridge-run`` binary (``BridgeRun``).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ../shared beside the checkout (CI's clone has it there too).
SHARED_HF_CONFIGS = Path(
    os.environ.get("BRIDGE_HF_CONFIGS", Path(__file__).resolve().parents[3] / "shared" / "hf-configs"))

# The tiny dimensions every family is shrunk to.
TINY_HIDDEN = 64
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_KV_HEADS_GQA = 2  # used when the published model has fewer kv heads than heads
TINY_HEAD_DIM = 16  # = TINY_HIDDEN / TINY_HEADS, so it is also the derived value
TINY_INTERMEDIATE = 128
TINY_VOCAB = 256
TINY_EXPERTS = 4
TINY_MOE_INTERMEDIATE = 32


@dataclass(frozen=True)
class Family:
    id: str  # pytest id
    mapping: str  # the mapping bridge-run must pick
    model_type: str
    published: str  # file name under SHARED_HF_CONFIGS
    what: str  # what this family exercises
    # Keys that define the family. In the published config they are already
    # there; in the class-default fallback they are added so that the fallback
    # still exercises the same path (e.g. the tied Llama).
    traits: dict[str, Any] = field(default_factory=dict)
    # Set on the shrunk config whatever its origin (published or class
    # defaults), section by section: what the generic shrink cannot know (a
    # VLM's vision tower sizes, a head_dim the published file leaves out).
    tiny: dict[str, Any] = field(default_factory=dict)
    # The transformers auto class that builds the model: a VLM is an
    # image-text-to-text model, its language model under text_config.
    auto_class: str = "AutoModelForCausalLM"
    # The section of the published file that is this family's config: a
    # language model published only inside its VLM's config (Qwen3.5's
    # text_config).
    published_section: str | None = None

    @property
    def vlm(self) -> bool:
        return self.auto_class == "AutoModelForImageTextToText"


FAMILIES: list[Family] = [
    Family(
        "llama3.2-1b",
        "llama",
        "llama",
        "meta-llama__Llama-3.2-1B.json",
        "tied embeddings, llama3 rope scaling, explicit head_dim",
        traits={
            "tie_word_embeddings": True,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            "rope_theta": 500000.0,
        },
    ),
    Family(
        "llama3.1-8b",
        "llama",
        "llama",
        "meta-llama__Llama-3.1-8B.json",
        "untied output layer, head_dim absent",
        traits={"tie_word_embeddings": False},
    ),
    Family(
        "mistral-7b",
        "mistral",
        "mistral",
        "mistralai__Mistral-7B-v0.1.json",
        "sliding window",
        traits={"sliding_window": 4096, "tie_word_embeddings": False},
    ),
    Family(
        "qwen2.5-7b",
        "qwen2",
        "qwen2",
        "Qwen__Qwen2.5-7B.json",
        "q/k/v biases",
        traits={"tie_word_embeddings": False},
    ),
    Family(
        "qwen3-8b",
        "qwen3",
        "qwen3",
        "Qwen__Qwen3-8B.json",
        "per-head q/k RMSNorm",
        traits={"tie_word_embeddings": False},
    ),
]

FAMILIES += [
    Family(
        "qwen3-30b-a3b",
        "qwen3_moe",
        "qwen3_moe",
        "Qwen__Qwen3-30B-A3B.json",
        "mixture of experts (softmax router, renormalized top-k), q/k norm",
        traits={"tie_word_embeddings": False, "num_experts": 128, "num_experts_per_tok": 8,
                "moe_intermediate_size": 768, "norm_topk_prob": True, "decoder_sparse_step": 1,
                "mlp_only_layers": []},
    ),
    Family(
        "qwen1.5-moe-a2.7b",
        "qwen2_moe",
        "qwen2_moe",
        "Qwen__Qwen1.5-MoE-A2.7B.json",
        "mixture of experts (softmax over all experts, top-k not renormalized) beside a gated shared expert, "
        "q/k/v biases, a dense layer listed in mlp_only_layers",
        traits={"tie_word_embeddings": False, "num_experts": 60, "num_experts_per_tok": 4,
                "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "norm_topk_prob": False,
                "decoder_sparse_step": 1, "qkv_bias": True},
        # Layer 1 of the two is dense, so both kinds of layer are converted.
        tiny={"mlp_only_layers": [1], "shared_expert_intermediate_size": 96},
    ),
    Family(
        "mixtral-8x7b",
        "mixtral",
        "mixtral",
        "mistralai__Mixtral-8x7B-v0.1.json",
        "mixture of experts with w1/w3/w2 experts",
        traits={"tie_word_embeddings": False, "num_local_experts": 8, "num_experts_per_tok": 2},
    ),
]

FAMILIES += [
    Family(
        "deepseek-v3",
        "deepseek_v3",
        "deepseek_v3",
        "deepseek-ai__DeepSeek-V3.json",
        "MLA with query LoRA, dense first layer, shared expert, sigmoid router with expert bias, yarn",
        traits={"tie_word_embeddings": False, "n_routed_experts": 256, "num_experts_per_tok": 8,
                "moe_intermediate_size": 2048, "n_shared_experts": 1, "first_k_dense_replace": 3,
                "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
                "v_head_dim": 128, "scoring_func": "sigmoid", "topk_method": "noaux_tc", "n_group": 8,
                "topk_group": 4, "routed_scaling_factor": 2.5, "norm_topk_prob": True},
    ),
]

FAMILIES += [
    Family(
        "deepseek-v2-lite",
        "deepseek_v3",
        "deepseek_v2",
        "deepseek-ai__DeepSeek-V2-Lite.json",
        "MLA without query LoRA, softmax router without expert bias",
        traits={"tie_word_embeddings": False, "n_routed_experts": 64, "num_experts_per_tok": 6,
                "moe_intermediate_size": 1408, "n_shared_experts": 2, "first_k_dense_replace": 1,
                "q_lora_rank": None, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
                "v_head_dim": 128, "scoring_func": "softmax", "topk_method": "greedy", "norm_topk_prob": False},
    ),
]

FAMILIES += [
    Family(
        "glm4.5-air",
        "glm4_moe",
        "glm4_moe",
        "zai-org__GLM-4.5-Air.json",
        "q/k/v biases, partial rotary, dense first layer, shared expert, sigmoid router with expert bias",
        traits={"tie_word_embeddings": False, "n_routed_experts": 128, "num_experts_per_tok": 8,
                "moe_intermediate_size": 1408, "n_shared_experts": 1, "first_k_dense_replace": 1,
                "attention_bias": True, "partial_rotary_factor": 0.5, "norm_topk_prob": True,
                "use_qk_norm": False, "n_group": 1, "topk_group": 1},
    ),
]

FAMILIES += [
    Family(
        "olmoe-1b-7b",
        "olmoe",
        "olmoe",
        "allenai__OLMoE-1B-7B.UNVERIFIED.json",
        "q/k RMSNorm over all heads, softmax router without renormalization",
        traits={"tie_word_embeddings": False, "num_experts": 64, "num_experts_per_tok": 8,
                "intermediate_size": 1024, "norm_topk_prob": False, "clip_qkv": None},
    ),
    Family(
        "minimax-m2",
        "minimax_m2",
        "minimax_m2",
        "MiniMaxAI__MiniMax-M2.7.json",
        "q/k RMSNorm over all heads with GQA, partial rotary (rotary_dim), sigmoid router with expert bias",
        traits={"tie_word_embeddings": False, "num_local_experts": 256, "num_experts_per_tok": 8,
                "head_dim": 128, "rotary_dim": 64, "scoring_func": "sigmoid", "use_qk_norm": True,
                "qk_norm_type": "per_layer", "use_routing_bias": True},
    ),
]

FAMILIES += [
    Family(
        "gpt-oss-20b",
        "gpt_oss",
        "gpt_oss",
        "openai__gpt-oss-20b.json",
        "fused 3-D experts with interleaved gate/up and biases, attention sinks, alternating sliding window, yarn",
        traits={"tie_word_embeddings": False, "num_local_experts": 32, "num_experts_per_tok": 4,
                "head_dim": 64, "attention_bias": True, "sliding_window": 128, "swiglu_limit": 7.0,
                "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                 "original_max_position_embeddings": 4096, "truncate": False},
                "rope_theta": 150000.0},
    ),
]

FAMILIES += [
    Family(
        "phi3-mini",
        "phi3",
        "phi3",
        "microsoft__Phi-3-mini-4k-instruct.json",
        "HF-fused qkv_proj [q; k; v] and gate_up_proj [gate; up], sliding window",
        traits={"tie_word_embeddings": False, "sliding_window": 2047, "rope_scaling": None},
    ),
    Family(
        "glm4.7-flash",
        "glm4_moe_lite",
        "glm4_moe_lite",
        "zai-org__GLM-4.7-Flash.json",
        "MLA with query LoRA, GLM's sigmoid router with expert bias and renormalized top-k, a shared expert, "
        "the first layer dense (mlp_layer_types)",
        traits={"tie_word_embeddings": False, "n_routed_experts": 64, "num_experts_per_tok": 4,
                "moe_intermediate_size": 1536, "n_shared_experts": 1, "q_lora_rank": 768, "kv_lora_rank": 512,
                "qk_nope_head_dim": 192, "qk_rope_head_dim": 64, "v_head_dim": 256, "n_group": 1, "topk_group": 1,
                "routed_scaling_factor": 1.8, "norm_topk_prob": True},
    ),
    Family(
        "exaone4-32b",
        "exaone4",
        "exaone4",
        "LGAI-EXAONE__EXAONE-4.0-32B.json",
        "norms after attention and MLP and none before, q/k norms, llama3 rope scaling, a sliding window on three "
        "layers of four whose full-attention layers have no rotary",
        traits={"tie_word_embeddings": False, "sliding_window": 4096, "rope_theta": 1000000.0,
                "rope_scaling": {"factor": 16.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                 "original_max_position_embeddings": 8192, "rope_type": "llama3"}},
        # Both kinds of layer in the two tiny ones.
        tiny={"layer_types": ["sliding_attention", "full_attention"]},
    ),
    Family(
        "k-exaone-236b",
        "exaone_moe",
        "exaone_moe",
        "LGAI-EXAONE__K-EXAONE-236B-A23B.json",
        "pre-norm decoder with per-head q/k norms, a sliding window on three layers of four whose full-attention "
        "layers have no rotary, DeepSeek-V3's router (sigmoid, expert bias, renormalized and scaled top-k) beside "
        "a shared expert, the first layer dense (mlp_layer_types), the expert bias stored beside the gate",
        # ExaoneMoeConfig's defaults (the published config is not on this machine).
        traits={"tie_word_embeddings": False, "sliding_window": 4096, "num_experts": 64, "num_experts_per_tok": 8,
                "moe_intermediate_size": 1024, "num_shared_experts": 1, "first_k_dense_replace": 1,
                "norm_topk_prob": True, "routed_scaling_factor": 2.5, "n_group": 1, "topk_group": 1},
        # Both kinds of attention and of MLP in the two tiny layers.
        tiny={"layer_types": ["sliding_attention", "full_attention"], "mlp_layer_types": ["dense", "sparse"]},
    ),
    Family(
        "sarvam-30b",
        "sarvam_moe",
        "sarvam_moe",
        "sarvamai__sarvam-30b.json",
        "GLM-4.5's decoder under Sarvam's names: fused [q; k; v] (attention.query_key_value), per-head q/k norms, "
        "full rotary, the first layer dense, a sigmoid router with expert bias (mlp.gate.expert_bias) and "
        "renormalized, scaled top-k beside a shared expert",
        # SarvamMoEConfig's defaults (the published config is not on this machine).
        traits={"tie_word_embeddings": False, "n_routed_experts": 128, "num_experts_per_tok": 6,
                "moe_intermediate_size": 1024, "n_shared_experts": 1, "first_k_dense_replace": 1,
                "norm_topk_prob": True, "routed_scaling_factor": 2.5, "n_group": 1, "topk_group": 1,
                "use_qk_norm": True},
    ),
    Family(
        "sarvam-105b",
        "sarvam_mla",
        "sarvam_mla",
        "sarvamai__sarvam-105b.json",
        "DeepSeek-V3's decoder: MLA without query LoRA, yarn, the first layer dense, a sigmoid router with expert "
        "bias and renormalized, scaled top-k beside a shared expert",
        # SarvamMLAConfig's defaults (the published config is not on this
        # machine) with the yarn of Megatron-Bridge's SarvamMLAModelProvider.
        traits={"tie_word_embeddings": False, "n_routed_experts": 128, "num_experts_per_tok": 8,
                "moe_intermediate_size": 2048, "n_shared_experts": 1, "first_k_dense_replace": 1,
                "q_lora_rank": None, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
                "v_head_dim": 128, "norm_topk_prob": True, "routed_scaling_factor": 2.5, "rope_theta": 10000.0,
                "rope_scaling": {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
                                 "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
                "max_position_embeddings": 131072},
    ),
    Family(
        "glm5",
        "glm_moe_dsa",
        "glm_moe_dsa",
        "zai-org__GLM-5.json",
        "DeepSeek-V3's decoder (MLA with query LoRA, the first layers dense, a sigmoid router with expert bias and "
        "renormalized, scaled top-k beside a shared expert) with DeepSeek Sparse Attention's indexer in every layer "
        "(wq_b, wk, a LayerNorm k_norm with bias, weights_proj), its rotary half stored first in each head",
        # GLM-5's own indexer sizes (the mapping reorders each indexer head
        # as these sizes allow) and a top-k shorter than the test sequences.
        tiny={"qk_rope_head_dim": 64, "head_dim": 64, "qk_head_dim": 80, "index_n_heads": 32,
              "index_head_dim": 128, "index_topk": 4},
    ),
    Family(
        "hy3-preview",
        "hy_v3",
        "hy_v3",
        "tencent__Hy3-preview.json",
        "per-head q/k norms before the rotary, the first layer dense (mlp_layer_types), a sigmoid router in fp32 "
        "with expert bias and renormalized top-k scaled by router_scaling_factor beside a shared expert, the MoE "
        "tensors under Hunyuan's names (mlp.router.gate, mlp.expert_bias, mlp.shared_mlp)",
        # HYV3Config's defaults (the published config is not on this machine).
        traits={"tie_word_embeddings": False, "num_experts": 192, "num_experts_per_tok": 8,
                "moe_intermediate_size": 1536, "num_shared_experts": 1, "router_scaling_factor": 2.826},
        tiny={"mlp_layer_types": ["dense", "sparse"]},
    ),
    Family(
        "qwen3-next-80b-a3b",
        "qwen3_next",
        "qwen3_next",
        "Qwen__Qwen3-Next-80B-A3B-Instruct.json",
        "Gated DeltaNet linear attention (in_proj_qkvz grouped per key head, in_proj_ba, the short convolution, "
        "A_log, dt_bias, a gated norm that is not zero-centred) beside full attention with an output gate in q_proj, "
        "per-head q/k norms and a quarter of each head rotary; zero-centred norms; every layer a mixture of experts "
        "beside a sigmoid-gated shared expert",
        traits={"tie_word_embeddings": False, "num_experts": 512, "num_experts_per_tok": 10,
                "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512, "norm_topk_prob": True,
                "partial_rotary_factor": 0.25},
        # Four layers (three linear, one full) with tiny, grouped DeltaNet heads:
        # 2 key heads of 2 value heads each.
        tiny={"num_hidden_layers": 4,
              "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
              "linear_key_head_dim": 8, "linear_value_head_dim": 8, "linear_num_key_heads": 2,
              "linear_num_value_heads": 4, "shared_expert_intermediate_size": 2 * TINY_MOE_INTERMEDIATE},
    ),
    Family(
        "qwen3.5-27b",
        "qwen3_5_text",
        "qwen3_5_text",
        "Qwen__Qwen3.5-27B.json",
        "Qwen3.5's dense language model (its VLM's text_config): Qwen3-Next's decoder with the Gated DeltaNet input "
        "projection in four tensors (in_proj_qkv, in_proj_z, in_proj_b, in_proj_a) and a SwiGLU MLP in every layer",
        traits={"tie_word_embeddings": False, "partial_rotary_factor": 0.25},
        # Multimodal rotary sections of the rotary half of the tiny head
        # (16 x 0.25 / 2 = 2 pairs), in the published 11:11:10 proportion.
        tiny={"rope_parameters": {"mrope_section": [1, 1, 0]},
              "num_hidden_layers": 4,
              "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
              "linear_key_head_dim": 8, "linear_value_head_dim": 8, "linear_num_key_heads": 2,
              "linear_num_value_heads": 4},
        published_section="text_config",
    ),
    Family(
        "qwen3.5-35b-a3b",
        "qwen3_5_moe_text",
        "qwen3_5_moe_text",
        "Qwen__Qwen3.5-35B-A3B.json",
        "Qwen3.5's MoE language model (its VLM's text_config): Qwen3-Next's decoder and experts with the Gated "
        "DeltaNet input projection in four tensors",
        traits={"tie_word_embeddings": False, "num_experts": 256, "num_experts_per_tok": 8,
                "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512, "partial_rotary_factor": 0.25},
        # Multimodal rotary sections of the rotary half of the tiny head
        # (16 x 0.25 / 2 = 2 pairs), in the published 11:11:10 proportion.
        tiny={"rope_parameters": {"mrope_section": [1, 1, 0]},
              "num_hidden_layers": 4,
              "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
              "linear_key_head_dim": 8, "linear_value_head_dim": 8, "linear_num_key_heads": 2,
              "linear_num_value_heads": 4, "shared_expert_intermediate_size": 2 * TINY_MOE_INTERMEDIATE},
        published_section="text_config",
    ),
    Family(
        "nemotron-4-15b",
        "nemotron",
        "nemotron",
        "nvidia__Nemotron-4-15B.json",
        "LayerNorm with biases stored zero-centred (LayerNorm1P), rotary on half of each head, an ungated "
        "squared-ReLU MLP, untied embeddings, grouped-query attention",
        # Nemotron-4-15B's 8 key-value heads (transformers' class default leaves
        # them None, which its own attention cannot build).
        traits={"tie_word_embeddings": False, "hidden_act": "relu2", "num_key_value_heads": 8},
    ),
    Family(
        "gemma-7b",
        "gemma",
        "gemma",
        "google__gemma-7b.json",
        "zero-centred RMSNorm, GELU-tanh gated MLP, word embeddings scaled by sqrt(hidden), tied embeddings, "
        "explicit head_dim",
        traits={"tie_word_embeddings": True, "hidden_act": "gelu_pytorch_tanh", "head_dim": 256},
    ),
    Family(
        "gemma2-9b",
        "gemma2",
        "gemma2",
        "google__gemma-2-9b.json",
        "zero-centred RMSNorm, post-attention and post-MLP norms, soft-capping, alternating sliding window, "
        "GELU-tanh, tied embeddings, explicit head_dim",
        traits={"sliding_window": 4096, "query_pre_attn_scalar": 256, "attn_logit_softcapping": 50.0,
                "final_logit_softcapping": 30.0, "hidden_activation": "gelu_pytorch_tanh"},
    ),
    Family(
        "gemma3-1b",
        "gemma3_text",
        "gemma3_text",
        "google__gemma-3-1b-it.json",
        "Gemma 2's layer with per-head q/k norms, two rotary bases (local and global), a window on five layers "
        "of six, no soft-capping",
        traits={"sliding_window": 512, "query_pre_attn_scalar": 256, "rope_theta": 1000000.0,
                "rope_local_base_freq": 10000.0, "sliding_window_pattern": 6,
                "hidden_activation": "gelu_pytorch_tanh"},
    ),
]

# Hybrid Mamba models (Megatron-Core MambaModel): the layers up to one of
# each kind the published model has.
FAMILIES += [
    Family(
        "nemotron-h-56b",
        "nemotron_h",
        "nemotron_h",
        "nvidia__Nemotron-H-56B-Base-8K.json",
        "hybrid Mamba-2 / attention / squared-ReLU MLP layers (M-M-M-M*), Mamba in_proj [z|x|B|C|dt] and conv1d "
        "[x|B|C] read as row blocks, no rotary positions, one norm per layer",
        traits={"layers_block_type": ["linear_attention", "mlp"] * 3 + ["linear_attention", "full_attention"],
                "mamba_num_heads": 256, "tie_word_embeddings": False},
        # The file spells the head size attention_head_dim, which transformers
        # 5 does not read (its head_dim defaults to 128, the 56B's): say both.
        tiny={"head_dim": TINY_HEAD_DIM},
    ),
    Family(
        "nemotron-3-nano",
        "nemotron_h",
        "nemotron_h",
        "nvidia__NVIDIA-Nemotron-3-Nano-30B-A3B-BF16.json",
        "hybrid Mamba-2 / attention / MoE layers (MEMEM*), sigmoid router with expert bias and a shared "
        "expert, per-expert HF tensors",
        traits={"layers_block_type": ["linear_attention", "moe"] * 2 + ["linear_attention", "full_attention"],
                "mamba_num_heads": 64, "n_routed_experts": 128, "num_experts_per_tok": 6,
                "moe_intermediate_size": 1856, "moe_shared_expert_intermediate_size": 3712,
                "routed_scaling_factor": 2.5, "tie_word_embeddings": False},
    ),
]

# Vision-language models: the language model as above, a two-layer vision
# tower and its projector, all tiny. A 56-pixel image of 14-pixel patches is
# 4x4 patches.
FAMILIES += [
    Family(
        "qwen2.5-vl-7b",
        "qwen2_5_vl",
        "qwen2_5_vl",
        "Qwen__Qwen2.5-VL-7B-Instruct.json",
        "VLM: Qwen2 decoder under language_model., multimodal rotary sections (mrope), the HF vision tower "
        "(visual.**: window-attention ViT, patch merger) kept as it is; flat published config, nested "
        "text_config when saved by transformers 5",
        traits={"tie_word_embeddings": False,
                "text_config": {"rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24],
                                                    "rope_theta": 1000000.0}}},
        tiny={"vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                                "out_hidden_size": TINY_HIDDEN, "fullatt_block_indexes": [1],
                                "window_size": 56}},
        auto_class="AutoModelForImageTextToText",
    ),
    Family(
        "gemma3-vl-4b",
        "gemma3_vl",
        "gemma3",
        "google__gemma-3-4b-it.json",
        "VLM: Gemma 3 decoder under language_model. (config in a sparse text_config, class defaults for the "
        "rest), linear rope scaling of the global layers, SigLIP vision tower (vision_tower.**) kept as it is, "
        "the projector's norm and transposed projection",
        traits={"text_config": {"rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window": 1024}},
        tiny={"text_config": {"head_dim": TINY_HEAD_DIM, "num_key_value_heads": TINY_KV_HEADS_GQA,
                              "sliding_window": 8, "query_pre_attn_scalar": TINY_HEAD_DIM},
              "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 2, "image_size": 56, "patch_size": 14,
                                "vision_use_head": False},
              "mm_tokens_per_image": 4},
        auto_class="AutoModelForImageTextToText",
    ),
    Family(
        "mistral3-small-24b",
        "mistral3",
        "mistral3",
        "mistralai__Mistral-Small-3.1-24B-Instruct-2503.json",
        "VLM: Mistral decoder under language_model. (text_config, head_dim apart from hidden / heads), the Pixtral "
        "vision tower (vision_tower.**) and the projector (multi_modal_projector.**) kept as they are",
        # Untied at both levels: transformers 5 ties a Mistral 3 by the top-level flag (default true).
        traits={"tie_word_embeddings": False,
                "text_config": {"head_dim": 128, "num_key_value_heads": 8, "sliding_window": None,
                                "tie_word_embeddings": False}},
        tiny={"text_config": {"head_dim": TINY_HEAD_DIM * 2, "num_key_value_heads": TINY_KV_HEADS_GQA},
              "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                "num_attention_heads": 2, "head_dim": 16, "image_size": 64, "patch_size": 16}},
        auto_class="AutoModelForImageTextToText",
    ),
]

FAMILY_BY_ID = {f.id: f for f in FAMILIES}


def family_ids() -> list[str]:
    return [f.id for f in FAMILIES]


def family_param_id(family_id: str) -> str:
    """A family's pytest id: its mapping, then the family (``qwen3_moe-qwen3-30b-a3b``),
    so that ``-k qwen3_moe`` selects every case of a mapping and ``-k qwen3-30b-a3b``
    those of one family."""
    return f"{FAMILY_BY_ID[family_id].mapping}-{family_id}"


def have_published_configs() -> bool:
    return all((SHARED_HF_CONFIGS / f.published).is_file() for f in FAMILIES)


def published_config(family: Family) -> dict | None:
    """The published config.json as a dict, or None when it is not on this machine."""
    path = SHARED_HF_CONFIGS / family.published
    if not path.is_file():
        return None
    cfg = json.loads(path.read_text())
    if family.published_section:
        section = dict(cfg[family.published_section])
        assert section.get("model_type", family.model_type) == family.model_type, (family.id, section.get("model_type"))
        section.setdefault("model_type", family.model_type)
        # What the whole file says for the language model too.
        for key in ("tie_word_embeddings",):
            if key in cfg and key not in section:
                section[key] = cfg[key]
        return section
    return cfg


def _shrink(d: dict) -> dict:
    """Tiny dims on a config dict; keeps every other key (biases, tie, rope...)."""
    d = copy.deepcopy(d)
    heads = d.get("num_attention_heads") or TINY_HEADS
    kv = d.get("num_key_value_heads")
    gqa = kv is not None and kv < heads
    d["hidden_size"] = TINY_HIDDEN
    d["num_hidden_layers"] = TINY_LAYERS
    d["num_attention_heads"] = TINY_HEADS
    if kv is not None:
        # Grouped-query stays grouped-query, multi-head stays multi-head.
        d["num_key_value_heads"] = TINY_KV_HEADS_GQA if gqa else TINY_HEADS
    if d.get("head_dim") is not None:
        if d.get("rotary_dim") is not None:
            # Partial rotary given as a width (MiniMax-M2): keep the fraction.
            d["rotary_dim"] = TINY_HEAD_DIM * d["rotary_dim"] // d["head_dim"]
        d["head_dim"] = TINY_HEAD_DIM  # only where the source spells it out
    d["intermediate_size"] = TINY_INTERMEDIATE
    d["vocab_size"] = TINY_VOCAB
    # Mixture of experts: 4 experts, top-2, tiny expert MLPs.
    for key in ("num_experts", "num_local_experts", "n_routed_experts"):
        if key in d:
            d[key] = TINY_EXPERTS
    if "num_experts_per_tok" in d:
        d["num_experts_per_tok"] = 2
    if "moe_intermediate_size" in d:
        d["moe_intermediate_size"] = TINY_MOE_INTERMEDIATE
    # Multi-latent attention (DeepSeek): small LoRA ranks and head parts, one
    # dense layer then MoE, group routing over 2 groups, no MTP layers
    # (transformers does not build them), bf16/fp32 weights (no FP8).
    if "kv_lora_rank" in d:
        if d.get("q_lora_rank") is not None:
            d["q_lora_rank"] = 32
        d.update(kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16)
        if "head_dim" in d:  # transformers' DeepSeek head_dim is the rotary part
            d["head_dim"] = d["qk_rope_head_dim"]
        d["first_k_dense_replace"] = 1
        d["n_group"], d["topk_group"] = 2, 1
        d["num_nextn_predict_layers"] = 0
        d.pop("quantization_config", None)
        d.pop("auto_map", None)
    # transformers builds no multi-token-prediction layers.
    if "num_nextn_predict_layers" in d:
        d["num_nextn_predict_layers"] = 0
    # Hybrid models (Nemotron-H): the shortest prefix of the layer pattern
    # that has every kind of layer the model has, tiny Mamba mixers.
    for key in ("hybrid_override_pattern", "layers_block_type"):
        kinds = d.get(key)
        if isinstance(kinds, (str, list)) and kinds:
            n = next(i for i in range(1, len(kinds) + 1) if set(kinds[:i]) == set(kinds))
            d[key] = kinds[:n]
            if "num_hidden_layers" in d:
                d["num_hidden_layers"] = n
    if "mamba_num_heads" in d:
        d.update(mamba_num_heads=8, mamba_head_dim=16, n_groups=2, ssm_state_size=16)
        if "chunk_size" in d:
            d["chunk_size"] = 8
    if d.get("attention_head_dim") is not None:
        d["attention_head_dim"] = TINY_HEAD_DIM
    if d.get("moe_shared_expert_intermediate_size") is not None:
        d["moe_shared_expert_intermediate_size"] = 2 * TINY_MOE_INTERMEDIATE
    # Multimodal rotary sections (Qwen2.5-VL) split half the head dim: keep
    # their proportions at the tiny head dim.
    for key in ("rope_scaling", "rope_parameters"):
        rope = d.get(key)
        if isinstance(rope, dict) and isinstance(rope.get("mrope_section"), list):
            sec, half = rope["mrope_section"], TINY_HEAD_DIM // 2
            tiny = [s * half // sum(sec) for s in sec]
            tiny[-1] += half - sum(tiny)
            d[key] = dict(rope, mrope_section=tiny)
    if "max_window_layers" in d:
        d["max_window_layers"] = min(d["max_window_layers"], TINY_LAYERS)
    for key in ("layer_types", "attn_type_list", "mlp_layer_types"):
        if isinstance(d.get(key), list):
            d[key] = d[key][:TINY_LAYERS]
    # The tiny model is made in fp32/bf16; FP8 sources are made by the FP8 tests.
    d.pop("quantization_config", None)
    # Special-token ids must lie inside the tiny vocabulary (not architecture).
    for i, key in enumerate(("bos_token_id", "eos_token_id", "pad_token_id")):
        if isinstance(d.get(key), int) and d[key] >= TINY_VOCAB:
            d[key] = i + 1
    return d


def _shrink_family(d: dict, family: Family) -> dict:
    """The generic shrink, on a VLM's text section when it has one, then
    the family's own tiny settings."""
    if isinstance(d.get("text_config"), dict):
        d = dict(d)
        d["text_config"] = _shrink(d["text_config"])
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if isinstance(d.get(key), int) and d[key] >= TINY_VOCAB:
                d[key] = 1
    else:
        d = _shrink(d)
    for key, value in family.tiny.items():
        if isinstance(value, dict) and isinstance(d.get(key), dict):
            d[key] = {**d[key], **copy.deepcopy(value)}
        else:
            d[key] = copy.deepcopy(value)
    return d


def tiny_config_dict(family: Family) -> tuple[dict, str]:
    """(config dict, origin). The dict is in the layout of its origin:
    the published file's (transformers 4 names: rope_theta, rope_scaling,
    torch_dtype) or, in the fallback, the transformers class defaults."""
    pub = published_config(family)
    if pub is not None:
        return _shrink_family(pub, family), f"published {family.published}"
    import transformers

    base = transformers.AutoConfig.for_model(family.model_type).to_dict()
    for junk in ("transformers_version", "_name_or_path", "id2label", "label2id"):
        base.pop(junk, None)
    # Class defaults carry the modern rope_parameters; traits use the
    # published (rope_theta / rope_scaling) spelling, which transformers folds in.
    if "rope_theta" in family.traits or "rope_scaling" in family.traits:
        base.pop("rope_parameters", None)
    # The traits give the published model's defining values (full size);
    # shrink after them so that the model is tiny either way.
    for key, value in family.traits.items():
        if key.endswith("_config") and isinstance(value, dict) and isinstance(base.get(key), dict):
            # A section of a VLM config: its traits go into it.
            if "rope_scaling" in value or "rope_theta" in value:
                base[key].pop("rope_parameters", None)
            base[key].update(copy.deepcopy(value))
        else:
            base[key] = copy.deepcopy(value)
    return _shrink_family(base, family), f"transformers {family.model_type} class defaults (no {SHARED_HF_CONFIGS})"


def tiny_hf_config(family: Family):
    """The transformers config object for the tiny model."""
    import transformers

    d, _ = tiny_config_dict(family)
    d = dict(d)
    model_type = d.pop("model_type", family.model_type)
    d.pop("transformers_version", None)
    return transformers.AutoConfig.for_model(model_type, **d)


@dataclass
class TinyCheckpoint:
    family: Family
    path: Path  # save_pretrained output (config.json written by transformers)
    origin: str
    tensors: dict[str, tuple[int, ...]]  # safetensors key -> shape
    num_parameters: int  # transformers' own count (tied weights once)

    @property
    def config_json(self) -> dict:
        return json.loads((self.path / "config.json").read_text())

    @property
    def text_config_json(self) -> dict:
        """The language model's fields: a VLM's text_config, else the config."""
        return text_section(self.config_json)


def transformers_architectures(cfg: dict) -> list | None:
    """A config's architectures as transformers builds them: a name that
    transformers has no class for (Sarvam's SarvamMoEForCausalLM, which
    Megatron-Bridge registers and the published files carry) is loaded as the
    causal LM of its model_type (Glm4MoeForCausalLM), the name save_pretrained
    then writes."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = cfg.get("architectures")
    if names is None:
        return None
    own = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(cfg.get("model_type"))
    return [n if own is None or hasattr(transformers, n) else own for n in names]


def rope_as_transformers_reads_it(rope):
    """A rope dict without the legacy key 'type' where 'rope_type' says the
    same (transformers reads rope_type, else type): DeepSeek's export writes
    rope_scaling.type, which a transformers 5 file spells rope_type."""
    if isinstance(rope, dict) and "type" in rope and rope.get("rope_type", rope["type"]) == rope["type"]:
        rope = dict(rope, rope_type=rope["type"])
        del rope["type"]
    return rope


def text_section(cfg: dict) -> dict:
    """A VLM config's text_config, else the config itself."""
    return cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg


def _read_safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    assert files, f"no safetensors written in {path}"
    out: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                assert k not in out, f"{k} stored in two shards"
                out[k] = tuple(st.get_slice(k).get_shape())
    return out


def build_tiny_checkpoint(family: Family, out_dir: Path, seed: int = 0) -> TinyCheckpoint:
    """Instantiate the tiny model with transformers (random init) and save it."""
    import torch
    import transformers

    _, origin = tiny_config_dict(family)
    cfg = tiny_hf_config(family)
    torch.manual_seed(seed)
    model = getattr(transformers, family.auto_class).from_config(cfg)
    # transformers initializes norms to one and biases (router expert bias
    # included) to zero; a mapping that swapped two norms or dropped a bias
    # would still give the same logits. Perturb every stored tensor.
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.05)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    return TinyCheckpoint(
        family=family,
        path=out_dir,
        origin=origin,
        tensors=_read_safetensors_shapes(out_dir),
        num_parameters=model.num_parameters(),
    )


def write_config_dir(config: dict, out_dir: Path) -> Path:
    """A directory holding only config.json (bridge-run config/plan read no weights)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


@functools.lru_cache(maxsize=None)
def collected_megatron_config(bridge_run_path: str, family_id: str) -> dict | None:
    """``bridge-run config``'s "megatron" object for the family's tiny
    config.json, asked while tests are collected (it reads no weights), so that
    what a family is (mixture of experts, hybrid, VLM) comes from its mapping.
    None when bridge-run cannot answer: not built (every test that needs it
    then skips on the bridge_run fixture), or the mapping refuses the config
    (the family's tests then fail on that refusal)."""
    import tempfile

    path = Path(bridge_run_path)
    if not (path.is_file() and os.access(path, os.X_OK)):
        return None
    config, _ = tiny_config_dict(FAMILY_BY_ID[family_id])
    with tempfile.TemporaryDirectory(prefix="bridge-collect-") as tmp:
        try:
            return BridgeRun(path).config(str(write_config_dir(config, Path(tmp))))["megatron"]
        except (BridgeRunError, subprocess.TimeoutExpired, json.JSONDecodeError, KeyError):
            return None


class BridgeRunError(RuntimeError):
    pass


class BridgeRun:
    """The bridge-run binary; JSON answers are cached per (command, directory)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _run(self, *args: str) -> dict:
        proc = subprocess.run(
            [str(self.path), *args], capture_output=True, text=True, timeout=120
        )
        if proc.returncode != 0:
            raise BridgeRunError(
                f"bridge-run {' '.join(args)} exited {proc.returncode}: "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return json.loads(proc.stdout)

    @functools.lru_cache(maxsize=None)
    def config(self, hf_dir: str) -> dict:
        return self._run("config", "--hf", str(hf_dir), "--json")

    @functools.lru_cache(maxsize=None)
    def plan(self, hf_dir: str, local_names: bool = False) -> dict:
        args = ["plan", "--hf", str(hf_dir), "--json"]
        if local_names:
            args.append("--local-names")
        return self._run(*args)
