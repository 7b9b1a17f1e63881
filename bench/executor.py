"""Executor benchmark: our execute API (REST and WS) against a raw jupyter_client round trip on
the same warm kernel, and first-execution latency from the warm pool against a cold start.

What it measures (all over loopback, against real ``jupyter server`` processes it starts):

1. Round trip of ``1+1`` on ONE warm kernel, created through our API
   (``POST cloudide/api/execute {"code": "1"}`` with no target), three ways, side by side:

   - ``raw``: a ``jupyter_client`` ``BlockingKernelClient`` in this process, connected to the
     same kernel through its connection file (the server's ``JUPYTER_RUNTIME_DIR`` is a temp
     dir of ours; the executor's kernels use IPC transport). One round trip = ``execute`` sent
     until BOTH its ``execute_reply`` and its ``status: idle`` have arrived, which is how our
     executor decides that a run is over.
   - ``rest``: ``POST cloudide/api/execute {"code": "1+1", "kernel_id": ...}`` over one
     keep-alive HTTP connection (request sent -> response body read).
   - ``ws``: a ``request`` of kind ``execute`` on one ``cloudide/api/ws`` socket (frame sent ->
     its ``response`` frame read; the ``execute.output`` event comes before it).

   The three alternate in blocks (``--block`` each, the order rotating every round) to reduce
   drift. All three clients share the kernel's iopub broadcast, so every block starts with one
   untimed round trip that drains what the other clients left queued.
   Targets: ``rest_p50 <= 1.3 x raw_p50`` and ``ws_p50 <= 1.3 x raw_p50``.

2. First execution: ``POST cloudide/api/execute {"code": "1+1"}`` with no target,
   ``pool_first_exec_ms`` on the server above (warm pool size 1; before each sample the health
   endpoint must report ``components.executor.pool.ready.python3 == 1``), against
   ``cold_first_exec_ms`` on a second server with ``warm_pool_size=0`` (every sample starts a
   kernel). Each sampled kernel is shut down (``DELETE /api/kernels/<id>``) before the next.
   Target: the pool's median <= 100 ms.

Both servers run with ``CloudIDEApp.rate_limits`` raised for ``execute`` (the limiter still
runs, it just never refuses). Every process started is killed on exit, on error too.

Run it from the repository root, with the project's virtualenv active::

    python bench/executor.py           # prints ONE JSON line on stdout; logs go to stderr
    python bench/executor.py --quick   # smaller counts, for a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import websockets
from _common import Fleet, Proc, bench_main, http_get, pct, repo_env, time_limit, versions
from jupyter_client.blocking import BlockingKernelClient
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

log = logging.getLogger("bench.executor")

TARGET_RATIO_P50 = 1.3
TARGET_POOL_FIRST_EXEC_MS = 100.0
SERVER_START_TIMEOUT_S = 90.0
IO_TIMEOUT_S = 30.0
CODE = "1+1"
RATE_LIMITS = '{"execute": {"requests_per_minute": 100000000}}'


def ms(ns: float) -> float:
    return round(ns / 1e6, 3)


# ------------------------------------------------------------------------------------------
# servers


def start_server(fleet: Fleet, name: str, pool_size: int,
                 server_args: list[str] | None = None) -> tuple[Proc, Path]:
    """``jupyter server`` with jupyter_cloudide; returns it and its runtime dir."""
    tmp = fleet.mkdtemp(f"bench-ex-{name}-")
    for sub in ("root", "data", "runtime"):
        (tmp / sub).mkdir()
    env = repo_env()
    env["JUPYTER_CLOUDIDE_DATA_DIR"] = str(tmp / "data")
    env["JUPYTER_CONFIG_DIR"] = str(tmp / "config")
    env["JUPYTER_RUNTIME_DIR"] = str(tmp / "runtime")
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    extra = [
        f"--CloudIDEApp.warm_pool_size={pool_size}",
        f"--CloudIDEApp.rate_limits={RATE_LIMITS}",
        *(server_args or []),
    ]
    return fleet.spawn_jupyter(name, tmp, env, extra=extra), tmp / "runtime"


def health(proc: Proc) -> dict[str, Any]:
    status, body = http_get(proc, "/cloudide/api/health", timeout=5.0)
    if status != 200:
        raise RuntimeError(f"{proc.name}: health answered HTTP {status}")
    return dict(json.loads(body))


def wait_until(proc: Proc, what: str, check: Any, timeout: float = SERVER_START_TIMEOUT_S) -> None:
    """Poll ``check(health)`` every 20 ms until true."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            report = health(proc)
        except (OSError, RuntimeError) as exc:
            last = repr(exc)
        else:
            if check(report):
                return
            last = json.dumps(report.get("components", {}).get("executor"))
        time.sleep(0.02)
    raise RuntimeError(f"{proc.name}: {what} not reached after {timeout}s ({last})")


