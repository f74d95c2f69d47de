"""Admission control in front of an LLM server's queue: rate limits, queue and KV-budget limits.

An admission controller decides, for each arriving request, whether it enters the scheduler
now (``admit``), waits in the controller's own FIFO until a limit allows it (``queue``), or is
turned away (``reject``). Every decision carries a human-readable reason, because "why was my
request slow / refused" is the first question an operator asks.

Limits, each optional (``None`` disables it):

- Token buckets (the classic traffic-shaping algorithm, e.g. Tanenbaum, *Computer Networks*,
  section 5.4; the scheme API gateways and LLM providers use for requests-per-second and
  tokens-per-second quotas): a bucket of ``burst`` capacity refills at ``rate`` per second; a
  request needs one token from the requests bucket and its token count from the tokens bucket.
  A request whose need exceeds a bucket's burst can never pass and is rejected at once.
- ``max_queue_length``: requests already waiting (in this controller plus, as reported by the
  caller, in the scheduler) beyond which new arrivals are rejected, so overload produces fast
  refusals instead of unbounded latency.
- ``kv_capacity_tokens``: the whole KV cache. A request whose prompt plus output cannot fit even
  in an empty cache is rejected, since admitting it would only fail later.
- ``kv_budget_tokens``: tokens that admitted, unfinished requests may hold in total. A request
  that would exceed it waits in the queue until ``release_tokens`` returns capacity.

A moving-window estimate of the arrival rate (requests/s and tokens/s over the last
``rate_window`` seconds) is kept for reporting and is quoted in decision reasons.

Time comes from an injectable ``clock`` (a zero-argument callable returning seconds), so the
controller runs on wall-clock time in a server, on simulated time in the scheduler's
simulator, and on a fake clock in tests.
"""

from __future__ import annotations

import math
import numbers
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from llmds.errors import InvalidInputError

ADMIT = "admit"
QUEUE = "queue"
REJECT = "reject"


@dataclass(frozen=True)
class Decision:
    """Outcome of one admission decision.

    ``action`` is ``"admit"``, ``"queue"`` or ``"reject"``; ``reason`` explains it in words;
    ``retry_after`` is the earliest time, in seconds from now, at which a queued request could
    pass the limit that holds it (``math.inf`` when only a release of KV budget can help, 0
    for admit and reject).
    """

    request_id: Hashable
    action: str
    reason: str
    retry_after: float = 0.0

    @property
    def admitted(self) -> bool:
        return self.action == ADMIT


