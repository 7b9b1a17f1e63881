"""Agent benchmark: the latency our chat turn adds on top of the model's own, per model round trip.

Target (the issue): our loop's added latency <= 5 ms at the median, for the time to the first
token (TTFT) and for the whole turn.

Set-up (all on loopback): the fake LLM provider of the test suite (``tests/fake_upstream.py``,
the real OpenAI wire format over a real socket) runs in a child process of its own (this script
with ``--upstream-child``), so that producing the stream never competes for the GIL with either
of the two clients measured here. It answers every chat request with the same reply: ``--chunks``
text deltas of ``--chunk-size`` characters (default 20 x 8), no tool calls, no delays, then the
finish chunk, the usage chunk and ``[DONE]``. One ``jupyter server`` with jupyter_cloudide runs
with that upstream as its only provider (``gpt-4o-mini``; the other models it lists are
discovered too), the index off and the ``chat`` rate limit raised (the limiter still runs, it
just never refuses). These settings go in the server's ``jupyter_server_config.json``: on
``jupyter server``'s command line a ``List(Dict())`` trait such as ``providers`` arrives as a
string element and a JSON ``null`` breaks a ``Dict`` (TraitError; the server starts anyway
with the agent unconfigured), so the bench also refuses a server log with a TraitError.

Side by side, in alternating blocks (``--block`` turns each, which side goes first alternating
per round), both clients in this process on one asyncio loop, after ``--warmup`` turns each
(the first turn through the server pays model discovery, the SDK import and the provider
client: ``first_turn_ms``):

1. ``direct``: the fake upstream called as our server's provider calls it (the JSON POSTed on
   the openai SDK's default HTTP client, SSE lines parsed with ``json``), with
   ``stream=True, stream_options={"include_usage": True}``.
   The request body is the one our server sent during the warm-up (recorded by the upstream:
   system prompt, one user message, the tool specs, max_tokens), so both sides send and
   receive the same bytes upstream. TTFT = the first chunk with non-empty ``delta.content``;
   total = the end of the stream (after usage and ``[DONE]``).
2. ``ours``: ``request{kind: chat.send, text}`` on ONE ``cloudide/api/ws`` socket, a new
   conversation each turn (so the prompt does not grow). TTFT = the first ``stream`` frame;
   total = the ``response`` frame (status must be ``ok`` and the streamed text the reply).

Reported: p50/p99 (and mean) of TTFT and total for both, the added latency (ours - direct) at
p50 and p99 for both, and ``targets``. Also:

- ``breakdown_p50_ms``: the server's events carry no timestamps, so this is client-side only:
  gaps between the arrivals of the frames a turn pushes (``turn.started``, ``prompt``,
  ``model.call``, first and last ``stream``, ``turn.usage``, ``response``), the same gaps of
  ``direct`` (first / last content chunk, end) and the WS ping round trip (``ping`` ->
  ``pong``, no dispatch), i.e. the socket hop alone. A frame emitted while the connection
  is idle is written at once, so ``prompt`` and ``model.call`` leave before the provider
  sends its request and ``model_call_to_first`` holds the upstream request's time. Deltas emitted
  while an earlier frame is still queued are merged into it (one ``stream`` frame, the
  texts concatenated): ``last`` is the arrival of the frame carrying the last delta.
- ``cpu_ms_per_turn``: CPU (user + system, /proc) per turn of the server while each side ran,
  and of this process (the HTTP client for ``direct``, the WS client for ``ours``). On a small
  machine the server's CPU per turn is most of its latency.
- ``fixed_conversation``: ``--fixed`` turns in ONE conversation (the prompt grows every turn),
  ours only: first vs last turns.
- ``profile`` (with ``--py-spy FILE``): a final untimed phase, ``py-spy record -f raw --gil``
  on the server while turns run back to back, as server milliseconds per turn holding the GIL
  by category (each sample to its nearest labelled caller; SQLite and socket calls release
  the GIL, so their C time is not in it) and inclusive by function. Without ``--gil``
  (``--py-spy-gil=no``) py-spy counts a thread waiting for the GIL as busy, and its stops
  inflate the time seen in syscalls.

Run it from the repository root, with the project's virtualenv active::

    python bench/agent.py           # prints ONE JSON line on stdout; logs go to stderr
    python bench/agent.py --quick   # smaller counts, for a smoke test
    python bench/agent.py --py-spy /tmp/agent.raw   # plus a profile of the server
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import os
import re
import signal
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import REPO, Fleet, Proc, bench_main, http_get, pct, repo_env, time_limit, versions

TESTS = REPO / "tests"

log = logging.getLogger("bench.agent")

TARGET_ADDED_MS = 5.0
SERVER_START_TIMEOUT_S = 90.0
IO_TIMEOUT_S = 30.0
MODEL = "gpt-4o-mini"
USER_TEXT = "hi"
RATE_LIMITS = {"chat": {"requests_per_minute": 100_000_000, "tokens_per_minute": None}}
READY_MARK = "UPSTREAM_READY "


def reply_text(chunks: int, size: int) -> str:
    """``chunks`` pieces of exactly ``size`` characters, readable."""
    base = "The quick brown fox jumps over the lazy dog. "
    return (base * (chunks * size // len(base) + 1))[: chunks * size]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def stats(samples: list[float]) -> dict[str, float]:
    """p50/p99/mean in ms of samples in seconds."""
    return {"p50_ms": ms(pct(samples, 50)), "p99_ms": ms(pct(samples, 99)),
            "mean_ms": ms(statistics.fmean(samples)) if samples else float("nan")}


# ------------------------------------------------------------------------------------------
# the upstream child (this script with --upstream-child)


def upstream_child(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--upstream-child", action="store_true")
    p.add_argument("--chunks", type=int, required=True)
    p.add_argument("--chunk-size", type=int, required=True)
    p.add_argument("--record", required=True, help="file for the first chat request's body")
    args = p.parse_args(argv)
    sys.path.insert(0, str(TESTS))
    from fake_upstream import FakeUpstream, Turn

    text = reply_text(args.chunks, args.chunk_size)
    record = Path(args.record)

    class Fixed(FakeUpstream):  # type: ignore[misc]  # tests/ is not on mypy's path
        """Every chat request gets the same reply; the first one's body is written out."""

        recorded = False

        def _next_turn(self, model: str | None) -> Turn:
            if not self.recorded and self.requests:
                self.recorded = True
                record.write_text(json.dumps(self.requests[-1]["body"]))
            self.requests.clear()  # bounded memory over thousands of requests
            return Turn(text=text, chunk_size=args.chunk_size)

    return serve_upstream(Fixed)


