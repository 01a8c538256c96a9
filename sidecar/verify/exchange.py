"""One saved or relayed exchange, checked as a whole: request bytes, response bytes, signature record.

The proxy has the three as bytes once a completion ends; ``tee-sidecar verify`` reads them from
files. Both go through ``verify_exchange`` so that the offline re-check is the proxy's check.
Sans-I/O: bytes and what attestation established in, a ``CompletionSignatureReport`` out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import replace

from sidecar.errors import VerificationFailed
from sidecar.providers.wire import parse_signature_record
from sidecar.verify.checks import Check
from sidecar.verify.signature import (
    AttestedSigner,
    CompletionSignatureReport,
    Role,
    verify_completion_signature,
)


def verify_exchange(
    request_body: bytes,
    response_body: bytes,
    record_body: bytes,
    *,
    attested: Mapping[str, AttestedSigner],
    expected_model: str | None,
    unkinded_roles: Collection[Role],
    accept_model_renamed: bool,
) -> CompletionSignatureReport:
    """Verify one exchange: parse the record, hash both bodies, run the signature recipe.

    Args:
        request_body: the exact request bytes sent upstream.
        response_body: the exact response bytes received (for SSE, through ``data: [DONE]``).
        record_body: the signature endpoint's answer, as returned.
        attested, expected_model, unkinded_roles, accept_model_renamed: as for
            ``verify_completion_signature``.

    Returns:
        The report, its first check ``signature.record``. A record that does not parse (or the
        provider's final "no signature", ``signature.unavailable``) is a report with that one
        failed check; bad evidence never raises.
    """
    try:
        record = parse_signature_record(record_body)
    except VerificationFailed as exc:
        return CompletionSignatureReport(
            (Check.failed("signature.record", exc.code, exc.message),), None, "ecdsa")
    parsed = Check.passed("signature.record", f"{record.signing_algo} record"
                          + (f", signature_kind {record.signature_kind}"
                             if record.signature_kind is not None else ", no signature_kind"))
    report = verify_completion_signature(
        record.completion_signature(),
        request_sha256=hashlib.sha256(request_body).hexdigest(),
        response_sha256=hashlib.sha256(response_body).hexdigest(),
        attested=attested, expected_model=expected_model, unkinded_roles=unkinded_roles,
        request_body=request_body, accept_model_renamed=accept_model_renamed)
    return replace(report, checks=(parsed, *report.checks))
