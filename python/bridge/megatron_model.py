"""Build a real Megatron-Core model from bridge-run's "megatron" config.

The provider of the live bridge (bridge.AutoBridge.to_megatron_provider) and
the test suite's oracle both build their models here. On a machine without a
GPU (megatron-core 0.16.1, torch CPU only, no Transformer Engine/Apex):
  * the local layer spec (``get_gpt_layer_local_spec``): plain torch modules;
  * a gloo group (one process unless the caller made its own) and
    ``initialize_model_parallel``;
  * ``use_cpu_initialization=True`` (otherwise parameters are allocated on
    ``torch.cuda.current_device()``); ``perform_initialization=False``: the
    weights come from a checkpoint;
  * the inference RNG tracker, whose ``add`` does not touch the CUDA RNG;
  * ``torch.cuda.current_device`` answers "cpu" (the rotary embedding and the
    global memory buffer ask it for a device).

Every key of bridge-run's "megatron" object is routed to exactly one place
(TransformerConfig / MLATransformerConfig field, GPTModel.__init__ argument,
layer-spec argument) or deliberately left out with a reason; an unknown key
raises, so that a new schema field forces this module to say where it goes.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any


class MegatronUnavailable(RuntimeError):
    pass


class Unsupported(MegatronUnavailable):
    """megatron-core cannot build this model here (the reason says why)."""


_STATE: dict[str, Any] = {}


def setup_cpu() -> dict[str, Any]:
    """Import megatron-core and set up a 1-process gloo world once.

    Returns a dict of the megatron-core objects the tests use; raises
    MegatronUnavailable with the precise error when that is impossible."""
    if "error" in _STATE:
        raise MegatronUnavailable(_STATE["error"])
    if "mods" in _STATE:
        return _STATE["mods"]
    try:
        import torch

        if not torch.cuda.is_available():
            # RotaryEmbedding.get_emb and GlobalMemoryBuffer.get_tensor place
            # tensors on torch.cuda.current_device().
            torch.cuda.current_device = lambda: "cpu"

        from megatron.core import parallel_state, tensor_parallel
        from megatron.core.models.gpt.gpt_layer_specs import (
            get_gpt_decoder_block_spec,
            get_gpt_layer_local_spec,
        )
        from megatron.core.models.gpt.gpt_model import GPTModel
        from megatron.core.transformer.transformer_config import (
            MLATransformerConfig,
            TransformerConfig,
        )

        import torch.distributed as dist

        if not dist.is_initialized():
            rendezvous = os.path.join(tempfile.mkdtemp(prefix="mcore-oracle-"), "rdzv")
            dist.init_process_group(
                "gloo", init_method=f"file://{rendezvous}", rank=0, world_size=1
            )
        if not parallel_state.model_parallel_is_initialized():
            parallel_state.initialize_model_parallel(1, 1)
        # megatron-core 0.16.1's router reads moe_utils.te_general_gemm, which
        # is only defined when Transformer Engine imports (NameError on CPU);
        # None selects its plain torch matmul.
        from megatron.core.transformer.moe import moe_utils

        if not hasattr(moe_utils, "te_general_gemm"):
            moe_utils.te_general_gemm = None
        # The default tracker's add() calls torch.cuda.get_rng_state().
        tensor_parallel.model_parallel_cuda_manual_seed(
            1234, inference_rng_tracker=True, force_reset_rng=True
        )
    except Exception as e:  # noqa: BLE001 - report whatever stops megatron
        _STATE["error"] = f"{type(e).__name__}: {e}"
        raise MegatronUnavailable(_STATE["error"]) from e
    import megatron.core

    mods = dict(
        version=getattr(megatron.core, "__version__", "?"),
        torch=torch,
        GPTModel=GPTModel,
        TransformerConfig=TransformerConfig,
        MLATransformerConfig=MLATransformerConfig,
        get_gpt_layer_local_spec=get_gpt_layer_local_spec,
        get_gpt_decoder_block_spec=get_gpt_decoder_block_spec,
    )
    _STATE["mods"] = mods
    return mods


def import_megatron_classes() -> dict[str, Any]:
    """Only the classes (no process group): enough for introspection tests."""
    try:
        from megatron.core.models.gpt.gpt_model import GPTModel
        from megatron.core.transformer.transformer_config import (
            MLATransformerConfig,
            TransformerConfig,
        )
    except Exception as e:  # noqa: BLE001
        raise MegatronUnavailable(f"{type(e).__name__}: {e}") from e
    return dict(
        GPTModel=GPTModel,
        TransformerConfig=TransformerConfig,
        MLATransformerConfig=MLATransformerConfig,
    )


def config_field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def gpt_model_param_names(GPTModel) -> set[str]:
    return set(inspect.signature(GPTModel.__init__).parameters) - {"self"}


def activation_function(name: str):
    """Our activation_func names -> the callables Megatron-Core compares against
    (TransformerConfig.activation_func is a callable, not a string). The names
    follow Megatron-Bridge's ACTIVATION_FUNC_MAP."""
    import torch
    import torch.nn.functional as F
    from megatron.core import activations

    table = {
        "gelu": F.gelu,
        "silu": F.silu,
        "relu": F.relu,
        "squared_relu": activations.squared_relu,
        "fast_gelu": activations.fast_gelu,
        "quick_gelu": activations.quick_gelu,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
    }
    if name not in table:
        raise KeyError(f"no Megatron-Core activation for activation_func={name!r}")
    return table[name]


