"""Several processes import one checkpoint together (torchrun, srun).

Each process converts a share of the plan into its own `.distcp` files and
process 0 writes the metadata. The oracle is the single-process import, itself
checked against megatron-core elsewhere: every tensor the processes write
must equal it, the metadata must describe the same chunks, the export must
give back the HF source bit for bit, and megatron-core must load the result
with the HF model's logits. Failures: a process that fails, or dies by
SIGKILL, stops every other one promptly with a non-zero exit, and leaves no
checkpoint that looks complete.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import megatron_oracle
import tiny_models

LOGITS_ATOL = 1e-5


def _needs_gpus(device: str, nproc: int) -> None:
    """Each process takes GPU LOCAL_RANK: a host with fewer GPUs cannot run the case."""
    if device.startswith("cuda"):
        import torch

        if torch.cuda.device_count() < nproc:
            pytest.skip(f"{nproc} processes on CUDA need {nproc} GPUs; this host has {torch.cuda.device_count()}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(bridge_run, nproc: int, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "--no-python",
           str(bridge_run.path), *args, "--quiet"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def _srun_like(bridge_run, nproc: int, *args: str, env: dict | None = None, timeout: float = 120):
    """The processes as srun starts them: SLURM_* only, rank 0 hosts the store.
    Returns [(returncode, stderr)] in rank order and the seconds they took."""
    port = _free_port()
    procs = []
    start = time.monotonic()
    for rank in range(nproc):
        e = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "MASTER_"))}
        e.update(SLURM_JOB_ID="4242", SLURM_STEP_ID="0", SLURM_STEP_NUM_TASKS=str(nproc), SLURM_PROCID=str(rank),
                 SLURM_LOCALID=str(rank), SLURM_LAUNCH_NODE_IPADDR="127.0.0.1", MASTER_PORT=str(port), **(env or {}))
        procs.append(subprocess.Popen([str(bridge_run.path), *args, "--quiet"], env=e, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        results.append((p.returncode, err))
    return results, time.monotonic() - start


def _load(mg: Path) -> tuple[dict, dict]:
    """Every tensor of a torch_dist checkpoint, and each key's chunks."""
    import torch
    import torch.distributed.checkpoint as dcp

    reader = dcp.FileSystemReader(str(mg / "iter_0000000"))
    md = reader.read_metadata()
    tensors, chunks = {}, {}
    for key, m in md.state_dict_metadata.items():
        if hasattr(m, "size"):
            tensors[key] = torch.empty(m.size, dtype=m.properties.dtype)
            chunks[key] = sorted((tuple(c.offsets), tuple(c.sizes)) for c in m.chunks)
        else:
            chunks[key] = "bytes"
    dcp.load(tensors, storage_reader=reader, no_dist=True)
    return tensors, chunks


def _assert_same_checkpoint(got: Path, want: Path) -> None:
    a, ca = _load(got)
    b, cb = _load(want)
    assert ca == cb
    for key in b:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].view(-1).view(dtype=__import__("torch").uint8).equal(
            b[key].view(-1).view(dtype=__import__("torch").uint8)), key


