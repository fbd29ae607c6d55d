"""MXFP4 sources (gpt-oss as OpenAI releases it): the tiny gpt-oss model made
by transformers has its experts quantized here to the OCP MX layout the
release uses (`*_blocks` [E, out, in/32, 16] uint8, two e2m1 values a byte,
low nibble first; `*_scales` [E, out, in/32] e8m0), in [out, in] orientation
where transformers' own save is [E, in, out] bf16.

The oracle for the dequantized weights is transformers' own
`convert_moe_packed_tensors`. Import must give the very torch_dist bytes that
importing that dequantized bf16 checkpoint gives; export writes the bf16
layout, equal to the reference bit for bit, without blocks, scales or
quantization_config. A checkpoint that holds neither layout completely, or
both, is an error naming the tensors."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

FAMILY = "gpt-oss-20b"
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def _quantize_mx(w_out_in):
    """[E, out, in] float -> (blocks [E, out, in/32, 16] u8, scales [E, out, in/32] u8),
    round to nearest e2m1 after a power-of-two scale per 32 values."""
    import torch

    e, o, i = w_out_in.shape
    x = w_out_in.float().reshape(e, o, i // 32, 32)
    amax = x.abs().amax(-1).clamp(min=2.0 ** -100)
    exp = torch.ceil(torch.log2(amax / 6.0))
    q = x / torch.exp2(exp).unsqueeze(-1)
    lut = torch.tensor(E2M1)
    codes = (q.unsqueeze(-1) - lut).abs().argmin(-1).to(torch.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    scales = (exp + 127).to(torch.uint8)
    return blocks.contiguous(), scales.contiguous()


def _make_mxfp4(src, dst):
    """Writes the MXFP4 checkpoint to dst and the dequantized bf16 reference
    checkpoint (transformers' layout) to dst.parent / 'reference'; returns the
    reference tensors."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    out, reference = {}, {}
    quantized = 0
    for name, w in tensors.items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            blocks, scales = _quantize_mx(w.transpose(1, 2))
            if quantized == 0:
                # The edges of e8m0: 2^-127 (subnormal), 2^-126, 2^127.
                scales[0, 0, 0], scales[0, 1, 0], scales[1, 0, 0] = 0, 1, 254
            quantized += 1
            out[name + "_blocks"], out[name + "_scales"] = blocks, scales
            reference[name] = convert_moe_packed_tensors(blocks, scales, dtype=torch.bfloat16)
            assert reference[name].shape == w.shape
        else:
            out[name] = reference[name] = w
    assert quantized == 4  # 2 layers x (gate_up, down)
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (dst / "config.json").write_text(json.dumps(cfg))
    ref_dir = dst.parent / "reference"
    shutil.copytree(src, ref_dir)
    save_file(reference, str(ref_dir / "model.safetensors"), metadata={"format": "pt"})
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


def _distcp_bytes(ckpt):
    it = ckpt / "iter_0000000"
    return {p.name: p.read_bytes() for p in sorted(it.glob("*.distcp"))} | {".metadata": (it / ".metadata").read_bytes()}


@pytest.mark.parametrize("layout", [("--tp", "2", "--ep", "2"), ("--ep", "4", "--etp", "1")], ids=["tp2-ep2", "ep4"])
def test_mxfp4_source_imports_as_its_dequantized_reference_and_exports_bf16(bridge_run, tiny_checkpoints, tmp_path,
                                                                           layout):
    import torch
    from safetensors import safe_open

    reference = _make_mxfp4(tiny_checkpoints(FAMILY).path, tmp_path / "mxfp4")
    r = _run(bridge_run, "import", "--hf", str(tmp_path / "mxfp4"), "--out", str(tmp_path / "mg"), *layout)
    assert r.returncode == 0, r.stderr
    r = _run(bridge_run, "import", "--hf", str(tmp_path / "reference"), "--out", str(tmp_path / "mg-ref"), *layout)
    assert r.returncode == 0, r.stderr
    got, want = _distcp_bytes(tmp_path / "mg"), _distcp_bytes(tmp_path / "mg-ref")
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], f"{name}: MXFP4 import differs from the dequantized reference's import"

    r = _run(bridge_run, "export", "--megatron", str(tmp_path / "mg"), "--out", str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        back = {k: f.get_tensor(k) for k in f.keys()}
    assert sorted(back) == sorted(reference), "blocks and scales must be gone, the bf16 experts back"
    for name, want_t in reference.items():
        got_t = back[name]
        assert got_t.dtype == want_t.dtype and got_t.shape == want_t.shape, name
        assert torch.equal(got_t.contiguous().view(-1).view(torch.uint8),
                           want_t.contiguous().view(-1).view(torch.uint8)), name
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "quantization_config" not in cfg


def test_mxfp4_source_missing_its_scales_names_both_layouts(bridge_run, tiny_checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file

    _make_mxfp4(tiny_checkpoints(FAMILY).path, tmp_path / "mxfp4")
    f = tmp_path / "mxfp4" / "model.safetensors"
    t = load_file(str(f))
    t.pop("model.layers.1.mlp.experts.down_proj_scales")
    save_file(t, str(f), metadata={"format": "pt"})
    r = _run(bridge_run, "import", "--hf", str(tmp_path / "mxfp4"), "--out", str(tmp_path / "mg"))
    assert r.returncode == 1
    # Layer 1's down_proj has neither layout complete: the first is reported
    # missing, with the other named; the lone blocks are read by no rule.
    assert "model.layers.1.mlp.experts.down_proj  (for" in r.stderr, r.stderr
    assert "or instead dequant_mxfp4(expert(model.layers.1.mlp.experts.down_proj_blocks" in r.stderr, r.stderr
    assert "no rule reads or ignores" in r.stderr and "model.layers.1.mlp.experts.down_proj_blocks\n" in r.stderr
    assert not (tmp_path / "mg").exists()


def test_checkpoint_holding_both_layouts_is_an_error(bridge_run, tiny_checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file

    _make_mxfp4(tiny_checkpoints(FAMILY).path, tmp_path / "mxfp4")
    bf16 = load_file(str(tmp_path / "reference" / "model.safetensors"))
    f = tmp_path / "mxfp4" / "model.safetensors"
    t = load_file(str(f))
    t["model.layers.0.mlp.experts.gate_up_proj"] = bf16["model.layers.0.mlp.experts.gate_up_proj"]
    save_file(t, str(f), metadata={"format": "pt"})
    r = _run(bridge_run, "import", "--hf", str(tmp_path / "mxfp4"), "--out", str(tmp_path / "mg"))
    assert r.returncode == 1
    # The bf16 layout is preferred; the quantized copy is then read by nothing.
    assert "model.layers.0.mlp.experts.gate_up_proj_blocks" in r.stderr
    assert "model.layers.0.mlp.experts.gate_up_proj_scales" in r.stderr
    assert not (tmp_path / "mg").exists()