def torch_dtype(name: str):
    """params_dtype is a torch.dtype in ModelParallelConfig; we carry its name."""
    import torch

    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise KeyError(f"no torch dtype for params_dtype={name!r}")
    return table[name]


# GPTModel.__init__ arguments that bridge-run's config spells the same way.
GPT_MODEL_ARGS = {
    "vocab_size",
    "share_embeddings_and_output_weights",
    "position_embedding_type",
    "rotary_percent",
    "rotary_base",
    "rope_scaling",
    "rope_scaling_factor",
    "seq_len_interpolation_factor",
    # MambaModel.__init__'s (a hybrid model; not a TransformerConfig field in 0.16.1).
    "hybrid_override_pattern",
}

# Fields read by megatron-core 0.16 GPTModel through getattr(config, ...) when
# position_embedding_type == "yarn" (not TransformerConfig dataclass fields).
YARN_CONFIG_ATTRS = {
    "yarn_rotary_scaling_factor",
    "yarn_original_max_position_embeddings",
    "yarn_beta_fast",
    "yarn_beta_slow",
    "yarn_mscale",
    "yarn_mscale_all_dim",
    "yarn_correction_range_round_to_int",
}

# Keys that do not reach the model constructor, and why.
NOT_CONSTRUCTOR_ARGS = {
    # Megatron-Bridge GPTModelProvider pads the vocab with it only when
    # should_pad_vocab (False for conversion); GPTModel gets vocab_size as is.
    "make_vocab_size_divisible_by": "vocab padding is off for conversion",
    # HF max_position_embeddings; GPTModel's length argument is seq_length
    # (max_sequence_length below).
    "max_position_embeddings": "GPTModel takes max_sequence_length (= seq_length)",
    # Gemma2ModelProvider fields (Megatron-Bridge), read by its own attention
    # and output layer; megatron-core 0.16.1 has no soft-capping.
    "query_pre_attn_scalar": "Gemma2ModelProvider field (Megatron-Bridge's Gemma attention)",
    "attn_logit_softcapping": "Gemma2ModelProvider field (Megatron-Bridge's Gemma attention)",
    "final_logit_softcapping": "Gemma2ModelProvider field (Megatron-Bridge's Gemma output layer)",
    "rotary_base_local": "Gemma3ModelProvider's rotary_base pair (local, global)",
    # Vision-language models (Megatron-Bridge's Qwen25VLModelProvider and
    # Gemma3VLModelProvider): the vision tower is the HF module built from
    # vision_config; the GPTModel is the language model alone.
    "vision_model": "VLM provider: which HF vision tower (Qwen25VLModel, Gemma3VLModel)",
    "vision_config": "VLM provider field: the HF vision tower's config",
    "vision_hidden_size": "Gemma3VLModelProvider's vision_projector_config.input_size",
    "image_token_id": "VLM provider field (the forward's image placeholder)",
    "video_token_id": "VLM provider field (the forward's video placeholder)",
    "vision_start_token_id": "VLM provider field",
    "vision_end_token_id": "VLM provider field",
    "mm_tokens_per_image": "Gemma3VLModelProvider field (the projector's pooling)",
}


def language_model_prefix(meg: dict) -> str:
    """Where a model's GPT lives in the checkpoint: a VLM keeps it under
    'language_model.' (Megatron-Bridge's Qwen25VLModel, Gemma3VLModel)."""
    return "language_model." if meg.get("vision_model") else ""


# Keys that choose a layer implementation rather than a config value. Megatron-
# Bridge builds these models with its own layer spec; the harness does the
# same with the module named here.
LAYER_CHOICE_KEYS = {
    # Gemma 2 and 3: a norm after linear_proj and linear_fc2 (Megatron-Bridge's
    # TERowParallelLinearLayerNorm); megatron-core 0.16.1 has no such module.
    "post_layernorm",
    # EXAONE 4: no norm before attention or the MLP (exaone4_layer_spec).
    "pre_layernorm",
    # OLMoE / MiniMax-M2: q/k RMSNorm over all heads (olmoe_layer_spec,
    # minimax_m2_layer_spec in Megatron-Bridge); FullWidthQKSelfAttention below.
    "qk_layernorm_full_width",
}


