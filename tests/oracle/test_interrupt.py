"""An interrupted conversion leaves nothing that looks complete.

SIGINT or SIGTERM: the conversion stops at its next tensor and exits 128 + the
signal. A torch_dist import keeps its partial directory (never complete-looking)
for --resume (test_resume.py); a legacy import and an export remove theirs.
SIGKILL cannot be caught: the partial directory stays, without the tracker file,
and nothing appears at the output path. The process is held at its second tensor by BRIDGE_FAULT_INJECT=0:1:pause
(a wait of up to a minute that a signal ends), so the signal lands mid-write.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest


def _start(bridge_run, *args: str) -> subprocess.Popen:
    env = dict(os.environ, BRIDGE_FAULT_INJECT="0:1:pause")
    return subprocess.Popen([str(bridge_run.path), *args, "--quiet"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_partial(out: Path, proc: subprocess.Popen) -> Path:
    for _ in range(600):
        found = list(out.parent.glob(out.name + ".partial-*"))
        if found and list(found[0].rglob("*.distcp")) + list(found[0].rglob("model_optim_rng.pt")):
            time.sleep(0.2)  # at the paused tensor
            return found[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the import never started writing")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("fmt", ["torch_dist", "torch"])
def test_caught_signal_stops_promptly_leaving_nothing_complete(bridge_run, tiny_checkpoints, tmp_path, sig, fmt):
    out = tmp_path / "mg"
    proc = _start(bridge_run, "import", "--hf", str(tiny_checkpoints("qwen3-30b-a3b").path), "--out", str(out),
                  "--format", fmt)
    partial = _wait_for_partial(out, proc)
    start = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig, err
    assert time.monotonic() - start < 10
    assert not out.exists()
    if fmt == "torch":
        assert f"interrupted by {sig.name}; nothing was written" in err
        assert not list(tmp_path.glob("mg.partial-*"))
    else:
        assert (f"interrupted by {sig.name}; nothing is at {out}: the part written stays in {partial}, and the same "
                "command with --resume finishes it") in err
        assert partial.exists() and not (partial / "latest_checkpointed_iteration.txt").exists()
        assert not (partial / "iter_0000000" / ".metadata").exists()


def test_sigkill_leaves_nothing_complete_looking(bridge_run, tiny_checkpoints, tmp_path):
    out = tmp_path / "mg"
    proc = _start(bridge_run, "import", "--hf", str(tiny_checkpoints("qwen3-30b-a3b").path), "--out", str(out))
    partial = _wait_for_partial(out, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert partial.exists() and not (partial / "latest_checkpointed_iteration.txt").exists()
    assert not (partial / "iter_0000000" / ".metadata").exists()


def test_interrupted_export_removes_its_partial_output(bridge_run, tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints("qwen3-30b-a3b")
    mg = tmp_path / "mg"
    r = subprocess.run([str(bridge_run.path), "import", "--hf", str(ckpt.path), "--out", str(mg), "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "hf"
    proc = subprocess.Popen([str(bridge_run.path), "export", "--megatron", str(mg), "--out", str(out), "--quiet"],
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.send_signal(signal.SIGTERM)  # whenever it lands: before, during or after the work
    _, err = proc.communicate(timeout=30)
    if proc.returncode == 0:  # finished before the signal was seen: complete
        assert (out / "config.json").exists()
    else:
        assert proc.returncode in (128 + signal.SIGTERM, -signal.SIGTERM), err
        assert not out.exists() and not list(tmp_path.glob("hf.partial-*"))