def _assert_export_is_source(bridge_run, mg: Path, ckpt, out: Path) -> None:
    from safetensors import safe_open
    import torch

    r = subprocess.run([str(bridge_run.path), "export", "--megatron", str(mg), "--out", str(out), "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for f in sorted(ckpt.path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as src, safe_open(str(out / f.name), "pt") as back:
            assert sorted(back.keys()) == sorted(src.keys())
            for k in src.keys():
                x, y = src.get_tensor(k), back.get_tensor(k)
                assert x.dtype == y.dtype and x.shape == y.shape, k
                assert x.view(-1).view(dtype=torch.uint8).equal(y.view(-1).view(dtype=torch.uint8)), k


def _single(bridge_run, ckpt, out: Path, layout: list[str]) -> Path:
    r = subprocess.run([str(bridge_run.path), "import", "--hf", str(ckpt.path), "--out", str(out), *layout,
                        "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


CASES = [
    ("llama3.2-1b", 2, ["--tp", "2"]),
    ("llama3.2-1b", 3, ["--pp", "2"]),
    ("qwen2.5-7b", 4, ["--tp", "2", "--pp", "2"]),
    ("qwen3-30b-a3b", 2, ["--ep", "2"]),
    ("mixtral-8x7b", 4, ["--tp", "2", "--ep", "2", "--etp", "1"]),
    ("deepseek-v3", 3, ["--tp", "2", "--ep", "2"]),
]


@pytest.mark.parametrize("family_id,nproc,layout", CASES,
                         ids=[f"{f}-{n}proc-{'-'.join(a[i] + a[i + 1] for i in range(0, len(a), 2)).replace('--', '')}"
                              for f, n, a in CASES])
def test_processes_write_what_one_process_writes(bridge_run, bridge_device, tiny_checkpoints, tmp_path, family_id,
                                                 nproc, layout):
    _needs_gpus(bridge_device, nproc)
    ckpt = tiny_checkpoints(family_id)
    mg = tmp_path / "mg"
    # With --bridge-device cuda each process takes GPU LOCAL_RANK.
    r = _torchrun(bridge_run, nproc, "import", "--hf", str(ckpt.path), "--out", str(mg), *layout,
                  "--device", bridge_device)
    assert r.returncode == 0, r.stderr
    # Every process wrote its own files.
    names = {p.name for p in (mg / "iter_0000000").glob("*.distcp")}
    assert {n.split("_")[2] for n in names} == {str(r) for r in range(nproc)}, names
    _assert_same_checkpoint(mg, _single(bridge_run, ckpt, tmp_path / "one", layout))
    _assert_export_is_source(bridge_run, mg, ckpt, tmp_path / "hf")
    assert not list(tmp_path.glob("*.partial-*"))


def test_processes_dequantize_fp8_as_one_process_does(bridge_run, bridge_device, tiny_checkpoints, tmp_path):
    """FP8 block-scaled sources: dequantization runs in every process (on GPU
    LOCAL_RANK with --bridge-device cuda) and gives the one-process CPU bytes."""
    from test_fp8 import _quantize

    _needs_gpus(bridge_device, 2)
    src = tmp_path / "fp8"
    _quantize(tiny_checkpoints("deepseek-v3").path, src)
    mg = tmp_path / "mg"
    r = _torchrun(bridge_run, 2, "import", "--hf", str(src), "--out", str(mg), "--tp", "2", "--device", bridge_device)
    assert r.returncode == 0, r.stderr
    one = tmp_path / "one"
    r = subprocess.run([str(bridge_run.path), "import", "--hf", str(src), "--out", str(one), "--tp", "2", "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    _assert_same_checkpoint(mg, one)


def test_megatron_core_loads_a_multiprocess_import(bridge_run, tiny_checkpoints, mcore, tmp_path):
    ckpt = tiny_checkpoints("qwen3-8b")
    mg = tmp_path / "mg"
    r = _torchrun(bridge_run, 3, "import", "--hf", str(ckpt.path), "--out", str(mg), "--tp", "2", "--local-spec")
    assert r.returncode == 0, r.stderr
    megatron_oracle.assert_logits_match(bridge_run, ckpt, mg, LOGITS_ATOL)


def test_srun_environment_is_understood(bridge_run, tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints("llama3.2-1b")
    mg = tmp_path / "mg"
    results, _ = _srun_like(bridge_run, 2, "import", "--hf", str(ckpt.path), "--out", str(mg), "--tp", "2")
    assert [rc for rc, _ in results] == [0, 0], results
    _assert_same_checkpoint(mg, _single(bridge_run, ckpt, tmp_path / "one", ["--tp", "2"]))


def test_a_failing_process_stops_every_process(bridge_run, tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints("llama3.2-1b")
    mg = tmp_path / "mg"
    results, seconds = _srun_like(bridge_run, 3, "import", "--hf", str(ckpt.path), "--out", str(mg),
                                  env={"BRIDGE_FAULT_INJECT": "1:0"})
    assert all(rc == 1 for rc, _ in results), results
    assert "fault injected by BRIDGE_FAULT_INJECT=1:0" in results[1][1]
    for rank in (0, 2):
        assert "stopping, because process 1 of 3 failed: error: fault injected" in results[rank][1], results[rank]
    assert seconds < 30
    assert not mg.exists() and not list(tmp_path.glob("mg.partial-*"))


def test_a_killed_process_stops_every_process(bridge_run, tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints("llama3.2-1b")
    mg = tmp_path / "mg"
    results, seconds = _srun_like(bridge_run, 3, "import", "--hf", str(ckpt.path), "--out", str(mg),
                                  env={"BRIDGE_FAULT_INJECT": "2:0:kill", "BRIDGE_DIST_TIMEOUT": "3"})
    assert results[2][0] == -signal.SIGKILL
    for rank in (0, 1):
        assert results[rank][0] == 1 and "process 2 of 3 went silent" in results[rank][1], results[rank]
    assert seconds < 30
    assert not mg.exists() and not list(tmp_path.glob("mg.partial-*"))


def test_killed_process_zero_leaves_nothing_complete_looking(bridge_run, tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints("llama3.2-1b")
    mg = tmp_path / "mg"
    results, seconds = _srun_like(bridge_run, 2, "import", "--hf", str(ckpt.path), "--out", str(mg),
                                  env={"BRIDGE_FAULT_INJECT": "0:0:kill", "BRIDGE_DIST_TIMEOUT": "3"})
    assert results[0][0] == -signal.SIGKILL
    assert results[1][0] == 1 and "error" in results[1][1], results[1]
    assert seconds < 30
    assert not mg.exists()
    # What process 0 left behind is marked partial and has no tracker file.
    for partial in tmp_path.glob("mg.partial-*"):
        assert not (partial / "latest_checkpointed_iteration.txt").exists()


def test_processes_need_a_master_address(bridge_run, tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints("llama3.2-1b")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "SLURM_"))}
    env.update(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1")
    r = subprocess.run([str(bridge_run.path), "import", "--hf", str(ckpt.path), "--out", str(tmp_path / "mg")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 1
    assert "2 processes but no MASTER_ADDR: set it to the address of the host of rank 0" in r.stderr
