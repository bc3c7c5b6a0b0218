#!/usr/bin/env bash
# The pure decision core (every module of supervisor/core/, diagnosis included) is fully covered, branches
# included, by its own fast tests; anything less fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"
exec .venv/bin/pytest -q -p no:llm_chaos \
    tests/supervisor/test_policy.py tests/supervisor/test_machine.py tests/supervisor/test_machine_model.py \
    tests/supervisor/test_clock.py tests/supervisor/test_owner_loop.py tests/supervisor/test_diagnosis.py \
    tests/supervisor/test_machine_stalled.py tests/supervisor/test_machine_stop_output.py tests/supervisor/test_adapt.py \
    tests/supervisor/test_machine_memory.py \
    --cov=supervisor.core --cov-branch --cov-report=term-missing:skip-covered --cov-fail-under=100
