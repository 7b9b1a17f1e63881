"""Per-user, per-route-class rate limiting (requests/minute and LLM tokens/minute).

Why this exists: one Jupyter server is shared by up to a thousand users, and the
expensive routes (chat, completion, execute, search and the OpenAI-compatible
``v1`` API) must not let one user starve the others or burn the LLM budget.

Algorithm: a *token bucket* per ``(user, route_class)`` holding two levels, one
per dimension (requests, tokens).  A bucket's capacity is the per-minute limit
and it refills continuously at ``limit / 60`` per second, so a user may burst up
to the full minute's allowance and then proceeds at the steady rate.  A call to
:meth:`RateLimiter.check` is allowed only if **one request and the estimated
tokens both fit**; both are consumed together or neither is.  Because the
token estimate made before an LLM call is only a guess,
:meth:`RateLimiter.charge_tokens` settles the difference afterwards and may
drive the token level negative, which makes later requests wait until the debt
is repaid by the refill.

Two backends share the exact same arithmetic:

* :class:`MemoryRateLimiter` - one process, one event loop (the default).
* :class:`RedisRateLimiter` - several processes share limits through Redis;
  every decision is made inside a single Lua script using the Redis server
  clock, so concurrent callers in different processes cannot both take the
  last unit and clock skew between hosts does not matter.

This module deliberately has no tornado imports: the HTTP layer turns a
:class:`Decision` into a 429, ``Retry-After`` and ``x-ratelimit-*`` headers.
"""

from __future__ import annotations

import abc
import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = [
    "ROUTE_CLASSES",
    "Decision",
    "Limit",
    "MemoryRateLimiter",
    "RateLimiter",
    "RateLimiterUnavailable",
    "RedisRateLimiter",
    "build_rate_limiter",
]

ROUTE_CLASSES: tuple[str, ...] = ("chat", "completion", "execute", "search", "v1")

#: Tolerance for float comparisons.  Continuous refill is computed in floating
#: point; without a tolerance a caller that waits exactly ``retry_after_s`` could
#: find ``0.9999999999`` requests in the bucket and be denied again.
_EPS = 1e-9

#: Seconds a caller must wait when its token estimate can never fit the bucket.
#: Retrying will not help, but a finite, conventional value keeps clients that
#: blindly honour ``Retry-After`` from spinning.
_EXCEEDS_CAPACITY_RETRY_S = 60.0


class RateLimiterUnavailable(Exception):
    """The shared backend (Redis) could not be reached or failed.

    The limiter does not decide what happens then: the caller chooses to fail
    open (serve without limiting) or closed (answer 503).
    """


