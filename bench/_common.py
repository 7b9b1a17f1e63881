"""Helpers shared by the benchmark scripts in this directory (not a benchmark itself).

The scripts import it as ``_common``: ``python bench/<script>.py`` puts ``bench/`` first on
``sys.path``. It holds the process fleet (every child in its own process group, with its
output in a log file; stopped with SIGTERM, then SIGKILL), small helpers (free port,
percentile, versions, ``jupyter server`` start, authenticated GET, the ``--max-runtime``
alarm) and ``bench_main``, the common ``main()``: logging, signals, log tails on error,
clean-up, one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger("bench.common")


# ------------------------------------------------------------------------------------------
# helpers


def free_port() -> int:
    """A TCP port that was free a moment ago (bind to port 0 and read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(samples: list[float], p: float) -> float:
    """Nearest-rank percentile ``p`` (0..100) of ``samples``, in the samples' unit."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def version_of(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def cloudide_version() -> str:
    sys.path.insert(0, str(REPO))
    try:
        from jupyter_cloudide._version import __version__

        return str(__version__)
    except ImportError:
        return version_of("jupyter_cloudide")
    finally:
        sys.path.remove(str(REPO))


def versions(*dists: str, **known: str | None) -> dict[str, str]:
    """``jupyter_cloudide``, then ``dists`` in order, then python. A non-None ``known[dist]``
    is used as is; otherwise the installed distribution's version is looked up."""
    out = {"jupyter_cloudide": cloudide_version()}
    for dist in dists:
        given = known.get(dist)
        out[dist] = given if given is not None else version_of(dist)
    out["python"] = platform.python_version()
    return out


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise ``TimeoutError`` in the main thread if the block runs longer than ``seconds``
    (SIGALRM; the scripts' ``--max-runtime`` hard limit)."""

    def on_alarm(signum: int, _frame: Any) -> None:
        raise TimeoutError(f"run exceeded --max-runtime {seconds}s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)


def repo_env() -> dict[str, str]:
    """Our environment, with the repository first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


# ------------------------------------------------------------------------------------------
# processes


@dataclass
class Proc:
    """A child process in its own process group, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    token: str = ""
    started: float = 0.0  # time.perf_counter() just before spawning

    @property
    def pid(self) -> int:
        return int(self.popen.pid)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the group, then SIGKILL it if it has not gone within a few seconds."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=8)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop on SIGTERM; killing its group", self.name)
        # Kill whatever is left in the group (kernels, terminals), even if the leader is gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


@dataclass
class Fleet:
    """Every process and temp dir this run created; ``stop_all`` is safe to call again."""

    procs: list[Proc] = field(default_factory=list)
    tmpdirs: list[Path] = field(default_factory=list)

    def mkdtemp(self, prefix: str) -> Path:
        tmp = Path(tempfile.mkdtemp(prefix=prefix))
        self.tmpdirs.append(tmp)
        return tmp

    def rmtree(self, tmp: Path) -> None:
        """Remove one of our temp dirs now rather than in ``stop_all``."""
        shutil.rmtree(tmp, ignore_errors=True)
        self.tmpdirs.remove(tmp)

    def spawn(self, name: str, argv: list[str], env: dict[str, str], cwd: Path,
              port: int = 0, token: str = "") -> Proc:
        """Start ``argv`` in a new session, output to ``cwd/<name>.log``."""
        started = time.perf_counter()
        log_path = cwd / f"{name}.log"
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(
                argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        proc = Proc(name, popen, log_path, port, token, started)
        self.procs.append(proc)
        return proc

    def spawn_jupyter(self, name: str, tmp: Path, env: dict[str, str], *, with_ext: bool = True,
                      extra: list[str] | tuple[str, ...] = ()) -> Proc:
        """``jupyter server`` on a free 127.0.0.1 port (no retries) with a fresh token and
        jupyter_cloudide enabled or (``with_ext=False``) disabled; root dir ``tmp/root`` (must
        exist), log ``tmp/<name>.log``."""
        token = secrets.token_hex(16)
        port = free_port()
        argv = [
            sys.executable, "-m", "jupyter_server",
            f"--ServerApp.jpserver_extensions={{'jupyter_cloudide': {with_ext}}}",
            f"--IdentityProvider.token={token}",
            f"--port={port}", "--ServerApp.port_retries=0", "--ip=127.0.0.1",
            "--allow-root", "--no-browser", f"--ServerApp.root_dir={tmp / 'root'}",
            *extra,
        ]
        return self.spawn(name, argv, env, tmp, port, token)

    def stop(self, proc: Proc) -> None:
        try:
            proc.stop()
        finally:
            if proc in self.procs:
                self.procs.remove(proc)

    def run(self, argv: list[str], env: dict[str, str], timeout: float) -> tuple[str, str]:
        """Run a short command in its own process group; (stdout, stderr). Raises on failure."""
        tmp = self.mkdtemp("bench-cmd-")
        out_path, err_path = tmp / "out", tmp / "err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            popen = subprocess.Popen(argv, env=env, cwd=tmp, stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=err, start_new_session=True)
            proc = Proc(argv[-1][:40], popen, err_path)
            self.procs.append(proc)
            try:
                rc = popen.wait(timeout=timeout)
            finally:
                self.stop(proc)
        stdout = out_path.read_text("utf-8", errors="replace")
        stderr = err_path.read_text("utf-8", errors="replace")
        self.rmtree(tmp)
        if rc != 0:
            raise RuntimeError(f"{argv!r} exited with {rc}:\n{stderr[-2000:]}")
        return stdout, stderr

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            try:
                self.stop(proc)
            except Exception as exc:
                log.warning("could not stop %s (pid %d): %s", proc.name, proc.pid, exc)
        for d in self.tmpdirs:
            shutil.rmtree(d, ignore_errors=True)
        self.tmpdirs.clear()


def http_get(proc: Proc, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """One ``GET`` to ``proc``'s port with its token; (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Authorization": f"token {proc.token}"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------
# main()


def bench_main(
    bench: str,
    argv: list[str] | None,
    parse_args: Callable[[list[str] | None], argparse.Namespace],
    run: Callable[[argparse.Namespace, Fleet], dict[str, Any]],
    header: Callable[[argparse.Namespace], dict[str, Any]],
    *,
    separators: tuple[str, str] | None = None,
) -> int:
    """Set up logging and signals, parse ``argv``, ``run`` with a fresh fleet (always stopped
    afterwards, with the children's log tails logged on error), then print ONE JSON line:
    ``{"bench": bench, **header(args), **figures, "runtime_s": ...}``."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    fleet = Fleet()
    bench_log = logging.getLogger(f"bench.{bench}")

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    t0 = time.perf_counter()
    try:
        figures = run(args, fleet)
    except BaseException:
        for proc in fleet.procs:
            bench_log.error("--- %s (pid %d) log tail ---\n%s", proc.name, proc.pid, proc.tail())
        raise
    finally:
        fleet.stop_all()
    result: dict[str, Any] = {
        "bench": bench,
        **header(args),
        **figures,
        "runtime_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result, separators=separators), flush=True)
    return 0
