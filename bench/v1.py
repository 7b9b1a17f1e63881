"""v1 benchmark: what ``cloudide/v1`` (the OpenAI-compatible API) adds over calling the model
directly, side by side with the LiteLLM proxy.

Targets (the issue): added time-to-first-token <= 2 ms at the median; non-streaming
requests/s >= 2x the LiteLLM proxy's.

Set-up (all on loopback): the fake LLM provider of the test suite (``tests/fake_upstream.py``,
the real OpenAI wire format over a real socket) runs in a child process of its own (this script
with ``--upstream-child``). Model ``gpt-4o-mini`` answers at once: ``--chunks`` text deltas of
``--chunk-size`` characters (streaming) or the same text in one body; model ``gpt-4o`` is the
slow stream for the held-streams figure (``--slow-chunks`` deltas, ``--slow-delay`` s apart).
Three sides call it:

1. ``direct``: the client straight on the fake upstream.
2. ``ours``: one ``jupyter server`` with jupyter_cloudide (``bench/agent.py``'s set-up: the
   fake upstream its only provider, the index off, config in ``jupyter_server_config.json``)
   and the ``v1`` rate limit raised so the limiter runs but never refuses; called at
   ``/cloudide/v1`` with ``Authorization: Bearer <server token>``.
3. ``litellm``: the LiteLLM proxy (``litellm --config``, one worker, no database; a random
   ``master_key``, which it insists on, sent as the bearer) with both models pointing at the
   fake upstream, from a throwaway virtualenv (``--litellm-venv``, default
   ``/tmp/litellm_venv``: ``pip install 'litellm[proxy]'`` there, never in the project's,
   which would downgrade the ``openai`` SDK).
   If its ``litellm`` is missing or the proxy does not answer within ``--litellm-start-timeout``
   s, the side is skipped and ``litellm_proxy.skipped`` says why.

Figures:

- ``ttft``: sequential streaming requests, the ``openai`` SDK (``AsyncOpenAI``, retries off,
  one client per side), ``stream_options.include_usage``; TTFT = the first chunk with
  non-empty ``delta.content``, total = the end of the stream. ``--n`` per side in blocks of
  ``--block``, the order of the sides rotating every round, after ``--warmup`` each.
  ``added_ttft_p50_ms``/``_p99_ms`` of each proxy = its percentile minus direct's.
- ``rps``: non-streaming requests for ``--rps-seconds`` per side, ``--concurrency`` tasks on
  one shared ``aiohttp.ClientSession`` (raw JSON posts: far cheaper for the client than the
  SDK or httpx, whose pool scans every idle connection per request; this
  matters when client and servers share the cores), after a 1 s warm-up. Requests/s of the
  answers that were 200 with the expected text, error count, latency p50/p99, and the CPU per
  request of the proxy process and of the fake upstream (/proc).
- ``streams``: ``--streams`` streaming requests to the slow model opened at once (httpx);
  completed = got every delta and ``[DONE]`` with status 200; ``peak_open`` = most streams
  that had their first delta and not yet their end at one time.

Run it from the repository root, with the project's virtualenv active::

    python bench/v1.py           # prints ONE JSON line on stdout; logs go to stderr
    python bench/v1.py --quick   # smaller counts, for a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from _common import REPO, Fleet, Proc, bench_main, free_port, pct, repo_env, time_limit, versions
from agent import ms, proc_cpu_s, reply_text, serve_upstream, stats, upstream_address, wait_ready
from agent import start_server as agent_start_server

TESTS = REPO / "tests"

log = logging.getLogger("bench.v1")

TARGET_ADDED_TTFT_MS = 2.0
TARGET_RPS_RATIO = 2.0
IO_TIMEOUT_S = 60.0
MODEL = "gpt-4o-mini"
SLOW_MODEL = "gpt-4o"
RATE_LIMITS = {"v1": {"requests_per_minute": 100_000_000, "tokens_per_minute": None}}
DEFAULT_LITELLM_VENV = "/tmp/litellm_venv"
MESSAGES = [{"role": "user", "content": "hi"}]


# ------------------------------------------------------------------------------------------
# the upstream child (this script with --upstream-child)


def upstream_child(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--upstream-child", action="store_true")
    p.add_argument("--chunks", type=int, required=True)
    p.add_argument("--chunk-size", type=int, required=True)
    p.add_argument("--slow-chunks", type=int, required=True)
    p.add_argument("--slow-delay", type=float, required=True)
    args = p.parse_args(argv)
    sys.path.insert(0, str(TESTS))
    from fake_upstream import FakeUpstream, Turn

    fast = reply_text(args.chunks, args.chunk_size)
    slow = reply_text(args.slow_chunks, args.chunk_size)

    class Fixed(FakeUpstream):  # type: ignore[misc]  # tests/ is not on mypy's path
        """``gpt-4o``: the slow stream; anything else: the fast reply."""

        def _next_turn(self, model: str | None) -> Turn:
            self.requests.clear()  # bounded memory over many thousands of requests
            if model == SLOW_MODEL:
                return Turn(text=slow, chunk_size=args.chunk_size,
                            delay_between_chunks=args.slow_delay)
            return Turn(text=fast, chunk_size=args.chunk_size)

    return serve_upstream(Fixed)


# ------------------------------------------------------------------------------------------
# processes


def start_upstream(fleet: Fleet, args: argparse.Namespace) -> tuple[Proc, dict[str, str]]:
    tmp = fleet.mkdtemp("bench-v1-upstream-")
    argv = [sys.executable, str(Path(__file__).resolve()), "--upstream-child",
            f"--chunks={args.chunks}", f"--chunk-size={args.chunk_size}",
            f"--slow-chunks={args.slow_chunks}", f"--slow-delay={args.slow_delay}"]
    proc = fleet.spawn("upstream", argv, repo_env(), tmp)
    return proc, upstream_address(proc)


def start_server(fleet: Fleet, upstream: dict[str, str]) -> Proc:
    """``bench/agent.py``'s server, with the ``v1`` rate limit raised instead of ``chat``'s."""
    return agent_start_server(fleet, upstream, [], rate_limits=RATE_LIMITS)


def start_litellm(fleet: Fleet, args: argparse.Namespace, upstream: dict[str, str],
                  master_key: str) -> tuple[Proc | None, str]:
    """The LiteLLM proxy on a free port; (proc, "") or (None, why it was skipped)."""
    exe = Path(args.litellm_venv) / "bin" / "litellm"
    if not exe.exists():
        return None, f"{exe} not found (pip install 'litellm[proxy]' in {args.litellm_venv})"
    tmp = fleet.mkdtemp("bench-v1-litellm-")
    params = {"api_base": upstream["base_url"], "api_key": upstream["api_key"]}
    config = {
        "model_list": [{"model_name": m, "litellm_params": {"model": f"openai/{m}", **params}}
                       for m in (MODEL, SLOW_MODEL)],
        "litellm_settings": {"drop_params": True, "telemetry": False, "num_retries": 0,
                             "request_timeout": IO_TIMEOUT_S},
        # it refuses to start without one; a bearer like ours is checked on every request
        "general_settings": {"master_key": master_key},
    }
    (tmp / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH") and not k.startswith("OPENAI_")}
    env["PATH"] = f"{exe.parent}{os.pathsep}{env.get('PATH', '')}"
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no fetch from the internet at start
    env["LITELLM_LOG"] = "ERROR"
    env["LITELLM_TELEMETRY"] = "False"
    port = free_port()
    argv = [str(exe), "--config", str(tmp / "config.yaml"), "--host", "127.0.0.1",
            "--port", str(port), "--num_workers", "1"]
    proc = fleet.spawn("litellm", argv, env, tmp, port)
    import httpx

    deadline = time.monotonic() + args.litellm_start_timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            why = f"litellm exited with {proc.popen.returncode}: {proc.tail(5)[-500:]}"
            fleet.stop(proc)
            return None, why
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/health/liveliness", timeout=2)
            if r.status_code == 200:
                return proc, ""
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    fleet.stop(proc)
    return None, f"not answering after {args.litellm_start_timeout}s ({last})"


# ------------------------------------------------------------------------------------------
# the clients


class Side:
    """One way to reach the model: a base URL, a bearer, and the process to meter."""

    def __init__(self, name: str, base_url: str, api_key: str, pid: int) -> None:
        from openai import AsyncOpenAI

        self.name, self.base_url, self.api_key, self.pid = name, base_url, api_key, pid
        self.sdk = AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0,
                               timeout=IO_TIMEOUT_S)
        self.headers = {"Authorization": f"Bearer {api_key}"}

    async def stream_turn(self, text: str) -> dict[str, float]:
        parts: list[str] = []
        first = None
        usage = None
        t0 = time.perf_counter()
        stream = await self.sdk.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta is not None and choice.delta.content:
                    if first is None:
                        first = time.perf_counter()
                    parts.append(choice.delta.content)
        t1 = time.perf_counter()
        if "".join(parts) != text or usage is None or first is None:
            raise RuntimeError(f"{self.name}: unexpected reply {''.join(parts)!r}, "
                               f"usage {usage!r}")
        return {"ttft": first - t0, "total": t1 - t0}


async def ttft_phase(args: argparse.Namespace, sides: list[Side], text: str
                     ) -> dict[str, Any]:
    for side in sides:
        for _ in range(args.warmup):
            await side.stream_turn(text)
    samples: dict[str, list[dict[str, float]]] = {s.name: [] for s in sides}
    rounds = -(-args.n // args.block)
    log.info("ttft: %d rounds of %d streaming requests per side", rounds, args.block)
    for r in range(rounds):
        order = sides[r % len(sides):] + sides[:r % len(sides)]
        for side in order:
            for _ in range(min(args.block, args.n - len(samples[side.name]))):
                samples[side.name].append(await side.stream_turn(text))
    out: dict[str, Any] = {}
    for name, rows in samples.items():
        out[name] = {"ttft": stats([s["ttft"] for s in rows]),
                     "total": stats([s["total"] for s in rows]), "n": len(rows)}
    direct = [s["ttft"] for s in samples["direct"]]
    for name, rows in samples.items():
        if name == "direct":
            continue
        values = [s["ttft"] for s in rows]
        out[name]["added_ttft_p50_ms"] = ms(pct(values, 50) - pct(direct, 50))
        out[name]["added_ttft_p99_ms"] = ms(pct(values, 99) - pct(direct, 99))
    return out


async def rps_phase(args: argparse.Namespace, side: Side, text: str, upstream_pid: int
                    ) -> dict[str, Any]:
    """Requests/s with an aiohttp client: httpx's connection pool scans every idle
    connection per request (5-7 ms of client CPU per request at concurrency 50 against our
    server, more than the server's own 3.6 ms), so with httpx the client, sharing the same
    two cores, was what the figure measured. The client's CPU per request is reported."""
    import aiohttp

    body = json.dumps({"model": MODEL, "messages": MESSAGES})
    url = side.base_url + "/chat/completions"
    headers = {**side.headers, "Content-Type": "application/json"}
    lat: list[float] = []
    errors: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=IO_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers=headers) as client:
        async def worker(until: float, record: bool) -> None:
            while time.perf_counter() < until:
                t0 = time.perf_counter()
                try:
                    async with client.post(url, data=body) as r:
                        raw = await r.read()
                    ok = r.status == 200 and \
                        json.loads(raw)["choices"][0]["message"]["content"] == text
                    why = "" if ok else f"HTTP {r.status}"
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError,
                        KeyError) as exc:
                    ok, why = False, type(exc).__name__
                if not record:
                    continue
                if ok:
                    lat.append(time.perf_counter() - t0)
                else:
                    errors[why] = errors.get(why, 0) + 1

        warm = time.perf_counter() + 1.0
        await asyncio.gather(*(worker(warm, False) for _ in range(args.concurrency)))
        cpu0 = (proc_cpu_s(side.pid), proc_cpu_s(upstream_pid), time.process_time())
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(t0 + args.rps_seconds, True)
                               for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - t0
        cpu1 = (proc_cpu_s(side.pid), proc_cpu_s(upstream_pid), time.process_time())
    n = len(lat)
    out = {"requests_per_s": round(n / elapsed, 1), "ok": n, "errors": errors,
           "latency": stats(lat), "seconds": round(elapsed, 2),
           "upstream_cpu_ms_per_request": ms((cpu1[1] - cpu0[1]) / max(1, n)),
           "client_cpu_ms_per_request": ms((cpu1[2] - cpu0[2]) / max(1, n))}
    if side.name != "direct":
        out["proxy_cpu_ms_per_request"] = ms((cpu1[0] - cpu0[0]) / max(1, n))
    log.info("rps %s: %.1f/s (%d errors)", side.name, out["requests_per_s"],
             sum(errors.values()))
    return out


