"""A real JupyterHub for the hub service's tests: configurable-http-proxy, the dummy
authenticator (with a password), SimpleLocalProcessSpawner starting ``jupyterhub-singleuser``
with our extension, and ``python -m jupyter_cloudide.hub`` as a managed service with its roles
and scopes. Every model call goes to the fake upstream (a thread of this process, on loopback).

Users: ``alice`` and ``bob`` (group ``team``), ``admin`` (Hub admin). Each user's server has
its own home (workspace) and data dir, so conversations, index and ledger are separate.

configurable-http-proxy comes from npm: ``npm install --prefix tests/hub`` (.ci/run does it)
or a global install. Without it the tests skip, unless CLOUDIDE_REQUIRE_SERVICES=1 (CI).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fake_upstream import FakeUpstream
from services import _missing, free_port

HERE = Path(__file__).resolve().parent
SERVICE = "cloudide"
PASSWORD = "hub-test-Pa55word"
USERS = ("alice", "bob")
GROUP = "team"
#: gpt-4o costs 1.0 per 1k tokens in and out (budget arithmetic in round numbers);
#: gpt-4o-mini is free, so the tests that count tokens add no cost to the team budget
MODELS = [
    {"id": "gpt-4o-mini", "provider": "openai", "model": "gpt-4o-mini", "quality": 60,
     "price_per_1k": {"input": 0.0, "output": 0.0}},
    {"id": "gpt-4o", "provider": "openai", "model": "gpt-4o", "quality": 80,
     "price_per_1k": {"input": 1.0, "output": 1.0}},
]
#: the team's daily budget on the service (group scope): 1.5 of gpt-4o's cost
TEAM_LIMIT = 1.5
T = TypeVar("T")


def chp_path() -> str | None:
    """configurable-http-proxy: the copy npm put under tests/hub, else one on PATH."""
    local = HERE / "node_modules" / ".bin" / "configurable-http-proxy"
    if local.exists():
        return str(local)
    return shutil.which("configurable-http-proxy")


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 45.0,
             logs: Callable[[], str] | None = None) -> T:
    """Poll ``check`` until it returns something truthy (a condition, not a sleep)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, AssertionError, KeyError, ValueError) as exc:
            last = exc
        time.sleep(0.1)
    tail = logs() if logs is not None else ""
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})\n{tail}")


@dataclass
class Hub:
    """The running Hub: URLs, tokens and helpers."""

    url: str  # the proxy's public URL, ending in /
    hub_api: str  # the Hub's REST API through the proxy
    service_url: str  # the service's own URL (as servers reach it), ending in /
    admin_token: str
    process: subprocess.Popen[bytes]
    log: Path
    tmp: Path
    tokens: dict[str, str] = field(default_factory=dict)
    servers_started: bool = False

    def logs(self, chars: int = 12000) -> str:
        try:
            return "---- hub log (tail) ----\n" + self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"token {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0,
                            trust_env=False, **kwargs)

    def api(self, method: str, path: str, token: str | None = None, **kwargs: Any
            ) -> httpx.Response:
        with self.client(token or self.admin_token) as client:
            return client.request(method, "hub/api/" + path, **kwargs)

    def user_token(self, user: str) -> str:
        """A Hub API token of ``user`` (default 'token' role: the user's own permissions),
        created through the REST API with the admin's token."""
        if user not in self.tokens:
            response = self.api("POST", f"users/{user}/tokens",
                                json={"note": "tests/hub", "expires_in": 3600})
            assert response.status_code == 201, response.text
            self.tokens[user] = response.json()["token"]
        return self.tokens[user]

    def server(self, user: str, path: str, token: str | None = None, method: str = "GET",
               **kwargs: Any) -> httpx.Response:
        """A request to ``user``'s server through the proxy, as ``token``'s owner."""
        with self.client(token or self.user_token(user)) as client:
            return client.request(method, f"user/{user}/{path}", **kwargs)

    def service(self, path: str, token: str | None, method: str = "GET",
                **kwargs: Any) -> httpx.Response:
        """A request to the service through the proxy."""
        with self.client(token) as client:
            return client.request(method, f"services/{SERVICE}/{path}", **kwargs)

    def report(self, **params: Any) -> dict[str, Any]:
        response = self.service("api/report", self.user_token("admin"), params=params)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data


