"""End-to-end encryption to the attested model node (NEAR's field-level E2EE, spec section 0.5).

With E2EE a gateway relays a chat completion but cannot read the prompt or the answer: the
sidecar encrypts the request fields that 0.5 lists to the model node's attested
``signing_public_key``, and the node encrypts the answer fields back to a client key of the
sidecar. Each field's value is replaced by a lower-case hex *envelope*:

  ed25519, version 2 (libsodium via PyNaCl):
    recipient X25519 key = crypto_sign_ed25519_pk_to_curve25519(ed25519 public key);
    fresh X25519 key pair; key = HKDF-SHA256(salt none, info "ed25519_encryption", 32 bytes)
    of the X25519 shared secret; XChaCha20-Poly1305, 24-byte random nonce, no AAD;
    envelope = ephemeral public (32) ‖ nonce (24) ‖ ciphertext ‖ tag (16).
  ecdsa (``cryptography``):
    ECDH on secp256k1 (the shared point's x coordinate); key = HKDF-SHA256(salt none,
    info "ecdsa_encryption", 32 bytes); AES-256-GCM, 12-byte random nonce, no AAD;
    envelope = ephemeral uncompressed public (65, 0x04 ‖ x ‖ y) ‖ nonce (12) ‖ ciphertext ‖ tag.

Sources for the details 0.5 leaves open (read, not copied): nearai/inference-proxy
``src/encryption.rs`` at a9082da (the node) and ``nearai-inference-sdk`` 0.2.0
``core/e2ee.py`` / ``core/e2ee_chat.py`` (NEAR's client). In particular:

- an empty string is never encrypted by the node: ``""`` on the wire means ``""``;
- a content-part list and ``tools[].function.parameters`` travel as the compact JSON text of
  the value; the node parses a decrypted ``content`` back into a list whenever it is JSON text
  of an array (so a plain string that happens to be such text is sent as one text part, below);
- ``logprobs[].bytes`` (and ``top_logprobs[].bytes``) come back as the envelope of the JSON text
  of the byte list.

What it does not do: no I/O, no settings; the proxy chooses when to encrypt. Integrity of the
exchange as a whole (no dropped, reordered or replayed fields, no injected plaintext outside
the listed fields) rests on the completion signature, which covers the encrypted wire bytes
(0.5); this module only guarantees that each listed answer field was sealed to our key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from copy import deepcopy
from enum import StrEnum
from typing import Any, Final

import nacl.bindings
import nacl.exceptions
import nacl.signing
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sidecar.encoding import decode_hex
from sidecar.errors import BadRequest, VerificationFailed
from sidecar.providers.contracts import NO_ALIASING_HEADER


class E2EEScheme(StrEnum):
    """The two envelope schemes; named as NEAR's ``x-signing-algo`` header names them."""

    ED25519 = "ed25519"
    ECDSA = "ecdsa"


# Header names the sidecar sets on an encrypted request (spec 0.5). The proxy should drop any
# of them an app sends itself: only the sidecar decides to which key a prompt is sealed.
E2EE_HEADER_NAMES: Final = ("x-signing-algo", "x-client-pub-key", "x-model-pub-key",
                            "x-encryption-version", "x-encrypt-all-fields", NO_ALIASING_HEADER)

_ED25519_INFO: Final = b"ed25519_encryption"
_ECDSA_INFO: Final = b"ecdsa_encryption"
_X25519_LEN: Final = 32
_XNONCE_LEN: Final = 24
_SEC1_LEN: Final = 65
_GCM_NONCE_LEN: Final = 12
_TAG_LEN: Final = 16
# Smallest envelopes: an empty plaintext still carries key, nonce and tag.
_MIN_ENVELOPE: Final = {E2EEScheme.ED25519: _X25519_LEN + _XNONCE_LEN + _TAG_LEN,
                        E2EEScheme.ECDSA: _SEC1_LEN + _GCM_NONCE_LEN + _TAG_LEN}
