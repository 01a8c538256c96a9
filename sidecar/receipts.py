"""Receipts: a durable record of every completion, so that an auditor can ask afterwards
"prove that this answer came from an attested enclave" and get an answer without the network.

Each completion appends one JSON line to ``receipts.jsonl`` (see ``docs/receipts.md``): the
hashes of the exact request and response bytes, the enclave's signature over them (spec
section 3), the signing key, the digest and nonce of the attestation report that key was attested
from (spec section 2), and the sidecar's verdict. Prompts and completions are never written: only
their sha256 digests, which the holder of the bytes can recompute.

The attestation report bodies are archived beside the log (``evidence/<sha256>.json``), once per
digest, so that ``verify_receipts`` can re-check each verified receipt from the file alone: this
module reads the files and the archive, and :mod:`sidecar.verify.receipt` (sans-I/O) holds the
recipe and judges each line.

The writer, ``ReceiptLog``, keeps the file valid JSON lines through crashes and concurrency: each
line goes out in one ``os.write`` on an ``O_APPEND`` descriptor under a lock and is ``fsync``-ed;
a torn last line left by a crash is set aside on open; rotation is rename-based.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import hmac
import json
import os
import queue
import re
import stat
import threading
import time as _time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal, Self

import structlog

from sidecar.durable import fsync_directory, replace_durably, write_all
from sidecar.errors import SidecarError
from sidecar.providers.wire import MAX_REPORT_BYTES
from sidecar.verify.signature import MAX_TEXT_LENGTH
from sidecar.verify.receipt import (
    EvidenceMissing,
    EvidenceRefused,
    ReceiptFormatError,
    ReceiptLine,
    ReceiptLineResult,
    ReceiptOutcome,
    ReceiptsReport,
    verify_receipt_lines,
)

log = structlog.get_logger("tee_sidecar.receipts")

RECEIPT_FORMAT = 3
"""The ``v`` of every line written; a reader refuses versions it does not know rather than guess.

