"""Interop with an independent implementation: NEAR's own ``nearai-inference-sdk`` (0.2.0).

The SDK needs Python 3.12+, so it lives in ``.venv-near`` (``make near-env``, a prerequisite of
``make test``) and is driven in a subprocess (``tests/interop/near_sdk_driver.py``). For both
schemes:

- what the SDK encrypts, the simulator's node side decrypts, and the SDK seals exactly the
  fields ``sidecar.e2ee`` seals;
- what the simulator's node encrypts, ``sidecar.e2ee`` and the SDK both decrypt to the same;
- what ``sidecar.e2ee`` encrypts to a model key, the SDK's decryption opens with the node's key
  (the SDK has no node-side function; its field decryption takes any secret);
- what the SDK seals to the sidecar's client key, ``sidecar.e2ee`` opens;
- the checked-in known-answer vectors open under the SDK.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar import e2ee
from sidecar.e2ee import ClientKeyPair
from sidecar.simulator import e2ee_node as node
from tests.test_e2ee import FULL_REQUEST, SCHEMES, VECTORS, Node, full_answer

ROOT = Path(__file__).resolve().parent.parent
NEAR_PYTHON = ROOT / ".venv-near" / "bin" / "python"
DRIVER = ROOT / "tests" / "interop" / "near_sdk_driver.py"


class NearSdk:
    """One long-lived SDK subprocess, JSON lines in and out."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [str(NEAR_PYTHON), str(DRIVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=sys.stderr, text=True, encoding="utf-8")

    def call(self, op: str, **args: Any) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the NEAR SDK driver exited (see stderr)"
        reply = json.loads(line)
        if "error" in reply:
            raise AssertionError(f"NEAR SDK refused {op}: {reply['error']}")
        return reply["ok"]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def sdk() -> Iterator[NearSdk]:
    if not NEAR_PYTHON.exists():
        pytest.skip("NEAR's SDK environment .venv-near is absent: `make near-env` creates it "
                    "when a Python 3.12+ interpreter exists (NEAR_PYTHON=...)")
    driver = NearSdk()
    yield driver
    driver.close()


@pytest.fixture(params=SCHEMES)
def scheme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def node_secret(model: Node) -> str:
    return node._secret_bytes(model.key).hex()


_ENVELOPE = re.compile(r"(?:[0-9a-f]{2}){72,}")


def sealed_shape(value: Any) -> Any:
    """``value`` with every envelope replaced by a marker: which fields are encrypted."""
    if isinstance(value, dict):
        return {k: sealed_shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [sealed_shape(v) for v in value]
    if isinstance(value, str) and _ENVELOPE.fullmatch(value):
        return "<sealed>"
    return value


def envelopes(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from envelopes(v)
    elif isinstance(value, list):
        for v in value:
            yield from envelopes(v)
    elif isinstance(value, str) and _ENVELOPE.fullmatch(value):
        yield value


def test_what_the_sdk_encrypts_the_simulated_node_decrypts(sdk: NearSdk, scheme: str) -> None:
    model = Node(scheme)
    sdk_wire = sdk.call("encrypt_request", body=FULL_REQUEST, public_key=model.public,
                        scheme=scheme)
    assert model.decrypt(sdk_wire) == FULL_REQUEST
    ours = e2ee.encrypt_request(FULL_REQUEST, model_public_key=model.public, scheme=scheme)
    assert sealed_shape(ours) == sealed_shape(sdk_wire)


def test_what_the_sidecar_encrypts_the_sdk_opens_with_the_node_key(sdk: NearSdk,
                                                                     scheme: str) -> None:
    model = Node(scheme)
    ours = e2ee.encrypt_request(FULL_REQUEST, model_public_key=model.public, scheme=scheme)
    opened = [sdk.call("decrypt_text", ciphertext=envelope, secret=node_secret(model),
                       scheme=scheme) for envelope in envelopes(ours)]
    assert len(opened) == 18  # every string 0.5 lists in FULL_REQUEST, "" included
    assert "You are terse." in opened and "{\"city\":\"Oslo\"}" in opened
    assert json.loads(opened[1])[0]["text"] == "What is in this image? ✓"


def test_what_the_node_encrypts_the_sidecar_and_the_sdk_decrypt_alike(sdk: NearSdk,
                                                                     scheme: str) -> None:
    secret = bytes(range(1, 33))
    pair = ClientKeyPair.from_secret(scheme, secret)
    assert sdk.call("public_key", secret=secret.hex(), scheme=scheme) == pair.public_hex
    answer = full_answer()
    wire = node.encrypt_answer_fields(answer, pair.public_hex, scheme)
    assert e2ee.decrypt_response(wire, pair) == answer
    assert sdk.call("decrypt_response", body=wire, secret=secret.hex(), scheme=scheme,
                    streaming=False) == answer
    chunk = full_answer("delta")
    wire_chunk = node.encrypt_chunk(chunk, pair.public_hex, scheme)
    assert e2ee.decrypt_chunk(wire_chunk, pair) == chunk
    assert sdk.call("decrypt_response", body=wire_chunk, secret=secret.hex(), scheme=scheme,
                    streaming=True) == chunk


def test_what_the_sdk_seals_to_the_client_key_the_sidecar_opens(sdk: NearSdk,
                                                               scheme: str) -> None:
    pair = ClientKeyPair.generate(scheme)
    for text in ("Hello", "héllo ✓ 🔐", "x" * 1000):
        sealed = sdk.call("encrypt_text", plaintext=text, public_key=pair.public_hex,
                          scheme=scheme)
        assert pair.open_envelope(sealed, field="f") == text


def test_the_known_answer_vectors_open_under_the_sdk(sdk: NearSdk) -> None:
    for vector in VECTORS["ed25519"]:
        assert sdk.call("decrypt_text", ciphertext=vector["envelope"],
                        secret=vector["recipient_seed"], scheme="ed25519") == vector["plaintext"]
    for vector in VECTORS["ecdsa"]:
        assert sdk.call("decrypt_text", ciphertext=vector["envelope"],
                        secret=vector["recipient_secret"], scheme="ecdsa") == vector["plaintext"]