# The node writes envelopes with Rust's ``hex::encode``: lower-case, even length. Anything else
# (upper case, spaces that ``bytes.fromhex`` would forgive, prose) is not an envelope.

_PLAINTEXT_FIELD: Final = "e2ee.plaintext_field"
_DECRYPT_FAILED: Final = "e2ee.decrypt_failed"
_MODEL_KEY_INVALID: Final = "e2ee.model_key_invalid"
_UNKNOWN_SCHEME: Final = "e2ee.unknown_scheme"
_UNENCRYPTABLE: Final = "e2ee.request_unencryptable"


def _scheme(value: str) -> E2EEScheme:
    try:
        return E2EEScheme(value)
    except ValueError:
        raise VerificationFailed("E2EE scheme is neither ed25519 nor ecdsa",
                                 code=_UNKNOWN_SCHEME) from None


def _hkdf(shared_secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared_secret)


def _sec1(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962,
                            serialization.PublicFormat.UncompressedPoint)


# -- keys ------------------------------------------------------------------------------------


class ClientKeyPair:
    """The sidecar's own key pair that answers are encrypted to (in memory only).

    ed25519: an ed25519 key whose public half goes in ``x-client-pub-key``; the node converts
    it to X25519, so only the X25519 secret derived from the seed is kept. ecdsa: a secp256k1
    key, published as 64 bytes without the ``04`` prefix. The secret never appears in
    ``repr``, logs or receipts; there is deliberately no accessor for it.

    Attributes:
        scheme: ``ed25519`` or ``ecdsa``.
        public_hex: the value of ``x-client-pub-key``.
        created_at: the injected clock value when it was made (for rotation).
    """

    __slots__ = ("scheme", "public_hex", "created_at", "_x25519_secret", "_ec_key")

    def __init__(self, scheme: E2EEScheme, public_hex: str, created_at: float, *,
                 x25519_secret: bytes | None = None,
                 ec_key: ec.EllipticCurvePrivateKey | None = None) -> None:
        self.scheme = scheme
        self.public_hex = public_hex
        self.created_at = created_at
        self._x25519_secret = x25519_secret
        self._ec_key = ec_key

    @classmethod
    def generate(cls, scheme: E2EEScheme | str, *, now: float = 0.0) -> ClientKeyPair:
        """A fresh key pair from the operating system's CSPRNG.

        Raises:
            VerificationFailed: ``e2ee.unknown_scheme``.
        """
        return cls.from_secret(scheme, os.urandom(32), now=now)

    @classmethod
    def from_secret(cls, scheme: E2EEScheme | str, secret: bytes, *,
                    now: float = 0.0) -> ClientKeyPair:
        """The key pair of a given 32-byte secret (ed25519 seed, or secp256k1 scalar).

        For known-answer tests; production code calls ``generate``.

        Raises:
            VerificationFailed: ``e2ee.unknown_scheme``.
            ValueError: a secret that is not 32 bytes, or not a valid secp256k1 scalar.
        """
        kind = _scheme(scheme)
        if len(secret) != 32:
            raise ValueError("a client secret is 32 bytes")
        if kind is E2EEScheme.ED25519:
            signing = nacl.signing.SigningKey(secret)
            return cls(kind, bytes(signing.verify_key).hex(), now,
                       x25519_secret=bytes(signing.to_curve25519_private_key()))
        key = ec.derive_private_key(int.from_bytes(secret, "big"), ec.SECP256K1())
        return cls(kind, _sec1(key.public_key())[1:].hex(), now, ec_key=key)

    def __repr__(self) -> str:
        return f"ClientKeyPair(scheme={self.scheme.value!r}, public_hex={self.public_hex!r})"

    def open_envelope(self, value: str, *, field: str) -> str:
        """Decrypt one field value sealed to this key pair.

        ``""`` is the node's encoding of an empty field and decrypts to ``""``.

        Raises:
            VerificationFailed: ``e2ee.plaintext_field`` when ``value`` is not a lower-case hex
                envelope at all; ``e2ee.decrypt_failed`` when it is hex but too short, sealed
                to another key or scheme, tampered with, or not UTF-8 inside. The message
                names ``field`` (a path), never the value.
        """
        if value == "":
            return ""
        envelope = decode_hex(value, lower_only=True)
        if envelope is None:
            raise VerificationFailed(f"{field} should be encrypted but arrived in plaintext",
                                     code=_PLAINTEXT_FIELD)
        if len(envelope) < _MIN_ENVELOPE[self.scheme]:
            raise VerificationFailed(
                f"{field}: {len(envelope)}-byte envelope is shorter than the smallest "
                f"{self.scheme.value} envelope ({_MIN_ENVELOPE[self.scheme]} bytes)",
                code=_DECRYPT_FAILED)
        try:
            if self.scheme is E2EEScheme.ED25519:
                plaintext = self._open_ed25519(envelope)
            else:
                plaintext = self._open_ecdsa(envelope)
        except (nacl.exceptions.CryptoError, InvalidTag, ValueError, RuntimeError):
            # One message for every cause: which step failed is of no use to the app and
            # would be an oracle to whoever tampered (encryption.rs does the same).
            raise VerificationFailed(
                f"{field} does not decrypt with this exchange's {self.scheme.value} client key "
                "(tampered, truncated, or sealed to another key)", code=_DECRYPT_FAILED) from None
        try:
            return plaintext.decode("utf-8")
        except UnicodeDecodeError:
            raise VerificationFailed(f"{field} decrypts to bytes that are not UTF-8",
                                     code=_DECRYPT_FAILED) from None

    def _open_ed25519(self, envelope: bytes) -> bytes:
        assert self._x25519_secret is not None
        ephemeral = envelope[:_X25519_LEN]
        nonce = envelope[_X25519_LEN:_X25519_LEN + _XNONCE_LEN]
        # libsodium refuses (RuntimeError) an all-zero shared secret, i.e. a low-order point.
        shared = nacl.bindings.crypto_scalarmult(self._x25519_secret, ephemeral)
        key = _hkdf(shared, _ED25519_INFO)
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            envelope[_X25519_LEN + _XNONCE_LEN:], None, nonce, key)

    def _open_ecdsa(self, envelope: bytes) -> bytes:
        assert self._ec_key is not None
        # from_encoded_point refuses (ValueError) anything that is not a point on secp256k1.
        ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(),
                                                                 envelope[:_SEC1_LEN])
        key = _hkdf(self._ec_key.exchange(ec.ECDH(), ephemeral), _ECDSA_INFO)
        nonce = envelope[_SEC1_LEN:_SEC1_LEN + _GCM_NONCE_LEN]
        return AESGCM(key).decrypt(nonce, envelope[_SEC1_LEN + _GCM_NONCE_LEN:], None)


