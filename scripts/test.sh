#!/usr/bin/env bash
# Every test: sets up, builds, and runs ctest (compiler lit suite, goldens,
# unit tests, oracle tests against transformers and megatron-core).
# GPU tests carry the label 'gpu' and are skipped here unless asked for:
#   scripts/test.sh -L gpu
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
if [[ $# -eq 0 ]]; then
  set -- -LE gpu
fi
ctest --test-dir build --output-on-failure "$@"
