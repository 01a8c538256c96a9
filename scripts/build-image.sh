#!/usr/bin/env bash
# `make image`: build the tee-sidecar container image from the Dockerfile.
#
#   bash scripts/build-image.sh            # tags tee-sidecar:<version> (IMAGE= to change)
#
# Base image: $PYTHON_IMAGE when set; else python:3.11-slim-bookworm when it is present or can
# be pulled; else (air-gapped, or a registry allow-list) the local Debian base that
# scripts/build-base-image.sh builds with debootstrap, which it then builds or reuses.
#
# CA bundle for pip inside the build (a TLS-intercepting proxy in front of PyPI): the file
# named by $BUILD_CA_BUNDLE, else $PIP_CERT, else $SSL_CERT_FILE, else the system bundle
# /etc/ssl/certs/ca-certificates.crt (scripts/docker-lib.sh, build_ca_bundle). It is passed as
# the BuildKit secret ca_bundle, mounted for the one RUN that installs, never written to a
# layer. Set BUILD_CA_BUNDLE= (empty) to pass none.
#
# Exits non-zero when Docker cannot run (`make image` is asked for explicitly; the deploy tests
# skip instead).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/docker-lib.sh
source scripts/docker-lib.sh

version=$(sed -nE 's/^version = "([^"]+)"/\1/p' pyproject.toml | head -n1)
IMAGE="${IMAGE:-tee-sidecar:$version}"
readonly PUBLIC_BASE="python:3.11-slim-bookworm"
readonly LOCAL_BASE="tee-sidecar-base:python3.11-bookworm"

reason=$(docker_engine_reason)
if [[ -n "$reason" ]]; then
    echo "build-image: cannot build: $reason" >&2
    exit 1
fi
docker_pick

base="${PYTHON_IMAGE:-}"
if [[ -z "$base" ]]; then
    if "$DOCKER" image inspect "$PUBLIC_BASE" >/dev/null 2>&1 \
            || timeout 120 "$DOCKER" pull --quiet "$PUBLIC_BASE" >/dev/null 2>&1; then
        base=$PUBLIC_BASE
    else
        echo "build-image: cannot pull $PUBLIC_BASE: using the local Debian base $LOCAL_BASE"
        DOCKER=$DOCKER bash scripts/build-base-image.sh "$LOCAL_BASE"
        base=$LOCAL_BASE
    fi
fi

ca=$(build_ca_bundle)
secret=()
if [[ -n "$ca" ]]; then
    [[ -r "$ca" ]] || { echo "build-image: CA bundle $ca is not readable" >&2; exit 1; }
    secret=(--secret "id=ca_bundle,src=$ca")
fi

echo "build-image: $IMAGE on $base${ca:+ (pip trusts $ca, as a build secret)}"
start=$SECONDS
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! "$DOCKER" build --progress=plain "${secret[@]}" --build-arg "PYTHON_IMAGE=$base" \
        -t "$IMAGE" . >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "build-image: docker build failed" >&2
    exit 1
fi
size=$("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE")
echo "build-image: built $IMAGE in $((SECONDS - start)) s: $(awk -v s="$size" 'BEGIN { printf "%.0f MB", s / 1e6 }') uncompressed"