class ClientKeyRing:
    """The current client key pair per scheme, replaced once older than ``max_age`` seconds.

    A request keeps the ``ClientKeyPair`` object it was sent with, so rotation never breaks
    the decryption of an answer in flight. ``max_age <= 0`` gives every request a fresh pair,
    which is what NEAR's SDK does: then an encrypted answer field replayed from another
    exchange cannot even be decrypted (with a longer-lived key only the signature catches it).
    """

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self._current: dict[E2EEScheme, ClientKeyPair] = {}

    def current(self, scheme: E2EEScheme | str, *, now: float) -> ClientKeyPair:
        """The key pair to use for a request sent at ``now`` (a monotonic clock reading).

        Raises:
            VerificationFailed: ``e2ee.unknown_scheme``.
        """
        kind = _scheme(scheme)
        pair = self._current.get(kind)
        if pair is None or self.max_age <= 0 or now - pair.created_at >= self.max_age:
            pair = ClientKeyPair.generate(kind, now=now)
            self._current[kind] = pair
        return pair

    def rotate(self) -> None:
        """Forget every current key pair: the next request gets a fresh one."""
        self._current.clear()

    def __repr__(self) -> str:
        return f"ClientKeyRing(max_age={self.max_age!r}, schemes={sorted(self._current)!r})"


