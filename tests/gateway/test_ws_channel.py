"""Server-level tests of the session channel ``WS cloudide/api/ws``.

Plain ``async def`` tests (no asyncio mark): pytest-jupyter runs them on the server's loop.
Test-only request kinds are registered on the started app's registry where a test needs a
request that stays in flight or emits many frames.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Iterator
from http.cookies import SimpleCookie
from typing import Any

import pytest
import tornado.httpclient
import tornado.websocket
from jupyter_core.utils import ensure_async
from jupyter_server.auth.authorizer import Authorizer
from jupyter_server.auth.identity import IdentityProvider, User
from tornado import web
from tornado.websocket import WebSocketClientConnection

from jupyter_cloudide.gateway.channel import RequestContext

WS = ("cloudide", "api", "ws")
TIMEOUT = 10.0
BOB_TOKEN = "bob-secret-token-0123456789"

JsonDict = dict[str, Any]


# ------------------------------------------------------------------------------------------
# server configuration hooks


class DenySessionAuthorizer(Authorizer):
    """Denies the channel itself (the upgrade)."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return resource != "cloudide:session"


class DenyHealthAuthorizer(Authorizer):
    """Allows the channel but denies the ``health`` kind's resource."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return resource != "cloudide:health"


class TwoUserIdentityProvider(IdentityProvider):
    """The server token is the default user; ``token BOB_TOKEN`` is user ``bob``."""

    async def get_user(self, handler: web.RequestHandler) -> User | None:  # type: ignore[override]
        if handler.request.headers.get("Authorization") == f"token {BOB_TOKEN}":
            return User(username="bob")
        user: User | None = await ensure_async(super().get_user(handler))
        return user


@pytest.fixture
def server_extra() -> dict[str, Any]:
    """Extra ``ServerApp`` traits for one test (parametrize to override)."""
    return {}


@pytest.fixture
def jp_server_config(jp_server_config: dict[str, Any],
                     server_extra: dict[str, Any]) -> dict[str, Any]:
    config = {section: dict(values) for section, values in jp_server_config.items()}
    config["ServerApp"].update(server_extra)
    return config


@pytest.fixture
def jp_ws_fetch(jp_ws_fetch: Any) -> Iterator[Any]:
    """pytest-jupyter's jp_ws_fetch, closing every client connection at teardown."""
    opened: list[WebSocketClientConnection] = []

    async def fetch(*parts: str, **kwargs: Any) -> WebSocketClientConnection:
        conn: WebSocketClientConnection = await jp_ws_fetch(*parts, **kwargs)
        opened.append(conn)
        return conn

    yield fetch
    for conn in opened:
        conn.close()


# ------------------------------------------------------------------------------------------
# helpers


async def recv(conn: WebSocketClientConnection) -> JsonDict:
    message = await asyncio.wait_for(conn.read_message(), TIMEOUT)
    assert message is not None, f"connection closed: {conn.close_code} {conn.close_reason}"
    assert isinstance(message, str)
    frame: JsonDict = json.loads(message)
    return frame


async def recv_text(conn: WebSocketClientConnection) -> str:
    message = await asyncio.wait_for(conn.read_message(), TIMEOUT)
    assert message is not None, f"connection closed: {conn.close_code} {conn.close_reason}"
    assert isinstance(message, str)
    return message


async def wait_closed(conn: WebSocketClientConnection) -> int | None:
    """Read (and drop) frames until the server closes; return the close code."""
    while True:
        message = await asyncio.wait_for(conn.read_message(), TIMEOUT)
        if message is None:
            code = conn.close_code
            conn.close()  # release the client side too (ResourceWarning otherwise)
            return code


async def send(conn: WebSocketClientConnection, frame: JsonDict | str) -> None:
    await conn.write_message(frame if isinstance(frame, str) else json.dumps(frame))


