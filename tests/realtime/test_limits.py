"""Tests for tidewire.realtime.limits: buckets, keyed limiters, strikes, RateLimiter."""

from __future__ import annotations

import math
from collections.abc import Hashable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidewire.errors import RateLimited
from tidewire.realtime.limits import (
    DEFAULT_MAX_STRIKES,
    DEFAULT_PER_CONNECTION,
    DEFAULT_STRIKE_WINDOW,
    KeyedLimiter,
    RateLimit,
    RateLimiter,
    RateLimits,
    Strikes,
    TokenBucket,
)

# --- TokenBucket ---------------------------------------------------------------------------


def test_bucket_starts_full() -> None:
    """A new bucket allows exactly ``burst`` takes at one instant, then refuses."""
    bucket = TokenBucket(rate=1.0, burst=5)
    assert [bucket.take(100.0) for _ in range(5)] == [0.0] * 5
    assert bucket.take(100.0) > 0.0


def test_bucket_retry_after_is_time_to_next_token() -> None:
    """A refused take returns the seconds until the cost is available and deducts nothing."""
    bucket = TokenBucket(rate=10.0, burst=2)
    assert bucket.take(0.0, 2.0) == 0.0
    assert bucket.take(0.05) == pytest.approx(0.05)
    assert bucket.take(0.05) == pytest.approx(0.05)  # the refusal cost nothing
    assert bucket.take(0.1) == 0.0


def test_bucket_retry_after_for_larger_cost() -> None:
    """Retry-after scales with the missing tokens."""
    bucket = TokenBucket(rate=2.0, burst=4)
    assert bucket.take(0.0, 4.0) == 0.0
    assert bucket.take(0.0, 3.0) == pytest.approx(1.5)


def test_bucket_refill_is_capped_at_burst() -> None:
    """A long idle period refills to ``burst``, not beyond."""
    bucket = TokenBucket(rate=100.0, burst=3)
    bucket.take(0.0)
    assert bucket.level(1000.0) == 3.0
    assert [bucket.take(1000.0) for _ in range(4)][-1] > 0.0


def test_bucket_refill_is_continuous() -> None:
    """Half the refill interval earns half a token."""
    bucket = TokenBucket(rate=1.0, burst=1)
    assert bucket.take(0.0) == 0.0
    assert bucket.level(0.5) == pytest.approx(0.5)
    assert bucket.take(0.5, 0.5) == 0.0
    assert bucket.level(0.5) == pytest.approx(0.0)


def test_bucket_time_going_backwards_earns_nothing() -> None:
    """A clock that jumps back neither refills nor breaks the bucket."""
    bucket = TokenBucket(rate=1.0, burst=1)
    assert bucket.take(100.0) == 0.0
    assert bucket.take(50.0) == pytest.approx(1.0)
    # Coming back to 100.0 must not count the 50 s jump twice.
    assert bucket.take(100.5) == pytest.approx(0.5)
    assert bucket.take(101.0) == 0.0


def test_bucket_cost_above_burst_is_never_available() -> None:
    """A cost larger than the bucket returns infinity, not a misleading wait."""
    bucket = TokenBucket(rate=1.0, burst=2)
    assert bucket.take(0.0, 3.0) == math.inf
    assert bucket.level(0.0) == 2.0


def test_bucket_zero_cost_is_always_allowed() -> None:
    """A zero cost passes even on an empty bucket."""
    bucket = TokenBucket(rate=1.0, burst=1)
    bucket.take(0.0)
    assert bucket.take(0.0, 0.0) == 0.0


@pytest.mark.parametrize(
    ("rate", "burst", "name"),
    [(0.0, 1.0, "rate"), (-1.0, 1.0, "rate"), (math.nan, 1.0, "rate"), (math.inf, 1.0, "rate")]
    + [(1.0, 0.5, "burst"), (1.0, 0.0, "burst"), (1.0, math.inf, "burst")],
)
def test_bucket_rejects_bad_parameters(rate: float, burst: float, name: str) -> None:
    """rate <= 0 or burst < 1 (or non-finite) raise ValueError naming the parameter and value."""
    with pytest.raises(ValueError, match=name) as info:
        TokenBucket(rate, burst)
    assert repr(rate if name == "rate" else burst) in str(info.value)


