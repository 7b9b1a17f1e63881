"""Gateway benchmark: REST and WebSocket latency, throughput and per-connection memory.

What it measures (all over loopback, against real ``jupyter server`` processes it starts):

1. ``GET cloudide/api/health`` latency (p50/p99) over one keep-alive HTTP connection, with
   jupyter_server's own authenticated ``GET /api/status`` as the baseline.
2. Session-channel round trip (``WS cloudide/api/ws``): a ``request`` of kind ``health``
   (full dispatch: frame schema, authorizer, payload schema, handler, seq + replay buffer),
   against the app-level ``ping``/``pong`` on the same socket (no dispatch) and against a
   bare tornado echo WebSocket server in a separate process. ``ws_overhead_p50_ms`` is the
   session channel's p50 minus the echo server's p50 (target: <= 1 ms).
3. Pipelined throughput on one socket with at most ``--window`` (<= 32, the server's
   per-session in-flight limit) outstanding requests, for ``health`` requests and for pings.
4. Server RSS and open file descriptors before, with and after 1,000 idle authenticated
   session-channel connections (each waits for its ``welcome`` frame), against the same
   number of connections to jupyter_server's ``/api/events/subscribe`` on a twin server
   (target: 1,000 connections add <= 150 MB).

Three servers are started (latency; session-channel memory; events memory) so that memory
is measured on fresh processes, plus the echo server. All are killed on exit, on error too.

Run it from the repository root, with the project's virtualenv active::

    python bench/gateway.py            # prints ONE JSON line on stdout; logs go to stderr
    python bench/gateway.py --quick    # smaller counts, for a smoke test

The run is bounded (a few tens of seconds on 2 cores, hard timeouts everywhere).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import logging
import os
import resource
import socket
import sys
import time
from typing import Any

import psutil
import websockets
from _common import Fleet, Proc, bench_main, free_port, http_get, pct, repo_env, versions
from websockets.asyncio.client import ClientConnection, connect

log = logging.getLogger("bench.gateway")

TARGET_WS_OVERHEAD_P50_MS = 1.0
TARGET_RSS_PER_1000_WS_MB = 150.0
SERVER_START_TIMEOUT_S = 90.0

ECHO_SERVER_SOURCE = """
import asyncio, sys
from tornado import web, websocket

class Echo(websocket.WebSocketHandler):
    def on_message(self, message):
        self.write_message(message, binary=isinstance(message, bytes))

async def main():
    app = web.Application([(r"/echo", Echo)])
    app.listen(int(sys.argv[1]), address="127.0.0.1")
    await asyncio.Event().wait()

asyncio.run(main())
"""


# ------------------------------------------------------------------------------------------
# helpers


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE (inherited by the servers we spawn); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return int(soft)


def ms(ns: float) -> float:
    return round(ns / 1e6, 4)


def mb(nbytes: float) -> float:
    return round(nbytes / (1024 * 1024), 2)


# ------------------------------------------------------------------------------------------
# processes


def start_jupyter(fleet: Fleet, name: str, extra_args: list[str]) -> Proc:
    """``jupyter server`` with jupyter_cloudide enabled, on a free port, in a fresh tmp dir."""
    tmp = fleet.mkdtemp(f"bench-gw-{name}-")
    (tmp / "root").mkdir()
    (tmp / "data").mkdir()
    env = repo_env()
    env["JUPYTER_CLOUDIDE_DATA_DIR"] = str(tmp / "data")
    # Keep the user's own Jupyter config and runtime files out of the measurement.
    env["JUPYTER_CONFIG_DIR"] = str(tmp / "config")
    env["JUPYTER_RUNTIME_DIR"] = str(tmp / "runtime")
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    return fleet.spawn_jupyter(name, tmp, env, extra=extra_args)


def start_echo(fleet: Fleet) -> Proc:
    tmp = fleet.mkdtemp("bench-gw-echo-")
    port = free_port()
    argv = [sys.executable, "-c", ECHO_SERVER_SOURCE, str(port)]
    return fleet.spawn("echo", argv, dict(os.environ), tmp, port)


def wait_jupyter_ready(proc: Proc, *, health: bool) -> None:
    """Poll until the server answers (cloudide health out of ``starting``, or /api/status)."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    path = "/cloudide/api/health" if health else "/api/status"
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            status, body = http_get(proc, path, timeout=2.0)
        except OSError as exc:
            last = repr(exc)
        else:
            last = f"HTTP {status}"
            if status == 200:
                if not health:
                    return
                state = json.loads(body).get("status")
                last = f"health status {state!r}"
                if state != "starting":
                    return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready after {SERVER_START_TIMEOUT_S}s ({last}):\n"
                       f"{proc.tail()}")


