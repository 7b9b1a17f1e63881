"""Start-up benchmark: what jupyter_cloudide adds to ``jupyter server`` start-up.

Target: the extension adds <= 300 ms to the time until the server answers (for scale,
jupyter-ai 3.2 adds about 1.2 s).

What it measures (loopback only, against real ``jupyter server`` processes it starts):

1. ``ready_ms``: from spawning ``jupyter server`` until an authenticated ``GET /api/status``
   first answers 200 (polled every ~10 ms), with ``jupyter_cloudide`` enabled and, as the
   baseline, disabled (``--ServerApp.jpserver_extensions={'jupyter_cloudide': False}``).
   Runs alternate with/without (and which goes first alternates too) for ``--rounds`` rounds;
   the first ``--warmup`` rounds are discarded (disk cache). Every run gets fresh, empty
   ``JUPYTER_CONFIG_DIR`` / ``JUPYTER_DATA_DIR`` / ``JUPYTER_RUNTIME_DIR`` /
   ``JUPYTER_CLOUDIDE_DATA_DIR`` and root dirs, so the only difference is the extension
   (extensions enabled by the virtualenv's own config, e.g. jupyterlab, are on in both runs
   and are reported).
2. ``cloudide_ready_ms`` (extension runs only): from spawn until ``GET cloudide/api/health``
   reports ``components.db.state == "ok"``; the metadata store opens in the background after
   start, so this is when the extension is fully usable, separately from server readiness.
3. ``added_import_ms``: ``python -X importtime -c "import jupyter_server.serverapp;
   import jupyter_cloudide.app"``, summing the cumulative time of the top-level imports that
   follow ``jupyter_server.serverapp`` (i.e. what importing the extension costs beyond what
   the server imports anyway), median over ``--import-runs``. The wall-clock difference
   between the two interpreters (``added_import_wall_ms``) and the most expensive modules by
   self time (``import_top_self_ms``) are reported too.
4. ``heavy_modules_at_import``: heavy packages (SQLAlchemy, alembic, LanceDB, SDKs, torch,
   redis, pyarrow) present in ``sys.modules`` right after ``import jupyter_cloudide.app``.
   There should be none (leak check).

Run it from the repository root, with the project's virtualenv active::

    python bench/startup.py             # prints ONE JSON line on stdout; logs go to stderr
    python bench/startup.py --rounds 3 --import-runs 3   # quicker smoke test

The run is bounded (``--budget`` seconds for the server rounds, hard timeouts everywhere) and
every process it starts runs in its own process group, which is killed on exit, on error too.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import math
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import Fleet, Proc, bench_main, http_get, pct, repo_env, versions

log = logging.getLogger("bench.startup")

TARGET_ADDED_READY_MS = 300.0
SERVER_START_TIMEOUT_S = 60.0
CLOUDIDE_READY_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.010
HEAVY_MODULES = ("sqlalchemy", "alembic", "lancedb", "openai", "anthropic", "torch", "redis",
                 "pyarrow")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOADED = re.compile(r"\] (\S+) \| extension was successfully loaded")

# Imported lazily by CloudIDEApp._start_jupyter_server_extension, i.e. synchronously on the
# server's event loop before it answers its first request: part of start-up as well.
START_HOOK_IMPORTS = ("jupyter_cloudide.gateway.ratelimit",)

HEAVY_CHECK_SOURCE = """
import importlib, json, sys
heavy = set(sys.argv[2:])
def found():
    return sorted(m for m in sys.modules if m.split(".")[0] in heavy)
import jupyter_cloudide.app
out = {"app": found()}
for name in sys.argv[1].split(","):
    importlib.import_module(name)
