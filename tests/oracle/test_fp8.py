"""FP8 sources: a tiny DeepSeek-V3 made by transformers is quantized here to
float8_e4m3fn with 128x128 block scales (weight_scale_inv, as DeepSeek
publishes), imported, and exported. The export must equal the dequantized
reference computed independently in this test (fp32 product, then bf16);
tensors that were not quantized come back bit for bit; scales are gone. A
weight without its scale is an error."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

BLOCK = 128
QUANTIZED = ("_proj.weight",)  # DeepSeek quantizes every linear projection


def _quantize(src, dst):
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    out, reference = {}, {}
    for name, w in tensors.items():
        if name.endswith(QUANTIZED) and w.dim() == 2 and ".mlp.gate." not in name:
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


def _run(bridge_run, *args):
    return subprocess.run([str(bridge_run.path), *args, "--quiet"], capture_output=True, text=True)


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
        quantized += name.endswith(QUANTIZED) and want.dtype == torch.bfloat16
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
