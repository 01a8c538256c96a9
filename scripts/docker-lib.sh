# Shared by scripts/build-image.sh, test-image.sh and test-systemd.sh (sourced, not run).
#
# docker_pick: set DOCKER to a client that can build with BuildKit (the Dockerfile's secret
# mount needs it). A client >= 23 builds with BuildKit through its buildx plugin and refuses
# DOCKER_BUILDKIT=1 without one; a client < 23 (Debian bookworm's docker.io is 20.10) has
# BuildKit built in behind DOCKER_BUILDKIT=1. So: the first client on PATH with buildx, else the
# first one older than 23, each checked by what it reports, not by its path.
# docker_engine_reason: print why the engine cannot be used, or nothing when it can.
# build_ca_bundle: the CA bundle pip inside a build should trust, or nothing.

docker_pick() {
    local candidate version
    export DOCKER_BUILDKIT=1
    for candidate in ${DOCKER:-} docker /usr/bin/docker /usr/local/bin/docker; do
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" buildx version >/dev/null 2>&1; then DOCKER=$candidate; return 0; fi
        version=$("$candidate" version --format '{{.Client.Version}}' 2>/dev/null || true)
        if [[ "$version" =~ ^([0-9]+)\. ]] && (( BASH_REMATCH[1] < 23 )); then
            DOCKER=$candidate; return 0
        fi
    done
    DOCKER=""
    return 1
}

docker_engine_reason() {
    if ! command -v docker >/dev/null 2>&1 && [[ ! -x /usr/bin/docker ]]; then
        echo "no docker client (Debian: apt-get install docker.io)"; return
    fi
    if ! docker_pick; then
        echo "no docker client that builds with BuildKit (a client >= 23 needs the buildx plugin)"
        return
    fi
    local err
    if ! err=$("$DOCKER" info --format '{{.ServerVersion}}' 2>&1 >/dev/null); then
        echo "the Docker engine does not answer (start dockerd as root): ${err%%$'\n'*}"; return
    fi
}

# The first of $BUILD_CA_BUNDLE (set but empty: none), $PIP_CERT, $SSL_CERT_FILE, and Debian's
# system bundle: the build trusts what this machine trusts, which is what a TLS-intercepting
# proxy needs. It is passed as a BuildKit secret, so it never lands in an image.
build_ca_bundle() {
    if [[ -n "${BUILD_CA_BUNDLE+set}" ]]; then echo "$BUILD_CA_BUNDLE"; return; fi
    local candidate
    for candidate in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
        if [[ -n "$candidate" && -r "$candidate" ]]; then echo "$candidate"; return; fi
    done
}

# local_base_reason TAG: why the local Debian base (scripts/build-base-image.sh) can be neither
# reused nor built here, or nothing.
local_base_reason() {
    "$DOCKER" image inspect "$1" >/dev/null 2>&1 && return
    if [[ "$(id -u)" != 0 ]]; then
        echo "the local Debian base $1 must be built, and debootstrap needs root"
    elif ! command -v debootstrap >/dev/null 2>&1; then
        echo "the local Debian base $1 must be built, and debootstrap is missing (apt-get install debootstrap)"
    fi
}

# skip WHY: the loud line CI and people look for, then exit 0. Never a silent pass.
skip() {
    echo "" >&2
    echo "SKIPPED: $*" >&2
    echo "" >&2
    exit 0
}

# A free TCP port on 127.0.0.1 (the kernel's choice; racy only against other processes that
# bind in the next instants, which the caller's start-up check catches).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
