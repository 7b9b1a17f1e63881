"""REST gateway behaviour on a real server: bodies, limits, headers, origins, ownership,
rate limits, metrics and events (SECURITY_CASES: Auth, Input validation)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
from cloudide_testing import MultiUserIdentity, auth
from jupyter_server.auth.decorator import authorized
from tornado import web

from jupyter_cloudide import __version__
from jupyter_cloudide.gateway.base import CloudIDEHandler, write_json
from jupyter_cloudide.metering import events


@pytest.fixture
def server_config() -> dict[str, Any]:
    return {"identity_provider_class": MultiUserIdentity}


async def fetch(jp_fetch: Any, path: str, user: str = "alice", **kwargs: Any) -> Any:
    headers = {**auth(user), **kwargs.pop("headers", {})}
    return await jp_fetch(*path.split("/"), headers=headers, raise_error=False, **kwargs)


def body_of(response: Any) -> dict[str, Any]:
    assert response.headers["Content-Type"].startswith("application/json")
    value: dict[str, Any] = json.loads(response.body)
    return value


# -- health and headers ----------------------------------------------------------------------


async def test_health_reports_version_and_components(cloudide: Any, jp_fetch: Any) -> None:
    response = await fetch(jp_fetch, "cloudide/api/health")
    assert response.code == 200
    health = body_of(response)
    assert health["version"] == __version__
    assert health["status"] == "ok"
    assert health["components"]["db"]["state"] == "ok"
    assert health["components"]["db"]["dialect"] == "sqlite"
    assert health["components"]["rate_limiter"] == {"state": "ok", "backend": "memory"}
    assert health["components"]["kernels"]["state"] == "ok"
    assert "sessions" in health["components"]["session_channel"]


async def test_security_headers_on_success_and_error(cloudide: Any, jp_fetch: Any) -> None:
    for response in (
        await fetch(jp_fetch, "cloudide/api/health"),
        await fetch(jp_fetch, "cloudide/api/conversations", method="POST", body="["),
    ):
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]


# -- input validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        (b"\xff\xfe{}", "(body)", "UTF-8"),
        (b"{not json", "(body)", "invalid JSON"),
        (b"[1, 2]", "(body)", "JSON object"),
        (b"", "(body)", "JSON object"),
        (b'{"title": NaN}', "(body)", "NaN"),
        (b'{"title": {}}', "title", "not of type"),
        (b'{"title": 5}', "title", "not of type"),
        (b'{"title": "x", "surprise": 1}', "surprise", "unknown field"),
        (json.dumps({"title": "x" * 201}).encode(), "title", "too long"),
        (b"[" * 10_000, "(body)", "JSON"),
        (b'{"title": ' + b"9" * 5000 + b"}", "(body)", "too large"),
    ],
)
async def test_bad_bodies_are_400_naming_the_field(
    cloudide: Any, jp_fetch: Any, raw: bytes, field: str, fragment: str
) -> None:
    response = await fetch(jp_fetch, "cloudide/api/conversations", method="POST", body=raw,
                           allow_nonstandard_methods=True)
    assert response.code == 400, response.body
    error = body_of(response)
    assert error["field"] == field
    assert fragment in error["message"]
    assert "Traceback" not in response.body.decode()
    # nothing was written
    listing = body_of(await fetch(jp_fetch, "cloudide/api/conversations"))
    assert listing["conversations"] == []


@pytest.mark.parametrize("limit", ["0", "-1", "201", "abc", "1e3", str(10**9), "²", "٣"])
async def test_bad_query_numbers_are_400(cloudide: Any, jp_fetch: Any, limit: str) -> None:
    response = await fetch(jp_fetch, "cloudide/api/conversations", params={"limit": limit})
    assert response.code == 400
    assert body_of(response)["field"] == "limit"


@pytest.mark.parametrize(
    "path",
    [
        "cloudide/api/conversations/not-a-uuid",
        "cloudide/api/conversations/..%2F..%2Fetc%2Fpasswd",
        "cloudide/api/conversations/00000000-0000-4000-8000-00000000000g",
        "cloudide/api/conversations/%00",
        "cloudide/api/nope",
    ],
)
async def test_malformed_ids_are_404_from_routing(cloudide: Any, jp_fetch: Any,
                                                  path: str) -> None:
    response = await fetch(jp_fetch, path)
    assert response.code == 404


# -- body size limits --------------------------------------------------------------------------


def _raw_http(port: int, request: bytes, *, then: bytes = b"", timeout: float = 10) -> bytes:
    """Send raw bytes and read the response head (what a misbehaving client would do)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        if then:
            sock.sendall(then)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