class TokenBucket:
    """A bucket of ``burst`` capacity refilled continuously at ``rate`` per second.

    Parameters
    ----------
    rate:
        Sustained allowance per second (requests or tokens). Must be positive.
    burst:
        Capacity of the bucket, the largest amount that can pass at once after a quiet period.
        Defaults to one second's worth of ``rate``. The bucket starts full.
    """

    def __init__(self, rate: float, burst: float | None = None, *, now: float = 0.0) -> None:
        _require_positive("rate", rate)
        burst = float(rate) if burst is None else burst
        _require_positive("burst", burst)
        self.rate = float(rate)
        self.burst = float(burst)
        self.level = self.burst
        self.updated_at = now

    def refill(self, now: float) -> None:
        if now > self.updated_at:
            self.level = min(self.burst, self.level + (now - self.updated_at) * self.rate)
            self.updated_at = now

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 if it is now); assumes ``refill`` was called."""
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount


class MovingWindowRate:
    """Arrivals per second over the last ``window`` seconds (a sliding window of events)."""

    def __init__(self, window: float) -> None:
        _require_positive("rate_window", window)
        self.window = float(window)
        self._events: deque[tuple[float, int]] = deque()
        self._tokens_in_window = 0

    def record(self, now: float, tokens: int) -> None:
        self._events.append((now, tokens))
        self._tokens_in_window += tokens
        self._expire(now)

    def rates(self, now: float) -> tuple[float, float]:
        """``(requests per second, tokens per second)`` over the window ending at ``now``."""
        self._expire(now)
        return len(self._events) / self.window, self._tokens_in_window / self.window

    def _expire(self, now: float) -> None:
        events = self._events
        horizon = now - self.window
        while events and events[0][0] <= horizon:
            self._tokens_in_window -= events.popleft()[1]


class AdmissionController:
    """Decides admit / queue / reject for each arriving request, with a reason for each.

    Parameters
    ----------
    requests_per_second, request_burst:
        Token bucket on request count; ``None`` (default) means no request-rate limit. The
        burst defaults to one second's worth.
    tokens_per_second, token_burst:
        Token bucket on tokens (prompt plus expected output, as passed to ``submit``); ``None``
        (default) means no token-rate limit. The burst defaults to one second's worth.
    max_queue_length:
        Reject arrivals once this many requests wait (this controller's queue plus the
        ``scheduler_waiting`` count the caller reports). ``None`` (default): unbounded.
    kv_capacity_tokens:
        Tokens the whole KV cache holds; larger requests are rejected. ``None``: not checked.
    kv_budget_tokens:
        Tokens admitted-but-unfinished requests may hold together; ``None``: unlimited.
    rate_window:
        Length in seconds of the moving window of the arrival-rate estimate (default 10 s,
        long enough to smooth Poisson noise at a few requests per second).
    clock:
        Zero-argument callable returning the current time in seconds (default
        ``time.monotonic``); tests and simulators pass their own.
    """

    def __init__(
        self,
        *,
        requests_per_second: float | None = None,
        request_burst: float | None = None,
        tokens_per_second: float | None = None,
        token_burst: float | None = None,
        max_queue_length: int | None = None,
        kv_capacity_tokens: int | None = None,
        kv_budget_tokens: int | None = None,
        rate_window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_queue_length is not None and (not isinstance(max_queue_length, int) or max_queue_length < 0):
            raise InvalidInputError(
                f"max_queue_length must be a non-negative int or None, got {max_queue_length!r}."
            )
        for name, value in (("kv_capacity_tokens", kv_capacity_tokens), ("kv_budget_tokens", kv_budget_tokens)):
            if value is not None:
                _require_positive(name, value)
        self._clock = clock
        now = clock()
        self._request_bucket = (
            None if requests_per_second is None else TokenBucket(requests_per_second, request_burst, now=now)
        )
        self._token_bucket = (
            None if tokens_per_second is None else TokenBucket(tokens_per_second, token_burst, now=now)
        )
        self.max_queue_length = max_queue_length
        self.kv_capacity_tokens = kv_capacity_tokens
        self.kv_budget_tokens = kv_budget_tokens
        self._rate = MovingWindowRate(rate_window)
        self._queue: deque[tuple[Hashable, int]] = deque()
        self._tokens_in_flight = 0
        self.counts = {ADMIT: 0, QUEUE: 0, REJECT: 0}

    # ---------------------------------------------------------------- public API

    @property
    def queue_length(self) -> int:
        """Requests held by this controller (decided ``queue`` and not yet released)."""
        return len(self._queue)

    @property
    def tokens_in_flight(self) -> int:
        """Tokens of admitted requests not yet returned with ``release_tokens``."""
        return self._tokens_in_flight

    def observed_rates(self) -> tuple[float, float]:
        """Moving-window estimate of arrivals: ``(requests per second, tokens per second)``."""
        return self._rate.rates(self._clock())

    def submit(self, request_id: Hashable, tokens: int, *, scheduler_waiting: int = 0) -> Decision:
        """Decide for one arriving request that needs ``tokens`` (prompt plus expected output).

        ``scheduler_waiting`` is the number of requests already waiting inside the scheduler,
        counted against ``max_queue_length``. A ``queue`` decision keeps the request here, in
        arrival order, until ``release`` hands it on.
        """
        if isinstance(tokens, bool) or not isinstance(tokens, numbers.Integral) or tokens < 0:
            raise InvalidInputError(
                f"request {request_id!r}: tokens must be a non-negative int, got {tokens!r}."
            )
        tokens = int(tokens)
        now = self._clock()
        self._rate.record(now, tokens)
        decision = self._first_rejection(request_id, tokens, scheduler_waiting)
        if decision is None:
            if self._queue:
                # Someone is already waiting: admitting past them would break arrival order.
                decision = Decision(
                    request_id, QUEUE,
                    f"{len(self._queue)} earlier request(s) are still held by the admission queue",
                    self._holding_delay(self._queue[0][1], now),
                )
            else:
                decision = self._try_admit(request_id, tokens, now)
            if decision.action == QUEUE:
                self._queue.append((request_id, tokens))
        self.counts[decision.action] += 1
        return decision

    def release(self) -> list[Decision]:
        """Admit queued requests, oldest first, for as long as the limits allow."""
        now = self._clock()
        released = []
        while self._queue:
            request_id, tokens = self._queue[0]
            decision = self._try_admit(request_id, tokens, now)
            if not decision.admitted:
                break
            self._queue.popleft()
            released.append(decision)
            self.counts[ADMIT] += 1
        return released

    def next_release_time(self) -> float:
        """Earliest clock time at which ``release`` could admit the head of the queue.

        ``math.inf`` if the queue is empty or only a ``release_tokens`` call can help.
        """
        if not self._queue:
            return math.inf
        now = self._clock()
        return now + self._holding_delay(self._queue[0][1], now)

    def release_tokens(self, tokens: int) -> None:
        """Return the KV budget of a finished (or cancelled) admitted request."""
        if tokens < 0 or tokens > self._tokens_in_flight:
            raise InvalidInputError(
                f"release_tokens({tokens}) but only {self._tokens_in_flight} tokens are in flight; "
                "release exactly the tokens each admitted request was submitted with, once."
            )
        self._tokens_in_flight -= tokens

    # ---------------------------------------------------------------- internals

    def _first_rejection(self, request_id: Hashable, tokens: int, scheduler_waiting: int) -> Decision | None:
        if self.kv_capacity_tokens is not None and tokens > self.kv_capacity_tokens:
            return Decision(
                request_id, REJECT,
                f"needs {tokens} tokens of KV cache but the whole cache holds {self.kv_capacity_tokens}",
            )
        if self.kv_budget_tokens is not None and tokens > self.kv_budget_tokens:
            return Decision(
                request_id, REJECT,
                f"needs {tokens} tokens but the in-flight KV budget is {self.kv_budget_tokens}",
            )
        for name, bucket, need in (
            ("requests/s", self._request_bucket, 1),
            ("tokens/s", self._token_bucket, tokens),
        ):
            if bucket is not None and need > bucket.burst:
                return Decision(
                    request_id, REJECT,
                    f"needs {need} from the {name} bucket, larger than its burst of {bucket.burst:g}",
                )
        waiting = len(self._queue) + scheduler_waiting
        if self.max_queue_length is not None and waiting >= self.max_queue_length:
            request_rate, _ = self._rate.rates(self._clock())
            return Decision(
                request_id, REJECT,
                f"queue full: {waiting} requests waiting (limit {self.max_queue_length}); "
                f"arrivals over the last {self._rate.window:g} s: {request_rate:.2f} req/s",
            )
        return None

    def _try_admit(self, request_id: Hashable, tokens: int, now: float) -> Decision:
        delay = self._holding_delay(tokens, now)
        if delay > 0:
            return Decision(request_id, QUEUE, self._holding_reason(tokens), delay)
        if self._request_bucket is not None:
            self._request_bucket.take(1)
        if self._token_bucket is not None:
            self._token_bucket.take(tokens)
        self._tokens_in_flight += tokens
        return Decision(request_id, ADMIT, "within every limit")

    def _holding_delay(self, tokens: int, now: float) -> float:
        """Seconds until a request of ``tokens`` passes every bucket and the KV budget."""
        delay = 0.0
        for bucket, need in ((self._request_bucket, 1), (self._token_bucket, tokens)):
            if bucket is not None:
                bucket.refill(now)
                delay = max(delay, bucket.wait_time(need))
        if self.kv_budget_tokens is not None and self._tokens_in_flight + tokens > self.kv_budget_tokens:
            delay = math.inf
        return delay

    def _holding_reason(self, tokens: int) -> str:
        reasons = []
        if self._request_bucket is not None and self._request_bucket.wait_time(1) > 0:
            reasons.append(f"request rate above {self._request_bucket.rate:g}/s")
        if self._token_bucket is not None and self._token_bucket.wait_time(tokens) > 0:
            reasons.append(f"token rate above {self._token_bucket.rate:g}/s")
        if self.kv_budget_tokens is not None and self._tokens_in_flight + tokens > self.kv_budget_tokens:
            reasons.append(
                f"KV budget: {self._tokens_in_flight} of {self.kv_budget_tokens} tokens in flight, "
                f"this request needs {tokens}"
            )
        return "; ".join(reasons)


def _require_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0 or math.isinf(value):
        raise InvalidInputError(f"{name} must be a positive finite number, got {value!r}.")
