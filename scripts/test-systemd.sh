#!/usr/bin/env bash
# `make test-systemd`: systemd/tee-sidecar.service run under a live systemd (PID 1 of a
# container built from the same Debian base as the image), against the built-in simulator.
#
#   1. build the wheel, and the test image (scripts/systemd-test/Dockerfile): Debian's systemd,
#      the wheel installed as the unit's header says, the shipped unit and settings;
#   2. boot it: systemd as PID 1, its own network namespace (--network none: loopback only, so
#      the unit keeps its shipped ports 8787/8788 and nothing leaves the container);
#   3. put the key file in place for LoadCredential= (0600 root), start the simulator as a
#      transient DynamicUser service, and a drop-in pointing the sidecar at it (environment only:
#      upstream and attestation URLs, simulator trust anchors);
#   4. `systemctl start tee-sidecar`, then scripts/deploy_check.py through it (the openai SDK:
#      plain and streamed completions verified, a tampered one blocked);
#   5. `systemctl show` proves DynamicUser, the state and cache directories and the sandboxing
#      properties; /proc proves them on the running process; the key is in no log, no property
#      and not in the environment;
#   6. `systemd-analyze security tee-sidecar` on the live unit (exposure <= 2.0);
#   7. a probe from inside the unit's cgroup says whether SocketBindDeny= is enforced here;
#   8. `systemctl restart`: the receipts survive and the chain goes on (receipts verify);
#   9. `systemctl stop`: the service exits 0, its log says it stopped, the receipts verify.
#
# When Docker cannot run it prints "SKIPPED: why" and exits 0 (never a silent pass).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/docker-lib.sh
source scripts/docker-lib.sh

readonly BASE="tee-sidecar-base:python3.11-bookworm"
readonly TEST_IMAGE="tee-sidecar-systemd-test:latest"
readonly MAX_EXPOSURE="2.0"
readonly RECEIPTS=/var/lib/private/tee-sidecar/receipts/receipts.jsonl
PY=.venv/bin/python

reason=$(docker_engine_reason)
[[ -z "$reason" ]] || skip "make test-systemd: $reason"
docker_pick
reason=$(local_base_reason "$BASE")
[[ -z "$reason" ]] || skip "make test-systemd: $reason"