@pytest.mark.parametrize("cost", [-1.0, math.nan, math.inf])
def test_bucket_rejects_bad_cost(cost: float) -> None:
    """A negative or non-finite cost is a ValueError naming it."""
    with pytest.raises(ValueError, match="cost"):
        TokenBucket(1.0, 1.0).take(0.0, cost)


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(0.1, 1000.0),
    burst=st.integers(1, 50),
    steps=st.lists(
        st.tuples(st.floats(-5.0, 5.0), st.sampled_from([0.0, 0.5, 1.0, 2.0, 7.0])),
        max_size=200,
    ),
)
def test_bucket_never_exceeds_burst_plus_refill(
    rate: float, burst: int, steps: list[tuple[float, float]]
) -> None:
    """Over any sequence of takes, allowed cost <= burst + rate * elapsed (clock may go back)."""
    bucket = TokenBucket(rate, burst)
    now = 0.0
    start = latest = steps[0][0] if steps else 0.0  # the bucket is full at the first take
    allowed = 0.0
    for n, (dt, cost) in enumerate(steps, 1):
        now += dt
        latest = max(latest, now)
        if bucket.take(now, cost) == 0.0:
            allowed += cost
        assert allowed <= burst + rate * (latest - start) + 1e-6 * n


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.1, 1000.0),
    burst=st.integers(1, 50),
    costs=st.lists(st.floats(0.1, 1.0), min_size=1, max_size=100),
)
def test_bucket_waiting_retry_after_is_enough(rate: float, burst: int, costs: list[float]) -> None:
    """After a refusal, taking again ``retry_after`` seconds later succeeds."""
    bucket = TokenBucket(rate, burst)
    now = 0.0
    for cost in costs:
        wait = bucket.take(now, cost)
        if wait:
            assert 0.0 < wait <= cost / rate + 1e-9
            now += wait
            assert bucket.take(now, cost) == 0.0


# --- RateLimit -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate", "burst"),
    [
        ("10/s", 10.0, 10.0),
        ("600/m", 10.0, 600.0),
        ("600 / min", 10.0, 600.0),
        ("3600/h", 1.0, 3600.0),
        ("100/10s", 10.0, 100.0),
        ("5/s burst 20", 5.0, 20.0),
        ("5/S BURST 20", 5.0, 20.0),
        ("0.5/s", 0.5, 1.0),
        ("1/day", 1 / 86400, 1.0),
    ],
)
def test_rate_limit_parse(text: str, rate: float, burst: float) -> None:
    """parse() understands N/unit, N/<span>unit and an optional burst."""
    limit = RateLimit.parse(text)
    assert limit.rate == pytest.approx(rate)
    assert limit.burst == burst


@pytest.mark.parametrize(
    "text", ["", "10", "10/", "/s", "10/fortnight", "-1/s", "0/s", "10/0s", "5/s burst", "a/s"]
)
def test_rate_limit_parse_rejects_bad_input(text: str) -> None:
    """Unparseable or non-positive limits are ValueErrors that quote the input."""
    with pytest.raises(ValueError, match="rate limit"):
        RateLimit.parse(text)


def test_rate_limit_parse_rejects_small_burst() -> None:
    """An explicit burst below 1 is refused by the dataclass check."""
    with pytest.raises(ValueError, match="burst"):
        RateLimit.parse("5/s burst 0.5")


def test_rate_limit_validates() -> None:
    """The dataclass itself refuses rate <= 0 and burst < 1."""
    with pytest.raises(ValueError, match="rate"):
        RateLimit(rate=0.0, burst=1.0)
    with pytest.raises(ValueError, match="burst"):
        RateLimit(rate=1.0, burst=0.0)


def test_rate_limit_str_round_trips() -> None:
    """str() is parseable back into the same limit."""
    limit = RateLimit(rate=5.0, burst=20.0)
    assert str(limit) == "5/s burst 20"
    assert RateLimit.parse(str(limit)) == limit
    assert limit.recovery == 4.0


# --- KeyedLimiter --------------------------------------------------------------------------


def test_keyed_limiter_separates_keys() -> None:
    """Each key has its own bucket."""
    limiter: KeyedLimiter[str] = KeyedLimiter(RateLimit(rate=1.0, burst=2.0))
    assert limiter.check("a", 0.0) == 0.0
    assert limiter.check("a", 0.0) == 0.0
    assert limiter.check("a", 0.0) == pytest.approx(1.0)
    assert limiter.check("b", 0.0) == 0.0
    assert len(limiter) == 2


