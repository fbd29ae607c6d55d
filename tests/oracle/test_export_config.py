"""(d) The config.json that export would write (`bridge-run config`'s "export")
must agree with the source config.json on every architecture field the source
has. One test per (layer, family, field), so each disagreement is its own xfail
with its reason:

  * raw-published: the published full-size config.json against the export
    JSON, key by key (numbers by value; a source null equals an absent key);
  * hf-published:  both loaded by transformers (AutoConfig), attribute by
    attribute (transformers folds rope_theta/rope_scaling into rope_parameters);
  * hf-saved:      the tiny model's config.json as transformers' save_pretrained
    wrote it (rope_parameters, dtype) against the export, both through
    transformers. This is the layout of any checkpoint saved by transformers 5.
"""

from __future__ import annotations

import pytest

import tiny_models

# Architecture fields compared in the raw JSON (published layout).
RAW_FIELDS = [
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "num_hidden_layers",
    "vocab_size",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "tie_word_embeddings",
    "rope_scaling",
    "sliding_window",
    "head_dim",
    "model_type",
    "architectures",
    "hidden_act",
    "attention_bias",
    "mlp_bias",
    "torch_dtype",
]

# The same fields as transformers 5 attributes (rope_theta and rope_scaling
# live in rope_parameters; torch_dtype is dtype), plus the switch that decides
# whether sliding_window is used.
HF_FIELDS = [
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "num_hidden_layers",
    "vocab_size",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_parameters",
    "tie_word_embeddings",
    "sliding_window",
    "use_sliding_window",
    "head_dim",
    "model_type",
    "architectures",
    "hidden_act",
    "attention_bias",
    "mlp_bias",
    "dtype",
]

# (layer, family, field) -> reason. Each is an xfail(strict=True): when the
# mapping is fixed the test XPASSes and fails, and this entry must go.
KNOWN = {
}

LAYERS = ["raw-published", "hf-published", "hf-saved"]


def _params():
    out = []
    for layer in LAYERS:
        fields = RAW_FIELDS if layer == "raw-published" else HF_FIELDS
        for fam in tiny_models.FAMILIES:
            for f in fields:
                marks = []
                if (layer, fam.id, f) in KNOWN:
                    marks = [pytest.mark.xfail(strict=True, reason=KNOWN[(layer, fam.id, f)])]
                out.append(pytest.param(layer, fam.id, f, marks=marks,
                                        id=f"{layer}-{tiny_models.family_param_id(fam.id)}-{f}"))
    return out


def _same(a, b) -> bool:
    """Equal by value: 1000000 == 1e6, dicts and lists element-wise."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def _dtype_name(x):
    return None if x is None else str(x).replace("torch.", "")


def _hf_config(d: dict):
    import transformers

    # What from_pretrained does to a file's dict first: transformers 5 saves
    # an infinite float as {"__float__": "Infinity"} (Nemotron-H).
    d = dict(transformers.PreTrainedConfig._decode_special_floats(d))
    model_type = d.pop("model_type")
    d.pop("transformers_version", None)
    return transformers.AutoConfig.for_model(model_type, **d)


@pytest.fixture(scope="module")
def cases(bridge_run, tiny_checkpoints, tmp_path_factory):
    """(layer, family id) -> (source dict or config, export dict or config, raw source)."""
    cache = {}
    root = tmp_path_factory.mktemp("export-config")

    def get(layer, family_id):
        key = (layer, family_id)
        if key in cache:
            return cache[key]
        fam = tiny_models.FAMILY_BY_ID[family_id]
        if layer == "hf-saved":
            ckpt = tiny_checkpoints(family_id)
            raw = ckpt.config_json
            export = bridge_run.config(str(ckpt.path))["export"]
            import transformers

            src = transformers.AutoConfig.from_pretrained(ckpt.path)
            cache[key] = (src, _hf_config(export), raw)
        else:
            pub = tiny_models.published_config(fam)
            if pub is None:
                pytest.skip(f"no published config in {tiny_models.SHARED_HF_CONFIGS}")
            d = tiny_models.write_config_dir(pub, root / family_id)
            export = bridge_run.config(str(d))["export"]
            if layer == "raw-published":
                cache[key] = (pub, export, pub)
            else:
                cache[key] = (_hf_config(pub), _hf_config(export), pub)
        return cache[key]

    return get


@pytest.mark.parametrize("layer,family_id,field", _params())
def test_export_field_matches_source(cases, layer, family_id, field):
    src, exp, raw = cases(layer, family_id)
    # A VLM: the language model's fields are in its text section, on both sides.
    if layer == "raw-published":
        if field not in src and field in tiny_models.text_section(src):
            src, exp, raw = tiny_models.text_section(src), tiny_models.text_section(exp), tiny_models.text_section(raw)
    elif not hasattr(src, field) or field == "rope_parameters":
        src, exp, raw = src.get_text_config(), exp.get_text_config(), tiny_models.text_section(raw)
    if layer == "raw-published":
        if field not in src:
            pytest.skip(f"{field} not in the published config.json")
        want = src[field]
        if field not in exp:
            assert want is None, f"export has no {field}; source has {field}={want!r}"
            return
        got = exp[field]
    else:
        if not hasattr(src, field):
            pytest.skip(f"{type(src).__name__} has no attribute {field}")
        if field == "head_dim" and "head_dim" not in raw:
            pytest.skip("head_dim not in the source config.json")
        if field == "architectures" and "architectures" not in raw:
            pytest.skip("the source config.json names no architectures (a VLM's text_config); export writes the "
                        "mapping's")
        want, got = getattr(src, field), getattr(exp, field, None)
        if field == "rope_parameters":
            want, got = tiny_models.rope_as_transformers_reads_it(want), tiny_models.rope_as_transformers_reads_it(got)
        if field == "architectures":
            # The class transformers builds: a published name it has no class
            # for (SarvamMoEForCausalLM) is saved as that class's.
            want = tiny_models.transformers_architectures({"model_type": src.model_type, "architectures": want})
            got = tiny_models.transformers_architectures({"model_type": exp.model_type, "architectures": got})
        if field == "dtype":
            want, got = _dtype_name(want), _dtype_name(got)
            if want is None:
                pytest.skip("the source config gives no dtype; export writes the Megatron params_dtype")
        if field == "head_dim" and want is None:
            # transformers reads a null head_dim as hidden_size / heads;
            # export writes that number.
            want = src.hidden_size // src.num_attention_heads
    assert _same(want, got), f"{field}: source {want!r}, export {got!r}"
