"""End-to-end fixtures: a real ``jupyter lab`` with the built extension, the fake LLM upstream as
its only provider, and the system Chromium driven by Playwright (no browser download: the
Debian ``chromium`` that ``.ci/run`` installs).

One JupyterLab process per module (start-up is seconds); one browser per module, a fresh
context (no storage) per test. The server's workspace is a small sample project.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from fake_upstream import FakeUpstream
from services import _missing, free_port

CHROMIUM = os.environ.get("CLOUDIDE_CHROMIUM", "/usr/bin/chromium")
#: the flags this machine's closed network needs (no background connections, no QUIC)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

FEATURES = '''"""Feature engineering for the churn model."""


def compute_churn_features(events):
    """Days since last login and sessions per week, per customer."""
    last = events.groupby("customer").login.max()
    return last
'''


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    upstream: FakeUpstream
    process: subprocess.Popen[bytes]
    log: Path

    def lab_url(self, path: str = "lab") -> str:
        return f"{self.url}{path}?token={self.token}"

    def api(self, path: str, body: Any = None, method: str | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}", data=data, method=method or ("POST" if data else "GET"),
            headers={"Authorization": f"token {self.token}",
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
        return json.loads(raw) if raw else None


def sample_workspace(root: Path) -> None:
    """A notebook and a small package, as the Binder demo has."""
    (root / "churn").mkdir()
    (root / "churn" / "__init__.py").write_text("")
    (root / "churn" / "features.py").write_text(FEATURES)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Churn analysis", id="intro"),
                nbformat.v4.new_code_cell("import math\n", id="imports"),
                nbformat.v4.new_code_cell("def area(r):\n    return ", id="area")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, str(root / "analysis.ipynb"))


def lab_config(upstream: FakeUpstream, **extra: Any) -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"jupyter_cloudide": True}},
            "CloudIDEApp": {
                "providers": [{"name": "openai", "kind": "openai",
                               "base_url": upstream.openai_base_url,
                               "api_key": upstream.api_key}],
                "discover_models": False,
                "models": [
                    {"id": "gpt-4o-mini", "provider": "openai", "model": "gpt-4o-mini",
                     "price_per_1k": {"input": 0.15, "output": 0.6}},
                    {"id": "coder", "provider": "openai", "model": "qwen2.5-coder",
                     "roles": ["completion"], "capabilities": ["fim"]}],
                "default_model": "gpt-4o-mini", "completion_model": "coder",
                "index_start_delay": 0.0, "warm_pool_size": 0, **extra}}


def start_lab(tmp: Path, upstream: FakeUpstream, **extra: Any) -> Lab:
    root = tmp / "work"
    root.mkdir()
    sample_workspace(root)
    config = tmp / "config"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(json.dumps(lab_config(upstream,
                                                                            **extra)))
    # no "get Jupyter news?" toast over the page
    news = tmp / "settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = free_port(), "e2e-token-" + os.urandom(8).hex()
    # the SDKs' variables of the machine running the tests never reach the server under test
    inherited = {k: v for k, v in os.environ.items()
                 if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    env = {**inherited, "JUPYTER_CONFIG_DIR": str(config),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"), "HF_HUB_OFFLINE": "1"}
    log = tmp / "lab.log"
    log_file = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
         f"--CloudIDEApp.data_dir={tmp / 'data'}", "--LabApp.expose_app_in_browser=True",
         "--ServerApp.allow_root=True"],
        stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=str(root))
    log_file.close()  # the child has its own descriptor
    lab = Lab(f"http://127.0.0.1:{port}/", token, root, upstream, process, log)
    deadline = time.monotonic() + 90
    while True:
        try:
            lab.api("cloudide/api/health")
            return lab
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_lab(lab)
                raise RuntimeError(
                    f"jupyter lab did not start:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.3)


def stop_lab(lab: Lab) -> None:
    if lab.process.poll() is None:
        lab.process.terminate()
        try:
            lab.process.wait(20)
        except subprocess.TimeoutExpired:
            lab.process.kill()
            lab.process.wait(10)


@pytest.fixture(autouse=True)
def jp_asyncio_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """pytest-jupyter's autouse loop, without making it the thread's current loop: Playwright's
    sync API runs its own loop in this thread, which that fixture would otherwise close."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(autouse=True)
def jp_server_cleanup() -> None:
    """pytest-jupyter's in-process server clean-up: there is none here (the server is a
    child process), and Playwright's loop would stop it running."""


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def lab_extra() -> dict[str, Any]:
    """CloudIDEApp settings of this module's server (override in a module)."""
    return {"index_enabled": False}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream,
        lab_extra: dict[str, Any]) -> Iterator[Lab]:
    if not (os.path.exists(CHROMIUM) and shutil.which("node")):
        _missing(f"end-to-end tests need Chromium at {CHROMIUM} (Debian package chromium)")
    built = Path(__file__).resolve().parents[2] / "jupyter_cloudide" / "labextension"
    if not (built / "package.json").exists():
        _missing("the labextension is not built (pip install . builds it)")
    lab = start_lab(tmp_path_factory.mktemp("lab"), upstream, **lab_extra)
    try:
        yield lab
    finally:
        stop_lab(lab)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("end-to-end tests need the playwright package (the test extra)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                     headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, lab: Lab) -> Iterator[Any]:
    """A JupyterLab page, loaded, in a fresh browser context; browser errors are collected
    on ``page.errors``."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("dialog", lambda dialog: (page.errors.append(f"dialog: {dialog.message}"),
                                      dialog.dismiss()))
    open_lab(page, lab)
    try:
        yield page
    finally:
        context.close()


def open_lab(page: Any, lab: Lab) -> None:
    page.goto(lab.lab_url(), wait_until="domcontentloaded")
    page.wait_for_selector("#jp-main-dock-panel", timeout=60_000)
    page.wait_for_function("() => !document.querySelector('#jupyterlab-splash')",
                           timeout=60_000)


def run_command(page: Any, command: str, args: dict[str, Any] | None = None) -> None:
    """Run a JupyterLab command through the app object (as a keyboard shortcut would)."""
    page.evaluate("([id, args]) => window.jupyterapp.commands.execute(id, args)",
                  [command, args or {}])


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