async def streams_phase(args: argparse.Namespace, side: Side, text: str) -> dict[str, Any]:
    import httpx

    body = {"model": SLOW_MODEL, "messages": MESSAGES, "stream": True}
    url = side.base_url + "/chat/completions"
    limits = httpx.Limits(max_connections=args.streams + 10,
                          max_keepalive_connections=args.streams + 10)
    state = {"open": 0, "peak": 0}
    errors: dict[str, int] = {}
    timeout = IO_TIMEOUT_S + args.slow_chunks * args.slow_delay

    async def one(client: httpx.AsyncClient) -> bool:
        parts: list[str] = []
        opened = done = False
        why = ""
        try:
            async with client.stream("POST", url, json=body) as r:
                if r.status_code != 200:
                    why = f"HTTP {r.status_code}"
                else:
                    async for line in r.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        data = line[6:]
                        if data == "[DONE]":
                            done = True
                            break
                        chunk = json.loads(data)
                        if "error" in chunk:
                            why = "error event"
                            break
                        for choice in chunk.get("choices") or ():
                            piece = (choice.get("delta") or {}).get("content")
                            if piece:
                                parts.append(piece)
                                if not opened:
                                    opened = True
                                    state["open"] += 1
                                    state["peak"] = max(state["peak"], state["open"])
        except (httpx.HTTPError, ValueError) as exc:
            why = type(exc).__name__
        finally:
            if opened:
                state["open"] -= 1
        ok = done and "".join(parts) == text
        if not ok:
            why = why or ("truncated" if not done else "wrong text")
            errors[why] = errors.get(why, 0) + 1
        return ok

    async with httpx.AsyncClient(limits=limits, timeout=timeout, headers=side.headers) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(client) for _ in range(args.streams)))
        elapsed = time.perf_counter() - t0
    out = {"opened": args.streams, "completed": sum(results), "errors": errors,
           "peak_open": state["peak"], "seconds": round(elapsed, 2),
           "ideal_seconds": round(args.slow_chunks * args.slow_delay, 2)}
    log.info("streams %s: %d/%d completed, peak %d open, %.1f s", side.name, out["completed"],
             args.streams, out["peak_open"], elapsed)
    return out