# Keys that extend the built model, as Megatron-Bridge's providers do after
# building it.
MODEL_EXTENSION_KEYS = {
    # Gemma: the word embeddings times sqrt(hidden_size) on the first stage
    # (GemmaModelProvider.provide: EmbeddingScalingMixin); scale_embeddings below.
    "apply_embedding_scaling",
}


@dataclass
class RoutedConfig:
    tc_kwargs: dict[str, Any] = field(default_factory=dict)
    mla: bool = False
    gpt_kwargs: dict[str, Any] = field(default_factory=dict)
    config_attrs: dict[str, Any] = field(default_factory=dict)  # setattr after build
    spec_kwargs: dict[str, Any] = field(default_factory=dict)
    layer_choices: dict[str, Any] = field(default_factory=dict)
    model_extensions: dict[str, Any] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)  # key -> why


def route_megatron_config(meg: dict, *, megatron_compatible: bool = True,
                          transformer_engine: bool = False) -> RoutedConfig:
    """Route bridge-run's "megatron" object onto Megatron-Core's constructors.

    megatron_compatible=True applies the translations that megatron-core needs
    but bridge-run's output does not yet satisfy (each one is also asserted by
    its own xfail test, see test_megatron_model.py). ``transformer_engine``:
    the model gets the Transformer Engine layer spec (which_layer_spec), whose
    grouped experts need no grouped_gemm package."""
    mods = import_megatron_classes()
    tc_fields = config_field_names(mods["TransformerConfig"])
    mla_fields = config_field_names(mods["MLATransformerConfig"])
    is_mla = bool(meg.get("multi_latent_attention", False))
    r = RoutedConfig(mla=is_mla)
    unknown = []
    for key, value in meg.items():
        if value is None:
            r.dropped[key] = "null"
            continue
        if key == "seq_length":
            r.gpt_kwargs["max_sequence_length"] = value
        elif key in GPT_MODEL_ARGS:
            r.gpt_kwargs[key] = value
            if key in ("rotary_base", "rotary_percent") and is_mla:
                r.tc_kwargs[key] = value  # MLATransformerConfig has its own copy
        elif key in NOT_CONSTRUCTOR_ARGS:
            r.dropped[key] = NOT_CONSTRUCTOR_ARGS[key]
        elif key in LAYER_CHOICE_KEYS:
            r.layer_choices[key] = value
        elif key in MODEL_EXTENSION_KEYS:
            r.model_extensions[key] = value
        elif key in YARN_CONFIG_ATTRS:
            r.config_attrs[key] = value
        elif key == "activation_func":
            r.tc_kwargs[key] = activation_function(value)  # name -> torch function
        elif key == "params_dtype":
            r.tc_kwargs[key] = torch_dtype(value)  # name -> torch.dtype
        elif key == "window_size":
            r.tc_kwargs[key] = tuple(value)  # Optional[Tuple[int, int]]
        elif key in tc_fields:
            r.tc_kwargs[key] = value
        elif key in mla_fields:
            if is_mla:
                r.tc_kwargs[key] = value
            else:
                # Megatron-Bridge drops provider kwargs that are not dataclass
                # fields; a GPT (non-MLA) TransformerConfig has no MLA fields.
                r.dropped[key] = "MLA-only field of a non-MLA model"
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(
            f"bridge-run megatron keys with no place in megatron-core {sorted(unknown)}"
        )
    if r.tc_kwargs.get("moe_grouped_gemm") and not transformer_engine:
        # Without Transformer Engine the grouped experts are the legacy
        # GroupedMLP, which needs the grouped_gemm CUDA package; SequentialMLP
        # has the same checkpoint keys (format spec 3.3), so build that.
        r.tc_kwargs["moe_grouped_gemm"] = False
        r.dropped["moe_grouped_gemm"] = "SequentialMLP on CPU (same torch_dist keys)"
    # Layer spec arguments (what Megatron-Bridge's local_layer_spec passes;
    # the TE spec takes the same but normalization, which TE reads from the
    # config).
    r.spec_kwargs = dict(
        num_experts=meg.get("num_moe_experts"),
        moe_grouped_gemm=bool(r.tc_kwargs.get("moe_grouped_gemm", False)),
        qk_layernorm=bool(meg.get("qk_layernorm", False)),
        multi_latent_attention=is_mla,
        normalization=meg.get("normalization"),
    )
    return r


def make_transformer_config(r: RoutedConfig):
    mods = import_megatron_classes()
    cls = mods["MLATransformerConfig"] if r.mla else mods["TransformerConfig"]
    cfg = cls(
        **r.tc_kwargs,
        # Harness settings, not conversion facts:
        use_cpu_initialization=True,
        perform_initialization=False,
    )
    for k, v in r.config_attrs.items():
        setattr(cfg, k, v)
    return cfg


POST_LAYERNORM_UNSUPPORTED = (
    "megatron-core 0.16.1 cannot build a layer with norms after the attention and the MLP (post_layernorm: "
    "Gemma 2 and 3, EXAONE 4): Megatron-Bridge's TERowParallelLinearLayerNorm is its own module, as are "
    "Gemma 2's soft-capping layers"
)

