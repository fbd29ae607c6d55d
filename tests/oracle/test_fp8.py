"""FP8 sources: tiny models made by transformers are quantized here to
float8_e4m3fn, imported, and exported. The export must equal the dequantized
reference computed independently in this test (fp32 product, then bf16);
tensors that were not quantized come back bit for bit; scales are gone. A
weight without its scale is an error.

Two schemes: 128x128 block scales 'weight_scale_inv' (DeepSeek-V3,
MiniMax-M2), and per-tensor or per-output-channel scales 'weight_scale' with
static activation scales 'input_scale' (compressed-tensors FP8 releases of
Llama-style models)."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

BLOCK = 128
# What each family's FP8 release quantizes: every linear projection (and
# MiniMax-M2's w1/w2/w3 experts), never the router.
QUANTIZED = {
    "deepseek-v3": ("_proj.weight",),
    "minimax-m2": ("_proj.weight", ".w1.weight", ".w2.weight", ".w3.weight"),
}


def _quantize(src, dst, quantized=QUANTIZED["deepseek-v3"]):
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    out, reference = {}, {}
    for name, w in tensors.items():
        if name.endswith(quantized) and w.dim() == 2 and ".mlp.gate." not in name:
            m, n = w.shape
            bm, bn = -(-m // BLOCK), -(-n // BLOCK)
            scale = torch.empty(bm, bn, dtype=torch.float32)
            q = torch.empty(m, n, dtype=torch.float8_e4m3fn)
            for i in range(bm):
                for j in range(bn):
                    blk = w[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK].float()
                    s = blk.abs().max().clamp(min=1e-12) / 448.0
                    scale[i, j] = s
                    q[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK] = (blk / s).to(torch.float8_e4m3fn)
            out[name], out[name + "_scale_inv"] = q, scale
            full = scale.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:m, :n]
            reference[name] = (q.float() * full).to(torch.bfloat16)
        else:
            out[name] = w
            reference[name] = w
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                  "weight_block_size": [BLOCK, BLOCK]}
    (dst / "config.json").write_text(json.dumps(cfg))
    return reference


# Where import and export run their ops (--bridge-device; GPU hosts run these
# tests on cuda, and the references must match bit for bit there too).
DEVICE = ["cpu"]


@pytest.fixture(autouse=True)
def _device(bridge_device):
    DEVICE[0] = bridge_device


def _run(bridge_run, *args):
    device = ["--device", DEVICE[0]] if args[0] in ("import", "export") else []
    return subprocess.run([str(bridge_run.path), *args, *device, "--quiet"], capture_output=True, text=True)


def _import_export(bridge_run, src, tmp_path, *layout):
    r = _run(bridge_run, "import", "--hf", str(src), "--out", str(tmp_path / "mg"), *layout)
    assert r.returncode == 0, r.stderr
    r = _run(bridge_run, "export", "--megatron", str(tmp_path / "mg"), "--out", str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    from safetensors import safe_open

    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _tensor_names(path):
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return list(f.keys())


def _assert_equals_reference(back, reference):
    import torch

    assert sorted(back) == sorted(reference), "scales must be gone, every weight back"
    for name, want in reference.items():
        got = back[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert torch.equal(got.view(-1).view(torch.uint8), want.contiguous().view(-1).view(torch.uint8)), name


@pytest.mark.parametrize("family_id", ["minimax-m2"])
def test_fp8_block_source_of_another_family(bridge_run, tiny_checkpoints, tmp_path, family_id):
    reference = _quantize(tiny_checkpoints(family_id).path, tmp_path / "fp8", QUANTIZED[family_id])
    scales = [k for k in _tensor_names(tmp_path / "fp8") if k.endswith("_scale_inv")]
    assert len(scales) == 2 * (4 + 4 * 3)  # 2 layers x (q, k, v, o + 4 experts x w1, w2, w3)
    back = _import_export(bridge_run, tmp_path / "fp8", tmp_path, "--tp", "2", "--ep", "2")
    _assert_equals_reference(back, reference)


def _quantize_per_tensor(src, dst, per_channel: bool):
    """compressed-tensors' float-quantized layout: 'weight_scale' [1] (tensor)
    or [rows, 1] (channel), 'input_scale' [1]."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    out, reference = {}, {}
    for name, w in tensors.items():
        if name.endswith("_proj.weight") and w.dim() == 2:
            amax = w.float().abs().amax(dim=1, keepdim=True) if per_channel else w.float().abs().max().reshape(1)
            scale = amax.clamp(min=1e-12) / 448.0
            q = (w.float() / scale).to(torch.float8_e4m3fn)
            base = name[: -len("weight")]
            out[name], out[base + "weight_scale"] = q, scale
            out[base + "input_scale"] = torch.rand(1) + 0.5
            reference[name] = (q.float() * scale).to(torch.bfloat16)
        else:
            out[name] = reference[name] = w
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "compressed-tensors", "format": "float-quantized",
                                  "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
                                      "num_bits": 8, "type": "float", "strategy": "channel" if per_channel else "tensor"}}},
                                  "ignore": ["lm_head"]}
    (dst / "config.json").write_text(json.dumps(cfg))
    return reference


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
def test_fp8_scaled_source_imports_dequantized_and_exports_the_dequantized_model(bridge_run, tiny_checkpoints,
                                                                                tmp_path, per_channel):
    reference = _quantize_per_tensor(tiny_checkpoints("llama3.1-8b").path, tmp_path / "fp8", per_channel)
    scales = [k for k in _tensor_names(tmp_path / "fp8") if k.endswith("_scale")]
    assert len(scales) == 2 * 14  # weight and input scales of q, k, v, o, gate, up, down, 2 layers
    back = _import_export(bridge_run, tmp_path / "fp8", tmp_path, "--tp", "2", "--pp", "2")
    _assert_equals_reference(back, reference)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "quantization_config" not in cfg


def test_fp8_block_source_imports_dequantized_and_exports_the_dequantized_model(bridge_run, tiny_checkpoints,
                                                                               tmp_path):
    import torch
    from safetensors import safe_open

    reference = _quantize(tiny_checkpoints("deepseek-v3").path, tmp_path / "fp8")
    r = _run(bridge_run, "import", "--hf", str(tmp_path / "fp8"), "--out", str(tmp_path / "mg"), "--tp", "2")
    assert r.returncode == 0, r.stderr
    r = _run(bridge_run, "export", "--megatron", str(tmp_path / "mg"), "--out", str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        back = {k: f.get_tensor(k) for k in f.keys()}
    assert sorted(back) == sorted(reference), "scales must be gone, every weight back"
    quantized = 0
    for name, want in reference.items():
        got = back[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert torch.equal(got.view(-1).view(torch.uint8), want.contiguous().view(-1).view(torch.uint8)), name
        quantized += name.endswith(QUANTIZED["deepseek-v3"]) and want.dtype == torch.bfloat16
    assert quantized > 20
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "quantization_config" not in cfg


def test_fp8_weight_without_its_scale_is_an_error(bridge_run, tiny_checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file

    _quantize(tiny_checkpoints("deepseek-v3").path, tmp_path / "fp8")
    f = tmp_path / "fp8" / "model.safetensors"
    t = load_file(str(f))
    t.pop("model.layers.0.self_attn.o_proj.weight_scale_inv")
    save_file(t, str(f), metadata={"format": "pt"})
    r = _run(bridge_run, "import", "--hf", str(tmp_path / "fp8"), "--out", str(tmp_path / "mg"))
    assert r.returncode == 1
    assert "has no scale in the checkpoint" in r.stderr and "o_proj" in r.stderr
    assert not (tmp_path / "mg").exists()