Format 1 lines (before ``served_model``, ``signature_kind`` and ``request_binding``) still read:
those three are then ``None``; format 2 lines (before ``e2ee`` and ``e2ee_model_key``) read
with those two ``None`` (the exchange's encryption was not recorded)."""
READABLE_FORMATS = (1, 2, 3)
GENESIS_PREV_SHA256 = "0" * 64
"""``prev_sha256`` of the first line ever written to a log."""
EVIDENCE_DIRNAME = "evidence"
DEFAULT_MAX_BYTES = 64 << 20
DEFAULT_BACKUPS = 10
# The group commit's writer thread exits after this long without a batch (a new one starts
# with the next); a log that is never used again leaves no thread behind.
WRITER_IDLE_SECONDS = 5.0
# A genuine line is under 1.5 KiB (hashes, a 132-char signature, a model name of at most 256
# chars); the bound stops a doctored file from making the verifier parse megabytes per line.
MAX_RECEIPT_LINE_BYTES = 8 << 10
# Field bounds mirror the wire contract (``SignatureRecordWire``) and the proxy's request parser.
MAX_MODEL_LENGTH = 256
MAX_CHAT_ID_LENGTH = 256
MAX_SIGNATURE_LENGTH = 1024
MAX_ADDRESS_LENGTH = 130
MAX_FAILURE_CODE_LENGTH = 128

# Replay detection (``RecentChatIds``): ids kept per model and models kept, and how much of the
# newest receipts is read on start to restore them (a receipt line is ~1 KiB).
RECENT_CHAT_IDS_PER_MODEL = 16_384
RECENT_CHAT_IDS_MODELS = 256
RECENT_CHAT_IDS_SCAN_BYTES = 16 << 20

# The evidence archive (``ReceiptLog.prune_evidence``): how many reports archived last are kept
# whatever their age (the attestations in use, which receipts are still to name), the fraction
# of the size bound a prune goes down to (so pruning is not run on every archive), and how often
# the age bound is applied.
EVIDENCE_KEPT_RECENT = 64
EVIDENCE_PRUNE_TARGET = 0.9
EVIDENCE_AGE_PRUNE_INTERVAL = 3600.0
_EVIDENCE_FILE = re.compile(r"([0-9a-f]{64})(?:\.context)?\.json")
_EVIDENCE_REF = re.compile(rb'"evidence_sha256":"([0-9a-f]{64})"')

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# An E2EE model key: ed25519 32 bytes, ecdsa 64 bytes (spec 0.5), lower-case hex.
_E2EE_KEY_HEX = re.compile(r"[0-9a-f]{64}|[0-9a-f]{128}")
_RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")

ReceiptVerdict = Literal["verified", "failed"]


class ReceiptLogError(SidecarError):
    """A receipt could not be written durably (disk full, permissions, a second writer)."""

    default_code = "receipts.write_failed"


def receipt_time(now: float | None = None) -> str:
    """``now`` (unix seconds; default: the current time) as RFC 3339 UTC with milliseconds."""
    moment = datetime.fromtimestamp(_time.time() if now is None else now, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _optional_str(name: str, value: object, max_length: int) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise ReceiptFormatError(f"{name} must be null or a string of 1-{max_length} chars")


def _optional_sha256(name: str, value: object) -> None:
    if value is not None and not (isinstance(value, str) and _SHA256_HEX.fullmatch(value)):
        raise ReceiptFormatError(f"{name} must be null or 64 lower-case hex chars")


@dataclass(frozen=True)
class Receipt:
    """What the sidecar knew about one completion when it delivered or refused it.

    Only digests of the request and response are kept, never their text.

    Attributes:
        time: when the verdict was reached, RFC 3339 UTC (``receipt_time``).
        model: the model the request named.
        request_sha256: hex sha256 of the request bytes sent upstream.
        response_sha256: hex sha256 of the response bytes received (SSE: every event, as sent).
        chat_id: the completion id the signature was fetched under (``None`` if there was none).
        text: the signed text, ``"<request_sha256>:<response_sha256>"`` as the enclave sent it.
        signature: the signature as the enclave sent it (ecdsa: ``0x`` + 65 bytes hex).
        signing_address: the signing key the signature record named.
        signing_algo: ``ecdsa`` or ``ed25519``.
        evidence_sha256: sha256 of the attestation report body the key was attested from.
        nonce: the 64-hex nonce that report was requested with.
        verdict: ``verified`` or ``failed``.
        failure_code: the stable failure code (``None`` exactly when verified).
        served_model: the model the signer is attested to serve (its report's ``model_name``),
            which a 3-part text names; the request's ``model`` may be an alias or NanoGPT's name.
        signature_kind: the record's ``signature_kind`` (``gateway``, ``provider_tee``) if any.
        request_binding: how the signed request hash bound the bytes sent: ``exact``, or
            ``model_renamed`` (the provider renamed the model on the way in, spec 0.1).
        e2ee: whether the exchange was end-to-end encrypted (docs/e2ee.md): ``true``,
            ``false`` (sent in plaintext) or ``unavailable`` (the profile has no E2EE).
        e2ee_model_key: the attested model key the prompt fields were sealed to (when ``true``).

    ``text``, ``signature``, ``signing_address``, ``signing_algo``, ``evidence_sha256``, ``nonce``
    and ``chat_id`` may be ``None`` on a failed receipt (the completion failed before they were had);
    a verified receipt has them all.

    Raises:
        ReceiptFormatError: on construction, for a field out of shape or a verdict that does not
            agree with the fields (a programming error in the caller, or a doctored line).
    """

    time: str
    model: str
    request_sha256: str
    response_sha256: str
    chat_id: str | None
    text: str | None
    signature: str | None
    signing_address: str | None
    signing_algo: str | None
    evidence_sha256: str | None
    nonce: str | None
    verdict: ReceiptVerdict
    failure_code: str | None
    served_model: str | None = None
    signature_kind: str | None = None
    request_binding: str | None = None
    e2ee: str | None = None
    e2ee_model_key: str | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.time, str) and _RFC3339_UTC.fullmatch(self.time)):
            raise ReceiptFormatError("time must be RFC 3339 UTC (YYYY-MM-DDTHH:MM:SS[.fff]Z)")
        try:
            datetime.fromisoformat(self.time)
        except ValueError:
            raise ReceiptFormatError(f"time {self.time!r} is not a valid date") from None
        if not isinstance(self.model, str) or not self.model or len(self.model) > MAX_MODEL_LENGTH:
            raise ReceiptFormatError(f"model must be a string of 1-{MAX_MODEL_LENGTH} chars")
        for name in ("request_sha256", "response_sha256"):
            value = getattr(self, name)
            if not (isinstance(value, str) and _SHA256_HEX.fullmatch(value)):
                raise ReceiptFormatError(f"{name} must be 64 lower-case hex chars")
        _optional_str("chat_id", self.chat_id, MAX_CHAT_ID_LENGTH)
        _optional_str("text", self.text, MAX_TEXT_LENGTH)
        _optional_str("signature", self.signature, MAX_SIGNATURE_LENGTH)
        _optional_str("signing_address", self.signing_address, MAX_ADDRESS_LENGTH)
        if self.signing_algo not in (None, "ecdsa", "ed25519"):
            raise ReceiptFormatError("signing_algo must be null, 'ecdsa' or 'ed25519'")
        _optional_sha256("evidence_sha256", self.evidence_sha256)
        _optional_sha256("nonce", self.nonce)  # 32 bytes as 64 lower-case hex, like a digest
        _optional_str("failure_code", self.failure_code, MAX_FAILURE_CODE_LENGTH)
        _optional_str("served_model", self.served_model, MAX_MODEL_LENGTH)
        if self.signature_kind not in (None, "gateway", "provider_tee"):
            raise ReceiptFormatError("signature_kind must be null, 'gateway' or 'provider_tee'")
        if self.request_binding not in (None, "exact", "model_renamed"):
            raise ReceiptFormatError("request_binding must be null, 'exact' or 'model_renamed'")
        if self.e2ee not in (None, "true", "false", "unavailable"):
            raise ReceiptFormatError("e2ee must be null, 'true', 'false' or 'unavailable'")
        if self.e2ee_model_key is not None and not (
                isinstance(self.e2ee_model_key, str) and _E2EE_KEY_HEX.fullmatch(self.e2ee_model_key)
                and self.e2ee == "true"):
            raise ReceiptFormatError("e2ee_model_key must be 64 or 128 lower-case hex chars, "
                                     "on an e2ee 'true' receipt only")
        if self.verdict == "verified":
            missing = [name for name in ("chat_id", "text", "signature", "signing_address",
                                         "signing_algo", "evidence_sha256", "nonce")
                       if getattr(self, name) is None]
            if missing:
                raise ReceiptFormatError(f"a verified receipt needs {', '.join(missing)}")
            if self.failure_code is not None:
                raise ReceiptFormatError("a verified receipt has no failure_code")
        elif self.verdict == "failed":
            if self.failure_code is None:
                raise ReceiptFormatError("a failed receipt needs its failure_code")
        else:
            raise ReceiptFormatError("verdict must be 'verified' or 'failed'")


