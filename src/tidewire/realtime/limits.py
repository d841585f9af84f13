"""Rate limits with bounded memory: token buckets, keyed limiters, strike counters.

Pure: every call takes ``now`` (seconds, any monotonic origin) instead of
reading a clock, so tests pass time explicitly and never sleep.  Time that goes
backwards is treated as no time elapsed.

Memory is bounded by construction.  A keyed structure drops a key's state as
soon as it is equivalent to a fresh one (a bucket full again, a strike window
empty), prunes incrementally on every call, and never holds more than
``max_keys`` keys: a flood of distinct keys (one per spoofed client) evicts the
least recently used key instead of growing.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict, deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic, TypeVar

from tidewire.errors import RateLimited

__all__ = [
    "DEFAULT_MAX_KEYS",
    "DEFAULT_MAX_STRIKES",
    "DEFAULT_PER_CONNECTION",
    "DEFAULT_STRIKE_WINDOW",
    "KeyedLimiter",
    "RateLimit",
    "RateLimiter",
    "RateLimits",
    "Strikes",
    "TokenBucket",
]

K = TypeVar("K", bound=Hashable)

#: Float slack when comparing tokens with a cost: 0.1 s at 10/s can refill
#: 0.9999999999999999 tokens, which must count as 1 or a caller that waits
#: exactly ``retry_after`` seconds would be refused again.
_EPSILON = 1e-9

#: Keys one keyed limiter tracks at most.  A bucket is about 200 bytes with its
#: dict entry, so 100 000 keys cap a limiter near 20 MB however many clients
#: (or spoofed addresses) show up.
DEFAULT_MAX_KEYS = 100_000

#: Strikes (refused messages) within the window that close a connection with
#: 1008.  10: a client that backs off after a ``rate_limited`` error never gets
#: there; one that ignores the errors gets there within a second.
DEFAULT_MAX_STRIKES = 10

#: Seconds of the sliding strike window.
DEFAULT_STRIKE_WINDOW = 10.0


def _check_positive(name: str, value: float, minimum: float = 0.0, *, inclusive: bool) -> None:
    """ValueError naming ``name`` unless ``value`` is finite and above ``minimum``."""
    ok = value >= minimum if inclusive else value > minimum
    if not (ok and math.isfinite(value)):
        bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


class TokenBucket:
    """A token bucket: ``burst`` tokens at most, refilled continuously at ``rate`` per second.

    It starts full.  :meth:`take` either deducts the cost and returns 0.0 or
    deducts nothing and returns the seconds until the cost is available.
    """

    __slots__ = ("rate", "burst", "_tokens", "_stamp")

    rate: float
    burst: float
    _tokens: float
    _stamp: float | None

    def __init__(self, rate: float, burst: float) -> None:
        """A full bucket; ValueError unless ``rate > 0`` and ``burst >= 1``."""
        _check_positive("rate", rate, inclusive=False)
        _check_positive("burst", burst, 1.0, inclusive=True)
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = self.burst
        self._stamp = None

    def _refill(self, now: float) -> None:
        """Add the tokens earned since the last call; time going backwards earns none."""
        stamp = self._stamp
        if stamp is None:
            self._stamp = now
        elif now > stamp:
            self._tokens = min(self.burst, self._tokens + (now - stamp) * self.rate)
            self._stamp = now

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens at time ``now``: 0.0 if allowed, else seconds to wait.

        A refused take deducts nothing.  A cost above ``burst`` can never be
        paid: the answer is ``math.inf``.  ValueError for a negative cost.
        """
        if not (cost >= 0.0 and math.isfinite(cost)):
            raise ValueError(f"cost must be a finite number >= 0, got {cost!r}")
        self._refill(now)
        if self._tokens + _EPSILON >= cost:
            self._tokens = max(0.0, self._tokens - cost)
            return 0.0
        if cost > self.burst:
            return math.inf
        return (cost - self._tokens) / self.rate

    def level(self, now: float) -> float:
        """Tokens available at ``now``, without taking any."""
        stamp = self._stamp
        if stamp is None or now <= stamp:
            return self._tokens
        return min(self.burst, self._tokens + (now - stamp) * self.rate)

    def full_at(self) -> float:
        """When the bucket is full again if nothing is taken (``-inf`` if never used)."""
        if self._stamp is None:
            return -math.inf
        return self._stamp + (self.burst - self._tokens) / self.rate

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate!r}, burst={self.burst!r}, tokens={self._tokens!r})"


