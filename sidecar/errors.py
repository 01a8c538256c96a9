"""The sidecar's one small error tree, and its mapping to OpenAI-shaped error bodies.

``SidecarError`` → ``VerificationFailed`` (the evidence is bad) → ``VerificationIncomplete``
(could not decide: collateral unreachable, timeout). A broad ``except VerificationFailed``
therefore fails closed on both. Every error carries a stable dotted ``code`` string
(``signature.address_not_attested``, ``binding.nonce_mismatch``, …) that appears in the
OpenAI error body, the ``x-tee-failure`` header, logs and receipts.
"""

from __future__ import annotations

from typing import Any


class SidecarError(Exception):
    """Base of every error the sidecar raises on purpose.

    Attributes:
        code: stable machine-readable failure code.
        message: human-readable explanation, safe to show to the app (never secrets or prompts).
    """

    default_code = "sidecar.error"
    http_status = 500
    error_type = "tee_sidecar_error"

    def __init__(self, message: str, *, code: str | None = None,
                 http_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        if http_status is not None:
            self.http_status = http_status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ConfigError(SidecarError):
    """A setting or policy file is invalid; start-up stops."""

    default_code = "config.invalid"


class BadRequest(SidecarError):
    """The local client sent something the sidecar will not forward."""

    default_code = "request.invalid"
    http_status = 400
    error_type = "invalid_request_error"


class NotFound(SidecarError):
    """A path the sidecar does not serve (no silent pass-through)."""

    default_code = "request.unknown_path"
    http_status = 404
    error_type = "invalid_request_error"


class TooManyRequests(SidecarError):
    """A local client has more requests in flight than ``limits.max_concurrent_per_client``."""

    default_code = "limits.too_many_concurrent_requests"
    http_status = 429
    error_type = "rate_limit_error"


class UpstreamError(SidecarError):
    """The provider could not be reached or answered outside its contract."""

    default_code = "upstream.unavailable"
    http_status = 502
    error_type = "upstream_error"


class VerificationFailed(SidecarError):
    """The evidence is bad: a signature, binding, quote or policy check failed."""

    default_code = "verification.failed"
    http_status = 502
    error_type = "tee_verification_error"


class AttestationUnavailable(VerificationFailed):
    """The provider has no attestation for the model (its attestation endpoint answered 404).

    Its own type, so that ``allow_unattested_models`` can be decided on what happened rather
    than on a code string.
    """

    default_code = "attestation.unavailable"


class VerificationIncomplete(VerificationFailed):
    """Verification could not be decided (missing evidence, unreachable service, timeout).

    It subclasses ``VerificationFailed`` so that every handler fails closed on it.
    """

    default_code = "verification.incomplete"


def openai_error_body(error: SidecarError) -> dict[str, Any]:
    """Render ``error`` as the JSON body an OpenAI client expects.

    The OpenAI SDKs read ``error.message``, ``error.type`` and ``error.code``.
    """
    return {
        "error": {
            "message": f"tee-sidecar: {error.message}",
            "type": error.error_type,
            "param": None,
            "code": error.code,
        }
    }