# -- sealing to the model key ----------------------------------------------------------------


class _ModelKey:
    """A model node's public key, parsed once per request."""

    __slots__ = ("scheme", "canonical_hex", "x25519", "ec_key")

    def __init__(self, public_key: str, scheme: E2EEScheme | str) -> None:
        self.scheme = _scheme(scheme)
        self.x25519: bytes | None = None
        self.ec_key: ec.EllipticCurvePublicKey | None = None
        raw = decode_hex(public_key.strip(), allow_0x=True) or b""
        try:
            if self.scheme is E2EEScheme.ED25519:
                if len(raw) != 32:
                    raise ValueError("not 32 bytes")
                # libsodium refuses points off the curve and of small order (RuntimeError).
                self.x25519 = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(raw)
            else:
                # 0.4: signing_public_key is the 64-byte uncompressed key without 04.
                if len(raw) == 64:
                    raw = b"\x04" + raw
                if len(raw) != _SEC1_LEN or raw[0] != 4:
                    raise ValueError("not an uncompressed secp256k1 key")
                self.ec_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), raw)
        except (ValueError, RuntimeError):
            raise VerificationFailed(
                f"the model's signing_public_key is not a usable {self.scheme.value} key",
                code=_MODEL_KEY_INVALID) from None
        self.canonical_hex = raw[1:].hex() if self.ec_key is not None else raw.hex()

    def seal(self, plaintext: str) -> str:
        try:
            data = plaintext.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate, which JSON's \ud800 escapes allow
            raise BadRequest("a field to encrypt is not valid Unicode",
                             code=_UNENCRYPTABLE) from None
        if self.x25519 is not None:
            return _seal_ed25519(data, self.x25519, os.urandom(32),
                                 os.urandom(_XNONCE_LEN)).hex()
        assert self.ec_key is not None
        return _seal_ecdsa(data, self.ec_key, ec.generate_private_key(ec.SECP256K1()),
                           os.urandom(_GCM_NONCE_LEN)).hex()


def _seal_ed25519(plaintext: bytes, recipient_x25519: bytes, ephemeral_secret: bytes,
                  nonce: bytes) -> bytes:
    # Separate from the randomness so that known-answer tests can pin ephemeral key and nonce.
    ephemeral_public = nacl.bindings.crypto_scalarmult_base(ephemeral_secret)
    key = _hkdf(nacl.bindings.crypto_scalarmult(ephemeral_secret, recipient_x25519),
                _ED25519_INFO)
    sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, None, nonce, key)
    return ephemeral_public + nonce + sealed


def _seal_ecdsa(plaintext: bytes, recipient: ec.EllipticCurvePublicKey,
                ephemeral: ec.EllipticCurvePrivateKey, nonce: bytes) -> bytes:
    key = _hkdf(ephemeral.exchange(ec.ECDH(), recipient), _ECDSA_INFO)
    return _sec1(ephemeral.public_key()) + nonce + AESGCM(key).encrypt(nonce, plaintext, None)


def encrypt_text(plaintext: str, *, recipient_public_key: str, scheme: E2EEScheme | str) -> str:
    """Seal one string to a public key (the model's, or for tests a client's): a hex envelope.

    Raises:
        VerificationFailed: ``e2ee.model_key_invalid``, ``e2ee.unknown_scheme``.
        BadRequest: ``e2ee.request_unencryptable`` for a string that is not valid Unicode.
    """
    return _ModelKey(recipient_public_key, scheme).seal(plaintext)


def _compact_json(value: Any) -> str:
    # The form NEAR's SDK writes (compact, UTF-8 as is); the node parses any JSON text back.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _looks_like_json_array(text: str) -> bool:
    try:
        return isinstance(json.loads(text), list)
    except RecursionError:
        return True  # deeper than Python parses: treat as an array, wrapping is harmless
    except ValueError:
        return False


