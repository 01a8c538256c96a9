"""The evidence archive stays bounded under a hostile gateway (issue 11, finding 3).

A gateway padded reports with unknown fields and repeated one node 64 times: the archive grew
by megabytes per re-attestation and every copy cost an NRAS call.
"""

from __future__ import annotations

import json

from sidecar.receipts import verify_receipts
from tests.adversarial.conftest import assert_blocked
from tests.adversarial.harness import AdversarialStack, chat, post, MESSAGES, TEE_MODEL
from tests.adversarial.mitm import rewrite_response


def _padded_and_repeated(body: bytes) -> bytes:
    report = json.loads(body)
    node = dict(report, padding_inside="p" * (20 << 10))
    return json.dumps(dict(report, all_attestations=[node] * 64,
                           padding="x" * (1 << 20))).encode()


def test_padding_is_not_archived_and_a_repeated_node_costs_one_nras_call(
        adv: AdversarialStack) -> None:
    url = adv.sidecar(fresh=True)
    adv.mitm.on("attestation", rewrite_response(_padded_and_repeated))
    status, headers, _ = chat(url)
    assert status == 200 and headers["x-tee-verified"] == "true"
    assert len(adv.mitm.exchanges("nras")) == 1
    state = adv.sidecar_state(url)
    assert state.receipts is not None
    archived = list(state.receipts.evidence_dir.glob("*.json"))
    assert archived and sum(p.stat().st_size for p in archived) < 200 << 10
    assert b"padding" not in b"".join(p.read_bytes() for p in archived)
    # The receipt still re-verifies offline against what was archived.
    assert verify_receipts(state.receipts.path).ok


def _distinct_nodes(count: int):  # type: ignore[no-untyped-def]
    def rewrite(body: bytes) -> bytes:
        report = json.loads(body)
        nodes = [dict(report, model_name=f"copy-{i}") for i in range(count)]
        return json.dumps(dict(report, all_attestations=nodes)).encode()
    return rewrite


def test_a_report_with_more_nodes_than_the_setting_is_refused(adv: AdversarialStack) -> None:
    url = adv.sidecar(fresh=True, attestation={"max_nodes": 4})
    adv.mitm.on("attestation", rewrite_response(_distinct_nodes(5)))
    status, headers, body = post(url + "/chat/completions",
                                 {"model": TEE_MODEL, "messages": MESSAGES})
    assert_blocked(status, headers, body, "attestation.too_many_nodes")
    assert adv.mitm.exchanges("nras") == [] and adv.mitm.exchanges("pcs") == []
