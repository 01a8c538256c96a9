"""Who issues the evidence the sidecar fetches: the services' URLs and the NRAS token issuers.

A leaf module (it imports nothing of the sidecar), so the configuration's defaults, the trust
anchors, the NRAS client and the simulator all name the same values without importing each other.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "INTEL_PCS_URL",
    "NVIDIA_NRAS_ATTEST_URL",
    "NVIDIA_NRAS_ISSUER",
    "NVIDIA_NRAS_JWKS_URL",
    "SIMULATOR_NRAS_ISSUER",
]

#: Intel's Provisioning Certification Service (the default; a PCCS mirrors its API).
INTEL_PCS_URL: Final = "https://api.trustedservices.intel.com"

# NVIDIA's production service (provider-api.md §2 "GPU"; NVIDIA/attestation-sdk DEFAULT_BASE_URL).
NVIDIA_NRAS_ISSUER: Final = "https://nras.attestation.nvidia.com"
NVIDIA_NRAS_ATTEST_URL: Final = f"{NVIDIA_NRAS_ISSUER}/v3/attest/gpu"
NVIDIA_NRAS_JWKS_URL: Final = f"{NVIDIA_NRAS_ISSUER}/.well-known/jwks.json"

#: The issuer of the built-in simulator's NRAS tokens (a reserved ``.invalid`` name: no real
#: service can ever answer for it).
SIMULATOR_NRAS_ISSUER: Final = "https://nras.simulator.tee-sidecar.invalid"