name="tee-sidecar-test-systemd-$$"
work=$(mktemp -d)
cleanup() {
    "$DOCKER" rm -f "$name" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
fail() {
    echo "test-systemd: FAIL: $*" >&2
    if "$DOCKER" inspect "$name" >/dev/null 2>&1; then
        echo "--- journal of tee-sidecar.service (last 30 lines)" >&2
        "$DOCKER" exec "$name" journalctl -u tee-sidecar --no-pager -n 30 >&2 2>&1 || true
    fi
    exit 1
}
step() { echo "== $*"; }
in_c() { "$DOCKER" exec "$name" "$@"; }

# (1) The wheel and the test image.
step "build"
DOCKER=$DOCKER bash scripts/build-base-image.sh "$BASE"
"$PY" -m pip wheel --quiet --no-deps --wheel-dir "$work/context" . >/dev/null 2>&1 \
    || fail "pip wheel ."
cp systemd/tee-sidecar.service systemd/tee-sidecar.toml scripts/deploy_check.py \
    scripts/systemd-test/Dockerfile "$work/context/"
ca=$(build_ca_bundle)
secret=()
[[ -z "$ca" ]] || secret=(--secret "id=ca_bundle,src=$ca")
"$DOCKER" build --progress=plain "${secret[@]}" --build-arg "BASE_IMAGE=$BASE" \
    -t "$TEST_IMAGE" "$work/context" >"$work/build.log" 2>&1 \
    || { tail -n 40 "$work/build.log" >&2; fail "docker build of the systemd test image"; }
echo "built $TEST_IMAGE with $(ls "$work/context"/*.whl | xargs -n1 basename)"

# (2) Boot. SYS_ADMIN: systemd mounts the unit's namespaces. SYS_PTRACE: a host's PID 1 has
# every capability, and without this one ProtectProc=invisible hides the process whose user
# namespace PrivateUsers= is mapping from systemd's own helper (systemd issue #29656: "Failed to
# set up user namespacing: No such file or directory"). The cgroup tree is mounted writable so
# systemd can make the unit's cgroup below the container's own.
step "boot systemd as PID 1"
"$DOCKER" run -d --name "$name" --network none \
    --cap-add SYS_ADMIN --cap-add SYS_PTRACE \
    --tmpfs /run --tmpfs /run/lock --tmpfs /tmp \
    -v /sys/fs/cgroup:/sys/fs/cgroup:rw \
    "$TEST_IMAGE" >/dev/null
state=""
for _ in $(seq 60); do
    state=$(in_c systemctl is-system-running 2>/dev/null || true)
    [[ "$state" == running || "$state" == degraded ]] && break
    sleep 1
done
[[ "$state" == running || "$state" == degraded ]] || fail "systemd is '$state' after 60 s"
echo "PID 1: $(in_c cat /proc/1/comm), $(in_c systemctl --version | head -n1), system $state"

# (3) The key for LoadCredential=, the simulator, the drop-in.
step "key file, simulator, drop-in"
api_key="sk-test-systemd-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
printf '%s\n' "$api_key" | "$DOCKER" exec -i "$name" install -m 0600 /dev/stdin /etc/tee-sidecar/api_key
in_c systemd-run --quiet --unit tee-simulator -p DynamicUser=yes \
    /opt/tee-sidecar/bin/tee-sidecar simulate --port 8900
sim=http://127.0.0.1:8900
in_c mkdir -p /etc/systemd/system/tee-sidecar.service.d
"$DOCKER" exec -i "$name" sh -c "cat >/etc/systemd/system/tee-sidecar.service.d/50-simulator.conf" <<EOF
# Test only: the built-in simulator instead of NanoGPT, and its test trust anchors.
[Service]
Environment=TEE_SIDECAR_UPSTREAM__BASE_URL=$sim/api
Environment=TEE_SIDECAR_ATTESTATION__PCCS_URL=$sim/pcs
Environment=TEE_SIDECAR_ATTESTATION__NRAS_URL=$sim/nras/v3/attest/gpu
Environment=TEE_SIDECAR_ATTESTATION__NVIDIA_JWKS_URL=$sim/nras/.well-known/jwks.json
Environment=TEE_SIDECAR_TRUST__ANCHORS=simulator
EOF
in_c systemctl daemon-reload

wait_ready() {  # the admin listener's /readyz answers 200
    for _ in $(seq 100); do
        if in_c /opt/tee-sidecar/bin/python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8788/readyz', timeout=1)" 2>/dev/null; then
            return 0
        fi
        in_c systemctl is-failed --quiet tee-sidecar && fail "tee-sidecar.service failed"
        sleep 0.2
    done
    fail "tee-sidecar.service not ready after 20 s"
}
check_completions() {
    in_c /opt/test-client/bin/python /opt/test-client/deploy_check.py \
        --base-url http://127.0.0.1:8787/v1 --simulator "$sim" || fail "deploy_check"
}

# (4) Start and use it.
step "systemctl start tee-sidecar"
in_c systemctl start tee-sidecar || fail "systemctl start"
wait_ready
echo "$(in_c systemctl is-active tee-sidecar); main PID $(in_c systemctl show -p MainPID --value tee-sidecar)"
check_completions

# (5) What systemd applied, and what the process shows.
step "systemctl show"
show=$(in_c systemctl show tee-sidecar -p DynamicUser,StateDirectory,CacheDirectory,ProtectSystem,ProtectHome,PrivateTmp,PrivateDevices,PrivateUsers,PrivateMounts,NoNewPrivileges,CapabilityBoundingSet,AmbientCapabilities,RestrictAddressFamilies,MemoryDenyWriteExecute,LockPersonality,RestrictNamespaces,RestrictRealtime,ProtectKernelTunables,ProtectKernelModules,ProtectKernelLogs,ProtectControlGroups,ProtectClock,ProtectHostname,ProtectProc,ProcSubset,SystemCallArchitectures,UMask,RemoveIPC,KeyringMode)
echo "$show"
for expected in DynamicUser=yes StateDirectory=tee-sidecar CacheDirectory=tee-sidecar \
        ProtectSystem=strict ProtectHome=yes PrivateTmp=yes PrivateDevices=yes PrivateUsers=yes \
        PrivateMounts=yes NoNewPrivileges=yes CapabilityBoundingSet= AmbientCapabilities= \
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX" MemoryDenyWriteExecute=yes \
        LockPersonality=yes RestrictNamespaces=yes RestrictRealtime=yes \
        ProtectKernelTunables=yes ProtectKernelModules=yes ProtectKernelLogs=yes \
        ProtectControlGroups=yes ProtectClock=yes ProtectHostname=yes ProtectProc=invisible \
        ProcSubset=pid SystemCallArchitectures=native UMask=0077 RemoveIPC=yes KeyringMode=private; do
    grep -qxF "$expected" <<<"$show" || fail "systemctl show: expected $expected"
done
pid=$(in_c systemctl show -p MainPID --value tee-sidecar)
status=$(in_c grep -E '^(Uid|CapEff|CapBnd|NoNewPrivs|Seccomp):' "/proc/$pid/status")
echo "$status" | tr '\t' ' '
uid=$(awk '/^Uid:/ { print $2 }' <<<"$status")
(( uid >= 61184 && uid <= 65519 )) || fail "uid $uid is not a dynamic user (61184-65519)"
grep -q '^CapEff:\s*0000000000000000$' <<<"$status" || fail "the process has capabilities"
grep -q '^NoNewPrivs:\s*1$' <<<"$status" || fail "no_new_privs is not set"
grep -q '^Seccomp:\s*2$' <<<"$status" || fail "no seccomp filter"
for dir in /var/lib/private/tee-sidecar /var/cache/private/tee-sidecar; do
    owner=$(in_c stat -c %u "$dir") || fail "$dir is missing"
    [[ "$owner" == "$uid" ]] || fail "$dir is owned by $owner, not the dynamic user $uid"
done
echo "state and cache directories owned by the dynamic user $uid; $(in_c sh -c "wc -l <$RECEIPTS") receipts"
# (Outputs are captured before grep reads them: grep -q exiting early would fail the pipeline.)
environ=$(in_c sh -c "tr '\0' '\n' </proc/$pid/environ")
grep -q '^CREDENTIALS_DIRECTORY=' <<<"$environ" \
    || fail "no CREDENTIALS_DIRECTORY in the service's environment"
exposed=$(in_c sh -c "systemctl show tee-sidecar; journalctl --no-pager")
if grep -qF "$api_key" <<<"$environ$exposed"; then
    fail "the API key is in the environment, a unit property or the journal"
fi
echo "the key reached the service as a credential only (not in its environment, properties or journal)"

# (6) The live security score.
step "systemd-analyze security tee-sidecar (live)"
security=$(in_c systemd-analyze security --no-pager tee-sidecar) || fail "systemd-analyze security"
exposure_line=$(grep -F "Overall exposure level" <<<"$security")
echo "$exposure_line"
exposure=$(sed -E 's/.*: ([0-9]+(\.[0-9]+)?).*/\1/' <<<"$exposure_line")
awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e + 0 <= m + 0) }' \
    || fail "live exposure $exposure is above $MAX_EXPOSURE"

