"""Fixtures for gateway tests: a real, throwaway redis-server.

Tests use a real server rather than a fake so that the Lua scripts, the server
clock and cross-connection atomicity are exercised exactly as in production.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _unavailable(reason: str) -> None:
    """Skip, or fail when the environment promises services (CI)."""
    if os.environ.get("CLOUDIDE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (CLOUDIDE_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """Start ``redis-server`` on a free port for the session; yield its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        _unavailable("redis-server not installed")
        raise AssertionError("unreachable")
    port = _free_port()
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
                    _unavailable(f"redis-server did not start (exit code {proc.poll()})")
                time.sleep(0.05)
        finally:
            client.close()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The session server's URL, with the database flushed before each test."""
    client = redis.Redis.from_url(redis_server)
    try:
        client.flushdb()
    finally:
        client.close()
    yield redis_server