async def call(conn: WebSocketClientConnection, request_id: Any, payload: JsonDict) -> JsonDict:
    await send(conn, {"type": "request", "id": request_id, "payload": payload})
    frame = await recv(conn)
    assert frame["type"] == "response" and frame["id"] == request_id, frame
    return frame


async def ping(conn: WebSocketClientConnection, ping_id: Any = "p") -> None:
    await send(conn, {"type": "ping", "id": ping_id})
    assert await recv(conn) == {"type": "pong", "id": ping_id}


async def open_ws(jp_ws_fetch: Any, **params: Any) -> tuple[WebSocketClientConnection, JsonDict]:
    conn = await jp_ws_fetch(*WS, params={k: str(v) for k, v in params.items()})
    welcome = await recv(conn)
    assert welcome["type"] == "welcome", welcome
    assert "seq" not in welcome
    return conn, welcome["payload"]


def ws_url(port: int, base_url: str, params: dict[str, str] | None = None) -> str:
    query = urllib.parse.urlencode(params or {})
    # 127.0.0.1 like jp_fetch: the login cookie's name is bound to the Host
    return f"ws://127.0.0.1:{port}{base_url.rstrip('/')}/cloudide/api/ws?{query}"


async def raw_connect(port: int, base_url: str, headers: dict[str, str],
                      params: dict[str, str] | None = None) -> WebSocketClientConnection:
    """Connect without pytest-jupyter's default Authorization header.

    The test must request ``http_server_client`` (pytest-jupyter starts listening there).
    """
    request = tornado.httpclient.HTTPRequest(ws_url(port, base_url, params), headers=headers)
    conn: WebSocketClientConnection = await asyncio.wait_for(
        tornado.websocket.websocket_connect(request), TIMEOUT)
    return conn


async def until(predicate: Any, what: str) -> None:
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def all_detached(app: Any) -> bool:
    return bool(app.sessions.stats()["connections"] == 0)


# ------------------------------------------------------------------------------------------
# basic round trips


async def test_welcome_health_round_trip_and_ping(cloudide: Any, jp_ws_fetch: Any) -> None:
    conn, welcome = await open_ws(jp_ws_fetch)
    assert welcome["resumed"] is False
    assert welcome["last_seq"] == 0
    assert isinstance(welcome["session_id"], str) and len(welcome["session_id"]) >= 16
    assert welcome["max_frame_bytes"] == cloudide.ws_max_frame_bytes
    assert welcome["heartbeat_s"] == pytest.approx(cloudide.ws_heartbeat_seconds)
    await ping(conn, 1)
    await ping(conn, "two")
    frame = await call(conn, "h1", {"kind": "health"})
    assert frame["seq"] == 1
    assert "error" not in frame
    report = frame["payload"]
    assert report["status"] in ("ok", "starting", "degraded")
    assert report["components"]["session_channel"]["connections"] >= 1
    conn.close()


async def test_seq_strictly_increasing_across_responses(cloudide: Any, jp_ws_fetch: Any) -> None:
    conn, _ = await open_ws(jp_ws_fetch)
    seqs: list[int] = []
    for i in range(5):
        seqs.append((await call(conn, i, {"kind": "health"}))["seq"])
        await ping(conn, i)  # pongs are not numbered
    await send(conn, "not json")
    seqs.append((await recv(conn))["seq"])  # error frames are numbered too
    seqs.append((await call(conn, "u", {"kind": "nope"}))["seq"])
    assert seqs == sorted(set(seqs))
    assert seqs == list(range(1, 8))
    conn.close()


# ------------------------------------------------------------------------------------------
# invalid input