def test_keyed_limiter_drops_full_buckets() -> None:
    """A bucket idle long enough to be full again is forgotten on the next check."""
    limiter: KeyedLimiter[str] = KeyedLimiter(RateLimit(rate=1.0, burst=2.0))
    limiter.check("a", 0.0)
    assert "a" in limiter
    limiter.check("b", 0.5)
    limiter.check("c", 1.0)  # a is full again at 1.0
    assert "a" not in limiter
    assert len(limiter) == 2


def test_keyed_limiter_prune_drops_every_full_bucket() -> None:
    """prune() scans everything, including full buckets behind a busy one."""
    limiter: KeyedLimiter[str] = KeyedLimiter(RateLimit(rate=1.0, burst=10.0))
    limiter.check("busy", 0.0, 10.0)  # full again at 10.0
    limiter.check("light", 0.1)  # full again at 1.1
    limiter.check("busy", 0.2, 0.0)
    assert len(limiter) == 2
    assert limiter.prune(2.0) == 1
    assert "light" not in limiter
    assert "busy" in limiter
    assert limiter.prune(10.0) == 1
    assert len(limiter) == 0


def test_keyed_limiter_state_survives_until_full() -> None:
    """A drained key is still limited until it refills (pruning keeps it)."""
    limiter: KeyedLimiter[str] = KeyedLimiter(RateLimit(rate=1.0, burst=1.0))
    limiter.check("a", 0.0)
    assert limiter.check("a", 0.5) == pytest.approx(0.5)
    assert limiter.prune(0.5) == 0
    assert limiter.check("a", 0.5) == pytest.approx(0.5)


def test_keyed_limiter_fresh_bucket_needs_no_memory() -> None:
    """A zero-cost or impossible check on a new key stores nothing."""
    limiter: KeyedLimiter[str] = KeyedLimiter(RateLimit(rate=1.0, burst=1.0))
    assert limiter.check("a", 0.0, 0.0) == 0.0
    assert limiter.check("b", 0.0, 5.0) == math.inf
    assert len(limiter) == 0


def test_keyed_limiter_evicts_oldest_at_max_keys() -> None:
    """At max_keys with nothing prunable, the least recently used key is evicted."""
    limiter: KeyedLimiter[int] = KeyedLimiter(RateLimit(rate=0.001, burst=1.0), max_keys=3)
    for key in range(3):
        limiter.check(key, 0.0)
    limiter.check(0, 0.0)  # touch 0: 1 is now the least recently used
    limiter.check(3, 0.0)
    assert len(limiter) == 3
    assert 1 not in limiter
    assert {0, 2, 3} == {key for key in range(4) if key in limiter}
    assert limiter.evictions == 1


def test_keyed_limiter_prefers_pruning_to_eviction() -> None:
    """At max_keys, buckets that are full again go before any live one is evicted."""
    limiter: KeyedLimiter[str] = KeyedLimiter(RateLimit(rate=1.0, burst=10.0), max_keys=2)
    limiter.check("busy", 0.0, 10.0)  # full again at 10.0, least recently used
    limiter.check("light", 0.0)  # full again at 1.0
    limiter.check("new", 2.0)
    assert "busy" in limiter
    assert "light" not in limiter
    assert limiter.evictions == 0


def test_keyed_limiter_forget() -> None:
    """forget() drops a key and tolerates unknown keys."""
    limiter: KeyedLimiter[str] = KeyedLimiter(RateLimit(rate=1.0, burst=1.0))
    limiter.check("a", 0.0)
    limiter.forget("a")
    limiter.forget("missing")
    assert len(limiter) == 0
    assert limiter.check("a", 0.0) == 0.0


def test_keyed_limiter_rejects_bad_max_keys() -> None:
    """max_keys below 1 is a ValueError naming it."""
    with pytest.raises(ValueError, match="max_keys"):
        KeyedLimiter(RateLimit(rate=1.0, burst=1.0), max_keys=0)


def test_keyed_limiter_flood_of_distinct_keys_stays_bounded() -> None:
    """One new key per message (spoofed clients) never grows past max_keys."""
    limiter: KeyedLimiter[int] = KeyedLimiter(RateLimit(rate=1.0, burst=5.0), max_keys=1000)
    for n in range(20_000):
        assert limiter.check(n, n * 1e-4) == 0.0
        assert len(limiter) <= 1000
    assert len(limiter) == 1000


