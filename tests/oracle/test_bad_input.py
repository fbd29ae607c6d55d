"""Bad input fails before anything is written, with a message naming what is
wrong: unknown model type, missing or unmapped tensors, a tensor of the wrong
shape, a layout that does not divide the model, a corrupt safetensors header,
an existing output directory. No output (complete-looking or partial) may be
left behind."""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

import tiny_models


@pytest.fixture()
def source(tiny_checkpoints, tmp_path) -> Path:
    """A writable copy of the tiny untied Llama."""
    src = tiny_checkpoints("llama3.1-8b").path
    dst = tmp_path / "hf"
    shutil.copytree(src, dst)
    return dst


def _import(bridge_run, hf: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(bridge_run.path), "import", "--hf", str(hf), "--out", str(out), "--quiet", *extra],
                          capture_output=True, text=True)


def _nothing_written(out: Path):
    assert not out.exists(), f"{out} was created"
    assert not list(out.parent.glob(out.name + ".partial-*")), "a partial output was left behind"


def _rewrite(hf: Path, edit):
    """Loads model.safetensors, lets `edit` change the dict, saves it back."""
    from safetensors.torch import load_file, save_file

    f = hf / "model.safetensors"
    tensors = load_file(str(f))
    edit(tensors)
    save_file(tensors, str(f), metadata={"format": "pt"})


