"""Oracle tests: our mappings and schema against the real transformers and
megatron-core. Run with

    python3 -m pytest -q tests/oracle --bridge-run build/runtime/bridge-run
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# Megatron-Core's oracle runs on CPU; hide GPUs from this process, unless the
# run tests bridge-run's CUDA path (--bridge-device cuda), whose subprocesses
# inherit the environment.
if "cuda" not in " ".join(sys.argv):
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import tiny_models  # noqa: E402

DEFAULT_BRIDGE_RUN = str(HERE.parents[1] / "build" / "runtime" / "bridge-run")


def pytest_configure(config):
    # megatron-core without Transformer Engine/Apex warns about its fallbacks
    # and deprecations on every build; they say nothing about the mappings.
    for category in ("UserWarning", "DeprecationWarning", "FutureWarning"):
        config.addinivalue_line("filterwarnings", f"ignore::{category}:megatron")
    config.addinivalue_line(
        "markers",
        "families(where): parametrize family_id over the families whose `bridge-run config` "
        "\"megatron\" object satisfies where(meg) (see pytest_generate_tests)")


def pytest_generate_tests(metafunc):
    """``@pytest.mark.families(where=predicate)``: ``family_id`` takes every
    family whose converted config (``bridge-run config``'s "megatron" object of
    its tiny config.json) satisfies ``predicate``, so that what a family is comes
    from its mapping, not from a list of names. A family whose config bridge-run
    cannot give at collection is kept: a new family is tested by default, and
    its test says why it cannot run."""
    mark = metafunc.definition.get_closest_marker("families")
    if mark is None:
        return
    predicate = mark.kwargs["where"]  # a keyword: a lone callable argument would be the marked function
    bridge_run = str(Path(metafunc.config.getoption("--bridge-run")).resolve())
    chosen = []
    for fid in tiny_models.family_ids():
        meg = tiny_models.collected_megatron_config(bridge_run, fid)
        if meg is None or predicate(meg):
            chosen.append(fid)
    metafunc.parametrize("family_id", chosen, ids=tiny_models.family_param_id)


def pytest_collection_modifyitems(items):
    """``-k <mapping>`` selects every case of a mapping, also where a test's
    id names only the family (hand-written case lists such as test_reshard's
    CHAINS): each family id among a case's parameters adds its mapping name
    to the case's keywords."""
    for item in items:
        for value in getattr(getattr(item, "callspec", None), "params", {}).values():
            if isinstance(value, str) and value in tiny_models.FAMILY_BY_ID:
                item.extra_keyword_matches.add(tiny_models.FAMILY_BY_ID[value].mapping)


def pytest_addoption(parser):
    parser.addoption(
        "--bridge-run",
        action="store",
        default=DEFAULT_BRIDGE_RUN,
        metavar="PATH",
        help=f"the bridge-run binary to test (default {DEFAULT_BRIDGE_RUN})",
    )
    parser.addoption(
        "--bridge-device",
        action="store",
        default="cpu",
        metavar="DEV",
        help="where import and export run their ops: cpu (default) or cuda (GPU hosts)",
    )


@pytest.fixture(scope="session")
def bridge_device(pytestconfig) -> str:
    return pytestconfig.getoption("--bridge-device")


@pytest.fixture(scope="session")
def bridge_run(pytestconfig) -> tiny_models.BridgeRun:
    path = Path(pytestconfig.getoption("--bridge-run")).resolve()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.skip(f"bridge-run not found or not executable at {path} (pass --bridge-run PATH)")
    return tiny_models.BridgeRun(path)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """family id -> TinyCheckpoint, each built once per session on first use."""
    cache: dict[str, tiny_models.TinyCheckpoint] = {}
    root = tmp_path_factory.mktemp("tiny-hf")

    def get(family_id: str) -> tiny_models.TinyCheckpoint:
        if family_id not in cache:
            fam = tiny_models.FAMILY_BY_ID[family_id]
            cache[family_id] = tiny_models.build_tiny_checkpoint(fam, root / family_id)
        return cache[family_id]

    return get


@pytest.fixture(scope="session")
def published_format_dirs(tmp_path_factory, tiny_checkpoints):
    """family id -> directory with the shrunk config in the published file's
    layout (transformers 4 key names: rope_theta, rope_scaling, torch_dtype),
    written as is, not re-saved by transformers. A VLM's directory also
    holds the tiny model's weights: its plan lists the vision tower's
    tensors from the checkpoint (from config.json alone it is one row)."""
    cache: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("tiny-published-format")

    def get(family_id: str) -> Path:
        if family_id not in cache:
            fam = tiny_models.FAMILY_BY_ID[family_id]
            d, _ = tiny_models.tiny_config_dict(fam)
            out = tiny_models.write_config_dir(d, root / family_id)
            if fam.vlm:
                import shutil

                for f in tiny_checkpoints(family_id).path.glob("model*.safetensors*"):
                    shutil.copy(f, out / f.name)
            cache[family_id] = out
        return cache[family_id]

    return get


@pytest.fixture(scope="session")
def mcore():
    """megatron-core set up on the CPU (1-process gloo world), or a skip that
    carries the precise error."""
    import megatron_oracle

    try:
        return megatron_oracle.setup_cpu()
    except megatron_oracle.MegatronUnavailable as e:
        pytest.skip(f"megatron-core cannot run on this machine: {e}")


@pytest.fixture(scope="session")
def mcore_classes():
    import megatron_oracle

    try:
        return megatron_oracle.import_megatron_classes()
    except megatron_oracle.MegatronUnavailable as e:
        pytest.skip(f"megatron-core cannot be imported: {e}")
