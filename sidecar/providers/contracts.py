"""Where each provider serves attestation reports and signatures (spec section 1).

NanoGPT exposes ``/v1/tee/attestation`` and ``/v1/tee/signature/{id}`` under its ``/api`` base;
the private-ml-sdk (``vllm-proxy``: NEAR AI Cloud, RedPill, Phala) exposes
``/v1/attestation/report`` and ``/v1/signature/{id}``. Completions and models are the same
OpenAI paths on both.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from sidecar.config import ProviderKind


@dataclass(frozen=True, slots=True)
class ProviderContract:
    """URL builder for one provider's TEE endpoints."""

    kind: ProviderKind
    base_url: str

    def openai_url(self, path: str) -> str:
        """The upstream URL of an OpenAI path such as ``/v1/chat/completions``."""
        return self.base_url + path

    def attestation_url(self, model: str, nonce: str, signing_algo: str) -> tuple[str, dict[str, str]]:
        """URL and query of the attestation report for ``model`` bound to ``nonce``."""
        path = "/v1/tee/attestation" if self.kind is ProviderKind.NANOGPT else "/v1/attestation/report"
        return self.base_url + path, {"model": model, "nonce": nonce, "signing_algo": signing_algo}

    def signature_url(self, chat_id: str, model: str, signing_algo: str) -> tuple[str, dict[str, str]]:
        """URL and query of the signature of completion ``chat_id``.

        The id comes from the untrusted response; it is percent-encoded so it cannot change
        the path (``sse.chat_id_of`` already restricts its characters).
        """
        prefix = "/v1/tee/signature/" if self.kind is ProviderKind.NANOGPT else "/v1/signature/"
        url = self.base_url + prefix + quote(chat_id, safe="")
        return url, {"model": model, "signing_algo": signing_algo}