def encrypt_request(body: Mapping[str, Any], *, model_public_key: str,
                    scheme: E2EEScheme | str) -> dict[str, Any]:
    """A copy of a chat-completion request with every field 0.5 lists sealed to the model key.

    Encrypted: ``messages[].content`` (a string, or the JSON text of a content-part list),
    ``messages[].reasoning_content|reasoning|name|refusal``, ``messages[].audio.data``,
    ``messages[].tool_calls[].function.name|arguments``, ``messages[].function_call.name|
    arguments``, ``tools[].function.name|description`` and the JSON text of ``.parameters``,
    ``tool_choice.function.name`` and ``function_call.name``. Everything else (model, sampling
    parameters, ``tool_call_id``, ``response_format``, ``metadata``…) stays readable to every
    gateway: see docs/e2ee.md.

    A string ``content`` that is itself JSON text of an array is sent as one text part,
    because the node would otherwise turn it into a part list (encryption.rs,
    ``decrypt_chat_message_fields``).

    Raises:
        VerificationFailed: ``e2ee.model_key_invalid`` or ``e2ee.unknown_scheme``: nothing
            can be sealed, nothing must be sent.
        BadRequest: ``e2ee.request_unencryptable``: a part that must be encrypted has a shape
            that cannot be sealed and would leave in plaintext (a number where the OpenAI API
            wants a string, a message that is not an object, NaN in a JSON value…).
    """
    key = _ModelKey(model_public_key, scheme)
    out = deepcopy(dict(body))

    def refuse(path: str, wanted: str) -> BadRequest:
        return BadRequest(f"{path} must be {wanted} to be end-to-end encrypted",
                          code=_UNENCRYPTABLE)

    def objects(value: Any, path: str) -> list[tuple[int, dict[str, Any]]]:
        # A list holding anything but objects cannot be walked, so it could only leave as is.
        if value is None:
            return []
        if not isinstance(value, list):
            raise refuse(path, "a list")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise refuse(f"{path}[{i}]", "an object")
        return list(enumerate(value))

    def member(obj: dict[str, Any], name: str, path: str) -> dict[str, Any] | None:
        value = obj.get(name)
        if value is None or isinstance(value, dict):
            return value
        raise refuse(f"{path}.{name}", "an object")

    def seal_text(text: str, path: str) -> str:
        try:
            return key.seal(text)
        except BadRequest:
            raise refuse(path, "valid Unicode") from None

    def seal_json(value: Any, path: str) -> str:
        try:
            text = _compact_json(value)
        except ValueError:  # NaN or Infinity: no JSON text the node could parse back
            raise refuse(path, "plain JSON") from None
        return seal_text(text, path)

    def seal_string(obj: dict[str, Any] | None, name: str, path: str) -> None:
        if obj is None or obj.get(name) is None:
            return
        if not isinstance(obj[name], str):
            raise refuse(f"{path}.{name}", "a string")
        obj[name] = seal_text(obj[name], f"{path}.{name}")

    for i, message in objects(out.get("messages"), "messages"):
        path = f"messages[{i}]"
        content = message.get("content")
        if isinstance(content, str) and _looks_like_json_array(content):
            content = [{"type": "text", "text": content}]
        if isinstance(content, str):
            message["content"] = seal_text(content, f"{path}.content")
        elif isinstance(content, list):
            message["content"] = seal_json(content, f"{path}.content")
        elif content is not None:
            raise refuse(f"{path}.content", "a string or a list")
        for name in ("reasoning_content", "reasoning", "name", "refusal"):
            seal_string(message, name, path)
        seal_string(member(message, "audio", path), "data", f"{path}.audio")
        for j, call in objects(message.get("tool_calls"), f"{path}.tool_calls"):
            function = member(call, "function", f"{path}.tool_calls[{j}]")
            for name in ("name", "arguments"):
                seal_string(function, name, f"{path}.tool_calls[{j}].function")
        function_call = member(message, "function_call", path)
        for name in ("name", "arguments"):
            seal_string(function_call, name, f"{path}.function_call")
    for i, tool in objects(out.get("tools"), "tools"):
        function = member(tool, "function", f"tools[{i}]")
        for name in ("name", "description"):
            seal_string(function, name, f"tools[{i}].function")
        if function is not None and function.get("parameters") is not None:
            function["parameters"] = seal_json(function["parameters"],
                                               f"tools[{i}].function.parameters")
    # tool_choice and function_call may also be the strings "auto", "none", "required".
    if isinstance(out.get("tool_choice"), dict):
        seal_string(member(out["tool_choice"], "function", "tool_choice"), "name",
                    "tool_choice.function")
    if isinstance(out.get("function_call"), dict):
        seal_string(out["function_call"], "name", "function_call")
    return out