_RECEIPT_FIELDS = tuple(f.name for f in fields(Receipt))
_LINE_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
_LINE_KEYS = {3: frozenset({"v", "prev_sha256", *_RECEIPT_FIELDS}),
              2: frozenset({"v", "prev_sha256", *_RECEIPT_FIELDS}) - {"e2ee", "e2ee_model_key"},
              1: frozenset({"v", "prev_sha256", *_RECEIPT_FIELDS})
              - {"served_model", "signature_kind", "request_binding", "e2ee", "e2ee_model_key"}}


def encode_receipt_line(receipt: Receipt, prev_sha256: str) -> bytes:
    """The exact bytes of one log line: compact ASCII JSON and a newline.

    ``ensure_ascii`` keeps every line free of raw newlines and multi-byte sequences, so a line is
    always one ``\\n``-terminated record whatever the model name holds.
    """
    # Every field is a str or None: a flat read gives what ``asdict`` gave without its deep
    # copy, and one encoder built once skips ``json.dumps`` making one per line (bench/profile).
    obj: dict[str, Any] = {"v": RECEIPT_FORMAT}
    for name in _RECEIPT_FIELDS:
        obj[name] = getattr(receipt, name)
    obj["prev_sha256"] = prev_sha256
    return _LINE_ENCODER.encode(obj).encode("ascii") + b"\n"


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of duplicate keys; a doctored line could hide a second value.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ReceiptFormatError(f"duplicate field {key!r}")
        obj[key] = value
    return obj


def decode_receipt_line(line: bytes) -> tuple[Receipt, str]:
    """Parse one log line (with or without its newline) into the receipt and its ``prev_sha256``.

    Raises:
        ReceiptFormatError: the line is not JSON, lacks or adds fields, or a field is out of shape.
    """
    if len(line) > MAX_RECEIPT_LINE_BYTES:
        raise ReceiptFormatError(f"line exceeds {MAX_RECEIPT_LINE_BYTES} bytes")
    try:
        obj = json.loads(line, object_pairs_hook=_no_duplicate_keys)
    except ReceiptFormatError:
        raise
    except (ValueError, UnicodeDecodeError):
        raise ReceiptFormatError("not valid JSON") from None
    if not isinstance(obj, dict):
        raise ReceiptFormatError("not a JSON object")
    version = obj.get("v")
    if type(version) is not int or version not in READABLE_FORMATS:
        raise ReceiptFormatError(f"format version {version!r} is not one of {READABLE_FORMATS}")
    keys = _LINE_KEYS[version]
    if missing := sorted(keys - obj.keys()):
        raise ReceiptFormatError(f"missing field(s) {', '.join(missing)}")
    if extra := sorted(obj.keys() - keys):
        raise ReceiptFormatError(f"unknown field(s) {', '.join(extra)}")
    prev = obj["prev_sha256"]
    if not (isinstance(prev, str) and _SHA256_HEX.fullmatch(prev)):
        raise ReceiptFormatError("prev_sha256 must be 64 lower-case hex chars")
    try:
        receipt = Receipt(**{name: obj[name] for name in _RECEIPT_FIELDS if name in obj})
    except TypeError as exc:  # a non-string where a string belongs, caught by a comparison
        raise ReceiptFormatError(f"field type: {exc}") from None
    return receipt, prev


