#!/usr/bin/env bash
# Build the trainer image where a registry and a package index may be missing, and cache it:
#   DOCKER_HOST=... docker/build.sh [--image trainer|trainer-gpu] [--base auto|registry|debootstrap]
#                                   [--pip wheelhouse|index] [--force] [--no-cache] [--rebuild-base]
# Base (--base): `registry` uses BASE_IMAGE (python:3.11-slim-bookworm) from the registry; `debootstrap`
# builds a Debian bookworm base from the Debian mirror of this machine's apt sources and imports it as
# edgetpu-retrain/base:bookworm (needs root + debootstrap); `auto` (default) takes BASE_IMAGE when it
# is local or can be pulled, else debootstrap.
# Packages (--pip): `wheelhouse` (default) runs `pip download` on the host (the host's pip config and CA
# trust apply) into the build context and builds with --network none; `index` lets pip inside the build
# use the network index (--network host; pass PIP_INDEX_URL in the environment for a mirror).
# The image is tagged edgetpu-retrain/<image>:<content hash> (+ :latest): the hash covers the
# Dockerfile, the base image, requirements.txt, pyproject.toml and include/, so a build is skipped when
# none of them changed (--force rebuilds; --no-cache also skips the layer cache). Last stdout line: IMAGE=<tag>.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${EDGETPU_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgetpu-retrain/build}"
PYTHON="${PYTHON:-$( [ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || command -v python3)}"
REGISTRY_BASE="${BASE_IMAGE:-python:3.11-slim-bookworm}"
LOCAL_BASE="edgetpu-retrain/base:bookworm"
image=trainer base_mode=auto pip_mode=wheelhouse force=0 rebuild_base=0 no_cache=0

say() { echo "build: $*" >&2; }
die() { say "$*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }
exists() { docker image inspect "$1" >/dev/null 2>&1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --image) image="$2"; shift 2 ;;
        --base) base_mode="$2"; shift 2 ;;
        --pip) pip_mode="$2"; shift 2 ;;
        --force) force=1; shift ;;
        --no-cache) force=1 no_cache=1; shift ;;  # also no layer cache (a cold build)
        --rebuild-base) rebuild_base=1; shift ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see $0 --help)" ;;
    esac
done
case "$image" in trainer) flavor=cpu ;; trainer-gpu) flavor=gpu ;; *) die "--image: trainer or trainer-gpu" ;; esac
case "$base_mode" in auto|registry|debootstrap) ;; *) die "--base: auto, registry or debootstrap" ;; esac
case "$pip_mode" in wheelhouse|index) ;; *) die "--pip: wheelhouse or index" ;; esac
DOCKERFILE="$REPO/docker/Dockerfile.$image"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
    || die "no Docker engine at ${DOCKER_HOST:-the default socket}: run docker/engine.sh start and export its DOCKER_HOST"
# Without the buildx plugin the CLI falls back to the legacy builder anyway; say so once, quietly.
docker buildx version >/dev/null 2>&1 || export DOCKER_BUILDKIT=0
mkdir -p "$CACHE"
# One build at a time per cache folder (two test sessions share the staged context and the tags).
exec 9>"$CACHE/build.lock"
flock 9

# The Debian mirror of this machine: EDGETPU_DEBIAN_MIRROR, else the first apt source serving bookworm.
debian_mirror() {
    [ -n "${EDGETPU_DEBIAN_MIRROR:-}" ] && { echo "$EDGETPU_DEBIAN_MIRROR"; return; }
    local found
    found="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '
        /^URIs:/ {uri = $2} /^Suites:/ {for (i = 2; i <= NF; i++) if ($i == "bookworm") ok = 1}
        /^$/ {if (ok && uri) {print uri; exit} uri = ""; ok = 0}
        END {if (ok && uri) print uri}' | head -n 1)"
    [ -n "$found" ] || found="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}')"
    echo "${found:-http://deb.debian.org/debian}"
}

debootstrap_base() {
    [ "$(id -u)" = 0 ] || die "debootstrap needs root (or pass --base registry)"
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2
    local rootfs="$CACHE/rootfs.tmp" mirror t0
    mirror="$(debian_mirror)"
    rm -rf "$rootfs"
    say "debootstrap bookworm from $mirror"
    t0="$(now)"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -n 20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
    say "debootstrap took $(since "$t0")s"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
    t0="$(now)"
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$LOCAL_BASE" >/dev/null
    rm -rf "$rootfs"
    say "imported $LOCAL_BASE in $(since "$t0")s ($(docker image inspect -f '{{.Size}}' "$LOCAL_BASE" | awk '{printf "%d MB", $1/1e6}'))"
}

pick_base() {
    if [ "$base_mode" != debootstrap ]; then
        if exists "$REGISTRY_BASE" || timeout 120 docker pull -q "$REGISTRY_BASE" >&2; then
            echo "$REGISTRY_BASE"; return
        fi
        [ "$base_mode" = registry ] && die "cannot pull $REGISTRY_BASE (no registry? try --base debootstrap)"
        say "no registry: building a local Debian base"
    fi
    if [ "$rebuild_base" = 1 ] || ! exists "$LOCAL_BASE"; then debootstrap_base; fi
    echo "$LOCAL_BASE"
}

