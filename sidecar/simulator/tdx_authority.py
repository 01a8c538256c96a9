"""The simulator's own Intel-DCAP-shaped test PKI, and real-format TDX evidence signed by it.

Why this exists: the demo and the tests must run the *same* quote verification as production
(``sidecar.verify.tdx.verify_tdx_quote`` → ``dcap_qvl.verify_with_root_ca``). Only the trust
anchor differs. So this module plays every Intel role itself, with its own keys:

- a root CA (subject says plainly that it is a TEST root and not Intel's),
- a "PCK Platform CA" intermediate and a PCK leaf carrying Intel's SGX extension
  (OID 1.2.840.113741.1.13.1: PPID, TCB components, PCESVN, CPUSVN, PCE-ID, FMSPC, SGX type),
- a "TCB Signing" certificate that signs TCB info and QE identity,
- a quoting-enclave attestation key that signs TDX v4 quotes,
- the CRLs of the root and of the platform CA.

Keys are derived from fixed seeds and every certificate field is fixed, and certificates and CRLs
are signed with deterministic ECDSA (RFC 6979). The root certificate is therefore byte-identical
in every process: the sidecar trusts ``sidecar/anchors/simulator_tdx_root_ca.der`` without ever
talking to the simulator, and a test asserts that this file equals :attr:`TestTdxAuthority.root_ca_der`.

The wire formats follow Intel's "Intel TDX DCAP Quote Generation Library and Quote Verification
Library" (quote v4), the PCS v4 API and what Phala-Network/dcap-qvl (``src/verify.rs``,
``src/quote.rs``, ``src/intel.rs``) demands; see /work/shared/spec/provider-api.md section 5.

Never use these keys for anything but tests: the seeds are public.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import struct
from collections.abc import Sequence
from typing import get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from sidecar.verify.policy import TcbStatus

__all__ = [
    "SIMULATOR_FMSPC",
    "TestTdxAuthority",
]

# --- Quote layout constants (Intel TDX DCAP quote v4; provider-api.md section 5) ---------------
QUOTE_VERSION_4 = 4
ATTESTATION_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_TDX = 0x81
# dcap-qvl rejects any other QE vendor ("Unknown QE vendor ID"): this is Intel's QE vendor id.
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
CERT_DATA_TYPE_PCK_CHAIN = 5
CERT_DATA_TYPE_QE_REPORT = 6
QE_AUTH_DATA_LEN = 32

# --- Platform identity of the simulated machine --------------------------------------------------
#: FMSPC of the simulated platform (6 bytes). Chosen so it cannot collide with a real Intel FMSPC
#: family by accident in an offline collateral directory ("5E" = "SiMulator").
SIMULATOR_FMSPC = bytes.fromhex("5E0000000001")
_PCE_ID = bytes.fromhex("0000")
_PCE_SVN = 13
# SGX TCB components (CPUSVN) of the platform; the collateral's UpToDate level lists these.
_CPU_SVN = bytes([3, 3, 2, 2, 4, 1, 0, 5] + [0] * 8)
# TEE_TCB_SVN of the TD report: byte 0 = TDX module ISVSVN, byte 1 = module major version
# (selects the "TDX_01" module identity in TCB info), byte 2 = TDX late microcode SVN.
_TEE_TCB_SVN = bytes([6, 1, 3] + [0] * 13)
# TD attributes: only SEPT_VE_DISABLE (bit 28) set, as dcap-qvl requires; DEBUG clear.
_TD_ATTRIBUTES = bytes.fromhex("0000001000000000")
#: The same with DEBUG (bit 0 of TDATTRIBUTES, Intel TDX module spec) set: a debuggable TD whose
#: memory the host can read. For negative tests only.
DEBUG_TD_ATTRIBUTES = bytes.fromhex("0100001000000000")
_XFAM = bytes.fromhex("e702060000000000")
_MR_SEAM = hashlib.sha384(b"tee-sidecar simulator TDX module").digest()
# Intel signs its TDX modules with an all-zero MRSIGNER_SEAM; keep the real shape.
_MR_SIGNER_SEAM = bytes(48)

# --- Quoting enclave identity --------------------------------------------------------------------
_QE_MRSIGNER = hashlib.sha256(b"tee-sidecar simulator TD_QE signer").digest()
_QE_ISV_PROD_ID = 2
_QE_ISV_SVN = 4
# SGX attributes of the QE: INIT | MODE64BIT, never DEBUG (0x02).
_QE_ATTRIBUTES = bytes.fromhex("11000000000000000000000000000000")

# --- Fixed certificate fields (so the DER is byte-identical across processes) ------------------
_CERT_NOT_BEFORE = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
_CERT_NOT_AFTER = dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
_ORG = "tee-sidecar simulator (TEST ONLY, not Intel)"

#: How long collateral issued by :meth:`TestTdxAuthority.collateral_json` stays valid.
COLLATERAL_VALIDITY_SECONDS = 30 * 24 * 3600
#: Collateral is back-dated by this much so a verifier whose clock lags slightly still accepts it.
COLLATERAL_BACKDATE_SECONDS = 3600

_SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"

_TcbLevel = tuple[list[int], int, list[int]]


def _derived_key(label: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 key derived from a public, fixed seed: stable across processes, test-only."""
    seed = hashlib.sha256(f"tee-sidecar simulator tdx {label}".encode()).digest()
    # The P-256 group order n; reduce into [1, n-1] so every seed yields a valid scalar.
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    scalar = int.from_bytes(seed, "big") % (order - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def _raw_p256_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA-P256-SHA256 as the 64-byte ``r || s`` that Intel formats use (quote, TCB info)."""
    # Deterministic (RFC 6979): the same authority and inputs give the same evidence bytes.
    der = key.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _raw_public_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The 64-byte ``x || y`` public key (SEC1 uncompressed without the 0x04 prefix)."""
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return point[1:]


def _iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- Minimal DER writer for the SGX extension (the only structure cryptography cannot build) ---


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return _der(0x06, bytes(body))


def _der_int(value: int) -> bytes:
    raw = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return _der(0x02, raw)


def _der_seq(*items: bytes) -> bytes:
    return _der(0x30, b"".join(items))


def _sgx_entry(suffix: str, value: bytes) -> bytes:
    return _der_seq(_der_oid(f"{_SGX_EXTENSION_OID}.{suffix}"), value)


def _sgx_extension_value(*, ppid: bytes, platform_instance_id: bytes) -> bytes:
    """The DER value of Intel's SGX extension, laid out like a real PCK certificate's.

    Order and nesting as in Intel's "SGX PCK Certificate and CRL Profile": PPID, TCB
    (sixteen component SVNs, PCESVN, CPUSVN), PCE-ID, FMSPC, SGX type (1 = Platform, which
    carries a platform instance id and a configuration sequence).
    """
    tcb_entries = [_sgx_entry(f"2.{i + 1}", _der_int(svn)) for i, svn in enumerate(_CPU_SVN)]
    tcb_entries.append(_sgx_entry("2.17", _der_int(_PCE_SVN)))
    tcb_entries.append(_sgx_entry("2.18", _der(0x04, _CPU_SVN)))
    configuration = _der_seq(
        _sgx_entry("7.1", _der(0x01, b"\x00")),  # dynamicPlatform
        _sgx_entry("7.2", _der(0x01, b"\x00")),  # cachedKeys
        _sgx_entry("7.3", _der(0x01, b"\x00")),  # SMTEnabled
    )
    return _der_seq(
        _sgx_entry("1", _der(0x04, ppid)),
        _sgx_entry("2", _der_seq(*tcb_entries)),
        _sgx_entry("3", _der(0x04, _PCE_ID)),
        _sgx_entry("4", _der(0x04, SIMULATOR_FMSPC)),
        _sgx_entry("5", _der(0x0A, b"\x01")),
        _sgx_entry("6", _der(0x04, platform_instance_id)),
        _sgx_entry("7", configuration),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "ZZ"),
        ]
    )


