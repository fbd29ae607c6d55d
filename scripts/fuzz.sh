#!/usr/bin/env bash
# Builds the libFuzzer targets with clang, ASan and UBSan (build-fuzz/), and
# runs each for SECONDS (default 600) from its committed corpus
# (tests/fuzz/corpus/<target>), two at a time. New corpus entries stay in
# build-fuzz/corpus/<target>; a crash leaves its input in
# build-fuzz/crashes/<target>/ and fails the run. One line per target is
# appended to tests/fuzz/RESULTS.md.
#   scripts/fuzz.sh [SECONDS] [TARGET...]     (unpickle safetensors config json sidecar manifest bridge)
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}; shift || true
targets=${*:-unpickle safetensors config json sidecar manifest bridge}
CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DBRIDGE_FUZZ=ON -DBRIDGE_BUILD_TESTS=OFF > build-fuzz.log 2>&1 || { tail -30 build-fuzz.log; exit 1; }
ninja -C build-fuzz $(for t in $targets; do echo fuzz-$t; done) >> build-fuzz.log 2>&1 || { tail -30 build-fuzz.log; exit 1; }
run() {
  local t=$1
  local work=build-fuzz/corpus/$t crashes=build-fuzz/crashes/$t
  mkdir -p "$work" "$crashes"
  ./build-fuzz/tests/fuzz/fuzz-$t "$work" "tests/fuzz/corpus/$t" -max_total_time="$seconds" -timeout=20 \
    -rss_limit_mb=4096 -max_len=65536 -artifact_prefix="$crashes/" -print_final_stats=1 > "build-fuzz/$t.log" 2>&1
  local rc=$?
  local execs cov
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "build-fuzz/$t.log" | grep -o '[0-9]*$')
  cov=$(grep -o 'cov: [0-9]*' "build-fuzz/$t.log" | tail -1 | grep -o '[0-9]*')
  local found; found=$(ls "$crashes" | wc -l)
  echo "| $(date -u +%F) | $(git rev-parse --short HEAD) | $t | $seconds s | ${execs:-?} | ${cov:-?} | $found | $([ $rc = 0 ] && echo clean || echo "exit $rc") |" \
    >> tests/fuzz/RESULTS.md
  echo "$t: rc=$rc execs=${execs:-?} cov=${cov:-?} crashes=$found"
  return $rc
}
status=0
set -- $targets
while [ $# -gt 0 ]; do
  run "$1" & a=$!; b=
  if [ $# -gt 1 ]; then run "$2" & b=$!; shift; fi
  shift
  wait $a || status=1
  [ -n "$b" ] && { wait $b || status=1; }
done
exit $status