def test_unknown_model_type(bridge_run, source, tmp_path):
    cfg = json.loads((source / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = "falcon", ["FalconForCausalLM"]
    (source / "config.json").write_text(json.dumps(cfg))
    r = _import(bridge_run, source, tmp_path / "out")
    assert r.returncode == 1
    assert 'no mapping for model_type "falcon"' in r.stderr and "supported: llama, mistral, qwen2, qwen3" in r.stderr
    _nothing_written(tmp_path / "out")


def test_missing_tensor_is_named(bridge_run, source, tmp_path):
    _rewrite(source, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    r = _import(bridge_run, source, tmp_path / "out")
    assert r.returncode == 1
    assert "HF tensor(s) the mapping reads are missing" in r.stderr
    assert "model.layers.1.mlp.up_proj.weight" in r.stderr
    _nothing_written(tmp_path / "out")


def test_unmapped_tensor_is_named(bridge_run, source, tmp_path):
    import torch

    _rewrite(source, lambda t: t.__setitem__("model.layers.0.mlp.extra_proj.weight", torch.zeros(4, 4)))
    r = _import(bridge_run, source, tmp_path / "out")
    assert r.returncode == 1
    assert "HF tensor(s) no rule reads or ignores" in r.stderr and "model.layers.0.mlp.extra_proj.weight" in r.stderr
    _nothing_written(tmp_path / "out")


def test_wrong_shape_is_named(bridge_run, source, tmp_path):
    import torch

    cfg = json.loads((source / "config.json").read_text())
    rows = (cfg.get("num_key_value_heads") or cfg["num_attention_heads"]) * (
        cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
    _rewrite(source, lambda t: t.__setitem__("model.layers.0.self_attn.k_proj.weight", torch.zeros(rows + 16, 64)))
    r = _import(bridge_run, source, tmp_path / "out")
    assert r.returncode == 1
    assert f"k has shape [{rows + 16}, 64] but needs {rows} rows" in r.stderr and "gpt_decoder.bridge:" in r.stderr
    _nothing_written(tmp_path / "out")


def test_tp_not_dividing_query_groups(bridge_run, source, tmp_path):
    cfg = json.loads((source / "config.json").read_text())
    groups = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    tp = groups * 2
    r = _import(bridge_run, source, tmp_path / "out", "--tp", str(tp))
    assert r.returncode == 1
    assert f"num_query_groups {groups} is not divisible by TP {tp}" in r.stderr
    _nothing_written(tmp_path / "out")


@pytest.mark.parametrize("damage", ["truncated", "header-past-end", "not-json", "overlap"])
def test_corrupt_safetensors_header(bridge_run, source, tmp_path, damage):
    f = source / "model.safetensors"
    data = bytearray(f.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    if damage == "truncated":
        data = data[:5]
        expect = "truncated"
    elif damage == "header-past-end":
        data[:8] = struct.pack("<Q", len(data) * 2)
        expect = "runs past the end of the file"
    elif damage == "not-json":
        data[8:12] = b"{{{{"
        expect = "is not valid JSON"
    else:
        names = [k for k in header if k != "__metadata__"]
        header[names[1]]["data_offsets"] = header[names[0]]["data_offsets"]
        # Keep the byte lengths consistent so only the overlap is wrong.
        text = json.dumps(header).encode()
        text += b" " * ((8 - (8 + len(text)) % 8) % 8)
        data = struct.pack("<Q", len(text)) + text + data[8 + n:]
        expect = "overlap" if header[names[0]]["data_offsets"] != [0, 0] else ""
    f.write_bytes(bytes(data))
    r = _import(bridge_run, source, tmp_path / "out")
    assert r.returncode == 1
    assert str(f) in r.stderr and expect in r.stderr, r.stderr
    _nothing_written(tmp_path / "out")


def test_existing_output_is_refused(bridge_run, source, tmp_path):
    """An existing --out is replaced only with --overwrite, and only when it
    is an output of bridge-run (or empty): a directory of anything else is
    never deleted, whatever the flags."""
    out = tmp_path / "out"
    out.mkdir()
    r = _import(bridge_run, source, out)
    assert r.returncode == 1 and "exists; pass --overwrite" in r.stderr
    (out / "keep.txt").write_text("mine")
    for extra in ((), ("--overwrite",)):
        r = _import(bridge_run, source, out, *extra)
        assert r.returncode == 1 and "is not an output of bridge-run" in r.stderr and "--overwrite" not in r.stderr
        assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert _import(bridge_run, source, out, "--overwrite").returncode == 0
    assert (out / "latest_checkpointed_iteration.txt").exists()
    # A previous output is replaced in place.
    assert _import(bridge_run, source, out, "--overwrite").returncode == 0
    assert (out / "latest_checkpointed_iteration.txt").exists() and not list(tmp_path.glob("out.*"))


def test_output_path_with_a_trailing_slash(bridge_run, source, tmp_path):
    """'--out dir/' (as shell completion writes it) is the directory 'dir':
    the output is built beside it and renamed into place, not inside it."""
    out = tmp_path / "out"
    r = _import(bridge_run, source, str(out) + "/")
    assert r.returncode == 0, r.stderr
    assert (out / "latest_checkpointed_iteration.txt").exists() and not list(tmp_path.glob("*partial*"))


def test_stacked_experts_must_all_be_read(bridge_run, tiny_checkpoints, tmp_path):
    """gpt-oss stacks its experts in one HF tensor read by 'expert'; an extra
    expert in the stack would be silently dropped, so it is an error."""
    import torch

    hf = tmp_path / "hf"
    shutil.copytree(tiny_checkpoints("gpt-oss-20b").path, hf)
    name = "model.layers.0.mlp.experts.down_proj_bias"
    _rewrite(hf, lambda t: t.__setitem__(name, torch.cat([t[name], t[name][:1]], 0)))
    r = _import(bridge_run, hf, tmp_path / "mg")
    assert r.returncode == 1
    assert f"HF tensor '{name}' stacks 5 experts on dim 0, but the mapping reads 4 of them" in r.stderr
    _nothing_written(tmp_path / "mg")


def _header(f: Path) -> tuple[dict, bytes]:
    data = f.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _write_header_text(f: Path, text: str, body: bytes):
    raw = text.encode()
    raw += b" " * ((8 - (8 + len(raw)) % 8) % 8)
    f.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def test_unknown_dtype_is_named(bridge_run, source, tmp_path):
    f = source / "model.safetensors"
    header, body = _header(f)
    name = next(k for k in header if k != "__metadata__")
    header[name]["dtype"] = "BX16"
    _write_header_text(f, json.dumps(header), body)
    r = _import(bridge_run, source, tmp_path / "out")
    assert r.returncode == 1 and f"tensor '{name}' has unknown dtype 'BX16'" in r.stderr, r.stderr
    _nothing_written(tmp_path / "out")


def test_duplicate_keys_are_refused(bridge_run, source, tmp_path):
    # In a safetensors header: the second entry for a tensor would win.
    f = source / "model.safetensors"
    header, body = _header(f)
    name = next(k for k in header if k != "__metadata__")
    text = json.dumps(header)
    _write_header_text(f, text[:-1] + f', "{name}": ' + json.dumps(header[name]) + "}", body)
    r = _import(bridge_run, source, tmp_path / "out")
    assert r.returncode == 1 and f"has the key '{name}' twice" in r.stderr, r.stderr
    _nothing_written(tmp_path / "out")
    # In config.json: two values for one field.
    cfg = (source / "config.json").read_text()
    (source / "config.json").write_text(cfg.replace("{", '{"hidden_size": 7, ', 1))
    for cmd in (["import", "--hf", str(source), "--out", str(tmp_path / "out2")], ["config", "--hf", str(source)]):
        r = subprocess.run([str(bridge_run.path), *cmd], capture_output=True, text=True)
        assert r.returncode in (1, 2) and "has the key 'hidden_size' twice in one object" in r.stderr, r.stderr
    _nothing_written(tmp_path / "out2")


def test_index_naming_a_file_outside_the_checkpoint_is_refused(bridge_run, source, tmp_path):
    header, _ = _header(source / "model.safetensors")
    names = [k for k in header if k != "__metadata__"]
    shutil.copy(source / "model.safetensors", tmp_path / "elsewhere.safetensors")
    shutil.move(source / "model.safetensors", source / "model-00001-of-00001.safetensors")
    weight_map = {n: "model-00001-of-00001.safetensors" for n in names}
    for evil in ("../elsewhere.safetensors", str(tmp_path / "elsewhere.safetensors")):
        weight_map[names[0]] = evil
        (source / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        r = _import(bridge_run, source, tmp_path / "out")
        assert r.returncode == 1 and f"names '{evil}', outside the checkpoint directory" in r.stderr, r.stderr
        _nothing_written(tmp_path / "out")


def test_vlm_without_its_vision_tower_is_refused(bridge_run, tiny_checkpoints, tmp_path):
    """A pass-through rule that finds nothing under its prefix is a checkpoint
    without the module, not an empty module."""
    hf = tmp_path / "hf"
    shutil.copytree(tiny_checkpoints("qwen2.5-vl-7b").path, hf)
    _rewrite(hf, lambda t: [t.pop(k) for k in list(t) if k.startswith("visual.")])
    r = _import(bridge_run, hf, tmp_path / "out")
    assert r.returncode == 1
    assert "holds no tensor under 'visual.'" in r.stderr and "qwen2_5_vl.bridge" in r.stderr, r.stderr
    _nothing_written(tmp_path / "out")


@pytest.mark.parametrize("change", [{"n_shared_experts": 2}, {"norm_topk_prob": False}])
def test_nemotron_h_experts_it_does_not_convert_are_refused(bridge_run, tiny_checkpoints, tmp_path, change):
    """Read from transformers 5's layers_block_type as from the published
    hybrid_override_pattern: two shared experts, or top-k left unnormalized,
    stop the conversion (Megatron-Core's router would change the model)."""
    hf = tmp_path / "hf"
    shutil.copytree(tiny_checkpoints("nemotron-3-nano").path, hf)
    cfg = json.loads((hf / "config.json").read_text())
    assert "layers_block_type" in cfg and "hybrid_override_pattern" not in cfg
    cfg.update(change)
    (hf / "config.json").write_text(json.dumps(cfg))
    r = _import(bridge_run, hf, tmp_path / "out")
    assert r.returncode == 1 and "renormalized top-k and one shared expert" in r.stderr, r.stderr
    _nothing_written(tmp_path / "out")


@pytest.mark.parametrize("change", [{"hidden_act": "gelu"}, {"mlp_bias": True}])
def test_nemotron_configs_it_does_not_convert_are_refused(bridge_run, tiny_checkpoints, tmp_path, change):
    """Another activation, biases: each stops the import by its require line
    before anything is written."""
    hf = tmp_path / "hf"
    shutil.copytree(tiny_checkpoints("nemotron-4-15b").path, hf)
    cfg = json.loads((hf / "config.json").read_text())
    cfg.update(change)
    (hf / "config.json").write_text(json.dumps(cfg))
    r = _import(bridge_run, hf, tmp_path / "out")
    want = {"hidden_act": "squared ReLU", "mlp_bias": "biases on its linear layers"}[next(iter(change))]
    assert r.returncode == 1 and want in r.stderr and "nemotron.bridge" in r.stderr, r.stderr
    _nothing_written(tmp_path / "out")


@pytest.mark.parametrize("change", [{"norm_topk_prob": False}, {"first_k_dense_replace": 2},
                                    {"mlp_layer_types": ["dense", "sparse", "sparse"]}])
def test_glm47_flash_configs_it_does_not_convert_are_refused(bridge_run, tiny_checkpoints, tmp_path, change):
    """Top-k left unnormalized; dense layers given only by first_k_dense_replace,
    which transformers' class does not read (it builds from mlp_layer_types);
    an mlp_layer_types longer than the model."""
    hf = tmp_path / "hf"
    shutil.copytree(tiny_checkpoints("glm4.7-flash").path, hf)
    cfg = json.loads((hf / "config.json").read_text())
    cfg.pop("mlp_layer_types", None)
    cfg.update(change)
    (hf / "config.json").write_text(json.dumps(cfg))
    r = _import(bridge_run, hf, tmp_path / "out")
    want = {"norm_topk_prob": "without norm_topk_prob", "first_k_dense_replace": "needs mlp_layer_types",
            "mlp_layer_types": "one type per layer"}[next(iter(change))]
    assert r.returncode == 1 and want in r.stderr and "glm4_moe_lite.bridge" in r.stderr, r.stderr
    _nothing_written(tmp_path / "out")


def test_exaone4_window_without_layer_types_is_refused(bridge_run, tiny_checkpoints, tmp_path):
    """Which layers are windowed (and go without rotary) is read from
    layer_types alone: a windowed config without it is refused."""
    hf = tmp_path / "hf"
    shutil.copytree(tiny_checkpoints("exaone4-32b").path, hf)
    cfg = json.loads((hf / "config.json").read_text())
    assert cfg["sliding_window"]
    cfg.pop("layer_types")
    (hf / "config.json").write_text(json.dumps(cfg))
    r = _import(bridge_run, hf, tmp_path / "out")
    assert r.returncode == 1 and "needs layer_types" in r.stderr and "exaone4.bridge" in r.stderr, r.stderr
    _nothing_written(tmp_path / "out")


@pytest.mark.parametrize("change", ["text_model", "no_vision"])
def test_mistral3_configs_it_does_not_convert_are_refused(bridge_run, tiny_checkpoints, tmp_path, change):
    """Ministral 3's text model, or no vision section: refused by name before
    anything is written."""
    hf = tmp_path / "hf"
    shutil.copytree(tiny_checkpoints("mistral3-small-24b").path, hf)
    cfg = json.loads((hf / "config.json").read_text())
    if change == "text_model":
        cfg["text_config"]["model_type"] = "ministral3"
    else:
        cfg.pop("vision_config")
    (hf / "config.json").write_text(json.dumps(cfg))
    r = _import(bridge_run, hf, tmp_path / "out")
    want = "with a Mistral text model" if change == "text_model" else "has a vision_config section"
    assert r.returncode == 1 and want in r.stderr and "mistral3.bridge" in r.stderr, r.stderr
    _nothing_written(tmp_path / "out")


@pytest.mark.parametrize("change,want", [
    ({"layer_types": None}, "needs layer_types"),
    ({"layer_types": ["sliding_attention"]}, "layer_types must name one type per layer"),
    ({"mlp_layer_types": ["dense", "sparse", "sparse"]}, "mlp_layer_types must name one type per layer"),
    ({"topk_method": "greedy"}, "routing other than noaux_tc"),
    ({"scoring_func": "softmax"}, "routing other than noaux_tc"),
    ({"norm_topk_prob": False}, "without norm_topk_prob"),
    ({"num_experts_per_tok": 1}, "one expert per token"),
    ({"n_group": 2, "topk_group": 2}, "group routing needs num_experts_per_tok = 2 * topk_group"),
    ({"num_nextn_predict_layers": 1}, "multi-token-prediction layers"),
    ({"swiglu_limits": [0.0, 7.0]}, "with swiglu_limits"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}}, "rope_scaling type"),
], ids=["no-layer-types", "short-layer-types", "long-mlp-layer-types", "topk-method", "softmax", "unnormalized",
        "top-1", "group-scoring", "mtp", "swiglu-limits", "yarn"])
def test_exaone_moe_configs_it_does_not_convert_are_refused(bridge_run, tiny_checkpoints, tmp_path, change, want):
    """Which layers are windowed comes from layer_types alone; the router must
    be the one Megatron-Core computes as transformers does (noaux_tc sigmoid,
    renormalized top-k over more than one expert, groups scored as Megatron-Core
    scores them); MTP layers, SwiGLU limits and unmapped rope scalings stop."""
    hf = tmp_path / "hf"
    shutil.copytree(tiny_checkpoints("k-exaone-236b").path, hf)
    cfg = json.loads((hf / "config.json").read_text())
    assert cfg["sliding_window"]
    for key, value in change.items():
        if value is None:
            cfg.pop(key)
        else:
            cfg[key] = value
    (hf / "config.json").write_text(json.dumps(cfg))
    r = _import(bridge_run, hf, tmp_path / "out")
    # (The rope scaling's refusal is the shared attention fragment's.)
    assert r.returncode == 1 and want in r.stderr and "mapping 'exaone_moe'" in r.stderr, r.stderr
    _nothing_written(tmp_path / "out")


@pytest.mark.parametrize("change,want", [
    ({"norm_topk_prob": False}, "without norm_topk_prob"),
    ({"num_experts_per_tok": 1}, "one expert per token"),
    ({"n_group": 2, "topk_group": 2}, "group routing needs num_experts_per_tok = 2 * topk_group"),
    ({"num_nextn_predict_layers": 1}, "multi-token-prediction layers"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 8000000.0}}, "rope_scaling type"),
], ids=["unnormalized", "top-1", "group-scoring", "mtp", "yarn"])
def test_sarvam_moe_configs_it_does_not_convert_are_refused(bridge_run, tiny_checkpoints, tmp_path, change, want):
    """The router must be the one Megatron-Core computes as transformers does
    (renormalized top-k over more than one expert, groups scored as
    Megatron-Core scores them); MTP layers and unmapped rope scalings stop."""
    hf = tmp_path / "hf"
    shutil.copytree(tiny_checkpoints("sarvam-30b").path, hf)
    cfg = json.loads((hf / "config.json").read_text())
    cfg.update(change)
    (hf / "config.json").write_text(json.dumps(cfg))
    r = _import(bridge_run, hf, tmp_path / "out")
    # (The rope scaling's refusal is the shared attention fragment's.)
    assert r.returncode == 1 and want in r.stderr and "mapping 'sarvam_moe'" in r.stderr, r.stderr
    _nothing_written(tmp_path / "out")


@pytest.mark.parametrize("family,mapping", [("deepseek-v3", "deepseek_v3"), ("glm4.7-flash", "glm4_moe_lite")])
def test_group_scoring_megatron_core_computes_otherwise_is_refused(bridge_run, tiny_checkpoints, tmp_path, family,
                                                                   mapping):
    """DeepSeek's decoder fragment: transformers ranks a group by its top two
    experts, Megatron-Core by its top num_experts_per_tok / topk_group, so a
    config where those differ is refused (DeepSeek-V3's 8 / 4 agree)."""
    hf = tmp_path / "hf"
    shutil.copytree(tiny_checkpoints(family).path, hf)
    cfg = json.loads((hf / "config.json").read_text())
    cfg.update({"n_group": 2, "topk_group": 2, "num_experts_per_tok": 2})
    (hf / "config.json").write_text(json.dumps(cfg))
    r = _import(bridge_run, hf, tmp_path / "out")
    assert r.returncode == 1 and "group routing needs num_experts_per_tok = 2 * topk_group" in r.stderr, r.stderr
    assert f"mapping '{mapping}'" in r.stderr, r.stderr
    _nothing_written(tmp_path / "out")


@pytest.mark.parametrize("change,want", [
    ({"norm_topk_prob": False}, "without norm_topk_prob"),
    # (n_group 1: with groups, the fragment's group-scoring refusal comes first.)
    ({"num_experts_per_tok": 1, "n_group": 1}, "one expert per token"),
    ({"n_group": 2, "topk_group": 2}, "group routing needs num_experts_per_tok = 2 * topk_group"),
    ({"rope_interleave": False}, "rope_interleave false"),
    ({"num_nextn_predict_layers": 1}, "multi-token-prediction layers"),
    ({"rope_parameters": {"type": "deepseek_yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
                          "rope_theta": 10000.0}}, "rope scaling other than yarn"),
    ({"attention_bias": True}, "attention biases"),
], ids=["unnormalized", "top-1", "group-scoring", "not-interleaved", "mtp", "deepseek-yarn", "bias"])
def test_sarvam_mla_configs_it_does_not_convert_are_refused(bridge_run, tiny_checkpoints, tmp_path, change, want):
    """The router must be the one Megatron-Core computes as transformers does;
    Megatron-Core's MLA rotates interleaved pairs; MTP layers stop; the legacy
    deepseek_yarn spelling (which SarvamMLAConfig alone rewrites to yarn) and
    attention biases are refused by the shared DeepSeek fragment."""
    hf = tmp_path / "hf"
    shutil.copytree(tiny_checkpoints("sarvam-105b").path, hf)
    cfg = json.loads((hf / "config.json").read_text())
    cfg.update(change)
    (hf / "config.json").write_text(json.dumps(cfg))
    r = _import(bridge_run, hf, tmp_path / "out")
    assert r.returncode == 1 and want in r.stderr and "mapping 'sarvam_mla'" in r.stderr, r.stderr
    _nothing_written(tmp_path / "out")


@pytest.mark.parametrize("change,want", [
    ({"mlp_layer_types": ["dense", "sparse", "sparse"]}, "mlp_layer_types must name one type per layer"),
    ({"mlp_layer_types": None, "first_k_dense_replace": 2}, "transformers makes only the first layer dense"),
    ({"num_experts_per_tok": 1}, "one expert per token"),
    ({"attention_bias": True}, "with attention_bias or mlp_bias"),
    ({"mlp_bias": True}, "with attention_bias or mlp_bias"),
    ({"num_nextn_predict_layers": 1}, "multi-token-prediction layers"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 11158840.0}}, "rope_scaling type"),
], ids=["long-mlp-layer-types", "first-k-dense", "top-1", "attention-bias", "mlp-bias", "mtp", "yarn"])
def test_hy_v3_configs_it_does_not_convert_are_refused(bridge_run, tiny_checkpoints, tmp_path, change, want):
    """Dense layers come from mlp_layer_types alone (transformers never reads
    first_k_dense_replace); Megatron-Core renormalizes a sigmoid top-k only
    over more than one expert; one Megatron-Core bias flag would give the
    experts biases transformers' lack; MTP layers (transformers builds none)
    and unmapped rope scalings stop."""
    hf = tmp_path / "hf"
    shutil.copytree(tiny_checkpoints("hy3-preview").path, hf)
    cfg = json.loads((hf / "config.json").read_text())
    for key, value in change.items():
        if value is None:
            cfg.pop(key)
        else:
            cfg[key] = value
    (hf / "config.json").write_text(json.dumps(cfg))
    r = _import(bridge_run, hf, tmp_path / "out")
    # (The rope scaling's refusal is the shared attention fragment's.)
    assert r.returncode == 1 and want in r.stderr and "mapping 'hy_v3'" in r.stderr, r.stderr
    _nothing_written(tmp_path / "out")