MLA_UNSUPPORTED = (
    "megatron-core 0.16.1 cannot build multi-latent attention without Transformer Engine: its local "
    "spec passes k_channels to DotProductAttention, which does not take it (TypeError)"
)


def full_width_qk_attention():
    """SelfAttention whose q/k RMSNorms span all heads (OLMoE, MiniMax-M2):
    HF normalizes the whole projection before splitting it into heads.
    Written for the one-process (TP=1) oracle: the norms are as wide as the
    projections, and megatron-core's own split and rotary are reused."""
    from megatron.core.transformer.attention import SelfAttention
    from megatron.core.transformer.spec_utils import build_module

    class FullWidthQKSelfAttention(SelfAttention):
        def __init__(self, config, submodules, *args, **kwargs):
            super().__init__(config, submodules, *args, **kwargs)
            head = self.hidden_size_per_attention_head
            for name, heads in (("q_layernorm", self.num_attention_heads_per_partition),
                                ("k_layernorm", self.num_query_groups_per_partition)):
                norm = build_module(getattr(submodules, name), hidden_size=heads * head, config=config,
                                    eps=config.layernorm_epsilon)
                setattr(self, name, norm)

        def get_query_key_value_tensors(self, *args, **kwargs):
            norms = (self.q_layernorm, self.k_layernorm)
            # The parent applies per-head norms when they are set; take them
            # out for the split and apply them over the flattened heads.
            self.q_layernorm = self.k_layernorm = None
            try:
                query, key, *rest = super().get_query_key_value_tensors(*args, **kwargs)
            finally:
                self.q_layernorm, self.k_layernorm = norms
            query = norms[0](query.reshape(*query.shape[:2], -1)).view(query.shape)
            key = norms[1](key.reshape(*key.shape[:2], -1)).view(key.shape)
            return (query, key, *rest)

    return FullWidthQKSelfAttention


def zero_centered_norm():
    """The local spec's stand-in for Transformer Engine's norms with
    zero_centered_gamma (megatron-core's torch norm refuses that flag): the
    weight is stored zero-centred. RMSNorm gives x / rms(x) * (1 + w) in fp32,
    cast back (transformers' Gemma norm); LayerNorm gives layer_norm(x) with
    weight w + 1 and its bias (transformers' Nemotron LayerNorm1P)."""
    if "ZeroCenteredNorm" in _STATE:
        return _STATE["ZeroCenteredNorm"]
    import torch

    class ZeroCenteredNorm(torch.nn.Module):
        def __init__(self, config, hidden_size: int, eps: float = 1e-5, persist_layer_norm: bool = False,
                     zero_centered_gamma: bool = False, normalization: str = "LayerNorm"):
            super().__init__()
            self.rms = config.normalization == "RMSNorm"  # megatron-core passes the config alone
            self.eps = eps
            self.weight = torch.nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype))
            params = [self.weight]
            if not self.rms:
                self.bias = torch.nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype))
                params.append(self.bias)
            for p in params:
                setattr(p, "sequence_parallel", config.sequence_parallel)

        def forward(self, x):
            if not self.rms:
                return torch.nn.functional.layer_norm(x, self.weight.shape, self.weight + 1.0, self.bias, self.eps)
            y = x.float()
            y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
            return (y * (1.0 + self.weight.float())).type_as(x)

    _STATE["ZeroCenteredNorm"] = ZeroCenteredNorm
    return ZeroCenteredNorm


def _zero_centered_norms(spec, config, vp_stage):
    """The local spec with every norm (each layer's two and the final one)
    the zero-centred stand-in, as a block spec: a layer spec alone would get
    the block's final norm from megatron-core's default."""
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    norm = zero_centered_norm()
    if not isinstance(spec, TransformerBlockSubmodules):
        spec = TransformerBlockSubmodules(layer_specs=[spec] * get_num_layers_to_build(config, vp_stage=vp_stage),
                                          layer_norm=norm)
    spec.layer_norm = norm
    for layer in {id(s): s for s in spec.layer_specs}.values():
        layer.submodules.input_layernorm = norm
        layer.submodules.pre_mlp_layernorm = norm
        # Transformer Engine's norms take zero_centered_gamma from the config,
        # the per-head q/k norms too (Qwen3-Next).
        attention = getattr(layer.submodules.self_attention, "submodules", None)
        for name in ("q_layernorm", "k_layernorm"):
            if config.qk_layernorm and getattr(attention, name, None) is not None:
                setattr(attention, name, norm)
    return spec


def _apply_layer_choices(spec, choices: dict[str, Any]):
    if not choices.get("qk_layernorm_full_width"):
        return spec
    attention = full_width_qk_attention()
    layers = spec.layer_specs if hasattr(spec, "layer_specs") else [spec]
    for layer in layers:
        self_attention = layer.submodules.self_attention
        assert self_attention.submodules.q_layernorm is not None, "full-width q/k norm without qk_layernorm"
        self_attention.module = attention
    return spec


