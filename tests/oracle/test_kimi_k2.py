"""Kimi-K2: the DeepSeek-V3 architecture under model_type "kimi_k2", whose
transformers code is remote (not in the library). The tiny model is built by
transformers' own DeepSeek-V3 classes from Kimi-K2's published config, shrunk,
and saved with the published model_type and architectures, as Moonshot's
checkpoint declares them. The deepseek_v3 mapping must pick it up by
model_type, carry Kimi's own numbers (routed scaling 2.827, rope base 50000,
YaRN with beta_fast 1) into the Megatron config, round-trip
it bit for bit at TP 2 / EP 2, and write model_type "kimi_k2" back."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import tiny_models

PUBLISHED = "moonshotai__Kimi-K2-Instruct.json"


def _tiny_kimi(out: Path) -> dict:
    import torch
    import transformers

    pub_path = tiny_models.SHARED_HF_CONFIGS / PUBLISHED
    if not pub_path.is_file():
        pytest.skip(f"no published config {pub_path}")
    pub = json.loads(pub_path.read_text())
    d = tiny_models._shrink(pub)
    for key in ("model_type", "transformers_version", "auto_map", "architectures"):
        d.pop(key, None)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model("deepseek_v3", **d))
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.05)
    model.save_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = pub["model_type"], pub["architectures"]
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return pub


def _run(bridge_run, *args):
    return subprocess.run([str(bridge_run.path), *args, "--quiet"], capture_output=True, text=True)


def test_kimi_k2_converts_as_deepseek_v3_with_its_own_numbers(bridge_run, tmp_path):
    pub = _tiny_kimi(tmp_path / "hf")
    out = bridge_run.config(str(tmp_path / "hf"))
    assert out["mapping"] == "deepseek_v3"
    meg = out["megatron"]
    assert meg["moe_router_topk_scaling_factor"] == pub["routed_scaling_factor"] == 2.827
    assert meg["rotary_base"] == pub["rope_theta"] == 50000.0
    assert meg["rotary_scaling_factor"] == pub["rope_scaling"]["factor"] == 32.0
    assert meg["beta_fast"] == pub["rope_scaling"]["beta_fast"] == 1.0
    tiny = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert meg["moe_router_num_groups"] == tiny["n_group"]  # the tiny model routes over 2 groups
    assert meg["num_moe_experts"] == tiny_models.TINY_EXPERTS
    assert meg["multi_latent_attention"] is True

    r = _run(bridge_run, "import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "mg"), "--tp", "2", "--ep", "2")
    assert r.returncode == 0, r.stderr
    r = _run(bridge_run, "export", "--megatron", str(tmp_path / "mg"), "--out", str(tmp_path / "back"))
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["python3", "scripts/compare_checkpoints.py", str(tmp_path / "hf"), str(tmp_path / "back")],
                       capture_output=True, text=True, cwd=str(Path(__file__).parents[2]))
    assert r.returncode == 0, r.stdout
    back = json.loads((tmp_path / "back" / "config.json").read_text())
    assert back["model_type"] == "kimi_k2" and back["architectures"] == ["DeepseekV3ForCausalLM"]
    assert back["routed_scaling_factor"] == 2.827