@pytest.mark.parametrize("change,want", [
    ({"linear_num_value_heads": 3}, "linear_num_value_heads must be a multiple of linear_num_key_heads"),
    ({"use_sliding_window": True}, "sliding-window attention is not converted"),
    ({"mlp_only_layers": [1]}, "dense layers (decoder_sparse_step, mlp_only_layers) are not converted"),
    ({"attention_bias": True}, "attention biases are not converted"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                          "partial_rotary_factor": 0.25}}, "this mapping converts no rope scaling"),
    ({"layer_types": ["linear_attention"] * 3 + ["sliding_attention"]},
     "layer_types must name linear_attention or full_attention for each layer"),
], ids=["value-heads", "sliding-window", "dense-layer", "attention-bias", "yarn", "unknown-layer-type"])
def test_qwen3_next_configs_it_does_not_convert_are_refused(bridge_run, tiny_checkpoints, tmp_path, change, want):
    """Value heads group under key heads; sliding windows, dense layers,
    attention biases and rope scaling have no rule; a layer type other than
    linear or full attention would be read as full attention, so the config
    must be refused before anything is written."""
    hf = tmp_path / "hf"
    shutil.copytree(tiny_checkpoints("qwen3-next-80b-a3b").path, hf)
    cfg = json.loads((hf / "config.json").read_text())
    cfg.update(change)
    (hf / "config.json").write_text(json.dumps(cfg))
    r = _import(bridge_run, hf, tmp_path / "out")
    assert r.returncode == 1 and want in r.stderr and "mapping 'qwen3_next'" in r.stderr, r.stderr
    _nothing_written(tmp_path / "out")