_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_RATE_SYNTAX = re.compile(
    rf"\s*(?P<count>{_NUMBER})\s*/\s*(?P<span>{_NUMBER})?\s*(?P<unit>[a-z]+)"
    rf"(?:\s+burst\s+(?P<burst>{_NUMBER}))?\s*",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``rate`` tokens per second, at most ``burst`` at once (one message costs one token)."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        """ValueError unless ``rate > 0`` and ``burst >= 1``, both finite."""
        _check_positive("rate", self.rate, inclusive=False)
        _check_positive("burst", self.burst, 1.0, inclusive=True)

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """Parse ``"10/s"``, ``"600/m"``, ``"100/10s"`` or ``"5/s burst 20"``.

        ``N/unit`` refills N tokens per unit (s, m, h, d or their long forms)
        and holds N: a client may spend the whole allowance at once, then
        continues at the steady rate.  ``burst B`` sets the bucket size instead.
        """
        match = _RATE_SYNTAX.fullmatch(text)
        unit = _UNITS.get(match.group("unit").lower()) if match else None
        if match is None or unit is None:
            raise ValueError(
                f"invalid rate limit {text!r}: expected 'N/unit' or 'N/unit burst B' "
                f"with unit one of s, m, h, d (e.g. '10/s', '600/m', '5/s burst 20')"
            )
        count = float(match.group("count"))
        span = float(match.group("span") or 1.0) * unit
        if count <= 0 or span <= 0:
            raise ValueError(f"invalid rate limit {text!r}: count and period must be > 0")
        burst_text = match.group("burst")
        burst = float(burst_text) if burst_text is not None else max(count, 1.0)
        return cls(rate=count / span, burst=burst)

    @property
    def recovery(self) -> float:
        """Seconds for an empty bucket to fill up again."""
        return self.burst / self.rate

    def bucket(self) -> TokenBucket:
        """A new, full bucket with this rate and burst."""
        return TokenBucket(self.rate, self.burst)

    def __str__(self) -> str:
        return f"{self.rate:g}/s burst {self.burst:g}"


class KeyedLimiter(Generic[K]):
    """One :class:`TokenBucket` per key, in at most ``max_keys`` keys of memory.

    A bucket that is full again is equivalent to a fresh one, so it is dropped.
    Keys are kept in least-recently-used order; every :meth:`check` first drops
    the least recently used buckets that have been idle for ``burst / rate``
    seconds (amortized O(1): each key is dropped once per insertion).  When a
    new key arrives at ``max_keys``, a full :meth:`prune` runs (at most once per
    ``max_keys / 8`` insertions, so O(1) amortized) and, if that frees nothing,
    the least recently used key is evicted.

    Trade-off of eviction: an evicted key gets a fresh, full bucket on its next
    message, so a client that owns many keys (spoofed addresses) can partly
    escape its limit.  Memory stays bounded, which matters more; size
    ``max_keys`` above the number of keys legitimately active within
    ``burst / rate`` seconds, and read :attr:`evictions` to see it happen.
    """

    __slots__ = ("limit", "max_keys", "evictions", "_buckets", "_inserts")

    limit: RateLimit
    max_keys: int
    #: Keys evicted while their bucket was not yet full (limit state lost).
    evictions: int
    _buckets: OrderedDict[K, TokenBucket]
    _inserts: int

    def __init__(self, limit: RateLimit, *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        """A limiter applying ``limit`` to each key; ValueError if ``max_keys < 1``."""
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys!r}")
        self.limit = limit
        self.max_keys = max_keys
        self.evictions = 0
        self._buckets = OrderedDict()
        self._inserts = 0

    def _prune_idle(self, now: float) -> None:
        """Drop least recently used buckets that are full again."""
        buckets = self._buckets
        while buckets:
            bucket = next(iter(buckets.values()))
            if bucket.full_at() > now:
                break
            buckets.popitem(last=False)

    def _make_room(self, now: float) -> None:
        """Bring the key count below ``max_keys``: prune fully, else evict the LRU key."""
        if self._inserts >= max(1, self.max_keys // 8):
            self._inserts = 0
            self.prune(now)
        while len(self._buckets) >= self.max_keys:
            self._buckets.popitem(last=False)
            self.evictions += 1

    def check(self, key: K, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens from ``key``'s bucket: 0.0 if allowed, else seconds to wait."""
        self._prune_idle(now)
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._buckets.move_to_end(key)
            return bucket.take(now, cost)
        bucket = self.limit.bucket()
        retry_after = bucket.take(now, cost)
        if retry_after == 0.0 and bucket.full_at() > now:
            # Only a bucket that differs from a fresh one needs memory.
            if len(self._buckets) >= self.max_keys:
                self._make_room(now)
            self._buckets[key] = bucket
            self._inserts += 1
        return retry_after

    def prune(self, now: float) -> int:
        """Drop every bucket that is full at ``now``; return how many were dropped."""
        full = [key for key, bucket in self._buckets.items() if bucket.full_at() <= now]
        for key in full:
            del self._buckets[key]
        return len(full)

    def forget(self, key: K) -> None:
        """Drop ``key``'s state (e.g. its connection closed); no error if unknown."""
        self._buckets.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def __len__(self) -> int:
        """The number of keys tracked."""
        return len(self._buckets)


class Strikes(Generic[K]):
    """Count violations per key in a sliding window of ``window`` seconds.

    :meth:`add` answers True once a key has ``max_strikes`` strikes within the
    window: sustained abuse, for which the caller closes with 1008.  Each key
    holds at most ``max_strikes`` timestamps; keys whose last strike left the
    window are dropped on every call, and at most ``max_keys`` keys are kept
    (the least recently struck is evicted, losing its count).
    """

    __slots__ = ("max_strikes", "window", "max_keys", "_keys")

    max_strikes: int
    window: float
    max_keys: int
    _keys: OrderedDict[K, deque[float]]

    def __init__(
        self, max_strikes: int, window: float, *, max_keys: int = DEFAULT_MAX_KEYS
    ) -> None:
        """ValueError unless ``max_strikes >= 1``, ``window > 0`` and ``max_keys >= 1``."""
        if max_strikes < 1:
            raise ValueError(f"max_strikes must be >= 1, got {max_strikes!r}")
        _check_positive("window", window, inclusive=False)
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys!r}")
        self.max_strikes = max_strikes
        self.window = float(window)
        self.max_keys = max_keys
        self._keys = OrderedDict()

    def _prune_idle(self, now: float) -> None:
        keys = self._keys
        while keys:
            stamps = next(iter(keys.values()))
            if stamps[-1] > now - self.window:
                break
            keys.popitem(last=False)

    def add(self, key: K, now: float) -> bool:
        """Record a strike for ``key``; True if it has ``max_strikes`` within the window."""
        self._prune_idle(now)
        stamps = self._keys.get(key)
        if stamps is None:
            while len(self._keys) >= self.max_keys:
                self._keys.popitem(last=False)
            stamps = deque(maxlen=self.max_strikes)
            self._keys[key] = stamps
        else:
            self._keys.move_to_end(key)
            now = max(now, stamps[-1])
        stamps.append(now)
        return len(stamps) == self.max_strikes and stamps[0] > now - self.window

    def count(self, key: K, now: float) -> int:
        """Strikes ``key`` has within the window ending at ``now``."""
        stamps = self._keys.get(key)
        if stamps is None:
            return 0
        now = max(now, stamps[-1])
        return sum(1 for stamp in stamps if stamp > now - self.window)

    def prune(self, now: float) -> int:
        """Drop every key whose strikes all left the window; return how many."""
        idle = [key for key, stamps in self._keys.items() if stamps[-1] <= now - self.window]
        for key in idle:
            del self._keys[key]
        return len(idle)

    def forget(self, key: K) -> None:
        """Drop ``key``'s strikes; no error if unknown."""
        self._keys.pop(key, None)

    def __len__(self) -> int:
        """The number of keys tracked."""
        return len(self._keys)