# Wheels for the image's Python, downloaded on the host once per requirements (binary only: the
# build stage has no compilers). Prints the wheelhouse folder.
fill_wheelhouse() {
    local pyver="$1" reqs="$CACHE/requirements-$image.txt" key dir t0
    sh "$REPO/docker/trainer-requirements.sh" "$flavor" "$REPO/requirements.txt" >"$reqs"
    # the package's build backend too (pip install . in the build stage, no index)
    "$PYTHON" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"]))' \
        "$REPO/pyproject.toml" >>"$reqs"
    key="$( (cat "$reqs"; echo "python $pyver") | sha256sum | cut -c1-16)"
    dir="$CACHE/wheelhouse/$image-$key"
    if [ ! -f "$dir/.complete" ]; then
        rm -rf "$dir.tmp"
        say "pip download for Python $pyver into $dir"
        t0="$(now)"
        "$PYTHON" -m pip download --only-binary=:all: --python-version "$pyver" -r "$reqs" -d "$dir.tmp" \
            >"$CACHE/pip-download.log" 2>&1 \
            || { tail -n 20 "$CACHE/pip-download.log" >&2; die "pip download failed (log: $CACHE/pip-download.log)"; }
        rm -rf "$dir" && mv "$dir.tmp" "$dir" && touch "$dir/.complete"
        say "wheelhouse: $(ls "$dir" | wc -l) files, $(du -sm "$dir" | cut -f1) MB in $(since "$t0")s"
    fi
    echo "$dir"
}

# The build context: exactly the files the Dockerfile copies (+ the wheels, hard-linked when possible).
stage_context() {
    local ctx="$1" wheels="$2"
    rm -rf "$ctx" && mkdir -p "$ctx/docker/wheelhouse"
    cp "$REPO/requirements.txt" "$REPO/pyproject.toml" "$ctx/"
    cp "$REPO/docker/trainer-requirements.sh" "$ctx/docker/"
    cp "$REPO/docker/wheelhouse/README.md" "$ctx/docker/wheelhouse/"
    (cd "$REPO" && find include -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 \
        | xargs -0 cp --parents -t "$ctx")
    if [ -n "$wheels" ]; then
        cp -al "$wheels"/*.whl "$ctx/docker/wheelhouse/" 2>/dev/null || cp "$wheels"/*.whl "$ctx/docker/wheelhouse/"
    fi
}

content_hash() {
    local ctx="$1" base_id="$2"
    {
        echo "base $base_id"; echo "pip $pip_mode"; sha256sum "$DOCKERFILE" | cut -d' ' -f1
        (cd "$ctx" && find . -type f ! -name '*.whl' -print0 | sort -z | xargs -0 sha256sum)
        (cd "$ctx" && ls docker/wheelhouse)
    } | sha256sum | cut -c1-12
}

main() {
    local base base_id pyver wheels="" ctx="$CACHE/context-$image" tag latest="edgetpu-retrain/$image:latest"
    local t0 size
    base="$(pick_base)"
    base_id="$(docker image inspect -f '{{.Id}}' "$base")"
    pyver="$(docker run --rm --network none "$base" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    [ "$pip_mode" = wheelhouse ] && wheels="$(fill_wheelhouse "$pyver")"
    stage_context "$ctx" "$wheels"
    tag="edgetpu-retrain/$image:$(content_hash "$ctx" "$base_id")"
    if [ "$force" = 0 ] && exists "$tag"; then
        say "cached: $tag (base $base, inputs unchanged)"
    else
        local args=(--build-arg "BASE_IMAGE=$base" -f "$DOCKERFILE" -t "$tag")
        [ "$no_cache" = 1 ] && args+=(--no-cache)
        if [ "$pip_mode" = wheelhouse ]; then
            args+=(--network none --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/tmp/wheelhouse)
        else
            args+=(--network host)
            [ -n "${PIP_INDEX_URL:-}" ] && args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
        fi
        say "building $tag on $base"
        t0="$(now)"
        docker build --force-rm "${args[@]}" "$ctx" >"$CACHE/build-$image.log" 2>&1 \
            || { tail -n 30 "$CACHE/build-$image.log" >&2; die "docker build failed (log: $CACHE/build-$image.log)"; }
        say "built $tag in $(since "$t0")s"
        # keep the newest KEEP_BUILDS content tags (switching branches stays cached); older ones only hold disk
        docker image ls "edgetpu-retrain/$image" --format '{{.Repository}}:{{.Tag}}' \
            | grep -E ':[0-9a-f]{12}$' | grep -v -x "$tag" | tail -n "+${EDGETPU_KEEP_BUILDS:-3}" \
            | xargs -r docker rmi >/dev/null 2>&1 || true
    fi
    docker tag "$tag" "$latest"
    size="$(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
    say "$tag: $size"
    echo "IMAGE=$tag"
}

main
