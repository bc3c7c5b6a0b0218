#!/usr/bin/env bash
# Types: mypy strict over the three packages.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/mypy