def wait_tcp_ready(proc: Proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        with contextlib.suppress(OSError), socket.create_connection(
            ("127.0.0.1", proc.port), timeout=1.0
        ):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} not listening after {timeout}s:\n{proc.tail()}")


# ------------------------------------------------------------------------------------------
# 1. HTTP


def bench_http(proc: Proc, path: str, n: int, warmup: int) -> list[float]:
    """``n`` sequential GETs over ONE keep-alive connection; latencies in ns."""
    conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=10)
    headers = {"Authorization": f"token {proc.token}", "Connection": "keep-alive"}
    samples: list[float] = []
    try:
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(warmup + n):
            t0 = time.perf_counter_ns()
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            t1 = time.perf_counter_ns()
            if resp.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {resp.status}")
            if resp.will_close:
                raise RuntimeError(f"GET {path}: server closed the keep-alive connection")
            if i >= warmup:
                samples.append(t1 - t0)
    finally:
        conn.close()
    return samples


# ------------------------------------------------------------------------------------------
# 2. and 3. WebSocket round trips and throughput


def ws_url(proc: Proc, path: str) -> str:
    return f"ws://127.0.0.1:{proc.port}{path}"


async def ws_open(proc: Proc, path: str, *, welcome: bool) -> ClientConnection:
    headers = {"Authorization": f"token {proc.token}"} if proc.token else None
    ws = await connect(
        ws_url(proc, path), additional_headers=headers, compression=None,
        ping_interval=None, open_timeout=30, close_timeout=5, max_size=2**22,
    )
    if welcome:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if frame.get("type") != "welcome":
            raise RuntimeError(f"expected a welcome frame, got {frame!r}")
    return ws


def _health_frame(i: int) -> str:
    return json.dumps({"type": "request", "id": i, "payload": {"kind": "health"}},
                      separators=(",", ":"))


def _ping_frame(i: int) -> str:
    return json.dumps({"type": "ping", "id": i}, separators=(",", ":"))


async def _recv_id(ws: ClientConnection, expect_type: str) -> tuple[int, bool]:
    """Read frames until one of ``expect_type`` comes; returns (its id, had an error)."""
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if frame.get("type") == expect_type:
            return int(frame["id"]), "error" in frame


async def ws_rtt(ws: ClientConnection, make: Any, expect_type: str, n: int,
                 warmup: int) -> tuple[list[float], int]:
    """Sequential round trips; returns (latencies in ns, error responses)."""
    samples: list[float] = []
    errors = 0
    for i in range(warmup + n):
        text = make(i)
        t0 = time.perf_counter_ns()
        await ws.send(text)
        while True:
            got, err = await _recv_id(ws, expect_type)
            if got == i:
                break
        t1 = time.perf_counter_ns()
        if i >= warmup:
            samples.append(t1 - t0)
            errors += err
    return samples, errors


async def ws_echo_rtt(ws: ClientConnection, n: int, warmup: int) -> list[float]:
    samples: list[float] = []
    for i in range(warmup + n):
        text = _health_frame(i)
        t0 = time.perf_counter_ns()
        await ws.send(text)
        reply = await asyncio.wait_for(ws.recv(), 30)
        t1 = time.perf_counter_ns()
        if reply != text:
            raise RuntimeError("echo server answered something else")
        if i >= warmup:
            samples.append(t1 - t0)
    return samples


async def ws_pipelined(ws: ClientConnection, make: Any, expect_type: str | None, k: int,
                       window: int) -> tuple[float, int]:
    """Send ``k`` frames keeping at most ``window`` unanswered; returns (msgs/s, errors)."""
    sem = asyncio.Semaphore(window)
    errors = 0
    received = 0

    async def reader() -> None:
        nonlocal errors, received
        while received < k:
            raw = await asyncio.wait_for(ws.recv(), 30)
            if expect_type is not None:
                frame = json.loads(raw)
                if frame.get("type") != expect_type:
                    continue
                errors += "error" in frame
            received += 1
            sem.release()

    t0 = time.perf_counter()
    task = asyncio.create_task(reader())
    try:
        for i in range(k):
            await sem.acquire()
            await ws.send(make(i))
        await asyncio.wait_for(task, 60)
    finally:
        task.cancel()
    elapsed = time.perf_counter() - t0
    return round(k / elapsed, 1), errors


# ------------------------------------------------------------------------------------------
# 4. memory per idle connection


def proc_rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def proc_fds(pid: int) -> int:
    return int(psutil.Process(pid).num_fds())