async def test_unknown_kind_is_400_naming_kind(cloudide: Any, jp_ws_fetch: Any) -> None:
    conn, _ = await open_ws(jp_ws_fetch)
    frame = await call(conn, 1, {"kind": "no.such.kind"})
    assert "payload" not in frame
    assert frame["error"]["status"] == 400
    assert frame["error"]["code"] == "invalid_input"
    assert frame["error"]["field"] == "kind"
    await ping(conn)
    conn.close()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"kind": "resume", "last_seq": -1}, "last_seq"),
        ({"kind": "resume", "last_seq": "3"}, "last_seq"),
        ({"kind": "resume"}, "last_seq"),
        ({"kind": "resume", "last_seq": 0, "unknown": 1}, "unknown"),
        ({"kind": "health", "verbose": True}, "verbose"),
    ],
    ids=["negative", "string", "missing", "unknown-key-resume", "unknown-key-health"],
)
async def test_payload_failing_schema_is_400_with_field(
    cloudide: Any, jp_ws_fetch: Any, payload: JsonDict, field: str
) -> None:
    conn, _ = await open_ws(jp_ws_fetch)
    frame = await call(conn, "bad", payload)
    assert frame["error"]["status"] == 400
    assert frame["error"]["field"] == field
    await ping(conn)
    conn.close()


@pytest.mark.parametrize(
    ("text", "field", "echo_id"),
    [
        ("this is not json", "frame", None),
        ("[1, 2, 3]", "frame", None),
        ('{"type":"request","payload":{"kind":"health"}}', "id", None),
        ('{"type":"request","id":3}', "payload", 3),
        ('{"type":"shout","id":4}', "type", 4),
        ('{"type":"request","id":5,"payload":{"nokind":1}}', "payload.kind", 5),
    ],
    ids=["not-json", "array", "no-id", "no-payload", "bad-type", "no-kind"],
)
async def test_malformed_frame_gets_error_and_connection_stays_usable(
    cloudide: Any, jp_ws_fetch: Any, text: str, field: str, echo_id: Any
) -> None:
    conn, _ = await open_ws(jp_ws_fetch)
    await send(conn, text)
    frame = await recv(conn)
    assert frame["type"] == "response"
    assert frame.get("id") == echo_id
    assert frame["error"]["status"] == 400
    assert frame["error"]["field"] == field
    await ping(conn, "after")
    assert "payload" in await call(conn, "h", {"kind": "health"})
    conn.close()


async def test_oversized_integer_gets_error_and_connection_stays_usable(
    cloudide: Any, jp_ws_fetch: Any
) -> None:
    """An int literal of > 4300 digits makes json.loads raise a plain ValueError."""
    conn, _ = await open_ws(jp_ws_fetch)
    await send(conn, '{"type":"ping","id":' + "9" * 5000 + "}")
    frame = await recv(conn)
    assert frame["error"]["status"] == 400
    await ping(conn, "after")
    conn.close()


async def test_lone_surrogate_echoed_back_as_an_escape(cloudide: Any, jp_ws_fetch: Any) -> None:
    """JSON lets a client send a lone surrogate (``"\\ud800"``), which has no UTF-8 form: the
    frames echoing it (pong, response) must still go out, as valid UTF-8 with the character
    escaped, in order, and the connection must stay usable."""
    conn, _ = await open_ws(jp_ws_fetch)
    await send(conn, '{"type":"ping","id":"\\ud800"}')
    await send(conn, '{"type":"request","id":"\\udfff-x","payload":{"kind":"health"}}')
    pong = await recv_text(conn)
    assert "\\ud800" in pong and json.loads(pong) == {"type": "pong", "id": "\ud800"}
    response = await recv(conn)
    assert response["type"] == "response" and response["id"] == "\udfff-x"
    assert "components" in response["payload"]
    await ping(conn, "after")
    conn.close()


@pytest.mark.parametrize("params", [{"last_seq": "-1"}, {"last_seq": "abc"},
                                    {"last_seq": "\u00b2"}, {"last_seq": "1" * 19},
                                    {"session_id": "a/b"}, {"session_id": "x" * 65}],
                         ids=["negative", "letters", "superscript-two", "too-long",
                              "slash-id", "long-id"])
async def test_malformed_query_is_400(cloudide: Any, jp_ws_fetch: Any,
                                      params: dict[str, str]) -> None:
    with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
        await jp_ws_fetch(*WS, params=params)
    assert refused.value.code == 400