# ------------------------------------------------------------------------------------------
# the run


async def bench(args: argparse.Namespace, sides: list[Side], upstream_pid: int
                ) -> dict[str, Any]:
    text = reply_text(args.chunks, args.chunk_size)
    slow = reply_text(args.slow_chunks, args.chunk_size)
    try:
        out: dict[str, Any] = {"ttft": await ttft_phase(args, sides, text)}
        await asyncio.sleep(args.settle)
        out["rps"] = {}
        for side in sides:
            out["rps"][side.name] = await rps_phase(args, side, text, upstream_pid)
            await asyncio.sleep(args.settle)
        out["streams"] = {}
        for side in sides:
            out["streams"][side.name] = await streams_phase(args, side, slow)
            await asyncio.sleep(args.settle)
        return out
    finally:
        for side in sides:
            await side.sdk.close()


def run(args: argparse.Namespace, fleet: Fleet) -> dict[str, Any]:
    for name in ("httpx", "httpx2", "httpcore", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)  # a line per request otherwise
    with time_limit(args.max_runtime):
        t0 = time.perf_counter()
        up_proc, upstream = start_upstream(fleet, args)
        server = start_server(fleet, upstream)
        litellm: Proc | None = None
        master_key = "sk-bench-" + secrets.token_hex(16)
        skipped = "--no-litellm"
        if not args.no_litellm:
            litellm, skipped = start_litellm(fleet, args, upstream, master_key)
        wait_ready(server)
        log.info("upstream pid %d, server pid %d, litellm %s; ready after %.1fs", up_proc.pid,
                 server.pid, litellm.pid if litellm else f"skipped ({skipped})",
                 time.perf_counter() - t0)
        sides = [Side("direct", upstream["base_url"], upstream["api_key"], up_proc.pid),
                 Side("ours", f"http://127.0.0.1:{server.port}/cloudide/v1", server.token,
                      server.pid)]
        if litellm is not None:
            sides.append(Side("litellm", f"http://127.0.0.1:{litellm.port}/v1", master_key,
                              litellm.pid))
        figures = asyncio.run(bench(args, sides, up_proc.pid))
        rps = figures["rps"]
        out: dict[str, Any] = {
            "added_ttft_p50_ms": figures["ttft"]["ours"]["added_ttft_p50_ms"],
            "added_ttft_p99_ms": figures["ttft"]["ours"]["added_ttft_p99_ms"],
            "requests_per_s": {k: v["requests_per_s"] for k, v in rps.items()},
            "streams_completed": {k: v["completed"] for k, v in figures["streams"].items()},
            **figures,
        }
        if litellm is not None:
            out["litellm_proxy"] = {
                "version": litellm_version(args),
                "added_ttft_p50_ms": figures["ttft"]["litellm"]["added_ttft_p50_ms"],
                "added_ttft_p99_ms": figures["ttft"]["litellm"]["added_ttft_p99_ms"]}
            ratio = rps["ours"]["requests_per_s"] / max(1e-9, rps["litellm"]["requests_per_s"])
            out["rps_ratio_ours_over_litellm"] = round(ratio, 2)
            rps_target: bool | None = bool(ratio >= TARGET_RPS_RATIO)
        else:
            out["litellm_proxy"] = {"skipped": skipped}
            rps_target = None
        out["targets"] = {
            "added_ttft_p50_le_2ms": bool(out["added_ttft_p50_ms"] <= TARGET_ADDED_TTFT_MS),
            "rps_ge_2x_litellm": rps_target,
            "all_streams_completed": bool(figures["streams"]["ours"]["completed"]
                                          == args.streams),
        }
        out["server_pid"] = server.pid
        return out