out["start_hook"] = found()
print(json.dumps(out))
"""


# ------------------------------------------------------------------------------------------
# helpers


def r1(x: float | None) -> float | None:
    """Round to 0.1 (ms); NaN and None become None so the output stays valid JSON."""
    if x is None or math.isnan(x):
        return None
    return round(x, 1)


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "n": len(samples),
        "median_ms": r1(statistics.median(samples)) if samples else None,
        "p90_ms": r1(pct(samples, 90)),
        "min_ms": r1(min(samples)) if samples else None,
        "max_ms": r1(max(samples)) if samples else None,
    }


def child_env(tmp: Path | None = None) -> dict[str, str]:
    """Our environment, with the repo importable and (given ``tmp``) fresh Jupyter dirs."""
    env = repo_env()
    env.pop("JUPYTER_CLOUDIDE_DB_URL", None)
    env.pop("JUPYTER_TOKEN", None)
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    if tmp is not None:
        for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "jdata"),
                         ("JUPYTER_RUNTIME_DIR", "runtime"),
                         ("JUPYTER_CLOUDIDE_DATA_DIR", "cloudide"), ("IPYTHONDIR", "ipython")):
            (tmp / sub).mkdir(exist_ok=True)
            env[var] = str(tmp / sub)
    return env


# ------------------------------------------------------------------------------------------
# 1. and 2. server start-up


@dataclass
class StartResult:
    ready_ms: float
    cloudide_ready_ms: float | None = None
    cloudide_health_first_ms: float | None = None
    loaded_extensions: list[str] = field(default_factory=list)


def poll_until(proc: Proc, t0: float, deadline: float, check: Any) -> float:
    """Call ``check()`` every ~10 ms until it returns True; ms since ``t0`` at that moment."""
    last = "no answer"
    while True:
        now = time.perf_counter()
        if now > deadline:
            raise RuntimeError(f"{proc.name}: timed out ({last}):\n{proc.tail()}")
        if proc.popen.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited with {proc.popen.returncode} ({last}):\n{proc.tail()}")
        try:
            done = check()
        except (OSError, http.client.HTTPException) as exc:
            last = repr(exc)
        else:
            if done is True:
                return (time.perf_counter() - t0) * 1000.0
            last = str(done)
        time.sleep(max(0.0, POLL_INTERVAL_S - (time.perf_counter() - now)))


def start_once(fleet: Fleet, name: str, with_ext: bool) -> StartResult:
    """Spawn one server, time its readiness, stop it again (always)."""
    tmp = fleet.mkdtemp(f"bench-su-{name}-")
    (tmp / "root").mkdir()
    env = child_env(tmp)
    proc = fleet.spawn_jupyter(name, tmp, env, with_ext=with_ext)
    t0 = proc.started
    try:
        def status_ok() -> bool | str:
            status, _ = http_get(proc, "/api/status")
            return True if status == 200 else f"HTTP {status}"

        ready = poll_until(proc, t0, t0 + SERVER_START_TIMEOUT_S, status_ok)
        result = StartResult(ready_ms=ready)
        if with_ext:
            first: list[float] = []

            def db_ok() -> bool | str:
                status, body = http_get(proc, "/cloudide/api/health")
                if status != 200:
                    return f"health HTTP {status}"
                if not first:
                    first.append((time.perf_counter() - t0) * 1000.0)
                db = json.loads(body).get("components", {}).get("db", {})
                if db.get("state") == "error":
                    raise RuntimeError(f"metadata store failed to open: {db}")
                return True if db.get("state") == "ok" else f"db {db.get('state')!r}"

            deadline = time.perf_counter() + CLOUDIDE_READY_TIMEOUT_S
            result.cloudide_ready_ms = poll_until(proc, t0, deadline, db_ok)
            result.cloudide_health_first_ms = first[0] if first else None
    finally:
        fleet.stop(proc)
    text = proc.log_path.read_text("utf-8", errors="replace")
    result.loaded_extensions = sorted(set(LOADED.findall(ANSI.sub("", text))))
    fleet.rmtree(tmp)
    return result


def start_with_retry(fleet: Fleet, name: str, with_ext: bool) -> StartResult:
    """A free port may be taken between probing and binding; retry that case once."""
    try:
        return start_once(fleet, name, with_ext)
    except RuntimeError as exc:
        if "address already in use" not in str(exc).lower():
            raise
        log.warning("%s: port taken, retrying once", name)
        return start_once(fleet, name, with_ext)


def enabled_extensions(fleet: Fleet) -> dict[str, bool]:
    """``jupyter server extension list`` with fresh config dirs: what the install enables."""
    tmp = fleet.mkdtemp("bench-su-list-")
    argv = [sys.executable, "-m", "jupyter_server.extension.serverextension", "list"]
    try:
        out, err = fleet.run(argv, child_env(tmp), timeout=60)
    except RuntimeError as exc:
        log.warning("could not list server extensions: %s", exc)
        return {}
    found: dict[str, bool] = {}
    for line in ANSI.sub("", out + "\n" + err).splitlines():
        m = re.match(r"^\s+(\S+)\s+(enabled|disabled)\s*$", line)
        if m:
            found[m.group(1)] = m.group(2) == "enabled"
    return found


# ------------------------------------------------------------------------------------------
# 3. and 4. imports


def parse_importtime(stderr: str, after: str) -> tuple[float, dict[str, float]]:
    """Sum of cumulative times (ms) of top-level imports after ``after``; and self ms/module.

    ``-X importtime`` prints ``import time: self | cumulative | <indent>name`` in completion
    order, two spaces of indent per nesting level; a module already imported is not listed.
    """
    added_us = 0.0
    selfs: dict[str, float] = {}
    pending: list[tuple[str, float, float]] = []  # entries of the tree not yet closed
    seen_after = False
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        head, cum_us, name_field = line.split("|", 2)
        self_us = head[len("import time:"):]
        raw = name_field[1:] if name_field.startswith(" ") else name_field
        depth = (len(raw) - len(raw.lstrip(" "))) // 2
        name = raw.strip()
        pending.append((name, float(self_us), float(cum_us)))
        if depth != 0:
            continue
        if seen_after:
            added_us += float(cum_us)
            for n, s, _c in pending:
                selfs[n] = selfs.get(n, 0.0) + s / 1000.0
        elif name == after:
            seen_after = True
        pending.clear()
    if not seen_after:
        raise RuntimeError(f"{after} not found in -X importtime output")
    return added_us / 1000.0, selfs


def measure_imports(fleet: Fleet, runs: int) -> dict[str, Any]:
    env = child_env()
    base_src = "import jupyter_server.serverapp"
    ext_src = "import jupyter_server.serverapp; import jupyter_cloudide.app"
    hook_src = ext_src + "".join(f"; import {m}" for m in START_HOOK_IMPORTS)
    # one untimed pass of each to warm the disk cache and the bytecode caches
    fleet.run([sys.executable, "-c", ext_src], env, timeout=60)
    walls: dict[str, list[float]] = {"base": [], "ext": []}
    added: list[float] = []
    hook: list[float] = []
    selfs: dict[str, list[float]] = {}
    hook_selfs: dict[str, list[float]] = {}
    for i in range(runs):
        order = (("base", base_src), ("ext", ext_src))
        for key, src in order if i % 2 == 0 else tuple(reversed(order)):
            t0 = time.perf_counter()
            fleet.run([sys.executable, "-c", src], env, timeout=60)
            walls[key].append((time.perf_counter() - t0) * 1000.0)
        _, err = fleet.run([sys.executable, "-X", "importtime", "-c", ext_src], env, timeout=60)
        total, per_module = parse_importtime(err, "jupyter_server.serverapp")
        added.append(total)
        for name, s in per_module.items():
            selfs.setdefault(name, []).append(s)
        _, err = fleet.run([sys.executable, "-X", "importtime", "-c", hook_src], env, timeout=60)
        total, per_module = parse_importtime(err, "jupyter_cloudide.app")
        hook.append(total)
        for name, s in per_module.items():
            hook_selfs.setdefault(name, []).append(s)
    top = sorted(((n, statistics.median(v)) for n, v in selfs.items()), key=lambda kv: -kv[1])
    hook_top = sorted(((n, statistics.median(v)) for n, v in hook_selfs.items()),
                      key=lambda kv: -kv[1])
    out, _ = fleet.run([sys.executable, "-c", HEAVY_CHECK_SOURCE, ",".join(START_HOOK_IMPORTS),
                        *HEAVY_MODULES], env, timeout=60)
    heavy = json.loads(out.strip().splitlines()[-1])
    return {
        "added_import_ms": r1(statistics.median(added)),
        "added_import_ms_p90": r1(pct(added, 90)),
        "import_wall_ms": {"without": summary(walls["base"]), "with": summary(walls["ext"])},
        "added_import_wall_ms": r1(statistics.median(walls["ext"])
                                   - statistics.median(walls["base"])),
        "import_modules_added": len(selfs),
        "import_top_self_ms": {n: round(v, 2) for n, v in top[:12]},
        "heavy_modules_at_import": heavy["app"],
        "start_hook_imports": list(START_HOOK_IMPORTS),
        "start_hook_import_ms": r1(statistics.median(hook)),
        "start_hook_import_top_self_ms": {n: round(v, 2) for n, v in hook_top[:8]},
        "heavy_modules_at_start_hook": sorted({m.split(".")[0] for m in heavy["start_hook"]}),
    }


# ------------------------------------------------------------------------------------------
# driver


def run(args: argparse.Namespace, fleet: Fleet) -> dict[str, Any]:
    extensions = enabled_extensions(fleet)
    log.info("server extensions enabled by the installation: %s", extensions)

    samples: dict[str, list[float]] = {"with": [], "without": [], "cloudide": [],
                                       "health_first": []}
    loaded: dict[str, list[str]] = {}
    deadline = time.perf_counter() + args.budget
    rounds_done = 0
    truncated = False
    for i in range(args.rounds):
        if time.perf_counter() > deadline:
            log.warning("budget of %.0f s used up after %d rounds", args.budget, rounds_done)
            truncated = True
            break
        order = (True, False) if i % 2 == 0 else (False, True)
        for with_ext in order:
            side = "with" if with_ext else "without"
            res = start_with_retry(fleet, f"{side}-{i}", with_ext)
            loaded.setdefault(side, res.loaded_extensions)
            log.info("round %d %-7s ready %.0f ms%s%s", i, side, res.ready_ms,
                     "" if res.cloudide_ready_ms is None
                     else f", cloudide db ok {res.cloudide_ready_ms:.0f} ms",
                     " (warm-up, discarded)" if i < args.warmup else "")
            if i < args.warmup:
                continue
            samples[side].append(res.ready_ms)
            if res.cloudide_ready_ms is not None:
                samples["cloudide"].append(res.cloudide_ready_ms)
            if res.cloudide_health_first_ms is not None:
                samples["health_first"].append(res.cloudide_health_first_ms)
        rounds_done += 1
    if not samples["with"] or not samples["without"]:
        raise RuntimeError("no measured rounds (raise --rounds above --warmup or --budget)")

    imports = measure_imports(fleet, args.import_runs)

    added_ready = statistics.median(samples["with"]) - statistics.median(samples["without"])
    added_cloudide = statistics.median(samples["cloudide"]) - statistics.median(
        samples["without"]) if samples["cloudide"] else float("nan")
    return {
        "rounds": rounds_done, "warmup_rounds": min(args.warmup, rounds_done),
        "truncated": truncated,
        "ready_ms": {"without": summary(samples["without"]), "with": summary(samples["with"])},
        "cloudide_ready_ms": summary(samples["cloudide"]),
        "cloudide_health_first_ms": summary(samples["health_first"]),
        "added_ready_ms_median": r1(added_ready),
        "added_cloudide_ready_ms_median": r1(added_cloudide),
        **imports,
        "extensions_enabled_by_install": sorted(k for k, v in extensions.items() if v),
        "extensions_loaded": loaded,
        "targets": {
            "added_ready_le_300ms": bool(added_ready <= TARGET_ADDED_READY_MS),
            "no_heavy_modules_at_import": not imports["heavy_modules_at_import"],
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7,
                   help="server start-ups per side, warm-up included (default 7)")
    p.add_argument("--warmup", type=int, default=1,
                   help="leading rounds discarded (default 1)")
    p.add_argument("--import-runs", type=int, default=4,
                   help="interpreter runs per side for the import figures (default 4)")
    p.add_argument("--budget", type=float, default=110.0,
                   help="stop starting new rounds after this many seconds (default 110)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0 or args.import_runs < 1:
        p.error("--rounds and --import-runs must be >= 1, --warmup >= 0")
    return args


def header(_args: argparse.Namespace) -> dict[str, Any]:
    return {
        "versions": versions("jupyter_server", "jupyterlab", "tornado"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }


def main(argv: list[str] | None = None) -> int:
    return bench_main("startup", argv, parse_args, run, header)


if __name__ == "__main__":
    sys.exit(main())