async def test_oversized_body_is_413_before_it_is_read(
    cloudide: Any, jp_fetch: Any, jp_http_port: int, jp_base_url: str
) -> None:
    # Declare 50 MB, send 10 bytes: the 413 must come back without waiting for the rest.
    head = (
        f"POST {jp_base_url}cloudide/api/conversations HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{jp_http_port}\r\nAuthorization: token alice-token\r\n"
        f"Content-Type: application/json\r\nContent-Length: {50 * 1024 * 1024}\r\n\r\n"
    ).encode()
    response = await asyncio.to_thread(_raw_http, jp_http_port, head, then=b'{"title": ')
    assert response.startswith(b"HTTP/1.1 413"), response[:200]


async def test_chunked_body_over_limit_is_413(cloudide: Any, jp_fetch: Any, jp_http_port: int,
                                              jp_base_url: str) -> None:
    limit = cloudide.body_limit_for("createConversation")
    chunk = b"x" * 4096
    count = limit // len(chunk) + 2
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(count)) + b"0\r\n\r\n"
    head = (
        f"POST {jp_base_url}cloudide/api/conversations HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{jp_http_port}\r\nAuthorization: token alice-token\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    response = await asyncio.to_thread(_raw_http, jp_http_port, head + body)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]


class TestBodyLimitsConfigurable:
    @pytest.fixture
    def cloudide_config(self) -> dict[str, Any]:
        return {"body_limits": {"createConversation": 64}}

    async def test_operation_limit_from_traitlet(self, cloudide: Any, jp_fetch: Any) -> None:
        response = await fetch(jp_fetch, "cloudide/api/conversations", method="POST",
                               body=json.dumps({"title": "y" * 100}))
        assert response.code == 413
        assert body_of(response)["code"] == "payload_too_large"
        ok = await fetch(jp_fetch, "cloudide/api/conversations", method="POST",
                         body=json.dumps({"title": "y"}))
        assert ok.code == 201


# -- cookies, XSRF, origin, host ---------------------------------------------------------------


class TestBrowserSecurity:
    """With jupyter_server's own token provider: the cookie a browser gets after login."""

    @pytest.fixture
    def server_config(self) -> dict[str, Any]:
        return {}

    async def _login_cookies(self, jp_fetch: Any, jp_auth_header: dict[str, str]) -> str:
        response = await jp_fetch("cloudide", "api", "health", headers=jp_auth_header)
        cookies = [c.split(";")[0] for c in response.headers.get_list("Set-Cookie")]
        assert cookies, "token login should set the user cookie"
        return "; ".join(cookies)

    async def test_cookie_post_without_xsrf_is_403(
        self, cloudide: Any, jp_fetch: Any, jp_auth_header: dict[str, str]
    ) -> None:
        cookie = await self._login_cookies(jp_fetch, jp_auth_header)
        response = await jp_fetch("cloudide", "api", "conversations", method="POST",
                                  body="{}", headers={"Cookie": cookie, "Authorization": ""},
                                  raise_error=False)
        assert response.code == 403
        # The same cookie with a matching XSRF token is accepted (so the 403 was XSRF).
        xsrf = "2|deadbeef|0123456789abcdef0123456789abcdef|1700000000"
        response = await jp_fetch(
            "cloudide", "api", "conversations", method="POST", body="{}",
            headers={"Cookie": f"{cookie}; _xsrf={xsrf}", "X-XSRFToken": xsrf,
                     "Authorization": ""},
            raise_error=False)
        assert response.code == 201, response.body

    async def test_foreign_origin_is_refused(
        self, cloudide: Any, jp_fetch: Any, jp_auth_header: dict[str, str]
    ) -> None:
        """A cookie-authenticated POST from another site, even with a valid XSRF pair."""
        cookie = await self._login_cookies(jp_fetch, jp_auth_header)
        xsrf = "2|deadbeef|0123456789abcdef0123456789abcdef|1700000000"
        response = await jp_fetch(
            "cloudide", "api", "conversations", method="POST", body="{}",
            headers={"Cookie": f"{cookie}; _xsrf={xsrf}", "X-XSRFToken": xsrf,
                     "Authorization": "", "Origin": "https://attacker.example"},
            raise_error=False)
        assert response.code in (403, 404)
        listing = await jp_fetch("cloudide", "api", "conversations", headers=jp_auth_header)
        assert json.loads(listing.body)["conversations"] == []

    async def test_dns_rebinding_host_is_403(self, cloudide: Any, jp_fetch: Any,
                                             jp_http_port: int, jp_base_url: str,
                                             jp_serverapp: Any) -> None:
        request = (
            f"GET {jp_base_url}cloudide/api/health HTTP/1.1\r\nHost: attacker.example\r\n"
            f"Authorization: token {jp_serverapp.identity_provider.token}\r\n\r\n"
        ).encode()
        response = await asyncio.to_thread(_raw_http, jp_http_port, request)
        assert response.startswith(b"HTTP/1.1 403"), response[:200]

    async def test_token_users_are_one_owner(self, cloudide: Any, jp_fetch: Any) -> None:
        """Token requests without cookies get random anonymous names from jupyter_server;
        they must still share one owner's conversations."""
        created = await jp_fetch("cloudide", "api", "conversations", method="POST",
                                 body='{"title": "mine"}')
        listing = await jp_fetch("cloudide", "api", "conversations")
        ids = [c["id"] for c in json.loads(listing.body)["conversations"]]
        assert json.loads(created.body)["id"] in ids


# -- ownership ---------------------------------------------------------------------------------


async def test_conversations_are_private_to_their_owner(cloudide: Any, jp_fetch: Any) -> None:
    created = await fetch(jp_fetch, "cloudide/api/conversations", method="POST",
                          body=json.dumps({"title": "  churn features  "}))
    assert created.code == 201
    conversation = body_of(created)
    assert conversation["title"] == "churn features"
    cid = conversation["id"]
    mine = await fetch(jp_fetch, f"cloudide/api/conversations/{cid}")
    assert mine.code == 200
    assert body_of(mine)["messages"] == []
    theirs = await fetch(jp_fetch, f"cloudide/api/conversations/{cid}", user="bob")
    assert theirs.code == 404
    assert body_of(theirs)["message"] == "conversation not found"
    bob_list = body_of(await fetch(jp_fetch, "cloudide/api/conversations", user="bob"))
    assert bob_list["conversations"] == []


# -- rate limits (a route of the gateway's own machinery, registered like any other) -----------


class LimitedProbeHandler(CloudIDEHandler):
    """A real CloudIDEHandler charged to the ``search`` class, to exercise the limiter."""

    auth_resource = "cloudide:search"
    route_name = "probe"

    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self.rate_limit("search", tokens=0)
        write_json(self, {"ok": True})


class TestRateLimits:
    @pytest.fixture
    def cloudide_config(self) -> dict[str, Any]:
        return {"rate_limits": {"search": {"requests_per_minute": 3}}}

    @pytest.fixture
    def probe(self, cloudide: Any, jp_serverapp: Any, jp_base_url: str) -> str:
        jp_serverapp.web_app.add_handlers(
            ".*$", [(f"{jp_base_url}cloudide/api/probe", LimitedProbeHandler,
                     {"name": "jupyter_cloudide"})])
        return "cloudide/api/probe"

    async def test_429_with_retry_after_and_headers(self, cloudide: Any, jp_fetch: Any,
                                                     probe: str) -> None:
        seen: list[dict[str, Any]] = []

        async def listener(logger: Any, schema_id: str, data: dict[str, Any]) -> None:
            seen.append(data)

        cloudide.serverapp.event_logger.add_listener(schema_id=events.REQUEST_REFUSED,
                                                     listener=listener)
        for remaining in (2, 1, 0):
            ok = await fetch(jp_fetch, probe)
            assert ok.code == 200
            assert ok.headers["x-ratelimit-limit-requests"] == "3"
            assert ok.headers["x-ratelimit-remaining-requests"] == str(remaining)
        refused = await fetch(jp_fetch, probe)
        assert refused.code == 429
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 20
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        error = body_of(refused)
        assert error["code"] == "rate_limited"
        assert error["retry_after_s"] > 0
        # another user has their own bucket
        assert (await fetch(jp_fetch, probe, user="bob")).code == 200
        await asyncio.sleep(0.05)  # listeners run as tasks
        assert any(e["reason"] == "rate_limited" and e["user"] == "alice" for e in seen)


class TestRedisDownFailsClosed:
    @pytest.fixture
    def cloudide_config(self) -> dict[str, Any]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return {"rate_limit_backend": "redis", "redis_url": f"redis://127.0.0.1:{port}/0",
                "rate_limits": {"search": {"requests_per_minute": 3}}}

    async def test_limiter_unavailable_is_503_and_health_says_so(
        self, cloudide: Any, jp_fetch: Any, jp_serverapp: Any, jp_base_url: str
    ) -> None:
        jp_serverapp.web_app.add_handlers(
            ".*$", [(f"{jp_base_url}cloudide/api/probe", LimitedProbeHandler,
                     {"name": "jupyter_cloudide"})])
        # a hang (no socket timeout towards Redis) fails here instead of stalling the suite
        response = await asyncio.wait_for(fetch(jp_fetch, "cloudide/api/probe"), 30)
        assert response.code == 503
        assert body_of(response)["code"] == "unavailable"
        health = body_of(await fetch(jp_fetch, "cloudide/api/health"))
        assert health["components"]["rate_limiter"]["state"] == "error"
        assert health["status"] == "degraded"


class TestRedisSharedLimits:
    @pytest.fixture
    def cloudide_config(self, redis_url: str) -> dict[str, Any]:
        return {"rate_limit_backend": "redis", "redis_url": redis_url,
                "rate_limits": {"search": {"requests_per_minute": 2}}}

    @pytest.mark.redis
    async def test_redis_backend_enforces_over_http(
        self, cloudide: Any, jp_fetch: Any, jp_serverapp: Any, jp_base_url: str
    ) -> None:
        jp_serverapp.web_app.add_handlers(
            ".*$", [(f"{jp_base_url}cloudide/api/probe", LimitedProbeHandler,
                     {"name": "jupyter_cloudide"})])
        codes = [(await fetch(jp_fetch, "cloudide/api/probe")).code for _ in range(3)]
        assert codes == [200, 200, 429]
        health = body_of(await fetch(jp_fetch, "cloudide/api/health"))
        assert health["components"]["rate_limiter"] == {"state": "ok", "backend": "redis"}


# -- database faults ---------------------------------------------------------------------------


class TestDatabaseDown:
    @pytest.fixture
    def cloudide_config(self) -> dict[str, Any]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return {"db_url": f"postgresql+psycopg://cide:s3cret-pw@127.0.0.1:{port}/cide",
                "db_ready_timeout": 5.0}

    async def test_health_degraded_and_routes_503_without_password(
        self, cloudide: Any, jp_fetch: Any
    ) -> None:
        for _ in range(200):  # the store opens in the background
            health = body_of(await fetch(jp_fetch, "cloudide/api/health"))
            if health["components"]["db"]["state"] != "starting":
                break
            await asyncio.sleep(0.05)
        assert health["components"]["db"]["state"] == "error"
        assert health["status"] == "degraded"
        response = await fetch(jp_fetch, "cloudide/api/conversations")
        assert response.code == 503
        for text in (json.dumps(health), response.body.decode()):
            assert "s3cret-pw" not in text


# -- metrics -----------------------------------------------------------------------------------


async def test_metrics_appear_on_the_server_metrics_route(cloudide: Any, jp_fetch: Any) -> None:
    await fetch(jp_fetch, "cloudide/api/health")
    await fetch(jp_fetch, "cloudide/api/conversations", method="POST", body="[")
    response = await fetch(jp_fetch, "metrics")
    assert response.code == 200
    text = response.body.decode()
    assert 'cloudide_http_requests_total{method="GET",route="health",status="200"}' in text
    assert 'cloudide_http_requests_total{method="POST",route="conversations",status="400"}' in text
    assert "cloudide_http_request_duration_seconds_bucket" in text
    assert "cloudide_ws_connections" in text
    assert "cloudide_rate_limited_requests_total" in text


async def test_refused_event_for_oversized_body(cloudide: Any, jp_fetch: Any) -> None:
    seen: list[dict[str, Any]] = []

    async def listener(logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        seen.append(data)

    cloudide.serverapp.event_logger.add_listener(schema_id=events.REQUEST_REFUSED,
                                                 listener=listener)
    big = json.dumps({"title": "x" * (cloudide.body_limit_for("createConversation") + 1)})
    response = await fetch(jp_fetch, "cloudide/api/conversations", method="POST", body=big)
    assert response.code == 413
    await asyncio.sleep(0.05)
    assert seen and seen[-1]["reason"] == "too_large"
    assert seen[-1]["route"] == "conversations"
    assert seen[-1]["user"] == "alice"


async def test_stop_closes_services(cloudide: Any) -> None:
    store = cloudide.store
    assert store is not None
    await cloudide.stop_extension()
    assert cloudide.store is None
    assert store.health()["state"] == "error"
    assert cloudide.sessions.stats() == {"sessions": 0, "connections": 0}


@pytest.mark.postgres
class TestOnPostgres:
    """The same routes with the metadata DB on a real PostgreSQL server."""

    @pytest.fixture
    def cloudide_config(self, postgres_url: str) -> dict[str, Any]:
        return {"db_url": postgres_url}

    async def test_conversations_round_trip(self, cloudide: Any, jp_fetch: Any) -> None:
        health = body_of(await fetch(jp_fetch, "cloudide/api/health"))
        assert health["components"]["db"]["state"] == "ok"
        assert health["components"]["db"]["dialect"] == "postgresql"
        created = body_of(await fetch(jp_fetch, "cloudide/api/conversations", method="POST",
                                      body=json.dumps({"title": "on pg"})))
        got = await fetch(jp_fetch, f"cloudide/api/conversations/{created['id']}")
        assert body_of(got)["title"] == "on pg"
        assert (await fetch(jp_fetch, f"cloudide/api/conversations/{created['id']}",
                            user="bob")).code == 404


class TestUnsafeQueueConfigRefused:
    """A send queue smaller than the replay buffer would cut off every reconnect."""

    @pytest.fixture
    def cloudide_config(self) -> dict[str, Any]:
        return {"ws_send_queue_frames": 10, "ws_replay_frames": 100}

    async def test_extension_does_not_load(self, jp_serverapp: Any, jp_fetch: Any) -> None:
        from jupyter_cloudide.app import CloudIDEApp

        response = await fetch(jp_fetch, "cloudide/api/health")
        assert response.code == 404
        with pytest.raises(ValueError, match=r"ws_send_queue_frames \(10\) must exceed"):
            CloudIDEApp(ws_send_queue_frames=10, ws_replay_frames=100)._check_queue_bounds()
        await jp_serverapp.extension_manager.stop_all_extensions()  # must not raise
