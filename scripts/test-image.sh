#!/usr/bin/env bash
# `make test-image`: the container image, built and run as a user would, against the built-in
# simulator.
#
#   1. build the image (scripts/build-image.sh: the local Debian base when the public one
#      cannot be pulled) and check its metadata: user 10001, HEALTHCHECK, no CA bundle in it;
#   2. start `tee-sidecar simulate` on the host (127.0.0.1, a free port);
#   3. run the image read-only, --cap-drop ALL, no-new-privileges, on the host network, with the
#      shipped config and only environment overrides (simulator URLs and trust anchors, free
#      ports), the API key as a read-only file, and a host directory as the state volume;
#   4. wait for Docker's own HEALTHCHECK to report healthy; check the process runs as uid 10001
#      with no capabilities;
#   5. scripts/deploy_check.py: plain and streamed completions verified through the openai SDK, a
#      tampered one blocked;
#   6. receipts on the volume; the API key in no log line;
#   7. `docker stop`: exit status 0, the log says it stopped, and
#      `tee-sidecar receipts verify` checks the flushed log (3 receipts: 2 verified, 1 failed).
#
# When Docker cannot run it prints "SKIPPED: why" and exits 0 (never a silent pass).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/docker-lib.sh
source scripts/docker-lib.sh

PY=.venv/bin/python
reason=$(docker_engine_reason)
[[ -z "$reason" ]] || skip "make test-image: $reason"
docker_pick
# The image needs a base: the public one, or the local Debian one (debootstrap, as root).
if [[ -z "${PYTHON_IMAGE:-}" ]]; then
    reason=$(local_base_reason tee-sidecar-base:python3.11-bookworm)
    if [[ -n "$reason" ]] && ! "$DOCKER" image inspect python:3.11-slim-bookworm >/dev/null 2>&1 \
            && ! timeout 120 "$DOCKER" pull --quiet python:3.11-slim-bookworm >/dev/null 2>&1; then
        skip "make test-image: python:3.11-slim-bookworm cannot be pulled and $reason"
    fi
fi

