"""Multi-token-prediction layers (DeepSeek-V3, GLM-4.5): transformers builds
none, so the test appends one to a tiny DeepSeek checkpoint the way DeepSeek
publishes it (HF layer num_layers, with enorm/hnorm/eh_proj/shared_head and
copies of the embedding and head), imports and exports it, and requires every
tensor back bit for bit; a copy that differs from the model's is an error.
For GLM-4.5-Air (no multi-latent attention, so megatron-core builds it on
CPU) the MTP keys written are exactly those megatron-core's own MTP block
asks of a checkpoint."""
from __future__ import annotations

import json
import shutil
import subprocess


def _with_mtp(src, dst, differing_copy=False):
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    t = load_file(str(dst / "model.safetensors"))
    cfg = json.loads((dst / "config.json").read_text())
    n, h = cfg["num_hidden_layers"], cfg["hidden_size"]
    last = f"model.layers.{n - 1}."
    for k, v in list(t.items()):
        if k.startswith(last):
            t[k.replace(last, f"model.layers.{n}.")] = v.clone()
    torch.manual_seed(1)
    t[f"model.layers.{n}.enorm.weight"] = torch.rand(h)
    t[f"model.layers.{n}.hnorm.weight"] = torch.rand(h)
    t[f"model.layers.{n}.eh_proj.weight"] = torch.randn(h, 2 * h)
    t[f"model.layers.{n}.shared_head.norm.weight"] = torch.rand(h)
    t[f"model.layers.{n}.embed_tokens.weight"] = t["model.embed_tokens.weight"].clone()
    t[f"model.layers.{n}.shared_head.head.weight"] = t["lm_head.weight"].clone()
    if differing_copy:
        t[f"model.layers.{n}.shared_head.head.weight"][0, 0] += 1
    save_file(t, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg["num_nextn_predict_layers"] = 1
    (dst / "config.json").write_text(json.dumps(cfg))


def _run(bridge_run, *args):
    return subprocess.run([str(bridge_run.path), *args, "--quiet"], capture_output=True, text=True)


def test_mtp_layer_round_trip_is_bit_exact(bridge_run, tiny_checkpoints, tmp_path):
    _with_mtp(tiny_checkpoints("deepseek-v3").path, tmp_path / "hf")
    assert _run(bridge_run, "import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "mg")).returncode == 0
    md = (tmp_path / "mg" / "iter_0000000" / "bridge.json").read_text()
    assert '"mtp_num_layers": 1' in md
    r = _run(bridge_run, "export", "--megatron", str(tmp_path / "mg"), "--out", str(tmp_path / "back"))
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["python3", "scripts/compare_checkpoints.py", str(tmp_path / "hf"), str(tmp_path / "back")],
                       capture_output=True, text=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
    assert r.returncode == 0, r.stdout


def test_mtp_copy_differing_from_the_model_is_an_error(bridge_run, tiny_checkpoints, tmp_path):
    _with_mtp(tiny_checkpoints("deepseek-v3").path, tmp_path / "hf", differing_copy=True)
    r = _run(bridge_run, "import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "mg"))
    assert r.returncode == 1 and "shared_head.head.weight' differs from 'lm_head.weight'" in r.stderr


def test_mtp_keys_are_what_megatron_core_requests(bridge_run, tiny_checkpoints, tmp_path):
    """Megatron-Core keeps the MTP inner layer's on-disk name
    'transformer_layer' (newer versions rename the module to mtp_model_layer
    and map it back when saving and loading)."""
    import pytest

    pytest.importorskip("megatron.core")
    import megatron_oracle
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    _with_mtp(tiny_checkpoints("glm4.5-air").path, tmp_path / "hf")
    r = _run(bridge_run, "import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "mg"), "--local-spec")
    assert r.returncode == 0, r.stderr
    md = FileSystemReader(str(tmp_path / "mg" / "iter_0000000")).read_metadata().state_dict_metadata
    ours = {k: tuple(v.size) for k, v in md.items()
            if k.startswith("mtp.") and not isinstance(v, BytesStorageMetadata)}
    meg = json.loads((tmp_path / "mg" / "iter_0000000" / "bridge.json").read_text())["megatron_config"]
    assert meg["mtp_num_layers"] == 1
    model = megatron_oracle.build_gpt_model(meg, with_mtp=True)
    sharded = model.sharded_state_dict()
    apply_factories(sharded)
    wanted = {v.key: tuple(v.global_shape) for v in nested_values(sharded)
              if isinstance(v, ShardedTensor) and v.key.startswith("mtp.")}
    assert wanted, "megatron-core built no MTP block"
    assert ours == wanted, f"missing: {sorted(set(wanted) - set(ours))}\nextra: {sorted(set(ours) - set(wanted))}"
