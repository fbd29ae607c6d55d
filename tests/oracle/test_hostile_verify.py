"""Hostile inputs to `bridge-run verify` (tracker issue 17): a manifest.json
of the wrong shape or types, records out of bounds, a manifest and a
.metadata that disagree, a legacy rank file whose pickle calls os.system, rank
files the manifest leaves out. Each is exit 1 with a message naming the file
and the entry or field; never an abort, a read out of bounds or a hang.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

FAMILY = "llama3.1-8b"
RANK0 = "mp_rank_00/model_optim_rng.pt"
RANK1 = "mp_rank_01/model_optim_rng.pt"


def _run(bridge_run, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(bridge_run.path), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def written(bridge_run, tiny_checkpoints, tmp_path_factory):
    """The tiny Llama as torch_dist (TP 1), legacy torch (TP 2) and its HF
    export, each verified clean; tests change copies."""
    hf = tiny_checkpoints(FAMILY).path
    root = tmp_path_factory.mktemp("hostile-verify")
    out = {"dist": root / "dist", "legacy": root / "legacy", "hf": root / "hf"}
    for args in (["import", "--hf", str(hf), "--out", str(out["dist"]), "--tp", "1"],
                 ["import", "--hf", str(hf), "--out", str(out["legacy"]), "--tp", "2", "--format", "torch"],
                 ["export", "--megatron", str(out["dist"]), "--out", str(out["hf"])]):
        r = _run(bridge_run, *args, "--quiet")
        assert r.returncode == 0, r.stderr
    for d in out.values():
        r = _run(bridge_run, "verify", str(d))
        assert r.returncode == 0 and "all match" in r.stdout, r.stdout + r.stderr
    return out


def _copy(written, kind: str, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the checkpoint \\p kind and the directory of its manifest."""
    d = tmp_path / kind
    shutil.copytree(written[kind], d)
    return d, (d if kind == "hf" else d / "iter_0000000")


def _verify_fails(bridge_run, d: Path, *expected: str) -> str:
    """verify \\p d: exit 1, no abort or traceback, within a minute, every
    string of \\p expected in what it said."""
    r = subprocess.run([str(bridge_run.path), "verify", str(d)], capture_output=True, text=True, timeout=60)
    said = r.stdout + r.stderr
    assert r.returncode == 1, f"exit {r.returncode}: {said}"
    for bad in ("terminate called", "Traceback", "json.exception", "Aborted", "Segmentation"):
        assert bad not in said, said
    for e in expected:
        assert e in said, f"{e!r} not in: {said}"
    return said


def _edit_json(path: Path, edit) -> None:
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))


# --- torch_dist: manifest.json's entries -------------------------------------------------------------------------

def _set(section: str, index: int, field: str, value):
    def edit(m):
        m[section][index][field] = value
    return edit


def _drop(section: str, index: int, field: str):
    def edit(m):
        del m[section][index][field]
    return edit


ENTRY_CASES = {
    # id: (edit of the manifest, what verify must say; {key} is chunks[i]'s or objects[i]'s key)
    "crc-as-string": (_set("chunks", 0, "crc32", "0x12345678"), ["chunks[0] ('{key0}'): 'crc32' is a string"]),
    "crc-too-large": (_set("chunks", 1, "crc32", 2**32), ["chunks[1] ('{key1}'): 'crc32' is 4294967296, more than"]),
    "missing-offset": (_drop("chunks", 1, "offset"), ["chunks[1] ('{key1}'): has no 'offset'"]),
    "negative-length": (_set("chunks", 0, "length", -5), ["chunks[0] ('{key0}'): 'length' is a negative number"]),
    "float-offset": (_set("chunks", 0, "offset", 1.5), ["chunks[0] ('{key0}'): 'offset' is a non-integer number"]),
    "key-not-a-string": (_set("chunks", 2, "key", 7), ["chunks[2]: 'key' is the number 7, not a string"]),
    "null-file": (_set("objects", 0, "file", None), ["objects[0] ('{okey0}'): 'file' is a null, not a string"]),
    "file-with-slash": (_set("chunks", 0, "file", "../iter_0000000/__0_0.distcp"),
                        ["chunks[0] ('{key0}'): 'file' is '../iter_0000000/__0_0.distcp', not a plain file name"]),
    "file-dotdot": (_set("chunks", 0, "file", ".."), ["chunks[0] ('{key0}'): 'file' is '..', not a plain file name"]),
    "entry-not-an-object": (lambda m: m["chunks"].__setitem__(0, "x"), ["chunks[0] is a string, not an object"]),
    "chunks-not-an-array": (lambda m: m.__setitem__("chunks", {"a": 1}),
                            ["'chunks' is an object, not an array of records"]),
    "objects-missing": (lambda m: m.pop("objects"), ["'objects' is missing, not an array of records",
                                                      "byte object of '{okey0}'", "is not in manifest.json"]),
}