def request_headers(keypair: ClientKeyPair, *, model_public_key: str) -> dict[str, str]:
    """The headers of an encrypted request (spec 0.5), for ``keypair`` and the model key.

    ``x-encryption-version: 2`` selects the HKDF envelope for ed25519 (version 1 is the
    legacy NaCl box); ecdsa has one format and NEAR's SDK sends no version for it.
    ``x-no-aliasing`` because an alias would make the gateway rewrite the body (0.2).

    Raises:
        VerificationFailed: ``e2ee.model_key_invalid``.
    """
    key = _ModelKey(model_public_key, keypair.scheme)
    headers = {
        "x-signing-algo": keypair.scheme.value,
        "x-client-pub-key": keypair.public_hex,
        "x-model-pub-key": key.canonical_hex,
        "x-encrypt-all-fields": "true",
        NO_ALIASING_HEADER: "true",
    }
    if keypair.scheme is E2EEScheme.ED25519:
        headers["x-encryption-version"] = "2"
    return headers


# -- opening the answer ----------------------------------------------------------------------


def _dicts(value: Any) -> list[tuple[int, dict[str, Any]]]:
    if not isinstance(value, list):
        return []
    return [(i, item) for i, item in enumerate(value) if isinstance(item, dict)]


def _plaintext(path: str, value: Any) -> VerificationFailed:
    return VerificationFailed(
        f"{path} should be encrypted but arrived in plaintext ({type(value).__name__})",
        code=_PLAINTEXT_FIELD)


def _open_string(obj: dict[str, Any], name: str, path: str, keypair: ClientKeyPair) -> None:
    value = obj.get(name)
    if value is None:
        return
    if not isinstance(value, str):
        raise _plaintext(f"{path}.{name}", value)
    obj[name] = keypair.open_envelope(value, field=f"{path}.{name}")


def _open_token_bytes(entry: dict[str, Any], path: str, keypair: ClientKeyPair) -> None:
    value = entry.get("bytes")
    if value is None:
        return
    if not isinstance(value, str):
        raise _plaintext(f"{path}.bytes", value)
    text = keypair.open_envelope(value, field=f"{path}.bytes")
    try:
        restored = json.loads(text)
    except ValueError:
        restored = None
    if not (isinstance(restored, list)
            and all(type(b) is int and 0 <= b <= 255 for b in restored)):
        raise VerificationFailed(f"{path}.bytes does not decrypt to a list of byte values",
                                 code=_DECRYPT_FAILED)
    entry["bytes"] = restored


def _open_logprobs(logprobs: dict[str, Any], path: str, keypair: ClientKeyPair) -> None:
    for kind in ("content", "refusal"):
        entries = logprobs.get(kind)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise _plaintext(f"{path}.{kind}", entries)
        for i, entry in enumerate(entries):
            entry_path = f"{path}.{kind}[{i}]"
            if not isinstance(entry, dict):
                raise _plaintext(entry_path, entry)
            _open_string(entry, "token", entry_path, keypair)
            _open_token_bytes(entry, entry_path, keypair)
            for j, top in enumerate(entry.get("top_logprobs") or []):
                top_path = f"{entry_path}.top_logprobs[{j}]"
                if not isinstance(top, dict):
                    raise _plaintext(top_path, top)
                _open_string(top, "token", top_path, keypair)
                _open_token_bytes(top, top_path, keypair)


