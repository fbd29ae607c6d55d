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