@settings(max_examples=200, deadline=None)
@given(
    max_keys=st.integers(1, 20),
    steps=st.lists(
        st.tuples(st.integers(0, 40), st.floats(-1.0, 3.0), st.sampled_from([0.0, 1.0, 3.0])),
        max_size=200,
    ),
)
def test_keyed_limiter_never_holds_more_than_max_keys(
    max_keys: int, steps: list[tuple[int, float, float]]
) -> None:
    """Whatever the keys, times and costs, len() stays <= max_keys."""
    limiter: KeyedLimiter[int] = KeyedLimiter(RateLimit(rate=2.0, burst=3.0), max_keys=max_keys)
    now = 0.0
    for key, dt, cost in steps:
        now += dt
        limiter.check(key, now, cost)
        assert len(limiter) <= max_keys


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.tuples(st.integers(0, 5), st.floats(0.0, 2.0)), max_size=150),
)
def test_keyed_limiter_matches_unbounded_buckets(steps: list[tuple[int, float]]) -> None:
    """With room for every key, pruning never changes an answer (full == fresh)."""
    limit = RateLimit(rate=1.5, burst=2.0)
    limiter: KeyedLimiter[int] = KeyedLimiter(limit, max_keys=10)
    reference: dict[int, TokenBucket] = {}
    now = 0.0
    for key, dt in steps:
        now += dt
        expected = reference.setdefault(key, limit.bucket()).take(now)
        assert limiter.check(key, now) == pytest.approx(expected, abs=1e-9)


# --- Strikes -------------------------------------------------------------------------------


def test_strikes_fire_at_max_within_window() -> None:
    """The max_strikes-th strike within the window returns True."""
    strikes: Strikes[str] = Strikes(3, 10.0)
    assert strikes.add("c", 0.0) is False
    assert strikes.add("c", 1.0) is False
    assert strikes.add("c", 9.0) is True
    assert strikes.count("c", 9.0) == 3


def test_strikes_slide_out_of_the_window() -> None:
    """Strikes older than the window stop counting."""
    strikes: Strikes[str] = Strikes(3, 10.0)
    strikes.add("c", 0.0)
    strikes.add("c", 5.0)
    assert strikes.add("c", 10.0) is False  # the strike at 0.0 has left (0.0 <= 10 - 10)
    assert strikes.count("c", 10.0) == 2
    assert strikes.add("c", 11.0) is True


def test_strikes_are_per_key() -> None:
    """One key's strikes do not count for another."""
    strikes: Strikes[str] = Strikes(2, 10.0)
    strikes.add("a", 0.0)
    assert strikes.add("b", 0.0) is False
    assert strikes.add("a", 0.0) is True


def test_strikes_drop_idle_keys() -> None:
    """A key whose strikes all left the window is forgotten on the next add or prune."""
    strikes: Strikes[str] = Strikes(5, 1.0)
    strikes.add("a", 0.0)
    strikes.add("b", 0.5)
    strikes.add("c", 1.2)
    assert len(strikes) == 2
    assert strikes.prune(1.6) == 1
    assert len(strikes) == 1
    strikes.forget("c")
    assert len(strikes) == 0
    assert strikes.count("c", 1.6) == 0


def test_strikes_time_going_backwards() -> None:
    """A clock that jumps back does not shrink or stretch the window."""
    strikes: Strikes[str] = Strikes(2, 5.0)
    strikes.add("a", 100.0)
    assert strikes.add("a", 50.0) is True


def test_strikes_bounded_keys() -> None:
    """At max_keys the least recently struck key is evicted."""
    strikes: Strikes[int] = Strikes(2, 100.0, max_keys=2)
    for key in range(5):
        strikes.add(key, 0.0)
        assert len(strikes) <= 2
    assert strikes.count(0, 0.0) == 0
    assert strikes.count(4, 0.0) == 1


@pytest.mark.parametrize(
    ("args", "name"), [((0, 1.0), "max_strikes"), ((1, 0.0), "window"), ((1, -1.0), "window")]
)
def test_strikes_reject_bad_parameters(args: tuple[int, float], name: str) -> None:
    """Bad parameters are ValueErrors naming the parameter."""
    with pytest.raises(ValueError, match=name):
        Strikes(*args)