version=$(sed -nE 's/^version = "([^"]+)"/\1/p' pyproject.toml | head -n1)
export IMAGE="${IMAGE:-tee-sidecar:$version}"
name="tee-sidecar-test-image-$$"
work=$(mktemp -d)
sim_pid=""
cleanup() {
    "$DOCKER" rm -f "$name" >/dev/null 2>&1 || true
    [[ -z "$sim_pid" ]] || kill "$sim_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
fail() {
    echo "test-image: FAIL: $*" >&2
    if "$DOCKER" inspect "$name" >/dev/null 2>&1; then
        echo "--- container log (last 30 lines)" >&2
        "$DOCKER" logs --tail 30 "$name" >&2 2>&1 || true
    fi
    exit 1
}
step() { echo "== $*"; }

# (1) Build and inspect.
step "build"
bash scripts/build-image.sh
user=$("$DOCKER" image inspect --format '{{.Config.User}}' "$IMAGE")
[[ "$user" == "10001:10001" ]] || fail "image user is '$user', expected 10001:10001"
health=$("$DOCKER" image inspect --format '{{json .Config.Healthcheck.Test}}' "$IMAGE")
[[ "$health" == *"/livez"* ]] || fail "image HEALTHCHECK does not ask /livez: $health"
if "$DOCKER" run --rm --entrypoint sh "$IMAGE" -c \
        'test -e /run/secrets/ca_bundle || env | grep -q PIP_CERT' >/dev/null 2>&1; then
    fail "the build's CA bundle reached the image"
fi
echo "image $IMAGE: user $user, HEALTHCHECK on /livez, no build CA bundle inside"

# (2) The simulator on the host.
step "simulator"
sim_port=$(free_port); port=$(free_port); admin_port=$(free_port)
"$PY" -m sidecar simulate --port "$sim_port" >"$work/simulator.log" 2>&1 &
sim_pid=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$sim_port") 2>/dev/null && break
    kill -0 "$sim_pid" 2>/dev/null || fail "the simulator exited: $(cat "$work/simulator.log")"
    sleep 0.1
done
sim="http://127.0.0.1:$sim_port"
echo "simulator on $sim"

# (3) The sidecar in the container. The state directory is a host directory owned by the
# image's uid, so receipts can be read here after the container is gone.
step "run (read-only, --cap-drop ALL, no-new-privileges, host network)"
mkdir -m 0700 "$work/state"
chown 10001:10001 "$work/state"
api_key="sk-test-image-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
printf '%s\n' "$api_key" >"$work/api_key"
chown 10001:10001 "$work/api_key"; chmod 0400 "$work/api_key"
"$DOCKER" run -d --name "$name" \
    --read-only --cap-drop ALL --security-opt no-new-privileges \
    --network host --stop-timeout 45 \
    -v "$work/state:/var/lib/tee-sidecar" \
    -v "$work/api_key:/run/secrets/api_key:ro" \
    -e TEE_SIDECAR_UPSTREAM__API_KEY_FILE=/run/secrets/api_key \
    -e TEE_SIDECAR_UPSTREAM__BASE_URL="$sim/api" \
    -e TEE_SIDECAR_ATTESTATION__PCCS_URL="$sim/pcs" \
    -e TEE_SIDECAR_ATTESTATION__NRAS_URL="$sim/nras/v3/attest/gpu" \
    -e TEE_SIDECAR_ATTESTATION__NVIDIA_JWKS_URL="$sim/nras/.well-known/jwks.json" \
    -e TEE_SIDECAR_TRUST__ANCHORS=simulator \
    -e TEE_SIDECAR_LISTEN__PORT="$port" \
    -e TEE_SIDECAR_ADMIN__PORT="$admin_port" \
    -e TEE_SIDECAR_ADMIN__HOST=127.0.0.1 \
    "$IMAGE" >/dev/null
# (On the host network the admin listener is moved back to loopback: 0.0.0.0 there would be the
# host's interfaces, not a container's.)

# (4) Healthy by the image's own HEALTHCHECK (first probe after its 30 s interval).
step "wait for the HEALTHCHECK"
status=""
for _ in $(seq 60); do
    status=$("$DOCKER" inspect --format '{{.State.Health.Status}}' "$name" 2>/dev/null || echo gone)
    [[ "$status" == healthy ]] && break
    [[ "$status" == starting ]] || fail "container health is '$status'"
    sleep 1
done
[[ "$status" == healthy ]] || fail "not healthy after 60 s (health: $status)"
pid=$("$DOCKER" inspect --format '{{.State.Pid}}' "$name")
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")
capeff=$(awk '/^CapEff:/ { print $2 }' "/proc/$pid/status")
[[ "$uid" == 10001 ]] || fail "the sidecar runs as uid $uid"
[[ "$capeff" == 0000000000000000 ]] || fail "the sidecar has capabilities $capeff"
# Even root in the container cannot write the image's files: the root filesystem is read-only.
[[ "$("$DOCKER" inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$name")" == true ]] \
    || fail "the container's root filesystem is not read-only"
"$DOCKER" exec -u 0 "$name" sh -c ': >/etc/tee-sidecar/probe' 2>/dev/null \
    && fail "the root filesystem is writable"
echo "healthy; pid $pid runs as uid $uid with CapEff $capeff; root filesystem read-only"

# (5) What the app sees.
step "completions through the openai SDK"
"$PY" scripts/deploy_check.py --base-url "http://127.0.0.1:$port/v1" --simulator "$sim" \
    || fail "deploy_check"

# (6) Receipts on the volume, the key in no log.
step "receipts on the volume"
receipts="$work/state/receipts/receipts.jsonl"
[[ -s "$receipts" ]] || fail "no receipts at $receipts"
echo "$(wc -l <"$receipts") receipts in the volume (receipts/receipts.jsonl)"
if "$DOCKER" logs "$name" 2>&1 | grep -qF "$api_key"; then fail "the API key is in the log"; fi

# (7) Stop: SIGTERM, exit 0, receipts flushed and valid.
step "docker stop"
"$DOCKER" stop -t 45 "$name" >/dev/null
code=$("$DOCKER" inspect --format '{{.State.ExitCode}}' "$name")
[[ "$code" == 0 ]] || fail "exit status $code after docker stop"
"$DOCKER" logs "$name" 2>&1 | grep -q '"stopped"' || fail "no 'stopped' line in the log"
echo "exit status 0; the log ends with: $("$DOCKER" logs "$name" 2>&1 | tail -n1 | cut -c1-160)"
verify=$("$PY" -m sidecar receipts verify "$receipts") || fail "receipts verify: $verify"
echo "\$ tee-sidecar receipts verify receipts.jsonl"
echo "$verify"
[[ "$verify" == *"3 receipts: 2 verified, 1 recorded as failed, 0 INVALID"* ]] \
    || fail "expected 3 receipts (2 verified, 1 recorded as failed)"

echo "test-image: PASSED"