@pytest.mark.parametrize("case", sorted(ENTRY_CASES))
def test_verify_names_each_bad_manifest_entry(bridge_run, written, tmp_path, case):
    d, iter_dir = _copy(written, "dist", tmp_path)
    manifest = iter_dir / "manifest.json"
    m = json.loads(manifest.read_text())
    names = {f"key{i}": c["key"] for i, c in enumerate(m["chunks"][:3])}
    names["okey0"] = m["objects"][0]["key"]
    edit, expected = ENTRY_CASES[case]
    _edit_json(manifest, edit)
    _verify_fails(bridge_run, d, str(manifest), *(e.format(**names) for e in expected))


def test_verify_refuses_a_manifest_that_is_not_an_object(bridge_run, written, tmp_path):
    d, iter_dir = _copy(written, "dist", tmp_path)
    (iter_dir / "manifest.json").write_text("[1, 2, 3]")
    _verify_fails(bridge_run, d, str(iter_dir / "manifest.json") + " is an array, not an object")


@pytest.mark.parametrize("case", ["offset-2^64-1", "offset-plus-length-overflows", "length-past-the-end"])
def test_verify_checks_records_inside_their_file(bridge_run, written, tmp_path, case):
    d, iter_dir = _copy(written, "dist", tmp_path)
    manifest = iter_dir / "manifest.json"
    m = json.loads(manifest.read_text())
    c = m["chunks"][0]
    size = (iter_dir / c["file"]).stat().st_size
    if case == "offset-2^64-1":
        c["offset"] = 2**64 - 1
    elif case == "offset-plus-length-overflows":
        c["offset"], c["length"] = 2**63, 2**63 + 16  # their sum wraps to 16
    else:
        c["length"] = size - c["offset"] + 1
    manifest.write_text(json.dumps(m))
    _verify_fails(bridge_run, d, f"{iter_dir / c['file']} at {c['offset']} ('{c['key']}')",
                  f"runs past the end of the file ({size} bytes)", "is not a record of .metadata")


# --- torch_dist: manifest.json against .metadata ------------------------------------------------------------------

def test_verify_finds_a_manifest_record_metadata_lacks(bridge_run, written, tmp_path):
    """A record listed under a key .metadata does not have: its bytes check out, but
    nothing loads it."""
    d, iter_dir = _copy(written, "dist", tmp_path)
    manifest = iter_dir / "manifest.json"
    m = json.loads(manifest.read_text())
    extra = dict(m["chunks"][0], key="decoder.layers.self_attention.linear_extra.weight")
    m["chunks"].append(extra)
    manifest.write_text(json.dumps(m))
    n = len(m["chunks"]) - 1
    _verify_fails(bridge_run, d, f"{manifest}: chunks[{n}] ('{extra['key']}'): {extra['file']} at offset "
                  f"{extra['offset']}, length {extra['length']} is not a record of .metadata")


def test_verify_finds_a_metadata_record_the_manifest_lacks(bridge_run, written, tmp_path):
    """.metadata pointed at another key's record: the manifest's record, where it lies,
    still checks out; the load would read other bytes."""
    d, iter_dir = _copy(written, "dist", tmp_path)
    meta_path = iter_dir / ".metadata"
    meta = pickle.loads(meta_path.read_bytes())  # our own file, written by the tool under test
    indices = [i for i in meta.storage_data if i.offset is not None]
    victim, other = indices[0], indices[1]
    info, there = meta.storage_data[victim], meta.storage_data[other]
    info.relative_path, info.offset, info.length = there.relative_path, there.offset, there.length
    meta_path.write_bytes(pickle.dumps(meta, protocol=2))
    _verify_fails(bridge_run, d, f"{meta_path}: tensor chunk of '{victim.fqn}' ({there.relative_path} at offset "
                  f"{there.offset}, length {there.length}) is not in manifest.json",
                  f"('{victim.fqn}'): ", "is not a record of .metadata")


def test_verify_finds_a_record_missing_from_the_manifest(bridge_run, written, tmp_path):
    d, iter_dir = _copy(written, "dist", tmp_path)
    manifest = iter_dir / "manifest.json"
    m = json.loads(manifest.read_text())
    gone = m["chunks"].pop()
    manifest.write_text(json.dumps(m))
    _verify_fails(bridge_run, d, f"{iter_dir / '.metadata'}: tensor chunk of '{gone['key']}' ({gone['file']} at "
                  f"offset {gone['offset']}, length {gone['length']}) is not in manifest.json")