@settings(max_examples=200, deadline=None)
@given(
    max_strikes=st.integers(1, 5),
    times=st.lists(st.floats(0.0, 3.0), max_size=60),
)
def test_strikes_match_a_naive_count(max_strikes: int, times: list[float]) -> None:
    """add() is True exactly when the last max_strikes strikes fit in the window."""
    window = 2.0
    strikes: Strikes[str] = Strikes(max_strikes, window)
    seen: list[float] = []
    now = 0.0
    for dt in times:
        now += dt
        seen.append(now)
        recent = [t for t in seen if t > now - window]
        assert strikes.add("k", now) is (len(recent) >= max_strikes)


# --- RateLimits and RateLimiter ------------------------------------------------------------


def test_rate_limits_defaults() -> None:
    """Defaults: per connection 100/s burst 200, nothing else, strikes 10 in 10 s."""
    limits = RateLimits()
    assert limits.per_connection == DEFAULT_PER_CONNECTION == RateLimit(rate=100.0, burst=200.0)
    assert limits.per_user is None and limits.per_ip is None
    assert dict(limits.per_type) == {}
    assert (limits.max_strikes, limits.strike_window) == (10, 10.0)
    assert (DEFAULT_MAX_STRIKES, DEFAULT_STRIKE_WINDOW) == (10, 10.0)


def test_rate_limits_copy_per_type() -> None:
    """per_type is copied and read-only, so later edits of the caller's dict do not leak in."""
    per_type = {"typing": RateLimit(rate=1.0, burst=1.0)}
    limits = RateLimits(per_type=per_type)
    per_type["chat"] = RateLimit(rate=1.0, burst=1.0)
    assert list(limits.per_type) == ["typing"]
    with pytest.raises(TypeError):
        limits.per_type["x"] = RateLimit(rate=1.0, burst=1.0)  # type: ignore[index]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_strikes": 0}, "max_strikes"),
        ({"strike_window": 0.0}, "strike_window"),
        ({"max_keys": 0}, "max_keys"),
    ],
)
def test_rate_limits_validate(kwargs: dict[str, float], name: str) -> None:
    """Bad values are ValueErrors naming the field."""
    with pytest.raises(ValueError, match=name):
        RateLimits(**kwargs)  # type: ignore[arg-type]


def test_rate_limits_type_check() -> None:
    """A string where a RateLimit belongs is refused early, naming the field."""
    with pytest.raises(TypeError, match="per_user"):
        RateLimits(per_user="10/s")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="per_type"):
        RateLimits(per_type={"chat": "10/s"})  # type: ignore[dict-item]


def test_rate_limiter_per_connection() -> None:
    """The default per-connection limit allows the burst, then refuses."""
    limiter = RateLimiter()
    results = [limiter.check(conn_id=1, now=0.0) for _ in range(201)]
    assert results[:200] == [0.0] * 200
    assert results[200] == pytest.approx(0.01)
    assert limiter.check(conn_id=2, now=0.0) == 0.0


def test_rate_limiter_per_user_spans_connections() -> None:
    """per_user counts every connection of a user together; anonymous skips it."""
    limiter = RateLimiter(RateLimits(per_connection=None, per_user=RateLimit(1.0, 2.0)))
    assert limiter.check(conn_id=1, user="ann", now=0.0) == 0.0
    assert limiter.check(conn_id=2, user="ann", now=0.0) == 0.0
    assert limiter.check(conn_id=3, user="ann", now=0.0) == pytest.approx(1.0)
    assert limiter.check(conn_id=3, user="bob", now=0.0) == 0.0
    assert all(limiter.check(conn_id=3, user=None, now=0.0) == 0.0 for _ in range(10))


def test_rate_limiter_per_ip() -> None:
    """per_ip counts every connection from one address together."""
    limiter = RateLimiter(RateLimits(per_connection=None, per_ip=RateLimit(1.0, 1.0)))
    assert limiter.check(conn_id=1, ip="10.0.0.1", now=0.0) == 0.0
    assert limiter.check(conn_id=2, ip="10.0.0.1", now=0.0) == pytest.approx(1.0)
    assert limiter.check(conn_id=2, ip="10.0.0.2", now=0.0) == 0.0


