"""One counter system: the status page's counts are the Prometheus registry's."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sidecar.telemetry import Telemetry


def _scraped(telemetry: Telemetry, name: str, **labels: str) -> int:
    return int(sum(sample.value
                   for family in text_string_to_metric_families(
                       telemetry.render_metrics().decode())
                   for sample in family.samples
                   if sample.name == name
                   and all(sample.labels.get(k) == v for k, v in labels.items())))


def test_status_counts_are_what_metrics_shows() -> None:
    telemetry = Telemetry()
    telemetry.observe_request("/v1/chat/completions", 200, "true")
    telemetry.observe_request("/v1/chat/completions", 502, "false")
    telemetry.observe_request("/nope", 200, "pending")
    telemetry.observe_verification("attestation", "pass", 0.1)
    telemetry.observe_verification("signature", "fail", 0.001)
    telemetry.observe_blocked("signature.response_hash_mismatch")
    telemetry.observe_identity_change("m")
    telemetry.record_exchange("m", "true", None)
    telemetry.record_exchange("m", "unavailable", None)

    counters = telemetry.snapshot()["counters"]

    assert counters == {
        "requests": 3, "requests_verified": 1, "requests_not_verified": 1, "requests_pending": 1,
        "blocked": 1, "attestations_passed": 1, "attestations_failed": 0,
        "attestations_incomplete": 0, "signatures_passed": 0, "signatures_failed": 1,
        "signatures_incomplete": 0, "identity_changes": 1, "exchanges_e2ee": 1,
        "exchanges_plaintext": 0, "exchanges_e2ee_unavailable": 1}
    assert counters["requests"] == _scraped(telemetry, "tee_sidecar_requests_total")
    assert counters["blocked"] == _scraped(telemetry, "tee_sidecar_blocked_responses_total")
    assert counters["exchanges_e2ee"] == _scraped(telemetry, "tee_sidecar_exchanges_total",
                                                  e2ee="true")
