"""bridge-run's command line comes from one table of options: every option is
in --help, each command takes exactly the options the table gives it, and
both '--opt value' and '--opt=value' are read."""
from __future__ import annotations

import re
import subprocess


def _run(bridge_run, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(bridge_run.path), *args], capture_output=True, text=True, timeout=60)


def test_help_lists_every_command_and_option(bridge_run):
    r = _run(bridge_run, "--help")
    assert r.returncode == 0
    for cmd in ("list", "config", "plan", "import", "export", "verify", "recipe", "reshard"):
        assert re.search(rf"^  {cmd}\b", r.stdout, re.M), cmd
    flags = set(re.findall(r"^  (--[a-z-]+)", r.stdout, re.M))
    assert {"--tp", "--pp", "--ep", "--etp", "--vpp", "--hf", "--out", "--megatron", "--overwrite", "--resume",
            "--writers", "--converters", "--memory-budget", "--format", "--recipe", "--quiet"} <= flags


def test_an_option_a_command_does_not_take_is_a_usage_error(bridge_run, tmp_path):
    r = _run(bridge_run, "export", "--megatron", str(tmp_path), "--out", str(tmp_path / "o"), "--tp", "2")
    assert r.returncode == 2
    assert "--tp does not apply to export (it applies to plan, import, reshard)" in r.stderr
    r = _run(bridge_run, "verify", str(tmp_path), "--overwrite")
    assert r.returncode == 2 and "--overwrite does not apply to verify" in r.stderr
    r = _run(bridge_run, "import", "--frobnicate")
    assert r.returncode == 2 and "unknown option '--frobnicate'" in r.stderr
    r = _run(bridge_run, "import", "--tp")
    assert r.returncode == 2 and "--tp needs a number" in r.stderr
    r = _run(bridge_run, "import", "--overwrite=yes")
    assert r.returncode == 2 and "--overwrite takes no value" in r.stderr


def test_equals_and_space_forms_are_the_same(bridge_run, tiny_checkpoints):
    cfg = str(tiny_checkpoints("llama3.1-8b").path / "config.json")
    a = _run(bridge_run, "plan", "--hf", cfg, "--tp", "2", "--json")
    b = _run(bridge_run, "plan", f"--hf={cfg}", "--tp=2", "--json")
    assert a.returncode == 0 and a.stdout == b.stdout
