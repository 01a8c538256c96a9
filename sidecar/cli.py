"""The ``tee-sidecar`` command: serve, simulate, attest, verify, receipts verify, pins.

One argparse tree for every command and one table of exit statuses (``ExitStatus``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Sequence
from enum import IntEnum
from typing import Any, NoReturn
from datetime import datetime
from pathlib import Path

import structlog
from aiohttp import web

from sidecar import __version__
from sidecar.config import ProviderKind, Settings, TrustAnchors, load_settings
from sidecar.encoding import is_hex
from sidecar.errors import ConfigError, SidecarError, VerificationFailed, VerificationIncomplete
from sidecar.logs import configure_logging
from sidecar.providers.wire import parse_attestation_document
from sidecar.render import attestation_json, attestation_text
from sidecar.trust import SIMULATOR_WARNING, load_anchors
from sidecar.archive import decode_context
from sidecar.verify.attestation import (
    AttestationReport,
    NodeEvidence,
    verify_attestation,
)
from sidecar.verify.checks import Status
from sidecar.verify.signature import AttestedSigner, normalise_key



class ExitStatus(IntEnum):
    """The one table of exit statuses, for every command.

    0/1/2 are verdicts (attest, verify, receipts verify) and keep argparse's own 2 away from
    them (a usage error must not read as "undecided"): usage and configuration errors take the
    BSD sysexits values, which systemd and supervisors show by name.
    """

    OK = 0  # verified; every receipt valid; the command did its job
    FAILED = 1  # the evidence failed; a receipt is invalid; the command could not do its job
    UNDECIDED = 2  # incomplete: the evidence could not be decided (offline, unreachable)
    USAGE = 64  # EX_USAGE: bad arguments or unreadable input files
    CONFIG = 78  # EX_CONFIG: the settings or the policy cannot be loaded


#: A verdict's exit status (attestation reports say "incomplete", exchanges "undecided").
VERDICT_EXIT: dict[str, ExitStatus] = {"verified": ExitStatus.OK, "failed": ExitStatus.FAILED,
                                       "incomplete": ExitStatus.UNDECIDED,
                                       "undecided": ExitStatus.UNDECIDED}
EXIT_USAGE = ExitStatus.USAGE
EXIT_FAILURE = ExitStatus.FAILED
EXIT_CONFIG = ExitStatus.CONFIG
# Unix seconds beyond this are not a time (year 9999), whatever datetime would make of them.
MAX_UNIX_TIME = 253_402_300_799


class UsageError(Exception):
    """Arguments that make no sense; reported in one line with EX_USAGE."""


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 0-65535")
    return port


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with EX_USAGE for bad arguments (its own 2 would read as "incomplete")."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tee-sidecar",
        description="A local OpenAI-compatible proxy that verifies TEE attestation and the "
                    "signature of every completion before the app sees it.")
    parser.add_argument("--version", action="version", version=f"tee-sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve_parsers(sub)
    _add_attest_parser(sub)
    _add_verify_parser(sub)
    _add_receipts_parser(sub)
    _add_pins_parser(sub)
    return parser


def _add_serve_parsers(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the verifying proxy (default 127.0.0.1:8787)")
    serve.add_argument("--config", type=Path, help="TOML settings file (env TEE_SIDECAR_* overrides)")

    simulate = sub.add_parser("simulate", help="run the built-in simulated TEE provider")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=_port, default=8900)
    simulate.add_argument("--nodes", type=_positive, default=1,
                          help="serving nodes (signing keys)")
    simulate.add_argument("--api-key", help="require this bearer key (default: any key)")
    simulate.add_argument("--profile", choices=["nanogpt", "private-ml-sdk", "near-cloud",
                                                "near-direct", "redpill"],
                          help="serve only this provider profile, at the root (default: every "
                               "profile at its own prefix: /api, /, /near-cloud, /near-direct, "
                               "/redpill)")


def _add_attest_parser(sub: Any) -> None:
    attest = sub.add_parser(
        "attest", help="attest a model now, or verify a saved report offline",
        description="Attest MODEL through the configured provider and print every check; or, "
                    "with --report, verify a saved report offline. Exit status: 0 verified, "
                    "1 failed, 2 incomplete.")
    attest.add_argument("model", nargs="?", help="model to attest (online)")
    attest.add_argument("--config", type=Path, help="TOML settings file")
    attest.add_argument("--report", type=Path, help="saved attestation report JSON (offline)")
    attest.add_argument("--nonce", help="the 64-hex nonce the saved report was requested with")
    attest.add_argument("--collateral", action="append", default=[], metavar="[LABEL=]FILE",
                        help="DCAP collateral JSON (offline): FILE for every quote of the report, "
                             "or LABEL=FILE for one node (gateway, model-0, node-0, ...; a "
                             "node's collateral also serves its compose-manager quote, "
                             "LABEL/compose-manager=FILE overrides it); repeatable")
    attest.add_argument("--nras", type=Path, help="a saved NRAS answer for the GPU evidence")
    attest.add_argument("--jwks", type=Path,
                        help="NVIDIA's JWKS to check a saved NRAS answer against (offline, "
                             "production anchors; the simulator's is built in)")
    attest.add_argument("--context", type=Path,
                        help="the context the proxy archived beside the report "
                             "(evidence/<sha256>.context.json): nonce, time, collateral, NRAS "
                             "answer and JWKS as they were; the flags above override it")
    attest.add_argument("--at", help="verify as of this time (ISO 8601 or unix seconds; with "
                                     "--context, default: the attestation's own time)")
    attest.add_argument("--json", action="store_true", help="print one JSON object")


def _add_verify_parser(sub: Any) -> None:
    verify = sub.add_parser(
        "verify", help="re-check one saved exchange's signature offline",
        description="Re-check one saved exchange exactly as the proxy would: the request bytes "
                    "sent, the response bytes received (for SSE, through data: [DONE]) and the "
                    "signature record as returned, against keys attested by a saved report "
                    "(--report, verified offline as by attest --report) or a model-node key you "
                    "vouch for (--attested-key). Exit status: 0 verified, 1 failed, 2 undecided "
                    "(the signer's attestation could not be decided offline), 64 bad usage.")
    verify.add_argument("--request", type=Path, required=True,
                        help="the exact request body sent upstream")
    verify.add_argument("--response", type=Path, required=True,
                        help="the exact response body received")
    verify.add_argument("--signature", type=Path, required=True,
                        help="the signature endpoint's JSON answer, as returned")
    keys = verify.add_mutually_exclusive_group(required=True)
    keys.add_argument("--report", type=Path,
                      help="saved attestation report JSON whose attested keys may sign")
    keys.add_argument("--attested-key", metavar="KEY",
                      help="a model node key taken as attested (ecdsa 0x + 40 hex, ed25519 64 "
                           "hex); its model is --model, else the request's model")
    verify.add_argument("--model", help="the attested model the request resolved to (default: "
                                        "the request's model)")
    verify.add_argument("--provider", choices=[kind.value for kind in ProviderKind],
                        help="provider profile: which keys may sign records without "
                             "signature_kind, and whether a renamed model is accepted (nanogpt "
                             "only); default: model node keys, no rename")
    verify.add_argument("--nonce", help="with --report: the 64-hex nonce it was requested with")
    verify.add_argument("--context", type=Path, help="with --report: its archived context")
    verify.add_argument("--collateral", action="append", default=[], metavar="[LABEL=]FILE",
                        help="with --report: DCAP collateral JSON, as for attest; repeatable")
    verify.add_argument("--nras", type=Path, help="with --report: a saved NRAS answer")
    verify.add_argument("--jwks", type=Path, help="with --report: NVIDIA's JWKS")
    verify.add_argument("--at", help="with --report: verify as of this time")
    verify.add_argument("--config", type=Path, help="TOML settings file (trust anchors, policy)")
    verify.add_argument("--json", action="store_true", help="print one JSON object")


def _add_receipts_parser(sub: Any) -> None:
    receipts = sub.add_parser("receipts", help="re-check a receipts file offline",
                              description="Check receipts written by the proxy, offline.")
    actions = receipts.add_subparsers(dest="receipts_command", required=True)
    verify = actions.add_parser(
        "verify", help="re-check every receipt in a receipts file",
        description="Re-check each receipt: format, hash chain, the enclave's signature over the "
                    "request and response hashes, and the signing key's binding in the archived "
                    "attestation quote. Exit status: 0 all valid, 1 any invalid, 64 bad usage or "
                    "an unreadable file.")
    verify.add_argument("file", type=Path, help="receipts file (e.g. receipts.jsonl)")
    verify.add_argument("--evidence-dir", type=Path,
                        help="archived attestation reports (default: evidence/ beside FILE)")
    verify.add_argument("--rotated", action="store_true",
                        help="also read FILE.N … FILE.1 and check the chain across them")
    verify.add_argument("--expect-head", metavar="SHA256",
                        help="the chain head noted down elsewhere earlier (e.g. from /status or "
                             "a previous verify): fails unless the file still ends in that line "
                             "or continues from it; catches lines rewritten with the chain rebuilt")
    verify.add_argument("--json", action="store_true", help="print one JSON object")


def _add_pins_parser(sub: Any) -> None:
    pins = sub.add_parser(
        "pins", help="list, show, accept, forget or export deployment pins (trust on first use)",
        description="The deployment identities trusted per model, in <state.dir>/pins/ (the "
                    "same settings as serve). A running sidecar picks changes up at its next "
                    "attestation of the model, without a restart.")
    commands = pins.add_subparsers(dest="pins_command", required=True)
    for name, text in (("list", "one line per pinned model"),
                       ("show", "a model's pinned identities in full, and any pending change"),
                       ("accept", "trust the identity change that was refused for MODEL"),
                       ("forget", "drop MODEL's pins: its next attestation pins on first use"),
                       ("export", "print the pins in policy-file syntax (identity = \"pinned\")")):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--config", type=Path, help="TOML settings file")
        if name in ("show", "accept", "forget"):
            command.add_argument("model")
        if name == "export":
            command.add_argument("model", nargs="?", help="only this model")
        if name in ("list", "show"):
            command.add_argument("--json", action="store_true", help="print JSON")
        if name == "accept":
            command.add_argument("--keep-old", action="store_true",
                                 help="keep the old identities too (both during a roll-out)")
            command.add_argument("--report", type=Path,
                                 help="accept the identity of this saved report instead "
                                      "(evidence/<sha256>.json), verified again offline")
            command.add_argument("--context", type=Path,
                                 help="with --report: its archived context "
                                      "(evidence/<sha256>.context.json)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tee-sidecar`` command."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "simulate":
            return _simulate(args)
        if args.command == "pins":
            return _pins(args)
        if args.command == "receipts":
            return _receipts_verify(args)
        if args.command == "verify":
            return _verify(args)
        return _attest(args)
    except ConfigError as exc:
        print(f"tee-sidecar: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    except UsageError as exc:
        print(f"tee-sidecar: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SidecarError as exc:  # e.g. the receipts file is locked by another instance
        print(f"tee-sidecar: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:  # e.g. the port is taken
        print(f"tee-sidecar: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE


def _receipts_verify(args: argparse.Namespace) -> int:
    """``receipts verify``: every receipt of FILE re-checked; the chain head compared when
    ``--expect-head`` names the one noted down earlier."""
    from sidecar.receipts import GENESIS_PREV_SHA256, receipts_json, receipts_text, verify_receipts

    try:
        report = verify_receipts(args.file, args.evidence_dir, include_rotated=args.rotated)
    except OSError as exc:
        raise UsageError(f"receipts: cannot read {args.file}: {exc.strerror or exc}") from None
    head_ok = True
    if args.expect_head is not None:
        expected = args.expect_head.strip().lower()
        chain = {result.line_sha256 for result in report.lines} | {GENESIS_PREV_SHA256}
        head_ok = expected in chain
    if args.json:
        document = receipts_json(report)
        if args.expect_head is not None:
            document["expected_head_found"] = head_ok
        print(json.dumps(document, indent=2))
    else:
        print(receipts_text(report))
        if not head_ok:
            print(f"the expected chain head {args.expect_head} is not a line of this chain: "
                  "lines up to it were rewritten or removed")
    return ExitStatus.OK if report.ok and head_ok else ExitStatus.FAILED


def _serve(args: argparse.Namespace) -> int:
    from sidecar.proxy.server import serve

    settings = load_settings(args.config)
    configure_logging(settings.log.format, settings.log.level)
    if settings.trust.anchors is TrustAnchors.SIMULATOR:
        structlog.get_logger("tee_sidecar").warning("simulator_trust_anchors",
                                                    warning=SIMULATOR_WARNING)
        print(f"WARNING: {SIMULATOR_WARNING}", file=sys.stderr)
    return serve(settings)


def _simulate(args: argparse.Namespace) -> int:
    from sidecar.simulator.server import build_simulator

    configure_logging("auto", "warning")
    app, _ = build_simulator(nodes=args.nodes, api_key=args.api_key, profile=args.profile)
    where = (f"{args.profile} at /" if args.profile else
             "nanogpt under /api, private-ml-sdk at /, near-cloud under /near-cloud, "
             "near-direct under /near-direct, redpill under /redpill")
    print(f"simulated TEE provider on http://{args.host}:{args.port} ({where}; "
          f"PCS at /pcs, NRAS at /nras)", file=sys.stderr, flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
    return 0


def _pins(args: argparse.Namespace) -> int:
    from sidecar.pins import PinStore, PinStoreError, pins_command, pins_dir

    settings = load_settings(args.config)
    store = PinStore(pins_dir(settings.state.dir))
    try:
        if getattr(args, "report", None) is not None:
            return _pins_accept_saved(args, settings, store)
        return pins_command(args.pins_command, store, model=getattr(args, "model", None),
                            keep_old=getattr(args, "keep_old", False),
                            as_json=getattr(args, "json", False))
    except PinStoreError as exc:
        print(f"tee-sidecar pins: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE


def _pins_accept_saved(args: argparse.Namespace, settings: Settings, store: Any) -> int:
    from sidecar.pins import identities_from_saved_report
    from sidecar.policy_file import load_policy

    if args.context is None:
        raise UsageError("pins accept: --report needs --context FILE (its archived context)")
    try:
        body, context = args.report.read_bytes(), args.context.read_bytes()
    except OSError as exc:
        raise UsageError(f"pins accept: cannot read input: {exc}") from None
    anchors = load_anchors(settings.trust.anchors)
    identities = identities_from_saved_report(
        args.model, body, context, roots=anchors.roots, pinned_jwks=anchors.pinned_jwks,
        policy=load_policy(settings.policy.file).for_model(args.model))
    accepted = store.accept(args.model, keep_old=args.keep_old, identities=identities)
    print(f"accepted for {args.model} from {args.report}: "
          + ", ".join(f"{i.role} {i.fingerprint[:16]}" for i in accepted.identities))
    return 0


def _parse_time(text: str | None) -> int:
    """``--at``: unix seconds or ISO 8601; now when absent.

    Raises:
        UsageError: anything else, or a time outside years 1970-9999.
    """
    if text is None:
        return int(time.time())
    try:
        moment = int(text) if text.isdigit() else int(
            datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
    except (ValueError, OverflowError):
        raise UsageError(f"--at {text!r} is neither unix seconds nor ISO 8601") from None
    if not 0 <= moment <= MAX_UNIX_TIME:
        raise UsageError(f"--at {text!r} is outside the years 1970-9999")
    return moment


def _print_report(report: AttestationReport, as_json: bool) -> int:
    if as_json:
        print(json.dumps(attestation_json(report), indent=2))
    else:
        print(attestation_text(report))
    return VERDICT_EXIT[report.verdict]


def _attest(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    configure_logging(settings.log.format, "warning")
    if args.report is not None:
        return _attest_offline(args, settings)
    if not args.model:
        print("tee-sidecar attest: name a MODEL, or give --report FILE --nonce HEX", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_attest_online(args, settings))


async def _attest_online(args: argparse.Namespace, settings: Settings) -> int:
    from sidecar.proxy.wiring import build_attester, client_session, load_policies

    policies = load_policies(settings)
    async with client_session(settings) as session:
        _, attester = build_attester(settings, session, policies)
        try:
            report, _, _ = await attester.attest(args.model)
        except VerificationFailed as exc:
            verdict = "incomplete" if isinstance(exc, VerificationIncomplete) else "failed"
            print(json.dumps({"verdict": verdict,
                              "error": {"code": exc.code, "message": exc.message},
                              "checks": []}) if args.json else f"tee-sidecar attest: {exc}")
            return VERDICT_EXIT[verdict]
    return _print_report(report, args.json)


def _collateral_arguments(values: Sequence[str], report_body: bytes) -> dict[str, str]:
    """``--collateral`` values read into {label: collateral JSON}; ``""`` is the one for all.

    ``LABEL=FILE`` is a label only when LABEL names a quote of the report, so that a path which
    itself holds ``=`` still reads as a path.

    Raises:
        UsageError: two values for one label.
        OSError: a file cannot be read.
    """
    try:
        labels = {label for label, _ in parse_attestation_document(report_body).quotes()}
    except SidecarError:
        labels = set()  # the report itself fails later, with its own message
    found: dict[str, str] = {}
    for value in values:
        label, sep, path = value.partition("=")
        key, file = (label, path) if sep and label in labels else ("", value)
        if key in found:
            raise UsageError(f"--collateral given twice for {key or 'every quote'}")
        found[key] = Path(file).read_text()
    return found


def _attest_offline(args: argparse.Namespace, settings: Settings) -> int:
    try:
        report = _verify_saved_report(args, settings, "attest")
    except VerificationFailed as exc:  # the report body itself is off-contract
        print(f"tee-sidecar attest: {exc}", file=sys.stderr)
        return VERDICT_EXIT["failed"]
    return _print_report(report, args.json)


def _verify_saved_report(args: argparse.Namespace, settings: Settings,
                         command: str) -> AttestationReport:
    """Verify ``args.report`` offline with what the arguments (or its context) supply.

    Raises:
        UsageError: missing or unreadable inputs.
        VerificationFailed: the report body does not parse.
    """
    from sidecar.policy_file import load_policy

    if not args.nonce and not args.context:
        raise UsageError(f"{command}: --report needs --nonce HEX (the nonce it was requested "
                         "with) or --context FILE (the archived context, which records it)")
    if args.nonce and not is_hex(args.nonce.lower(), size=32):
        raise UsageError(f"{command}: --nonce must be 64 hex characters")
    at_arg = _parse_time(args.at) if args.at else None
    try:
        body = args.report.read_bytes()
        context = decode_context(args.context.read_bytes()) if args.context else None
        collateral_by_label = _collateral_arguments(args.collateral, body)
        nras = json.loads(args.nras.read_text()) if args.nras else None
        jwks = json.loads(args.jwks.read_text()) if args.jwks else None
    except (OSError, ValueError, RecursionError) as exc:
        raise UsageError(f"{command}: cannot read input: {exc}") from None
    except SidecarError as exc:
        raise UsageError(f"{command}: {exc.message}") from None
    nonce = (args.nonce or (context.nonce if context else "")).lower()
    # An archived context verifies as of the attestation's own time unless --at says otherwise.
    at = at_arg if at_arg is not None else (context.verified_at if context else int(time.time()))
    document = parse_attestation_document(body)
    anchors = load_anchors(settings.trust.anchors)
    evidence: dict[str, NodeEvidence] = {}
    gpu_nodes = {node.label for node in document.nodes if node.wire.nvidia_payload is not None}
    for label, _ in document.quotes():
        saved = context.evidence.get(label, NodeEvidence()) if context else NodeEvidence()
        # --nras answers a node's GPU payload; a gateway or a compose-manager quote has none.
        node_nras = nras if nras is not None and label in gpu_nodes else saved.nras_response
        # Most specific first: this quote's label, its node's, every quote's, the archive's.
        given = next((collateral_by_label[key] for key in (label, label.split("/")[0], "")
                      if key in collateral_by_label), None)
        evidence[label] = NodeEvidence(
            collateral_json=given if given is not None else saved.collateral_json,
            collateral_error=f"offline: no --collateral given for {label} (or in --context)",
            nras_response=node_nras,
            nras_error=("offline: NRAS cannot be consulted (give --nras with a saved answer)"
                        if node_nras is None
                        else "offline: no JWKS to check the NRAS answer (give --jwks)"),
            jwks=jwks or saved.jwks or anchors.pinned_jwks,
            tls_spki_sha256=saved.tls_spki_sha256,
        )
    # A NEAR report's first node is its gateway: the model is the one its model entry names.
    model = (context.model if context else None) or args.model or document.model_name \
        or "(saved report)"
    policies = load_policy(settings.policy.file)
    policy = policies.for_model(model)
    report = verify_attestation(document, model=model, nonce=nonce, evidence=evidence,
                                roots=anchors.roots, policy=policy, now=at,
                                gateway_policy=policies.gateway)
    if policy.provenance is not None:  # the bundles the proxy archived, checked offline
        from sidecar.proxy.provenance_source import recheck_archived

        report = recheck_archived(report, policy.provenance, settings.state.dir / "provenance",
                                  settings.provenance.trusted_root)
    return report


# ``verify --attested-key``: the key's form names its algorithm (spec 0.2).
_ECDSA_KEY = re.compile(r"0x[0-9a-fA-F]{40}")
_ED25519_KEY = re.compile(r"[0-9a-fA-F]{64}")
_REPORT_ONLY = ("nonce", "context", "collateral", "nras", "jwks", "at")


def _verify(args: argparse.Namespace) -> int:
    from sidecar.providers.contracts import SignerRules, signer_rules
    from sidecar.verify.exchange import verify_exchange

    if args.report is None and (given := [f"--{name}" for name in _REPORT_ONLY
                                          if getattr(args, name)]):
        raise UsageError(f"verify: {', '.join(given)} only go with --report")
    try:
        request, response, record = (args.request.read_bytes(), args.response.read_bytes(),
                                      args.signature.read_bytes())
    except OSError as exc:
        raise UsageError(f"verify: cannot read input: {exc}") from None
    rules = (signer_rules(ProviderKind(args.provider)) if args.provider
             else SignerRules(frozenset({"model"}), accept_model_renamed=False))
    expected_model = args.model or _request_model(request)
    attestation: AttestationReport | None = None
    if args.attested_key is not None:
        key = args.attested_key.strip()
        algo = ("ecdsa" if _ECDSA_KEY.fullmatch(key)
                else "ed25519" if _ED25519_KEY.fullmatch(key) else None)
        if algo is None:
            raise UsageError("verify: --attested-key is neither an ecdsa address (0x + 40 hex) "
                             "nor an ed25519 key (64 hex)")
        key = normalise_key(key, algo)
        attested = {key: AttestedSigner(key, algo, "model", expected_model)}
        undecided: dict[str, AttestedSigner] = {}
    else:
        settings = load_settings(args.config)
        configure_logging(settings.log.format, "warning")
        try:
            attestation = _verify_saved_report(args, settings, "verify")
        except VerificationFailed as exc:
            print(f"tee-sidecar verify: {exc}", file=sys.stderr)
            return VERDICT_EXIT["failed"]
        attested = attestation.attested_signers
        # Nodes whose attestation could not be decided offline: their keys are checked as if
        # attested, so every signature check runs; the verdict then stays "undecided".
        undecided = {n.signing_key: AttestedSigner(n.signing_key, n.algo, n.role,  # type: ignore[arg-type]
                                                   n.model_name)
                     for n in attestation.nodes if n.status is Status.INCOMPLETE}
    report = verify_exchange(request, response, record, attested={**undecided, **attested},
                             expected_model=expected_model, unkinded_roles=rules.unkinded_roles,
                             accept_model_renamed=rules.accept_model_renamed)
    verdict = ("failed" if not report.ok
               else "verified" if report.signer in attested else "undecided")
    if args.json:
        print(json.dumps({
            "verdict": verdict,
            "signature": {
                "checks": [{"name": c.name, "status": str(c.status), "detail": c.detail,
                            "code": c.code} for c in report.checks],
                "signer": report.signer, "algo": report.algo, "signer_role": report.signer_role,
                "request_binding": report.request_binding, "text_model": report.text_model,
                "expected_model": expected_model,
            },
            "attestation": attestation_json(attestation) if attestation is not None else None,
        }, indent=2))
        return VERDICT_EXIT[verdict]
    if attestation is not None:
        print(attestation_text(attestation) + "\n")
    print(f"Signature: {verdict.upper()}")
    for check in report.checks:
        code = f" ({check.code})" if check.code else ""
        print(f"  [{check.status.value.upper():>10}] {check.name}: {check.detail}{code}")
    if report.signer is not None:
        print(f"  signer {report.signer} ({report.algo}, role {report.signer_role or 'unattested'}), "
              f"request binding {report.request_binding or 'none'}")
    if verdict == "undecided":
        print("  the signer's attestation could not be decided offline (see the report above)")
    return VERDICT_EXIT[verdict]


def _request_model(request: bytes) -> str | None:
    """The top-level ``model`` of a request body, if it is a JSON object that names one."""
    try:
        obj = json.loads(request)
    except (ValueError, RecursionError):
        return None
    model = obj.get("model") if isinstance(obj, dict) else None
    return model if isinstance(model, str) and model else None
