"""Tests for jupyter_cloudide.gateway.ratelimit against both backends.

The memory backend runs on a fake clock, so time-dependent behaviour is exact.
The Redis backend runs against a real redis-server (see conftest.py) and the
server clock, so its timing assertions use small limits and tolerances.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from jupyter_cloudide.gateway.ratelimit import (
    ROUTE_CLASSES,
    Decision,
    Limit,
    MemoryRateLimiter,
    RateLimiter,
    RateLimiterUnavailable,
    RedisRateLimiter,
    _format_duration,
    build_rate_limiter,
)


class FakeClock:
    """Injected clock for the memory backend: time moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """Creates limiters of one backend and moves its time forward."""

    name: str
    redis_url: str | None = None
    clock: FakeClock = field(default_factory=FakeClock)
    created: list[RateLimiter] = field(default_factory=list)

    def make(self, limits: dict[str, Limit], **kwargs: Any) -> RateLimiter:
        limiter: RateLimiter
        if self.name == "memory":
            limiter = MemoryRateLimiter(limits, clock=self.clock, **kwargs)
        else:
            assert self.redis_url is not None
            limiter = RedisRateLimiter(self.redis_url, limits, **kwargs)
        self.created.append(limiter)
        return limiter

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass: instantly on the fake clock, really for redis."""
        if self.name == "memory":
            self.clock.now += seconds
        else:
            await asyncio.sleep(seconds)

    @property
    def tolerance(self) -> float:
        """Timing slack: exact for the fake clock, a little for the real one."""
        return 1e-6 if self.name == "memory" else 0.1


@pytest_asyncio.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    b = Backend(request.param, redis_url=url)
    yield b
    for limiter in b.created:
        await limiter.close()


@pytest_asyncio.fixture
async def make_redis(redis_url: str) -> AsyncIterator[Callable[..., RedisRateLimiter]]:
    created: list[RedisRateLimiter] = []

    def make(limits: dict[str, Limit], **kwargs: Any) -> RedisRateLimiter:
        limiter = RedisRateLimiter(redis_url, limits, **kwargs)
        created.append(limiter)
        return limiter

    yield make
    for limiter in created:
        await limiter.close()


async def exhaust(limiter: RateLimiter, user: str, route_class: str, n: int) -> None:
    for i in range(n):
        d = await limiter.check(user, route_class)
        assert d.allowed, f"request {i + 1} of {n} should be allowed"


# ---------------------------------------------------------------------------
# Limit / Decision value objects
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_limit_rejects_non_positive_or_non_int(bad: Any) -> None:
    with pytest.raises(ValueError):
        Limit(requests_per_minute=bad)
    with pytest.raises(ValueError):
        Limit(tokens_per_minute=bad)


def test_limits_with_unknown_route_class_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown route class"):
        MemoryRateLimiter({"nope": Limit(requests_per_minute=1)})


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.0, "0s"),
        (-3.0, "0s"),
        (0.02, "20ms"),
        (0.0201, "21ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (12.0, "12s"),
        (59.9999, "1m0s"),
        (60.0, "1m0s"),
        (360.0, "6m0s"),
        (61.25, "1m1.25s"),
    ],
)
def test_format_duration_is_openai_style_and_rounds_up(seconds: float, expected: str) -> None:
    assert _format_duration(seconds) == expected


def test_headers_of_denied_decision() -> None:
    d = Decision(
        allowed=False,
        route_class="chat",
        limit_requests=10,
        remaining_requests=0,
        reset_requests_s=60.0,
        limit_tokens=1000,
        remaining_tokens=250,
        reset_tokens_s=45.0,
        retry_after_s=5.2,
    )
    assert d.headers() == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "250",
        "x-ratelimit-reset-tokens": "45s",
        "Retry-After": "6",
    }


def test_retry_after_header_is_at_least_one_second() -> None:
    d = Decision(False, "v1", 10, 0, 0.01, None, None, 0.0, retry_after_s=0.01)
    assert d.headers()["Retry-After"] == "1"
    assert "x-ratelimit-limit-tokens" not in d.headers()


# ---------------------------------------------------------------------------
# Shared behaviour, both backends
# ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_n_allowed_then_denied_with_retry_after(backend: Backend) -> None:
    limiter = backend.make({"chat": Limit(requests_per_minute=5)})
    for i in range(5):
        d = await limiter.check("alice", "chat")
        assert d.allowed
        assert d.retry_after_s == 0
        assert d.remaining_requests == 4 - i
        assert "Retry-After" not in d.headers()
    d = await limiter.check("alice", "chat")
    assert not d.allowed
    assert not d.exceeds_capacity
    assert d.remaining_requests == 0
    assert d.retry_after_s == pytest.approx(60 / 5, abs=backend.tolerance)
    assert d.headers()["Retry-After"] == "12"


@pytest.mark.asyncio
async def test_refill_over_time(backend: Backend) -> None:
    # 300/min = one request per 0.2 s, so the real-clock variant waits < 0.3 s.
    limiter = backend.make({"completion": Limit(requests_per_minute=300)})
    await exhaust(limiter, "bob", "completion", 300)
    denied = await limiter.check("bob", "completion")
    assert not denied.allowed
    assert 0 < denied.retry_after_s <= 0.2 + 1e-6
    await backend.advance(denied.retry_after_s + (0 if backend.name == "memory" else 0.02))
    assert (await limiter.check("bob", "completion")).allowed
    assert not (await limiter.check("bob", "completion")).allowed


@pytest.mark.asyncio
async def test_partial_refill_is_continuous() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter({"chat": Limit(requests_per_minute=60)}, clock=clock)
    await exhaust(limiter, "u", "chat", 60)
    clock.now += 30  # half a minute refills half the bucket
    await exhaust(limiter, "u", "chat", 30)
    assert not (await limiter.check("u", "chat")).allowed
    clock.now += 3600  # refill is capped at capacity
    await exhaust(limiter, "u", "chat", 60)
    assert not (await limiter.check("u", "chat")).allowed


@pytest.mark.asyncio
async def test_token_estimate_is_consumed(backend: Backend) -> None:
    limiter = backend.make({"chat": Limit(requests_per_minute=100, tokens_per_minute=1000)})
    d = await limiter.check("u", "chat", tokens=600)
    assert d.allowed
    assert d.remaining_tokens == 400
    d = await limiter.check("u", "chat", tokens=500)
    assert not d.allowed
    assert not d.exceeds_capacity
    # 100 tokens missing at 1000/min -> 6 s
    assert d.retry_after_s == pytest.approx(6.0, abs=backend.tolerance)
    assert (await limiter.check("u", "chat", tokens=400)).allowed


@pytest.mark.asyncio
async def test_charge_tokens_drives_bucket_negative(backend: Backend) -> None:
    limiter = backend.make({"chat": Limit(requests_per_minute=100, tokens_per_minute=1000)})
    assert (await limiter.check("u", "chat", tokens=100)).allowed
    await limiter.charge_tokens("u", "chat", 1500)  # actual usage far above the estimate
    d = await limiter.check("u", "chat")  # even a zero-token request waits for the debt
    assert not d.allowed
    assert d.remaining_tokens == 0
    assert d.headers()["x-ratelimit-remaining-tokens"] == "0"
    # level is -600: 600 tokens at 1000/min -> 36 s; full again after 96 s
    assert d.retry_after_s == pytest.approx(36.0, abs=backend.tolerance)
    assert d.reset_tokens_s == pytest.approx(96.0, abs=backend.tolerance)
    await limiter.charge_tokens("u", "chat", -10_000)  # refund, capped at capacity
    d = await limiter.check("u", "chat", tokens=1000)
    assert d.allowed
    assert d.remaining_tokens == 0


@pytest.mark.asyncio
async def test_charge_tokens_without_token_limit_is_noop(backend: Backend) -> None:
    limiter = backend.make({"chat": Limit(requests_per_minute=2)})
    await limiter.charge_tokens("u", "chat", 10**9)
    await limiter.charge_tokens("u", "search", 10**9)
    assert (await limiter.check("u", "chat", tokens=10**9)).allowed


@pytest.mark.asyncio
async def test_denied_for_tokens_does_not_consume_a_request(backend: Backend) -> None:
    limiter = backend.make({"chat": Limit(requests_per_minute=2, tokens_per_minute=1000)})
    assert (await limiter.check("u", "chat", tokens=900)).allowed
    for _ in range(5):
        assert not (await limiter.check("u", "chat", tokens=500)).allowed
    d = await limiter.check("u", "chat", tokens=100)
    assert d.allowed
    assert d.remaining_requests == 0


@pytest.mark.asyncio
async def test_denied_for_requests_does_not_consume_tokens(backend: Backend) -> None:
    limiter = backend.make({"chat": Limit(requests_per_minute=1, tokens_per_minute=1000)})
    assert (await limiter.check("u", "chat", tokens=100)).allowed
    d = await limiter.check("u", "chat", tokens=500)
    assert not d.allowed
    assert d.remaining_tokens == 900
    assert d.retry_after_s == pytest.approx(60.0, abs=backend.tolerance)


@pytest.mark.asyncio
async def test_users_are_independent(backend: Backend) -> None:
    limiter = backend.make({"chat": Limit(requests_per_minute=2)})
    await exhaust(limiter, "alice", "chat", 2)
    assert not (await limiter.check("alice", "chat")).allowed
    await exhaust(limiter, "bob", "chat", 2)


@pytest.mark.asyncio
async def test_route_classes_are_independent(backend: Backend) -> None:
    limiter = backend.make({rc: Limit(requests_per_minute=2) for rc in ROUTE_CLASSES})
    await exhaust(limiter, "alice", "chat", 2)
    assert not (await limiter.check("alice", "chat")).allowed
    for rc in ROUTE_CLASSES[1:]:
        await exhaust(limiter, "alice", rc, 2)


@pytest.mark.asyncio
async def test_tricky_user_names_do_not_collide(backend: Backend) -> None:
    limiter = backend.make({rc: Limit(requests_per_minute=1) for rc in ROUTE_CLASSES})
    long_a = "x" * 500 + "a"
    long_b = "x" * 500 + "b"
    users = ["a", "a:b", "a:chat", "chat:a", "a%3Ab", "a%253Ab", "", ":", "*", "é", long_a, long_b]
    for user in users:
        assert (await limiter.check(user, "chat")).allowed, user
    for user in users:
        assert not (await limiter.check(user, "chat")).allowed, user
    # "a" in class "completion" is untouched by user "a:chat" in class "chat" etc.
    assert (await limiter.check("a", "completion")).allowed
    if isinstance(limiter, RedisRateLimiter):
        keys = {limiter.key(u, rc) for u in users for rc in ROUTE_CLASSES}
        assert len(keys) == len(users) * len(ROUTE_CLASSES)
        assert all(len(k) < 200 for k in keys)
        # one ':'-separated segment per part, so operators can SCAN by class
        assert limiter.key("a:b", "chat") == "cloudide:rl:chat:a%3Ab"
        assert limiter.key(long_a, "chat").startswith("cloudide:rl:chat:#")


@pytest.mark.asyncio
async def test_headers_of_live_decisions(backend: Backend) -> None:
    limiter = backend.make({"v1": Limit(requests_per_minute=2, tokens_per_minute=100)})
    d = await limiter.check("u", "v1", tokens=40)
    h = d.headers()
    assert h["x-ratelimit-limit-requests"] == "2"
    assert h["x-ratelimit-remaining-requests"] == "1"
    assert h["x-ratelimit-limit-tokens"] == "100"
    assert h["x-ratelimit-remaining-tokens"] == "60"
    assert "Retry-After" not in h
    if backend.name == "memory":
        assert h["x-ratelimit-reset-requests"] == "30s"
        assert h["x-ratelimit-reset-tokens"] == "24s"
    await limiter.check("u", "v1")
    d = await limiter.check("u", "v1")
    assert not d.allowed
    assert d.headers()["Retry-After"] == "30"
    assert d.headers()["x-ratelimit-remaining-requests"] == "0"


@pytest.mark.asyncio
async def test_limit_on_one_dimension_only(backend: Backend) -> None:
    limiter = backend.make({"search": Limit(tokens_per_minute=100)})
    d = await limiter.check("u", "search", tokens=100)
    assert d.allowed
    assert d.limit_requests is None
    assert d.remaining_requests is None
    assert set(d.headers()) == {
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    }
    assert not (await limiter.check("u", "search", tokens=1)).allowed


@pytest.mark.asyncio
async def test_unlimited_route_class(backend: Backend) -> None:
    limiter = backend.make({"chat": Limit(requests_per_minute=1), "execute": Limit()})
    for rc in ("search", "execute"):
        for _ in range(50):
            d = await limiter.check("u", rc, tokens=10**9)
            assert d.allowed
            assert d.headers() == {}
            assert d.limit_requests is None and d.limit_tokens is None
    if isinstance(limiter, RedisRateLimiter):
        client = redis.Redis.from_url(backend.redis_url or "")
        try:
            assert client.keys("*") == []
        finally:
            client.close()


@pytest.mark.asyncio
async def test_unknown_route_class_and_bad_tokens(backend: Backend) -> None:
    limiter = backend.make({"chat": Limit(requests_per_minute=1)})
    with pytest.raises(ValueError, match="unknown route class"):
        await limiter.check("u", "nope")
    with pytest.raises(ValueError, match="unknown route class"):
        await limiter.charge_tokens("u", "nope", 1)
    with pytest.raises(ValueError, match="tokens"):
        await limiter.check("u", "chat", tokens=-1)


@pytest.mark.asyncio
async def test_estimate_larger_than_capacity_never_fits(backend: Backend) -> None:
    limiter = backend.make({"chat": Limit(requests_per_minute=10, tokens_per_minute=1000)})
    d = await limiter.check("u", "chat", tokens=1001)
    assert not d.allowed
    assert d.exceeds_capacity
    assert d.retry_after_s == 60
    assert d.headers()["Retry-After"] == "60"
    await backend.advance(0 if backend.name == "redis" else 3600)
    assert (await limiter.check("u", "chat", tokens=1001)).exceeds_capacity
    # nothing was consumed
    d = await limiter.check("u", "chat", tokens=1000)
    assert d.allowed
    assert not d.exceeds_capacity
    assert d.remaining_requests == 9


@pytest.mark.asyncio
async def test_concurrent_checks_allow_exactly_the_limit(backend: Backend) -> None:
    limiter = backend.make({"chat": Limit(requests_per_minute=50)})
    results = await asyncio.gather(*(limiter.check("u", "chat") for _ in range(200)))
    assert sum(d.allowed for d in results) == 50


@pytest.mark.asyncio
async def test_close_is_idempotent_enough(backend: Backend) -> None:
    limiter = backend.make({"chat": Limit(requests_per_minute=1)})
    assert (await limiter.check("u", "chat")).allowed
    await limiter.close()


# ---------------------------------------------------------------------------
# Redis only
# ---------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.asyncio
async def test_two_processes_share_the_limit(make_redis: Callable[..., RedisRateLimiter]) -> None:
    """Two limiter instances (separate connection pools, like two processes)."""
    limits = {"chat": Limit(requests_per_minute=50, tokens_per_minute=10**6)}
    first, second = make_redis(limits), make_redis(limits)
    calls = [(first if i % 2 else second).check("u", "chat", tokens=1) for i in range(200)]
    results = await asyncio.gather(*calls)
    assert sum(d.allowed for d in results) == 50
    assert sum(d.allowed for d in results[0::2]) > 0
    assert sum(d.allowed for d in results[1::2]) > 0


@pytest.mark.redis
@pytest.mark.asyncio
async def test_prefix_separates_limiters(make_redis: Callable[..., RedisRateLimiter]) -> None:
    limits = {"chat": Limit(requests_per_minute=1)}
    a, b = make_redis(limits, prefix="t1:"), make_redis(limits, prefix="t2:")
    assert (await a.check("u", "chat")).allowed
    assert (await b.check("u", "chat")).allowed
    assert not (await a.check("u", "chat")).allowed


@pytest.mark.redis
@pytest.mark.asyncio
async def test_keys_expire_when_idle(
    redis_url: str, make_redis: Callable[..., RedisRateLimiter]
) -> None:
    limiter = make_redis({"chat": Limit(requests_per_minute=10, tokens_per_minute=1000)})
    assert (await limiter.check("u", "chat", tokens=10)).allowed
    client = redis.Redis.from_url(redis_url)
    try:
        ttl = client.pttl(limiter.key("u", "chat"))
        assert isinstance(ttl, int)
        assert 60_000 < ttl <= 120_000
        # a big debt keeps the key (and the debt) alive until it is repaid
        await limiter.charge_tokens("u", "chat", 10_000)
        ttl = client.pttl(limiter.key("u", "chat"))
        assert isinstance(ttl, int)
        assert ttl > 10 * 60_000
    finally:
        client.close()


@pytest.mark.redis
@pytest.mark.asyncio
async def test_denied_check_does_not_write(
    redis_url: str, make_redis: Callable[..., RedisRateLimiter]
) -> None:
    limiter = make_redis({"chat": Limit(tokens_per_minute=10)})
    assert (await limiter.check("u", "chat", tokens=11)).exceeds_capacity
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.exists(limiter.key("u", "chat")) == 0
    finally:
        client.close()


@pytest.mark.redis
@pytest.mark.asyncio
async def test_works_with_decode_responses_client(redis_url: str) -> None:
    client: Any = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    limiter = RedisRateLimiter(redis_url, {"chat": Limit(requests_per_minute=1)}, client=client)
    try:
        assert (await limiter.check("u", "chat")).allowed
        assert not (await limiter.check("u", "chat")).allowed
        await limiter.close()  # does not close a client it did not create
        assert await client.ping()
    finally:
        await client.aclose()


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.asyncio
async def test_redis_down_raises_unavailable_quickly() -> None:
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    limiter = RedisRateLimiter(url, {"chat": Limit(requests_per_minute=1, tokens_per_minute=10)})
    try:
        # bounded: a limiter that retried with backoff would hang requests while Redis is down
        with pytest.raises(RateLimiterUnavailable):
            await asyncio.wait_for(limiter.check("u", "chat"), 10)
        with pytest.raises(RateLimiterUnavailable):
            await asyncio.wait_for(limiter.charge_tokens("u", "chat", 5), 10)
        # unlimited classes never touch redis
        assert (await limiter.check("u", "search")).allowed
    finally:
        await limiter.close()


@pytest.mark.asyncio
async def test_redis_unresponsive_times_out() -> None:
    """A server that accepts but never answers must not hang the request."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.listen(16)
        port = sink.getsockname()[1]
        limiter = RedisRateLimiter(
            f"redis://127.0.0.1:{port}/0",
            {"chat": Limit(requests_per_minute=1)},
            socket_timeout=0.2,
        )
        try:
            with pytest.raises(RateLimiterUnavailable):
                await asyncio.wait_for(limiter.check("u", "chat"), 10)
        finally:
            await limiter.close()


