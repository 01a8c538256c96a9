# tee-sidecar container image. `make image` builds it (scripts/build-image.sh); by hand:
#
#   DOCKER_BUILDKIT=1 docker build -t tee-sidecar:0.1.0 .
#   docker run --rm --read-only --cap-drop=ALL --security-opt=no-new-privileges \
#     --tmpfs /var/lib/tee-sidecar:uid=10001,gid=10001,mode=0700 \
#     -e TEE_SIDECAR_UPSTREAM__API_KEY_FILE=/run/secrets/api_key \
#     -v "$PWD/api_key:/run/secrets/api_key:ro" -p 127.0.0.1:8788:8788 tee-sidecar:0.1.0
#
# Needs BuildKit (the default builder since Docker 23; DOCKER_BUILDKIT=1 before that) for the
# secret mount below.
#
# Base: python:3.11-slim-bookworm, or, where it cannot be pulled, the image that
# scripts/build-base-image.sh builds from Debian's packages with debootstrap
# (--build-arg PYTHON_IMAGE=tee-sidecar-base:python3.11-bookworm). Both keep python3.11 on the
# same path in both stages, so the venv's interpreter link (/usr/local/bin/python) resolves in
# the final stage. Every dependency ships binary wheels for linux/amd64 and linux/arm64, so
# neither stage needs a compiler; the install refuses source builds (--only-binary) so a
# missing wheel fails the build instead of silently needing one.
# Pin the base by digest (python:3.11-slim-bookworm@sha256:…) in your registry mirror.
#
# A TLS-intercepting proxy between the build and PyPI: hand pip its CA bundle as a BuildKit
# secret, `--secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt`. A secret is mounted
# for the one RUN that needs it and is never written to a layer, so the bundle stays out of
# both stages and out of the image's history.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: build the wheel, install it and its dependencies into /opt/tee-sidecar --------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml ./
COPY sidecar ./sidecar
RUN --mount=type=secret,id=ca_bundle,required=false \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && python -m venv /opt/tee-sidecar \
 && /opt/tee-sidecar/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && /opt/tee-sidecar/bin/pip install --no-cache-dir --only-binary=:all: /wheels/tee_sidecar-*.whl \
 && /opt/tee-sidecar/bin/pip uninstall --yes --quiet pip setuptools

# ---- final: the venv and the example config, nothing else ----------------------------------
# (pip and setuptools were uninstalled from the venv above: the service installs nothing at run
# time, and they were a quarter of its size.)
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tee-sidecar" \
      org.opencontainers.image.description="Local proxy that verifies confidential-AI providers" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric UID/GID, so Kubernetes' runAsNonRoot can check it without /etc/passwd and
# volume ownership (fsGroup, --tmpfs uid=) can name it.
ARG UID=10001
RUN groupadd --system --gid "${UID}" tee-sidecar \
 && useradd --system -l --uid "${UID}" --gid "${UID}" --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin tee-sidecar \
 && install -d -m 0700 -o "${UID}" -g "${UID}" /var/lib/tee-sidecar

COPY --from=builder /opt/tee-sidecar /opt/tee-sidecar
COPY config/tee-sidecar.toml /etc/tee-sidecar/tee-sidecar.toml

# STATE_DIRECTORY is the default of state.dir (sidecar/config.py), as under systemd. Mount a
# writable volume there when the root filesystem is read-only.
#
# Listeners: the proxy stays on 127.0.0.1 (the config's default) even in a container, because
# it adds the provider API key to everything it relays: binding 0.0.0.0 would hand the key to
# every peer on the container network. Apps reach it by sharing the network namespace (a
# Kubernetes pod, or `docker run --network container:tee-sidecar`). If the app must connect
# from outside, opt in with -e TEE_SIDECAR_LISTEN__HOST=0.0.0.0 and publish the port to
# loopback only (-p 127.0.0.1:8787:8787).
# The admin listener holds no secret and must answer kubelet probes, which arrive on the pod
# IP, not on loopback: it binds 0.0.0.0 here.
ENV PATH=/opt/tee-sidecar/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STATE_DIRECTORY=/var/lib/tee-sidecar \
    TEE_SIDECAR_ADMIN__HOST=0.0.0.0

USER 10001:10001
EXPOSE 8787/tcp 8788/tcp

# The slim image has no curl: ask /livez with the standard library. A non-2xx answer raises.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TEE_SIDECAR_ADMIN__PORT', '8788') + '/livez', timeout=4)"]

# SIGTERM: stop accepting, finish in-flight streams within a bound, flush receipts, exit 0.
# Give the runtime a longer grace period than that bound (docker stop -t 45).
STOPSIGNAL SIGTERM
ENTRYPOINT ["tee-sidecar"]
CMD ["serve", "--config", "/etc/tee-sidecar/tee-sidecar.toml"]
