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
from sidecar.verify.signature import Role


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


@dataclass(frozen=True, slots=True)
class SignerRules:
    """What a provider profile lets sign a completion, beyond what a record itself says.

    Attributes:
        unkinded_roles: the attested roles that may sign a record without ``signature_kind``.
        accept_model_renamed: a request hash over the sent bytes with only the model renamed
            to the upstream's id is this provider's normal behaviour, not tampering.
    """

    unkinded_roles: frozenset[Role]
    accept_model_renamed: bool


def signer_rules(kind: ProviderKind) -> SignerRules:
    """The signer rules of a provider profile (spec 0.1, 0.2).

    NEAR (cloud and direct) and private-ml-sdk nodes sign with the model node's key when a record
    has no kind; RedPill/Phala ACI's legacy record is signed by the gateway's key (the report's
    top-level key). Only NanoGPT renames the model (``TEE/x`` → the upstream id) on the way in.
    """
    if kind is ProviderKind.REDPILL:
        return SignerRules(frozenset({"gateway"}), accept_model_renamed=False)
    return SignerRules(frozenset({"model"}), accept_model_renamed=kind is ProviderKind.NANOGPT)
