"""FP8 out: `bridge-run export --quantize fp8-block` writes every weight the
mapping reads through dequant_fp8_block as float8_e4m3fn with 128x128
'weight_scale_inv' block scales (DeepSeek-V3's layout). The quantized tensors
must equal the reference quantizer below bit for bit (per block: scale =
amax / 448, 1 for an all-zero block; weight = value / scale in fp32, rounded
to e4m3, as DeepSeek's weight_quant does); re-importing the quantized export
gives the dequantized reference, within FP8 rounding of the source; the
tensors not quantized come back bit for bit; config.json says how it was
quantized."""
from __future__ import annotations

import json
import subprocess

import pytest

BLOCK = 128


def _run(bridge_run, *args):
    return subprocess.run([str(bridge_run.path), *args, "--quiet"], capture_output=True, text=True, timeout=300)


def _tensors(d):
    from safetensors.torch import load_file

    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _reference(w):
    import torch

    w = w.float()
    m, n = w.shape
    bm, bn = -(-m // BLOCK), -(-n // BLOCK)
    padded = torch.zeros(bm * BLOCK, bn * BLOCK)
    padded[:m, :n] = w
    amax = padded.view(bm, BLOCK, bn, BLOCK).abs().amax(dim=(1, 3))
    scale = (amax / 448.0).masked_fill(amax == 0, 1.0)
    full = scale.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:m, :n]
    return (w / full).clamp(-448, 448).to(torch.float8_e4m3fn), scale, full


@pytest.fixture(scope="module")
def quantized(bridge_run, bridge_device, tiny_checkpoints, tmp_path_factory):
    # The quantizer runs where the export's ops run (--bridge-device; the
    # GPU host's gpu-quantized test runs it on cuda): same bits either way.
    ckpt = tiny_checkpoints("deepseek-v3")
    root = tmp_path_factory.mktemp("fp8-out")
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(root / "mg"))
    assert r.returncode == 0, r.stderr
    r = _run(bridge_run, "export", "--megatron", str(root / "mg"), "--out", str(root / "q"), "--quantize", "fp8-block",
             "--device", bridge_device)
    assert r.returncode == 0, r.stderr
    return ckpt, root


def test_quantized_export_equals_the_reference_quantizer(quantized):
    import torch

    ckpt, root = quantized
    src, out = _tensors(ckpt.path), _tensors(root / "q")
    fp8 = [k for k, v in out.items() if v.dtype == torch.float8_e4m3fn]
    # Every linear projection of the attention and the MLPs, never the router,
    # norms, embedding or output layer.
    assert fp8 and all("_proj" in k for k in fp8), fp8
    assert not any(".mlp.gate.weight" in k or "norm" in k or "embed" in k or "lm_head" in k for k in fp8)
    assert len(fp8) == sum(1 for k in src if "_proj" in k and src[k].dim() == 2)
    for k in fp8:
        want_q, want_s, _ = _reference(src[k])
        assert torch.equal(out[k].view(torch.uint8), want_q.view(torch.uint8)), k
        assert out[k + "_scale_inv"].dtype == torch.float32
        assert torch.equal(out[k + "_scale_inv"], want_s), k
    # The rest bit for bit, and nothing else.
    rest = set(out) - set(fp8) - {k + "_scale_inv" for k in fp8}
    assert rest == set(src) - set(fp8)
    for k in rest:
        assert torch.equal(out[k], src[k]), k
    cfg = json.loads((root / "q" / "config.json").read_text())
    assert cfg["quantization_config"] == {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                          "weight_block_size": [128, 128]}


def test_reimport_of_the_quantized_export_is_the_source_within_fp8_rounding(bridge_run, quantized):
    import torch

    ckpt, root = quantized
    r = _run(bridge_run, "import", "--hf", str(root / "q"), "--out", str(root / "mg2"))
    assert r.returncode == 0, r.stderr
    r = _run(bridge_run, "export", "--megatron", str(root / "mg2"), "--out", str(root / "deq"))
    assert r.returncode == 0, r.stderr
    src, deq = _tensors(ckpt.path), _tensors(root / "deq")
    assert set(deq) == set(src)
    for k, w in src.items():
        if "_proj" in k and w.dim() == 2:
            q, _, full = _reference(w)
            # The importer's dequantization of the reference, fp32 product then bf16.
            assert torch.equal(deq[k], (q.float() * full).to(torch.bfloat16)), k
            # e4m3 keeps 3 mantissa bits: within 1/16 of each value (and of the
            # block's smallest step for values near zero), bf16 rounding beside.
            err = (deq[k].float() - w.float()).abs()
            assert (err <= w.float().abs() / 16 + full / 2**9 + w.float().abs() / 128).all(), k
        else:
            assert torch.equal(deq[k], w), k


def test_quantize_needs_a_mapping_that_reads_fp8_blocks(bridge_run, tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints("llama3.1-8b")
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(tmp_path / "mg"))
    assert r.returncode == 0, r.stderr
    r = _run(bridge_run, "export", "--megatron", str(tmp_path / "mg"), "--out", str(tmp_path / "q"),
             "--quantize", "fp8-block")
    assert r.returncode == 1
    assert "mapping 'llama' reads no weight through dequant_fp8_block" in r.stderr
    assert not (tmp_path / "q").exists()
    r = _run(bridge_run, "export", "--megatron", str(tmp_path / "mg"), "--out", str(tmp_path / "q"),
             "--quantize", "int4")
    assert r.returncode == 2 and "--quantize takes fp8-block" in r.stderr
