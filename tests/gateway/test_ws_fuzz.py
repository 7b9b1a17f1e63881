"""Hypothesis against the session channel's request kinds, on a real server.

The server is real (pytest-jupyter), its only model provider is the fake upstream (so
``chat.send`` runs the whole agent loop over real sockets and the real ``openai`` SDK), and the
semantic index embeds through the same fake's ``/v1/embeddings`` (so ``search`` queries a real
LanceDB index). Execute runs with no kernelspec allowed: random code never starts a process.

Two users: ``bob`` is the fuzzer, ``alice`` the bystander. Alice has a conversation, a
finished turn and a turn waiting for her approval; bob's generated payloads use her ids as
well as his own and made-up ones. What bob sends:

* payloads valid per each kind's schema in api.yaml (strategies derived from the schema
  itself, see :func:`from_schema`), one at a time, each kind with a known set of acceptable
  answers, then several at once in flight, then cancels of his own turns at random moments;
* hostile payloads, every mutation for every kind: wrong types, huge strings, deep nesting,
  unknown and missing fields, other users' ids, extreme numbers, odd kinds, malformed
  envelopes; then every odd string (NUL, unpaired surrogates, bidi controls, traversal, SQL,
  markup) in every free-text field, and context items naming paths outside the root,
  through symlinks and to hidden files.

For every frame: it is strict JSON, live frames are numbered without gaps, a replayed frame is
byte-identical to the one first sent, every request gets exactly one ``response`` with either
a payload or our error shape (``status``, ``code``, ``message``), never a 5xx or an internal
error, within a bounded time, and no frame of a request follows its response. After every case
the connection still answers a ping (and, every few cases, a ``health`` request). At the end
alice received nothing of bob's, her approval is still hers to give, her turn completes, her
conversations are hers, no file outside the root or hidden reached the model or bob, no kernel
was started and nothing was logged at ERROR.

Hypothesis runs in a worker thread with a synchronous WebSocket client while the server runs
on pytest-jupyter's loop (as test_fuzz.py does with schemathesis). Examples are not shrunk:
the server keeps state between them, so the first failing example is reported as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from cloudide_testing import MultiUserIdentity, auth
from fake_upstream import FakeUpstream, ToolCall, Turn, agent_config
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from jupyter_cloudide.gateway import spec

pytestmark = [
    pytest.mark.timeout(180),
    # a failing example with a 200,000-character string: report it, not this warning
    pytest.mark.filterwarnings(
        "ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning"),
]

JsonDict = dict[str, Any]
Strategy = st.SearchStrategy[Any]

#: examples per kind of valid payloads, of hostile ones per kind and mutation, of batches and
#: of cancel races (the module takes ~25 s on 2 cores)
VALID_EXAMPLES = {"chat.send": 60, "chat.cancel": 20, "approval.respond": 30, "chat.undo": 20,
                  "execute": 30, "search": 40, "resume": 15, "health": 3}
HOSTILE_EXAMPLES = 10
BATCH_EXAMPLES = 40
RACE_EXAMPLES = 40
#: the server keeps state between examples, so a shrunk example would not replay the failure
#: (and each failing try may wait ANSWER_TIMEOUT): report the first failing example as it is
NO_SHRINK = (Phase.explicit, Phase.generate)
#: seconds a request may take before the test calls it a hang
ANSWER_TIMEOUT = 15.0
#: the kinds under test, with the schema validating each one's payload
KINDS = {"chat.send": "WsChatSend", "chat.cancel": "WsChatCancel",
         "approval.respond": "WsApprovalRespond", "chat.undo": "WsChatUndo",
         "execute": "WsExecute", "search": "WsSearch", "resume": "WsResume",
         "health": "WsHealth"}
#: error statuses a schema-valid payload of each kind may get (anything else is a finding)
VALID_ERRORS = {
    "chat.send": {404},  # a model or conversation id that is not (the caller's)
    "chat.cancel": {404},  # no running turn of the caller with that id
    "approval.respond": {403, 404, 409},  # someone else's / unknown / already decided
    "chat.undo": {404, 409},  # not the caller's turn / nothing to undo / undone already
    "execute": {400, 403, 404},  # two targets / kernelspec not allowed / no such kernel
    "search": set(),
    "resume": set(),
    "health": set(),
}
#: what a hostile payload may get, on top of the kind's own
HOSTILE_ERRORS = {400, 403, 404, 409}
#: kinds acting on conversations, turns and approvals: never on another user's
AGENT_KINDS = {"chat.send", "chat.cancel", "approval.respond", "chat.undo"}
FRAME_LIMIT = 1024 * 1024  # ws_max_frame_bytes (default)

#: strings that have broken servers before: traversal, NUL, odd unicode, markup, SQL
NASTY = [
    "../../../../etc/passwd", "/etc/passwd", "~/.bashrc", "a/../../x", "..", ".",
    "C:\\Windows\\system32\\config", "\\\\server\\share\\x", "%2e%2e%2f%2e%2e%2fetc",
    ".ssh/id_rsa", ".jupyter/jupyter_server_config.json", "x\x00y", "\x00", "nul\x00.py",
    "<img src=x onerror=alert(1)>", "<script>alert(1)</script>", "javascript:alert(1)",
    "x' OR '1'='1", "'; DROP TABLE conversations; --", "\\", "\"", "{}", "[", "**", "*",
    "[a-", "?*[!]", "**/../**", "\u202eevil\u202c", "\ufeffbom", "e\u0301", "\U0001f600" * 3,
    "\u0000\u0001\u001f\u007f", "\r\n\t", " ", "\u2028\u2029", "ǅ", "ß" * 10, "\uffff",
    "\ud800", "\udfff", "a\udc00b", "\ud83d", "${HOME}", "$(id)", "`id`", "%s%n", "\\u0000",
]
#: values of every JSON type, for wrong-type mutations
WEIRD: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**63, 2**64 + 1, -(2**63) - 1, 10**100, -(10**100),
    0.5, -0.0, 1e308, -1e308, 5e-324, math.nan, math.inf, -math.inf, "", "0", "-1", "1e999",
    [], [None], [[]], {}, {"kind": "health"}, {"$ref": "#"}, {"__proto__": {"x": 1}},
]


# ------------------------------------------------------------------------------------------
# server configuration


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def server_config() -> dict[str, Any]:
    return {"identity_provider_class": MultiUserIdentity}


@pytest.fixture
def cloudide_config(upstream: FakeUpstream) -> dict[str, Any]:
    return agent_config(
        upstream,
        # random code must not start kernels: every execute is refused before any process
        allowed_kernelspecs=[],
        # the fuzzer sends far more than 30 chats a minute; the limiter still runs
        rate_limits={"chat": {"requests_per_minute": 100_000},
                     "execute": {"requests_per_minute": 100_000},
                     "search": {"requests_per_minute": 100_000}},
        # a real index, embedded by the fake upstream (no model to load)
        index_enabled=True, index_embedder="openai",
        index_embedding_base_url=upstream.openai_base_url,
        index_embedding_api_key=upstream.api_key, index_embedding_model="fake-embedding",
        index_scan_interval=0.0,
    )


# ------------------------------------------------------------------------------------------
# strategies from api.yaml


def schema_of(kind: str) -> JsonDict:
    """The kind's payload schema from api.yaml, with local $refs inlined."""
    return dict(spec._inline({"$ref": "#" + spec.schema_pointer(KINDS[kind])}, ()))