MAMBA_FORWARD_UNAVAILABLE = (
    "megatron-core 0.16.1's Mamba mixer computes only with mamba_ssm's Triton kernels (its forward has no torch "
    "path), and mamba_ssm is not installed on this machine or the GPU host"
)


def _mamba_cpu_patches():
    """What megatron-core 0.16.1 needs to *build* a MambaModel on a CPU
    without mamba_ssm, einops or Transformer Engine (names, shapes and
    sharding only; no forward):
      * MambaMixer refuses to build without mamba_ssm and einops (flags);
      * its gated RMSNorm comes from mamba_ssm: a module with the same weight
        and the same sharding (dim 0 over TP) stands in;
      * conv1d, A_log, D and dt_bias are allocated on
        torch.cuda.current_device() under the CUDA RNG tracker's fork();
      * MambaStack's final norm is TENorm: the local WrappedTorchNorm."""
    if _STATE.get("mamba_patched"):
        return
    import contextlib

    import torch
    from megatron.core import parallel_state
    from megatron.core.ssm import mamba_block, mamba_context_parallel, mamba_mixer
    from megatron.core.transformer.torch_norm import WrappedTorchNorm
    from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

    class NoForkTracker:
        def fork(self, *args, **kwargs):
            return contextlib.nullcontext()

    class GatedNormShapes(torch.nn.Module):
        def __init__(self, hidden_size, eps=1e-5, group_size=None, norm_before_gate=False, device=None, dtype=None):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

        def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
            return make_sharded_tensors_for_checkpoint(
                self.state_dict(prefix="", keep_vars=True), prefix, {"weight": 0}, sharded_offsets,
                tp_group=parallel_state.get_tensor_model_parallel_group(), dp_cp_group=metadata["dp_cp_group"])

    mamba_mixer.HAVE_MAMBA_SSM = True
    mamba_mixer.HAVE_EINOPS = True
    mamba_context_parallel.HAVE_EINOPS = True
    mamba_mixer.ExtendedRMSNorm = GatedNormShapes
    mamba_mixer.get_cuda_rng_tracker = lambda *a, **k: NoForkTracker()
    mamba_block.TENorm = WrappedTorchNorm
    torch.cuda.current_device = lambda: "cpu"
    _STATE["mamba_patched"] = True


def mamba_local_spec(num_experts):
    """MambaStack with plain torch modules: megatron-core 0.16.1 ships only the
    Transformer Engine spec (mamba_stack_spec). Its sharded_state_dict keys
    map the local norms to the TE names, as the GPT local spec does, so the
    torch_dist keys are the TE model's."""
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
    from megatron.core.models.gpt.moe_module_specs import get_moe_module_spec
    from megatron.core.ssm.mamba_block import MambaStack, MambaStackSubmodules
    from megatron.core.ssm.mamba_layer import MambaLayer, MambaLayerSubmodules
    from megatron.core.ssm.mamba_mixer import MambaMixer, MambaMixerSubmodules
    from megatron.core.ssm.mlp_layer import MLPLayer
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.mlp import MLP, MLPSubmodules
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.torch_norm import WrappedTorchNorm
    from megatron.core.transformer.transformer_layer import (
        MoETransformerLayer,
        TransformerLayer,
        TransformerLayerSubmodules,
    )

    bda = get_bias_dropout_add
    return ModuleSpec(module=MambaStack, submodules=MambaStackSubmodules(
        mamba_layer=ModuleSpec(module=MambaLayer, submodules=MambaLayerSubmodules(
            norm=WrappedTorchNorm,
            mixer=ModuleSpec(module=MambaMixer, submodules=MambaMixerSubmodules(
                in_proj=ColumnParallelLinear, out_proj=RowParallelLinear)),
            mamba_bda=bda, sharded_state_dict_keys_map={"norm.": "mixer.in_proj.layer_norm_"})),
        attention_layer=ModuleSpec(module=TransformerLayer, submodules=TransformerLayerSubmodules(
            input_layernorm=WrappedTorchNorm,
            self_attention=ModuleSpec(module=SelfAttention, params={"attn_mask_type": AttnMaskType.causal},
                                      submodules=SelfAttentionSubmodules(
                                          linear_qkv=ColumnParallelLinear, core_attention=DotProductAttention,
                                          linear_proj=RowParallelLinear)),
            self_attn_bda=bda,
            sharded_state_dict_keys_map={"input_layernorm.": "self_attention.linear_qkv.layer_norm_"})),
        mlp_layer=ModuleSpec(module=MLPLayer, submodules=TransformerLayerSubmodules(
            pre_mlp_layernorm=WrappedTorchNorm,
            mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear,
                                                                linear_fc2=RowParallelLinear)),
            mlp_bda=bda, sharded_state_dict_keys_map={"pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"})),
        moe_layer=ModuleSpec(module=MoETransformerLayer, submodules=TransformerLayerSubmodules(
            pre_mlp_layernorm=WrappedTorchNorm,
            # Built only for 'E' layers; a dense pattern never builds it.
            mlp=get_moe_module_spec(use_te=False, num_experts=num_experts or 1, moe_grouped_gemm=False),
            mlp_bda=bda)),
    ))