# ------------------------------------------------------------------------------------------
# resume and replay


async def test_reconnect_and_resume_replays_missed_frames_in_order(
    cloudide: Any, jp_ws_fetch: Any
) -> None:
    conn, welcome = await open_ws(jp_ws_fetch)
    session_id = welcome["session_id"]
    texts: list[str] = []
    for i in range(3):
        await send(conn, {"type": "request", "id": i, "payload": {"kind": "health"}})
        texts.append(await recv_text(conn))
    seqs = [json.loads(t)["seq"] for t in texts]
    assert seqs == [1, 2, 3]
    conn.close()
    await until(lambda: all_detached(cloudide), "the connection to detach")

    conn2, welcome2 = await open_ws(jp_ws_fetch, session_id=session_id)
    assert welcome2["session_id"] == session_id
    assert welcome2["resumed"] is True
    assert welcome2["last_seq"] == 3
    await ping(conn2)  # pings work while paused
    await send(conn2, {"type": "request", "id": "r", "payload": {"kind": "resume",
                                                                 "last_seq": seqs[0]}})
    assert await recv_text(conn2) == texts[1]  # replayed byte for byte
    assert await recv_text(conn2) == texts[2]
    response = await recv(conn2)
    assert response["id"] == "r" and response["seq"] == 4
    assert response["payload"] == {"replayed": 2, "gap": False, "last_seq": 3}
    # live again
    assert (await call(conn2, "n", {"kind": "health"}))["seq"] == 5
    conn2.close()


async def test_reattached_session_is_paused_until_resume(cloudide: Any, jp_ws_fetch: Any) -> None:
    conn, welcome = await open_ws(jp_ws_fetch)
    conn.close()
    await until(lambda: all_detached(cloudide), "the connection to detach")
    conn2, welcome2 = await open_ws(jp_ws_fetch, session_id=welcome["session_id"])
    assert welcome2["resumed"] is True
    await send(conn2, {"type": "request", "id": "early", "payload": {"kind": "health"}})
    await ping(conn2, "marker")  # the early response was held back, the pong was not
    await send(conn2, {"type": "request", "id": "r", "payload": {"kind": "resume",
                                                                 "last_seq": 0}})
    early = await recv(conn2)
    assert early["id"] == "early" and early["seq"] == 1
    resumed = await recv(conn2)
    assert resumed["id"] == "r"
    assert resumed["payload"] == {"replayed": 1, "gap": False, "last_seq": 1}
    conn2.close()


async def test_last_seq_query_replays_at_open(cloudide: Any, jp_ws_fetch: Any) -> None:
    conn, welcome = await open_ws(jp_ws_fetch)
    texts = []
    for i in range(3):
        await send(conn, {"type": "request", "id": i, "payload": {"kind": "health"}})
        texts.append(await recv_text(conn))
    conn.close()
    await until(lambda: all_detached(cloudide), "the connection to detach")
    conn2, welcome2 = await open_ws(jp_ws_fetch, session_id=welcome["session_id"], last_seq=1)
    assert welcome2["resumed"] is True and welcome2["last_seq"] == 3
    assert await recv_text(conn2) == texts[1]
    assert await recv_text(conn2) == texts[2]
    # not paused: a new request is answered at once, with the next seq
    assert (await call(conn2, "x", {"kind": "health"}))["seq"] == 4
    conn2.close()


async def test_made_up_session_id_gives_new_session(cloudide: Any, jp_ws_fetch: Any) -> None:
    conn, welcome = await open_ws(jp_ws_fetch, session_id="made-up-session-id", last_seq=0)
    assert welcome["resumed"] is False
    assert welcome["session_id"] != "made-up-session-id"
    assert welcome["last_seq"] == 0
    assert (await call(conn, 1, {"kind": "health"}))["seq"] == 1
    conn.close()


