"""The whole simulated provider on one port: completions, attestation, PCS collateral and NRAS.

Paths: each profile at ``PROFILE_PREFIX`` (NanoGPT under ``/api/v1``, private-ml-sdk under ``/v1``,
NEAR Cloud under ``/near-cloud``, a NEAR node under ``/near-direct``, RedPill under ``/redpill``;
or one ``profile`` at the root), Intel-PCS-shaped
collateral under ``/pcs``, an NRAS-shaped GPU verifier under ``/nras``, and the fault switch at
``/_simulator/faults``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web

from sidecar.simulator.evidence import SimulatedEvidence
from sidecar.simulator.nras import add_nras_routes
from sidecar.simulator.pcs import add_pcs_routes
from sidecar.simulator.provider import SimulatedProvider, build_simulator_app


def build_simulator(*, nodes: int = 1, api_key: str | None = None,
                    clock: Callable[[], float] = time.time,
                    profile: str | None = None) -> tuple[web.Application, SimulatedProvider]:
    """A ready simulator app and its state (for faults and inspection).

    Raises:
        ValueError: ``profile`` is not a key of ``PROFILE_PREFIX``.
    """
    evidence = SimulatedEvidence()
    provider = SimulatedProvider(evidence=evidence, node_count=nodes, api_key=api_key)
    app = build_simulator_app(provider, profile=profile)
    add_pcs_routes(app, evidence.authority, "/pcs")
    add_nras_routes(app, evidence.nras, "/nras", clock=clock)
    return app, provider