@dataclass(frozen=True)
class Limit:
    """Per-minute limits of one route class; ``None`` means that dimension is unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    def __post_init__(self) -> None:
        # Zero or negative limits would make the refill rate zero (division by
        # zero, a bucket that never refills); refusing them early gives a clear
        # configuration error instead.
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Limit.{name} must be a positive int or None, got {value!r}")

    @property
    def unlimited(self) -> bool:
        """True when neither dimension is limited."""
        return self.requests_per_minute is None and self.tokens_per_minute is None


def _format_duration(seconds: float) -> str:
    """Format like OpenAI's ``x-ratelimit-reset-*`` headers: ``20ms``, ``1.5s``, ``6m0s``.

    Rounded *up* to the millisecond so a client that waits the advertised time
    is never early.
    """
    ms = max(0, math.ceil(seconds * 1000 - _EPS))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest_ms = divmod(ms, 60_000)
    secs = f"{rest_ms / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@dataclass(frozen=True)
class Decision:
    """Outcome of :meth:`RateLimiter.check`, with everything the HTTP layer needs.

    For an unlimited dimension ``limit_*`` and ``remaining_*`` are ``None`` and
    ``reset_*_s`` is ``0``.  ``reset_*_s`` is the time until that bucket is full
    again (OpenAI semantics); ``retry_after_s`` is the time until *this*
    request would fit (``0`` when allowed).
    """

    allowed: bool
    route_class: str
    limit_requests: int | None
    remaining_requests: int | None
    reset_requests_s: float
    limit_tokens: int | None
    remaining_tokens: int | None
    reset_tokens_s: float
    retry_after_s: float
    #: True when the token estimate is larger than the bucket capacity: the
    #: request can *never* be allowed, waiting will not help.  The HTTP layer
    #: should say so (e.g. "prompt too large for your token limit").
    exceeds_capacity: bool = False

    def headers(self) -> dict[str, str]:
        """OpenAI-style rate-limit headers (only for limited dimensions).

        ``Retry-After`` (integer seconds, rounded up, at least 1) is added when
        the request is denied.
        """
        out: dict[str, str] = {}
        if self.limit_requests is not None:
            out["x-ratelimit-limit-requests"] = str(self.limit_requests)
            out["x-ratelimit-remaining-requests"] = str(self.remaining_requests or 0)
            out["x-ratelimit-reset-requests"] = _format_duration(self.reset_requests_s)
        if self.limit_tokens is not None:
            out["x-ratelimit-limit-tokens"] = str(self.limit_tokens)
            out["x-ratelimit-remaining-tokens"] = str(self.remaining_tokens or 0)
            out["x-ratelimit-reset-tokens"] = _format_duration(self.reset_tokens_s)
        if not self.allowed:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after_s - _EPS)))
        return out


# ---------------------------------------------------------------------------
# Shared arithmetic.  The Redis Lua script mirrors _refill/_fits exactly; the
# decision fields are computed by _decision for both backends.
# ---------------------------------------------------------------------------


def _refill(level: float, capacity: int, elapsed_s: float) -> float:
    """Level after ``elapsed_s`` seconds of continuous refill, capped at capacity."""
    return min(float(capacity), level + elapsed_s * capacity / 60.0)


def _fits(limit: Limit, req_level: float, tok_level: float, tokens: int) -> bool:
    """Whether one request and ``tokens`` fit in the current levels."""
    rpm, tpm = limit.requests_per_minute, limit.tokens_per_minute
    if rpm is not None and req_level < 1 - _EPS:
        return False
    # ``tok_level - tokens >= 0`` also denies a zero-token request while the
    # bucket is in debt from charge_tokens, which is the point of the debt.
    return not (tpm is not None and tok_level < tokens - _EPS)


def _seconds_to(level: float, target: float, capacity: int) -> float:
    """Seconds of refill needed to raise ``level`` to ``target``."""
    return max(0.0, (target - level) * 60.0 / capacity)


def _remaining(level: float) -> int:
    return max(0, math.floor(level + _EPS))


def _decision(
    route_class: str,
    limit: Limit,
    allowed: bool,
    req_level: float,
    tok_level: float,
    tokens: int,
) -> Decision:
    """Build a Decision from the levels *after* consumption (or unchanged levels if denied)."""
    rpm, tpm = limit.requests_per_minute, limit.tokens_per_minute
    exceeds = tpm is not None and tokens > tpm
    retry = 0.0
    if not allowed:
        if exceeds:
            retry = _EXCEEDS_CAPACITY_RETRY_S
        else:
            if rpm is not None:
                retry = max(retry, _seconds_to(req_level, 1.0, rpm))
            if tpm is not None:
                retry = max(retry, _seconds_to(tok_level, float(tokens), tpm))
            # Denied within the float tolerance: still advertise a positive wait.
            retry = max(retry, 0.001)
    return Decision(
        allowed=allowed,
        route_class=route_class,
        limit_requests=rpm,
        remaining_requests=None if rpm is None else _remaining(req_level),
        reset_requests_s=0.0 if rpm is None else _seconds_to(req_level, rpm, rpm),
        limit_tokens=tpm,
        remaining_tokens=None if tpm is None else _remaining(tok_level),
        reset_tokens_s=0.0 if tpm is None else _seconds_to(tok_level, tpm, tpm),
        retry_after_s=retry,
        exceeds_capacity=exceeds and not allowed,
    )


def _unlimited_decision(route_class: str) -> Decision:
    return Decision(
        allowed=True,
        route_class=route_class,
        limit_requests=None,
        remaining_requests=None,
        reset_requests_s=0.0,
        limit_tokens=None,
        remaining_tokens=None,
        reset_tokens_s=0.0,
        retry_after_s=0.0,
    )


def _validate_limits(limits: Mapping[str, Limit]) -> dict[str, Limit]:
    out: dict[str, Limit] = {}
    for route_class, limit in limits.items():
        if route_class not in ROUTE_CLASSES:
            raise ValueError(
                f"unknown route class {route_class!r}; expected one of {ROUTE_CLASSES}"
            )
        if not isinstance(limit, Limit):
            raise TypeError(f"limit for {route_class!r} must be a Limit, got {type(limit)!r}")
        out[route_class] = limit
    return out


class RateLimiter(abc.ABC):
    """Common interface and argument validation of both backends."""

    def __init__(self, limits: Mapping[str, Limit]) -> None:
        self._limits = _validate_limits(limits)

    @property
    def limits(self) -> Mapping[str, Limit]:
        """The configured limits (route classes without an entry are unlimited)."""
        return dict(self._limits)

    def _limit_for(self, route_class: str) -> Limit | None:
        """The limit of ``route_class``, ``None`` if unlimited; ValueError if unknown."""
        if route_class not in ROUTE_CLASSES:
            raise ValueError(
                f"unknown route class {route_class!r}; expected one of {ROUTE_CLASSES}"
            )
        limit = self._limits.get(route_class)
        return None if limit is None or limit.unlimited else limit

    async def check(self, user: str, route_class: str, tokens: int = 0) -> Decision:
        """Atomically admit one request with an estimated ``tokens`` cost.

        Allowed only if one request *and* ``tokens`` fit; both are consumed only
        if allowed, so a request denied for tokens does not use up a request.
        """
        if tokens < 0:
            raise ValueError("tokens must be >= 0")
        limit = self._limit_for(route_class)
        if limit is None:
            return _unlimited_decision(route_class)
        return await self._check(user, route_class, limit, tokens)

    async def charge_tokens(self, user: str, route_class: str, tokens: int) -> None:
        """Debit ``tokens`` after the fact (e.g. ``actual - estimate``).

        The token level may go negative, so later requests wait until the debt
        is refilled.  A negative ``tokens`` credits back an over-estimate (never
        above capacity).  A no-op if the route class has no token limit.
        """
        limit = self._limit_for(route_class)
        if limit is None or limit.tokens_per_minute is None or tokens == 0:
            return
        await self._charge(user, route_class, limit, tokens)

    @abc.abstractmethod
    async def _check(self, user: str, route_class: str, limit: Limit, tokens: int) -> Decision:
        """Backend-specific atomic check-and-consume for a limited route class."""

    @abc.abstractmethod
    async def _charge(self, user: str, route_class: str, limit: Limit, tokens: int) -> None:
        """Backend-specific atomic token debit for a token-limited route class."""

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release backend resources."""