@pytest.mark.parametrize("server_extra", [{"identity_provider_class": TwoUserIdentityProvider}],
                         ids=["two-users"])
async def test_another_users_session_id_gives_new_session(
    cloudide: Any, jp_ws_fetch: Any, server_extra: dict[str, Any]
) -> None:
    alice, welcome = await open_ws(jp_ws_fetch)
    await call(alice, 1, {"kind": "health"})
    bob = await jp_ws_fetch(*WS, params={"session_id": welcome["session_id"], "last_seq": "0"},
                            headers={"Authorization": f"token {BOB_TOKEN}"})
    bob_welcome = (await recv(bob))["payload"]
    assert bob_welcome["resumed"] is False
    assert bob_welcome["session_id"] != welcome["session_id"]
    assert bob_welcome["last_seq"] == 0
    await ping(bob)
    # alice was neither taken over nor replayed into bob's connection
    await ping(alice)
    assert (await call(alice, 2, {"kind": "health"}))["seq"] == 2
    users = {s.user for s in cloudide.sessions._sessions.values()}
    assert "bob" in users and len(users) == 2
    alice.close()
    bob.close()


@pytest.mark.parametrize("cloudide_config", [{"ws_replay_frames": 5}], ids=["replay5"])
async def test_replay_buffer_is_bounded(cloudide: Any, jp_ws_fetch: Any,
                                        cloudide_config: dict[str, Any]) -> None:
    conn, welcome = await open_ws(jp_ws_fetch)
    texts = []
    for i in range(10):
        await send(conn, {"type": "request", "id": i, "payload": {"kind": "health"}})
        texts.append(await recv_text(conn))
    conn.close()
    await until(lambda: all_detached(cloudide), "the connection to detach")
    conn2, welcome2 = await open_ws(jp_ws_fetch, session_id=welcome["session_id"])
    assert welcome2["resumed"] is True
    await send(conn2, {"type": "request", "id": "r", "payload": {"kind": "resume",
                                                                 "last_seq": 0}})
    replayed = [await recv_text(conn2) for _ in range(5)]
    assert replayed == texts[5:]
    response = await recv(conn2)
    assert response["id"] == "r"
    assert response["payload"] == {"replayed": 5, "gap": True, "last_seq": 10}
    conn2.close()


async def test_frames_emitted_while_disconnected_are_replayed(
    cloudide: Any, jp_ws_fetch: Any
) -> None:
    """A request keeps running across a reload; everything it emitted is replayed.

    With the default settings, as many frames as the replay buffer holds (1000, more than
    the 512-frame send queue) were missed: the replay must not trip the slow-reader bound,
    or the client could never catch up (every reconnect would end in 4008 again).
    """
    gate = asyncio.Event()
    count = cloudide.ws_replay_frames - 1  # the final response fills the buffer exactly

    async def long_turn(ctx: RequestContext, payload: JsonDict) -> JsonDict:
        await gate.wait()
        for n in range(count):
            ctx.stream({"n": n})
        return {"done": True}

    cloudide.ws_kinds.register("test.long_turn", long_turn, resource="cloudide:session")
    conn, welcome = await open_ws(jp_ws_fetch)
    await send(conn, {"type": "request", "id": "turn", "payload": {"kind": "test.long_turn"}})
    await ping(conn)
    conn.close()
    await until(lambda: all_detached(cloudide), "the connection to detach")
    gate.set()
    await until(lambda: not any(s.tasks for s in cloudide.sessions._sessions.values()),
                "the turn to finish")

    conn2, welcome2 = await open_ws(jp_ws_fetch, session_id=welcome["session_id"], last_seq=0)
    assert welcome2["last_seq"] == count + 1
    deltas = []
    for _ in range(count):
        frame = await recv(conn2)
        assert frame["type"] == "stream" and frame["id"] == "turn", frame
        deltas.append(frame["payload"]["n"])
    assert deltas == list(range(count))
    final = await recv(conn2)
    assert final["type"] == "response" and final["payload"] == {"done": True}
    await ping(conn2)
    conn2.close()