MAMBA_VPP_UNSUPPORTED = (
    "megatron-core 0.16.1's MambaStack has no virtual pipeline stages (it asserts "
    "virtual_pipeline_model_parallel_size is None)"
)


def _set_parallel(r: RoutedConfig, parallel: dict | None) -> None:
    """The job's ModelParallelConfig sizes over the routed config."""
    if not parallel:
        return
    r.tc_kwargs.update(parallel)
    if parallel.get("pipeline_model_parallel_size", 1) > 1:
        import torch

        r.tc_kwargs["pipeline_dtype"] = r.tc_kwargs.get("params_dtype", torch.float32)


def build_mamba_model(meg: dict, *, parallel: dict | None = None, pre_process: bool = True,
                      post_process: bool = True, vp_stage: int | None = None):
    """The MambaModel (hybrid, plain torch modules, CPU) that bridge-run's
    config describes: for its parameters and torch_dist keys; see
    _mamba_cpu_patches for what a CPU needs and MAMBA_FORWARD_UNAVAILABLE.
    ``parallel``, ``pre_process`` and ``post_process`` as build_gpt_model's;
    MambaModel has no virtual pipeline stages (MAMBA_VPP_UNSUPPORTED)."""
    if vp_stage is not None or (parallel or {}).get("virtual_pipeline_model_parallel_size", 1) > 1:
        raise Unsupported(MAMBA_VPP_UNSUPPORTED)
    setup_cpu()
    _mamba_cpu_patches()
    from megatron.core.models.mamba.mamba_model import MambaModel

    r = route_megatron_config(meg)
    if r.tc_kwargs.get("num_moe_experts"):
        # The all-to-all dispatcher makes CUDA streams; the keys are the same.
        r.tc_kwargs["moe_token_dispatcher_type"] = "allgather"
    _set_parallel(r, parallel)
    cfg = make_transformer_config(r)
    # GPTModel's Llama-3 rope scaling arguments: MambaModel has no rotary
    # scaling (Nemotron-H has no rotary positions at all).
    kwargs = dict(r.gpt_kwargs)
    assert not kwargs.pop("rope_scaling", False), "rope_scaling on a MambaModel"
    kwargs.pop("rope_scaling_factor", None)
    return MambaModel(config=cfg, mamba_stack_spec=mamba_local_spec(r.tc_kwargs.get("num_moe_experts")),
                      pre_process=pre_process, post_process=post_process, **kwargs)


def _gated_delta_net_cpu_patches():
    """What megatron-core 0.16.1's GatedDeltaNet needs to build and compute
    on a CPU without flash-linear-attention (FLA) or causal_conv1d:
      * it refuses to build without FLA (flag);
      * the delta rule: its own torch implementation, which it runs in
        deterministic mode (torch_chunk_gated_delta_rule), in place of FLA's
        kernel; the convolution: its torch conv1d path (causal_conv1d absent);
      * FLA's l2norm of queries and keys: x * rsqrt(sum(x^2) + 1e-6), the
        formula of FLA's kernel and of transformers' torch fallback.
    Everything else is megatron-core's own code."""
    if _STATE.get("gdn_patched"):
        return
    import torch
    from megatron.core.ssm import gated_delta_net

    def l2norm(x, dim=-1, eps=1e-6):
        return x * torch.rsqrt((x * x).sum(dim=dim, keepdim=True) + eps)

    gated_delta_net.HAVE_FLA = True
    gated_delta_net.l2norm = l2norm
    gated_delta_net.chunk_gated_delta_rule = gated_delta_net.torch_chunk_gated_delta_rule
    gated_delta_net.causal_conv1d_fn = None
    _STATE["gdn_patched"] = True