# ---------------------------------------------------------------------------
# Memory only
# ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_memory_evicts_full_buckets_first() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter({"chat": Limit(requests_per_minute=10)}, clock=clock, max_keys=10)
    for i in range(10):
        assert (await limiter.check(f"idle{i}", "chat")).allowed
    clock.now += 60  # all idle buckets are full again: dropping them loses nothing
    await exhaust(limiter, "busy", "chat", 10)
    assert len(limiter) == 1
    assert not (await limiter.check("busy", "chat")).allowed


@pytest.mark.asyncio
async def test_memory_stays_bounded_under_a_flood_of_users() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter({"chat": Limit(requests_per_minute=10)}, clock=clock, max_keys=100)
    await exhaust(limiter, "victim", "chat", 10)
    for i in range(1000):
        await limiter.check(f"flood{i}", "chat")
        assert len(limiter) <= 100
    # eviction is LRU: recently seen users keep their state
    await exhaust(limiter, "flood999", "chat", 9)
    assert not (await limiter.check("flood999", "chat")).allowed


@pytest.mark.asyncio
async def test_memory_tolerates_clock_going_backwards() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter({"chat": Limit(requests_per_minute=1)}, clock=clock)
    assert (await limiter.check("u", "chat")).allowed
    clock.now -= 1000
    assert not (await limiter.check("u", "chat")).allowed


