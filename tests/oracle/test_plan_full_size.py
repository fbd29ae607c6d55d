"""`bridge-run plan` from a config alone (no weights) on full-size models:
DeepSeek-V3 (671B + MTP) at TP=8 PP=8 EP=32 prints every tensor, the bytes
each rank holds and the largest rank, and checks coverage, in about a second.
Uses the published config.json when ../shared (beside the checkout) is there, else the
transformers DeepseekV3Config defaults, which are DeepSeek-V3's sizes."""
from __future__ import annotations

import json
import re
import subprocess

import tiny_models


def _deepseek_v3_config(tmp_path):
    fam = tiny_models.FAMILY_BY_ID["deepseek-v3"]
    cfg = tiny_models.published_config(fam)
    if cfg is None:
        import transformers

        # The class defaults are DeepSeek-V3's sizes; its router settings
        # come from the published model (the family's traits).
        cfg = transformers.DeepseekV3Config().to_dict()
        cfg.update(fam.traits)
        cfg["architectures"] = ["DeepseekV3ForCausalLM"]
    d = tmp_path / "deepseek-v3"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return d, cfg


def test_kimi_k2_and_deepseek_v2_lite_plan_from_their_configs(bridge_run, tmp_path):
    """Published configs only (their model types need remote code in transformers)."""
    import pytest

    for published, model_type, low, high in [("moonshotai__Kimi-K2-Instruct.json", "kimi_k2", 1.0e12, 1.05e12),
                                             ("deepseek-ai__DeepSeek-V2-Lite.json", "deepseek_v2", 1.5e10, 1.6e10)]:
        path = tiny_models.SHARED_HF_CONFIGS / published
        if not path.is_file():
            pytest.skip(f"no {path}")
        cfg = json.loads(path.read_text())
        assert cfg["model_type"] == model_type
        r = subprocess.run([str(bridge_run.path), "plan", "--hf", str(path), "--tp", "8", "--ep", "8"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("mapping deepseek_v3")
        params = int(re.search(r"(\d+) parameters", r.stdout).group(1))
        assert low < params < high, (published, params)


def test_deepseek_v3_plan_at_tp8_pp8_ep32(bridge_run, tmp_path):
    d, cfg = _deepseek_v3_config(tmp_path)
    layout = ["--tp", "8", "--pp", "8", "--ep", "32"]
    r = subprocess.run([str(bridge_run.path), "plan", "--hf", str(d), *layout], capture_output=True, text=True)
    # 61 layers do not split into 8 stages: the error suggests stage sizes.
    assert r.returncode == 1 and "--first-stage-layers" in r.stderr
    m = re.search(r"--first-stage-layers (\d+) --last-stage-layers (\d+)", r.stderr)
    layout += ["--first-stage-layers", m.group(1), "--last-stage-layers", m.group(2)]
    r = subprocess.run([str(bridge_run.path), "plan", "--hf", str(d), *layout], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "every tensor the schema requires is produced once" in r.stdout
    ranks = re.findall(r"^  pp (\d+)  tp (\d+)  ep (\d+)   ", r.stdout, re.M)
    assert len(ranks) == 8 * 8 * 32
    assert re.search(r"largest rank: [0-9.]+ GiB", r.stdout)
    params = int(re.search(r"(\d+) parameters", r.stdout).group(1))
    # 671B in the decoder plus one MTP layer (about 11.5B without its
    # shared embedding and head).
    assert 6.7e11 < params < 6.9e11, params
