"""Tests of llmds.admission: every limit, with a fake clock so time is exact."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds.admission import ADMIT, QUEUE, REJECT, AdmissionController, MovingWindowRate, TokenBucket
from llmds.errors import InvalidInputError


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_no_limits_admits_everything_with_a_reason():
    controller = AdmissionController(clock=FakeClock())
    decision = controller.submit("r1", 1000)
    assert decision.action == ADMIT and decision.admitted and decision.reason
    assert controller.tokens_in_flight == 1000


def test_request_bucket_queues_beyond_burst_then_releases_as_it_refills():
    clock = FakeClock()
    controller = AdmissionController(requests_per_second=2, request_burst=2, clock=clock)
    assert [controller.submit(i, 10).action for i in range(4)] == [ADMIT, ADMIT, QUEUE, QUEUE]
    assert controller.counts == {ADMIT: 2, QUEUE: 2, REJECT: 0}
    assert controller.queue_length == 2
    assert controller.next_release_time() == pytest.approx(0.5)  # one request refills in 1/2 s
    clock.advance(0.49)
    assert controller.release() == []
    clock.advance(0.01)
    released = controller.release()
    assert [d.request_id for d in released] == [2]
    clock.advance(0.5)
    assert [d.request_id for d in controller.release()] == [3]
    assert controller.queue_length == 0 and controller.next_release_time() == math.inf


def test_queued_decision_explains_the_rate_limit_and_when_to_retry():
    clock = FakeClock()
    controller = AdmissionController(tokens_per_second=100, token_burst=150, clock=clock)
    assert controller.submit("a", 100).admitted
    decision = controller.submit("b", 100)  # 50 left, needs 100: 0.5 s of refill
    assert decision.action == QUEUE
    assert "token rate above 100/s" in decision.reason
    assert decision.retry_after == pytest.approx(0.5)


def test_arrival_order_is_kept_while_someone_is_queued():
    clock = FakeClock()
    controller = AdmissionController(tokens_per_second=100, token_burst=100, clock=clock)
    assert controller.submit("big", 100).admitted
    assert controller.submit("big2", 100).action == QUEUE
    clock.advance(0.1)
    # A small request would fit in the refilled 10 tokens, but must not overtake "big2".
    decision = controller.submit("small", 5)
    assert decision.action == QUEUE and "earlier request" in decision.reason
    clock.advance(0.9)
    assert [d.request_id for d in controller.release()] == ["big2"]
    clock.advance(0.05)
    assert [d.request_id for d in controller.release()] == ["small"]


def test_request_larger_than_a_burst_is_rejected_not_queued_forever():
    controller = AdmissionController(tokens_per_second=100, token_burst=200, clock=FakeClock())
    decision = controller.submit("huge", 201)
    assert decision.action == REJECT and "burst" in decision.reason
    assert controller.queue_length == 0


def test_queue_length_limit_counts_scheduler_waiting_too():
    clock = FakeClock()
    controller = AdmissionController(requests_per_second=1, request_burst=1, max_queue_length=2, clock=clock)
    assert controller.submit(1, 1).admitted
    assert controller.submit(2, 1).action == QUEUE
    decision = controller.submit(3, 1, scheduler_waiting=1)
    assert decision.action == REJECT
    assert "queue full: 2 requests waiting (limit 2)" in decision.reason
    assert "req/s" in decision.reason


def test_kv_capacity_rejects_a_request_that_can_never_fit():
    controller = AdmissionController(kv_capacity_tokens=4096, clock=FakeClock())
    decision = controller.submit("long", 5000)
    assert decision.action == REJECT
    assert "5000 tokens of KV cache" in decision.reason and "4096" in decision.reason
    assert controller.submit("ok", 4096).admitted


def test_kv_budget_holds_requests_until_tokens_are_released():
    controller = AdmissionController(kv_budget_tokens=1000, clock=FakeClock())
    assert controller.submit("a", 600).admitted
    decision = controller.submit("b", 600)
    assert decision.action == QUEUE and "KV budget" in decision.reason
    assert decision.retry_after == math.inf and controller.next_release_time() == math.inf
    assert controller.release() == []
    controller.release_tokens(600)
    assert [d.request_id for d in controller.release()] == ["b"]
    assert controller.tokens_in_flight == 600
    with pytest.raises(InvalidInputError, match="in flight"):
        controller.release_tokens(601)


def test_moving_window_rate_estimate():
    clock = FakeClock()
    controller = AdmissionController(rate_window=10, clock=clock)
    for _ in range(20):
        controller.submit("r", 50)
        clock.advance(0.5)
    # 20 arrivals at t = 0 .. 9.5, observed at t = 10: the one at t = 0 has left the window.
    assert controller.observed_rates() == pytest.approx((1.9, 95.0))
    clock.advance(100)
    assert controller.observed_rates() == (0.0, 0.0)


def test_bad_arguments_raise_invalid_input_error():
    for kwargs in (
        {"requests_per_second": 0},
        {"tokens_per_second": -5},
        {"request_burst": 0, "requests_per_second": 1},
        {"max_queue_length": -1},
        {"kv_capacity_tokens": 0},
        {"rate_window": math.inf},
    ):
        with pytest.raises(InvalidInputError):
            AdmissionController(clock=FakeClock(), **kwargs)
    controller = AdmissionController(clock=FakeClock())
    for tokens in (-1, 2.5, "12", True):
        with pytest.raises(InvalidInputError, match="tokens"):
            controller.submit("x", tokens)


@settings(max_examples=50, deadline=None)
@given(
    rate=st.floats(1, 50),
    burst=st.floats(1, 20),
    gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=60),
)
def test_token_bucket_never_admits_more_than_burst_plus_rate_times_elapsed(rate, burst, gaps):
    clock = FakeClock()
    controller = AdmissionController(requests_per_second=rate, request_burst=burst, clock=clock)
    admitted = 0
    for index, gap in enumerate(gaps):
        clock.advance(gap)
        admitted += controller.submit(index, 1).admitted + len(controller.release())
        assert admitted <= burst + rate * clock.now + 1e-9
    assert admitted + controller.queue_length == len(gaps)


def test_token_bucket_and_window_building_blocks():
    bucket = TokenBucket(rate=10, now=0.0)
    assert bucket.burst == 10 and bucket.wait_time(10) == 0
    bucket.take(10)
    assert bucket.wait_time(5) == pytest.approx(0.5)
    bucket.refill(0.25)
    assert bucket.level == pytest.approx(2.5)
    window = MovingWindowRate(2.0)
    window.record(0.0, 10)
    window.record(1.0, 30)
    assert window.rates(1.5) == (1.0, 20.0)
    assert window.rates(2.5) == (0.5, 15.0)