# (7) SocketBindDeny=any is a cgroup-BPF program, which systemd attaches only on the unified
# (v2) cgroup hierarchy. A process moved into the unit's cgroup tries to bind a port the unit
# does not allow: reported, not failed, because it depends on the host's cgroup setup.
step "probe: SocketBindDeny= from inside the unit's cgroup"
cgroup=$(in_c awk -F: '$1 == 0 { print $3 }' "/proc/$pid/cgroup")
probe=$(in_c /opt/tee-sidecar/bin/python -c '
import os, socket, sys
with open("/sys/fs/cgroup/unified" + sys.argv[1] + "/cgroup.procs", "w") as procs:
    procs.write(str(os.getpid()))
try:
    socket.socket().bind(("127.0.0.1", 9999))
    print("bind tcp:9999 allowed: SocketBindDeny= is NOT enforced on this host")
except OSError as exc:
    print(f"bind tcp:9999 refused ({exc.strerror}): SocketBindDeny= is enforced")
' "$cgroup" 2>&1 || true)
if [[ "$(stat -fc %T /sys/fs/cgroup/)" == cgroup2fs ]]; then hierarchy="cgroup v2"; else hierarchy="cgroup v1 or hybrid"; fi
echo "$probe ($hierarchy)"

# (8) Restart: receipts kept, the chain continues.
step "systemctl restart tee-sidecar"
before=$(in_c sh -c "wc -l <$RECEIPTS")
in_c systemctl restart tee-sidecar || fail "systemctl restart"
wait_ready
check_completions
after=$(in_c sh -c "wc -l <$RECEIPTS")
(( after == before + 3 )) || fail "receipts: $before before the restart, $after after (expected +3)"
echo "receipts: $before before the restart, $after after"

# (9) Stop: exit 0, receipts flushed and valid.
step "systemctl stop tee-sidecar"
in_c systemctl stop tee-sidecar || fail "systemctl stop"
result=$(in_c systemctl show tee-sidecar -p Result -p ExecMainStatus -p ActiveState)
echo "$result" | tr '\n' ' '; echo
grep -qx 'Result=success' <<<"$result" || fail "stop result: $result"
grep -qx 'ExecMainStatus=0' <<<"$result" || fail "exit status: $result"
journal=$(in_c journalctl -u tee-sidecar --no-pager -o cat)
grep -q '"event": "stopped"' <<<"$journal" || fail "no 'stopped' line in the journal"
echo "\$ tee-sidecar receipts verify $RECEIPTS"
verify=$(in_c /opt/tee-sidecar/bin/tee-sidecar receipts verify "$RECEIPTS") \
    || fail "receipts verify: $verify"
echo "$verify"
[[ "$verify" == *"6 receipts: 4 verified, 2 recorded as failed, 0 INVALID"* ]] \
    || fail "expected 6 receipts (4 verified, 2 recorded as failed) across the restart"

"$DOCKER" stop -t 30 "$name" >/dev/null
echo "test-systemd: PASSED"
