"""A local client's made-up model names cost nothing upstream (issue 11, finding 6)."""

from __future__ import annotations

import json

from tests.adversarial.harness import MESSAGES, AdversarialStack, post


def test_made_up_model_names_fetch_no_attestation(adv: AdversarialStack) -> None:
    url = adv.sidecar(fresh=True)
    for i in range(50):
        status, headers, body = post(url + "/chat/completions",
                                     {"model": f"TEE/made-up-{i}", "messages": MESSAGES})
        assert status == 404, body[:200]
        assert headers["x-tee-failure"] == "request.unknown_model"
        assert json.loads(body)["error"]["code"] == "request.unknown_model"
    assert adv.mitm.exchanges("attestation") == []
    assert len(adv.mitm.exchanges("models")) == 1  # one list fetch, whatever the flood


def test_a_name_the_policy_names_exactly_is_still_attested(adv: AdversarialStack,
                                                           tmp_path: object) -> None:
    from pathlib import Path

    policy = Path(str(tmp_path)) / "policy.toml"
    policy.write_text('[models."TEE/not-listed"]\nrequire_tdx = true\n')
    url = adv.sidecar(fresh=True, policy={"file": str(policy)})
    status, headers, _ = post(url + "/chat/completions",
                              {"model": "TEE/not-listed", "messages": MESSAGES})
    assert status == 502 and headers["x-tee-failure"] == "attestation.unavailable"
    assert len(adv.mitm.exchanges("attestation")) == 1