#: 100 messages/s sustained, bursts of 200: far above chat or presence traffic
#: (a fast typist sends about 10 typing events/s), low enough that one client
#: cannot monopolize a worker.
DEFAULT_PER_CONNECTION = RateLimit(rate=100.0, burst=200.0)


def _empty_per_type() -> Mapping[str, RateLimit]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimits:
    """The limits an App applies to incoming messages; ``None`` disables one.

    * ``per_connection``: every message of one connection (default 100/s burst 200);
    * ``per_user``: all connections of one authenticated user together (default off);
    * ``per_ip``: all connections from one client address together (default off;
      behind a proxy, make sure the address is the client's, not the proxy's);
    * ``per_type``: message type → limit, applied per connection (e.g. ``typing``);
    * ``max_strikes`` refused messages within ``strike_window`` seconds close
      the connection with 1008 (``None``: never);
    * ``max_keys``: keys each keyed limiter tracks at most (see :class:`KeyedLimiter`).
    """

    per_connection: RateLimit | None = DEFAULT_PER_CONNECTION
    per_user: RateLimit | None = None
    per_ip: RateLimit | None = None
    per_type: Mapping[str, RateLimit] = field(default_factory=_empty_per_type)
    max_strikes: int | None = DEFAULT_MAX_STRIKES
    strike_window: float = DEFAULT_STRIKE_WINDOW
    max_keys: int = DEFAULT_MAX_KEYS

    def __post_init__(self) -> None:
        """Freeze ``per_type`` and check every value (ValueError naming the field)."""
        object.__setattr__(self, "per_type", MappingProxyType(dict(self.per_type)))
        for name in ("per_connection", "per_user", "per_ip"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, RateLimit):
                raise TypeError(f"{name} must be a RateLimit or None, got {value!r}")
        for msg_type, limit in self.per_type.items():
            if not isinstance(msg_type, str) or not isinstance(limit, RateLimit):
                raise TypeError(
                    f"per_type maps message types (str) to RateLimit, got {msg_type!r}: {limit!r}"
                )
        if self.max_strikes is not None and self.max_strikes < 1:
            raise ValueError(f"max_strikes must be >= 1 or None, got {self.max_strikes!r}")
        _check_positive("strike_window", self.strike_window, inclusive=False)
        if self.max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {self.max_keys!r}")


