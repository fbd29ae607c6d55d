"""An interrupted import is finished by `--resume`, and a full disk is an error.

The oracle for a resumed import is the same import run once without
interruption: the resumed checkpoint must hold the same tensors and chunks, its
manifest must check, and its export must give back the HF source bit for bit.
The process is killed (SIGKILL, nothing caught) or signalled at a chosen tensor
through BRIDGE_FAULT_INJECT; a full disk is simulated by
BRIDGE_FAULT_DISK_FULL_AFTER (writes past that byte of a file fail with ENOSPC).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from test_multiprocess import _assert_export_is_source, _assert_same_checkpoint, _srun_like


def _run(bridge_run, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(bridge_run.path), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def _killed_at(bridge_run, ckpt, out: Path, item: int, layout: list[str]) -> Path:
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(out), *layout, "--quiet",
             env={"BRIDGE_FAULT_INJECT": f"0:{item}:kill"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    [partial] = out.parent.glob(out.name + ".partial-*")
    assert (partial / "resume.json").exists() and not (partial / "latest_checkpointed_iteration.txt").exists()
    return partial


def _resumed_count(stdout: str) -> int:
    for line in stdout.splitlines():
        if line.startswith("resumed: "):
            return int(line.split()[1])
    return 0


def _assert_finished(bridge_run, mg: Path, ckpt, tmp_path: Path, layout: list[str]) -> None:
    assert not list(mg.parent.glob(mg.name + ".partial-*"))
    iter_dir = mg / "iter_0000000"
    assert not list(iter_dir.glob("*.journal")) and not (mg / "resume.json").exists()
    r = _run(bridge_run, "verify", str(mg))
    assert r.returncode == 0 and "all match" in r.stdout, r.stderr
    one = tmp_path / "one"
    assert _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(one), *layout, "--quiet").returncode == 0
    _assert_same_checkpoint(mg, one)
    _assert_export_is_source(bridge_run, mg, ckpt, tmp_path / "hf")


@pytest.mark.parametrize("item", [0, 3, 9])
def test_killed_import_is_finished_by_resume(bridge_run, tiny_checkpoints, tmp_path, item):
    ckpt = tiny_checkpoints("qwen3-30b-a3b")
    layout = ["--tp", "2", "--ep", "2"]
    mg = tmp_path / "mg"
    _killed_at(bridge_run, ckpt, mg, item, layout)
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(mg), *layout, "--resume", "--quiet")
    assert r.returncode == 0, r.stderr
    # The writers lag the converters: what was on disk when the kill came is
    # kept, never more than the tensors handed over before it.
    assert 0 <= _resumed_count(r.stdout) <= item
    _assert_finished(bridge_run, mg, ckpt, tmp_path, layout)


def test_resume_keeps_what_was_written_and_redoes_a_damaged_record(bridge_run, tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints("llama3.2-1b")
    layout = ["--tp", "2", "--writers", "1"]
    mg = tmp_path / "mg"
    # Held at its tenth tensor until SIGTERM: the first nine are on disk.
    proc = subprocess.Popen([str(bridge_run.path), "import", "--hf", str(ckpt.path), "--out", str(mg), *layout,
                             "--quiet"], env={**os.environ, "BRIDGE_FAULT_INJECT": "0:9:pause"}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    import time
    for _ in range(600):
        journals = list(tmp_path.glob("mg.partial-*/iter_0000000/*.journal"))
        if journals and sum(1 for _ in journals[0].open()) >= 9:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "the same command with --resume finishes it" in err
    [partial] = tmp_path.glob("mg.partial-*")
    lines = [json.loads(l) for l in (partial / "iter_0000000" / "__0_0.distcp.journal").read_text().splitlines()]
    chunks = [l for l in lines if not l.get("object")]
    assert len(chunks) >= 9
    # A copy resumed as it is counts the tensors kept; in the original, a
    # flipped byte amid the largest chunk's data makes one fewer.
    control = tmp_path / "control"
    shutil.copytree(partial, control / partial.name)
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(control / "mg"), *layout, "--resume",
             "--quiet")
    assert r.returncode == 0, r.stderr
    whole = _resumed_count(r.stdout)
    assert whole >= 5, r.stdout
    big = max(chunks, key=lambda c: c["length"])
    data = partial / "iter_0000000" / big["file"]
    raw = bytearray(data.read_bytes())
    raw[big["offset"] + big["length"] // 2] ^= 0x10
    data.write_bytes(bytes(raw))
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(mg), *layout, "--resume", "--quiet")
    assert r.returncode == 0, r.stderr
    assert _resumed_count(r.stdout) == whole - 1, r.stdout
    _assert_finished(bridge_run, mg, ckpt, tmp_path, layout)


def test_resume_by_several_processes(bridge_run, tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints("qwen2.5-7b")
    mg = tmp_path / "mg"
    args = ["import", "--hf", str(ckpt.path), "--out", str(mg), "--tp", "2"]
    results, _ = _srun_like(bridge_run, 2, *args, env={"BRIDGE_FAULT_INJECT": "0:4:kill", "BRIDGE_DIST_TIMEOUT": "3"})
    assert results[0][0] == -signal.SIGKILL
    assert len(list(tmp_path.glob("mg.partial-*"))) == 1
    results, _ = _srun_like(bridge_run, 2, *args, "--resume")
    assert [rc for rc, _ in results] == [0, 0], results
    _assert_finished(bridge_run, mg, ckpt, tmp_path, ["--tp", "2"])


def test_resume_refuses_another_import(bridge_run, tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints("llama3.2-1b")
    mg = tmp_path / "mg"
    partial = _killed_at(bridge_run, ckpt, mg, 3, ["--tp", "2"])
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(mg), "--tp", "1", "--resume", "--quiet")
    assert r.returncode == 1
    assert f"cannot resume from {partial}: it is another import (its layout differs" in r.stderr, r.stderr
    assert partial.exists() and not mg.exists()
    other = tiny_checkpoints("qwen2.5-7b")
    r = _run(bridge_run, "import", "--hf", str(other.path), "--out", str(mg), "--tp", "2", "--resume", "--quiet")
    assert r.returncode == 1 and "it is another import (its mapping differs" in r.stderr, r.stderr
    # Without --resume the import starts over, and says what it leaves.
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(mg), "--tp", "2")
    assert r.returncode == 0, r.stderr
    assert f"{partial} holds an interrupted import; run with --resume to finish it instead" in r.stderr


def test_resume_with_nothing_to_resume_starts(bridge_run, tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints("llama3.2-1b")
    mg = tmp_path / "mg"
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(mg), "--resume")
    assert r.returncode == 0, r.stderr
    assert "no interrupted import of" in r.stderr and (mg / "latest_checkpointed_iteration.txt").exists()
    r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(tmp_path / "lg"), "--format", "torch",
             "--resume")
    assert r.returncode == 1 and "--resume finishes torch_dist output" in r.stderr


@pytest.mark.parametrize("command", ["import", "import-legacy", "export"])
def test_full_disk_is_an_error_that_leaves_nothing(bridge_run, tiny_checkpoints, tmp_path, command):
    ckpt = tiny_checkpoints("llama3.2-1b")
    full = {"BRIDGE_FAULT_DISK_FULL_AFTER": "20000"}
    if command == "export":
        mg = tmp_path / "mg"
        assert _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(mg), "--quiet").returncode == 0
        out = tmp_path / "hf"
        r = _run(bridge_run, "export", "--megatron", str(mg), "--out", str(out), "--quiet", env=full)
    else:
        out = tmp_path / "out"
        fmt = ["--format", "torch"] if command == "import-legacy" else []
        r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(out), *fmt, "--quiet", env=full)
    assert r.returncode == 1
    assert "failed: No space left on device" in r.stderr and str(out) + ".partial-" in r.stderr, r.stderr
    assert not out.exists() and not list(tmp_path.glob(out.name + ".partial-*"))


@pytest.mark.parametrize("kind", ["hf", "legacy"])
def test_verify_checks_exports_and_legacy_checkpoints(bridge_run, tiny_checkpoints, tmp_path, kind):
    ckpt = tiny_checkpoints("llama3.2-1b")
    if kind == "hf":
        mg = tmp_path / "mg"
        assert _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(mg), "--quiet").returncode == 0
        out = tmp_path / "hf"
        assert _run(bridge_run, "export", "--megatron", str(mg), "--out", str(out), "--quiet").returncode == 0
        victim = sorted(out.glob("*.safetensors"))[0]
    else:
        out = tmp_path / "lg"
        r = _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(out), "--tp", "2", "--format", "torch",
                 "--quiet")
        assert r.returncode == 0, r.stderr
        victim = out / "iter_0000000" / "mp_rank_01" / "model_optim_rng.pt"
    r = _run(bridge_run, "verify", str(out))
    assert r.returncode == 0 and "all match" in r.stdout, r.stderr
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    r = _run(bridge_run, "verify", str(out))
    assert r.returncode == 1 and str(victim) in r.stderr, r.stderr


def test_killed_reshard_is_finished_by_resume(bridge_run, tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints("qwen3-30b-a3b")
    src = tmp_path / "src"
    assert _run(bridge_run, "import", "--hf", str(ckpt.path), "--out", str(src), "--quiet").returncode == 0
    out = tmp_path / "mg"
    layout = ["--tp", "2", "--ep", "2"]
    r = _run(bridge_run, "reshard", "--megatron", str(src), "--out", str(out), *layout, "--quiet",
             env={"BRIDGE_FAULT_INJECT": "0:6:kill"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    r = _run(bridge_run, "reshard", "--megatron", str(src), "--out", str(out), *layout, "--resume", "--quiet")
    assert r.returncode == 0, r.stderr
    _assert_finished(bridge_run, out, ckpt, tmp_path, layout)
