"""Real services for the test suite, started by the suite itself: redis-server and a
throwaway PostgreSQL cluster (or CLOUDIDE_TEST_POSTGRES_URL). Missing binaries skip the tests
that need them, unless CLOUDIDE_REQUIRE_SERVICES=1 (CI), where they fail.

Loaded as a plugin from the root conftest, so every test folder can use these fixtures.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_PASSWORD = "pg-s3cret-Pa55word"



@dataclass(frozen=True)
class PostgresServer:
    """A running PostgreSQL server; ``admin_url`` is a psycopg conninfo to its ``postgres`` db."""

    host: str
    port: int
    user: str
    admin_dbname: str
    base_url: str | None = None  # set when CLOUDIDE_TEST_POSTGRES_URL is used

    def url(self, dbname: str, password: str | None = PG_PASSWORD) -> str:
        """A SQLAlchemy URL for ``dbname`` (trust auth: the password is accepted and ignored)."""
        if self.base_url is not None:
            from sqlalchemy.engine import make_url

            return (
                make_url(self.base_url)
                .set(drivername="postgresql+psycopg", database=dbname)
                .render_as_string(hide_password=False)
            )
        auth = f"{self.user}:{password}" if password else self.user
        return f"postgresql+psycopg://{auth}@{self.host}:{self.port}/{dbname}"

    def admin_conninfo(self) -> str:
        """libpq conninfo for the maintenance database (CREATE/DROP DATABASE)."""
        if self.base_url is not None:
            from sqlalchemy.engine import make_url

            return (
                make_url(self.base_url)
                .set(drivername="postgresql")
                .render_as_string(hide_password=False)
            )
        return f"host={self.host} port={self.port} user={self.user} dbname={self.admin_dbname}"


def _missing(reason: str) -> None:
    """Skip, or fail when the environment promises services (CI)."""
    if os.environ.get("CLOUDIDE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"service required (CLOUDIDE_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(reason)


def _find_bindir() -> Path | None:
    """Locate the PostgreSQL server binaries: PATH, ``pg_config --bindir``, Debian layout."""
    candidates: list[Path] = []
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for path in candidates:
        if (path / "initdb").is_file() and (path / "postgres").is_file():
            return path
    return None


def _reap(proc: subprocess.Popen[bytes], *, timeout: float) -> None:
    """Wait for a service that was asked to stop; kill it if it does not within ``timeout``."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_pg_user(cmd: list[str]) -> list[str]:
    """Run as the ``postgres`` OS user when we are root (postgres refuses to run as root)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            _missing("running as root and runuser is not available to drop privileges")
        return [str(runuser), "-u", "postgres", "--", *cmd]
    return cmd


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session: CLOUDIDE_TEST_POSTGRES_URL or a temp cluster."""
    psycopg = pytest.importorskip("psycopg")
    external = os.environ.get("CLOUDIDE_TEST_POSTGRES_URL")
    if external:
        from sqlalchemy.engine import make_url

        parsed = make_url(external)
        yield PostgresServer(
            host=parsed.host or "localhost",
            port=parsed.port or 5432,
            user=parsed.username or "postgres",
            admin_dbname=parsed.database or "postgres",
            base_url=external,
        )
        return

    bindir = _find_bindir()
    if bindir is None:
        _missing("PostgreSQL server binaries (initdb, postgres) not found")
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="cloudide-pg-"))
    data = root / "data"
    log_path = root / "postgres.log"
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres", group="postgres")
    root.chmod(0o700)
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            _as_pg_user(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        port = free_port()
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                _as_pg_user(
                    [
                        str(bindir / "postgres"),
                        "-D",
                        str(data),
                        "-p",
                        str(port),
                        "-k",
                        str(root),
                        "-c",
                        "listen_addresses=127.0.0.1",
                        "-c",
                        "fsync=off",
                        "-c",
                        "full_page_writes=off",
                        "-c",
                        "max_connections=200",
                    ]
                ),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        server = PostgresServer(
            host="127.0.0.1", port=port, user="postgres", admin_dbname="postgres"
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(server.admin_conninfo(), connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"PostgreSQL did not start:\n{log_path.read_text(errors='replace')}"
                    )
                time.sleep(0.1)
        yield server
    finally:
        if proc is not None and proc.poll() is None:
            subprocess.run(
                _as_pg_user([str(bindir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast"]),
                capture_output=True,
                timeout=60,
            )
            _reap(proc, timeout=30)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _fresh_database(server: PostgresServer) -> Iterator[str]:
    """Create a uniquely named database, yield its name, drop it afterwards."""
    import psycopg

    name = f"cloudide_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server.admin_conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(server.admin_conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')




@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database (its URL carries a password; trust auth ignores it)."""
    with _fresh_database(postgres_server) as name:
        yield postgres_server.url(name)


# -- redis ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """Start ``redis-server`` on a free port for the session; yield its URL."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        _missing("redis-server not installed")
        raise AssertionError("unreachable")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    if client.ping():
                        break
                except redis.ConnectionError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    _missing(f"redis-server did not start (exit code {proc.poll()})")
                time.sleep(0.05)
        finally:
            client.close()
        yield url
    finally:
        proc.terminate()
        _reap(proc, timeout=10)


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The session server's URL, with the database flushed before each test."""
    import redis

    client = redis.Redis.from_url(redis_server)
    try:
        client.flushdb()
    finally:
        client.close()
    yield redis_server


# -- Jupyter Kernel Gateway -------------------------------------------------------------------


@dataclass(frozen=True)
class KernelGateway:
    """A running Jupyter Kernel Gateway on loopback (its kernels run as local processes)."""

    url: str
    auth_token: str
    log_path: Path
    pid: int

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.auth_token}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def kernel_gateway() -> Iterator[KernelGateway]:
    """Start ``jupyter kernelgateway`` on a free loopback port for the session.

    Token-protected, kernel listing enabled (so a test can see which kernels it runs), with a
    private runtime dir so its connection files stay out of the user's. Besides the
    environment's kernelspecs it offers ``other-python`` (ipykernel under another name), a
    kernelspec for allowlist tests.
    """
    import importlib.util
    import json
    import sys
    import urllib.error
    import urllib.request

    if importlib.util.find_spec("kernel_gateway") is None:
        _missing("jupyter_kernel_gateway not installed (pip install jupyter_kernel_gateway)")
        raise AssertionError("unreachable")
    root = Path(tempfile.mkdtemp(prefix="cloudide-kg-"))
    log_path = root / "kernelgateway.log"
    token = uuid.uuid4().hex
    port = free_port()
    spec_dir = root / "share" / "jupyter" / "kernels" / "other-python"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (other-python)", "language": "python"}))
    jupyter_path = os.pathsep.join(
        p for p in (str(root / "share" / "jupyter"), os.environ.get("JUPYTER_PATH")) if p)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
           "JUPYTER_PATH": jupyter_path}
    cmd = [
        sys.executable, "-m", "kernel_gateway",
        "--KernelGatewayApp.ip=127.0.0.1",
        f"--KernelGatewayApp.port={port}",
        "--KernelGatewayApp.port_retries=0",
        f"--KernelGatewayApp.auth_token={token}",
        "--JupyterWebsocketPersonality.list_kernels=True",
    ]
    proc: subprocess.Popen[bytes] | None = None
    try:
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=root,
                                    env=env)
        gateway = KernelGateway(url=f"http://127.0.0.1:{port}", auth_token=token,
                                log_path=log_path, pid=proc.pid)
        deadline = time.monotonic() + 60
        request = urllib.request.Request(f"{gateway.url}/api/kernelspecs",
                                         headers=gateway.headers())
        while True:
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                _missing(f"jupyter kernelgateway did not start (exit code {proc.poll()}):\n"
                         f"{gateway.log()[-4000:]}")
            time.sleep(0.1)
        yield gateway
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()  # the gateway shuts its kernels down on SIGTERM
            _reap(proc, timeout=20)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def kernel_gateway_url(kernel_gateway: KernelGateway) -> str:
    """The session gateway's base URL (its token: ``kernel_gateway.auth_token``)."""
    return kernel_gateway.url