class RateLimiter:
    """Apply :class:`RateLimits` to incoming messages; one per App.

    Every applicable limit is checked on every message, and each one that
    allows it pays its tokens even if another refuses: a client hammering one
    limit drains the others too, which errs on the side of refusing abuse.
    """

    __slots__ = ("limits", "_per_connection", "_per_user", "_per_ip", "_per_type", "_strikes")

    limits: RateLimits
    _per_connection: KeyedLimiter[Hashable] | None
    _per_user: KeyedLimiter[Hashable] | None
    _per_ip: KeyedLimiter[Hashable] | None
    _per_type: dict[str, KeyedLimiter[Hashable]]
    _strikes: Strikes[Hashable] | None

    def __init__(self, limits: RateLimits | None = None) -> None:
        """A limiter for ``limits`` (default: :class:`RateLimits` defaults)."""
        self.limits = limits = RateLimits() if limits is None else limits
        max_keys = limits.max_keys

        def keyed(limit: RateLimit | None) -> KeyedLimiter[Hashable] | None:
            return None if limit is None else KeyedLimiter(limit, max_keys=max_keys)

        self._per_connection = keyed(limits.per_connection)
        self._per_user = keyed(limits.per_user)
        self._per_ip = keyed(limits.per_ip)
        self._per_type = {
            msg_type: KeyedLimiter(limit, max_keys=max_keys)
            for msg_type, limit in limits.per_type.items()
        }
        self._strikes = (
            None
            if limits.max_strikes is None
            else Strikes(limits.max_strikes, limits.strike_window, max_keys=max_keys)
        )

    def _fired(
        self,
        *,
        conn_id: Hashable,
        user: str | None,
        ip: str | None,
        msg_type: str | None,
        now: float,
        cost: float,
    ) -> tuple[float, str]:
        """The largest retry_after of the limits that fired and a description of them."""
        retry_after = 0.0
        fired: list[str] = []

        def apply(name: str, limiter: KeyedLimiter[Hashable] | None, key: Hashable) -> None:
            nonlocal retry_after
            if limiter is None or key is None:
                return
            wait = limiter.check(key, now, cost)
            if wait > 0.0:
                retry_after = max(retry_after, wait)
                fired.append(f"{name}={limiter.limit}")

        apply("per_connection", self._per_connection, conn_id)
        apply("per_user", self._per_user, user)
        apply("per_ip", self._per_ip, ip)
        if msg_type is not None:
            apply(f"per_type[{msg_type!r}]", self._per_type.get(msg_type), conn_id)
        return retry_after, ", ".join(fired)

    def check(
        self,
        *,
        conn_id: Hashable,
        user: str | None = None,
        ip: str | None = None,
        msg_type: str | None = None,
        now: float,
        cost: float = 1.0,
    ) -> float:
        """0.0 if the message may pass, else the largest retry_after of the limits that fired.

        ``user`` and ``ip`` skip their limit when None (anonymous, unknown);
        ``msg_type`` applies its ``per_type`` limit, if any, per connection.
        """
        retry_after, _ = self._fired(
            conn_id=conn_id, user=user, ip=ip, msg_type=msg_type, now=now, cost=cost
        )
        return retry_after

    def enforce(
        self,
        *,
        conn_id: Hashable,
        user: str | None = None,
        ip: str | None = None,
        msg_type: str | None = None,
        now: float,
        cost: float = 1.0,
    ) -> None:
        """Like :meth:`check` but raise :class:`RateLimited` naming the limits that fired."""
        retry_after, fired = self._fired(
            conn_id=conn_id, user=user, ip=ip, msg_type=msg_type, now=now, cost=cost
        )
        if retry_after > 0.0:
            raise RateLimited(
                f"rate limit exceeded ({fired}); retry after {retry_after:.3f} s",
                retry_after=retry_after,
            )

    def strike(self, conn_id: Hashable, now: float) -> bool:
        """Record a refused message; True when the connection should close with 1008."""
        return self._strikes is not None and self._strikes.add(conn_id, now)

    def forget(self, conn_id: Hashable) -> None:
        """Drop the per-connection state of ``conn_id`` (call it when it disconnects)."""
        if self._per_connection is not None:
            self._per_connection.forget(conn_id)
        for limiter in self._per_type.values():
            limiter.forget(conn_id)
        if self._strikes is not None:
            self._strikes.forget(conn_id)

    def prune(self, now: float) -> int:
        """Drop every state equivalent to a fresh one (e.g. from a periodic timer)."""
        limiters = [self._per_connection, self._per_user, self._per_ip, *self._per_type.values()]
        dropped = sum(limiter.prune(now) for limiter in limiters if limiter is not None)
        if self._strikes is not None:
            dropped += self._strikes.prune(now)
        return dropped
