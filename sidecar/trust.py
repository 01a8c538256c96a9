"""Trust anchors shipped in the package: Intel's SGX root CA, or the simulator's test roots.

``production`` trusts Intel's SGX Root CA (``anchors/intel_sgx_root_ca.der``) for quotes and
NVIDIA's NRAS issuer, whose JWKS is fetched over TLS from ``attestation.nvidia_jwks_url``.
``simulator`` trusts the built-in simulator's test root CA and its pinned JWKS. Those keys are
public, so evidence under them proves nothing about real hardware: the sidecar warns loudly at
start-up and marks every response's evidence as simulated in logs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from sidecar.config import TrustAnchors
from sidecar.issuers import NVIDIA_NRAS_ISSUER, SIMULATOR_NRAS_ISSUER
from sidecar.verify.attestation import TrustRoots

SIMULATOR_WARNING = (
    "TRUST ANCHORS ARE THE SIMULATOR'S TEST ROOTS: evidence signed by public test keys is "
    "accepted. Never use trust.anchors = \"simulator\" for real traffic."
)


@dataclass(frozen=True, slots=True)
class LoadedAnchors:
    """The roots, plus a pinned JWKS when NRAS keys are not fetched (simulator)."""

    roots: TrustRoots
    pinned_jwks: dict[str, Any] | None


def _anchor_bytes(name: str) -> bytes:
    return resources.files("sidecar").joinpath("anchors", name).read_bytes()


def load_anchors(kind: TrustAnchors) -> LoadedAnchors:
    """Load the anchors of ``kind`` from the package."""
    if kind is TrustAnchors.SIMULATOR:
        return LoadedAnchors(
            TrustRoots(_anchor_bytes("simulator_tdx_root_ca.der"), SIMULATOR_NRAS_ISSUER,
                       simulated=True),
            json.loads(_anchor_bytes("simulator_nras_jwks.json")),
        )
    return LoadedAnchors(TrustRoots(_anchor_bytes("intel_sgx_root_ca.der"), NVIDIA_NRAS_ISSUER),
                         None)