# --- legacy (torch) checkpoints -----------------------------------------------------------------------------------

# pickle protocol 2 for os.system("true"), built by hand and never unpickled here:
# PROTO 2, GLOBAL 'os system', BINUNICODE 'true', TUPLE1, REDUCE, STOP.
EVIL_PICKLE = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R."


def _replace_data_pkl(rank_file: Path, payload: bytes) -> None:
    with zipfile.ZipFile(rank_file) as z:
        entries = [(i, z.read(i)) for i in z.infolist()]
    tmp = rank_file.with_suffix(".new")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        for info, data in entries:
            z.writestr(info.filename, payload if info.filename.endswith("/data.pkl") else data)
    tmp.replace(rank_file)


def test_verify_reads_each_legacy_pickle_through_the_allow_list(bridge_run, written, tmp_path):
    d, iter_dir = _copy(written, "legacy", tmp_path)
    _replace_data_pkl(iter_dir / RANK1, EVIL_PICKLE)
    _verify_fails(bridge_run, d, str(iter_dir / RANK1), "forbidden global 'os.system'")


LEGACY_CASES = {
    "no-rank-files": (lambda m: m["files"].clear(),
                      ["'files' lists no rank files", f"{RANK0}: a rank file that manifest.json does not list"]),
    "rank-file-unlisted": (lambda m: m["files"].pop(RANK1),
                           [f"{RANK1}: a rank file that manifest.json does not list"]),
    "file-without-tensors": (lambda m: m["files"].__setitem__(RANK0, {}),
                             [f"files['{RANK0}'] lists no tensors", "storage entries not in manifest.json: 'data/0', ",
                              "tensors of 'model' not in manifest.json: '"]),
    "tensor-unlisted": (lambda m: m["files"][RANK0].pop(next(iter(m["files"][RANK0]))),
                        [f"{RANK0}: storage entries not in manifest.json: 'data/0'\n",
                         f"{RANK0}: tensors of 'model' not in manifest.json: '"]),
    "crc-as-string": (lambda m: next(iter(m["files"][RANK0].values())).__setitem__("crc32", "0"),
                      [f"files['{RANK0}']['", "']: 'crc32' is a string"]),
    "entry-missing": (lambda m: next(iter(m["files"][RANK1].values())).pop("entry"),
                      [f"files['{RANK1}']['", "']: has no 'entry'"]),
    "file-outside": (lambda m: m["files"].__setitem__("../" + RANK0, m["files"][RANK0]),
                     [f"files['../{RANK0}']: not a rank file inside the checkpoint"]),
    "files-not-an-object": (lambda m: m.__setitem__("files", [RANK0]),
                            ["'files' is an array, not an object of rank files"]),
}


@pytest.mark.parametrize("case", sorted(LEGACY_CASES))
def test_verify_checks_the_legacy_manifest(bridge_run, written, tmp_path, case):
    d, iter_dir = _copy(written, "legacy", tmp_path)
    edit, expected = LEGACY_CASES[case]
    _edit_json(iter_dir / "manifest.json", edit)
    _verify_fails(bridge_run, d, *expected)


# --- HF exports ---------------------------------------------------------------------------------------------------

HF_CASES = {
    "crc-as-string": (lambda m: next(iter(m["tensors"].values())).__setitem__("crc32", "1"), "'crc32' is a string"),
    "null-file": (lambda m: next(iter(m["tensors"].values())).__setitem__("file", None),
                  "'file' is a null, not a string"),
    "file-dotdot": (lambda m: next(iter(m["tensors"].values())).__setitem__("file", ".."),
                    "'file' is '..', not a plain file name"),
    "entry-not-an-object": (lambda m: m["tensors"].__setitem__(next(iter(m["tensors"])), 5),
                            "] is the number 5, not an object"),
    "tensors-not-an-object": (lambda m: m.__setitem__("tensors", []), "'tensors' is an array, not an object"),
}


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_verify_checks_the_export_manifest(bridge_run, written, tmp_path, case):
    d, _ = _copy(written, "hf", tmp_path)
    manifest = d / "manifest.json"
    first = next(iter(json.loads(manifest.read_text())["tensors"]))
    edit, expected = HF_CASES[case]
    _edit_json(manifest, edit)
    said = _verify_fails(bridge_run, d, str(manifest), expected)
    if case != "tensors-not-an-object":
        assert f"tensors['{first}']" in said, said
