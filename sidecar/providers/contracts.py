"""Provider profiles: where each provider serves reports and signatures, and how (spec 0.1).

| profile          | attestation                                   | signature                          |
|------------------|-----------------------------------------------|------------------------------------|
| `nanogpt`        | `/v1/tee/attestation?model=&nonce=&signing_algo=` under `/api` | `/v1/tee/signature/{id}?model=&signing_algo=` (`model` required) |
| `private-ml-sdk` | `/v1/attestation/report?model=&nonce=&signing_algo=` | `/v1/signature/{id}?signing_algo=` |
| `near-cloud`     | the same path; API key required since 2026-07; `signing_address=` selects a node | the same; records carry `signature_kind` |
| `near-direct`    | the same path on one model node; `signing_address=` selects it | the same; no `signature_kind` |
| `redpill`        | legacy `/v1/attestation/report?...&version=1` (Phala ACI gateway) | legacy `/v1/signature/{id}`, gateway key |

NEAR attests with ed25519 unless asked otherwise while it signs with ecdsa by default (spec 0.4), so
every profile asks for the very algorithm the sidecar verifies, on both endpoints. Completions and
models are the same OpenAI paths everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from sidecar.config import ProviderKind
from sidecar.providers.wire import Role


@dataclass(frozen=True, slots=True)
class ProviderProfile:
    """What differs between providers on the wire.

    Attributes:
        kind: the profile's name.
        attestation_path, signature_prefix: the TEE endpoints under the base URL.
        attestation_query: fixed query parameters of the attestation endpoint (ACI's legacy
            ``version``: 1 binds key ‖ nonce, the binding this verifier checks; spec 0.1).
        selects_signer: the attestation endpoint honours ``signing_address=`` (spec 0.4), so a
            signature by a key the cache lacks can be attested by that key.
        canonical_model: the provider resolves aliases by rewriting the answer (NEAR, spec 0.2):
            the sidecar sends the attested canonical id with ``x-no-aliasing: true`` instead.
        e2ee: the model nodes accept field-level end-to-end encryption to their attested
            ``signing_public_key`` (NEAR, spec 0.5); elsewhere ``e2ee`` is ``unavailable``.
    """

    kind: ProviderKind
    attestation_path: str
    signature_prefix: str
    attestation_query: tuple[tuple[str, str], ...] = ()
    selects_signer: bool = False
    canonical_model: bool = False
    e2ee: bool = False


PROFILES: dict[ProviderKind, ProviderProfile] = {
    ProviderKind.NANOGPT: ProviderProfile(
        ProviderKind.NANOGPT, "/v1/tee/attestation", "/v1/tee/signature/"),
    ProviderKind.PRIVATE_ML_SDK: ProviderProfile(
        ProviderKind.PRIVATE_ML_SDK, "/v1/attestation/report", "/v1/signature/"),
    ProviderKind.NEAR_CLOUD: ProviderProfile(
        ProviderKind.NEAR_CLOUD, "/v1/attestation/report", "/v1/signature/", selects_signer=True, canonical_model=True,
        e2ee=True),
    ProviderKind.NEAR_DIRECT: ProviderProfile(
        ProviderKind.NEAR_DIRECT, "/v1/attestation/report", "/v1/signature/", selects_signer=True, canonical_model=True,
        e2ee=True),
    ProviderKind.REDPILL: ProviderProfile(
        ProviderKind.REDPILL, "/v1/attestation/report", "/v1/signature/", attestation_query=(("version", "1"),)),
}

# Header NEAR honours to answer an alias with 400 instead of rewriting the body (spec 0.2).
NO_ALIASING_HEADER = "x-no-aliasing"


@dataclass(frozen=True, slots=True)
class ProviderContract:
    """URL builder for one provider's endpoints."""

    kind: ProviderKind
    base_url: str

    @property
    def profile(self) -> ProviderProfile:
        """This provider's profile."""
        return PROFILES[self.kind]

    def openai_url(self, path: str) -> str:
        """The upstream URL of an OpenAI path such as ``/v1/chat/completions``."""
        return self.base_url + path

    def attestation_url(self, model: str, nonce: str, signing_algo: str,
                        signing_address: str | None = None) -> tuple[str, dict[str, str]]:
        """URL and query of the attestation report for ``model`` bound to ``nonce``.

        ``signing_address`` asks for the node holding that key (profiles with ``selects_signer``).
        """
        profile = self.profile
        query = {"model": model, "nonce": nonce, "signing_algo": signing_algo,
                 **dict(profile.attestation_query)}
        if signing_address is not None and profile.selects_signer:
            query["signing_address"] = signing_address
        return self.base_url + profile.attestation_path, query

    def signature_url(self, chat_id: str, model: str, signing_algo: str) -> tuple[str, dict[str, str]]:
        """URL and query of the signature of completion ``chat_id``.

        The id comes from the untrusted response; it is percent-encoded so it cannot change
        the path (``sse.chat_id_of`` already restricts its characters). ``model`` is required by
        NanoGPT and ignored by NEAR and ACI (spec 0.3).
        """
        url = self.base_url + self.profile.signature_prefix + quote(chat_id, safe="")
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

    A record without ``signature_kind`` is signed by a key the report attests as a model-serving
    node: NEAR's and private-ml-sdk's model nodes, and RedPill/Phala ACI's legacy key, which the
    report's flat top-level entry carries together with the GPU evidence of the node it fronts
    (Dstack-TEE/private-ai-gateway ``src/http/app/handlers.rs``), so it is attested, GPU
    requirement included, like a node. Only NEAR Cloud's gateway-kind records name its separate
    gateway attestation. Only NanoGPT renames the model (``TEE/x`` → the upstream id) on the way in.
    """
    return SignerRules(frozenset({"model"}), accept_model_renamed=kind is ProviderKind.NANOGPT)