def serve_upstream(upstream_cls: Any) -> int:
    """Start ``upstream_cls`` (a ``FakeUpstream``), print its address after ``READY_MARK``
    (read by :func:`upstream_address`) and serve until SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with upstream_cls() as up:
        print(READY_MARK + json.dumps({"base_url": up.openai_base_url, "api_key": up.api_key}),
              flush=True)
        while True:
            signal.pause()


# ------------------------------------------------------------------------------------------
# processes


def start_upstream(fleet: Fleet, args: argparse.Namespace
                   ) -> tuple[Proc, dict[str, str], Path]:
    tmp = fleet.mkdtemp("bench-agent-upstream-")
    record = tmp / "request.json"
    argv = [sys.executable, str(Path(__file__).resolve()), "--upstream-child",
            f"--chunks={args.chunks}", f"--chunk-size={args.chunk_size}", f"--record={record}"]
    proc = fleet.spawn("upstream", argv, repo_env(), tmp)
    return proc, upstream_address(proc), record


def upstream_address(proc: Proc) -> dict[str, str]:
    """The base URL and key the upstream child prints once it listens."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"upstream exited with {proc.popen.returncode}:\n{proc.tail()}")
        for line in proc.tail(50).splitlines():
            if line.startswith(READY_MARK):
                return dict(json.loads(line[len(READY_MARK):]))
        time.sleep(0.02)
    raise RuntimeError(f"upstream did not start:\n{proc.tail()}")