def _gated_delta_net_layers(spec, cfg, vp_stage):
    """The block spec with each Gated DeltaNet layer's attention replaced by
    megatron-core's GatedDeltaNet on plain torch modules, as
    get_transformer_block_with_experimental_attention_variant_spec places it
    (which asserts Transformer Engine): in_proj a column-parallel linear
    whose input norm is the layer's, keyed as TE's fused
    'self_attention.in_proj.layer_norm_weight'; out_norm the config's norm
    over one value head; out_proj row-parallel."""
    import copy

    from megatron.core.models.gpt.experimental_attention_variant_module_specs import (
        get_linear_attention_pattern,
    )
    from megatron.core.ssm.gated_delta_net import GatedDeltaNet, GatedDeltaNetSubmodules
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.transformer_block import (
        TransformerBlockSubmodules,
        get_num_layers_to_build,
    )
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    _gated_delta_net_cpu_patches()
    if not isinstance(spec, TransformerBlockSubmodules):
        spec = TransformerBlockSubmodules(layer_specs=[spec] * get_num_layers_to_build(cfg, vp_stage=vp_stage))
    pattern = get_linear_attention_pattern(cfg)
    offset = get_transformer_layer_offset(cfg, vp_stage=vp_stage)
    layers = list(spec.layer_specs)
    for j, layer in enumerate(layers):
        if not pattern[offset + j]:
            continue
        layer = copy.copy(layer)
        layer.submodules = copy.copy(layer.submodules)
        norm = layer.submodules.input_layernorm
        layer.submodules.self_attention = ModuleSpec(
            module=GatedDeltaNet,
            submodules=GatedDeltaNetSubmodules(in_proj=ColumnParallelLinear, out_norm=norm,
                                               out_proj=RowParallelLinear))
        keys = {k: v for k, v in (layer.submodules.sharded_state_dict_keys_map or {}).items()
                if k != "input_layernorm."}
        keys["input_layernorm."] = "self_attention.in_proj.layer_norm_"
        layer.submodules.sharded_state_dict_keys_map = keys
        layers[j] = layer
    spec.layer_specs = layers
    return spec


TE_UNAVAILABLE = "use_transformer_engine=True, but transformer_engine does not import here"


def which_layer_spec(use_transformer_engine: bool | None = None) -> str:
    """The one choice of layer spec for the GPT builders: "transformer_engine"
    (megatron-core's get_gpt_layer_with_transformer_engine_spec, or
    get_gpt_decoder_block_spec(use_transformer_engine=True) for MoE) or
    "local" (plain torch modules). None: Transformer Engine's when
    transformer_engine imports, the local one otherwise; False: local; True:
    Transformer Engine's, or MegatronUnavailable without it. (No machine of
    this project's test suite has Transformer Engine: the "transformer_engine"
    branch is not exercised by the tests.)"""
    if use_transformer_engine is False:
        return "local"
    try:
        import transformer_engine  # noqa: F401
    except Exception as e:  # noqa: BLE001 - not installed, or its CUDA libraries missing
        if use_transformer_engine:
            raise MegatronUnavailable(f"{TE_UNAVAILABLE} ({type(e).__name__}: {e})") from e
        return "local"
    return "transformer_engine"


def build_gpt_model(meg: dict, with_mtp: bool = False, *, parallel: dict | None = None, pre_process: bool = True,
                    post_process: bool = True, vp_stage: int | None = None,
                    use_transformer_engine: bool | None = False):
    """The GPTModel (CPU) that bridge-run's config describes, with the layer
    spec which_layer_spec(use_transformer_engine) picks (the local one by
    default, which the test suite's oracle compares); with ``with_mtp``, also
    its multi-token-prediction block (mtp_num_layers).
    A hybrid config (hybrid_override_pattern) gives its MambaModel, always
    with mamba_local_spec.
    ``parallel``: ModelParallelConfig sizes (tensor_model_parallel_size, ...)
    for a model of the job's parallel state; ``pre_process``,
    ``post_process`` and ``vp_stage`` place a pipeline stage's chunk."""
    if meg.get("hybrid_override_pattern"):
        return build_mamba_model(meg, parallel=parallel, pre_process=pre_process, post_process=post_process,
                                 vp_stage=vp_stage)
    te = which_layer_spec(use_transformer_engine) == "transformer_engine"
    if meg.get("multi_latent_attention") and not te:
        raise Unsupported(MLA_UNSUPPORTED)
    if meg.get("post_layernorm"):
        raise Unsupported(POST_LAYERNORM_UNSUPPORTED)
    mods = setup_cpu()
    r = route_megatron_config(meg, transformer_engine=te)
    _set_parallel(r, parallel)
    cfg = make_transformer_config(r)
    stage = {} if vp_stage is None else {"vp_stage": vp_stage}
    if r.spec_kwargs["num_experts"]:
        # MoE (possibly mixed dense/MoE layers through moe_layer_freq).
        spec = mods["get_gpt_decoder_block_spec"](
            cfg, use_transformer_engine=te, normalization=r.spec_kwargs["normalization"], **stage
        )
    elif te:
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        spec = get_gpt_layer_with_transformer_engine_spec(
            **{k: v for k, v in r.spec_kwargs.items() if k != "normalization"})
    else:
        spec = mods["get_gpt_layer_local_spec"](**r.spec_kwargs)
    spec = _apply_layer_choices(spec, r.layer_choices)
    if not te and cfg.layernorm_zero_centered_gamma:
        spec = _zero_centered_norms(spec, cfg, vp_stage)
    if meg.get("experimental_attention_variant") == "gated_delta_net":
        if te:
            from megatron.core.models.gpt.experimental_attention_variant_module_specs import (
                get_transformer_block_with_experimental_attention_variant_spec,
            )

            spec = get_transformer_block_with_experimental_attention_variant_spec(cfg, **stage)
        else:
            spec = _gated_delta_net_layers(spec, cfg, vp_stage)
    extra = dict(stage)
    if with_mtp:
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_mtp_block_spec

        cfg.mtp_num_layers = meg["mtp_num_layers"]
        extra["mtp_block_spec"] = get_gpt_mtp_block_spec(cfg, spec, use_transformer_engine=te, **stage)
    model = mods["GPTModel"](
        config=cfg,
        transformer_layer_spec=spec,
        pre_process=pre_process,
        post_process=post_process,
        **r.gpt_kwargs,
        **extra,
    )
    if r.model_extensions.get("apply_embedding_scaling") and pre_process:
        scale_embeddings(model.embedding)
    return model


