#!/usr/bin/env bash
# Configures (first time) and builds everything with the default preset.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -f build/build.ninja ]]; then
  cmake --preset default -DBRIDGE_BUILD_TESTS=ON >/dev/null
fi
cmake --build build
