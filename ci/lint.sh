#!/usr/bin/env bash
# Lint: ruff rules and formatting drift.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check supervisor fake_vllm chaos tests bench