# ------------------------------------------------------------------------------------------
# limits


@pytest.mark.parametrize("cloudide_config", [{"ws_max_frame_bytes": 1024}], ids=["1KB"])
async def test_frame_above_size_limit_closes_only_that_connection(
    cloudide: Any, jp_ws_fetch: Any, cloudide_config: dict[str, Any]
) -> None:
    other, _ = await open_ws(jp_ws_fetch)
    conn, welcome = await open_ws(jp_ws_fetch)
    assert welcome["max_frame_bytes"] == 1024
    await send(conn, {"type": "ping", "id": "x" * 60, "pad": "y" * 2048})
    assert await wait_closed(conn) == 1009
    await ping(other, "still-alive")
    # a frame just under the limit is fine
    await send(other, {"type": "ping", "id": 1, "pad": "z" * 900})
    assert (await recv(other))["type"] in ("pong", "response")
    other.close()


async def test_binary_frame_closes_with_1003(cloudide: Any, jp_ws_fetch: Any) -> None:
    conn, _ = await open_ws(jp_ws_fetch)
    await conn.write_message(b'{"type":"ping"}', binary=True)
    assert await wait_closed(conn) == 1003


async def test_second_connection_takes_over_session(cloudide: Any, jp_ws_fetch: Any) -> None:
    first, welcome = await open_ws(jp_ws_fetch)
    second, welcome2 = await open_ws(jp_ws_fetch, session_id=welcome["session_id"])
    assert welcome2["resumed"] is True and welcome2["session_id"] == welcome["session_id"]
    assert await wait_closed(first) == 4009
    await send(second, {"type": "request", "id": "r", "payload": {"kind": "resume",
                                                                  "last_seq": 0}})
    assert (await recv(second))["payload"]["replayed"] == 0
    assert (await call(second, 1, {"kind": "health"}))["payload"]["components"][
        "session_channel"]["connections"] == 1
    second.close()


@pytest.mark.parametrize("cloudide_config", [{"ws_send_queue_frames": 4, "ws_replay_frames": 2}],
                         ids=["queue4"])
async def test_slow_reader_is_disconnected_and_can_resume(
    cloudide: Any, jp_ws_fetch: Any, cloudide_config: dict[str, Any]
) -> None:
    """A burst above the send queue (a reader that cannot keep up) → 4008, frames kept."""

    async def burst(ctx: RequestContext, payload: JsonDict) -> JsonDict:
        for n in range(10):
            ctx.event({"n": n})
        return {"sent": 10}

    cloudide.ws_kinds.register("test.burst", burst, resource="cloudide:session")
    conn, welcome = await open_ws(jp_ws_fetch)
    await ping(conn)
    await send(conn, {"type": "request", "id": "b", "payload": {"kind": "test.burst"}})
    assert await wait_closed(conn) == 4008
    await until(lambda: all_detached(cloudide), "the connection to detach")

    conn2, welcome2 = await open_ws(jp_ws_fetch, session_id=welcome["session_id"])
    assert welcome2["resumed"] is True
    assert welcome2["last_seq"] == 11  # 10 events + the response, all kept
    await send(conn2, {"type": "request", "id": "r", "payload": {"kind": "resume",
                                                                 "last_seq": 9}})
    assert (await recv(conn2))["payload"] == {"n": 9}
    assert (await recv(conn2))["payload"] == {"sent": 10}
    assert (await recv(conn2))["payload"] == {"replayed": 2, "gap": False, "last_seq": 11}
    conn2.close()


@pytest.mark.parametrize("cloudide_config", [{"ws_send_queue_frames": 4, "ws_replay_frames": 2}],
                         ids=["queue4"])
