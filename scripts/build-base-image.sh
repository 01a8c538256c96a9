#!/usr/bin/env bash
# Build a Python 3.11 base image from Debian's own packages with debootstrap, for machines that
# cannot pull python:3.11-slim-bookworm (air-gapped, or a registry allow-list that admits only
# Debian and PyPI). `make image` falls back to it; the Dockerfile takes it as
# --build-arg PYTHON_IMAGE=<tag>.
#
#   sudo bash scripts/build-base-image.sh [--force] [TAG]     # default TAG: see BASE_TAG below
#
# What the image holds: Debian bookworm "minbase" (dpkg, apt, coreutils, passwd's useradd)
# plus python3.11, python3.11-venv (ensurepip, which the Dockerfile's `python -m venv` needs)
# and ca-certificates (the sidecar reaches the provider, Intel PCS and NVIDIA NRAS over TLS with
# the system store). `python` and `python3` are linked in /usr/local/bin, where the official
# image has them, so the Dockerfile runs unchanged on either base. Documentation, man pages,
# locales and apt's lists are dropped to keep it small.
#
# Cached: when an image with TAG exists and carries the label tee-sidecar.base.recipe equal to
# this script's sha256, nothing is rebuilt (CI builds it once for both deploy tests). --force
# rebuilds anyway (for security updates: the packages are whatever the mirror serves today).
#
# Needs root (debootstrap), debootstrap and a running Docker engine. Environment:
#   DEBIAN_MIRROR  (default http://deb.debian.org/debian)   SUITE (default bookworm)
#   DOCKER         (default docker)
set -euo pipefail
cd "$(dirname "$0")/.."

readonly BASE_TAG_DEFAULT="tee-sidecar-base:python3.11-bookworm"
readonly MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
readonly SUITE="${SUITE:-bookworm}"
# python3-distutils provides the virtual python3.11-distutils that python3.11-venv depends on,
# which debootstrap's resolver does not follow by itself.
readonly PACKAGES="python3.11,python3.11-venv,python3-distutils,ca-certificates"
DOCKER="${DOCKER:-docker}"

force=0
if [[ "${1:-}" == "--force" ]]; then force=1; shift; fi
tag="${1:-$BASE_TAG_DEFAULT}"

recipe=$(sha256sum "$0" | cut -d' ' -f1)
if (( ! force )); then
    have=$($DOCKER image inspect --format '{{ index .Config.Labels "tee-sidecar.base.recipe" }}' \
        "$tag" 2>/dev/null || true)
    if [[ "$have" == "$recipe" ]]; then
        echo "build-base-image: $tag is up to date (recipe ${recipe:0:12}); --force rebuilds"
        exit 0
    fi
fi

for tool in debootstrap tar; do
    command -v "$tool" >/dev/null || { echo "build-base-image: missing $tool (apt-get install debootstrap)" >&2; exit 127; }
done
[[ "$(id -u)" == 0 ]] || { echo "build-base-image: debootstrap needs root" >&2; exit 1; }

root=$(mktemp -d /var/tmp/tee-sidecar-base.XXXXXX)
trap 'rm -rf "$root"' EXIT

echo "build-base-image: debootstrap $SUITE from $MIRROR (+ ${PACKAGES//,/ })"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" \
    >"$root.log" 2>&1 || { tail -n 30 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"

# Where the official python image keeps its interpreter, so PATH and the venv's `home` agree.
ln -s /usr/bin/python3.11 "$root/usr/local/bin/python3.11"
ln -s python3.11 "$root/usr/local/bin/python3"
ln -s python3.11 "$root/usr/local/bin/python"
# apt inside an image: no recommends, no documentation (what debian:*-slim images configure).
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    >"$root/etc/apt/apt.conf.d/90tee-sidecar-base"
printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\npath-exclude /usr/share/locale/*\npath-include /usr/share/locale/locale.alias\n' \
    >"$root/etc/dpkg/dpkg.cfg.d/90tee-sidecar-base"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/var/log/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/tmp/* "$root"/root/.cache
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
find "$root/usr/lib/python3.11" -name __pycache__ -prune -exec rm -rf {} +
# debootstrap copies the build host's resolver and hostname; Docker provides its own.
: >"$root/etc/resolv.conf"
: >"$root/etc/hostname"

tar --numeric-owner --xattrs -C "$root" -c . | $DOCKER import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL tee-sidecar.base.recipe=$recipe" \
    --change "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase with python3.11 (debootstrap)\"" \
    --change 'CMD ["python3"]' \
    - "$tag" >/dev/null
echo "build-base-image: built $tag ($($DOCKER image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