def _hub_config(tmp: Path, upstream: FakeUpstream, ports: dict[str, int],
                admin_token: str) -> Path:
    """jupyterhub_config.py, the service's config and the user servers' config."""
    bindir = Path(sys.executable).parent
    server_config = tmp / "server-config"
    server_config.mkdir()
    (server_config / "jupyter_server_config.json").write_text(json.dumps({
        # only what the tests use: each extension is start-up time, twice
        "ServerApp": {"allow_root": True, "jpserver_extensions": {
            "jupyterlab": False, "jupyter_lsp": False, "notebook": False,
            "jupyter_server_terminals": False}},
        "CloudIDEApp": {
            "providers": [{"name": "openai", "kind": "openai",
                           "base_url": upstream.openai_base_url, "api_key": upstream.api_key}],
            "models": MODELS, "discover_models": False, "default_model": "gpt-4o-mini",
            "warm_pool_size": 0, "kernel_metering": False,
            "index_embedder": "openai", "index_embedding_model": "fake-embedding",
            "index_embedding_base_url": upstream.openai_base_url,
            "index_embedding_api_key": upstream.api_key, "index_on_start": False,
            "hub_sync_interval": 0.3,
        },
    }))
    service_config = tmp / "cloudide_hub_config.py"
    service_config.write_text(
        "c.CloudIDEHubService.groups_ttl = 1.0\n"
        f"c.CloudIDEHubService.budgets = [{{'scope': 'group:{GROUP}', 'period': 'day', "
        f"'metric': 'cost', 'limit': {TEAM_LIMIT}}}]\n")
    service_url = f"http://127.0.0.1:{ports['service']}"
    config = f"""
import sys
c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {ports['proxy']}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {ports['hub']}
c.JupyterHub.db_url = "sqlite:///{tmp / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = "{tmp / 'jupyterhub_cookie_secret'}"
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}  # both servers start at once
c.JupyterHub.pid_file = "{tmp / 'jupyterhub.pid'}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{ports['proxy_api']}"
c.ConfigurableHTTPProxy.command = [{chp_path()!r}]
c.ConfigurableHTTPProxy.pid_file = "{tmp / 'proxy.pid'}"

c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {PASSWORD!r}
c.Authenticator.allowed_users = {{"alice", "bob", "admin"}}
c.Authenticator.admin_users = {{"admin"}}
c.JupyterHub.load_groups = {{{GROUP!r}: {{"users": ["alice", "bob"]}}}}

c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{tmp / 'home'}/{{username}}"
c.Spawner.cmd = [{str(bindir / 'jupyterhub-singleuser')!r}]
c.Spawner.start_timeout = 90
c.Spawner.http_timeout = 90
# the Hub stops a server with SIGINT first, which a jupyter server without a terminal only
# logs ("Interrupted..."); SIGTERM stops it cleanly at once
c.LocalProcessSpawner.interrupt_timeout = 1
c.LocalProcessSpawner.term_timeout = 3
c.Spawner.environment = {{
    "JUPYTER_CONFIG_DIR": {str(server_config)!r},
    "JUPYTER_CLOUDIDE_DATA_DIR": lambda spawner: "{tmp / 'home'}/" + spawner.user.name
        + "/cloudide-data",
    "JUPYTER_CLOUDIDE_HUB_URL": "{service_url}/services/{SERVICE}/",
    "HF_HUB_OFFLINE": "1",
}}

c.JupyterHub.custom_scopes = {{
    "custom:cloudide:usage-admin": {{"description": "See every user's jupyter_cloudide usage"}},
}}
c.JupyterHub.services = [
    {{
        "name": {SERVICE!r},
        "url": "{service_url}",
        "command": [sys.executable, "-m", "jupyter_cloudide.hub",
                    "--config", {str(service_config)!r}],
        "environment": {{"JUPYTER_CLOUDIDE_HUB_DATA_DIR": {str(tmp / 'service-data')!r}}},
        "oauth_client_allowed_scopes": ["custom:cloudide:usage-admin"],
        "oauth_no_confirm": True,
    }},
    {{"name": "test-admin", "api_token": {admin_token!r}}},
]
c.JupyterHub.load_roles = [
    {{"name": "cloudide-service", "services": [{SERVICE!r}],
      "scopes": ["list:groups", "read:groups"]}},
    {{"name": "user", "scopes": ["self", "access:services!service={SERVICE}"]}},
    {{"name": "server", "scopes": ["users:activity!user", "access:servers!server",
                                  "access:services!service={SERVICE}"]}},
    {{"name": "test-admin", "services": ["test-admin"],
      "scopes": ["admin:users", "tokens", "admin:servers", "read:groups", "admin:groups"]}},
]
"""
    path = tmp / "jupyterhub_config.py"
    path.write_text(config)
    return path


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (servers run in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the Hub (it stops the servers, the service and the proxy), then kill the
    process group of everything that is left."""
    below = _descendants(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(20)
    for pid in [process.pid, *below]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[Hub]:
    if chp_path() is None:
        _missing("configurable-http-proxy is not installed (npm install --prefix tests/hub)")
    if shutil.which("jupyterhub-singleuser", path=str(Path(sys.executable).parent)) is None:
        _missing("jupyterhub is not installed (the test extra)")
    tmp = tmp_path_factory.mktemp("hub")
    ports = {name: free_port() for name in ("proxy", "proxy_api", "hub", "service")}
    admin_token = "test-admin-" + secrets.token_hex(16)
    config = _hub_config(tmp, upstream, ports, admin_token)
    log = tmp / "hub.log"
    # the SDKs' variables of the machine running the tests never reach the servers under test
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "ANTHROPIC_", "JUPYTERHUB_", "JUPYTER_"))}
    env["CONFIGPROXY_AUTH_TOKEN"] = secrets.token_hex(16)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config)], cwd=str(tmp), env=env,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    base = f"http://127.0.0.1:{ports['proxy']}/"
    hub = Hub(url=base, hub_api=base + "hub/api/",
              service_url=f"http://127.0.0.1:{ports['service']}/services/{SERVICE}/",
              admin_token=admin_token, process=process, log=log, tmp=tmp)
    try:
        def up() -> bool:
            assert process.poll() is None, "jupyterhub exited"
            with hub.client() as client:
                return (client.get("hub/api/").status_code == 200
                        and client.get(f"services/{SERVICE}/api/health").status_code == 200)

        wait_for(up, "the Hub, the proxy and the service", timeout=60, logs=hub.logs)
        yield hub
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def servers(hub: Hub) -> Hub:
    """alice's and bob's servers, started and answering our extension's health."""
    if not hub.servers_started:
        for user in USERS:
            response = hub.api("POST", f"users/{user}/server")
            assert response.status_code in (201, 202), response.text
        for user in USERS:
            def ready(user: str = user) -> bool:
                response = hub.server(user, "cloudide/api/health")
                return response.status_code == 200
            wait_for(ready, f"{user}'s server", timeout=90, logs=hub.logs)
        hub.servers_started = True
    return hub


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_FAILED] = True
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def _print_logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failing test shows the tail of the Hub's log (the servers and the service log
    there too)."""
    yield
    if request.node.stash.get(_FAILED, False) and "hub" in request.fixturenames:
        print(request.getfixturevalue("hub").logs(20000))
