"""Regenerate vectors.json (known-answer vectors of NEAR's E2EE envelopes, spec 0.5).

Made with the simulator's node-side code (``sidecar.simulator.e2ee_node``: cryptography +
pycryptodome, no libsodium), never with ``sidecar.e2ee``; ``tests/test_e2ee_interop.py`` also
opens every vector with NEAR's own SDK. Run: ``.venv/bin/python tests/assets/e2ee/make_vectors.py``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import coincurve
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sidecar.simulator.e2ee_node import montgomery_u, node_x25519_secret, seal

PLAINTEXTS = ["Hello, encrypted world!", "héllo ✓ 🔐 \u0000 \n\"quoted\"", "[104,105]",
              "x" * 300]


def label(text: str) -> bytes:
    return hashlib.sha256(f"tee-sidecar e2ee vector {text}".encode()).digest()


def main() -> None:
    vectors: dict[str, list[dict[str, str]]] = {"ed25519": [], "ecdsa": []}
    for i, plaintext in enumerate(PLAINTEXTS):
        seed, ephemeral, nonce = label(f"recipient {i}"), label(f"ephemeral {i}"), label(f"nonce {i}")
        public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        vectors["ed25519"].append({
            "recipient_seed": seed.hex(), "recipient_public": public.hex(),
            "recipient_x25519_secret": node_x25519_secret(seed).hex(),
            "recipient_x25519_public": montgomery_u(public).hex(),
            "ephemeral_secret": ephemeral.hex(), "nonce": nonce[:24].hex(),
            "plaintext": plaintext,
            "envelope": seal(plaintext, public, "ed25519", ephemeral_secret=ephemeral,
                             nonce=nonce[:24]),
        })
        ec_public = coincurve.PrivateKey(seed).public_key.format(compressed=False)[1:]
        vectors["ecdsa"].append({
            "recipient_secret": seed.hex(), "recipient_public": ec_public.hex(),
            "ephemeral_secret": ephemeral.hex(), "nonce": nonce[:12].hex(),
            "plaintext": plaintext,
            "envelope": seal(plaintext, ec_public, "ecdsa", ephemeral_secret=ephemeral,
                             nonce=nonce[:12]),
        })
    out = Path(__file__).with_name("vectors.json")
    out.write_text(json.dumps(vectors, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
