"""The simulator's PCS: Intel PCS v4 collateral endpoints, served from the test DCAP authority.

With ``attestation.pccs_url = http://127.0.0.1:PORT/pcs`` the sidecar's own
:class:`sidecar.proxy.collateral.CollateralSource` fetches collateral for simulator quotes
exactly as it does from Intel, and the verifier checks it against the simulator's TEST root.

Routes (relative to ``prefix``), with the shapes of Intel's PCS v4 API and of a PCCS:

- ``GET /sgx/certification/v4/pckcrl?ca=platform[&encoding=der]``: the PCK CRL (DER with
  ``encoding=der``, else PEM), header ``SGX-PCK-CRL-Issuer-Chain``.
- ``GET /sgx/certification/v4/rootcacrl``: the root CA CRL, hex-encoded DER (as PCCS serves it).
- ``GET /tdx/certification/v4/tcb?fmspc=<hex>``: ``{"tcbInfo": {…}, "signature": "<hex>"}``,
  header ``TCB-Info-Issuer-Chain``; 404 for an FMSPC the authority does not have.
- ``GET /tdx/certification/v4/qe/identity``: ``{"enclaveIdentity": {…}, "signature": "<hex>"}``,
  header ``SGX-Enclave-Identity-Issuer-Chain``.

Issuer chains are URL-encoded PEM, as Intel sends them.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Awaitable, Callable

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sidecar.simulator.tdx_authority import TestTdxAuthority

__all__ = ["add_pcs_routes"]

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _chain_header(pem: str) -> str:
    return urllib.parse.quote(pem, safe="")


def add_pcs_routes(
    app: web.Application,
    authority: TestTdxAuthority,
    prefix: str = "/pcs",
    *,
    clock: Callable[[], float] = time.time,
) -> None:
    """Add the PCS v4 collateral endpoints of ``authority`` to ``app`` under ``prefix``.

    Args:
        app: the simulator's application.
        authority: the test DCAP authority whose collateral is served.
        prefix: URL path prefix (``""`` serves at the root).
        clock: unix time source; collateral is issued valid from ``clock() - 1 h`` for 30 days.
    """
    prefix = prefix.rstrip("/")

    async def pck_crl(request: web.Request) -> web.StreamResponse:
        if request.query.get("ca") != "platform":
            # The simulated PCK leaf is issued by the platform CA only; Intel answers 400 for an
            # unknown ca and 404 for a CA without this platform, either way no CRL.
            raise web.HTTPNotFound(text="unknown PCK CA")
        der = authority.pck_crl_der(int(clock()))
        headers = {"SGX-PCK-CRL-Issuer-Chain": _chain_header(authority.pck_crl_issuer_chain_pem)}
        if request.query.get("encoding") == "der":
            return web.Response(body=der, content_type="application/pkix-crl", headers=headers)
        pem = x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM).decode()
        return web.Response(text=pem, content_type="application/x-pem-file", headers=headers)

    async def root_ca_crl(request: web.Request) -> web.StreamResponse:
        return web.Response(text=authority.root_ca_crl_der(int(clock())).hex())

    async def tcb_info(request: web.Request) -> web.StreamResponse:
        if request.query.get("fmspc", "").upper() != authority.fmspc:
            raise web.HTTPNotFound(text="no TCB info for this FMSPC")
        signed = authority.tcb_info_json(int(clock()))
        body = f'{{"tcbInfo":{signed},"signature":"{authority.sign_tcb_data(signed)}"}}'
        return web.Response(
            text=body,
            content_type="application/json",
            headers={"TCB-Info-Issuer-Chain": _chain_header(authority.tcb_issuer_chain_pem)},
        )

    async def qe_identity(request: web.Request) -> web.StreamResponse:
        signed = authority.qe_identity_json(int(clock()))
        body = f'{{"enclaveIdentity":{signed},"signature":"{authority.sign_tcb_data(signed)}"}}'
        return web.Response(
            text=body,
            content_type="application/json",
            headers={
                "SGX-Enclave-Identity-Issuer-Chain": _chain_header(authority.tcb_issuer_chain_pem)
            },
        )

    routes: list[tuple[str, _Handler]] = [
        ("/sgx/certification/v4/pckcrl", pck_crl),
        ("/sgx/certification/v4/rootcacrl", root_ca_crl),
        ("/tdx/certification/v4/tcb", tcb_info),
        ("/tdx/certification/v4/qe/identity", qe_identity),
    ]
    for path, handler in routes:
        app.router.add_get(f"{prefix}{path}", handler)