def litellm_version(args: argparse.Namespace) -> str:
    site = sorted((Path(args.litellm_venv) / "lib").glob("python*/site-packages"))
    for path in site:
        for dist in path.glob("litellm-*.dist-info"):
            return dist.name.removeprefix("litellm-").removesuffix(".dist-info")
    return "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="timed streaming requests per side")
    p.add_argument("--block", type=int, default=20, help="requests per block")
    p.add_argument("--warmup", type=int, default=20, help="untimed requests per side")
    p.add_argument("--chunks", type=int, default=20, help="text deltas in each reply")
    p.add_argument("--chunk-size", type=int, default=8, help="characters per delta")
    p.add_argument("--concurrency", type=int, default=50, help="tasks in the requests/s test")
    p.add_argument("--rps-seconds", type=float, default=15.0, help="per side")
    p.add_argument("--streams", type=int, default=200, help="slow streams opened at once")
    p.add_argument("--slow-chunks", type=int, default=40, help="deltas of a slow stream")
    p.add_argument("--slow-delay", type=float, default=0.1, help="seconds between them")
    p.add_argument("--settle", type=float, default=1.0, help="seconds between phases")
    p.add_argument("--litellm-venv", default=DEFAULT_LITELLM_VENV)
    p.add_argument("--litellm-start-timeout", type=float, default=120.0)
    p.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM proxy")
    p.add_argument("--max-runtime", type=int, default=400, help="hard limit, seconds")
    p.add_argument("--quick", action="store_true", help="small counts (smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.block, args.warmup, args.settle = 40, 10, 5, 0.3
        args.rps_seconds, args.streams, args.slow_chunks = 4.0, 100, 20
    if min(args.n, args.block, args.warmup, args.chunks, args.concurrency, args.streams) < 1:
        p.error("counts must be >= 1")
    return args


def header(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "versions": versions("jupyter_server", "tornado", "openai", "httpx"),
        "params": {"n": args.n, "block": args.block, "warmup": args.warmup,
                   "chunks": args.chunks, "chunk_size": args.chunk_size,
                   "concurrency": args.concurrency, "rps_seconds": args.rps_seconds,
                   "streams": args.streams, "slow_chunks": args.slow_chunks,
                   "slow_delay": args.slow_delay, "model": MODEL, "slow_model": SLOW_MODEL,
                   "cpus": os.cpu_count()},
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--upstream-child" in argv:
        return upstream_child(argv)
    return bench_main("v1", argv, parse_args, run, header, separators=(",", ":"))


if __name__ == "__main__":
    sys.exit(main())
