#!/usr/bin/env bash
# The whole pytest suite: unit, property, real-process, API, chaos catalogue (and docker when a daemon runs).
set -euo pipefail
cd "$(dirname "$0")/.."
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"
exec .venv/bin/pytest "$@"
