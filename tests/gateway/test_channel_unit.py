"""Unit tests of jupyter_cloudide.gateway.channel: no tornado, no server.

Sessions, sequence numbers, the bounded replay buffer, the session manager (ownership,
eviction, TTL) and the Channel's dispatch (validation, authorization, rate limits, in-flight
bound, error frames) are exercised against fake sinks, fake clocks and fake limiters.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import pytest

from jupyter_cloudide.errors import InvalidInputError
from jupyter_cloudide.gateway.channel import (
    CLOSE_SESSION_EXPIRED,
    CLOSE_SLOW_READER,
    CLOSE_TAKEN_OVER,
    Channel,
    RequestContext,
    RequestRegistry,
    Session,
    SessionManager,
    encode,
)

JsonDict = dict[str, Any]


# ------------------------------------------------------------------------------------------
# fakes


class FakeSink:
    """A FrameSink that records what it got; refuses frames after ``capacity`` of them.

    With ``hold``, frames stay queued (not written) until ``write_all``: only those can be
    replaced (a stream delta merged into them)."""

    def __init__(self, capacity: int | None = None, *, hold: bool = False) -> None:
        self.capacity = capacity
        self.hold = hold
        self.sent: list[str] = []
        self.written = 0
        self.closed: list[tuple[int, str]] = []

    def send_text(self, text: str) -> bool:
        if self.capacity is not None and len(self.sent) >= self.capacity:
            return False
        self.sent.append(text)
        if not self.hold:
            self.written = len(self.sent)
        return True

    def replace_queued(self, old: str, new: str) -> bool:
        if len(self.sent) > self.written and self.sent[-1] is old:
            self.sent[-1] = new
            return True
        return False

    def write_all(self) -> None:
        self.written = len(self.sent)

    def close_sink(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))

    def frames(self) -> list[JsonDict]:
        return [json.loads(t) for t in self.sent]


class FakeClock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeDecision:
    allowed: bool
    retry_after_s: float = 0.0


class FakeLimiter:
    def __init__(self, decision: FakeDecision) -> None:
        self.decision = decision
        self.calls: list[tuple[str, str, int]] = []

    async def check(self, user: str, route_class: str, tokens: int = 0) -> FakeDecision:
        self.calls.append((user, route_class, tokens))
        return self.decision


def make_session(*, replay_frames: int = 100, replay_bytes: int = 1 << 20) -> Session:
    return Session(id="s1", user="alice", replay_frames=replay_frames, replay_bytes=replay_bytes)


async def allow_all(resource: str, action: str) -> bool:
    return True


async def deny_all(resource: str, action: str) -> bool:
    return False


async def echo_kind(ctx: RequestContext, payload: JsonDict) -> JsonDict:
    return {"echo": payload.get("value"), "user": ctx.user}


def make_channel(
    *,
    authorize: Any = allow_all,
    limiter: Any = None,
    max_inflight: int = 32,
    registry: RequestRegistry | None = None,
) -> tuple[Channel, Session, FakeSink, list[tuple[str, str]]]:
    session = make_session()
    sink = FakeSink()
    session.attach(sink, paused=False)
    if registry is None:
        registry = RequestRegistry()
        registry.register("echo", echo_kind, resource="cloudide:session")
    calls: list[tuple[str, str]] = []
    channel = Channel(
        session, sink, registry, authorize=authorize, limiter=limiter,
        max_inflight=max_inflight, on_request=lambda kind, status: calls.append((kind, status)),
    )
    return channel, session, sink, calls


async def settle(session: Session) -> None:
    """Wait until every request task of the session has finished."""
    for _ in range(100):
        if not session.tasks:
            return
        await asyncio.gather(*list(session.tasks), return_exceptions=True)
        await asyncio.sleep(0)
    raise AssertionError("request tasks did not finish")


def request(request_id: Any, payload: Any) -> str:
    return json.dumps({"type": "request", "id": request_id, "payload": payload})


# ------------------------------------------------------------------------------------------
# Session: numbering, buffer, replay


def test_emit_numbers_frames_from_one_and_sends_them() -> None:
    session = make_session()
    sink = FakeSink()
    session.attach(sink, paused=False)
    assert session.last_seq == 0
    assert session.emit("event", {"a": 1}, request_id="r1") == 1
    assert session.emit("stream", {"d": "x"}) == 2
    assert session.emit("response", {}, request_id=7,
                        error={"status": 400, "code": "invalid_input", "message": "m"}) == 3
    assert session.last_seq == 3
    assert sink.frames() == [
        {"type": "event", "seq": 1, "id": "r1", "payload": {"a": 1}},
        {"type": "stream", "seq": 2, "payload": {"d": "x"}},
        {"type": "response", "seq": 3, "id": 7,
         "error": {"status": 400, "code": "invalid_input", "message": "m"}},
    ]


def test_encode_is_compact_and_keeps_unicode() -> None:
    assert encode({"a": "é", "b": [1, 2]}) == '{"a":"é","b":[1,2]}'


def test_emit_without_sink_or_paused_only_buffers() -> None:
    session = make_session()
    session.emit("event", {"n": 1})
    sink = FakeSink()
    session.attach(sink, paused=True)
    session.emit("event", {"n": 2})
    assert sink.sent == []
    count, gap = session.replay(0)
    assert (count, gap) == (2, False)
    assert [f["payload"]["n"] for f in sink.frames()] == [1, 2]
    assert session.paused is False
    session.emit("event", {"n": 3})  # live again
    assert [f["seq"] for f in sink.frames()] == [1, 2, 3]


def test_replay_sends_frames_after_last_seq_in_order_and_byte_identical() -> None:
    session = make_session()
    first = FakeSink()
    session.attach(first, paused=False)
    for n in range(1, 6):
        session.emit("event", {"n": n})
    session.detach(first)
    second = FakeSink()
    session.attach(second, paused=True)
    count, gap = session.replay(2)
    assert (count, gap) == (3, False)
    assert second.sent == first.sent[2:]
    assert [f["seq"] for f in second.frames()] == [3, 4, 5]


def test_replay_from_last_seq_or_beyond_sends_nothing_and_no_gap() -> None:
    session = make_session()
    sink = FakeSink()
    for _ in range(3):
        session.emit("event", {})
    session.attach(sink, paused=True)
    assert session.replay(3) == (0, False)
    assert session.replay(10) == (0, False)
    assert sink.sent == []


def test_replay_gap_detection_with_frame_bound() -> None:
    session = make_session(replay_frames=3)
    for n in range(1, 7):
        session.emit("event", {"n": n})
    # buffer keeps 4, 5, 6
    for last_seq, expected in [(6, (0, False)), (3, (3, False)), (4, (2, False)),
                               (2, (3, True)), (0, (3, True))]:
        sink = FakeSink()
        session.attach(sink, paused=True)
        assert session.replay(last_seq) == expected, last_seq
        assert [f["seq"] for f in sink.frames()] == [s for s in (4, 5, 6) if s > last_seq]


def test_replay_gap_on_fresh_session_is_false() -> None:
    session = make_session()
    session.attach(FakeSink(), paused=True)
    assert session.replay(0) == (0, False)


def test_buffer_is_bounded_by_bytes() -> None:
    sample = len(encode({"type": "event", "seq": 10, "payload": {"pad": "x" * 100}}))
    bound = sample * 3 + 10
    session = make_session(replay_bytes=bound)
    texts: list[str] = []
    sink = FakeSink()
    session.attach(sink, paused=False)
    for _ in range(20):
        session.emit("event", {"pad": "x" * 100})
    texts = sink.sent
    later = FakeSink()
    session.attach(later, paused=True)
    count, gap = session.replay(0)
    assert gap is True
    assert count == 3
    assert later.sent == texts[-3:]
    assert sum(len(t) for t in later.sent) <= bound


def test_frame_bigger_than_byte_bound_is_not_kept_and_reported_as_gap() -> None:
    session = make_session(replay_bytes=50)
    session.emit("event", {"pad": "y" * 200})
    sink = FakeSink()
    session.attach(sink, paused=True)
    assert session.replay(0) == (0, True)
    assert sink.sent == []


# ------------------------------------------------------------------------------------------
# stream deltas merged while their frame is still queued


def delta(text: str, turn: str = "t1") -> JsonDict:
    return {"conversation_id": "c1", "turn_id": turn, "delta": text}


def test_stream_deltas_merge_into_the_frame_still_queued() -> None:
    session = make_session()
    sink = FakeSink(hold=True)
    session.attach(sink, paused=False)
    assert session.emit("event", {"kind": "turn.started"}, request_id="r") == 1
    assert [session.emit("stream", delta(t), request_id="r") for t in ("He", "l", "lo")] \
        == [2, 2, 2]
    assert session.last_seq == 2
    assert sink.frames() == [
        {"type": "event", "seq": 1, "id": "r", "payload": {"kind": "turn.started"}},
        {"type": "stream", "seq": 2, "id": "r", "payload": delta("Hello")},
    ]
    sink.write_all()
    # written: the next delta is a frame of its own, with the next seq
    assert session.emit("stream", delta("!"), request_id="r") == 3
    assert session.emit("response", {"status": "ok"}, request_id="r") == 4
    assert [f["seq"] for f in sink.frames()] == [1, 2, 3, 4]
    # the replay buffer holds exactly what was sent
    fresh = FakeSink()
    session.attach(fresh, paused=True)
    assert session.replay(0) == (4, False)
    assert fresh.sent == sink.sent


def test_merged_delta_is_escaped_like_the_rest_of_the_frame() -> None:
    session = make_session()
    sink = FakeSink(hold=True)
    session.attach(sink, paused=False)
    parts = ['say "hi"', "\n\\", "é😀", "\u0000</script>", "\ud800"]
    for part in parts:
        session.emit("stream", delta(part), request_id=7)
    assert len(sink.sent) == 1
    assert sink.frames()[0]["payload"]["delta"] == "".join(parts)
    assert sink.sent[0] == encode({"type": "stream", "seq": 1, "id": 7,
                                   "payload": delta("".join(parts))})


@pytest.mark.parametrize("second", [
    {"request_id": "other", "payload": delta("b")},
    {"request_id": "r", "payload": delta("b", turn="t2")},
    {"request_id": "r", "payload": {"conversation_id": "c1", "turn_id": "t1"}},
    {"request_id": "r", "payload": {"delta": "b", "conversation_id": "c1", "turn_id": "t1"}},
    {"request_id": "r", "payload": {**delta("b"), "extra": 1}},
    {"request_id": "r", "payload": {"conversation_id": "c1", "turn_id": "t1", "delta": 5}},
    {"request_id": "r", "payload": {"conversation_id": 1, "turn_id": "t1", "delta": "b"}},
], ids=["other-request", "other-turn", "no-delta", "delta-not-last", "more-keys", "not-text",
        "equal-other-type"])
def test_stream_frames_that_differ_are_not_merged(second: JsonDict) -> None:
    session = make_session()
    sink = FakeSink(hold=True)
    session.attach(sink, paused=False)
    first = delta("a")
    if second["payload"].get("conversation_id") == 1:
        first["conversation_id"] = 1.0  # equal in Python, not on the wire
    session.emit("stream", first, request_id="r")
    assert session.emit("stream", second["payload"], request_id=second["request_id"]) == 2
    assert [f["payload"] for f in sink.frames()] == [first, second["payload"]]


def test_no_merge_across_other_frames_or_without_a_live_sink() -> None:
    session = make_session()
    sink = FakeSink(hold=True)
    session.attach(sink, paused=False)
    session.emit("stream", delta("a"), request_id="r")
    session.emit("event", {"kind": "tool.call"}, request_id="r")
    assert session.emit("stream", delta("b"), request_id="r") == 3
    # paused (re-attached, not yet resumed) and detached: frames only go to the buffer, and a
    # client may already hold the last one from its previous connection
    session.attach(FakeSink(hold=True), paused=True)
    assert session.emit("stream", delta("c"), request_id="r") == 4
    assert session.sink is not None
    session.detach(session.sink)
    assert session.emit("stream", delta("d"), request_id="r") == 5
    assert session.emit("stream", delta("e"), request_id="r") == 6
    fresh = FakeSink()
    session.attach(fresh, paused=True)
    session.replay(0)
    assert [f["payload"].get("delta") for f in fresh.frames()] == \
        ["a", None, "b", "c", "d", "e"]


def test_frame_written_after_a_later_frame_was_queued_is_not_reopened() -> None:
    """A pong (sent straight to the sink, not numbered) queued after the open frame means
    that frame is no longer the last one queued: the next delta is a frame of its own."""
    session = make_session()
    sink = FakeSink(hold=True)
    session.attach(sink, paused=False)
    session.emit("stream", delta("a"), request_id="r")
    sink.send_text(encode({"type": "pong"}))
    assert session.emit("stream", delta("b"), request_id="r") == 2
    assert [f.get("payload", {}).get("delta") for f in sink.frames()] == ["a", None, "b"]


def test_attach_closes_previous_sink_with_taken_over() -> None:
    session = make_session()
    old, new = FakeSink(), FakeSink()
    session.attach(old, paused=False)
    session.attach(new, paused=True)
    assert old.closed == [(CLOSE_TAKEN_OVER, old.closed[0][1])]
    assert new.closed == []
    assert session.sink is new
    session.attach(new, paused=False)  # re-attaching the same sink closes nothing
    assert new.closed == []


def test_detach_of_stale_sink_does_not_detach_newer_one() -> None:
    session = make_session()
    old, new = FakeSink(), FakeSink()
    session.attach(old, paused=False)
    session.attach(new, paused=False)
    session.detach(old)  # the old connection's late on_close
    assert session.sink is new
    assert session.detached_at is None
    session.emit("event", {})
    assert len(new.sent) == 1 and old.sent == []
    session.detach(new)
    assert session.sink is None
    assert session.detached_at is not None


def test_slow_reader_is_detached_and_closed_frames_stay_for_replay() -> None:
    session = make_session()
    slow = FakeSink(capacity=2)
    session.attach(slow, paused=False)
    for n in range(1, 6):
        session.emit("event", {"n": n})
    assert slow.closed == [(CLOSE_SLOW_READER, slow.closed[0][1])]
    assert session.sink is None
    assert len(slow.sent) == 2
    assert session.last_seq == 5
    fresh = FakeSink()
    session.attach(fresh, paused=True)
    assert session.replay(2) == (3, False)
    assert [f["payload"]["n"] for f in fresh.frames()] == [3, 4, 5]


def test_slow_reader_during_replay_stops_replay() -> None:
    session = make_session()
    for _ in range(5):
        session.emit("event", {})
    slow = FakeSink(capacity=2)
    session.attach(slow, paused=True)
    count, _gap = session.replay(0)
    assert count == 3  # two accepted, the third refused, then the loop stops
    assert len(slow.sent) == 2
    assert slow.closed and slow.closed[0][0] == CLOSE_SLOW_READER
    assert session.sink is None


# ------------------------------------------------------------------------------------------
# SessionManager


def test_open_new_then_resume_same_user() -> None:
    manager = SessionManager()
    session, resumed = manager.open("alice", None)
    assert resumed is False
    again, resumed = manager.open("alice", session.id)
    assert again is session and resumed is True


def test_open_with_another_users_session_id_gives_a_new_session() -> None:
    manager = SessionManager()
    alice, _ = manager.open("alice", None)
    alice.emit("event", {"secret": "alice's"})
    bob, resumed = manager.open("bob", alice.id)
    assert resumed is False
    assert bob is not alice and bob.id != alice.id
    assert bob.user == "bob" and bob.last_seq == 0
    # alice's session is untouched
    assert manager.open("alice", alice.id) == (alice, True)


def test_open_with_made_up_id_gives_a_new_session() -> None:
    manager = SessionManager()
    session, resumed = manager.open("alice", "made-up-id")
    assert resumed is False and session.id != "made-up-id"
    assert manager.stats() == {"sessions": 1, "connections": 0}


def test_session_ids_are_unguessable_and_distinct() -> None:
    manager = SessionManager(max_sessions_per_user=100)
    ids = {manager.open("alice", None)[0].id for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) >= 16 for i in ids)


def test_max_sessions_per_user_evicts_oldest_detached_first() -> None:
    manager = SessionManager(max_sessions_per_user=3)
    a, _ = manager.open("alice", None)
    b, _ = manager.open("alice", None)
    c, _ = manager.open("alice", None)
    sinks = {s.id: FakeSink() for s in (a, b, c)}
    for s in (a, b, c):
        s.attach(sinks[s.id], paused=False)
    other, _ = manager.open("bob", None)
    # b detached first, then c; a stays attached
    b.detach(sinks[b.id])
    c.detach(sinks[c.id])
    d, resumed = manager.open("alice", None)
    assert resumed is False
    assert manager.stats()["sessions"] == 4  # three of alice's, one of bob's
    # b (detached longest ago) went; c (detached later), a (attached) and d stay
    for survivor in (a, c, d):
        assert manager.open("alice", survivor.id) == (survivor, True)
    assert manager.open("bob", other.id) == (other, True)
    assert manager.open("alice", b.id)[1] is False
    assert sinks[a.id].closed == []


def test_eviction_closes_attached_victim_when_all_are_attached() -> None:
    manager = SessionManager(max_sessions_per_user=2)
    a, _ = manager.open("alice", None)
    b, _ = manager.open("alice", None)
    sa, sb = FakeSink(), FakeSink()
    a.attach(sa, paused=False)
    b.attach(sb, paused=False)
    manager.open("alice", None)
    assert sa.closed and sa.closed[0][0] == CLOSE_SESSION_EXPIRED
    assert sb.closed == []
    assert manager.stats()["sessions"] == 2


def test_eviction_bound_holds_per_user() -> None:
    manager = SessionManager(max_sessions_per_user=4)
    for _ in range(20):
        manager.open("alice", None)
        manager.open("bob", None)
    assert manager.stats()["sessions"] == 8


def test_expire_uses_injected_clock() -> None:
    """Sessions detached longer than the TTL (by the manager's clock) are dropped."""
    clock = FakeClock(0.0)
    manager = SessionManager(ttl_s=300.0, clock=clock)
    idle, _ = manager.open("alice", None)
    live, _ = manager.open("alice", None)
    s_idle, s_live = FakeSink(), FakeSink()
    idle.attach(s_idle, paused=False)
    live.attach(s_live, paused=False)
    idle.detach(s_idle)
    clock.now = 299.0
    assert manager.expire() == 0
    clock.now = 301.0
    assert manager.expire() == 1
    assert manager.open("alice", idle.id)[1] is False
    assert manager.open("alice", live.id) == (live, True)


def test_expire_keeps_recently_detached_sessions() -> None:
    manager = SessionManager(ttl_s=300.0)
    session, _ = manager.open("alice", None)
    sink = FakeSink()
    session.attach(sink, paused=False)
    session.detach(sink)
    assert manager.expire() == 0
    assert manager.open("alice", session.id) == (session, True)


@pytest.mark.asyncio
async def test_drop_and_close_all_cancel_tasks_and_close_with_4010() -> None:
    manager = SessionManager()
    session, _ = manager.open("alice", None)
    sink = FakeSink()
    session.attach(sink, paused=False)
    never = asyncio.Event()
    task: asyncio.Task[None] = asyncio.ensure_future(never.wait())  # type: ignore[arg-type]
    session.tasks.add(task)
    other, _ = manager.open("bob", None)
    manager.close_all()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert sink.closed == [(CLOSE_SESSION_EXPIRED, sink.closed[0][1])]
    assert session.sink is None
    assert manager.stats() == {"sessions": 0, "connections": 0}
    assert manager.open("bob", other.id)[1] is False


# ------------------------------------------------------------------------------------------
# RequestRegistry


def test_registry_rejects_duplicates() -> None:
    registry = RequestRegistry()
    registry.register("echo", echo_kind, resource="cloudide:session")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("echo", echo_kind, resource="cloudide:agent")
    kind = registry.get("echo")
    assert kind is not None and kind.resource == "cloudide:session"


@pytest.mark.parametrize("resource", ["session", "jupyter:cloudide", "", "kernels"])
def test_registry_rejects_non_cloudide_resources(resource: str) -> None:
    registry = RequestRegistry()
    with pytest.raises(ValueError, match="cloudide:"):
        registry.register("echo", echo_kind, resource=resource)
    assert registry.get("echo") is None


def test_registry_rejects_unknown_schema_at_registration() -> None:
    registry = RequestRegistry()
    with pytest.raises((KeyError, ValueError)):
        registry.register("echo", echo_kind, resource="cloudide:session",
                          schema="NoSuchSchema")
    assert registry.get("echo") is None
    registry.register("resume", echo_kind, resource="cloudide:session", schema="WsResume")
    assert [k.kind for k in registry] == ["resume"]


# ------------------------------------------------------------------------------------------
# Channel dispatch


@pytest.mark.asyncio
async def test_request_round_trip_and_ping() -> None:
    channel, session, sink, calls = make_channel()
    channel.handle_text(request("r1", {"kind": "echo", "value": 42}))
    channel.handle_text(json.dumps({"type": "ping", "id": 9}))
    await settle(session)
    frames = sink.frames()
    assert {"type": "pong", "id": 9} in frames
    response = next(f for f in frames if f["type"] == "response")
    assert response == {"type": "response", "seq": 1, "id": "r1",
                        "payload": {"echo": 42, "user": "alice"}}
    assert calls == [("echo", "ok")]


@pytest.mark.asyncio
async def test_ping_without_id_and_pong_is_not_numbered() -> None:
    channel, session, sink, _ = make_channel()
    channel.handle_text('{"type":"ping"}')
    assert sink.frames() == [{"type": "pong"}]
    assert session.last_seq == 0


@pytest.mark.asyncio
async def test_kind_returning_none_answers_empty_payload() -> None:
    registry = RequestRegistry()

    async def nothing(ctx: RequestContext, payload: JsonDict) -> None:
        ctx.event({"progress": 1})
        ctx.stream({"delta": "x"})

    registry.register("nothing", nothing, resource="cloudide:session")
    channel, session, sink, _ = make_channel(registry=registry)
    channel.handle_text(request(3, {"kind": "nothing"}))
    await settle(session)
    assert sink.frames() == [
        {"type": "event", "seq": 1, "id": 3, "payload": {"progress": 1}},
        {"type": "stream", "seq": 2, "id": 3, "payload": {"delta": "x"}},
        {"type": "response", "seq": 3, "id": 3, "payload": {}},
    ]


@pytest.mark.asyncio
async def test_unknown_kind_is_400_naming_kind() -> None:
    channel, session, sink, calls = make_channel()
    channel.handle_text(request(1, {"kind": "no.such"}))
    await settle(session)
    (frame,) = sink.frames()
    assert frame["id"] == 1 and "payload" not in frame
    assert frame["error"]["status"] == 400
    assert frame["error"]["code"] == "invalid_input"
    assert frame["error"]["field"] == "kind"
    assert "no.such" in frame["error"]["message"]
    assert calls == [("no.such", "invalid_input")]


@pytest.mark.asyncio
async def test_authorize_false_is_403_and_handler_not_run() -> None:
    ran: list[str] = []
    registry = RequestRegistry()

    async def kind(ctx: RequestContext, payload: JsonDict) -> JsonDict:
        ran.append("yes")
        return {}

    registry.register("agent.do", kind, resource="cloudide:agent", action="write")
    seen: list[tuple[str, str]] = []

    async def deny(resource: str, action: str) -> bool:
        seen.append((resource, action))
        return False

    channel, session, sink, _ = make_channel(authorize=deny, registry=registry)
    channel.handle_text(request("x", {"kind": "agent.do"}))
    await settle(session)
    (frame,) = sink.frames()
    assert frame["error"]["status"] == 403
    assert frame["error"]["code"] == "forbidden"
    assert seen == [("cloudide:agent", "write")]
    assert ran == []


@pytest.mark.asyncio
async def test_plain_exception_is_500_without_details() -> None:
    registry = RequestRegistry()

    async def broken(ctx: RequestContext, payload: JsonDict) -> JsonDict:
        raise RuntimeError("secret-detail /home/alice/.ssh/id_rsa")

    registry.register("broken", broken, resource="cloudide:session")
    channel, session, sink, calls = make_channel(registry=registry)
    channel.handle_text(request(1, {"kind": "broken"}))
    await settle(session)
    (text,) = sink.sent
    frame = json.loads(text)
    assert frame["error"] == {"status": 500, "code": "internal_error",
                              "message": "internal error"}
    for leak in ("secret-detail", "Traceback", "RuntimeError", "id_rsa"):
        assert leak not in text
    assert calls == [("broken", "internal_error")]
    # the channel keeps working
    channel.handle_text('{"type":"ping","id":2}')
    assert sink.frames()[-1] == {"type": "pong", "id": 2}


@pytest.mark.asyncio
async def test_cloudide_error_from_kind_maps_to_its_status_and_field() -> None:
    registry = RequestRegistry()

    async def picky(ctx: RequestContext, payload: JsonDict) -> JsonDict:
        raise InvalidInputError("text: too long", field="text")

    registry.register("picky", picky, resource="cloudide:session")
    channel, session, sink, _ = make_channel(registry=registry)
    channel.handle_text(request(1, {"kind": "picky"}))
    await settle(session)
    assert sink.frames()[0]["error"] == {"status": 400, "code": "invalid_input",
                                         "message": "text: too long", "field": "text"}


@pytest.mark.asyncio
async def test_rate_limited_is_429_with_retry_after() -> None:
    registry = RequestRegistry()
    registry.register("search", echo_kind, resource="cloudide:search", rate_class="search")
    limiter = FakeLimiter(FakeDecision(allowed=False, retry_after_s=3))
    channel, session, sink, calls = make_channel(limiter=limiter, registry=registry)
    channel.handle_text(request(1, {"kind": "search"}))
    await settle(session)
    (frame,) = sink.frames()
    assert frame["error"]["status"] == 429
    assert frame["error"]["code"] == "rate_limited"
    assert frame["error"]["retry_after_s"] == 3
    assert limiter.calls == [("alice", "search", 0)]
    assert calls == [("search", "rate_limited")]


@pytest.mark.asyncio
async def test_rate_limit_allowed_runs_and_kinds_without_class_are_not_charged() -> None:
    registry = RequestRegistry()
    registry.register("search", echo_kind, resource="cloudide:search", rate_class="search")
    registry.register("echo", echo_kind, resource="cloudide:session")
    limiter = FakeLimiter(FakeDecision(allowed=True))
    channel, session, sink, _ = make_channel(limiter=limiter, registry=registry)
    channel.handle_text(request(1, {"kind": "search", "value": 1}))
    channel.handle_text(request(2, {"kind": "echo", "value": 2}))
    await settle(session)
    assert sorted(f["payload"]["echo"] for f in sink.frames()) == [1, 2]
    assert limiter.calls == [("alice", "search", 0)]


@pytest.mark.asyncio
async def test_schema_failure_is_400_with_field() -> None:
    registry = RequestRegistry()
    registry.register("resume", echo_kind, resource="cloudide:session", schema="WsResume")
    channel, session, sink, _ = make_channel(registry=registry)
    channel.handle_text(request(1, {"kind": "resume", "last_seq": -1}))
    channel.handle_text(request(2, {"kind": "resume", "last_seq": 0, "extra": True}))
    channel.handle_text(request(3, {"kind": "resume"}))
    await settle(session)
    errors = {f["id"]: f["error"] for f in sink.frames()}
    assert errors[1]["status"] == 400 and errors[1]["field"] == "last_seq"
    assert errors[2]["status"] == 400 and errors[2]["field"] == "extra"
    assert errors[3]["status"] == 400 and errors[3]["field"] == "last_seq"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("text", "field", "echo_id"),
    [
        ("not json", "frame", None),
        ("[1, 2]", "frame", None),
        ('"string"', "frame", None),
        ("[" * 100_000, "frame", None),
        ('{"type":"request","payload":{"kind":"echo"}}', "id", None),
        ('{"type":"request","id":4}', "payload", 4),
        ('{"type":"bogus","id":5}', "type", 5),
        ('{"id":6}', "type", 6),
        ('{"type":"request","id":true,"payload":{"kind":"echo"}}', "id", None),
        ('{"type":"request","id":"' + "x" * 65 + '","payload":{"kind":"echo"}}', "id", None),
        ('{"type":"request","id":7,"payload":{}}', "payload.kind", 7),
        ('{"type":"request","id":8,"payload":[]}', "payload", 8),
    ],
    ids=["not-json", "array", "string", "deep-nesting", "no-id", "no-payload", "bad-type",
         "no-type", "bool-id", "long-id", "no-kind", "payload-array"],
)
async def test_malformed_frames_get_error_and_channel_stays_usable(
    text: str, field: str, echo_id: Any
) -> None:
    channel, session, sink, _ = make_channel()
    channel.handle_text(text)
    await settle(session)
    (frame,) = sink.frames()
    assert frame["type"] == "response"
    assert frame["error"]["status"] == 400
    assert frame["error"]["field"] == field
    assert frame.get("id") == echo_id
    channel.handle_text('{"type":"ping","id":"after"}')
    assert sink.frames()[-1] == {"type": "pong", "id": "after"}


