#!/usr/bin/env bash
# The main job on the embedded default: sets up, builds, and plans the
# conversion of the tiny Llama in examples/tiny-llama (every Megatron tensor,
# its HF sources, op, global shape and parallel style), then prints the
# Megatron config it maps to.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
build/runtime/bridge-run plan --hf examples/tiny-llama
echo
build/runtime/bridge-run config --hf examples/tiny-llama