async def _open_many(proc: Proc, path: str, count: int, *, welcome: bool,
                     concurrency: int = 64) -> list[ClientConnection]:
    sem = asyncio.Semaphore(concurrency)

    async def one() -> ClientConnection:
        async with sem:
            return await ws_open(proc, path, welcome=welcome)

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    conns = [r for r in results if isinstance(r, ClientConnection)]
    failures = [r for r in results if not isinstance(r, ClientConnection)]
    if failures:
        await _close_many(conns)
        raise RuntimeError(f"{len(failures)} of {count} connections to {path} failed, "
                           f"first: {failures[0]!r}")
    return conns


async def _close_many(conns: list[ClientConnection], concurrency: int = 128) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(ws: ClientConnection) -> None:
        async with sem:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 10)

    await asyncio.gather(*(one(ws) for ws in conns))


async def bench_idle_memory(proc: Proc, path: str, count: int, *, welcome: bool,
                            settle_s: float) -> dict[str, Any]:
    """RSS/fds of ``proc`` before, with ``count`` idle connections, and after closing them."""
    # Warm-up: one connection (and one request) so lazy imports are not counted as per-conn.
    ws = await ws_open(proc, path, welcome=welcome)
    if welcome:
        await ws_rtt(ws, _health_frame, "response", 5, 0)
    await ws.close()
    await asyncio.sleep(settle_s)
    rss0, fds0 = proc_rss(proc.pid), proc_fds(proc.pid)
    t0 = time.perf_counter()
    conns = await _open_many(proc, path, count, welcome=welcome)
    open_s = time.perf_counter() - t0
    await asyncio.sleep(settle_s)
    rss1, fds1 = proc_rss(proc.pid), proc_fds(proc.pid)
    still_open = sum(1 for c in conns if c.close_code is None)
    await _close_many(conns)
    await asyncio.sleep(settle_s + 1.0)
    rss2, fds2 = proc_rss(proc.pid), proc_fds(proc.pid)
    return {
        "rss_before": rss0, "rss_with": rss1, "rss_after_close": rss2,
        "fds_before": fds0, "fds_with": fds1, "fds_after_close": fds2,
        "still_open": still_open, "open_s": open_s,
    }


# ------------------------------------------------------------------------------------------
# the run


async def run_ws(args: argparse.Namespace, lat: Proc, echo: Proc, mem: Proc,
                 events: Proc) -> dict[str, Any]:
    out: dict[str, Any] = {}
    n, warm = args.n_ws, args.warmup

    log.info("ws: round trips (%d each)", n)
    ws = await ws_open(lat, "/cloudide/api/ws", welcome=True)
    try:
        rtt, rtt_err = await ws_rtt(ws, _health_frame, "response", n, warm)
        ping, _ = await ws_rtt(ws, _ping_frame, "pong", n, warm)
        log.info("ws: pipelined (%d, window %d)", args.k, args.window)
        await ws_pipelined(ws, _health_frame, "response", min(500, args.k), args.window)
        msgs, pipe_err = await ws_pipelined(ws, _health_frame, "response", args.k,
                                            args.window)
        await ws_pipelined(ws, _ping_frame, "pong", min(500, args.k), args.window)
        ping_msgs, _ = await ws_pipelined(ws, _ping_frame, "pong", args.k, args.window)
    finally:
        await ws.close()

    ews = await ws_open(echo, "/echo", welcome=False)
    try:
        echo_rtt = await ws_echo_rtt(ews, n, warm)
        await ws_pipelined(ews, _health_frame, None, min(500, args.k), args.window)
        echo_msgs, _ = await ws_pipelined(ews, _health_frame, None, args.k, args.window)
    finally:
        await ews.close()

    out.update({
        "ws_rtt_p50_ms": ms(pct(rtt, 50)), "ws_rtt_p99_ms": ms(pct(rtt, 99)),
        "ws_ping_rtt_p50_ms": ms(pct(ping, 50)), "ws_ping_rtt_p99_ms": ms(pct(ping, 99)),
        "baseline_echo_ws_rtt_p50_ms": ms(pct(echo_rtt, 50)),
        "baseline_echo_ws_rtt_p99_ms": ms(pct(echo_rtt, 99)),
        "ws_overhead_p50_ms": ms(pct(rtt, 50) - pct(echo_rtt, 50)),
        "ws_dispatch_overhead_p50_ms": ms(pct(rtt, 50) - pct(ping, 50)),
        "ws_msgs_per_s": msgs, "ws_ping_msgs_per_s": ping_msgs,
        "baseline_echo_ws_msgs_per_s": echo_msgs,
        "ws_error_responses": rtt_err + pipe_err,
    })

    log.info("memory: %d idle session-channel connections", args.idle)
    m = await bench_idle_memory(mem, "/cloudide/api/ws", args.idle, welcome=True,
                                settle_s=args.settle)
    status, body = await asyncio.to_thread(http_get, mem, "/cloudide/api/health", 5.0)
    log.info("memory: %d idle events connections (baseline)", args.idle)
    e = await bench_idle_memory(events, "/api/events/subscribe", args.idle, welcome=False,
                                settle_s=args.settle)
    scale = 1000.0 / args.idle
    out.update({
        "idle_connections": args.idle,
        "rss_idle_mb_before": mb(m["rss_before"]),
        "rss_1000_ws_mb": mb(m["rss_with"]),
        "rss_added_per_1000_ws_mb": mb((m["rss_with"] - m["rss_before"]) * scale),
        "rss_after_close_mb": mb(m["rss_after_close"]),
        "fds_before": m["fds_before"], "fds_1000_ws": m["fds_with"],
        "fds_after_close": m["fds_after_close"],
        "ws_idle_still_open": m["still_open"],
        "ws_idle_open_s": round(m["open_s"], 2),
        "baseline_events_rss_idle_mb_before": mb(e["rss_before"]),
        "baseline_events_ws_rss_added_mb": mb((e["rss_with"] - e["rss_before"]) * scale),
        "baseline_events_rss_after_close_mb": mb(e["rss_after_close"]),
        "baseline_events_ws_still_open": e["still_open"],
        "baseline_events_ws_open_s": round(e["open_s"], 2),
    })
    if status == 200:
        out["sessions_after_close"] = json.loads(body)["components"].get(
            "session_channel", {}).get("sessions")
    return out