def _open_message(message: dict[str, Any], path: str, keypair: ClientKeyPair) -> None:
    content = message.get("content")
    if isinstance(content, list):
        for i, part in enumerate(content):
            if not isinstance(part, dict):
                raise _plaintext(f"{path}.content[{i}]", part)
            _open_string(part, "text", f"{path}.content[{i}]", keypair)
    else:
        _open_string(message, "content", path, keypair)
    for name in ("reasoning_content", "reasoning", "refusal"):
        _open_string(message, name, path, keypair)
    audio = message.get("audio")
    if isinstance(audio, dict):
        _open_string(audio, "data", f"{path}.audio", keypair)
    elif audio is not None:
        raise _plaintext(f"{path}.audio", audio)
    calls = message.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise _plaintext(f"{path}.tool_calls", calls)
    for i, call in enumerate(calls or []):
        call_path = f"{path}.tool_calls[{i}]"
        if not isinstance(call, dict):
            raise _plaintext(call_path, call)
        function = call.get("function")
        if isinstance(function, dict):
            for name in ("name", "arguments"):
                _open_string(function, name, f"{call_path}.function", keypair)
        elif function is not None:
            raise _plaintext(f"{call_path}.function", function)
    function_call = message.get("function_call")
    if isinstance(function_call, dict):
        for name in ("name", "arguments"):
            _open_string(function_call, name, f"{path}.function_call", keypair)
    elif function_call is not None:
        raise _plaintext(f"{path}.function_call", function_call)


def _open_choices(obj: Mapping[str, Any], keypair: ClientKeyPair, member: str) -> dict[str, Any]:
    out = deepcopy(dict(obj))
    choices = out.get("choices")
    if not isinstance(choices, list):
        return out  # no choices (usage-only chunk, error body): no answer fields to open
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict):
            continue
        message = choice.get(member)
        if isinstance(message, dict):
            _open_message(message, f"choices[{i}].{member}", keypair)
        elif message is not None:
            raise _plaintext(f"choices[{i}].{member}", message)
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            _open_logprobs(logprobs, f"choices[{i}].logprobs", keypair)
    return out


def decrypt_response(obj: Mapping[str, Any], keypair: ClientKeyPair) -> dict[str, Any]:
    """A copy of a non-streamed chat completion with every answer field 0.5 lists decrypted.

    In ``choices[].message``: ``content`` (or ``content[].text``), ``reasoning_content``,
    ``reasoning``, ``refusal``, ``audio.data``, ``tool_calls[].function.name|arguments``,
    ``function_call.name|arguments``; in ``choices[].logprobs.content|refusal[]`` (and their
    ``top_logprobs``): ``token`` and ``bytes``. Call it on the parsed wire body *after* the
    signature over the wire bytes was checked, or independently: it never changes ``obj``.

    Raises:
        VerificationFailed: ``e2ee.plaintext_field`` when a listed field holds anything but
            an envelope, ``""`` or null (a gateway injecting text, or a node that did not
            encrypt); ``e2ee.decrypt_failed`` when an envelope does not open with
            ``keypair``. Messages name the field path, never its content.
    """
    return _open_choices(obj, keypair, "message")


def decrypt_chunk(obj: Mapping[str, Any], keypair: ClientKeyPair) -> dict[str, Any]:
    """``decrypt_response`` for one parsed SSE chunk (``choices[].delta`` instead of ``message``).

    Chunks without ``choices`` (usage-only, errors) come back as copies, unchanged.

    Raises:
        VerificationFailed: ``e2ee.plaintext_field``, ``e2ee.decrypt_failed``.
    """
    return _open_choices(obj, keypair, "delta")