async def test_reader_that_stops_reading_is_disconnected(
    cloudide: Any, jp_ws_fetch: Any, cloudide_config: dict[str, Any]
) -> None:
    """Frames a loop iteration apart (no burst) to a client that stopped reading: once the
    socket takes no more bytes, frames wait in the bounded queue, which then fills → 4008."""
    done = asyncio.Event()
    chunk = "z" * 200_000

    async def firehose(ctx: RequestContext, payload: JsonDict) -> JsonDict:
        try:
            for n in range(300):  # 60 MB if nothing stopped it: far above socket buffers
                if ctx.session.sink is None:
                    return {"cut_off_after": n}
                ctx.event({"n": n, "pad": chunk})
                await asyncio.sleep(0)
            return {"cut_off_after": None}
        finally:
            done.set()

    cloudide.ws_kinds.register("test.firehose", firehose, resource="cloudide:session")
    conn, _ = await open_ws(jp_ws_fetch)
    await send(conn, {"type": "request", "id": "f", "payload": {"kind": "test.firehose"}})
    await asyncio.wait_for(done.wait(), TIMEOUT)  # the client reads nothing meanwhile
    assert all_detached(cloudide)
    assert await wait_closed(conn) == 4008


async def test_burst_of_stream_deltas_first_alone_then_merged(cloudide: Any,
                                                              jp_ws_fetch: Any) -> None:
    """Deltas emitted back to back: the first leaves at once as it is, the ones emitted while
    it was written are merged into the next frame; the text and the seq order are intact."""
    parts = [f"tok{n} " for n in range(30)]

    async def burst(ctx: RequestContext, payload: JsonDict) -> JsonDict:
        for part in parts:
            ctx.stream({"turn_id": "t", "delta": part})
        return {"n": len(parts)}

    cloudide.ws_kinds.register("test.deltas", burst, resource="cloudide:session")
    conn, _ = await open_ws(jp_ws_fetch)
    await send(conn, {"type": "request", "id": "d", "payload": {"kind": "test.deltas"}})
    frames = []
    while True:
        frame = await recv(conn)
        frames.append(frame)
        if frame["type"] == "response":
            break
    streams = [f for f in frames if f["type"] == "stream"]
    assert streams[0]["payload"] == {"turn_id": "t", "delta": parts[0]}
    assert "".join(f["payload"]["delta"] for f in streams) == "".join(parts)
    assert 1 < len(streams) < len(parts)
    assert [f["seq"] for f in frames] == list(range(frames[0]["seq"], frames[0]["seq"]
                                                     + len(frames)))
    await ping(conn)
    conn.close()


@pytest.mark.parametrize("cloudide_config", [{"ws_max_inflight_requests": 1}], ids=["inflight1"])
async def test_inflight_limit(cloudide: Any, jp_ws_fetch: Any,
                              cloudide_config: dict[str, Any]) -> None:
    gate = asyncio.Event()

    async def blocking(ctx: RequestContext, payload: JsonDict) -> JsonDict:
        await gate.wait()
        return {"released": True}

    cloudide.ws_kinds.register("test.block", blocking, resource="cloudide:session")
    conn, _ = await open_ws(jp_ws_fetch)
    await send(conn, {"type": "request", "id": "a", "payload": {"kind": "test.block"}})
    rejected = await call(conn, "b", {"kind": "health"})
    assert rejected["error"]["status"] == 429
    assert rejected["error"]["code"] == "rate_limited"
    assert rejected["error"]["retry_after_s"] > 0
    gate.set()
    released = await recv(conn)
    assert released["id"] == "a" and released["payload"] == {"released": True}
    assert "payload" in await call(conn, "c", {"kind": "health"})
    conn.close()


async def test_close_all_closes_connections_with_4010(cloudide: Any, jp_ws_fetch: Any) -> None:
    first, _ = await open_ws(jp_ws_fetch)
    second, _ = await open_ws(jp_ws_fetch)
    cloudide.sessions.close_all()
    assert await wait_closed(first) == 4010
    assert await wait_closed(second) == 4010
    assert cloudide.sessions.stats() == {"sessions": 0, "connections": 0}


# ------------------------------------------------------------------------------------------
# authentication and origin


