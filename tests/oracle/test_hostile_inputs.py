"""Hostile inputs (issue 17): files written or deleted where they must not be,
inputs that block, crash or stream without end, and work not bounded by the
input. Each case is an exit-1 error naming its file, in bounded time, with
nothing written outside --out and no input deleted.

The pickle and torch_dist cases are in test_hostile_pickles.py, verify's in
test_hostile_verify.py."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

LIMIT_S = 60  # every case here ends in well under a second; a hang fails


def _run(bridge_run, *args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    start = time.monotonic()
    r = subprocess.run([str(bridge_run.path), *map(str, args), "--quiet"], capture_output=True, text=True,
                       timeout=LIMIT_S, env=env, cwd=cwd)
    r.seconds = time.monotonic() - start
    return r


def _fails_naming(r: subprocess.CompletedProcess, *words: str):
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "terminate called" not in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def _nothing_at(out: Path):
    assert not out.exists() and not out.is_symlink(), f"{out} was created"
    assert not list(out.parent.glob(out.name + ".partial-*")), "a partial output was left behind"


@pytest.fixture()
def source(tiny_checkpoints, tmp_path) -> Path:
    """A writable copy of the tiny untied Llama."""
    dst = tmp_path / "hf"
    shutil.copytree(tiny_checkpoints("llama3.1-8b").path, dst)
    return dst


@pytest.fixture(scope="module")
def imported(tiny_checkpoints, bridge_run, tmp_path_factory) -> Path:
    """The tiny Llama imported once (copied before each change)."""
    out = tmp_path_factory.mktemp("hostile") / "mg"
    r = _run(bridge_run, "import", "--hf", tiny_checkpoints("llama3.1-8b").path, "--out", out)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture()
def megatron(imported, tmp_path) -> Path:
    dst = tmp_path / "mg"
    shutil.copytree(imported, dst)
    return dst


def _edit_sidecar(ckpt: Path, edit):
    p = ckpt / "iter_0000000" / "bridge.json"
    side = json.loads(p.read_text())
    edit(side)
    p.write_text(json.dumps(side))


# -- 1. a sidecar naming files outside the output -------------------------------------------

@pytest.mark.parametrize("name", ["../victim.safetensors", "../../../../../../../tmp/victim.safetensors",
                                  "/tmp/victim.safetensors", "sub/model.safetensors", "..", "model.txt",
                                  "config.json", "model\n.safetensors", ""])
def test_export_refuses_a_sidecar_file_name_outside_the_output(bridge_run, megatron, tmp_path, name):
    victim = tmp_path / "victim.safetensors"
    victim.write_text("precious")
    _edit_sidecar(megatron, lambda s: s["hf_tensors"]["model.norm.weight"].__setitem__("file", name))
    out = tmp_path / "out" / "hf"
    r = _run(bridge_run, "export", "--megatron", megatron, "--out", out)
    _fails_naming(r, "bridge.json", "hf_tensors['model.norm.weight'].file", "not a plain .safetensors file name")
    assert victim.read_text() == "precious"
    _nothing_at(out)


@pytest.mark.parametrize("field,value,words", [
    ("mapping", ["llama"], ["bridge.json", "mapping is an array, not a string"]),
    ("mapping", None, ["bridge.json", "mapping is a null, not a string"]),
    ("megatron_config", "x", ["bridge.json", "megatron_config is a string, not an object"]),
    ("hf_tensors", [], ["bridge.json", "hf_tensors is an array, not an object"]),
    ("alternatives", {"x": "1"}, ["bridge.json", "alternatives['x']", "not a source layout number"]),
    ("layout", {"tp": -1}, ["bridge.json", "layout.tp"]),
    ("checkpoint_format", "zarr", ["bridge.json", "checkpoint_format"]),
])
def test_sidecar_of_the_wrong_type_is_named(bridge_run, megatron, tmp_path, field, value, words):
    _edit_sidecar(megatron, lambda s: s.__setitem__(field, value))
    out = tmp_path / "out"
    r = _run(bridge_run, "export", "--megatron", megatron, "--out", out)
    _fails_naming(r, *words)
    _nothing_at(out)


@pytest.mark.parametrize("edit,words", [
    (lambda t: t.__setitem__("shape", [18446744073709551615]), ["shape", "not a size"]),
    (lambda t: t.__setitem__("shape", [-1, 4]), ["shape", "not a size"]),
    (lambda t: t.__setitem__("shape", [1 << 40, 1 << 40]), ["shape", "impossibly large"]),
    (lambda t: t.__setitem__("dtype", "BX16"), ["dtype", "not a safetensors dtype"]),
    (lambda t: t.pop("file"), ["file is missing"]),
], ids=["dim-2^64-1", "negative", "huge", "dtype", "no-file"])
def test_sidecar_tensor_records_are_checked(bridge_run, megatron, tmp_path, edit, words):
    _edit_sidecar(megatron, lambda s: edit(s["hf_tensors"]["model.norm.weight"]))
    out = tmp_path / "out"
    r = _run(bridge_run, "export", "--megatron", megatron, "--out", out)
    _fails_naming(r, "bridge.json", "hf_tensors['model.norm.weight']", *words)
    _nothing_at(out)


def test_sidecar_megatron_config_of_the_wrong_type_is_named(bridge_run, megatron, tmp_path):
    _edit_sidecar(megatron, lambda s: s["megatron_config"].__setitem__("num_layers", [1, 2]))
    for cmd in (("export", "--megatron", megatron, "--out", tmp_path / "out"),
                ("reshard", "--megatron", megatron, "--out", tmp_path / "out", "--tp", "2")):
        r = _run(bridge_run, *cmd)
        _fails_naming(r, "bridge.json", "Megatron config field 'num_layers'")
        _nothing_at(tmp_path / "out")


# -- 2. --out that must never be replaced -----------------------------------------------------

def test_overwrite_never_deletes_the_root_home_or_working_directory(bridge_run, source, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home))
    for out, cwd, what in (("/", None, "the root directory"), (str(home), None, "the home directory"),
                           (".", tmp_path, "the working directory"), (str(tmp_path), tmp_path / "home",
                                                                      "the working directory")):
        r = _run(bridge_run, "import", "--hf", source, "--out", out, "--overwrite", env=env, cwd=cwd)
        _fails_naming(r, what, "never replaced")
    assert source.exists() and home.exists()


@pytest.mark.parametrize("where", ["same", "parent", "inside"])
def test_out_may_not_be_contain_or_lie_inside_the_input(bridge_run, source, tmp_path, where):
    out = {"same": source, "parent": tmp_path, "inside": source / "megatron"}[where]
    before = sorted(p.name for p in source.iterdir())
    r = _run(bridge_run, "import", "--hf", source, "--out", out, "--overwrite")
    _fails_naming(r, "the input", "write the output somewhere else")
    assert sorted(p.name for p in source.iterdir()) == before
    # The same for export's input.


def test_export_out_may_not_be_its_input(bridge_run, megatron, tmp_path):
    for out in (megatron, megatron.parent, megatron / "iter_0000000" / "hf"):
        r = _run(bridge_run, "export", "--megatron", megatron, "--out", out, "--overwrite")
        _fails_naming(r, "the input")
    assert (megatron / "latest_checkpointed_iteration.txt").exists()


def test_overwrite_refuses_a_symlink_and_a_file(bridge_run, source, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "latest_checkpointed_iteration.txt").write_text("0")
    link = tmp_path / "link"
    link.symlink_to(target)
    f = tmp_path / "afile"
    f.write_text("data")
    for out in (link, f):
        r = _run(bridge_run, "import", "--hf", source, "--out", out, "--overwrite")
        _fails_naming(r, "is not an output of bridge-run")
    assert link.is_symlink() and (target / "latest_checkpointed_iteration.txt").exists() and f.read_text() == "data"


# -- 3. an --out that appears while a run works ----------------------------------------------

def test_an_out_that_appears_meanwhile_is_left_alone(bridge_run, source, tmp_path):
    """The first import is held at its second tensor; meanwhile a second
    import writes the same --out. When the first goes on, its final rename
    refuses the directory it did not check: the second's output stays."""
    out, release = tmp_path / "out", tmp_path / "release"
    env = dict(os.environ, BRIDGE_FAULT_INJECT="0:1:pause", BRIDGE_FAULT_RELEASE=str(release))
    first = subprocess.Popen([str(bridge_run.path), "import", "--hf", str(source), "--out", str(out), "--quiet"],
                             env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            if list(tmp_path.glob("out.partial-*")):
                break
            assert first.poll() is None, first.communicate()
            time.sleep(0.05)
        second = _run(bridge_run, "import", "--hf", source, "--out", out)
        assert second.returncode == 0, second.stderr
        (out / "mine").write_text("the second run's")
        release.write_text("")
        _, err = first.communicate(timeout=LIMIT_S)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 1, err
    assert "appeared while this command ran" in err, err
    assert (out / "mine").read_text() == "the second run's"
    assert not list(tmp_path.glob("out.partial-*")) and not list(tmp_path.glob("out.replaced-*"))


# -- 4. tokenizer files are inputs like the shards ----------------------------------------------

def test_tokenizer_link_out_of_the_checkpoint_is_refused(bridge_run, source, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": 1}')
    (source / "tokenizer_config.json").unlink(missing_ok=True)
    (source / "tokenizer_config.json").symlink_to(secret)
    out = tmp_path / "out"
    r = _run(bridge_run, "import", "--hf", source, "--out", out)
    _fails_naming(r, "tokenizer_config.json", "resolves outside the checkpoint directory")
    _nothing_at(out)


def test_the_hugging_face_cache_layout_is_read(bridge_run, source, tmp_path):
    """The HF cache keeps a snapshot's files as links into the repository's
    blob store (snapshots/<rev>/x -> ../../blobs/<hash>): shards and
    tokenizer files there are read, bit for bit."""
    repo = tmp_path / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (source / "tokenizer_config.json").write_text('{"model_max_length": 128}')
    for i, f in enumerate(sorted(source.iterdir())):
        shutil.copy(f, repo / "blobs" / f"blob{i}")
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / f"blob{i}")
    out = tmp_path / "out"
    r = _run(bridge_run, "import", "--hf", snap, "--out", out)
    assert r.returncode == 0, r.stderr
    copied = out / "iter_0000000" / "tokenizer" / "tokenizer_config.json"
    assert copied.read_text() == '{"model_max_length": 128}' and not copied.is_symlink()


# -- 5. and 7. nesting, FIFOs, devices, sizes -------------------------------------------------

def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("where", ["config", "sidecar", "index", "header"])
def test_deeply_nested_json_is_an_error(bridge_run, source, megatron, tmp_path, where):
    out = tmp_path / "out"
    if where == "config":
        cfg = (source / "config.json").read_text()
        (source / "config.json").write_text(cfg.rstrip()[:-1] + ', "x": ' + _deep(100000) + "}")
        cmds = [("import", "--hf", source, "--out", out), ("config", "--hf", source), ("plan", "--hf", source)]
        words = ["config.json", "more than 128 levels deep"]
    elif where == "sidecar":
        _edit_sidecar(megatron, lambda s: s["hf_config"].__setitem__("x", "DEEP"))
        p = megatron / "iter_0000000" / "bridge.json"
        p.write_text(p.read_text().replace('"DEEP"', _deep(100000)))
        cmds = [("export", "--megatron", megatron, "--out", out),
                ("reshard", "--megatron", megatron, "--out", out, "--tp", "2")]
        words = ["bridge.json", "more than 128 levels deep"]
    elif where == "index":
        from safetensors.torch import load_file
        names = load_file(str(source / "model.safetensors")).keys()
        index = {"metadata": {"x": json.loads(_deep(100))}, "weight_map": {n: "model.safetensors" for n in names}}
        (source / "model.safetensors.index.json").write_text(
            json.dumps(index).replace(_deep(100), _deep(100000)))
        cmds = [("import", "--hf", source, "--out", out)]
        words = ["model.safetensors.index.json", "more than 128 levels deep"]
    else:
        header = b'{"__metadata__": {"x": ' + _deep(100000).encode() + b"}}"
        (source / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
        cmds = [("import", "--hf", source, "--out", out)]
        words = ["model.safetensors", "more than 128 levels deep"]
    for cmd in cmds:
        r = _run(bridge_run, *cmd)
        _fails_naming(r, *words)
        _nothing_at(out)


@pytest.mark.parametrize("which", ["config.json", "model.safetensors.index.json", "tokenizer_config.json",
                                   "model.safetensors"])
@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_inputs_that_are_not_regular_files_are_refused_at_once(bridge_run, source, tmp_path, which, kind):
    p = source / which
    p.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(p)
    else:
        p.symlink_to("/dev/zero")
    out = tmp_path / "out"
    r = _run(bridge_run, "import", "--hf", source, "--out", out)
    if which in ("tokenizer_config.json", "model.safetensors") and kind == "dev-zero":
        _fails_naming(r, which, "resolves outside the checkpoint directory")
    else:
        _fails_naming(r, which, "a FIFO" if kind == "fifo" else "a character device", "not a regular file")
    assert r.seconds < 10
    _nothing_at(out)


def test_a_tokenizer_fifo_inside_the_checkpoint_is_refused(bridge_run, source, tmp_path):
    os.mkfifo(source / "tokenizer.json")
    out = tmp_path / "out"
    r = _run(bridge_run, "import", "--hf", source, "--out", out)
    _fails_naming(r, "tokenizer.json", "a FIFO")
    _nothing_at(out)


@pytest.mark.parametrize("which,size,words", [
    ("config.json", 65 << 20, ["config.json", "at most 64 MiB are read"]),
    ("model.safetensors.index.json", 300 << 20, ["model.safetensors.index.json", "at most 256 MiB are read"]),
])
def test_oversized_json_inputs_are_refused_before_reading(bridge_run, source, tmp_path, which, size, words):
    p = source / which
    with open(p, "wb") as f:  # sparse: the size is checked before a byte is read
        f.truncate(size)
    out = tmp_path / "out"
    r = _run(bridge_run, "import", "--hf", source, "--out", out)
    _fails_naming(r, *words)
    _nothing_at(out)


def test_oversized_safetensors_header_is_refused(bridge_run, source, tmp_path):
    p = source / "model.safetensors"
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", 300 << 20))
        f.truncate(8 + (300 << 20))
    out = tmp_path / "out"
    r = _run(bridge_run, "import", "--hf", source, "--out", out)
    _fails_naming(r, "model.safetensors", "the header is", "at most 256 MiB")
    _nothing_at(out)


# -- 8. the JSON reader is linear ---------------------------------------------------------------

def test_a_header_of_100000_tensors_is_read_in_linear_time(bridge_run, tmp_path):
    """A safetensors header naming 100,000 tensors (the quadratic parser took
    about 4 minutes) is read, checked and compared in a few seconds."""
    n = 100_000
    header = {f"model.layers.{i}.weight": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(n)}
    text = json.dumps(header).encode()
    d = tmp_path / "big"
    d.mkdir()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text)
    start = time.monotonic()
    r = _run(bridge_run, "verify", d, "--against", d)
    assert r.returncode == 0, r.stderr
    assert f"{n} tensors" in r.stdout
    assert time.monotonic() - start < 20  # about 1 s on 2 cores


# -- 9. declared counts against what is present -------------------------------------------------

@pytest.mark.parametrize("layers", [10**4, 10**6, 10**9])
def test_declared_layers_beyond_the_checkpoint_fail_at_once(bridge_run, source, tmp_path, layers):
    import resource

    cfg = json.loads((source / "config.json").read_text())
    cfg["num_hidden_layers"] = layers
    (source / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = _run(bridge_run, "import", "--hf", source, "--out", out)
    _fails_naming(r, "declares", "layers")
    assert r.seconds < 10
    _nothing_at(out)
    r = _run(bridge_run, "plan", "--hf", source / "config.json")
    _fails_naming(r, "declares", "layers", "at most 4096")
    peak = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    assert peak < 2 * 1024 * 1024, f"peak resident {peak} KiB"  # libtorch alone is about 0.5 GiB


def test_declared_layers_in_the_sidecar_fail_at_once(bridge_run, megatron, tmp_path):
    _edit_sidecar(megatron, lambda s: s["megatron_config"].__setitem__("num_layers", 1000))
    r = _run(bridge_run, "export", "--megatron", megatron, "--out", tmp_path / "out")
    _fails_naming(r, "declares 1000 layers", "holds only")
    _nothing_at(tmp_path / "out")


def test_declared_experts_beyond_the_limit_fail_at_once(bridge_run, tiny_checkpoints, tmp_path):
    src = tmp_path / "hf"
    shutil.copytree(tiny_checkpoints("qwen3-30b-a3b").path, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["num_experts"] = 10**6
    (src / "config.json").write_text(json.dumps(cfg))
    r = _run(bridge_run, "import", "--hf", src, "--out", tmp_path / "out")
    _fails_naming(r, "declares 1000000 experts", "at most 4096")
    assert r.seconds < 10