def server_ready(report: dict[str, Any]) -> bool:
    return report.get("status") != "starting"


def pool_ready(report: dict[str, Any]) -> bool:
    executor = report.get("components", {}).get("executor", {})
    return bool(executor.get("pool", {}).get("ready", {}).get("python3", 0) >= 1)


class Http:
    """One keep-alive HTTP connection to a server, with its token."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=IO_TIMEOUT_S)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.headers = {"Authorization": f"token {proc.token}", "Connection": "keep-alive",
                        "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body, headers=self.headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.will_close:
            raise RuntimeError(f"{method} {path}: server closed the keep-alive connection")
        return resp.status, data

    def execute(self, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """One timed ``POST cloudide/api/execute``; (ns, result). Raises unless status ok."""
        raw = json.dumps(body, separators=(",", ":")).encode()
        t0 = time.perf_counter_ns()
        status, data = self.call("POST", "/cloudide/api/execute", raw)
        t1 = time.perf_counter_ns()
        result = check_result(status, data)
        return t1 - t0, result

    def delete_kernel(self, kernel_id: str) -> None:
        status, data = self.call("DELETE", f"/api/kernels/{kernel_id}")
        if status not in (204, 404):
            log.warning("DELETE kernel %s: HTTP %d %s", kernel_id, status, data[:200])

    def close(self) -> None:
        self.conn.close()


def check_result(status: int, data: bytes) -> dict[str, Any]:
    if status != 200:
        raise RuntimeError(f"execute: HTTP {status}: {data[:300]!r}")
    result = dict(json.loads(data))
    if result.get("status") != "ok":
        raise RuntimeError(f"execute: result {result!r}")
    return result


# ------------------------------------------------------------------------------------------
# the three clients of the warm kernel


class RawClient:
    """``jupyter_client`` straight on the kernel's sockets (no server in between)."""

    def __init__(self, connection_file: Path) -> None:
        self.kc = BlockingKernelClient(connection_file=str(connection_file))
        self.kc.load_connection_file()
        self.transport = self.kc.transport
        self.kc.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
        self.kc.wait_for_ready(timeout=IO_TIMEOUT_S)

    def drain(self) -> int:
        """Drop what the other clients' runs left on our iopub subscription (untimed)."""
        dropped = 0
        while self.kc.iopub_channel.msg_ready():
            self.kc.get_iopub_msg(timeout=0)
            dropped += 1
        return dropped

    def once(self) -> float:
        t0 = time.perf_counter_ns()
        msg_id = self.kc.execute(CODE, store_history=True, stop_on_error=True,
                                 allow_stdin=False)
        reply: dict[str, Any] | None = None
        while reply is None:
            msg = self.kc.get_shell_msg(timeout=IO_TIMEOUT_S)
            if msg["parent_header"].get("msg_id") == msg_id:
                reply = msg
        idle = False
        while not idle:
            msg = self.kc.get_iopub_msg(timeout=IO_TIMEOUT_S)
            idle = (msg["parent_header"].get("msg_id") == msg_id
                    and msg["header"]["msg_type"] == "status"
                    and msg["content"].get("execution_state") == "idle")
        t1 = time.perf_counter_ns()
        if reply["content"].get("status") != "ok":
            raise RuntimeError(f"raw execute: {reply['content']!r}")
        return t1 - t0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.kc.stop_channels()


