#!/usr/bin/env bash
# Lint: ruff's rules, then formatting drift (a file ruff would reformat fails the check).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check supervisor fake_vllm chaos tests bench
.venv/bin/ruff format --check supervisor fake_vllm chaos tests bench
