#!/usr/bin/env bash
# Mappings outside this repository (docs/onboarding.md): installs the build
# into a prefix of its own, builds examples/out-of-tree against it
# (find_package(Bridge), bridge_add_mappings()) and runs that bridge-run:
# `list` shows my_llama after the shipped mappings, `config` reads a my_llama
# config.json, and a tiny my_llama checkpoint (random weights, by
# transformers) imports and exports back bit for bit through the converter
# module, which finds my_llama in the executable; and a draft of the same
# family by bridge-run inspect builds and imports byte for byte alike.
#   tests/out_of_tree.sh BUILD_DIR WORK_DIR [cmake arguments for the example...]
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=$1
work=$2
shift 2
python=${PYTHON:-python3}

rm -rf "$work"
mkdir -p "$work"
cmake --install "$build" --prefix "$work/prefix" >"$work/install.log"
cmake -S "$src/examples/out-of-tree" -B "$work/example" -DCMAKE_PREFIX_PATH="$work/prefix" "$@"
cmake --build "$work/example"
run="$work/example/bridge-run"

"$run" list | tee "$work/list.txt"
# The shipped mappings in their order, then my_llama.
"$build/runtime/bridge-run" list | awk 'NR > 1 { print $1 } END { print "my_llama" }' >"$work/expected.txt"
awk 'NR > 1 { print $1 }' "$work/list.txt" | diff -u "$work/expected.txt" -

# The committed tiny Llama config under the made-up model_type.
my_llama() {
  sed -e 's/"model_type": "llama"/"model_type": "my_llama"/' -e 's/"LlamaForCausalLM"/"MyLlamaForCausalLM"/' \
    "$1" >"$1.tmp"
  mv "$1.tmp" "$1"
  grep -q '"model_type": "my_llama"' "$1"
}
mkdir -p "$work/config"
cp "$src/examples/tiny-llama/config.json" "$work/config/"
my_llama "$work/config/config.json"
"$run" config --hf "$work/config" | tee "$work/config.txt"
grep -q "^mapping my_llama " "$work/config.txt"
# The shipped bridge-run has no mapping for it.
if "$build/runtime/bridge-run" config --hf "$work/config" >/dev/null 2>&1; then
  echo "the shipped bridge-run read a my_llama config" >&2
  exit 1
fi

"$python" "$src/scripts/make_tiny_llama.py" "$work/hf"
my_llama "$work/hf/config.json"
"$run" import --hf "$work/hf" --out "$work/megatron" --tp 2
"$run" export --megatron "$work/megatron" --out "$work/hf-back"
grep -q '"model_type": "my_llama"' "$work/hf-back/config.json"
"$python" "$src/scripts/compare_checkpoints.py" "$work/hf" "$work/hf-back"

# A draft for a family no mapping serves is a mapping: bridge-run inspect
# (which knows no my_llama) drafts one from the checkpoint, a project of its
# own builds it, and its import is byte for byte the written my_llama's.
mkdir -p "$work/draft"
"$build/runtime/bridge-run" inspect --hf "$work/hf" --draft "$work/draft/my_llama.bridge" | tee "$work/inspect.txt"
grep -q ", 0 TODO(s)" "$work/inspect.txt"
cat >"$work/draft/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.20)
project(draft LANGUAGES CXX)
find_package(Bridge 0.1 REQUIRED)
bridge_add_mappings(TARGET bridge-run MAPPINGS my_llama.bridge)
CMAKE
cmake -S "$work/draft" -B "$work/draft-build" -DCMAKE_PREFIX_PATH="$work/prefix" "$@"
cmake --build "$work/draft-build"
"$work/draft-build/bridge-run" import --hf "$work/hf" --out "$work/megatron-draft" --tp 2
(cd "$work/megatron/iter_0000000" && for f in *.distcp .metadata; do cmp "$f" "$work/megatron-draft/iter_0000000/$f"; done)
[ "$(ls -A "$work/megatron/iter_0000000" | wc -l)" = "$(ls -A "$work/megatron-draft/iter_0000000" | wc -l)" ]
echo "the drafted mapping imports byte for byte as the written one"