def test_qwen3_next_mtp_tensors_are_named_not_dropped(bridge_run, tiny_checkpoints, tmp_path):
    """The published checkpoints' MTP layer (mtp.*, which no config key
    describes and transformers drops) is not converted: import stops and
    names the tensors rather than leaving them behind."""
    import torch
    from safetensors.torch import save_file

    from safetensors import safe_open

    hf = tmp_path / "hf"
    shutil.copytree(tiny_checkpoints("qwen3-next-80b-a3b").path, hf)
    hidden = json.loads((hf / "config.json").read_text())["hidden_size"]
    # A second shard, as the published checkpoints have, named by the index.
    save_file({"mtp.fc.weight": torch.zeros(hidden, 2 * hidden)}, str(hf / "model-mtp.safetensors"))
    with safe_open(str(hf / "model.safetensors"), "pt") as f:
        weight_map = {k: "model.safetensors" for k in f.keys()}
    weight_map["mtp.fc.weight"] = "model-mtp.safetensors"
    (hf / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    r = _import(bridge_run, hf, tmp_path / "out")
    assert r.returncode == 1 and "mtp.fc.weight" in r.stderr, r.stderr
    _nothing_written(tmp_path / "out")


@pytest.mark.parametrize("change,want", [
    ({"indexer_types": ["full", "shared"]}, "shared indexer layers"),
    ({"indexer_types": None, "index_topk_freq": 2}, "shared indexer layers"),
    ({"indexer_types": None, "index_topk_pattern": "FS"}, "shared indexer layers"),
    ({"index_head_dim": 64}, "index_head_dim > qk_rope_head_dim"),
    ({"q_lora_rank": None}, "without q_lora_rank"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096,
                          "rope_theta": 1000000.0}}, "GLM-5 with rope scaling"),
    ({"norm_topk_prob": False}, "without norm_topk_prob"),
    ({"num_experts_per_tok": 1, "n_group": 1, "topk_group": 1}, "one expert per token"),
    ({"n_group": 2, "topk_group": 2}, "group routing needs num_experts_per_tok = 2 * topk_group"),
    ({"mlp_layer_types": ["dense"]}, "mlp_layer_types must name one type per layer"),
    ({"mlp_bias": True}, "mlp_bias"),
], ids=["shared-indexer", "index-topk-freq", "index-topk-pattern", "indexer-sizes", "no-q-lora", "rope-scaling",
        "unnormalized", "top-1", "group-scoring", "mlp-layer-types", "mlp-bias"])