_HANDLED = {"description", "type", "const", "enum", "pattern", "minLength", "maxLength",
            "minimum", "maximum", "exclusiveMinimum", "items", "maxItems", "properties",
            "required", "additionalProperties"}


def _fits(value: str, low: int, high: int | None) -> bool:
    return low <= len(value) and (high is None or len(value) <= high)


def _valid_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: not valid in a valid payload
        return False
    return True


def from_schema(schema: Mapping[str, Any], extra: Mapping[str, Strategy] | None = None,
                name: str = "") -> Strategy:
    """Values valid against ``schema`` (the subset of JSON Schema api.yaml's WS kinds use).

    ``extra`` adds values for named properties (known ids), drawn as often as the rest.
    A keyword this does not understand fails loudly, so the schema cannot outgrow it.
    """
    extra = extra or {}
    unknown = set(schema) - _HANDLED
    if unknown:
        raise NotImplementedError(f"{name}: schema keywords {sorted(unknown)}")
    base = _base_strategy(schema, extra, name)
    if name in extra:
        return st.one_of(base, extra[name])
    return base


def _base_strategy(schema: Mapping[str, Any], extra: Mapping[str, Strategy],
                   name: str) -> Strategy:
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of(*(_base_strategy({**schema, "type": t}, extra, name) for t in kind))
    if kind == "string":
        return _strings(schema)
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum"), max_value=schema.get("maximum"))
    if kind == "number":
        low = schema.get("exclusiveMinimum", schema.get("minimum"))
        return st.floats(min_value=low, max_value=schema.get("maximum"), allow_nan=False,
                         allow_infinity=False, exclude_min="exclusiveMinimum" in schema)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        items = from_schema(schema["items"], extra, f"{name}[]")
        return st.lists(items, max_size=min(int(schema.get("maxItems", 3)), 3))
    if kind == "object" or "properties" in schema:
        if schema.get("additionalProperties", True) is not False:
            raise NotImplementedError(f"{name}: open objects")
        properties = {key: from_schema(sub, extra, key)
                      for key, sub in schema.get("properties", {}).items()}
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: v for k, v in properties.items() if k in required},
            optional={k: v for k, v in properties.items() if k not in required})
    raise NotImplementedError(f"{name}: type {kind!r}")


def _strings(schema: Mapping[str, Any]) -> Strategy:
    low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
    if "pattern" in schema:
        pattern = str(schema["pattern"])
        return st.from_regex(pattern, fullmatch=True).filter(
            lambda s: _fits(s, low, high) and _valid_text(s))
    short = st.text(min_size=low, max_size=min(high or 40, 40))
    odd = st.sampled_from([s for s in NASTY if _fits(s, low, high) and _valid_text(s)])
    options = [short, odd]
    if high is not None and high >= 1000:
        # at the limit (kept well under the frame limit: 200,000 ASCII characters at most)
        options.append(st.just("λ" * min(high, 1000)))
        options.append(st.just("a" * min(high, 200_000)))
    return st.one_of(*options)


# ------------------------------------------------------------------------------------------
# the client side


class Rejected(Exception):
    """The server broke the channel's contract (an assertion with the frame attached)."""


def _no_constants(value: str) -> Any:
    raise Rejected(f"server sent the non-JSON constant {value}")