async def test_no_token_is_refused(cloudide: Any, http_server_client: Any, jp_http_port: int,
                                   jp_base_url: str) -> None:
    with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
        await raw_connect(jp_http_port, jp_base_url, {})
    assert refused.value.code in (401, 403)
    assert cloudide.sessions.stats()["sessions"] == 0


@pytest.mark.parametrize("headers", [{"Authorization": "token wrong-token"},
                                     {"Authorization": "Bearer nothing"}],
                         ids=["wrong-token", "bearer-junk"])
async def test_wrong_token_is_refused(cloudide: Any, http_server_client: Any,
                                      jp_http_port: int, jp_base_url: str,
                                      headers: dict[str, str]) -> None:
    with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
        await raw_connect(jp_http_port, jp_base_url, headers)
    assert refused.value.code in (401, 403)
    with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
        await raw_connect(jp_http_port, jp_base_url, {}, {"token": "wrong-token"})
    assert refused.value.code in (401, 403)
    assert cloudide.sessions.stats()["sessions"] == 0


async def _login_cookie(jp_fetch: Any) -> str:
    response = await jp_fetch("api", "status")
    cookies = SimpleCookie()
    for header in response.headers.get_list("Set-Cookie"):
        cookies.load(header)
    login = [m for name, m in cookies.items() if name.startswith("username-")]
    assert login, "token request set no login cookie"
    return f"{login[0].key}={login[0].value}"


async def test_cookie_auth_from_foreign_origin_is_403(
    cloudide: Any, jp_fetch: Any, jp_http_port: int, jp_base_url: str
) -> None:
    cookie = await _login_cookie(jp_fetch)
    # control: the same cookie from the server's own origin is accepted
    own = await raw_connect(jp_http_port, jp_base_url,
                            {"Cookie": cookie, "Origin": f"http://127.0.0.1:{jp_http_port}"})
    assert (await recv(own))["type"] == "welcome"
    own.close()
    with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
        await raw_connect(jp_http_port, jp_base_url,
                          {"Cookie": cookie, "Origin": "http://attacker.example"})
    assert refused.value.code == 403


async def test_foreign_host_header_is_403(cloudide: Any, jp_ws_fetch: Any) -> None:
    """DNS rebinding: a loopback server refuses a foreign Host even with a valid token."""
    with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
        await jp_ws_fetch(*WS, headers={"Host": "attacker.example"})
    assert refused.value.code == 403


# ------------------------------------------------------------------------------------------
# authorization


@pytest.mark.parametrize("server_extra", [{"authorizer_class": DenySessionAuthorizer}],
                         ids=["deny-session"])
async def test_authorizer_denying_session_refuses_upgrade(
    cloudide: Any, jp_ws_fetch: Any, server_extra: dict[str, Any]
) -> None:
    with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
        await jp_ws_fetch(*WS)
    assert refused.value.code == 403
    assert cloudide.sessions.stats()["sessions"] == 0


@pytest.mark.parametrize("server_extra", [{"authorizer_class": DenyHealthAuthorizer}],
                         ids=["deny-health"])
async def test_authorizer_denying_a_kind_resource_is_403_frame(
    cloudide: Any, jp_ws_fetch: Any, server_extra: dict[str, Any]
) -> None:
    conn, _ = await open_ws(jp_ws_fetch)
    denied = await call(conn, 1, {"kind": "health"})
    assert "payload" not in denied
    assert denied["error"]["status"] == 403
    assert denied["error"]["code"] == "forbidden"
    # resume (resource cloudide:session) still works: it replays the 403 frame, then answers
    await send(conn, {"type": "request", "id": 2, "payload": {"kind": "resume", "last_seq": 0}})
    assert await recv(conn) == denied
    resumed = await recv(conn)
    assert resumed["id"] == 2 and "error" not in resumed
    assert resumed["payload"] == {"replayed": 1, "gap": False, "last_seq": 1}
    conn.close()
