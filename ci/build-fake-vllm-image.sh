#!/usr/bin/env bash
# Build the fake-vLLM container image with no registry: a Debian root filesystem made by debootstrap from
# Debian's mirror is imported as a base image, then the project's runtime dependencies (from PyPI) and the
# fake_vllm package are committed on top. Idempotent: the image is tagged with a hash of everything it is
# made from, and a rebuild is skipped when that tag exists. The base tarball is cached under .docker-build/.
#
# Prints the image reference on the last line of stdout. Needs a running dockerd, and root for debootstrap
# unless the base tarball is cached. Exit status 3: this machine cannot build the image (no root/debootstrap).
set -euo pipefail
cd "$(dirname "$0")/.."

REPO=llm-supervisor/fake-vllm
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_PACKAGES=python3
CACHE=.docker-build
log() { echo "build-fake-vllm-image: $*" >&2; }

docker info >/dev/null 2>&1 || { log "no Docker daemon answers (start one: ci/start-dockerd.sh)"; exit 1; }

# The base changes only with these values; the app layer with the script, the launcher, the project's
# dependencies and the fake_vllm sources.
base_key=$(printf '%s\n' "$SUITE" minbase "$BASE_PACKAGES" | sha256sum | cut -c1-12)
app_key=$( {
    echo "$base_key"
    cat "$0" ci/docker/fake-vllm-launcher pyproject.toml
    find fake_vllm -name '*.py' -print0 | sort -z | xargs -0 cat
} | sha256sum | cut -c1-12)
base_ref="$REPO-base:$base_key"
app_ref="$REPO:$app_key"

if docker image inspect "$app_ref" >/dev/null 2>&1; then
    log "$app_ref is up to date"
    docker tag "$app_ref" "$REPO:latest"
    echo "$app_ref"
    exit 0
fi
started=$SECONDS
mkdir -p "$CACHE"

if ! docker image inspect "$base_ref" >/dev/null 2>&1; then
    tarball="$CACHE/base-$base_key.tar"
    if [ ! -s "$tarball" ]; then
        if ! command -v debootstrap >/dev/null 2>&1; then
            [ "$(id -u)" = 0 ] || { log "debootstrap is missing (apt-get install debootstrap)"; exit 3; }
            log "installing debootstrap"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
        fi
        [ "$(id -u)" = 0 ] || { log "debootstrap needs root to make the base root filesystem"; exit 3; }
        rootfs="$CACHE/rootfs-$base_key"
        rm -rf "$rootfs"
        log "debootstrap $SUITE (+ $BASE_PACKAGES) from $MIRROR"
        debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
            || { tail -n 20 "$CACHE/debootstrap.log" >&2; exit 1; }
        # Nothing in the image needs apt's caches, docs or translations: a smaller import is a faster one.
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
            "$rootfs"/usr/share/doc "$rootfs"/usr/share/man "$rootfs"/usr/share/locale
        tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
    fi
    log "importing $tarball as $base_ref"
    docker import --change 'CMD ["python3"]' "$tarball" "$base_ref" >/dev/null
fi

# Runtime dependencies of the project, for the image's Python (3.11, the same minor as the venv's).
app="$CACHE/app-$app_key"
rm -rf "$app"
mkdir -p "$app/app" "$app/bin"
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
mapfile -t deps < <("$PY" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
log "installing ${#deps[@]} dependencies into the app layer"
"$PY" -m pip install --quiet --disable-pip-version-check --no-compile --only-binary=:all: \
    --python-version 3.11 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --target "$app/site-packages" "${deps[@]}" 2> >(grep -v "^WARNING: Location" >&2)
cp -r fake_vllm "$app/app/"
find "$app" -name __pycache__ -prune -exec rm -rf {} +
install -m 0755 ci/docker/fake-vllm-launcher "$app/bin/fake-vllm"
install -m 0755 ci/docker/fake-vllm-launcher "$app/bin/vllm"

ctr=$(docker create "$base_ref")
trap 'docker rm -f "$ctr" >/dev/null 2>&1 || true' EXIT
docker cp "$app/." "$ctr:/opt/fake-vllm"
docker commit \
    --change 'ENV PYTHONPATH=/opt/fake-vllm/app:/opt/fake-vllm/site-packages' \
    --change 'ENV PATH=/opt/fake-vllm/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PYTHONUNBUFFERED=1' \
    --change 'ENTRYPOINT ["fake-vllm"]' \
    --change 'CMD ["serve", "fake-model", "--host", "0.0.0.0", "--port", "8000"]' \
    --change 'EXPOSE 8000/tcp' \
    "$ctr" "$app_ref" >/dev/null
rm -rf "$app"
docker tag "$app_ref" "$REPO:latest"
# Older builds of the app layer are dead weight once the sources moved on.
docker images "$REPO" --format '{{.Repository}}:{{.Tag}}' | grep -v -e ":$app_key\$" -e ':latest$' \
    | xargs -r docker rmi >/dev/null 2>&1 || true
log "built $app_ref in $((SECONDS - started)) s"
echo "$app_ref"