def scale_embeddings(embedding) -> None:
    """The embedding's output times sqrt(hidden_size), in its own dtype, as
    Megatron-Bridge's Gemma providers extend it (EmbeddingScalingMixin) and
    transformers' Gemma embeddings scale: the instance's class becomes a
    subclass whose forward multiplies."""
    import torch

    base = type(embedding)

    class ScaledEmbedding(base):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            return out * torch.tensor(self.config.hidden_size ** 0.5, dtype=out.dtype)

    ScaledEmbedding.__name__ = base.__name__
    embedding.__class__ = ScaledEmbedding


# A VLM's vision tower, as Megatron-Bridge's VLM models hold it
# (Qwen25VLModel): the HF module built from the HF config's vision_config, at
# the attribute under which the mapping passes its tensors through
# ('visual.**'). vision_model -> (attribute, transformers module, its config
# class, its model class).
VISION_TOWERS = {
    "qwen2_5_vl": ("visual", "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "Qwen2_5_VLVisionConfig",
                   "Qwen2_5_VisionTransformerPretrainedModel"),
}


def build_vision_tower(meg: dict):
    """(attribute, module): the HF vision tower a VLM config names, in the
    config's params_dtype, on the CPU. Its weights come from a checkpoint."""
    import importlib

    name = meg["vision_model"]
    if name not in VISION_TOWERS:
        raise Unsupported(f"no vision tower is built for vision_model={name!r}")
    attr, module, config_class, model_class = VISION_TOWERS[name]
    mod = importlib.import_module(module)
    config = getattr(mod, config_class).from_dict(dict(meg["vision_config"]))
    dtype = torch_dtype(meg.get("params_dtype") or "float32")
    return attr, getattr(mod, model_class)._from_config(config, dtype=dtype)


def _vision_language_model_class():
    if "VisionLanguageModel" in _STATE:
        return _STATE["VisionLanguageModel"]
    from megatron.core.transformer.module import MegatronModule

    class VisionLanguageModel(MegatronModule):
        """Megatron-Bridge's VLM model shape (Qwen25VLModel): the GPTModel as
        ``language_model`` and, on the first pipeline stage, the HF vision
        tower beside it (replicated over TP). Its sharded_state_dict is
        MegatronModule's: the GPT's under 'language_model.', the tower's
        tensors whole. Its forward is the language model's, text only: the
        image tokens' embedding is Megatron-Bridge's model's forward."""

        def __init__(self, language_model, vision_attr: str | None = None, vision=None):
            super().__init__(config=language_model.config)
            self.language_model = language_model
            self.pre_process = language_model.pre_process
            self.post_process = language_model.post_process
            if vision is not None:
                setattr(self, vision_attr, vision)

        def set_input_tensor(self, input_tensor) -> None:
            self.language_model.set_input_tensor(input_tensor)

        def forward(self, *args, **kwargs):
            return self.language_model(*args, **kwargs)

    _STATE["VisionLanguageModel"] = VisionLanguageModel
    return VisionLanguageModel


def build_megatron_model(meg: dict, *, parallel: dict | None = None, pre_process: bool = True,
                         post_process: bool = True, vp_stage: int | None = None,
                         use_transformer_engine: bool | None = None):
    """The model bridge-run's config describes, as Megatron-Bridge's provider
    builds it: the GPTModel (or a hybrid's MambaModel) of build_gpt_model,
    and for a VLM (vision_model) that GPTModel as ``language_model`` with the
    HF vision tower on the first pipeline stage (VisionLanguageModel). The
    layer spec: which_layer_spec(use_transformer_engine)."""
    model = build_gpt_model(meg, parallel=parallel, pre_process=pre_process, post_process=post_process,
                            vp_stage=vp_stage, use_transformer_engine=use_transformer_engine)
    if not meg.get("vision_model"):
        return model
    attr, vision = build_vision_tower(meg) if pre_process else (None, None)
    return _vision_language_model_class()(model, attr, vision)