def test_rate_limiter_per_type_is_per_connection() -> None:
    """A per-type limit applies to that type only, separately for each connection."""
    limits = RateLimits(per_connection=None, per_type={"typing": RateLimit(2.0, 1.0)})
    limiter = RateLimiter(limits)
    assert limiter.check(conn_id=1, msg_type="typing", now=0.0) == 0.0
    assert limiter.check(conn_id=1, msg_type="typing", now=0.0) == pytest.approx(0.5)
    assert limiter.check(conn_id=2, msg_type="typing", now=0.0) == 0.0
    assert limiter.check(conn_id=1, msg_type="chat", now=0.0) == 0.0


def test_rate_limiter_returns_max_retry_after_and_checks_all() -> None:
    """The answer is the largest wait of the limits that fired; every limit pays."""
    limits = RateLimits(
        per_connection=RateLimit(1.0, 1.0),
        per_user=RateLimit(0.25, 1.0),
        per_type={"chat": RateLimit(0.5, 1.0)},
    )
    limiter = RateLimiter(limits)
    assert limiter.check(conn_id=1, user="ann", msg_type="chat", now=0.0) == 0.0
    assert limiter.check(conn_id=1, user="ann", msg_type="chat", now=0.0) == pytest.approx(4.0)
    # A new connection of ann: its own buckets are fresh, the user bucket is not.
    assert limiter.check(conn_id=2, user="ann", msg_type="chat", now=0.0) == pytest.approx(4.0)
    # ... and that refused message still paid conn 2's own buckets.
    assert limiter.check(conn_id=2, now=0.0) == pytest.approx(1.0)


def test_rate_limiter_enforce_raises_rate_limited() -> None:
    """enforce() raises RateLimited with retry_after and the limit that fired."""
    limiter = RateLimiter(RateLimits(per_connection=RateLimit(2.0, 1.0)))
    limiter.enforce(conn_id=1, now=0.0)
    with pytest.raises(RateLimited) as info:
        limiter.enforce(conn_id=1, now=0.0)
    assert info.value.retry_after == pytest.approx(0.5)
    assert info.value.code == "rate_limited"
    assert "per_connection=2/s burst 1" in str(info.value)


def test_rate_limiter_strikes_and_forget() -> None:
    """strike() reports sustained abuse; forget() resets a connection's state."""
    limits = RateLimits(per_connection=RateLimit(1.0, 1.0), max_strikes=2, strike_window=5.0)
    limiter = RateLimiter(limits)
    assert limiter.strike(1, 0.0) is False
    assert limiter.strike(1, 1.0) is True
    limiter.check(conn_id=1, now=0.0)
    assert limiter.check(conn_id=1, now=0.0) > 0.0
    limiter.forget(1)
    assert limiter.check(conn_id=1, now=0.0) == 0.0
    assert limiter.strike(1, 1.0) is False


def test_rate_limiter_strikes_disabled() -> None:
    """max_strikes=None never asks for a close."""
    limiter = RateLimiter(RateLimits(max_strikes=None))
    assert not any(limiter.strike(1, 0.0) for _ in range(100))


def test_rate_limiter_prune() -> None:
    """prune() drops state that is equivalent to fresh across all limiters."""
    limits = RateLimits(per_connection=RateLimit(1.0, 1.0), per_user=RateLimit(1.0, 1.0))
    limiter = RateLimiter(limits)
    limiter.check(conn_id=1, user="ann", now=0.0)
    limiter.strike(1, 0.0)
    assert limiter.prune(0.5) == 0
    assert limiter.prune(100.0) == 3


@settings(max_examples=100, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 30), st.sampled_from(["a", "b", None]), st.floats(0.0, 0.1)),
        max_size=150,
    )
)
def test_rate_limiter_never_exceeds_per_user(steps: list[tuple[int, str | None, float]]) -> None:
    """However many connections a user opens, per_user caps the user's total."""
    limit = RateLimit(2.0, 3.0)
    limiter = RateLimiter(RateLimits(per_connection=None, per_user=limit))
    allowed: dict[Hashable, int] = {}
    now = 0.0
    for conn_id, user, dt in steps:
        now += dt
        if limiter.check(conn_id=conn_id, user=user, now=now) == 0.0 and user is not None:
            allowed[user] = allowed.get(user, 0) + 1
            assert allowed[user] <= limit.burst + limit.rate * now + 1e-6
