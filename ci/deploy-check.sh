#!/usr/bin/env bash
# The shipped alert rules and dashboard: `promtool check rules` and the rules' unit tests, and valid JSON.
# (tests/supervisor/test_deploy.py checks the systemd unit, and that every metric they name is served.)
# promtool comes from Debian's prometheus package, which ci/setup-system.sh installs; without it this check
# fails under CI (CI=true) and is skipped, loudly, elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v promtool >/dev/null 2>&1; then
    promtool check rules deploy/prometheus/alerts.yaml
    promtool test rules deploy/prometheus/alerts.test.yaml
elif [ "${CI:-}" = "true" ]; then
    echo "deploy-check: promtool not found; run ci/setup-system.sh (apt-get install prometheus)" >&2
    exit 1
else
    echo "deploy-check: SKIPPED the alert rules: promtool not found (apt-get install prometheus)" >&2
fi
.venv/bin/python -m json.tool deploy/grafana/llm-supervisor.json >/dev/null
echo "deploy-check: ok"
