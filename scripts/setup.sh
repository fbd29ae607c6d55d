#!/usr/bin/env bash
# Installs everything the build and the tests need, from Debian packages and
# PyPI. Idempotent: what is already installed is left alone, so a second run
# takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  antlr4 libantlr4-runtime-dev          # the grammar tool 4.7.2 and the C++ runtime 4.9
  llvm-14-dev llvm-14-tools             # LLVM Support for bridgec; FileCheck, not, split-file
  nlohmann-json3-dev doctest-dev        # JSON in the runtime; unit tests
  cmake ninja-build ccache g++ python3 python3-pip
  python3-dev                           # Python.h: the live bridge's extension (bridge._C)
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "setup: Debian packages present"
fi

# Python packages: install only what does not match the pinned versions.
PY=${PYTHON:-python3}
need_pip=$($PY - <<'PYEOF'
import importlib.metadata as md, pathlib, re
need = []
for line in pathlib.Path("scripts/requirements.txt").read_text().splitlines():
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, _, version = line.partition("==")
    try:
        if md.version(name) != version:
            need.append(line)
    except md.PackageNotFoundError:
        need.append(line)
print(" ".join(need))
PYEOF
)
if [[ -n "$need_pip" ]]; then
  echo "setup: installing Python packages: $need_pip"
  $PY -m pip install -q $need_pip
else
  echo "setup: Python packages present"
fi

# Megatron-Bridge 0.6.2's wheel (pure Python, for Python 3.12): the recipe
# tests load its FLOPs formula from it (tests/oracle/test_recipes.py). Not
# installed: its package does not import against this machine's pins.
MB_WHEEL=build/downloads/megatron_bridge-0.6.2-py3-none-any.whl
MB_SHA256=bcb7274ab9327167c345aa24b96b95790ce5090df1945d883bdc41065d5649e2
if [[ -f $MB_WHEEL ]] && echo "$MB_SHA256  $MB_WHEEL" | sha256sum -c --status; then
  echo "setup: Megatron-Bridge wheel present"
else
  echo "setup: downloading Megatron-Bridge 0.6.2's wheel"
  mkdir -p build/downloads
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d build/downloads megatron-bridge==0.6.2
  echo "$MB_SHA256  $MB_WHEEL" | sha256sum -c --status || { echo "setup: $MB_WHEEL does not match its pinned sha256" >&2; exit 1; }
fi
