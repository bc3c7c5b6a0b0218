#!/usr/bin/env bash
# The whole pytest suite: unit, property, real-process, API, chaos catalogue (and docker when a daemon runs).
set -euo pipefail
cd "$(dirname "$0")/.."
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"
# Two workers: most tests wait on real processes and sockets, so two halve the wall time on two cores.
# PYTEST_WORKERS=0 runs everything in this process (pytest-xdist's own meaning of -n 0).
exec .venv/bin/pytest -n "${PYTEST_WORKERS:-2}" "$@"
