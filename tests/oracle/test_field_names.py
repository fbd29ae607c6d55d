"""(e) The Megatron-side field names (and their enum values and literal
defaults) against megatron-core itself.

A field must be an attribute of megatron-core's TransformerConfig or
MLATransformerConfig, or a parameter of GPTModel.__init__, or be in ALLOWED
below, which says where Megatron-Bridge keeps it.

The per-field tests are parametrized over every `field` of
compiler/schema/megatron.bridge (a superset of what bridge-run can produce);
test_produced_keys_are_schema_fields ties bridge-run's actual output to it.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import typing
from pathlib import Path

import pytest

import megatron_oracle
import tiny_models

SCHEMA = Path(__file__).resolve().parents[2] / "compiler" / "schema" / "megatron.bridge"

# Fields megatron-core 0.16.1 does not have as config attributes or GPTModel
# parameters, and where Megatron-Bridge keeps them.
ALLOWED = {
    # GPTModelProvider.seq_length; provide() passes it as GPTModel(max_sequence_length=...).
    "seq_length": "GPTModelProvider.seq_length",
    # GPTModelProvider.make_vocab_size_divisible_by; pads the vocab in provide()
    # only when should_pad_vocab (False for conversion).
    "make_vocab_size_divisible_by": "GPTModelProvider.make_vocab_size_divisible_by",
    # Not a GPTModelProvider field: Megatron-Bridge's CONFIG_MAPPING turns HF
    # max_position_embeddings into seq_length. Megatron-LM keeps it as the
    # --max-position-embeddings training argument (args.max_position_embeddings),
    # which pretrain_gpt passes to GPTModel as max_sequence_length.
    "max_position_embeddings": "Megatron-LM args.max_position_embeddings (Bridge: -> seq_length)",
    # GPTModelProvider yarn_* fields (YARN_ROPE_SCALING_MAPPING); megatron-core
    # 0.16.1 GPTModel reads them with getattr(self.config, "yarn_...") when
    # position_embedding_type == "yarn", so they are ad-hoc config attributes.
    "yarn_rotary_scaling_factor": "GPTModelProvider.yarn_rotary_scaling_factor",
    "yarn_original_max_position_embeddings": "GPTModelProvider.yarn_original_max_position_embeddings",
    "yarn_beta_fast": "GPTModelProvider.yarn_beta_fast",
    "yarn_beta_slow": "GPTModelProvider.yarn_beta_slow",
    "yarn_mscale": "GPTModelProvider.yarn_mscale",
    "yarn_mscale_all_dim": "GPTModelProvider.yarn_mscale_all_dim",
    "yarn_correction_range_round_to_int": "GPTModelProvider.yarn_correction_range_round_to_int",
    # Not a provider field either: Megatron-Bridge builds OLMoE and MiniMax-M2
    # with its own attention layer spec whose q/k norms span all heads.
    "qk_layernorm_full_width": "olmoe_layer_spec / minimax_m2_layer_spec (Megatron-Bridge)",
    # Gemma2ModelProvider fields (Megatron-Bridge models/gemma/gemma2_provider.py),
    # consumed by its own attention / output layer, not by megatron-core.
    "query_pre_attn_scalar": "Gemma2ModelProvider.query_pre_attn_scalar",
    "attn_logit_softcapping": "Gemma2ModelProvider.attn_logit_softcapping",
    "final_logit_softcapping": "Gemma2ModelProvider.final_logit_softcapping",
    # Not a provider field: Megatron-Bridge builds Gemma 2 and 3 with a layer
    # spec whose linear_proj and linear_fc2 carry a norm after them.
    "post_layernorm": "TERowParallelLinearLayerNorm in Megatron-Bridge's Gemma layer specs",
    # Not a provider field: Megatron-Bridge's Gemma providers extend the built
    # model's embedding (models/gemma/modules.py), whose docstring names it so.
    "apply_embedding_scaling": "EmbeddingScalingMixin in Megatron-Bridge's Gemma providers",
    # Not a provider field: Megatron-Bridge builds EXAONE 4 with a layer spec
    # whose linear_qkv and linear_fc1 have no fused norm.
    "pre_layernorm": "exaone4_layer_spec (Megatron-Bridge): no norm before attention or the MLP",
    # Gemma3ModelProvider takes rotary_base as a (local, global) pair.
    "rotary_base_local": "Gemma3ModelProvider.rotary_base[0]",
    # Vision-language providers (Megatron-Bridge models/qwen_vl/qwen25_vl_provider.py,
    # models/gemma_vl/gemma3_vl_provider.py): which HF vision tower the model
    # builds, and from what.
    "vision_model": "the VLM provider class (Qwen25VLModelProvider, Gemma3VLModelProvider)",
    "vision_config": "Qwen25VLModelProvider.vision_config / Gemma3VLModelProvider.vision_config",
    "vision_hidden_size": "Gemma3VLModelProvider.vision_projector_config.input_size",
    "image_token_id": "Qwen25VLModelProvider.image_token_id / Gemma3VLModelProvider.image_token_id",
    "video_token_id": "Qwen25VLModelProvider.video_token_id",
    "vision_start_token_id": "Qwen25VLModelProvider.vision_start_token_id / Gemma3VLModelProvider",
    "vision_end_token_id": "Qwen25VLModelProvider.vision_end_token_id / Gemma3VLModelProvider",
    "mm_tokens_per_image": "Gemma3VLModelProvider.mm_tokens_per_image",
    # MambaModel.__init__(hybrid_override_pattern=...) in megatron-core 0.16.1
    # (MambaModelProvider.hybrid_override_pattern in Megatron-Bridge).
    "hybrid_override_pattern": "MambaModel.__init__ hybrid_override_pattern",
}

_FIELD_RE = re.compile(
    r"^\s*field\s+(?P<name>\w+)\s*:\s*(?P<type>[^=;]+?)\s*(?:=\s*(?P<default>[^;]+?))?\s*;",
    re.M,
)


def schema_fields() -> dict[str, dict]:
    """name -> {type, default (text or None)} from the schema file."""
    text = SCHEMA.read_text()
    text = re.sub(r"#[^\n]*", "", text)
    out = {}
    for m in _FIELD_RE.finditer(text):
        out[m["name"]] = dict(type=m["type"].strip(), default=m["default"])
    assert out, f"no field declarations parsed from {SCHEMA}"
    return out


SCHEMA_FIELDS = schema_fields() if SCHEMA.is_file() else {}


def _enum_values(type_text: str) -> list[str] | None:
    m = re.fullmatch(r"enum\((.*)\)\??", type_text)
    return [v.strip().strip("\"") for v in m.group(1).split(",")] if m else None


def _literal_default(text: str | None, type_text: str = ""):
    """(True, value) for a literal default (number, string, bool; an optional
    field `T?` without a default is null), else (False, None)."""
    if text is None:
        return (True, None) if type_text.endswith("?") else (False, None)
    try:
        return True, json.loads(text)
    except ValueError:
        return False, None  # an expression of other fields


def _megatron_place(name, classes):
    """(kind, annotation, default) of a name in megatron-core, or None."""
    sig = inspect.signature(classes["GPTModel"].__init__).parameters
    if name in sig:
        p = sig[name]
        return "GPTModel.__init__", p.annotation, p.default
    for cls_name in ("TransformerConfig", "MLATransformerConfig"):
        cls = classes[cls_name]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name == name:
                if f.default is not dataclasses.MISSING:
                    default = f.default
                elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                    default = f.default_factory()  # type: ignore[misc]
                else:
                    default = inspect.Parameter.empty
                return cls_name, hints.get(name, f.type), default
    return None


def _schema_param(names):
    return [pytest.param(n, id=n) for n in names] or [
        pytest.param(None, marks=pytest.mark.skip(reason=f"no schema at {SCHEMA}"))
    ]


@pytest.mark.parametrize("name", _schema_param(sorted(SCHEMA_FIELDS)))
def test_schema_field_exists_in_megatron(mcore_classes, name):
    place = _megatron_place(name, mcore_classes)
    if place is None:
        assert name in ALLOWED, (
            f"{name} is neither a TransformerConfig/MLATransformerConfig attribute nor a "
            f"GPTModel.__init__ parameter in megatron-core, and not in the allow-list"
        )
    else:
        assert name not in ALLOWED, f"{name} is in megatron-core ({place[0]}); drop it from ALLOWED"


def test_produced_keys_are_schema_fields(bridge_run, tiny_checkpoints, tmp_path, mcore_classes):
    """Every key bridge-run's "megatron" object has, for every family (tiny and
    full-size published), is a schema field (so the per-field tests cover it)
    and passes the existence rule."""
    produced = {}
    for fam in tiny_models.FAMILIES:
        dirs = [tiny_checkpoints(fam.id).path]
        pub = tiny_models.published_config(fam)
        if pub is not None:
            dirs.append(tiny_models.write_config_dir(pub, tmp_path / fam.id))
        for d in dirs:
            for key in bridge_run.config(str(d))["megatron"]:
                produced.setdefault(key, fam.id)
    not_schema = sorted(k for k in produced if SCHEMA_FIELDS and k not in SCHEMA_FIELDS)
    assert not not_schema, f"bridge-run emits keys the schema does not declare: {not_schema}"
    unknown = sorted(
        k for k in produced if _megatron_place(k, mcore_classes) is None and k not in ALLOWED
    )
    assert not unknown, f"keys with no place in megatron-core nor the allow-list: {unknown}"


# ---- enum values ------------------------------------------------------------

KNOWN_ENUM: dict = {}  # field -> reason; empty: all enum spellings agree

ENUM_FIELDS = sorted(n for n, f in SCHEMA_FIELDS.items() if _enum_values(f["type"]))


def _enum_params():
    out = []
    for n in ENUM_FIELDS:
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN_ENUM[n])] if n in KNOWN_ENUM else []
        out.append(pytest.param(n, marks=marks, id=n))
    return out or _schema_param([])


@pytest.mark.parametrize("name", _enum_params())
def test_schema_enum_values_accepted_by_megatron(mcore_classes, name):
    values = _enum_values(SCHEMA_FIELDS[name]["type"])
    if name == "activation_func":
        # A callable in megatron-core; every name must have a function.
        for v in values:
            megatron_oracle.activation_function(v)
        return
    if name == "params_dtype":
        for v in values:
            megatron_oracle.torch_dtype(v)
        return
    place = _megatron_place(name, mcore_classes)
    if place is None:
        pytest.skip(f"{name} is not in megatron-core (allow-listed)")
    kind, annotation, _ = place
    literals = _literal_values(annotation)
    if literals is None:
        pytest.skip(f"{kind}.{name} is typed {annotation!r}, not a Literal")
    extra = sorted(set(values) - literals)
    assert not extra, f"{name}: schema values {extra} are not in {kind}'s Literal {sorted(literals)}"


def _literal_values(annotation) -> set | None:
    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    vals = set()
    for arg in typing.get_args(annotation):  # Optional[Literal[...]]
        sub = _literal_values(arg)
        if sub:
            vals |= sub
    return vals or None


# ---- literal defaults ----------------------------------------------------------

# Literal schema defaults that deliberately differ from megatron-core's.
DEFAULT_DEVIATIONS = {
    # GPTModel.__init__ defaults to False; Megatron-Bridge's GPTModelProvider
    # (the provider every bridge starts from) defaults to True.
    "share_embeddings_and_output_weights": "GPTModelProvider default True",
}

KNOWN_DEFAULTS: dict = {}  # field -> reason; empty: all literal defaults agree

LITERAL_DEFAULT_FIELDS = sorted(
    n for n, f in SCHEMA_FIELDS.items() if _literal_default(f["default"], f["type"])[0]
)


def _default_params():
    out = []
    for n in LITERAL_DEFAULT_FIELDS:
        marks = (
            [pytest.mark.xfail(strict=True, reason=KNOWN_DEFAULTS[n])] if n in KNOWN_DEFAULTS else []
        )
        out.append(pytest.param(n, marks=marks, id=n))
    return out or _schema_param([])


@pytest.mark.parametrize("name", _default_params())
def test_schema_literal_default_matches_megatron(mcore_classes, name):
    """A literal schema default (what bridge-run assumes when a bridge sets
    nothing) must be megatron-core's default."""
    f = SCHEMA_FIELDS[name]
    _, value = _literal_default(f["default"], f["type"])
    place = _megatron_place(name, mcore_classes)
    if place is None:
        pytest.skip(f"{name} is not in megatron-core (allow-listed: {ALLOWED.get(name)})")
    kind, _, default = place
    if default is inspect.Parameter.empty:
        pytest.skip(f"{kind}.{name} has no default")
    if value is None:
        pass
    elif name == "activation_func":
        value = megatron_oracle.activation_function(value)
    elif name == "params_dtype":
        value = megatron_oracle.torch_dtype(value)
    if name in DEFAULT_DEVIATIONS:
        assert value != default, f"{name} no longer deviates; drop it from DEFAULT_DEVIATIONS"
        return
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and isinstance(default, (int, float))
    ):
        assert float(value) == float(default), f"{name}: schema {value!r}, {kind} {default!r}"
    else:
        assert value == default, f"{name}: schema {value!r}, {kind} {default!r}"