def _line_sha256(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def rotated_paths(path: Path) -> list[Path]:
    """The rotated siblings of ``path`` that exist, oldest first (``path.N`` … ``path.1``)."""
    numbered: list[tuple[int, Path]] = []
    prefix = path.name + "."
    if path.parent.is_dir():
        for sibling in path.parent.iterdir():
            suffix = sibling.name[len(prefix):] if sibling.name.startswith(prefix) else ""
            if suffix.isdigit() and suffix.isascii():
                numbered.append((int(suffix), sibling))
    return [p for _, p in sorted(numbered, reverse=True)]




def _last_line(path: Path) -> bytes | None:
    """The last complete line of ``path`` (with its newline), or ``None`` if it has none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        end = size
        if end == 0 or os.pread(fd, 1, end - 1) != b"\n":
            return None  # empty, or torn (repaired before this is asked of the live file)
        start = end - 1
        chunk = 4096
        while start > 0:
            begin = max(0, start - chunk)
            data = os.pread(fd, start - begin, begin)
            cut = data.rfind(b"\n")
            if cut >= 0:
                start = begin + cut + 1
                break
            start = begin
        return os.pread(fd, end - start, start)
    finally:
        os.close(fd)


def _repair_torn_tail(path: Path, torn_path: Path) -> int:
    """Cut a torn last line (no newline) from ``path``, appending its bytes to ``torn_path``.

    Returns the number of bytes set aside (0 when the file was whole).
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return 0
        cut = 0
        pos = size
        while pos > 0:
            begin = max(0, pos - 65536)
            newline = os.pread(fd, pos - begin, begin).rfind(b"\n")
            if newline >= 0:
                cut = begin + newline + 1
                break
            pos = begin
        torn = os.pread(fd, size - cut, cut)
        # Forensics first: the torn bytes reach the disk before they leave the log.
        torn_fd = os.open(torn_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            write_all(torn_fd, torn + b"\n")
            os.fsync(torn_fd)
        finally:
            os.close(torn_fd)
        os.ftruncate(fd, cut)
        os.fsync(fd)
        return len(torn)
    finally:
        os.close(fd)


class RecentChatIds:
    """Completion ids recently delivered as verified, per model, bounded (replay detection).

    A gateway may answer a byte-identical request with an earlier answer: its genuine signature
    then verifies again, and two receipts carry one chat id (issue 11, finding 7). Enclaves mint
    a fresh id per completion, so a verified id seen again for the same model is a replay.
    At most ``per_model`` ids per model (oldest forgotten first) and ``max_models`` models
    (least recently used forgotten first) are kept; ``from_receipts`` restores them from the
    receipts file on start, so a restart does not forget them.
    """

    def __init__(self, *, per_model: int = RECENT_CHAT_IDS_PER_MODEL,
                 max_models: int = RECENT_CHAT_IDS_MODELS) -> None:
        self.per_model = per_model
        self.max_models = max_models
        self._ids: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()

    def first_use(self, model: str, chat_id: str) -> bool:
        """Remember ``chat_id`` for ``model``; False if it was already remembered (a replay)."""
        ids = self._ids.get(model)
        if ids is None:
            ids = self._ids[model] = OrderedDict()
            while len(self._ids) > self.max_models:
                self._ids.popitem(last=False)
        self._ids.move_to_end(model)
        if chat_id in ids:
            return False
        ids[chat_id] = None
        while len(ids) > self.per_model:
            ids.popitem(last=False)
        return True

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._ids.values())

    @classmethod
    def from_receipts(cls, path: Path, **bounds: int) -> RecentChatIds:
        """The ids of the newest verified receipts of ``path`` (and its rotated files).

        At most ``RECENT_CHAT_IDS_SCAN_BYTES`` are read, newest last; unreadable lines are
        skipped (``verify_receipts`` is where a damaged file is reported).
        """
        recent = cls(**bounds)
        budget = RECENT_CHAT_IDS_SCAN_BYTES
        tails: list[bytes] = []
        for candidate in [path, *reversed(rotated_paths(path))]:
            if budget <= 0:
                break
            try:
                with candidate.open("rb") as fh:
                    size = fh.seek(0, os.SEEK_END)
                    start = max(0, size - budget)
                    fh.seek(start)
                    data = fh.read(size - start)
            except OSError:
                continue
            budget -= len(data)
            if start > 0:
                data = data[data.find(b"\n") + 1:]  # a partial first line
            tails.append(data)
        for data in reversed(tails):
            for line in data.splitlines():
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if (isinstance(obj, dict) and obj.get("verdict") == "verified"
                        and isinstance(obj.get("model"), str)
                        and isinstance(obj.get("chat_id"), str)):
                    recent.first_use(obj["model"], obj["chat_id"])
        return recent


_BatchJob = tuple[list["Receipt"], asyncio.AbstractEventLoop, asyncio.Future[None]]


class ReceiptLog:
    """An append-only, crash-safe JSON-lines receipt file with size-based rotation.

    One process writes a log at a time (an ``flock`` on ``<path>.lock`` refuses a second writer,
    whose appends would fork the hash chain). Appends are serialized by a lock, written with one
    ``os.write`` on an ``O_APPEND`` descriptor and ``fsync``-ed before ``append`` returns, so a
    receipt reported written survives a crash, and a crash leaves at worst one torn last line,
    which the next open sets aside. When a line would push the file past ``max_bytes``, the file
    is rotated: ``receipts.jsonl`` → ``.1`` → … → ``.<backups>``; the oldest is dropped.

    Attestation bodies are archived in ``<dir of path>/evidence/<sha256>.json``.

    Raises:
        ReceiptLogError: (from the constructor) the file cannot be opened, repaired or locked.
        ValueError: ``max_bytes`` < 1 or ``backups`` < 0.
    """

    def __init__(self, path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 backups: int = DEFAULT_BACKUPS, evidence_max_bytes: int | None = None,
                 evidence_max_age: float | None = None,
                 clock: Callable[[], float] = _time.time) -> None:
        if max_bytes < 1 or backups < 0:
            raise ValueError("max_bytes must be >= 1 and backups >= 0")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        # The evidence archive's bounds (``prune_evidence``); None: unbounded.
        self.evidence_max_bytes = evidence_max_bytes
        self.evidence_max_age = evidence_max_age
        self._clock = clock
        self._evidence_lock = threading.Lock()
        self._evidence_refs: set[str] | None = None  # None: rescan the live receipts
        self._recent_evidence: OrderedDict[str, None] = OrderedDict()
        self._evidence_bytes: int | None = None
        self._last_prune = 0.0
        self.evidence_dir = self.path.parent / EVIDENCE_DIRNAME
        self.torn_path = self.path.with_name(self.path.name + ".torn")
        self._lock = threading.Lock()
        self._queue: list[tuple[Receipt, asyncio.Future[None]]] = []
        self._writer: asyncio.Future[None] | None = None
        # The group commit's own thread (``_submit``): started on demand, gone after
        # ``WRITER_IDLE_SECONDS`` without work; ``_worker_lock`` keeps start and exit atomic.
        self._jobs: queue.SimpleQueue[_BatchJob] = queue.SimpleQueue()
        self._worker_lock = threading.Lock()
        self._worker_running = False
        self._archived: set[str] = set()
        self._fd: int | None = None
        self._lock_fd: int | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = self._take_writer_lock()
            torn = _repair_torn_tail(self.path, self.torn_path)
            if torn:
                log.warning("receipts.torn_line_set_aside", path=str(self.path), bytes=torn,
                            torn_path=str(self.torn_path))
            self._open_current()
            last = _last_line(self.path)
            if last is None:
                # An empty current file continues the chain of the newest rotated one.
                rotated = rotated_paths(self.path)
                last = _last_line(rotated[-1]) if rotated else None
            self._prev = _line_sha256(last) if last is not None else GENESIS_PREV_SHA256
            self.recent_chat_ids = RecentChatIds.from_receipts(self.path)
            if self.evidence_max_bytes is not None or self.evidence_max_age is not None:
                self.prune_evidence()
        except OSError as exc:
            self._release()
            raise ReceiptLogError(f"cannot open receipt log {self.path}: {exc}",
                                  code="receipts.open_failed") from exc
        except BaseException:
            self._release()
            raise

    def _take_writer_lock(self) -> int:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ReceiptLogError(f"another process is writing {self.path}",
                                  code="receipts.locked") from None
        return fd

    def _open_current(self) -> None:
        existed = self.path.exists()
        # 0o600: receipts say which models were used when, which is the user's business only.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size
        if not existed:
            fsync_directory(self.path.parent)

    def _release(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd = self._lock_fd = None

    @property
    def closed(self) -> bool:
        """True once ``close`` ran."""
        return self._fd is None

    @property
    def head_sha256(self) -> str:
        """sha256 of the last line written: the chain head an auditor may note down elsewhere."""
        return self._prev

    def append(self, receipt: Receipt) -> None:
        """Append ``receipt`` as one line and ``fsync`` it (blocking; see ``append_async``).

        Raises:
            ReceiptLogError: the log is closed, or the line could not be written durably; a
                partially written line is cut off again, so the file stays valid JSON lines.
        """
        self.append_batch([receipt])

    def append_batch(self, receipts: Sequence[Receipt]) -> None:
        """Append ``receipts`` in order, one ``os.write`` per line, then one ``fsync`` for all.

        This is the group commit behind ``append_async``: durability costs one ``fsync`` per
        batch, not per completion, and nothing returns before its line is durable.

        Raises:
            ReceiptLogError: as ``append``; none of the batch is reported durable. A batch
                that fits the current file goes out in one write, undone whole on a short
                write; one that needs a rotation goes line by line, and lines written before a
                failure stay in the file (the chain follows them).
        """
        with self._lock:
            if self._fd is None:
                raise ReceiptLogError(f"receipt log {self.path} is closed", code="receipts.closed")
            try:
                if self._append_joined(receipts):
                    return
                for receipt in receipts:
                    line = encode_receipt_line(receipt, self._prev)
                    if self._size > 0 and self._size + len(line) > self.max_bytes:
                        self._rotate()
                    assert self._fd is not None
                    written = os.write(self._fd, line)
                    if written != len(line):
                        # A short write (disk full): undo it rather than leave half a line behind.
                        os.ftruncate(self._fd, self._size)
                        raise ReceiptLogError(
                            f"short write to {self.path} ({written} of {len(line)} bytes); undone")
                    # The line is in the file from here on: the chain must follow it even if
                    # the fsync below fails.
                    self._size += len(line)
                    self._prev = _line_sha256(line)
                    if self._evidence_refs is not None and receipt.evidence_sha256:
                        self._evidence_refs.add(receipt.evidence_sha256)
                assert self._fd is not None
                os.fsync(self._fd)
            except OSError as exc:
                if self._fd is None:
                    self._reopen_after_failed_rotation()
                raise ReceiptLogError(f"cannot write receipt to {self.path}: {exc}") from exc

    def _append_joined(self, receipts: Sequence[Receipt]) -> bool:
        """The usual batch (it fits the current file): every line chained, then one
        ``os.write`` and one ``fsync``. False, with nothing written, when the batch needs a
        rotation (``append_batch`` then goes line by line). Called with the lock held.

        Raises:
            ReceiptLogError: a short write (undone: the chain stays where it was).
            OSError: from ``os.write`` or ``fsync``.
        """
        lines: list[bytes] = []
        prev = self._prev
        size = 0
        for receipt in receipts:
            line = encode_receipt_line(receipt, prev)
            lines.append(line)
            size += len(line)
            prev = _line_sha256(line)
        if self._size + size > self.max_bytes and (self._size > 0 or len(lines) > 1):
            return False  # the line-by-line path rotates where a line would not fit
        data = b"".join(lines)
        assert self._fd is not None
        written = os.write(self._fd, data)
        if written != len(data):
            os.ftruncate(self._fd, self._size)
            raise ReceiptLogError(
                f"short write to {self.path} ({written} of {len(data)} bytes); undone")
        # The lines are in the file from here on: the chain must follow them even if the fsync
        # below fails.
        self._size += size
        self._prev = prev
        if self._evidence_refs is not None:
            self._evidence_refs.update(r.evidence_sha256 for r in receipts if r.evidence_sha256)
        os.fsync(self._fd)
        return True

    def _reopen_after_failed_rotation(self) -> None:
        # A rotation that failed half-way closed the descriptor; keep the log usable for the
        # next append (which retries the rotation) instead of silently turning it off.
        try:
            self._open_current()
        except OSError as exc:
            log.error("receipts.reopen_failed", path=str(self.path), error=str(exc))

    async def append_async(self, receipt: Receipt) -> None:
        """``append`` from asyncio code, group-committed: returns once the line is durable.

        Receipts queue in arrival order; one writer task at a time hands everything queued to a
        worker thread, which writes the lines and ``fsync``-s once (``append_batch``), then
        releases every waiter of that batch. A cancelled caller does not cancel a write already
        queued.

        Raises:
            ReceiptLogError: as ``append``.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((receipt, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._drain())
        # No shield needed: cancelling the caller cancels only ``done``; the receipt itself is
        # already in the queue and the writer still writes it (``_drain`` skips done futures).
        await done

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                await self._submit([receipt for receipt, _ in batch])
            except Exception as exc:  # every waiter must hear how its batch ended
                error = exc if isinstance(exc, ReceiptLogError) else ReceiptLogError(
                    f"cannot write receipts to {self.path}: {exc}")
                for _, done in batch:
                    if not done.done():
                        done.set_exception(error)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    def _submit(self, receipts: list[Receipt]) -> asyncio.Future[None]:
        """``append_batch(receipts)`` on the writer thread; the future settles on this loop.

        One long-lived thread fed by a ``SimpleQueue`` instead of ``asyncio.to_thread`` per
        batch: the executor's submit, work item and future chaining were ~8 % of the proxy's
        CPU in bench/profile.py (docs/benchmarks.md).
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with self._worker_lock:
            if not self._worker_running:
                threading.Thread(target=self._work, name="tee-sidecar-receipts",
                                 daemon=True).start()
                self._worker_running = True
            self._jobs.put((receipts, loop, done))
        return done

    def _work(self) -> None:
        """The writer thread: one batch at a time, each waiter told on its own loop."""
        while True:
            try:
                receipts, loop, done = self._jobs.get(timeout=WRITER_IDLE_SECONDS)
            except queue.Empty:
                with self._worker_lock:
                    # Jobs are only put under this lock: none can be stranded by the exit.
                    if self._jobs.empty():
                        self._worker_running = False
                        return
                continue
            error: Exception | None = None
            try:
                self.append_batch(receipts)
            except Exception as exc:  # handed to the waiters, never lost with the thread
                error = exc
            try:
                loop.call_soon_threadsafe(_settle, done, error)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass

    def _rotate(self) -> None:
        # Called with self._lock held. Each rename is atomic; a crash between two of them loses no
        # line (at worst it leaves a gap in the numbering, which ``rotated_paths`` tolerates).
        assert self._fd is not None
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        # The oldest file may drop out: the evidence its receipts named is no longer live.
        self._evidence_refs = None
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        fsync_directory(self.path.parent)
        self._open_current()

    def archive_evidence(self, evidence_sha256: str, body: bytes) -> Path:
        """Store an attestation report body as ``evidence/<sha256>.json``, once per digest.

        The file appears whole or not at all (temporary file, ``fsync``, ``rename``). Archiving a
        digest already present is a no-op, unless the stored copy no longer hashes to its name,
        in which case it is replaced by ``body``.

        Returns:
            The archived file's path.

        Raises:
            ReceiptLogError: code ``receipts.evidence_digest_mismatch`` when ``body`` does not hash
                to ``evidence_sha256`` (the receipt would point at evidence it was not attested
                from), ``receipts.write_failed`` when it cannot be stored.
        """
        if not _SHA256_HEX.fullmatch(evidence_sha256):
            raise ReceiptLogError(f"evidence digest {evidence_sha256[:80]!r} is not sha256 hex",
                                  code="receipts.evidence_digest_mismatch")
        actual = hashlib.sha256(body).hexdigest()
        if not hmac.compare_digest(actual, evidence_sha256):
            raise ReceiptLogError(f"evidence body hashes to {actual}, not {evidence_sha256}",
                                  code="receipts.evidence_digest_mismatch")
        target = self.evidence_dir / f"{evidence_sha256}.json"
        self._note_archived(evidence_sha256, 0)
        if evidence_sha256 in self._archived:
            return target
        try:
            if target.exists() and _sha256_file(target) == evidence_sha256:
                self._archived.add(evidence_sha256)
                return target
            self._write_whole(target, body)
        except OSError as exc:
            raise ReceiptLogError(f"cannot archive evidence {evidence_sha256}: {exc}") from exc
        self._archived.add(evidence_sha256)
        self._note_archived(evidence_sha256, len(body))
        return target

    def archive_context(self, evidence_sha256: str, context: bytes) -> Path:
        """Store what the evidence was checked with as ``evidence/<sha256>.context.json``.

        The context (per node: the DCAP collateral, the NRAS answer and JWKS, the TLS key seen;
        the nonce and the time) lets ``tee-sidecar attest --report … --context …`` re-run the
        whole verification offline later. It is the sidecar's own record, not evidence: the
        report and every signature in it are still checked against the trust anchors.

        Raises:
            ReceiptLogError: the digest is not sha256 hex, or the file cannot be written.
        """
        if not _SHA256_HEX.fullmatch(evidence_sha256):
            raise ReceiptLogError(f"evidence digest {evidence_sha256[:80]!r} is not sha256 hex",
                                  code="receipts.evidence_digest_mismatch")
        target = self.evidence_dir / f"{evidence_sha256}.context.json"
        try:
            self._write_whole(target, context)
        except OSError as exc:
            raise ReceiptLogError(f"cannot archive context {evidence_sha256}: {exc}") from exc
        self._note_archived(evidence_sha256, len(context))
        return target

    def _note_archived(self, evidence_sha256: str, size: int) -> None:
        """Count a file written to the archive; prune when over its bounds."""
        with self._evidence_lock:
            # What the attestation cache holds now is named by receipts still to come.
            self._recent_evidence[evidence_sha256] = None
            self._recent_evidence.move_to_end(evidence_sha256)
            while len(self._recent_evidence) > EVIDENCE_KEPT_RECENT:
                self._recent_evidence.popitem(last=False)
            if self._evidence_bytes is not None:
                self._evidence_bytes += size
            over = (self.evidence_max_bytes is not None and self._evidence_bytes is not None
                    and self._evidence_bytes > self.evidence_max_bytes)
            due = (self.evidence_max_age is not None
                   and self._clock() - self._last_prune > EVIDENCE_AGE_PRUNE_INTERVAL)
        if size and (over or due):
            self.prune_evidence()

    def prune_evidence(self) -> int:
        """Delete archived evidence that no live receipt names, once too old or too much.

        A report (and its context) is kept while a receipt in the current or a rotated receipts
        file names it, or it is among the ``EVIDENCE_KEPT_RECENT`` archived last (the cached
        attestations receipts are still to name). Of the rest, anything older than
        ``evidence_max_age`` goes, then the oldest first until the archive is back under
        ``EVIDENCE_PRUNE_TARGET`` of ``evidence_max_bytes``. What live receipts name is never
        deleted, so the archive may stay over its size bound until their files rotate out; a
        hostile gateway's stream of re-attestations named by no verified receipt cannot fill
        the disk (issue 11, finding 3).

        Returns:
            The number of bytes freed.
        """
        now = self._clock()
        with self._evidence_lock:
            groups: dict[str, list[tuple[Path, int, float]]] = {}
            try:
                entries = list(os.scandir(self.evidence_dir))
            except FileNotFoundError:
                entries = []
            for entry in entries:
                match = _EVIDENCE_FILE.fullmatch(entry.name)
                if match is None:
                    continue
                try:
                    stat_result = entry.stat()
                except OSError:
                    continue
                groups.setdefault(match.group(1), []).append(
                    (Path(entry.path), stat_result.st_size, stat_result.st_mtime))
            total = sum(size for files in groups.values() for _, size, _ in files)
            if self._evidence_refs is None:
                self._evidence_refs = self._live_evidence_refs()
            kept = self._evidence_refs | set(self._recent_evidence)
            candidates = sorted((max(m for _, _, m in files), digest)
                                for digest, files in groups.items() if digest not in kept)
            target = (int(self.evidence_max_bytes * EVIDENCE_PRUNE_TARGET)
                      if self.evidence_max_bytes is not None else None)
            freed = 0
            for mtime, digest in candidates:
                too_old = self.evidence_max_age is not None and now - mtime > self.evidence_max_age
                too_much = target is not None and total - freed > target
                if not (too_old or too_much):
                    continue
                for path, size, _ in groups[digest]:
                    try:
                        path.unlink()
                        freed += size
                    except FileNotFoundError:
                        freed += size
                    except OSError as exc:
                        log.warning("receipts.evidence_prune_failed", path=str(path),
                                    error=type(exc).__name__)
                self._archived.discard(digest)
            self._evidence_bytes = total - freed
            self._last_prune = now
            if freed:
                log.info("receipts.evidence_pruned", freed_bytes=freed,
                         archive_bytes=self._evidence_bytes)
            if self.evidence_max_bytes is not None and self._evidence_bytes > self.evidence_max_bytes:
                log.warning("receipts.evidence_over_bound", archive_bytes=self._evidence_bytes,
                            bound=self.evidence_max_bytes)
            return freed

    def _live_evidence_refs(self) -> set[str]:
        """The evidence digests the receipts in the current and rotated files name."""
        refs: set[str] = set()
        for path in [*rotated_paths(self.path), self.path]:
            try:
                data = path.read_bytes()
            except OSError:
                continue
            refs.update(m.decode() for m in _EVIDENCE_REF.findall(data))
        return refs

    def _write_whole(self, target: Path, data: bytes) -> None:
        """Write ``target`` whole or not at all (``sidecar.durable``)."""
        self.evidence_dir.mkdir(parents=True, exist_ok=True)
        replace_durably(target, data)

    async def archive_evidence_async(self, evidence_sha256: str, body: bytes) -> Path:
        """``archive_evidence`` in a worker thread, for asyncio code.

        Raises:
            ReceiptLogError: as ``archive_evidence``.
        """
        return await asyncio.to_thread(self.archive_evidence, evidence_sha256, body)

    def flush(self) -> None:
        """Make everything appended so far durable (each append already ``fsync``-ed; this is
        for callers that want to say so at shutdown).

        Raises:
            ReceiptLogError: the ``fsync`` failed.
        """
        with self._lock:
            self._fsync_locked()

    def _fsync_locked(self) -> None:
        if self._fd is None:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise ReceiptLogError(f"cannot flush {self.path}: {exc}") from exc

    def close(self) -> None:
        """Flush and close; waits for an append in progress. Idempotent.

        Raises:
            ReceiptLogError: the final ``fsync`` failed (the descriptors are closed regardless).
        """
        with self._lock:
            if self._fd is None:
                return
            try:
                self._fsync_locked()
            finally:
                self._release()

    async def aclose(self) -> None:
        """``close`` after every pending ``append_async`` has been written.

        Raises:
            ReceiptLogError: as ``close``.
        """
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _settle(done: asyncio.Future[None], error: Exception | None) -> None:
    # On the waiter's loop; a waiter cancelled meanwhile is skipped.
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Verification: the files and the archive are read here; ``sidecar.verify.receipt`` judges
# ---------------------------------------------------------------------------------------------


class _EvidenceArchive:
    """The ``evidence/`` directory as an :class:`~sidecar.verify.receipt.EvidenceLookup`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def evidence_body(self, digest: str) -> bytes:
        """The archived body of ``digest``, unverified (the verifier hashes and parses it).

        Raises:
            EvidenceMissing: no such file, or it cannot be read.
            EvidenceRefused: not a regular file, or over ``MAX_REPORT_BYTES``.
        """
        path = self.directory / f"{digest}.json"  # digest is validated hex: no path traversal
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):
                # A FIFO or device here would block the reader forever.
                raise EvidenceRefused(f"archived evidence {digest} is not a regular file")
            size = info.st_size
            if size > MAX_REPORT_BYTES:
                raise EvidenceRefused(f"archived evidence {digest} is {size} bytes, over the bound")
            return path.read_bytes()
        except FileNotFoundError:
            raise EvidenceMissing(
                f"evidence {digest} is not archived in {self.directory}") from None
        except OSError as exc:
            raise EvidenceMissing(f"evidence {digest} cannot be read: {exc}") from None


def _read_lines(fh: BinaryIO) -> Iterator[tuple[bytes, bool]]:
    """Yield ``(line bytes, complete)``; a line over the bound is cut short (and fails to parse)
    and the rest of it skipped, so a doctored file cannot make the verifier hold it whole."""
    while True:
        line = fh.readline(MAX_RECEIPT_LINE_BYTES + 1)
        if not line:
            return
        if not line.endswith(b"\n") and len(line) > MAX_RECEIPT_LINE_BYTES:
            rest = line
            while rest and not rest.endswith(b"\n"):
                rest = fh.readline(1 << 16)
            yield line, True
            continue
        yield line, line.endswith(b"\n")


def _file_lines(files: Sequence[Path]) -> Iterator[ReceiptLine]:
    # A generator: one line is held at a time, however long the log.
    for file in files:
        with file.open("rb") as fh:
            for number, (raw, complete) in enumerate(_read_lines(fh), start=1):
                yield ReceiptLine(file, number, raw, complete)


def verify_receipts(path: Path, evidence_dir: Path | None = None, *,
                    include_rotated: bool = False) -> ReceiptsReport:
    """Re-check every receipt in a receipts file, without the network.

    Each line must parse with exactly the receipt fields; a ``verified`` receipt must also prove
    itself: its signed text is ``"<request_sha256>:<response_sha256>"``, its signature recovers or
    verifies to its ``signing_address``, the archived evidence with its ``evidence_sha256`` exists
    and hashes to it, and that evidence's quote for the signing node binds the address and the
    receipt's nonce in REPORTDATA. Lines are chained (``prev_sha256``), so a line whose successor
    records another digest for it is reported as altered: that catches edits to the fields no
    signature covers (time, model, chat id, verdict), except on the newest line, which only a
    ``head_sha256`` noted down earlier can vouch for. The checks are
    :func:`sidecar.verify.receipt.verify_receipt_lines`; this reads the files and the archive.

    Args:
        path: the receipts file (e.g. ``receipts.jsonl``).
        evidence_dir: where the evidence is archived (default: ``evidence/`` beside ``path``).
        include_rotated: also read ``path.N`` … ``path.1`` (oldest first) before ``path``, and
            check the chain across them. Without it, only ``path`` is read and its first line's
            ``prev_sha256`` is taken as given.

    Returns:
        The report; ``report.ok`` when no line is invalid.

    Raises:
        OSError: a receipts file cannot be read (a missing ``path`` included).
    """
    files = [*rotated_paths(path), path] if include_rotated else [path]
    archive = _EvidenceArchive(evidence_dir if evidence_dir is not None
                               else path.parent / EVIDENCE_DIRNAME)
    return verify_receipt_lines(files, _file_lines(files), decode=decode_receipt_line,
                                evidence=archive)


# ---------------------------------------------------------------------------------------------
# CLI: tee-sidecar receipts verify FILE [--evidence-dir DIR] [--rotated] [--json]
# ---------------------------------------------------------------------------------------------

def _location(report: ReceiptsReport, result: ReceiptLineResult) -> str:
    if len(report.files) > 1:
        return f"{result.file.name} line {result.line}"
    return f"line {result.line}"


def receipts_json(report: ReceiptsReport) -> dict[str, Any]:
    """The report as the ``--json`` object: counts, chain head, and every invalid line."""
    return {
        "files": [str(f) for f in report.files],
        "total": report.total,
        "verified": report.verified,
        "recorded_failed": report.recorded_failed,
        "invalid": report.invalid,
        "head_sha256": report.head_sha256,
        "invalid_lines": [
            {"file": str(r.file), "line": r.line,
             "failures": [{"check": c.name, "code": c.code, "detail": c.detail}
                          for c in r.failures]}
            for r in report.invalid_lines
        ],
    }


def receipts_text(report: ReceiptsReport) -> str:
    """The report for people: the summary line, then one line per failure of an invalid line."""
    summary = (f"{report.total} receipts: {report.verified} verified, "
               f"{report.recorded_failed} recorded as failed, {report.invalid} INVALID")
    out = [summary]
    for result in report.invalid_lines:
        out.extend(f"{_location(report, result)}: {check.detail}" for check in result.failures)
    if report.head_sha256 is not None:
        out.append(f"chain head sha256: {report.head_sha256}")
    return "\n".join(out)


__all__ = [
    "DEFAULT_BACKUPS",
    "DEFAULT_MAX_BYTES",
    "EVIDENCE_DIRNAME",
    "GENESIS_PREV_SHA256",
    "RECEIPT_FORMAT",
    "Receipt",
    "ReceiptFormatError",
    "ReceiptLineResult",
    "ReceiptLog",
    "ReceiptLogError",
    "ReceiptOutcome",
    "ReceiptVerdict",
    "ReceiptsReport",
    "decode_receipt_line",
    "encode_receipt_line",
    "receipt_time",
    "receipts_json",
    "receipts_text",
    "rotated_paths",
    "verify_receipts",
]