def _certificate(
    *,
    subject: x509.Name,
    subject_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    serial: int,
    ca_path_length: int | None,
    is_ca: bool,
    extra: Sequence[x509.ExtensionType] = (),
) -> x509.Certificate:
    """One certificate with the extensions webpki (inside dcap-qvl) needs, signed deterministically."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(subject_key.public_key())
        .serial_number(serial)
        .not_valid_before(_CERT_NOT_BEFORE)
        .not_valid_after(_CERT_NOT_AFTER)
        .add_extension(
            x509.BasicConstraints(ca=is_ca, path_length=ca_path_length if is_ca else None),
            critical=True,
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=not is_ca,
                content_commitment=not is_ca,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    for ext in extra:
        builder = builder.add_extension(ext, critical=False)
    # Deterministic ECDSA: the same inputs give the same DER in every process (the anchor file).
    return builder.sign(issuer_key, hashes.SHA256(), ecdsa_deterministic=True)


class TestTdxAuthority:
    """Every Intel role of TDX DCAP attestation, played with public test keys.

    Args:
        tcb_status: TCB status of the TCB-info level the simulated platform matches. Anything but
            ``"UpToDate"`` makes the collateral list a higher ``UpToDate`` level that the platform
            does not reach, as Intel's collateral does for an out-of-date machine.
        advisory_ids: advisory ids attached to the matched level (e.g. ``("INTEL-SA-00837",)``).
        below_all_tcb_levels: make every listed TCB level require more than the platform has, so
            verification fails with "No matching TCB level found" (a platform Intel never certified).

    Raises:
        ValueError: if ``tcb_status`` is not one of Intel's TCB status names.
    """

    # The class name starts with "Test"; tell pytest it is not a test case.
    __test__ = False

    # Every status Intel's TCB info can give a level (the policy's accepted ones, and Revoked).
    TCB_STATUSES = frozenset(get_args(TcbStatus)) | {"Revoked"}

    def __init__(
        self,
        *,
        tcb_status: str = "UpToDate",
        advisory_ids: Sequence[str] = (),
        below_all_tcb_levels: bool = False,
    ) -> None:
        if tcb_status not in self.TCB_STATUSES:
            raise ValueError(f"unknown TCB status {tcb_status!r}")
        self.tcb_status = tcb_status
        self.advisory_ids = tuple(advisory_ids)
        self.below_all_tcb_levels = below_all_tcb_levels

        self._root_key = _derived_key("root ca")
        self._platform_ca_key = _derived_key("pck platform ca")
        self._pck_key = _derived_key("pck leaf")
        self._tcb_signing_key = _derived_key("tcb signing")
        self._attestation_key = _derived_key("qe attestation key")

        root_name = _name("tee-sidecar SIMULATOR TEST Root CA (not Intel)")
        # "Platform" in the issuer name is how dcap-qvl classifies the PCK CA (pckcrl?ca=platform).
        platform_ca_name = _name("tee-sidecar SIMULATOR TEST PCK Platform CA")
        self._root_cert = _certificate(
            subject=root_name,
            subject_key=self._root_key,
            issuer=root_name,
            issuer_key=self._root_key,
            serial=0x51A0_0001,
            ca_path_length=1,
            is_ca=True,
        )
        self._platform_ca_cert = _certificate(
            subject=platform_ca_name,
            subject_key=self._platform_ca_key,
            issuer=root_name,
            issuer_key=self._root_key,
            serial=0x51A0_0002,
            ca_path_length=0,
            is_ca=True,
        )
        sgx_extension = x509.UnrecognizedExtension(
            x509.ObjectIdentifier(_SGX_EXTENSION_OID),
            _sgx_extension_value(
                ppid=hashlib.sha256(b"tee-sidecar simulator ppid").digest()[:16],
                platform_instance_id=hashlib.sha256(b"tee-sidecar simulator pid").digest()[:16],
            ),
        )
        self._pck_cert = _certificate(
            subject=_name("tee-sidecar SIMULATOR TEST PCK Certificate"),
            subject_key=self._pck_key,
            issuer=platform_ca_name,
            issuer_key=self._platform_ca_key,
            serial=0x51A0_0003,
            ca_path_length=None,
            is_ca=False,
            extra=(sgx_extension,),
        )
        self._tcb_signing_cert = _certificate(
            subject=_name("tee-sidecar SIMULATOR TEST TCB Signing"),
            subject_key=self._tcb_signing_key,
            issuer=root_name,
            issuer_key=self._root_key,
            serial=0x51A0_0004,
            ca_path_length=None,
            is_ca=False,
        )

    # --- Trust anchor and chains ----------------------------------------------------------------

    @property
    def root_ca_der(self) -> bytes:
        """DER of the simulator's TEST root CA: the anchor to pass to ``verify_tdx_quote``."""
        return self._root_cert.public_bytes(serialization.Encoding.DER)

    @property
    def fmspc(self) -> str:
        """FMSPC of the simulated platform as Intel writes it (12 upper-case hex digits)."""
        return SIMULATOR_FMSPC.hex().upper()

    def _pem(self, *certs: x509.Certificate) -> str:
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)

    @property
    def pck_chain_pem(self) -> str:
        """PCK leaf → platform CA → root, as embedded in quotes (certification data type 5)."""
        return self._pem(self._pck_cert, self._platform_ca_cert, self._root_cert)

    @property
    def pck_crl_issuer_chain_pem(self) -> str:
        """Issuer chain of the PCK CRL (platform CA → root), PCS header ``SGX-PCK-CRL-Issuer-Chain``."""
        return self._pem(self._platform_ca_cert, self._root_cert)

    @property
    def tcb_issuer_chain_pem(self) -> str:
        """Issuer chain of TCB info and QE identity (TCB signing → root)."""
        return self._pem(self._tcb_signing_cert, self._root_cert)

    # --- Quotes ---------------------------------------------------------------------------------

    def make_quote(
        self,
        *,
        report_data: bytes,
        mrtd: bytes,
        rtmr0: bytes,
        rtmr1: bytes,
        rtmr2: bytes,
        rtmr3: bytes,
        mr_config_id: bytes,
        td_attributes: bytes = _TD_ATTRIBUTES,
    ) -> bytes:
        """A TDX v4 quote over a TD report carrying exactly the given measurements.

        ``td_attributes`` (8 bytes) is a knob for negative tests: e.g. ``DEBUG_TD_ATTRIBUTES``, a
        debuggable TD, which a verifier must refuse although the quote is validly signed.

        Layout (Intel TDX DCAP quote v4): 48-byte header, 584-byte TD report body, 4-byte
        signature-data length, then ECDSA signature data: quote signature (P-256 over header ‖
        body), attestation public key, certification data type 6 (QE report, QE report signature
        by the PCK key, QE authentication data, nested certification data type 5 = PEM chain).

        Raises:
            ValueError: if a field has the wrong length (48 bytes for measurements, 64 for
                report_data).
        """
        for name, value, size in (
            ("report_data", report_data, 64),
            ("mrtd", mrtd, 48),
            ("rtmr0", rtmr0, 48),
            ("rtmr1", rtmr1, 48),
            ("rtmr2", rtmr2, 48),
            ("rtmr3", rtmr3, 48),
            ("mr_config_id", mr_config_id, 48),
            ("td_attributes", td_attributes, 8),
        ):
            if len(value) != size:
                raise ValueError(f"{name} must be {size} bytes, got {len(value)}")

        header = struct.pack(
            "<HHIHH16s20s",
            QUOTE_VERSION_4,
            ATTESTATION_KEY_TYPE_ECDSA_P256,
            TEE_TYPE_TDX,
            0,  # QE SVN field: reserved in v4 headers
            0,  # PCE SVN field: reserved in v4 headers
            INTEL_QE_VENDOR_ID,
            b"tee-sidecar-sim".ljust(20, b"\x00"),
        )
        body = b"".join(
            (
                _TEE_TCB_SVN,
                _MR_SEAM,
                _MR_SIGNER_SEAM,
                bytes(8),  # SEAMATTRIBUTES
                td_attributes,
                _XFAM,
                mrtd,
                mr_config_id,
                bytes(48),  # MROWNER
                bytes(48),  # MROWNERCONFIG
                rtmr0,
                rtmr1,
                rtmr2,
                rtmr3,
                report_data,
            )
        )
        assert len(header) == 48 and len(body) == 584  # noqa: S101 - layout invariant

        attestation_key = _raw_public_key(self._attestation_key)
        qe_auth_data = hashlib.sha256(b"tee-sidecar simulator QE auth data").digest()
        assert len(qe_auth_data) == QE_AUTH_DATA_LEN  # noqa: S101
        # The QE report binds the attestation key: its report_data starts with
        # sha256(attestation key ‖ QE auth data), and the PCK key signs the QE report.
        qe_report = self._qe_report(hashlib.sha256(attestation_key + qe_auth_data).digest())
        qe_report_signature = _raw_p256_signature(self._pck_key, qe_report)

        chain = self.pck_chain_pem.encode()
        inner_cert_data = struct.pack("<HI", CERT_DATA_TYPE_PCK_CHAIN, len(chain)) + chain
        qe_cert_body = (
            qe_report
            + qe_report_signature
            + struct.pack("<H", len(qe_auth_data))
            + qe_auth_data
            + inner_cert_data
        )
        quote_signature = _raw_p256_signature(self._attestation_key, header + body)
        signature_data = (
            quote_signature
            + attestation_key
            + struct.pack("<HI", CERT_DATA_TYPE_QE_REPORT, len(qe_cert_body))
            + qe_cert_body
        )
        return header + body + struct.pack("<I", len(signature_data)) + signature_data

    def _qe_report(self, report_data_prefix: bytes) -> bytes:
        """The 384-byte SGX enclave report of the (simulated) TD quoting enclave."""
        report = b"".join(
            (
                _CPU_SVN,
                struct.pack("<I", 0),  # MISCSELECT
                bytes(28),
                _QE_ATTRIBUTES,
                hashlib.sha256(b"tee-sidecar simulator TD_QE enclave").digest(),  # MRENCLAVE
                bytes(32),
                _QE_MRSIGNER,
                bytes(96),
                struct.pack("<HH", _QE_ISV_PROD_ID, _QE_ISV_SVN),
                bytes(60),
                report_data_prefix.ljust(64, b"\x00"),
            )
        )
        assert len(report) == 384  # noqa: S101
        return report

    # --- Collateral -----------------------------------------------------------------------------

    def tcb_info_json(self, now: int) -> str:
        """Signed-over TCB info (TDX, version 3), compact JSON as Intel's PCS serves it."""
        issue, next_update = self._validity(now)
        # A TCB level is (SGX component SVNs, PCESVN, TDX component SVNs).
        platform: _TcbLevel = (list(_CPU_SVN), _PCE_SVN, list(_TEE_TCB_SVN))
        higher: _TcbLevel = (
            [svn + 1 for svn in _CPU_SVN],
            _PCE_SVN + 1,
            [svn + 1 for svn in _TEE_TCB_SVN],
        )
        levels: list[tuple[_TcbLevel, str, tuple[str, ...]]]
        if self.below_all_tcb_levels:
            levels = [(higher, "UpToDate", ())]
        elif self.tcb_status == "UpToDate":
            levels = [(platform, "UpToDate", self.advisory_ids)]
        else:
            levels = [(higher, "UpToDate", ()), (platform, self.tcb_status, self.advisory_ids)]
        if not self.below_all_tcb_levels:
            # An old level below the platform keeps the list realistic (Intel lists history).
            levels.append((([0] * 16, 5, [0] * 16), "OutOfDate", ("INTEL-SA-00106",)))

        tcb_levels = []
        for (sgx, pce_svn, tdx), status, advisories in levels:
            level: dict[str, object] = {
                "tcb": {
                    "sgxtcbcomponents": [{"svn": s} for s in sgx],
                    "pcesvn": pce_svn,
                    "tdxtcbcomponents": [{"svn": s} for s in tdx],
                },
                "tcbDate": "2025-01-01T00:00:00Z",
                "tcbStatus": status,
            }
            if advisories:
                level["advisoryIDs"] = list(advisories)
            tcb_levels.append(level)

        tcb_info = {
            "id": "TDX",
            "version": 3,
            "issueDate": _iso(issue),
            "nextUpdate": _iso(next_update),
            "fmspc": self.fmspc,
            "pceId": _PCE_ID.hex().upper(),
            "tcbType": 0,
            "tcbEvaluationDataNumber": 17,
            "tdxModule": {
                "mrsigner": _MR_SIGNER_SEAM.hex().upper(),
                "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF",
            },
            "tdxModuleIdentities": [
                {
                    "id": "TDX_01",
                    "mrsigner": _MR_SIGNER_SEAM.hex().upper(),
                    "attributes": "0000000000000000",
                    "attributesMask": "FFFFFFFFFFFFFFFF",
                    "tcbLevels": [
                        {
                            "tcb": {"isvsvn": _TEE_TCB_SVN[0]},
                            "tcbDate": "2025-01-01T00:00:00Z",
                            "tcbStatus": "UpToDate",
                        }
                    ],
                }
            ],
            "tcbLevels": tcb_levels,
        }
        return json.dumps(tcb_info, separators=(",", ":"))

    def qe_identity_json(self, now: int) -> str:
        """Signed-over QE identity of the TD quoting enclave (id ``TD_QE``, version 2)."""
        issue, next_update = self._validity(now)
        identity = {
            "id": "TD_QE",
            "version": 2,
            "issueDate": _iso(issue),
            "nextUpdate": _iso(next_update),
            "tcbEvaluationDataNumber": 17,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": _QE_ATTRIBUTES.hex().upper(),
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": _QE_MRSIGNER.hex().upper(),
            "isvprodid": _QE_ISV_PROD_ID,
            "tcbLevels": [
                {
                    "tcb": {"isvsvn": _QE_ISV_SVN},
                    "tcbDate": "2025-01-01T00:00:00Z",
                    "tcbStatus": "UpToDate",
                }
            ],
        }
        return json.dumps(identity, separators=(",", ":"))

    def sign_tcb_data(self, data: str) -> str:
        """Hex ``r || s`` signature of the TCB signing key over ``data`` (TCB info, QE identity)."""
        return _raw_p256_signature(self._tcb_signing_key, data.encode()).hex()

    def root_ca_crl_der(self, now: int) -> bytes:
        """An empty CRL of the root CA (covers the platform CA and the TCB signing cert)."""
        return self._crl(self._root_cert, self._root_key, now)

    def pck_crl_der(self, now: int) -> bytes:
        """An empty CRL of the PCK platform CA (covers the PCK leaf)."""
        return self._crl(self._platform_ca_cert, self._platform_ca_key, now)

    def _crl(self, issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey, now: int) -> bytes:
        issue, next_update = self._validity(now)
        crl = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.subject)
            .last_update(dt.datetime.fromtimestamp(issue, tz=dt.UTC))
            .next_update(dt.datetime.fromtimestamp(next_update, tz=dt.UTC))
            .add_extension(x509.CRLNumber(1), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                critical=False,
            )
            .sign(key, hashes.SHA256(), ecdsa_deterministic=True)
        )
        return crl.public_bytes(serialization.Encoding.DER)

    def collateral_json(self, now: int) -> str:
        """Complete DCAP collateral in the JSON shape ``dcap_qvl.QuoteCollateralV3.from_json`` reads.

        Valid from ``now - 1 h`` to ``now + 30 days`` (TCB info, QE identity and both CRLs).
        """
        tcb_info = self.tcb_info_json(now)
        qe_identity = self.qe_identity_json(now)
        collateral = {
            "pck_crl_issuer_chain": self.pck_crl_issuer_chain_pem,
            "root_ca_crl": self.root_ca_crl_der(now).hex(),
            "pck_crl": self.pck_crl_der(now).hex(),
            "tcb_info_issuer_chain": self.tcb_issuer_chain_pem,
            "tcb_info": tcb_info,
            "tcb_info_signature": self.sign_tcb_data(tcb_info),
            "qe_identity_issuer_chain": self.tcb_issuer_chain_pem,
            "qe_identity": qe_identity,
            "qe_identity_signature": self.sign_tcb_data(qe_identity),
        }
        return json.dumps(collateral)

    @staticmethod
    def _validity(now: int) -> tuple[int, int]:
        issue = now - COLLATERAL_BACKDATE_SECONDS
        return issue, issue + COLLATERAL_VALIDITY_SECONDS
