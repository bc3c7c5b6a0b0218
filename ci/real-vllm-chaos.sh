#!/usr/bin/env bash
# The chaos catalogue's real-vLLM subset: every scenario with a `real_vllm:` block, run by the pytest plugin
# against real `vllm serve` (.venv-vllm, installed by ci/real-vllm.sh) on a tiny model built here, now.
#
# The rest of the catalogue is collected and skipped. The lane fails unless at least MIN_RUN scenarios ran and
# passed: it never turns green by skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VLLM_VENV:-.venv-vllm}
MIN_RUN=${MIN_RUN:-4}
REPORT=${REPORT:-reports/real-vllm/chaos}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
"$VENV/bin/python" tests/real_vllm/tiny_model.py "$work/tiny-llama" >/dev/null
mkdir -p "$REPORT"
.venv/bin/pytest -p no:cacheprovider -m chaos scenarios/ \
    --chaos-vllm "$VENV/bin/vllm" --chaos-vllm-model "$work/tiny-llama" --chaos-vllm-flags "--max-model-len 256" \
    --chaos-report-dir "$REPORT" --junitxml "$REPORT/junit.xml" -o timeout=900
.venv/bin/python - "$REPORT/junit.xml" "$MIN_RUN" <<'PY'
import sys
import xml.etree.ElementTree as ET

suite = ET.parse(sys.argv[1]).getroot()
suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
ran = int(suite.get("tests")) - int(suite.get("skipped")) - int(suite.get("failures")) - int(suite.get("errors"))
if ran < int(sys.argv[2]):
    sys.exit(f"real-vllm-chaos: only {ran} scenario(s) ran and passed on real vLLM; at least {sys.argv[2]} must")
print(f"real-vllm-chaos: {ran} scenario(s) passed on real vLLM")
PY