def start_server(fleet: Fleet, upstream: dict[str, str], server_args: list[str],
                 rate_limits: dict[str, Any] | None = None) -> Proc:
    """A jupyter server whose only provider is the fake upstream; ``rate_limits`` raises
    the route class the bench drives (default: ``chat``) so the limiter never refuses."""
    tmp = fleet.mkdtemp("bench-server-")
    for sub in ("root", "data", "runtime"):
        (tmp / sub).mkdir()
    env = repo_env()
    env["JUPYTER_CLOUDIDE_DATA_DIR"] = str(tmp / "data")
    env["JUPYTER_CONFIG_DIR"] = str(tmp / "config")
    env["JUPYTER_RUNTIME_DIR"] = str(tmp / "runtime")
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        env.pop(name, None)  # the fake upstream is the only provider
    # not on the command line: see the module docstring
    (tmp / "config").mkdir()
    (tmp / "config" / "jupyter_server_config.json").write_text(json.dumps({"CloudIDEApp": {
        "providers": [{"name": "openai", "kind": "openai", "base_url": upstream["base_url"],
                       "api_key": upstream["api_key"]}],
        "default_model": MODEL,
        "index_enabled": False,
        "rate_limits": RATE_LIMITS if rate_limits is None else rate_limits,
    }}))
    return fleet.spawn_jupyter("server", tmp, env, extra=list(server_args))


