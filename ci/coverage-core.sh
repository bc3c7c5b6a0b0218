#!/usr/bin/env bash
# The pure decision core is fully covered (branches included) by its own fast tests; anything less fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"
exec .venv/bin/pytest -q \
    tests/supervisor/test_policy.py tests/supervisor/test_machine.py tests/supervisor/test_machine_model.py \
    tests/supervisor/test_clock.py tests/supervisor/test_owner_loop.py \
    --cov=supervisor.core.policy --cov=supervisor.core.machine --cov=supervisor.core.machine_types --cov=supervisor.core.clock \
    --cov-branch --cov-report=term-missing:skip-covered --cov-fail-under=100