@pytest.mark.asyncio
async def test_integer_too_long_for_python_is_an_error_frame_not_an_exception() -> None:
    """json.loads raises a plain ValueError (not JSONDecodeError) for ints > 4300 digits."""
    channel, session, sink, _ = make_channel()
    channel.handle_text('{"type":"request","id":' + "1" * 5000 + ',"payload":{"kind":"echo"}}')
    await settle(session)
    (frame,) = sink.frames()
    assert frame["error"]["status"] == 400
    assert frame["error"]["field"] == "frame"


@pytest.mark.asyncio
async def test_inflight_limit_rejects_with_429_until_a_request_finishes() -> None:
    gate = asyncio.Event()
    registry = RequestRegistry()

    async def blocking(ctx: RequestContext, payload: JsonDict) -> JsonDict:
        await gate.wait()
        return {"done": True}

    registry.register("block", blocking, resource="cloudide:session")
    registry.register("echo", echo_kind, resource="cloudide:session")
    channel, session, sink, _ = make_channel(max_inflight=2, registry=registry)
    channel.handle_text(request("a", {"kind": "block"}))
    channel.handle_text(request("b", {"kind": "block"}))
    channel.handle_text(request("c", {"kind": "echo", "value": 1}))
    await asyncio.sleep(0)
    (rejected,) = sink.frames()
    assert rejected["id"] == "c"
    assert rejected["error"]["status"] == 429
    assert rejected["error"]["retry_after_s"] > 0
    assert len(session.tasks) == 2
    gate.set()
    await settle(session)
    channel.handle_text(request("d", {"kind": "echo", "value": 2}))
    await settle(session)
    by_id = {f["id"]: f for f in sink.frames()}
    assert by_id["a"]["payload"] == {"done": True}
    assert by_id["b"]["payload"] == {"done": True}
    assert by_id["d"]["payload"]["echo"] == 2


@pytest.mark.asyncio
async def test_responses_have_strictly_increasing_seq() -> None:
    channel, session, sink, _ = make_channel()
    for i in range(10):
        channel.handle_text(request(i, {"kind": "echo", "value": i}))
    channel.handle_text("garbage")
    await settle(session)
    seqs = [f["seq"] for f in sink.frames()]
    assert seqs == list(range(1, 12))
