"""Hostile pickles in a checkpoint (issue 17): a `.metadata` that asks the
unpickler for gigabytes, dimensions of 2^64-1 or -1, chunks outside their
tensor, records past the end of their file, a legacy rank file holding a
stride-0 view of 2^30 elements. Each `export`, `reshard` and `verify` of such
a checkpoint exits 1 with `bridge-run: error: <file>: ...` (no traceback, no
signal), within a time limit and a bound on its peak resident memory
(measured for the child alone, through wait4).

The oracle is the message and the resources: a real checkpoint's tensors are
checked elsewhere (test_reshard.py, test_legacy.py); here nothing may be
written and nothing may blow up.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

FAMILY = "llama3.2-1b"
TIMEOUT_S = 120
# bridge-run with libtorch loaded peaks near 0.5 GiB on the tiny model; the
# unpickler's budget for a 10 MB pickle is 64 B/byte + 64 MiB (about 0.7 GiB).
# Before the budgets these inputs took 2.5 to 3 GiB.
MAX_RSS_MIB = 1536
MIB = 1 << 20


def _run(bridge_run, *args: str) -> tuple[int, str, float, int]:
    """(exit code, stderr, seconds, peak RSS in MiB) of one bridge-run."""
    start = time.monotonic()
    with open(os.devnull, "wb") as out, subprocess.Popen([str(bridge_run.path), *args, "--quiet"], stdout=out,
                                                         stderr=subprocess.PIPE) as p:
        err = b""
        os.set_blocking(p.stderr.fileno(), False)
        while True:
            chunk = p.stderr.read()
            if chunk:
                err += chunk
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > TIMEOUT_S:
                os.kill(p.pid, signal.SIGKILL)
                _, status, usage = os.wait4(p.pid, 0)
                break
            time.sleep(0.02)
        p.returncode = os.waitstatus_to_exitcode(status)
        os.set_blocking(p.stderr.fileno(), True)
        err += p.stderr.read()
    return p.returncode, err.decode(errors="replace"), time.monotonic() - start, usage.ru_maxrss // 1024


def _expect_error(bridge_run, args: list[str], *needles: str) -> None:
    code, err, seconds, rss = _run(bridge_run, *args)
    what = f"bridge-run {' '.join(args)}: exit {code}, {seconds:.1f} s, {rss} MiB:\n{err}"
    assert code == 1, what
    assert err.startswith("bridge-run: error: "), what
    assert "Traceback" not in err and "terminate called" not in err and "c10::Error" not in err, what
    for n in needles:
        assert n in err, what
    assert seconds < TIMEOUT_S, what
    assert rss < MAX_RSS_MIB, what


@pytest.fixture(scope="module")
def imported(bridge_run, tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """The tiny model imported once as torch_dist and once as legacy."""
    ckpt = tiny_checkpoints(FAMILY)
    root = tmp_path_factory.mktemp("hostile")
    out = {}
    for fmt in ("torch_dist", "torch"):
        dst = root / fmt
        r = subprocess.run([str(bridge_run.path), "import", "--hf", str(ckpt.path), "--out", str(dst), "--format",
                            fmt, "--quiet"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        out[fmt] = dst
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _commands(mg: Path, tmp: Path, legacy: bool = False) -> list[list[str]]:
    cmds = [["reshard", "--megatron", str(mg), "--out", str(tmp / "resharded"), "--tp", "2"], ["verify", str(mg)]]
    if not legacy:
        cmds.insert(0, ["export", "--megatron", str(mg), "--out", str(tmp / "hf")])
    return cmds


# ---- .metadata storms ------------------------------------------------------------------

N = 10 * MIB
STORMS = {
    "empty-lists": b"\x80\x02" + b"]" * N + b".",
    "empty-dicts": b"\x80\x02" + b"}" * N + b".",
    "append-nesting": b"\x80\x02]" + b"]a" * (N // 2) + b".",
    "mark-list": b"\x80\x02" + b"(l" * (N // 2) + b".",
    "memoize": b"\x80\x04]" + b"\x94" * N + b".",
    "tuple1-chain": b"\x80\x02N" + b"\x85" * N + b".",
    "ordereddict-copies": (b"\x80\x02ccollections\nOrderedDict\nq\x00(" + b"NN\x86q\x02" * (MIB // 4) + b"lq\x01"
                           + b"h\x00h\x01\x85R0" * MIB + b"N."),
}


@pytest.mark.parametrize("name", sorted(STORMS))
def test_metadata_storm_is_refused_in_bounded_memory(bridge_run, imported, tmp_path, name):
    mg = _copy(imported["torch_dist"], tmp_path / "mg")
    meta = mg / "iter_0000000" / ".metadata"
    meta.write_bytes(STORMS[name])
    for args in _commands(mg, tmp_path):
        _expect_error(bridge_run, args, f"{meta}: ", "not a checkpoint's pickle")


# ---- .metadata shapes ------------------------------------------------------------------

class _Size:
    """Pickles as torch.Size(dims) with any ints, as a hostile writer would."""

    def __init__(self, dims):
        self.dims = tuple(dims)

    def __reduce__(self):
        import torch

        return (torch.Size, (self.dims,))


KEY = "embedding.word_embeddings.weight"
SHAPES = {
    # (field, chunk, dims, what the message says)
    "dim-2^64-1": ("size", 0, [2**64 - 1, 64], "integer of 9 bytes does not fit in 64 bits"),
    "dim-negative": ("size", 0, [-1, 64], f"global shape of '{KEY}' holds -1, outside [0, 2^62]"),
    "dim-2^63-1": ("size", 0, [2**63 - 1, 64], f"global shape of '{KEY}' holds 9223372036854775807, outside"),
    "chunk-size-negative": ("sizes", 0, [-1, 64], f"chunk sizes of '{KEY}' holds -1, outside [0, 2^62]"),
    "chunk-outside": ("offsets", 0, [300, 0], f"of '{KEY}' lies outside the global shape (256,64)"),
    "chunk-too-big": ("sizes", 0, [2**62, 64], f"of '{KEY}' lies outside the global shape (256,64)"),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_metadata_shapes_out_of_range_name_the_key(bridge_run, imported, tmp_path, name):
    import torch  # noqa: F401  (the DCP classes unpickle through torch)

    field, chunk, dims, message = SHAPES[name]
    mg = _copy(imported["torch_dist"], tmp_path / "mg")
    meta = mg / "iter_0000000" / ".metadata"
    m = pickle.loads(meta.read_bytes())
    t = m.state_dict_metadata[KEY]
    if field == "size":
        t.size = _Size(dims)
    else:
        setattr(t.chunks[chunk], field, _Size(dims))
    meta.write_bytes(pickle.dumps(m, protocol=2))
    for args in _commands(mg, tmp_path):
        _expect_error(bridge_run, args, f"{meta}: ", message)


def test_record_past_the_end_of_its_file_is_named(bridge_run, imported, tmp_path):
    import torch  # noqa: F401

    mg = _copy(imported["torch_dist"], tmp_path / "mg")
    it = mg / "iter_0000000"
    meta = it / ".metadata"
    m = pickle.loads(meta.read_bytes())
    index = next(i for i in m.storage_data if i.fqn == KEY)
    info = m.storage_data[index]
    size = (it / info.relative_path).stat().st_size
    for offset in (size + 1, 2**63 - 8):
        info.offset = offset
        meta.write_bytes(pickle.dumps(m, protocol=2))
        for args in _commands(mg, tmp_path)[:2]:  # export, reshard (verify reads the manifest)
            _expect_error(bridge_run, args, f"{meta}: ", f"record of '{KEY}' (offset {offset}, ",
                          f"lies past the end of '{info.relative_path}' ({size} bytes)")


def test_distcp_file_shrunk_under_verify_is_named(bridge_run, imported, tmp_path):
    """A .distcp file cut short under its records: 'lies past the end of' the
    file, named, not 'the file shrank?'."""
    mg = _copy(imported["torch_dist"], tmp_path / "mg")
    it = mg / "iter_0000000"
    biggest = max(it.glob("*.distcp"), key=lambda p: p.stat().st_size)
    size = biggest.stat().st_size
    with open(biggest, "r+b") as f:
        f.truncate(size // 2)
    code, err, seconds, rss = _run(bridge_run, "verify", str(mg))
    assert code == 1, err
    assert err.startswith("bridge-run: error: ") and "the file shrank" not in err, err
    assert f"lies past the end of '{biggest.name}' ({size // 2} bytes)" in err, err
    assert rss < MAX_RSS_MIB


# ---- legacy rank files -------------------------------------------------------------------

def test_legacy_stride0_view_is_refused_before_gathering(bridge_run, imported, tmp_path):
    import torch

    lg = _copy(imported["torch"], tmp_path / "lg")
    rank = lg / "iter_0000000" / "mp_rank_00" / "model_optim_rng.pt"
    with torch.serialization.safe_globals([argparse.Namespace]):
        state = torch.load(str(rank), weights_only=True)
    # torch.save keeps the view: a one-element storage, size (2^30,), stride (0,).
    name = "decoder.final_layernorm.weight"
    state["model"][name] = torch.zeros(1, dtype=torch.bfloat16).as_strided((2**30,), (0,))
    torch.save(state, str(rank))
    for args in _commands(lg, tmp_path, legacy=True)[:1]:  # reshard reads every rank file
        _expect_error(bridge_run, args, f"{rank}: tensor '{name}': shape [1073741824] with strides [0] has "
                      "1073741824 elements, more than the 1 of its storage")


def test_legacy_storm_in_data_pkl_is_refused(bridge_run, imported, tmp_path):
    """A rank file whose data.pkl is a storm of empty lists (a valid zip)."""
    import zipfile

    lg = _copy(imported["torch"], tmp_path / "lg")
    rank = lg / "iter_0000000" / "mp_rank_00" / "model_optim_rng.pt"
    with zipfile.ZipFile(rank) as z:
        entries = {i.filename: z.read(i) for i in z.infolist()}
    pkl = next(n for n in entries if n.endswith("/data.pkl"))
    entries[pkl] = STORMS["append-nesting"]
    with zipfile.ZipFile(rank, "w", compression=zipfile.ZIP_STORED) as z:
        for n, data in entries.items():
            z.writestr(n, data)
    for args in _commands(lg, tmp_path, legacy=True)[:1]:
        _expect_error(bridge_run, args, f"{rank}: {pkl}: ", "not a checkpoint's pickle")
