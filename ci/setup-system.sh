#!/usr/bin/env bash
# Root-only set-up for CI: install what the docker- and browser-marked tests, the FluidMCP tests and
# ci/deploy-check.sh need, and start dockerd.
set -euo pipefail
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)  # builds the fake-vllm image (no registry)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)  # promtool checks deploy/prometheus (ci/deploy-check.sh)
command -v jq >/dev/null 2>&1 || need+=(jq curl)  # FluidMCP's documented curl | jq lines, run by the tests
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
ci/start-dockerd.sh
