"""`bridge-run inspect`: which mapping serves a checkpoint, and for a family no
mapping serves, the fields, tensor patterns and a draft .bridge file.

For every shipped family, inspect of its tiny checkpoint names the family's
mapping and finds every tensor read. With the mapping hidden
(`--ignore-mapping`, the testing switch), the draft of a dense GQA family
(Llama, Qwen2, Mistral) reads every tensor pattern with a shipped rule: it
compiles with bridgec and has no TODO line. A config of a family not shipped
(EXAONE 4), alone in a directory, gives its unknown fields without a crash.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import tiny_models

HF_CONFIGS = tiny_models.SHARED_HF_CONFIGS  # ../shared/hf-configs beside the checkout

# Dense GQA families whose mapping, hidden, the others' rules cover.
DENSE = ["llama3.1-8b", "qwen2.5-7b", "mistral-7b"]


def inspect(bridge_run, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(bridge_run.path), "inspect", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, f"bridge-run inspect {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
    return proc


def inspect_json(bridge_run, *args: str) -> dict:
    return json.loads(inspect(bridge_run, *args, "--json").stdout)


@pytest.fixture(scope="session")
def bridgec(bridge_run) -> Path:
    """bridgec of the same build: <build>/compiler/bridgec beside <build>/runtime/bridge-run."""
    path = bridge_run.path.parent.parent / "compiler" / "bridgec"
    if not path.is_file():
        pytest.skip(f"bridgec not found at {path}")
    return path


@pytest.mark.parametrize("family_id", tiny_models.family_ids(), ids=tiny_models.family_param_id)
def test_inspect_names_the_mapping(bridge_run, tiny_checkpoints, family_id):
    fam = tiny_models.FAMILY_BY_ID[family_id]
    ckpt = tiny_checkpoints(family_id)
    out = inspect_json(bridge_run, "--hf", str(ckpt.path))
    assert out["mapping"] == fam.mapping
    assert out["tensor_count"] == len(ckpt.tensors)
    cov = out["coverage"]
    assert cov["checked"] and cov["error"] is None, cov
    assert cov["unread"] == [] and cov["missing"] == [], cov
    assert cov["complete"]
    # The patterns account for every tensor.
    assert sum(p["count"] for p in out["patterns"]) == len(ckpt.tensors)
    # The text form says the same.
    text = inspect(bridge_run, "--hf", str(ckpt.path)).stdout
    assert f"mapping {fam.mapping} " in text and "every tensor is read" in text


def test_inspect_config_alone(bridge_run, tmp_path):
    fam = tiny_models.FAMILY_BY_ID["llama3.1-8b"]
    config, _ = tiny_models.tiny_config_dict(fam)
    d = tiny_models.write_config_dir(config, tmp_path / "cfg")
    out = inspect_json(bridge_run, "--hf", str(d))
    assert out["mapping"] == "llama"
    assert out["tensor_count"] == 0 and not out["coverage"]["checked"]


def test_inspect_lists_tensors_no_rule_reads(bridge_run, tiny_checkpoints, tmp_path):
    """An extra tensor in the index (names only, no shards needed): listed as unread."""
    ckpt = tiny_checkpoints("llama3.1-8b")
    d = tmp_path / "ckpt"
    d.mkdir()
    shutil.copy(ckpt.path / "config.json", d / "config.json")
    weight_map = {name: "model-00001-of-00001.safetensors" for name in ckpt.tensors}
    weight_map["model.layers.0.mlp.extra_gate.weight"] = "model-00001-of-00001.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    out = inspect_json(bridge_run, "--hf", str(d))
    assert out["tensors_from"] == "model.safetensors.index.json"
    assert out["coverage"]["unread"] == ["model.layers.0.mlp.extra_gate.weight"]
    assert not out["coverage"]["complete"]
    assert inspect(bridge_run, "--hf", str(d), check=False).returncode == 1


@pytest.mark.parametrize("family_id", DENSE)
def test_draft_of_hidden_dense_family_compiles(bridge_run, bridgec, tiny_checkpoints, tmp_path, family_id):
    fam = tiny_models.FAMILY_BY_ID[family_id]
    ckpt = tiny_checkpoints(family_id)
    draft = tmp_path / f"{fam.model_type}.bridge"
    out = inspect_json(bridge_run, "--hf", str(ckpt.path), "--ignore-mapping", fam.mapping, "--draft", str(draft))
    assert out["mapping"] is None
    assert out["closest"]["mapping"] != fam.mapping
    # Layer indices were found: the patterns capture {i}, two layers each.
    layer = [p for p in out["patterns"] if "{i}" in p["pattern"]]
    assert layer and all(p["indices"]["i"] == [0, 1] and p["count"] == 2 for p in layer)
    assert all(p["matches"] for p in out["patterns"]), [p["pattern"] for p in out["patterns"] if not p["matches"]]
    assert out["draft"]["todo"] == 0
    text = draft.read_text()
    assert "# TODO:" not in text
    assert f'match model_type "{fam.model_type}";' in text
    proc = subprocess.run([str(bridgec), str(draft), "-o", str(tmp_path / "draft.inc")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"bridgec rejected the draft:\n{proc.stderr}\n--- draft ---\n{text}"


def test_unknown_tensor_pattern_is_a_todo(bridge_run, bridgec, tiny_checkpoints, tmp_path):
    """A tensor no shipped rule reads becomes a TODO line with its shape and dtype."""
    ckpt = tiny_checkpoints("llama3.1-8b")
    d = tmp_path / "ckpt"
    d.mkdir()
    config = json.loads((ckpt.path / "config.json").read_text())
    config["model_type"] = "llamaish"
    config["architectures"] = ["LlamaishForCausalLM"]
    (d / "config.json").write_text(json.dumps(config))
    weight_map = {name: "model.safetensors" for name in ckpt.tensors}
    for i in range(2):
        for e in range(3):
            weight_map[f"model.layers.{i}.mlp.blocks.{e}.w.weight"] = "model.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    draft = tmp_path / "llamaish.bridge"
    out = inspect_json(bridge_run, "--hf", str(d), "--draft", str(draft))
    assert out["mapping"] is None
    pats = {p["pattern"]: p for p in out["patterns"]}
    new = pats["model.layers.{i}.mlp.blocks.{e}.w.weight"]
    assert new["count"] == 6 and new["indices"] == {"i": [0, 1], "e": [0, 1, 2]} and new["matches"] == []
    text = draft.read_text()
    assert "# TODO: model.layers.{i}.mlp.blocks.{e}.w.weight" in text
    assert out["draft"]["todo"] == 1


def test_unknown_family_config_alone(bridge_run, tmp_path):
    src = HF_CONFIGS / "LGAI-EXAONE__EXAONE-4.0-32B.json"
    if not src.is_file():
        pytest.skip(f"{src} is not on this machine")
    d = tmp_path / "exaone"
    d.mkdir()
    shutil.copy(src, d / "config.json")
    # EXAONE 4 is shipped now: inspect is told to leave its mapping out.
    out = inspect_json(bridge_run, "--hf", str(d), "--ignore-mapping", "exaone4", "--draft",
                       str(tmp_path / "exaone4.bridge"))
    assert out["mapping"] is None and out["model_type"] == "exaone4"
    assert out["tensor_count"] == 0 and out["patterns"] == []
    assert isinstance(out["unread_fields"], dict)
    # Fields the closest mapping leaves unread: the layer-type pattern.
    closest = out["closest"]
    assert closest is not None
    unknown = set(out["unread_fields"]) | set(closest["fields_not_read"])
    assert {"layer_types", "sliding_window_pattern"} & unknown, out
    text = inspect(bridge_run, "--hf", str(d), "--ignore-mapping", "exaone4").stdout
    assert "no shipped mapping serves this config" in text
    assert (tmp_path / "exaone4.bridge").read_text().startswith("# Draft mapping")
