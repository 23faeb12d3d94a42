#!/usr/bin/env bash
# Build the operator, example-worker and import-worker images (the ones `make images` builds
# without Docker, as docker-archive tars; this script is for machines with Docker and a registry).
#
#   bash images/build.sh [TAG]                 # base image python:3.11-slim (needs a registry)
#   BASE=local bash images/build.sh [TAG]      # base made here with debootstrap (no registry needed)
#
# Wheels of the package and its dependencies are built on the host first, so pip in the image build
# needs no network; tini comes from the base (BASE=local) or from Debian's mirror (apt-get). Needs Docker; `BASE=local` also needs debootstrap (Debian packages
# docker.io and debootstrap; this script installs them with apt-get when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-0.1.0}
BASE=${BASE:-python:3.11-slim}
LOCAL_BASE=jobbatch-base:bookworm

need() { command -v "$1" >/dev/null || { [ "$(id -u)" = 0 ] && apt-get install -y -qq "$2" >/dev/null; } || { echo "needs $1 (Debian package $2)" >&2; exit 1; }; }
need docker docker.io
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || apt-get install -y -qq docker.io >/dev/null
  echo "starting dockerd"; (dockerd >/tmp/jobbatch-dockerd.log 2>&1 &)
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi

if [ "$BASE" = local ]; then
  if ! docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
    need debootstrap debootstrap
    rootfs=$(mktemp -d)
    echo "building $LOCAL_BASE with debootstrap"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,tini bookworm "$rootfs" >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import - "$LOCAL_BASE" >/dev/null
    rm -rf "$rootfs"
  fi
  BASE=$LOCAL_BASE
fi

IMPORT_REQUIREMENTS=$(python3 -m e2e.images requirements jobbatch-import-worker)  # pinned in e2e/images.py
rm -rf images/wheels && mkdir -p images/wheels
# shellcheck disable=SC2086  # the pins are words
python3 -m pip wheel --quiet --wheel-dir images/wheels . ./sdk $IMPORT_REQUIREMENTS  # sdk/: jobbatch-worker
build() {  # NAME DOCKERFILE [BUILD-ARG...]
  local name=$1 file=$2; shift 2
  docker build --quiet --build-arg "BASE=$BASE" "$@" -f "$file" -t "$name:$TAG" . >/dev/null
  echo "built $name:$TAG (base $BASE)"
}
build jobbatch-operator images/operator.Dockerfile
build jobbatch-example-worker images/worker.Dockerfile --build-arg WORKER=examples/worker/worker.py
build jobbatch-import-worker images/worker.Dockerfile --build-arg WORKER=examples/06-import/worker.py \
  --build-arg "REQUIREMENTS=$IMPORT_REQUIREMENTS"