# ---------------------------------------------------------------------------
# Memory backend
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Bucket:
    requests: float
    tokens: float
    updated: float


class MemoryRateLimiter(RateLimiter):
    """In-process limiter for a single event loop.

    Concurrency: ``_check``/``_charge`` never await, so on one asyncio event loop
    each call runs to completion without interleaving - that *is* the critical
    section, no lock needed.  It is not thread-safe; use it from the server's
    event loop only.

    Memory is bounded by ``max_keys`` buckets.  When a new bucket would exceed
    it, buckets that have refilled completely are dropped first (lossless: a
    missing bucket is recreated full).  If still over the bound, the least
    recently used buckets are dropped down to 90% of ``max_keys`` - this is
    lossy (those users get a fresh allowance) but keeps memory bounded against
    e.g. floods of distinct user names, and the 10% headroom amortises the
    O(n) sweep.  With 1000 users x 5 route classes the default bound of
    100 000 is never reached in normal operation.
    """

    def __init__(
        self,
        limits: Mapping[str, Limit],
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        super().__init__(limits)
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()

    def __len__(self) -> int:
        """Number of buckets currently held (for tests and metrics)."""
        return len(self._buckets)

    def _bucket(self, user: str, route_class: str, limit: Limit, now: float) -> _Bucket:
        """Fetch (or create full) and refill the bucket; marks it most recently used."""
        key = (user, route_class)
        bucket = self._buckets.get(key)
        rpm, tpm = limit.requests_per_minute, limit.tokens_per_minute
        if bucket is None:
            bucket = _Bucket(float(rpm or 0), float(tpm or 0), now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_keys:
                self._evict(now, keep=key)
            return bucket
        self._buckets.move_to_end(key)
        elapsed = max(0.0, now - bucket.updated)  # tolerate a clock that steps back
        if rpm is not None:
            bucket.requests = _refill(bucket.requests, rpm, elapsed)
        if tpm is not None:
            bucket.tokens = _refill(bucket.tokens, tpm, elapsed)
        bucket.updated = now
        return bucket

    def _is_full(self, bucket: _Bucket, route_class: str, now: float) -> bool:
        limit = self._limits.get(route_class)
        if limit is None:  # pragma: no cover - buckets only exist for limited classes
            return True
        elapsed = max(0.0, now - bucket.updated)
        rpm, tpm = limit.requests_per_minute, limit.tokens_per_minute
        if rpm is not None and _refill(bucket.requests, rpm, elapsed) < rpm - _EPS:
            return False
        return not (tpm is not None and _refill(bucket.tokens, tpm, elapsed) < tpm - _EPS)

    def _evict(self, now: float, keep: tuple[str, str]) -> None:
        full = [k for k, b in self._buckets.items() if k != keep and self._is_full(b, k[1], now)]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) > self._max_keys:
            target = max(1, int(self._max_keys * 0.9))
            while len(self._buckets) > target:
                key = next(iter(self._buckets))
                if key == keep:  # pragma: no cover - keep is most recently used
                    break
                del self._buckets[key]

    async def _check(self, user: str, route_class: str, limit: Limit, tokens: int) -> Decision:
        # No await below: atomic on the event loop.
        bucket = self._bucket(user, route_class, limit, self._clock())
        allowed = _fits(limit, bucket.requests, bucket.tokens, tokens)
        if allowed:
            if limit.requests_per_minute is not None:
                bucket.requests -= 1
            if limit.tokens_per_minute is not None:
                bucket.tokens -= tokens
        return _decision(route_class, limit, allowed, bucket.requests, bucket.tokens, tokens)

    async def _charge(self, user: str, route_class: str, limit: Limit, tokens: int) -> None:
        assert limit.tokens_per_minute is not None
        bucket = self._bucket(user, route_class, limit, self._clock())
        bucket.tokens = min(float(limit.tokens_per_minute), bucket.tokens - tokens)


# ---------------------------------------------------------------------------
# Redis backend
# ---------------------------------------------------------------------------

# KEYS[1] = bucket hash; ARGV[1] = requests capacity (0 = unlimited),
# ARGV[2] = tokens capacity (0 = unlimited), ARGV[3] = tokens (need / charge).
# The hash holds r (request level), t (token level), ts (ms, server clock).
# Numbers are stored with %.17g so they round-trip exactly (Lua's tostring
# uses %.14g, which would drift levels and timestamps on every write).  The key
# expires once it would have refilled completely (+1 min margin), so idle users
# cost nothing and expiry is lossless.
_LUA_PRELUDE = """
local rcap = tonumber(ARGV[1])
local tcap = tonumber(ARGV[2])
local amount = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local st = redis.call('HMGET', KEYS[1], 'r', 't', 'ts')
local ts = tonumber(st[3])
local elapsed = 0
if ts ~= nil and now > ts then elapsed = now - ts end
local r = 0
if rcap > 0 then
  r = tonumber(st[1])
  if r == nil then r = rcap else r = math.min(rcap, r + elapsed * rcap / 60000) end
end
local t = 0
if tcap > 0 then
  t = tonumber(st[2])
  if t == nil then t = tcap else t = math.min(tcap, t + elapsed * tcap / 60000) end
end
local function fmt(x) return string.format('%.17g', x) end
local function save()
  redis.call('HSET', KEYS[1], 'r', fmt(r), 't', fmt(t), 'ts', fmt(now))
  local ttl = 0
  if rcap > 0 then ttl = math.max(ttl, (rcap - r) * 60000 / rcap) end
  if tcap > 0 then ttl = math.max(ttl, (tcap - t) * 60000 / tcap) end
  redis.call('PEXPIRE', KEYS[1], math.ceil(ttl) + 60000)
end
"""

_LUA_CHECK = (
    _LUA_PRELUDE
    + f"""
local eps = {_EPS!r}
local ok = 1
if rcap > 0 and r < 1 - eps then ok = 0 end
if tcap > 0 and t < amount - eps then ok = 0 end
if ok == 1 then
  if rcap > 0 then r = r - 1 end
  if tcap > 0 then t = t - amount end
  save()
end
return {{ok, fmt(r), fmt(t)}}
"""
)

_LUA_CHARGE = (
    _LUA_PRELUDE
    + """
if tcap > 0 then
  t = math.min(tcap, t - amount)
  save()
end
return {fmt(r), fmt(t)}
"""
)

#: Escaped user names longer than this are replaced by a hash to bound key size.
_MAX_USER_KEY_LEN = 128


def _user_key_part(user: str) -> str:
    """Injective, key-safe encoding of a user name.

    Percent-encoding with no safe characters turns ``:`` into ``%3A``, so the
    user ``a:b`` can never look like user ``a`` plus a suffix ``b``; it keeps
    keys readable for operators.  Long names become ``#<sha256>`` - ``#`` is
    itself escaped by ``quote``, so a hashed name cannot collide with an
    escaped one.
    """
    escaped = quote(user, safe="", errors="surrogatepass")
    if len(escaped) <= _MAX_USER_KEY_LEN:
        return escaped
    return "#" + hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()


class RedisRateLimiter(RateLimiter):
    """Limiter shared by several processes through Redis (>= 5, for TIME in scripts).

    One key per (user, route class): ``{prefix}{route_class}:{escaped user}``,
    a hash with both levels.  All arithmetic runs in a Lua script on the
    server, with the server clock, so it is atomic across processes.  Any
    Redis failure is raised as :class:`RateLimiterUnavailable`; socket timeouts
    and a single immediate retry keep a dead Redis from hanging requests.
    ``socket_timeout`` and ``max_connections`` apply only when no ``client`` is
    given; a given client is used as is and is not closed by :meth:`close`.
    """

    def __init__(
        self,
        url: str,
        limits: Mapping[str, Limit],
        *,
        prefix: str = "cloudide:rl:",
        client: aioredis.Redis | None = None,
        socket_timeout: float = 1.0,
        max_connections: int = 50,
    ) -> None:
        # redis-py costs ~80 ms to import; only servers configured for Redis pay it.
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        super().__init__(limits)
        self._prefix = prefix
        self._owns_client = client is None
        if client is None:
            # A *blocking* pool: a burst of concurrent checks waits (at most
            # socket_timeout) for one of max_connections connections instead of
            # failing with "Too many connections" as the default pool does.
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=socket_timeout,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                # redis-py's default retries 10 times with backoff (seconds of
                # stalling when Redis is down); one immediate retry still covers
                # a pooled connection that went stale after a Redis restart.
                retry=Retry(NoBackoff(), 1),
            )
            client = aioredis.Redis.from_pool(pool)
        self._client: aioredis.Redis = client
        self._check_script = client.register_script(_LUA_CHECK)
        self._charge_script = client.register_script(_LUA_CHARGE)

    def key(self, user: str, route_class: str) -> str:
        """The Redis key of a bucket (public for operators and tests)."""
        return f"{self._prefix}{route_class}:{_user_key_part(user)}"

    async def _run(self, script: Any, key: str, limit: Limit, amount: int) -> list[Any]:
        from redis.exceptions import RedisError

        args = (limit.requests_per_minute or 0, limit.tokens_per_minute or 0, amount)
        try:
            result = await script(keys=[key], args=args)
        except (RedisError, OSError) as exc:
            raise RateLimiterUnavailable(f"rate limiter backend unavailable: {exc}") from exc
        return list(result)

    async def _check(self, user: str, route_class: str, limit: Limit, tokens: int) -> Decision:
        ok, r, t = await self._run(self._check_script, self.key(user, route_class), limit, tokens)
        return _decision(route_class, limit, int(ok) == 1, float(r), float(t), tokens)

    async def _charge(self, user: str, route_class: str, limit: Limit, tokens: int) -> None:
        await self._run(self._charge_script, self.key(user, route_class), limit, tokens)

    async def close(self) -> None:
        """Close the connection pool if this limiter created the client."""
        if self._owns_client:
            await self._client.aclose()


def build_rate_limiter(
    backend: str, limits: Mapping[str, Limit], redis_url: str | None
) -> RateLimiter:
    """Factory used by the server configuration: ``backend`` is ``memory`` or ``redis``."""
    if backend == "memory":
        return MemoryRateLimiter(limits)
    if backend == "redis":
        if not redis_url:
            raise ValueError("the redis rate-limit backend needs a redis_url")
        return RedisRateLimiter(redis_url, limits)
    raise ValueError(f"unknown rate-limit backend {backend!r}; expected 'memory' or 'redis'")