@dataclass
class Client:
    """One synchronous connection, checking every frame the server sends on it."""

    url: str
    user: str
    conn: ClientConnection = field(init=False)
    _stack: contextlib.ExitStack = field(init=False, default_factory=contextlib.ExitStack)
    #: seq → text of every numbered frame received (replays must repeat them exactly)
    seen: dict[int, str] = field(default_factory=dict)
    last_seq: int = 0
    next_id: int = 0
    #: conversation and turn ids this user's frames mention
    conversations: set[str] = field(default_factory=set)
    turns: set[str] = field(default_factory=set)
    #: seconds a request may take before it counts as a hang
    timeout: float = ANSWER_TIMEOUT

    def __post_init__(self) -> None:
        self.conn = self._stack.enter_context(connect(
            self.url, additional_headers=auth(self.user), compression=None, proxy=None,
            ping_interval=None, max_size=None, max_queue=None, open_timeout=10))
        welcome = self.read(10.0)
        assert welcome["type"] == "welcome", welcome

    def close(self) -> None:
        self._stack.close()

    def new_id(self) -> str:
        self.next_id += 1
        return f"{self.user}-{self.next_id}"

    def send_text(self, text: str) -> None:
        assert len(text.encode("utf-8", "surrogatepass")) < FRAME_LIMIT
        self.conn.send(text)

    def send(self, frame: JsonDict) -> None:
        self.send_text(dump(frame))

    def read(self, timeout: float) -> JsonDict:
        """The next frame, checked: strict JSON, a known type, seqs without gaps."""
        try:
            text = self.conn.recv(timeout=timeout)
        except TimeoutError:
            raise Rejected(f"no frame within {timeout} s (a hang)") from None
        except ConnectionClosed as exc:
            raise Rejected(f"the server closed the connection: {exc}") from None
        assert isinstance(text, str), "the server sent a binary frame"
        frame: JsonDict = json.loads(text, parse_constant=_no_constants)
        kind = frame.get("type")
        if kind not in ("welcome", "pong", "response", "event", "stream"):
            raise Rejected(f"unknown frame type: {text[:300]}")
        if kind in ("welcome", "pong"):
            assert "seq" not in frame, frame
            return frame
        seq = frame.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise Rejected(f"frame without a valid seq: {text[:300]}")
        if seq > self.last_seq:
            if seq != self.last_seq + 1:
                raise Rejected(f"seq gap: {self.last_seq} then {seq}")
            self.last_seq = seq
            self.seen[seq] = text
            frame["_replayed"] = False
        else:  # a replay (resume): must be the very frame sent before
            if self.seen.get(seq) != text:
                raise Rejected(f"replayed frame {seq} differs: {text[:300]}")
            frame["_replayed"] = True
        payload = frame.get("payload")
        if isinstance(payload, dict):
            for key, ids in (("conversation_id", self.conversations), ("turn_id", self.turns)):
                if isinstance(payload.get(key), str):
                    ids.add(payload[key])
        return frame

    def request(self, payload: Any, *, raw: str | None = None) -> JsonDict:
        """Send one request (or a raw frame) and return its response, checking what comes
        before it; ``frame["_events"]`` holds the request's events and stream frames."""
        request_id = self.new_id()
        self.send_text(raw if raw is not None else
                       dump({"type": "request", "id": request_id, "payload": payload}))
        events: list[JsonDict] = []
        replayed = 0
        # a raw frame's id is whatever the server made of it: the first frame tells
        expected: Any = request_id if raw is None else ...
        while True:
            frame = self.read(self.timeout)
            if frame.get("_replayed"):
                replayed += 1
                continue
            if frame["type"] == "pong":
                frame["_events"] = events
                return frame  # a raw frame that was a valid ping
            if frame["type"] == "event" and "id" not in frame \
                    and frame["payload"].get("kind") == "index.progress":
                continue  # broadcast to every session of the user
            if expected is ...:
                expected = frame.get("id")
            if frame.get("id") != expected:
                raise Rejected(f"frame of another request: {json.dumps(frame)[:300]}")
            if frame["type"] in ("event", "stream"):
                events.append(frame)
                continue
            check_response(frame)
            frame["_events"] = events
            frame["_replayed_count"] = replayed
            return frame

    def request_many(self, payloads: list[JsonDict]) -> list[JsonDict]:
        """Send requests back to back, then collect every response, in whatever order they
        come; no frame of a request may follow its response."""
        ids = [self.new_id() for _ in payloads]
        for request_id, payload in zip(ids, payloads, strict=True):
            self.send({"type": "request", "id": request_id, "payload": payload})
        try:
            return self.collect(ids)
        except Rejected as exc:
            sent = [f"{i}: {dump(p)[:200]}" for i, p in zip(ids, payloads, strict=True)]
            raise Rejected(f"{exc}; the batch: {sent}") from None

    def collect(self, ids: list[str]) -> list[JsonDict]:
        responses: dict[str, JsonDict] = {}
        while len(responses) < len(ids):
            try:
                frame = self.read(self.timeout)
            except Rejected as exc:
                pending = [i for i in ids if i not in responses]
                raise Rejected(f"{exc}; no response to {pending}") from None
            if frame.get("_replayed") or (frame["type"] == "event" and "id" not in frame):
                continue
            if frame.get("id") not in ids or frame["id"] in responses:
                raise Rejected(f"frame of no pending request: {json.dumps(frame)[:300]}")
            if frame["type"] == "response":
                check_response(frame)
                responses[frame["id"]] = frame
        return [responses[i] for i in ids]

    def ping(self) -> None:
        """The connection still works: a ping is answered next (no stray frames before)."""
        ping_id = self.new_id()
        self.send({"type": "ping", "id": ping_id})
        while True:
            frame = self.read(self.timeout)
            if frame["type"] == "event" and "id" not in frame:
                continue  # index.progress broadcasts
            if frame != {"type": "pong", "id": ping_id}:
                raise Rejected(f"expected the pong, got {json.dumps(frame)[:300]}")
            return

    def health(self) -> None:
        frame = self.request({"kind": "health"})
        assert "error" not in frame, frame
        assert frame["payload"]["status"] in ("ok", "starting", "degraded"), frame


def dump(value: Any) -> str:
    """JSON as a client would send it: UTF-8 when possible, \\u escapes for lone surrogates
    (which UTF-8 cannot carry); NaN and Infinity as Python writes them (not JSON, on purpose)."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=True)
    return text


def check_response(frame: JsonDict) -> None:
    """Exactly one of payload and error; errors in our shape, never a server error."""
    if ("payload" in frame) == ("error" in frame):
        raise Rejected(f"response needs exactly one of payload/error: {frame}")
    if "payload" in frame:
        if not isinstance(frame["payload"], dict):
            raise Rejected(f"response payload is not an object: {frame}")
        return
    error = frame["error"]
    if not (isinstance(error, dict) and isinstance(error.get("status"), int)
            and isinstance(error.get("message"), str) and isinstance(error.get("code"), str)):
        raise Rejected(f"error not in our shape: {frame}")
    if error["status"] >= 500 or error["code"] == "internal_error":
        raise Rejected(f"server error: {frame}")
    if len(error["message"]) > 2000:
        raise Rejected(f"error message echoes the input: {len(error['message'])} chars")


def status_of(frame: JsonDict) -> int:
    return int(frame["error"]["status"]) if "error" in frame else 200


# ------------------------------------------------------------------------------------------
# the scenario: alice's state to protect, bob's own objects, then the fuzzing


@dataclass
class World:
    """Ids of both users' objects, and alice's connection with her turn waiting."""

    url: str
    http: str
    alice: Client
    bob: Client
    alice_conversation: str
    alice_turn: str  # finished
    alice_waiting_turn: str  # waiting for the approval below
    alice_waiting_request: str
    alice_approval: str
    alice_hash: str
    bob_conversation: str
    bob_turn: str  # wrote bob.txt (undoable once)
    bob_approval: str  # decided
    bob_hash: str
    models: list[str]
    upstream: FakeUpstream

    def alice_ids(self) -> set[str]:
        return {self.alice_conversation, self.alice_turn, self.alice_waiting_turn,
                self.alice_approval}

    def ids(self) -> dict[str, Strategy]:
        """Known ids by payload field: both users', plus made-up ones of the right shape."""
        made_up = st.uuids().map(str)
        return {
            "conversation_id": st.one_of(st.sampled_from(
                [self.alice_conversation, self.bob_conversation]), made_up),
            "turn_id": st.one_of(st.sampled_from(
                [self.alice_turn, self.alice_waiting_turn, self.bob_turn]),
                st.uuids().map(lambda u: u.hex)),
            "approval_id": st.one_of(st.sampled_from(
                [self.alice_approval, self.bob_approval]), made_up),
            "arguments_hash": st.sampled_from([self.alice_hash, self.bob_hash, "0" * 64]),
            "model": st.sampled_from(self.models),
            "kernel_id": made_up,
        }