class WsClient:
    """The session channel, ``request{kind: execute}`` round trips."""

    def __init__(self, proc: Proc) -> None:
        # connect() is a context manager (websockets >= 17 warns when it is not used as one)
        self._cm = ws_connect(
            f"ws://127.0.0.1:{proc.port}/cloudide/api/ws",
            additional_headers={"Authorization": f"token {proc.token}"},
            compression=None, open_timeout=IO_TIMEOUT_S, close_timeout=5, max_size=2**22,
            ping_interval=None,
        )
        self.ws: ClientConnection = self._cm.__enter__()
        self.ws.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        frame = json.loads(self.ws.recv(timeout=IO_TIMEOUT_S))
        if frame.get("type") != "welcome":
            raise RuntimeError(f"expected a welcome frame, got {frame!r}")
        self.next_id = 0
        self.events = 0
        #: send -> first ``execute.output`` event frame of the last round trip, ns
        self.last_event_ns: int | None = None

    def execute(self, payload: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        self.next_id += 1
        rid = self.next_id
        text = json.dumps({"type": "request", "id": rid,
                           "payload": {"kind": "execute", **payload}}, separators=(",", ":"))
        first_event: int | None = None
        t0 = time.perf_counter_ns()
        self.ws.send(text)
        while True:
            frame = json.loads(self.ws.recv(timeout=IO_TIMEOUT_S))
            if frame.get("type") == "response" and frame.get("id") == rid:
                break
            if frame.get("type") == "event":
                self.events += 1
                if first_event is None:
                    first_event = time.perf_counter_ns()
        t1 = time.perf_counter_ns()
        self.last_event_ns = None if first_event is None else first_event - t0
        if "error" in frame:
            raise RuntimeError(f"ws execute: {frame['error']!r}")
        result = dict(frame["payload"])
        if result.get("status") != "ok":
            raise RuntimeError(f"ws execute: result {result!r}")
        return t1 - t0, result

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._cm.__exit__(None, None, None)


# ------------------------------------------------------------------------------------------
# the run


def bench_round_trips(args: argparse.Namespace, proc: Proc, kernel_id: str, runtime: Path,
                      http: Http) -> dict[str, Any]:
    conn_file = runtime / f"kernel-{kernel_id}.json"
    if not conn_file.exists():
        raise RuntimeError(f"no connection file {conn_file}")
    raw = RawClient(conn_file)
    ws = WsClient(proc)
    body = {"code": CODE, "kernel_id": kernel_id}
    samples: dict[str, list[float]] = {"raw": [], "rest": [], "ws": []}
    server_s: dict[str, list[float]] = {"rest": [], "ws": []}
    ws_event: list[float] = []

    def one(kind: str) -> tuple[float, float | None]:
        if kind == "raw":
            return raw.once(), None
        if kind == "rest":
            t, result = http.execute(body)
        else:
            t, result = ws.execute(body)
        if not any(o.get("output_type") == "execute_result" for o in result["outputs"]):
            raise RuntimeError(f"{kind}: no execute_result in {result!r}")
        return t, float(result["duration_s"])

    try:
        log.info("round trips: warm-up (%d each)", args.warmup)
        for kind in samples:
            if kind == "raw":
                raw.drain()
            for _ in range(args.warmup):
                one(kind)
        order = ["raw", "rest", "ws"]
        rounds = -(-args.n // args.block)
        log.info("round trips: %d rounds of %d each (raw, rest, ws rotating)", rounds,
                 args.block)
        for r in range(rounds):
            for kind in order[r % 3:] + order[:r % 3]:
                if kind == "raw":
                    raw.drain()
                one(kind)  # untimed: drains the iopub traffic the other clients caused
                for _ in range(min(args.block, args.n - len(samples[kind]))):
                    t, dur = one(kind)
                    samples[kind].append(t)
                    if dur is not None:
                        server_s[kind].append(dur)
                    if kind == "ws" and ws.last_event_ns is not None:
                        ws_event.append(ws.last_event_ns)
        transport = raw.transport
        ws_events = ws.events
    finally:
        raw.close()
        ws.close()

    raw_p50 = pct(samples["raw"], 50)
    out: dict[str, Any] = {"kernel_transport": transport}
    for kind in ("raw", "rest", "ws"):
        out[f"{kind}_p50_ms"] = ms(pct(samples[kind], 50))
        out[f"{kind}_p99_ms"] = ms(pct(samples[kind], 99))
        out[f"{kind}_mean_ms"] = ms(statistics.fmean(samples[kind]))
        if kind != "raw":
            out[f"{kind}_ratio_p50"] = round(pct(samples[kind], 50) / raw_p50, 3)
            out[f"{kind}_server_duration_p50_ms"] = round(
                pct(server_s[kind], 50) * 1000, 3)
    # The execute.output event frame precedes the response frame; a gap of ~40 ms between
    # the two is Nagle's algorithm meeting the client's delayed ACK (the server's socket
    # without TCP_NODELAY holds the second small write until the first is acknowledged).
    out["ws_event_p50_ms"] = ms(pct(ws_event, 50))
    out["ws_execute_output_events"] = ws_events
    return out


def sample_first_exec(http: Http, proc: Proc, n: int, *, wait_pool: bool,
                      settle_s: float) -> tuple[list[float], list[str]]:
    """``n`` timed ``POST execute`` with no target; each new kernel is deleted afterwards."""
    samples: list[float] = []
    kernels: list[str] = []
    for i in range(n):
        if wait_pool:
            wait_until(proc, "pool ready", pool_ready, timeout=60)
        time.sleep(settle_s)
        t, result = http.execute({"code": CODE})
        samples.append(ms(t))
        kernels.append(result["kernel_id"])
        log.info("%s first exec %d/%d: %.1f ms (kernel %s)", proc.name, i + 1, n, ms(t),
                 result["kernel_id"][:8])
        http.delete_kernel(result["kernel_id"])
    return samples, kernels


def run(args: argparse.Namespace, fleet: Fleet) -> dict[str, Any]:
    with time_limit(args.max_runtime):
        return _run(args, fleet)


def _run(args: argparse.Namespace, fleet: Fleet) -> dict[str, Any]:
    t0 = time.perf_counter()
    warm, warm_runtime = start_server(fleet, "warm", pool_size=1, server_args=args.server_arg)
    cold, _ = start_server(fleet, "cold", pool_size=0, server_args=args.server_arg)
    wait_until(warm, "server ready", server_ready)
    wait_until(cold, "server ready", server_ready)
    wait_until(warm, "pool ready", pool_ready, timeout=60)
    log.info("servers ready (pool filled) after %.1fs", time.perf_counter() - t0)

    out: dict[str, Any] = {}
    warm_http, cold_http = Http(warm), Http(cold)
    kernel_id: str | None = None
    try:
        # The kernel of the round trips, created through our API (it takes the pool kernel).
        _, created = warm_http.execute({"code": "1"})
        kernel_id = str(created["kernel_id"])
        wait_until(warm, "pool refilled", pool_ready, timeout=60)
        time.sleep(args.settle)
        out.update(bench_round_trips(args, warm, kernel_id, warm_runtime, warm_http))

        log.info("first execution from the warm pool (%d samples)", args.samples)
        pool, _ = sample_first_exec(warm_http, warm, args.samples, wait_pool=True,
                                    settle_s=args.settle)
        log.info("first execution, cold start (1 warm-up + %d samples)", args.samples)
        cold_all, _ = sample_first_exec(cold_http, cold, args.samples + 1, wait_pool=False,
                                        settle_s=args.settle)
        cold_warmup, cold_samples = cold_all[0], cold_all[1:]
        out.update({
            "pool_first_exec_ms": round(statistics.median(pool), 3),
            "pool_first_exec_samples_ms": pool,
            "cold_first_exec_ms": round(statistics.median(cold_samples), 3),
            "cold_first_exec_samples_ms": cold_samples,
            "cold_first_exec_warmup_ms": cold_warmup,
        })
        pool_state = health(warm)["components"]["executor"]["pool"]
        out["pool_taken"] = pool_state.get("taken")
        out["pool_misses"] = pool_state.get("misses")
    finally:
        if kernel_id is not None:
            with contextlib.suppress(Exception):
                warm_http.delete_kernel(kernel_id)
        warm_http.close()
        cold_http.close()

    out["targets"] = {
        "rest_p50_le_1.3x_raw": bool(out["rest_ratio_p50"] <= TARGET_RATIO_P50),
        "ws_p50_le_1.3x_raw": bool(out["ws_ratio_p50"] <= TARGET_RATIO_P50),
        "pool_first_exec_le_100ms": bool(
            out["pool_first_exec_ms"] <= TARGET_POOL_FIRST_EXEC_MS),
    }
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500, help="timed round trips per client")
    p.add_argument("--block", type=int, default=50, help="round trips per block")
    p.add_argument("--warmup", type=int, default=50, help="untimed round trips per client")
    p.add_argument("--samples", type=int, default=5, help="first-execution samples per side")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds of quiet before the round trips and each first execution")
    p.add_argument("--max-runtime", type=int, default=240, help="hard limit, seconds")
    p.add_argument("--quick", action="store_true", help="small counts (smoke test)")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra jupyter server argument, e.g. "
                        "--server-arg=--CloudIDEApp.kernel_metering=False (repeatable)")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.block, args.warmup, args.samples, args.settle = 100, 25, 10, 2, 0.5
    if args.n < 1 or args.block < 1 or args.samples < 1:
        p.error("--n, --block and --samples must be >= 1")
    return args


def header(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "versions": versions(
            "jupyter_server", "jupyter_client", "ipykernel", "pyzmq", "tornado", "websockets",
            websockets=getattr(websockets, "__version__", None),
        ),
        "params": {"n": args.n, "block": args.block, "warmup": args.warmup,
                   "samples": args.samples, "settle_s": args.settle, "code": CODE,
                   "server_args": args.server_arg,
                   "cpus": os.cpu_count()},
    }


def main(argv: list[str] | None = None) -> int:
    return bench_main("executor", argv, parse_args, run, header, separators=(",", ":"))


if __name__ == "__main__":
    sys.exit(main())