def test_memory_rejects_bad_max_keys() -> None:
    with pytest.raises(ValueError):
        MemoryRateLimiter({}, max_keys=0)


@settings(max_examples=200, deadline=None)
@given(
    rpm=st.integers(min_value=1, max_value=30),
    tpm=st.one_of(st.none(), st.integers(min_value=10, max_value=2000)),
    schedule=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=20, allow_nan=False),  # seconds since last call
            st.floats(min_value=0, max_value=1.3),  # tokens as a fraction of capacity
            st.sampled_from(["check", "check", "check", "charge"]),
        ),
        max_size=120,
    ),
)
def test_memory_never_exceeds_capacity_plus_refill(
    rpm: int, tpm: int | None, schedule: list[tuple[float, float, str]]
) -> None:
    """In any window [t_i, t_j], allowed <= capacity + rate * (t_j - t_i), per dimension."""
    clock = FakeClock(0.0)
    limiter = MemoryRateLimiter(
        {"chat": Limit(requests_per_minute=rpm, tokens_per_minute=tpm)}, clock=clock
    )
    allowed: list[tuple[float, int]] = []

    async def run() -> None:
        for dt, fraction, op in schedule:
            clock.now += dt
            tokens = int(fraction * tpm) if tpm is not None else 0
            if op == "charge":  # positive debits can only reduce the allowance
                await limiter.charge_tokens("u", "chat", tokens)
                continue
            d = await limiter.check("u", "chat", tokens=tokens)
            if d.allowed:
                allowed.append((clock.now, tokens))

    asyncio.run(run())
    for i in range(len(allowed)):
        spent = 0
        for j in range(i, len(allowed)):
            window = allowed[j][0] - allowed[i][0]
            spent += allowed[j][1]
            assert j - i + 1 <= rpm + rpm / 60 * window + 1e-6
            if tpm is not None:
                assert spent <= tpm + tpm / 60 * window + 1e-6


# ---------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_build_rate_limiter() -> None:
    limits = {"chat": Limit(requests_per_minute=1)}
    memory = build_rate_limiter("memory", limits, None)
    assert isinstance(memory, MemoryRateLimiter)
    assert memory.limits == limits
    remote = build_rate_limiter("redis", limits, "redis://127.0.0.1:1/0")
    assert isinstance(remote, RedisRateLimiter)
    await remote.close()
    with pytest.raises(ValueError, match="redis_url"):
        build_rate_limiter("redis", limits, None)
    with pytest.raises(ValueError, match="backend"):
        build_rate_limiter("memcached", limits, None)