def test_glm_moe_dsa_configs_it_does_not_convert_are_refused(bridge_run, tiny_checkpoints, tmp_path, change, want):
    """Megatron-Core 0.16.1 runs the indexer in every layer (no shared top-k);
    an indexer head must be wider than its rotary part; its query
    comes from the query LoRA; the router must be the one Megatron-Core
    computes as transformers does."""
    hf = tmp_path / "hf"
    shutil.copytree(tiny_checkpoints("glm5").path, hf)
    cfg = json.loads((hf / "config.json").read_text())
    cfg.update(change)
    (hf / "config.json").write_text(json.dumps(cfg))
    r = _import(bridge_run, hf, tmp_path / "out")
    assert r.returncode == 1 and want in r.stderr and "mapping 'glm_moe_dsa'" in r.stderr, r.stderr
    _nothing_written(tmp_path / "out")


def test_vlm_text_section_wins_over_the_top_level(bridge_run, tiny_checkpoints, tmp_path):
    """A config that keeps a language field at both levels (transformers 4.5x
    saved some so): transformers builds the model from text_config, and so
    does the conversion."""
    hf = tmp_path / "hf"
    shutil.copytree(tiny_checkpoints("qwen2.5-vl-7b").path, hf)
    cfg = json.loads((hf / "config.json").read_text())
    assert "text_config" in cfg
    cfg["rms_norm_eps"] = 0.5  # a stale top-level copy
    (hf / "config.json").write_text(json.dumps(cfg))
    assert bridge_run.config(str(hf))["megatron"]["layernorm_epsilon"] == cfg["text_config"]["rms_norm_eps"]