def wait_ready(proc: Proc) -> None:
    """Until ``cloudide/api/health`` answers with the metadata store open."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"server exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            status, body = http_get(proc, "/cloudide/api/health", timeout=5.0)
        except OSError as exc:
            last = repr(exc)
        else:
            db = json.loads(body).get("components", {}).get("db", {}) if status == 200 else {}
            if db.get("state") == "ok":
                if "TraitError" in proc.log_path.read_text("utf-8", errors="replace"):
                    raise RuntimeError(f"server config refused:\n{proc.tail(60)}")
                return
            last = f"HTTP {status}, db {db.get('state')!r}"
        time.sleep(0.05)
    raise RuntimeError(f"server not ready after {SERVER_START_TIMEOUT_S}s: {last}")


# ------------------------------------------------------------------------------------------
# the two clients


class Direct:
    """The fake upstream called the way our server's provider calls it: the request's JSON
    POSTed on the openai SDK's default HTTP client, the SSE lines parsed with ``json``. (With
    the SDK's own ``chat.completions.create`` as the baseline, its request building and a
    pydantic object per chunk cost this side ~5 ms of CPU a turn that our server no longer
    pays, and the "added" figures came out negative.)"""

    def __init__(self, upstream: dict[str, str], body: dict[str, Any], text: str) -> None:
        from openai import DefaultAsyncHttpxClient

        self.http = DefaultAsyncHttpxClient(timeout=IO_TIMEOUT_S)
        self.url = upstream["base_url"].rstrip("/") + "/chat/completions"
        self.headers = {"Authorization": f"Bearer {upstream['api_key']}",
                        "Content-Type": "application/json"}
        self.body = json.dumps({**body, "stream": True,
                                "stream_options": {"include_usage": True}}).encode()
        self.text = text

    async def turn(self) -> dict[str, float]:
        parts: list[str] = []
        first = last = None
        usage = None
        t0 = time.perf_counter()
        request = self.http.build_request("POST", self.url, headers=self.headers,
                                          content=self.body)
        response = await self.http.send(request, stream=True)
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage") is not None:
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        last = time.perf_counter()
                        if first is None:
                            first = last
                        parts.append(content)
        finally:
            await response.aclose()
        t1 = time.perf_counter()
        if "".join(parts) != self.text or usage is None or first is None or last is None:
            raise RuntimeError(f"direct: unexpected reply {''.join(parts)!r}, usage {usage!r}")
        return {"ttft": first - t0, "total": t1 - t0, "first_to_last": last - first,
                "last_to_end": t1 - last}

    async def close(self) -> None:
        await self.http.aclose()


class Ours:
    """``chat.send`` on one session-channel socket."""

    def __init__(self, proc: Proc, text: str) -> None:
        self.proc = proc
        self.text = text
        self.ws: Any = None
        self._cm: Any = None
        self.next_id = 0
        self.prompt_tokens: list[int] = []

    async def open(self) -> None:
        from websockets.asyncio.client import connect

        self._cm = connect(
            f"ws://127.0.0.1:{self.proc.port}/cloudide/api/ws",
            additional_headers={"Authorization": f"token {self.proc.token}"},
            compression=None, open_timeout=IO_TIMEOUT_S, close_timeout=5, max_size=2**22,
            ping_interval=None)
        self.ws = await self._cm.__aenter__()
        sock = self.ws.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), IO_TIMEOUT_S))
        if frame.get("type") != "welcome":
            raise RuntimeError(f"expected a welcome frame, got {frame!r}")

    async def recv(self) -> dict[str, Any]:
        return dict(json.loads(await asyncio.wait_for(self.ws.recv(), IO_TIMEOUT_S)))

    async def ping(self) -> float:
        self.next_id += 1
        rid = self.next_id
        t0 = time.perf_counter()
        await self.ws.send(json.dumps({"type": "ping", "id": rid}))
        while True:
            frame = await self.recv()
            if frame.get("type") == "pong" and frame.get("id") == rid:
                return time.perf_counter() - t0

    async def turn(self, conversation_id: str | None = None) -> tuple[dict[str, float], str]:
        self.next_id += 1
        rid = self.next_id
        payload: dict[str, Any] = {"kind": "chat.send", "text": USER_TEXT}
        if conversation_id:
            payload["conversation_id"] = conversation_id
        raw = json.dumps({"type": "request", "id": rid, "payload": payload},
                         separators=(",", ":"))
        marks: dict[str, float] = {}
        deltas: list[str] = []
        t0 = time.perf_counter()
        await self.ws.send(raw)
        while True:
            frame = await self.recv()
            now = time.perf_counter()
            kind = frame.get("type")
            if kind == "stream":
                marks.setdefault("first", now)
                marks["last"] = now
                deltas.append(frame["payload"]["delta"])
            elif kind == "event":
                event = frame.get("payload") or {}
                marks.setdefault(str(event.get("kind")), now)
                if event.get("kind") == "prompt":
                    self.prompt_tokens.append(int(event.get("tokens") or 0))
            elif kind == "response" and frame.get("id") == rid:
                break
        t1 = time.perf_counter()
        if "error" in frame:
            raise RuntimeError(f"chat.send: {frame['error']!r}")
        result = frame.get("payload") or {}
        if result.get("status") != "ok" or "".join(deltas) != self.text:
            raise RuntimeError(f"chat.send: {result!r}, streamed {''.join(deltas)!r}")
        need = ("turn.started", "prompt", "model.call", "first", "last", "turn.usage")
        missing = [k for k in need if k not in marks]
        if missing:
            raise RuntimeError(f"chat.send: no {missing} frames")
        sample = {
            "ttft": marks["first"] - t0, "total": t1 - t0,
            "send_to_turn_started": marks["turn.started"] - t0,
            "turn_started_to_model_call": marks["model.call"] - marks["turn.started"],
            "model_call_to_first": marks["first"] - marks["model.call"],
            "first_to_last": marks["last"] - marks["first"],
            "last_to_usage": marks["turn.usage"] - marks["last"],
            "usage_to_response": t1 - marks["turn.usage"],
        }
        return sample, str(result["conversation_id"])

    async def close(self) -> None:
        if self._cm is not None:
            with contextlib.suppress(Exception):
                await self._cm.__aexit__(None, None, None)


def proc_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------
# py-spy


_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
#: leaf frames of a thread that waits (py-spy counts some of these as active)
IDLE_LEAVES = ("EpollSelector.select", "Condition.wait", "Event.wait", "_worker (concurrent/",
               "Queue.get", "SimpleQueue.get", "Thread.join", "_wait_for_tstate_lock")
#: store methods, matched anywhere in the stack first (they run on the store's thread)
DB_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("db thread: create_conversation", ("MetadataStore.create_conversation",)),
    ("db thread: add_message", ("MetadataStore.add_message",)),
    ("db thread: list_messages", ("MetadataStore.list_messages",)),
    ("db thread: record_usage (metering)", ("MetadataStore.record_usage",)),
    ("db thread: other store methods", ("MetadataStore._tx", "MetadataStore.get_")),
)
#: (label, substrings of "func (file)"): a sample goes to the first label found walking its
#: stack from the leaf up, i.e. to its nearest labelled caller
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loop: store.call hand-off (run_in_executor)", ("MetadataStore.call",)),
    ("prompt: fit + token counting", ("fit (jupyter_cloudide/agent/prompt.py)",
                                      "TokenCounter.")),
    ("tools: specs", ("ToolRegistry.specs", "Tool.spec ")),
    ("gateway: jsonschema", ("validate_schema",)),
    ("gateway: rate limiter", ("ratelimit.py",)),
    ("openai SDK: request (build, send, headers)", ("AsyncCompletions.create",)),
    ("openai SDK: stream decode", ("AsyncStream.", "SSEDecoder", "_streaming.py")),
    ("ws out: frame encode + queue (Session.emit)", ("Session.emit",)),
    ("ws out: socket write (SessionChannelHandler._write_queued)",
     ("SessionChannelHandler._write_queued", "WebSocketProtocol13.write_message")),
    ("ws in: read + dispatch", ("WebSocketProtocol13._receive_frame", "Channel.handle_text",
                                "SessionChannelHandler.on_message")),
    ("history: list -> messages", ("AgentLoop._history",)),
    ("metering: usage event", ("AgentLoop._meter", "_meter_rows", "Ledger.")),
    ("agent loop + service (other)", ("jupyter_cloudide/agent/",)),
    ("gateway (other)", ("jupyter_cloudide/gateway/",)),
    ("httpx/httpcore/anyio (HTTP under the SDK)", ("httpx", "httpcore", "anyio/")),
)


def summarize_raw(path: Path, rate: int, turns: int, top: int = 20) -> dict[str, Any]:
    """py-spy ``raw`` (folded stacks + count) → server CPU ms per turn: by category (each
    sample to its nearest labelled caller), and inclusive by function (our package and a
    few suspects) on the event-loop thread and on other threads. Waiting threads are left
    out (``IDLE_LEAVES``)."""
    categories: collections.Counter[str] = collections.Counter()
    inclusive: dict[str, collections.Counter[str]] = {
        "loop": collections.Counter(), "threads": collections.Counter()}
    busy = {"loop": 0, "threads": 0}
    idle = 0
    for line in path.read_text("utf-8", errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        keys = []
        for part in stack.split(";"):
            m = _FRAME.match(part.strip())
            if m:
                keys.append(f"{m['func']} ({m['file']})")
        if not keys or any(keys[-1].startswith(leaf) for leaf in IDLE_LEAVES):
            idle += count
            continue
        thread = "loop" if any("run_forever" in k for k in keys) else "threads"
        busy[thread] += count
        for key in set(keys):
            inclusive[thread][key] += count
        label = next((name for name, subs in DB_CATEGORIES
                      if any(sub in key for key in keys for sub in subs)), None)
        if label is None:
            label = next((name for key in reversed(keys) for name, subs in CATEGORIES
                          if any(sub in key for sub in subs)), None)
        if label is None:
            label = "event loop (asyncio/tornado, other)" if thread == "loop" \
                else "other threads"
        categories[label] += count

    def per_turn(count: int) -> float:
        return round(count / rate * 1000 / max(1, turns), 3)

    interesting = ("jupyter_cloudide", "sqlalchemy", "tiktoken", "jsonschema", "openai/",
                   "httpx", "sqlite3", "tornado/websocket", "json/")
    out: dict[str, Any] = {
        "samples_busy": sum(busy.values()), "samples_idle": idle, "rate_hz": rate,
        "turns": turns,
        "busy_ms_per_turn": {k: per_turn(v) for k, v in busy.items()},
        "by_category_ms_per_turn": {k: per_turn(c) for k, c in categories.most_common()},
    }
    for thread, counter in inclusive.items():
        ranked = [(k, c) for k, c in counter.most_common()
                  if any(s in k for s in interesting)][:top]
        out[f"inclusive_{thread}_ms_per_turn"] = {k: per_turn(c) for k, c in ranked}
    return out


# ------------------------------------------------------------------------------------------
# the run


async def bench(args: argparse.Namespace, fleet: Fleet, server: Proc, upstream: dict[str, str],
                record: Path, text: str) -> dict[str, Any]:
    ours = Ours(server, text)
    await ours.open()
    direct: Direct | None = None
    try:
        log.info("warm-up: %d turns through the server (discovery, provider client)",
                 args.warmup)
        t0 = time.perf_counter()
        first, _ = await ours.turn()
        log.info("first turn: %.1f ms (TTFT %.1f ms)", first["total"] * 1000,
                 first["ttft"] * 1000)
        first_turn = {"ttft": ms(first["ttft"]), "total": ms(first["total"])}
        for _ in range(args.warmup - 1):
            await ours.turn()
        log.info("warm-up through the server: %.1f s", time.perf_counter() - t0)
        body = json.loads(await asyncio.to_thread(record.read_text))
        direct = Direct(upstream, body, text)
        for _ in range(args.warmup):
            await direct.turn()
        await asyncio.sleep(args.settle)

        samples: dict[str, list[dict[str, float]]] = {"direct": [], "ours": []}
        pings: list[float] = []
        rounds = -(-args.n // args.block)
        log.info("timed: %d rounds of %d turns per side (alternating first)", rounds,
                 args.block)
        cpu = {f"{who}_{side}": 0.0 for who in ("server", "client")
               for side in ("direct", "ours")}
        for r in range(rounds):
            order = ("direct", "ours") if r % 2 == 0 else ("ours", "direct")
            for side in order:
                server_cpu, client_cpu = proc_cpu_s(server.pid), time.process_time()
                for _ in range(min(args.block, args.n - len(samples[side]))):
                    if side == "direct":
                        samples[side].append(await direct.turn())
                    else:
                        sample, _cid = await ours.turn()
                        samples[side].append(sample)
                cpu[f"server_{side}"] += proc_cpu_s(server.pid) - server_cpu
                cpu[f"client_{side}"] += time.process_time() - client_cpu
                if side == "ours":
                    for _ in range(3):
                        pings.append(await ours.ping())
            if (r + 1) % 5 == 0 or r + 1 == rounds:
                log.info("round %d/%d: ours TTFT p50 so far %.2f ms, direct %.2f ms", r + 1,
                         rounds, statistics.median(s["ttft"] for s in samples["ours"]) * 1000,
                         statistics.median(s["ttft"] for s in samples["direct"]) * 1000)
        out = figures(samples, pings)
        out["first_turn_ms"] = first_turn
        # CPU seconds per turn: the server's while each side ran, and this process's (the
        # HTTP client for direct, the WS client for ours); /proc, whole processes
        out["cpu_ms_per_turn"] = {key: ms(value / max(1, len(samples[key.split("_")[1]])))
                                  for key, value in cpu.items()}
        out["prompt_tokens_new_conversation"] = ours.prompt_tokens[-1]
        out["upstream_request_bytes"] = len(json.dumps(body))
        out["upstream_request_tools"] = len(body.get("tools") or [])

        if args.fixed:
            out["fixed_conversation"] = await fixed_conversation(ours, args.fixed)
        if args.py_spy:
            out["profile"] = await profile(args, fleet, server, ours)
        return out
    finally:
        await ours.close()
        if direct is not None:
            await direct.close()


def figures(samples: dict[str, list[dict[str, float]]], pings: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side in ("direct", "ours"):
        for metric in ("ttft", "total"):
            values = [s[metric] for s in samples[side]]
            for key, value in stats(values).items():
                out[f"{side}_{metric}_{key}"] = value
    for metric in ("ttft", "total"):
        ours = [s[metric] for s in samples["ours"]]
        direct = [s[metric] for s in samples["direct"]]
        for p in (50, 99):
            out[f"added_{metric}_p{p}_ms"] = ms(pct(ours, p) - pct(direct, p))
    out["breakdown_p50_ms"] = {
        "ours": {k: ms(statistics.median(s[k] for s in samples["ours"]))
                 for k in ("send_to_turn_started", "turn_started_to_model_call",
                           "model_call_to_first", "first_to_last", "last_to_usage",
                           "usage_to_response")},
        "direct": {k: ms(statistics.median(s[k] for s in samples["direct"]))
                   for k in ("ttft", "first_to_last", "last_to_end")},
        "ws_ping_rtt": ms(statistics.median(pings)),
    }
    out["ws_ping_rtt_p99_ms"] = ms(pct(pings, 99))
    out["turns"] = {side: len(v) for side, v in samples.items()}
    return out


async def fixed_conversation(ours: Ours, n: int) -> dict[str, Any]:
    """``n`` turns in one conversation: the prompt (history) grows every turn."""
    log.info("one conversation: %d turns", n)
    conversation: str | None = None
    rows: list[dict[str, float]] = []
    start = len(ours.prompt_tokens)
    for _ in range(n):
        sample, conversation = await ours.turn(conversation)
        rows.append(sample)
    k = max(1, min(10, n // 4))
    head, tail = rows[:k], rows[-k:]

    def med(part: list[dict[str, float]], key: str) -> float:
        return ms(statistics.median(s[key] for s in part))

    tokens = ours.prompt_tokens[start:]
    return {"turns": n, "window": k,
            "first_turns": {"ttft_p50_ms": med(head, "ttft"), "total_p50_ms": med(head, "total"),
                            "prompt_tokens": tokens[0]},
            "last_turns": {"ttft_p50_ms": med(tail, "ttft"), "total_p50_ms": med(tail, "total"),
                           "prompt_tokens": tokens[-1]},
            "turn_started_to_model_call_p50_ms": {
                "first": med(head, "turn_started_to_model_call"),
                "last": med(tail, "turn_started_to_model_call")}}


async def profile(args: argparse.Namespace, fleet: Fleet, server: Proc, ours: Ours
                  ) -> dict[str, Any]:
    """py-spy on the server for ``--py-spy-seconds`` while turns run back to back (untimed)."""
    out_path = Path(args.py_spy)  # made absolute by parse_args
    tmp = fleet.mkdtemp("bench-agent-pyspy-")
    argv = [str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(server.pid),
            "-f", "raw", "-o", str(out_path), "-r", str(args.py_spy_rate),
            "-d", str(args.py_spy_seconds), *(["--gil"] if args.py_spy_gil == "yes" else [])]
    spy = fleet.spawn("py-spy", argv, dict(os.environ), tmp)
    await asyncio.sleep(1.0)  # attach; no turns run meanwhile, so every turn counted below
    turns = 0  # ran while py-spy was sampling (the last one may end after it stopped)
    while spy.popen.poll() is None:
        await ours.turn()
        turns += 1
    log.info("py-spy: %d turns in ~%ds, raw profile in %s", turns, args.py_spy_seconds,
             out_path)
    return await asyncio.to_thread(read_profile, spy, out_path, args.py_spy_rate, turns)


def read_profile(spy: Proc, out_path: Path, rate: int, turns: int) -> dict[str, Any]:
    if spy.popen.returncode != 0 or not out_path.exists():
        raise RuntimeError(f"py-spy failed ({spy.popen.returncode}):\n{spy.tail()}")
    result = summarize_raw(out_path, rate, turns)
    result["raw"] = str(out_path)
    return result


def run(args: argparse.Namespace, fleet: Fleet) -> dict[str, Any]:
    for name in ("httpx", "httpx2", "httpcore", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)  # a line per request otherwise
    with time_limit(args.max_runtime):
        t0 = time.perf_counter()
        text = reply_text(args.chunks, args.chunk_size)
        up_proc, upstream, record = start_upstream(fleet, args)
        server = start_server(fleet, upstream, args.server_arg)
        wait_ready(server)
        log.info("upstream pid %d, server pid %d ready after %.1fs", up_proc.pid, server.pid,
                 time.perf_counter() - t0)
        out = asyncio.run(bench(args, fleet, server, upstream, record, text))
        out["server_pid"] = server.pid
        out["targets"] = {
            "added_ttft_p50_le_5ms": bool(out["added_ttft_p50_ms"] <= TARGET_ADDED_MS),
            "added_total_p50_le_5ms": bool(out["added_total_p50_ms"] <= TARGET_ADDED_MS),
        }
        return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="timed turns per side")
    p.add_argument("--block", type=int, default=20, help="turns per block")
    p.add_argument("--warmup", type=int, default=20, help="untimed turns per side")
    p.add_argument("--chunks", type=int, default=20, help="text deltas in each reply")
    p.add_argument("--chunk-size", type=int, default=8, help="characters per delta")
    p.add_argument("--fixed", type=int, default=50,
                   help="turns in one growing conversation afterwards (0: skip)")
    p.add_argument("--settle", type=float, default=0.5, help="seconds before the timed turns")
    p.add_argument("--py-spy", default="", metavar="FILE",
                   help="also profile the server with py-spy (raw output to FILE)")
    p.add_argument("--py-spy-seconds", type=int, default=15)
    p.add_argument("--py-spy-rate", type=int, default=250)
    p.add_argument("--py-spy-gil", choices=("yes", "no"), default="yes",
                   help="sample only the thread holding the GIL (default yes)")
    p.add_argument("--max-runtime", type=int, default=300, help="hard limit, seconds")
    p.add_argument("--quick", action="store_true", help="small counts (smoke test)")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra jupyter server argument (repeatable)")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.block, args.warmup, args.settle = 40, 10, 5, 0.2
        args.fixed = min(args.fixed, 10)
        args.py_spy_seconds = min(args.py_spy_seconds, 5)
    if args.py_spy:
        args.py_spy = str(Path(args.py_spy).resolve())
    if args.n < 1 or args.block < 1 or args.warmup < 1 or args.chunks < 1:
        p.error("--n, --block, --warmup and --chunks must be >= 1")
    return args


def header(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "versions": versions("jupyter_server", "tornado", "openai", "httpx", "websockets",
                             "sqlalchemy", "tiktoken"),
        "params": {"n": args.n, "block": args.block, "warmup": args.warmup,
                   "chunks": args.chunks, "chunk_size": args.chunk_size, "fixed": args.fixed,
                   "model": MODEL, "server_args": args.server_arg, "cpus": os.cpu_count()},
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--upstream-child" in argv:
        return upstream_child(argv)
    return bench_main("agent", argv, parse_args, run, header, separators=(",", ":"))


if __name__ == "__main__":
    sys.exit(main())
