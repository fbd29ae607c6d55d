#!/usr/bin/env bash
# The main job on the embedded default (see scripts/main-job.sh), after
# installing what is missing and building.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
exec scripts/main-job.sh build
