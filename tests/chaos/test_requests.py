"""The client's view, judged from hand-made request records: what counts as failed, percentiles, and the
`requests` expectation passing and failing as it should."""

from __future__ import annotations

from typing import Any

import pytest

from chaos.checks import judge_expectation
from chaos.traffic import failure, percentile, tally
from tests.chaos.timelines import expect, fault, observation, req


@pytest.mark.parametrize(
    ("facts", "reason"),
    [
        ({}, None),
        ({"stream": True}, None),
        ({"status": 503}, "HTTP 503"),
        ({"status": None, "timed_out": True, "done": False}, "timed out"),
        ({"status": None, "transport_error": "ConnectError: refused", "done": False}, "connection failed"),
        ({"stream": True, "error_event": "the stream broke"}, "error event (the stream broke)"),
        ({"stream": True, "done": False}, "stream ended without data: [DONE]"),
        ({"stream": True, "stray_lines": 1}, "1 line(s) in the stream that were not data events"),
        ({"stream": True, "finished": False}, "no choice finished"),
        ({"done": False, "finished": False}, "the answer was not a completion"),
        ({"status": 502, "error_event": "all attempts failed"}, "HTTP 502"),
    ],
)
def test_what_counts_as_a_failed_request(facts: dict[str, Any], reason: str | None) -> None:
    """Not 200, timed out, an error event, or not complete: each is a failure with its reason."""
    got = failure(req(1.0, **facts))
    assert got is None if reason is None else (got is not None and got.startswith(reason))


def test_a_cut_stream_that_still_ends_with_done_is_a_failure() -> None:
    """[DONE] after two chunks and no finish_reason: looks complete to a lax client, is counted failed."""
    cut = req(1.0, stream=True, chunks=2, finished=False)
    assert failure(cut) is not None
    assert tally([cut, req(2.0, stream=True)]).failed == 1


def test_percentiles_are_values_really_seen() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([0.3], 99) == 0.3
    assert percentile([], 50) is None


def test_tally_counts_and_groups_reasons() -> None:
    counts = tally([req(1), req(2, status=503), req(3, status=503), req(4, timed_out=True)])
    assert (counts.sent, counts.succeeded, counts.failed) == (4, 1, 3)
    assert counts.reasons == (("HTTP 503", 2), ("timed out", 1))
    assert counts.describe() == "4 sent, 1 succeeded, 3 failed (HTTP 503 x2, timed out x1)"


def judged(spec: dict[str, Any], requests: list[Any], **kwargs: Any) -> tuple[bool | None, str]:
    verdict = judge_expectation(
        expect({"requests": {"model": "m1", **spec}}), observation([], requests=requests, **kwargs)
    )
    return verdict.passed, verdict.message


def test_no_failed_request_passes_with_the_counts_and_latency() -> None:
    passed, message = judged({"failed_max": 0}, [req(1, 0.1), req(2, 0.2), req(3, 0.3)])
    assert passed is True
    assert message == "m1 requests: 3 sent, 3 succeeded, 0 failed; latency p50 0.200s, p99 0.300s"


def test_one_failed_request_too_many_fails_naming_it() -> None:
    """failed_max: 0 and one 503: the verdict fails and says when it was sent, how long it took and why."""
    requests = [req(1), req(2.5, 0.4, status=503, request_id="abc"), req(3)]
    passed, message = judged({"failed_max": 0}, requests)
    assert passed is False
    assert "1 failed, at most 0 allowed" in message
    assert "+2.50s /v1/completions after 0.40s: HTTP 503 [abc]" in message
    assert judged({"failed_max": 1}, requests)[0] is True


def test_p99_over_its_bound_fails_naming_the_slowest() -> None:
    requests = [req(float(t), 0.1) for t in range(1, 100)] + [req(100, 4.2)]
    passed, message = judged({"p99_max": 2.0}, requests)
    assert passed is True  # 1 slow request in 100 is beyond the 99th percentile
    requests.append(req(101, 5.0))
    passed, message = judged({"p99_max": 2.0}, requests)
    assert passed is False
    assert "p99 4.200s is over 2s (slowest: 5.00s at +101.00s, 4.20s at +100.00s" in message


def test_too_few_requests_prove_nothing() -> None:
    """A load that never ran (or barely) fails even failed_max: 0, which zero requests would meet."""
    passed, message = judged({"failed_max": 0}, [])
    assert passed is False
    assert "only 0 sent, at least 1 needed" in message
    assert judged({"failed_max": 0, "sent_min": 3}, [req(1), req(2)])[0] is False


def test_fallback_answers_are_counted() -> None:
    by_fallback = [req(t, served_by="m2", fallback="no ready replica of m1") for t in (1, 2)]
    assert judged({"failed_max": 0, "fallback_min": 2}, by_fallback)[0] is True
    passed, message = judged({"failed_max": 0, "fallback_min": 3}, [*by_fallback, req(3, served_by="m1")])
    assert passed is False
    assert "2 answered by a fallback, 3 expected (served by ['m1', 'm2'])" in message


def test_the_after_fault_window_leaves_out_requests_in_flight_when_it_took_effect() -> None:
    """A stream cut by the fault was sent before it took effect: `window: after_fault` does not judge it."""
    cut = req(4.9, 0.3, stream=True, error_event="stream broke")
    later = [req(5.2), req(6.0, status=503)]
    faults = [fault(5.0, applied=5.1)]
    assert judged({"failed_max": 1}, [cut, *later], faults=faults)[0] is False  # the cut stream and the 503
    assert judged({"failed_max": 1, "window": "after_fault"}, [cut, *later], faults=faults)[0] is True
    passed, message = judged({"failed_max": 0, "window": "after_fault"}, [cut, *later], faults=faults)
    assert passed is False
    assert message.startswith("m1 requests sent after the first fault: 2 sent, 1 succeeded, 1 failed")
    assert judged({"failed_max": 0, "window": "after_fault"}, [cut, later[0]], faults=faults)[0] is True


def test_requests_of_other_models_are_not_judged() -> None:
    passed, message = judged({"failed_max": 0}, [req(1), req(2, status=503, model="m2")])
    assert passed is True
    assert message.startswith("m1 requests: 1 sent")


def test_plain_and_streamed_requests_can_be_judged_apart() -> None:
    """A stream cut mid-way may be allowed while a plain request, always retryable, may not fail."""
    requests = [req(1, stream=True, error_event="stream broke"), req(2), req(3, status=502)]
    passed, message = judged({"failed_max": 0, "stream": False}, requests)
    assert passed is False
    assert message.startswith("m1 plain requests: 2 sent, 1 succeeded, 1 failed (HTTP 502 x1)")
    assert judged({"failed_max": 1, "stream": True}, requests) == (
        True,
        "m1 streamed requests: 1 sent, 0 succeeded, 1 failed (error event (stream broke) x1); "
        "latency p50 0.100s, p99 0.100s",
    )