def _turn(client: Client, text: str, approve: str | None = None,
          **payload: Any) -> tuple[JsonDict, list[JsonDict]]:
    """A chat turn of ``client`` to its end, answering approvals with ``approve``."""
    request_id = client.new_id()
    client.send({"type": "request", "id": request_id,
                 "payload": {"kind": "chat.send", "text": text, **payload}})
    events: list[JsonDict] = []
    while True:
        frame = client.read(ANSWER_TIMEOUT)
        if frame["type"] == "event" and frame.get("id") == request_id:
            events.append(frame["payload"])
            if frame["payload"].get("kind") == "approval.request" and approve:
                answer = client.request({
                    "kind": "approval.respond", "approval_id": frame["payload"]["approval_id"],
                    "decision": approve, "arguments_hash": frame["payload"]["arguments_hash"]})
                assert "error" not in answer, answer
        elif frame["type"] == "response" and frame.get("id") == request_id:
            assert "error" not in frame and frame["payload"]["status"] == "ok", frame
            return frame, events


def build_world(url: str, http: str, upstream: FakeUpstream) -> World:
    alice = Client(url, "alice")
    bob = Client(url, "bob")
    # alice: a finished turn, then a turn waiting for her approval of a write
    response, _ = _turn(alice, "hello")
    alice_conversation = response["payload"]["conversation_id"]
    alice_turn = response["payload"]["turn_id"]
    upstream.script(Turn(tool_calls=[ToolCall("write_file", {"path": "alice.txt",
                                                             "content": "alice's"})]))
    waiting_request = alice.new_id()
    alice.send({"type": "request", "id": waiting_request, "payload": {
        "kind": "chat.send", "text": "write alice.txt", "conversation_id": alice_conversation}})
    while True:
        frame = alice.read(ANSWER_TIMEOUT)
        if frame["type"] == "event" and frame["payload"].get("kind") == "approval.request":
            approval = frame["payload"]
            break
    assert upstream.pending() == 0
    # bob: a turn that wrote a file under his approval (undoable), the approval now decided
    upstream.script(Turn(tool_calls=[ToolCall("write_file", {"path": "bob.txt",
                                                             "content": "bob's"})]))
    response, events = _turn(bob, "write bob.txt", approve="allow")
    bob_request = next(e for e in events if e.get("kind") == "approval.request")
    assert upstream.pending() == 0
    models = json.loads(requests.get(f"{http}/cloudide/api/models", headers=auth("bob"),
                                     timeout=30).text)
    return World(
        url=url, http=http, alice=alice, bob=bob, alice_conversation=alice_conversation,
        alice_turn=alice_turn, alice_waiting_turn=approval["turn_id"],
        alice_waiting_request=waiting_request, alice_approval=approval["approval_id"],
        alice_hash=approval["arguments_hash"],
        bob_conversation=response["payload"]["conversation_id"],
        bob_turn=response["payload"]["turn_id"], bob_approval=bob_request["approval_id"],
        bob_hash=bob_request["arguments_hash"],
        models=[m["id"] for m in models["models"]] + ["no-such-model"],
        upstream=upstream,
    )


def check_alice_unaffected(world: World, root: Path) -> None:
    """Nothing of bob's reached alice; her approval and turn are still hers to finish."""
    alice, bob = world.alice, world.bob
    while True:  # her own index's progress is all she may have been sent meanwhile
        try:
            frame = alice.read(0.3)
        except Rejected:
            break
        assert "id" not in frame and frame["payload"].get("kind") == "index.progress", \
            f"alice received a frame during bob's fuzzing: {frame}"
    assert not (root / "alice.txt").exists(), "alice's write ran without her approval"
    alice.ping()
    answer = alice.request({"kind": "approval.respond", "approval_id": world.alice_approval,
                            "decision": "allow", "arguments_hash": world.alice_hash})
    assert "error" not in answer and answer["payload"]["status"] == "allowed", answer
    while True:
        frame = alice.read(ANSWER_TIMEOUT)
        if frame["type"] == "response" and frame.get("id") == world.alice_waiting_request:
            break
    assert "error" not in frame and frame["payload"]["status"] == "ok", frame
    assert (root / "alice.txt").read_text() == "alice's"
    # a new turn of hers still works, and her conversations are hers alone
    _turn(alice, "still there?", conversation_id=world.alice_conversation)

    def listed(user: str) -> set[str]:
        response = requests.get(f"{world.http}/cloudide/api/conversations",
                                headers=auth(user), timeout=30)
        assert response.status_code == 200, response.text
        return {c["id"] for c in response.json()["conversations"]}

    alice_has, bob_has = listed("alice"), listed("bob")
    assert world.alice_conversation in alice_has
    assert not alice_has & bob_has, "a conversation is listed for both users"
    assert world.alice_conversation not in bob.conversations, "bob saw alice's conversation"
    assert not {world.alice_turn, world.alice_waiting_turn} & bob.turns
    assert not bob.conversations & alice_has, "bob's frames named a conversation of alice's"
    bob.ping()


# ------------------------------------------------------------------------------------------
# hostile payloads

MUTATIONS = ("wrong_type", "nasty_string", "huge_string", "unknown_field", "drop_required",
             "other_users_ids", "extreme_number", "deep_nesting", "kind", "envelope")


