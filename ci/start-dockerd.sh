#!/usr/bin/env bash
# Start a Docker daemon in the background unless one already answers; wait until it does.
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
command -v dockerd >/dev/null 2>&1 || { echo "dockerd not installed" >&2; exit 1; }
nohup dockerd >/tmp/dockerd.log 2>&1 &
for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then exit 0; fi
    sleep 0.5
done
echo "dockerd did not come up; see /tmp/dockerd.log" >&2
tail -n 20 /tmp/dockerd.log >&2 || true
exit 1
