"""`bridge-run plan` from a config alone (no weights) on full-size models:
DeepSeek-V3 (671B + MTP) at TP=8 PP=8 EP=32 prints every tensor, the bytes
each rank holds and the largest rank, and checks coverage, in about a second.
Uses the published config.json when /work/shared is there, else the
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

        cfg = transformers.DeepseekV3Config().to_dict()
        cfg["architectures"] = ["DeepseekV3ForCausalLM"]
    d = tmp_path / "deepseek-v3"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return d, cfg


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