def mutate(data: st.DataObject, world: World, kind: str, how: str,
           payload: JsonDict) -> Any:
    """One hostile change ``how`` of a valid payload: the payload, or a raw frame (str)."""
    schema = KINDS_SCHEMAS[kind]
    fields = [*schema.get("properties", {})]
    payload = dict(payload)
    if how == "wrong_type":
        payload[data.draw(st.sampled_from(fields))] = data.draw(st.sampled_from(WEIRD))
    elif how == "nasty_string":
        key = data.draw(st.sampled_from(fields))
        value = data.draw(st.sampled_from(NASTY))
        if key == "context":  # inside a context item, whose fields are all text
            payload[key] = [{"text": "x", data.draw(st.sampled_from(["kind", "title", "text"])):
                             value}]
        else:
            payload[key] = value
    elif how == "huge_string":
        size = data.draw(st.sampled_from([2001, 65_537, 200_001, 300_000]))
        char = data.draw(st.sampled_from(["a", "é", "\x00", "\U0001f600", "/..", "\ud800"]))
        unit = len(dump(char).encode("utf-8")) - 2  # as sent: "\u0000" is 6 bytes
        payload[data.draw(st.sampled_from(fields))] = char * min(size, 700_000 // unit)
    elif how == "unknown_field":
        key = data.draw(st.one_of(st.text(max_size=20), st.sampled_from(
            ["__proto__", "constructor", "user", "owner", "kind ", "KIND", "", "\ud800",
             "k" * 300_000, "../" * 1000])))
        assume(key not in payload)
        payload[key] = data.draw(st.sampled_from([*WEIRD, "x"]))
    elif how == "drop_required":
        required = [k for k in schema.get("required", ()) if k != "kind"]
        assume(required)
        del payload[data.draw(st.sampled_from(required))]
    elif how == "other_users_ids":
        theirs = {"conversation_id": [world.alice_conversation],
                  "turn_id": [world.alice_turn, world.alice_waiting_turn],
                  "approval_id": [world.alice_approval], "arguments_hash": [world.alice_hash]}
        for key, values in theirs.items():
            if key in fields:
                payload[key] = data.draw(st.sampled_from(values))
    elif how == "extreme_number":
        key = data.draw(st.sampled_from([*fields, "id"]))
        number: float = data.draw(st.sampled_from(
            [-1, 0, -(10**20), 10**20, 10**400, 2**63, 1e308, -1e-308, 1.5, math.nan,
             math.inf, -math.inf, -0.0]))
        if key == "id":
            return dump({"type": "request", "id": number, "payload": payload})
        payload[key] = number
    elif how == "deep_nesting":
        depth = data.draw(st.sampled_from([50, 500, 990, 3000, 100_000]))
        opener, closer = data.draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        key = data.draw(st.sampled_from([*fields, "zz_unknown"]))
        payload[key] = "__NESTED__"
        text = dump({"type": "request", "id": "deep", "payload": payload})
        return text.replace('"__NESTED__"', opener * depth + "1" + closer * depth)
    elif how == "kind":
        payload["kind"] = data.draw(st.one_of(
            st.sampled_from([*KINDS, "chat.send ", "CHAT.SEND", "chat", "chat.send\x00",
                             "\ud800", "x" * 64, "x" * 65, "", "__proto__", "resume."]),
            st.sampled_from(WEIRD)))
    elif how == "envelope":
        return data.draw(st.sampled_from(_envelopes(payload)))
    return payload


def _envelopes(payload: JsonDict) -> list[str]:
    body = dump(payload)
    return [
        "", " ", "null", "true", "1", '"request"', "[]", "{}", "not json", "{", "\ufeff{}",
        '{"type":"request","id":1,"payload":' + body + "} trailing",
        '{"type":"request","id":1,"id":"dup","payload":' + body + "}",
        '{"type":"request","id":true,"payload":' + body + "}",
        '{"type":"request","id":1.5,"payload":' + body + "}",
        '{"type":"request","id":null,"payload":' + body + "}",
        '{"type":"request","id":"","payload":' + body + "}",
        '{"type":"request","id":"' + "x" * 65 + '","payload":' + body + "}",
        '{"type":"request","id":"\\ud800","payload":' + body + "}",
        '{"type":"request","id":"\\u0000","payload":' + body + "}",
        '{"type":"request","id":[1],"payload":' + body + "}",
        '{"type":"request","id":' + "9" * 5000 + ',"payload":' + body + "}",
        '{"type":"request","id":NaN,"payload":' + body + "}",
        '{"type":"request","id":1,"payload":[' + body + "]}",
        '{"type":"request","id":1,"payload":"' + "x" * 100 + '"}',
        '{"type":"request","id":1}',
        '{"type":"response","id":1,"payload":' + body + "}",
        '{"type":"event","seq":1,"payload":' + body + "}",
        '{"type":"ping","id":{"a":1}}', '{"type":"ping","payload":5}', '{"type":"ping"}',
        '{"type":["request"],"id":1,"payload":' + body + "}",
        '{"TYPE":"request","id":1,"payload":' + body + "}",
    ]


KINDS_SCHEMAS = {kind: schema_of(kind) for kind in KINDS}


# ------------------------------------------------------------------------------------------
# logs: nothing at ERROR while fuzzing


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def error_log(jp_serverapp: Any) -> Iterator[list[logging.LogRecord]]:
    handler = _Errors()
    loggers = {logging.getLogger(name) for name in ("jupyter_cloudide", "asyncio", "tornado")}
    loggers.add(jp_serverapp.log)
    for logger in loggers:
        logger.addHandler(handler)
    yield handler.records
    for logger in loggers:
        logger.removeHandler(handler)


def _formatted(records: list[logging.LogRecord]) -> list[str]:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return [formatter.format(r)[:2000] for r in records]


# ------------------------------------------------------------------------------------------
# the tests


def _urls(port: int, base_url: str) -> tuple[str, str]:
    http = f"http://127.0.0.1:{port}{base_url.rstrip('/')}"
    return "ws" + http[4:] + "/cloudide/api/ws", http


def _fuzz_valid(world: World, root: Path) -> dict[str, dict[int, int]]:
    """Schema-valid payloads of every kind, one at a time and several in flight at once,
    and cancel races; returns status counts."""
    ids = world.ids()
    valid = {kind: from_schema(KINDS_SCHEMAS[kind], ids, kind) for kind in KINDS}
    counts = {kind: _fuzz_valid_kind(world, kind, valid[kind], examples)
              for kind, examples in VALID_EXAMPLES.items()}
    counts["(batches)"] = _fuzz_batches(world, valid)
    counts["(cancel races)"] = _fuzz_cancel_races(world, world.upstream, root)
    return counts


def _fuzz_batches(world: World, valid: Mapping[str, Strategy]) -> dict[int, int]:
    """Requests of any kinds sent back to back (in flight together), answered by id."""
    bob = world.bob
    seen: dict[int, int] = {}
    any_payload = st.sampled_from(sorted(valid)).flatmap(lambda kind: valid[kind])

    @settings(phases=NO_SHRINK, max_examples=BATCH_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(payloads=st.lists(any_payload, min_size=2, max_size=6).map(_limit_batch))
    def run(payloads: list[JsonDict]) -> None:
        for payload, frame in zip(payloads, bob.request_many(payloads), strict=True):
            status = status_of(frame)
            seen[status] = seen.get(status, 0) + 1
            assert status == 200 or status in VALID_ERRORS[payload["kind"]], (payload, frame)
        bob.ping()

    run()
    return seen


def _limit_batch(payloads: list[JsonDict]) -> list[JsonDict]:
    """At most one resume per batch: each may queue the whole replay buffer (1000 frames) at
    once, and three in a row pass the send queue's bound (2048 frames) however fast the
    client reads: the connection is closed as a slow reader (4008), by design."""
    out: list[JsonDict] = []
    resuming = False
    for payload in payloads:
        if payload["kind"] == "resume":
            if resuming:
                continue
            resuming = True
        out.append(payload)
    return out


def _fuzz_cancel_races(world: World, upstream: FakeUpstream, root: Path) -> dict[int, int]:
    """Bob cancels his own turn, once or several times, at a random moment: while it
    streams, after it ended, or while it waits for his approval of a write (which then never
    runs). The chat.send is always answered, consistently with what the cancels said.

    Cancels are sent once the answer streams (or the approval is asked): one that lands while
    the model call is being opened can be lost on Python < 3.12 (asyncio.wait_for in the
    provider swallows it when the response arrives at the same moment), reported separately."""
    bob = world.bob
    seen: dict[int, int] = {}

    @settings(phases=NO_SHRINK, max_examples=RACE_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(delay=st.floats(0.0, 0.4), wait_for_approval=st.booleans(),
           cancels=st.integers(1, 3))
    def run(delay: float, wait_for_approval: bool, cancels: int) -> None:
        if wait_for_approval:
            upstream.script(Turn(tool_calls=[ToolCall("write_file", {"path": "race.txt",
                                                                     "content": "x"})]))
        else:
            upstream.script(Turn(text="one two three four five six", chunk_size=3,
                                 delay_between_chunks=0.05))
        send_id = bob.new_id()
        bob.send({"type": "request", "id": send_id, "payload": {
            "kind": "chat.send", "text": "race", "retrieve": False}})
        turn_id = None
        while True:
            frame = bob.read(bob.timeout)
            assert frame.get("type") != "response", frame
            if frame["type"] == "event" and frame["payload"].get("kind") == "turn.started":
                turn_id = frame["payload"]["turn_id"]
            if frame["type"] == "stream" or (frame["type"] == "event" and frame["payload"].get(
                    "kind") == "approval.request"):
                break
        assert upstream.pending() == 0 and turn_id is not None
        time.sleep(delay)
        cancel_ids = [bob.new_id() for _ in range(cancels)]
        for cancel_id in cancel_ids:
            bob.send({"type": "request", "id": cancel_id,
                      "payload": {"kind": "chat.cancel", "turn_id": turn_id}})
        sent, *answers = bob.collect([send_id, *cancel_ids])
        said_cancelled = False
        for answer in answers:
            status = status_of(answer)
            seen[status] = seen.get(status, 0) + 1
            assert status in (200, 404), answer
            said_cancelled |= status == 200 and answer["payload"]["cancelled"] is True
        # a turn cancelled twice may end before it could answer: then the request is
        # refused with 409 instead (never left unanswered)
        outcome = sent["payload"]["status"] if "error" not in sent else "cancelled"
        if "error" in sent:
            assert sent["error"]["status"] == 409 and cancels > 1, sent
        assert outcome in ("ok", "cancelled"), sent
        assert (outcome == "cancelled") == said_cancelled, (sent, answers)
        if wait_for_approval:
            assert outcome == "cancelled", sent
        bob.ping()
        assert not (root / "race.txt").exists(), "a cancelled turn's write ran"

    run()
    return seen


def _fuzz_valid_kind(world: World, kind: str, strategy: Strategy,
                     examples: int) -> dict[int, int]:
    bob = world.bob
    seen: dict[int, int] = {}

    @settings(phases=NO_SHRINK, max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(payload=strategy)
    def run(payload: JsonDict) -> None:
        spec.validate_schema(payload, spec.schema_pointer(KINDS[kind]))  # the generator's
        frame = bob.request(payload)
        status = status_of(frame)
        seen[status] = seen.get(status, 0) + 1
        assert status == 200 or status in VALID_ERRORS[kind], (payload, frame)
        if kind == "chat.send" and status == 200:
            result = frame["payload"]
            assert result["status"] in ("ok", "truncated", "error", "limit"), result
            assert "server log" not in str(result.get("error", "")), result
            assert result["conversation_id"] != world.alice_conversation
        if kind == "resume":
            assert frame["payload"]["replayed"] == frame["_replayed_count"], frame
        if kind == "search":
            paths = {h["path"] for h in frame["payload"]["results"]}
            assert paths <= WORKSPACE_FILES, paths  # no hidden file, nothing via a symlink
        if any(isinstance(v, str) and v in world.alice_ids() for v in payload.values()):
            assert status != 200 or kind in ("search", "resume", "health"), (payload, frame)
        bob.ping()

    run()
    return seen


def _fuzz_hostile(world: World, root: Path) -> dict[str, dict[int, int]]:
    """Every mutation of every kind, a few examples each, then the sweep of odd strings."""
    counts: dict[str, dict[int, int]] = {}
    ids = world.ids()
    for kind in KINDS:
        valid = from_schema(KINDS_SCHEMAS[kind], ids, kind)
        for how in MUTATIONS:
            if _applies(kind, how):
                _fuzz_hostile_case(world, kind, how, valid,
                                   counts.setdefault(f"{kind}/{how}", {}))
    _sweep_odd_strings(world, counts)
    _sweep_context_paths(world, root, counts)
    return counts


def _applies(kind: str, how: str) -> bool:
    schema = KINDS_SCHEMAS[kind]
    if how == "drop_required":
        return set(schema.get("required", ())) != {"kind"}
    if how == "other_users_ids":
        return kind in AGENT_KINDS
    return True


def _fuzz_hostile_case(world: World, kind: str, how: str, valid: Strategy,
                       seen: dict[int, int]) -> None:
    bob = world.bob

    @settings(phases=NO_SHRINK, max_examples=HOSTILE_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        changed = mutate(data, world, kind, how, data.draw(valid, label="valid payload"))
        raw = changed if isinstance(changed, str) else None
        size = len((raw if raw is not None else dump(changed)).encode("utf-8", "surrogatepass"))
        assume(size < FRAME_LIMIT - 100)  # above it: closed with 1009 (test_ws_channel.py)
        frame = bob.request(changed, raw=raw)
        status = 0 if frame["type"] == "pong" else status_of(frame)
        seen[status] = seen.get(status, 0) + 1
        if frame["type"] == "response":
            allowed = HOSTILE_ERRORS | VALID_ERRORS[kind]
            assert status == 200 or status in allowed, (how, changed, frame)
        if how == "other_users_ids" and kind in AGENT_KINDS:
            assert "error" in frame, ("bob acted on alice's objects", changed, frame)
        bob.ping()
        if sum(seen.values()) % 5 == 0:
            bob.health()

    run()


def _string_targets(kind: str) -> list[tuple[str, Callable[[str], JsonDict]]]:
    """(field path, payload fragment holding a value there) for every free-text string
    field of the kind, context items' included."""
    properties = KINDS_SCHEMAS[kind].get("properties", {})

    def free(sub: Mapping[str, Any]) -> bool:
        return sub.get("type") == "string" and "enum" not in sub

    def top(key: str) -> Callable[[str], JsonDict]:
        return lambda value: {key: value}

    def in_context(key: str) -> Callable[[str], JsonDict]:
        return lambda value: {"context": [{"kind": "text", "text": "x", key: value}]}

    items = properties.get("context", {}).get("items", {}).get("properties", {})
    return [(key, top(key)) for key, sub in properties.items() if free(sub)] + [
        (f"context.0.{key}", in_context(key)) for key, sub in items.items() if free(sub)]


def _sweep_odd_strings(world: World, counts: dict[str, dict[int, int]]) -> None:
    """Every odd string in every free-text field of every kind, deterministically: unpaired
    surrogates are refused naming the field; anything else is served like any text (a chat
    turn with it completes)."""
    bob = world.bob
    minimal: dict[str, JsonDict] = {
        "chat.send": {"text": "hi", "retrieve": False}, "chat.cancel": {"turn_id": "0" * 32},
        "approval.respond": {"approval_id": str(uuid.UUID(int=0)), "decision": "deny"},
        "chat.undo": {"conversation_id": world.bob_conversation, "turn_id": "0" * 32},
        "execute": {"code": "1"}, "search": {"query": "x"}, "resume": {"last_seq": 0},
        "health": {}}
    for kind, base in minimal.items():
        seen = counts.setdefault(f"{kind}/odd_strings", {})
        # a made-up key of 300,000 characters is refused without being echoed back
        frame = bob.request({"kind": kind, **base, "k" * 300_000: 1})
        assert frame["error"]["status"] == 400, frame
        assert len(frame["error"]["field"]) <= 80 and len(frame["error"]["message"]) <= 200
        for field_name, place in _string_targets(kind):
            for value in NASTY:
                payload = {"kind": kind, **base, **place(value)}
                frame = bob.request(payload)
                status = status_of(frame)
                seen[status] = seen.get(status, 0) + 1
                if not _valid_text(value):
                    assert frame["error"]["status"] == 400, (payload, frame)
                    assert frame["error"]["field"] == field_name, (payload, frame)
                    continue
                assert status == 200 or status in HOSTILE_ERRORS | VALID_ERRORS[kind], \
                    (payload, frame)
                if kind == "chat.send" and field_name in ("text", "context.0.title",
                                                          "context.0.text"):
                    assert status == 200 and frame["payload"]["status"] == "ok", (payload, frame)
        bob.ping()


#: what may be found by a search (bob.txt and alice.txt: written by the agent)
WORKSPACE_FILES = {"churn.py", "README.md", "it's [odd] name.txt", "nb.ipynb", "bob.txt",
                   "alice.txt"}
#: file contents that must never reach the model or the fuzzer
CANARY_OUTSIDE = "CANARY-outside-the-root-7f3a"
CANARY_HIDDEN = "CANARY-hidden-file-c41e"


def _sweep_context_paths(world: World, root: Path, counts: dict[str, dict[int, int]]) -> None:
    """Context items naming paths outside the root, through a symlink, hidden files: the
    turn goes on (the item is reported as unreadable) or the payload is refused; the files'
    contents never reach the model or the client (checked at the end)."""
    bob = world.bob
    outside = root.parent / "outside.txt"
    paths = ["../outside.txt", "a/../../outside.txt", str(outside), "link.txt",
             "linkdir/outside.txt", ".env", "sub/.env", "~/.bashrc", "~", "/etc/passwd",
             "../../../../etc/passwd", "C:\\Windows\\win.ini", "\\\\server\\share\\x",
             "..\\outside.txt", "%2e%2e/outside.txt", "nb.ipynb/../../outside.txt",
             "churn.py\x00.txt", "churn.py/", "/", ".", "..", "nb.ipynb", "churn.py",
             "no-such-file.py", "x" * 4096, "é/ü.py", "\u202eevil.py"]
    seen = counts.setdefault("chat.send/context_paths", {})
    for item_kind in ("file", "notebook", "cell", "selection"):
        for path in paths:
            item: JsonDict = {"kind": item_kind, "path": path, "start_line": 1, "end_line": 3}
            if item_kind == "cell":
                item = {"kind": "cell", "path": path, "cell_id": "c1"}
            elif item_kind == "selection":
                item = {"kind": "selection", "path": path, "text": "selected"}
            frame = bob.request({"kind": "chat.send", "text": "what is in there?",
                                 "context": [item]})
            status = status_of(frame)
            seen[status] = seen.get(status, 0) + 1
            assert status in (200, 400), (item, frame)
            if status == 200:
                assert frame["payload"]["status"] == "ok", (item, frame)
    bob.ping()


async def _scenario(jp_http_port: int, jp_base_url: str, upstream: FakeUpstream,
                    root: Path, fuzz: Callable[[World, Path], dict[str, dict[int, int]]]
                    ) -> dict[str, dict[int, int]]:
    url, http = _urls(jp_http_port, jp_base_url)

    def scenario() -> dict[str, dict[int, int]]:
        world = build_world(url, http, upstream)
        try:
            counts = fuzz(world, root)
            check_alice_unaffected(world, root)
            check_no_canary(world, upstream)
            return counts
        finally:
            world.alice.close()
            world.bob.close()

    return await asyncio.to_thread(scenario)


def _workspace(root: Path) -> None:
    (root / "churn.py").write_text("def churn(df):\n    return df.days > 30\n")
    (root / "README.md").write_text("# Churn\n\nCustomers inactive for 30+ days.\n")
    (root / "it's [odd] name.txt").write_text("quotes ' and brackets [ ] in the path\n")
    (root / "nb.ipynb").write_text(json.dumps({
        "nbformat": 4, "nbformat_minor": 5, "metadata": {},
        "cells": [{"id": "c1", "cell_type": "code", "metadata": {}, "execution_count": None,
                   "source": "churn(df)", "outputs": []}]}))
    # what no request may read: a file outside the root, reached directly and through
    # symlinks inside it, and hidden files
    outside = root.parent / "outside.txt"
    outside.write_text(f"{CANARY_OUTSIDE} outside the root\n")
    (root / "link.txt").symlink_to(outside)
    (root / "linkdir").symlink_to(root.parent, target_is_directory=True)
    (root / ".env").write_text(f"TOKEN={CANARY_HIDDEN}\n")
    (root / "sub").mkdir()
    (root / "sub" / ".env").write_text(f"TOKEN={CANARY_HIDDEN}\n")


def check_no_canary(world: World, upstream: FakeUpstream) -> None:
    """Nothing outside the root or hidden reached the model, or any frame sent to bob."""
    sent = json.dumps([r["body"] for r in upstream.requests])
    frames = "".join(world.bob.seen.values())
    for canary in (CANARY_OUTSIDE, CANARY_HIDDEN):
        assert canary not in sent, f"{canary} reached the model"
        assert canary not in frames, f"{canary} reached bob"


async def test_valid_payloads_of_every_kind(
        cloudide: Any, jp_fetch: Any, jp_http_port: int, jp_base_url: str,
        jp_root_dir: Path, upstream: FakeUpstream,
        error_log: list[logging.LogRecord]) -> None:
    _workspace(jp_root_dir)
    counts = await _scenario(jp_http_port, jp_base_url, upstream, jp_root_dir, _fuzz_valid)
    print("COUNTS", json.dumps(counts, sort_keys=True))
    # the fuzzing reached the code behind each kind, not just the schema check
    assert 200 in counts["chat.send"], counts
    assert counts["search"].get(200), counts
    assert 403 in counts["approval.respond"] or 409 in counts["approval.respond"], counts
    assert 403 in counts["execute"], counts
    assert not cloudide.server.kernel_manager.list_kernel_ids(), "a kernel was started"
    assert not error_log, _formatted(error_log)


async def test_hostile_payloads_of_every_kind(
        cloudide: Any, jp_fetch: Any, jp_http_port: int, jp_base_url: str,
        jp_root_dir: Path, upstream: FakeUpstream,
        error_log: list[logging.LogRecord]) -> None:
    _workspace(jp_root_dir)
    counts = await _scenario(jp_http_port, jp_base_url, upstream, jp_root_dir, _fuzz_hostile)
    print("COUNTS", json.dumps(counts, sort_keys=True))
    statuses = {s for by_status in counts.values() for s in by_status}
    assert 400 in statuses, counts
    assert not cloudide.server.kernel_manager.list_kernel_ids(), "a kernel was started"
    assert not error_log, _formatted(error_log)


@pytest.mark.parametrize(("path", "body", "field"), [
    ("conversations", '{"title": "\\ud800"}', "title"),
    ("conversations", '{"title": "ok", "model": "x\\udfffy"}', "model"),
    ("search", '{"query": "\\ud83d"}', "query"),
    ("search", '{"query": "x", "language": ["py", "\\udc00"]}', "language.1"),
], ids=["title", "model", "query", "list-item"])
async def test_unpaired_surrogates_are_refused_over_rest_too(
        cloudide: Any, jp_fetch: Any, path: str, body: str, field: str) -> None:
    """The REST API decodes bodies the same way: 400 naming the field, not a 500 from the
    first database write or search that encodes the text."""
    response = await jp_fetch("cloudide", "api", path, method="POST", body=body,
                              headers=auth("bob"), raise_error=False)
    assert response.code == 400, response.body
    error = json.loads(response.body)
    assert error["field"] == field and "surrogate" in error["message"], error


async def test_concurrent_searches_are_answered(
        cloudide: Any, jp_fetch: Any, jp_http_port: int, jp_base_url: str,
        jp_root_dir: Path, upstream: FakeUpstream) -> None:
    """Two searches in flight at once (two tabs, two users, a search and a chat turn's
    retrieval) are both answered."""
    _workspace(jp_root_dir)
    url, _ = _urls(jp_http_port, jp_base_url)

    def run() -> None:
        bob = Client(url, "bob", timeout=3.0)
        try:
            first = bob.request({"kind": "search", "query": "churn"})
            assert "error" not in first, first
            for _ in range(3):
                both = bob.request_many([{"kind": "search", "query": "churn days"},
                                         {"kind": "search", "query": "customers"}])
                assert all("error" not in frame for frame in both), both
        finally:
            bob.close()

    await asyncio.to_thread(run)