def run(args: argparse.Namespace, fleet: Fleet) -> dict[str, Any]:
    t_start = time.perf_counter()
    fd_limit = raise_fd_limit(max(4096, 2 * args.idle + 1024))
    log.info("fd soft limit %d; starting servers", fd_limit)
    # One user holds every connection, so the per-user session cap must not evict them.
    mem_args = [f"--CloudIDEApp.ws_max_sessions_per_user={args.idle + 100}"]
    lat = start_jupyter(fleet, "latency", [])
    mem = start_jupyter(fleet, "memory", mem_args)
    events = start_jupyter(fleet, "events", mem_args)
    echo = start_echo(fleet)
    for proc in (lat, mem):
        wait_jupyter_ready(proc, health=True)
    wait_jupyter_ready(events, health=False)
    wait_tcp_ready(echo)
    log.info("servers ready after %.1fs", time.perf_counter() - t_start)

    out: dict[str, Any] = {}
    log.info("http: %d GETs each", args.n_http)
    health = bench_http(lat, "/cloudide/api/health", args.n_http, args.warmup)
    status = bench_http(lat, "/api/status", args.n_http, args.warmup)
    out.update({
        "health_http_p50_ms": ms(pct(health, 50)), "health_http_p99_ms": ms(pct(health, 99)),
        "baseline_status_http_p50_ms": ms(pct(status, 50)),
        "baseline_status_http_p99_ms": ms(pct(status, 99)),
    })
    out.update(asyncio.run(asyncio.wait_for(run_ws(args, lat, echo, mem, events), 150)))
    out["targets"] = {
        "ws_overhead_p50_le_1ms": bool(out["ws_overhead_p50_ms"] <= TARGET_WS_OVERHEAD_P50_MS),
        "rss_added_per_1000_ws_le_150mb": bool(
            out["rss_added_per_1000_ws_mb"] <= TARGET_RSS_PER_1000_WS_MB
            and out["ws_idle_still_open"] == args.idle
        ),
    }
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-http", type=int, default=2000, help="sequential GETs per route")
    p.add_argument("--n-ws", type=int, default=2000, help="sequential WS round trips per kind")
    p.add_argument("--k", type=int, default=5000, help="pipelined frames per throughput run")
    p.add_argument("--window", type=int, default=32, help="max outstanding (<= 32)")
    p.add_argument("--idle", type=int, default=1000, help="idle WS connections to hold")
    p.add_argument("--warmup", type=int, default=200, help="warm-up iterations")
    p.add_argument("--settle", type=float, default=2.0, help="seconds before RSS samples")
    p.add_argument("--quick", action="store_true", help="small counts (smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.n_http, args.n_ws, args.k, args.idle, args.warmup = 200, 200, 500, 100, 20
        args.settle = 0.5
    if not 1 <= args.window <= 32:
        p.error("--window must be between 1 and 32 (the server's in-flight limit)")
    return args


def header(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "versions": versions(
            "jupyter_server", "tornado", "websockets",
            websockets=getattr(websockets, "__version__", None),
        ),
        "params": {"n_http": args.n_http, "n_ws": args.n_ws, "k": args.k,
                   "window": args.window, "warmup": args.warmup, "cpus": os.cpu_count()},
    }


def main(argv: list[str] | None = None) -> int:
    return bench_main("gateway", argv, parse_args, run, header, separators=(",", ":"))


if __name__ == "__main__":
    sys.exit(main())
