"""Project-level checks that run with the suite: the package is installed as a server
extension and a labextension, the code is ruff- and mypy-clean, and the frontend's unit tests
pass. (These are what CI proves from a clean clone.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import jupyter_cloudide

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "labextension"
REQUIRED = os.environ.get("CLOUDIDE_REQUIRE_SERVICES") == "1"


def _need(condition: bool, reason: str) -> None:
    if not condition:
        if REQUIRED:
            pytest.fail(reason)
        pytest.skip(reason)


def _run(*cmd: str, cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _installed() -> bool:
    try:
        metadata.distribution("jupyter_cloudide")
    except metadata.PackageNotFoundError:
        return False
    return True


def _jupyter(*args: str) -> str:
    """Output of a jupyter subcommand, without its ANSI colours."""
    result = _run(sys.executable, "-m", "jupyter", *args)
    return re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)


def test_server_extension_is_enabled_after_install() -> None:
    _need(_installed(), "jupyter_cloudide is not pip-installed")
    out = _jupyter("server", "extension", "list")
    assert "jupyter_cloudide enabled" in out, out
    assert f"jupyter_cloudide {jupyter_cloudide.__version__} OK" in out, out


def test_labextension_is_installed() -> None:
    _need(_installed(), "jupyter_cloudide is not pip-installed")
    out = _jupyter("labextension", "list")
    assert f"jupyter-cloudide v{jupyter_cloudide.__version__} enabled OK" in out, out
    built = Path(jupyter_cloudide.__file__).parent / "labextension" / "package.json"
    if built.exists():  # editable install: the built extension lives in the tree
        assert json.loads(built.read_text())["version"] == jupyter_cloudide.__version__


def test_frontend_version_matches_python() -> None:
    package = json.loads((LAB / "package.json").read_text())
    assert package["version"] == jupyter_cloudide.__version__


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff")
    _need(ruff is not None, "ruff is not installed (test extra)")
    result = _run(str(ruff), "check", "jupyter_cloudide", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean() -> None:
    _need(shutil.which("mypy") is not None, "mypy is not installed (test extra)")
    result = _run(sys.executable, "-m", "mypy", timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr


def test_labextension_unit_tests() -> None:
    _need((LAB / "node_modules").is_dir(), "labextension/node_modules missing (npm install)")
    npm = shutil.which("npm")
    _need(npm is not None, "npm is not installed")
    result = _run(str(npm), "test", "--silent", cwd=LAB)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    typecheck = _run(str(npm), "run", "--silent", "typecheck", cwd=LAB)
    assert typecheck.returncode == 0, typecheck.stdout[-4000:] + typecheck.stderr[-4000:]


def test_no_heavy_imports_at_server_start() -> None:
    """jupyter_server imports the extension at start-up, and the start hook builds the (memory)
    rate limiter; nothing heavy may come with either."""
    code = (
        "import sys, jupyter_cloudide, jupyter_cloudide.app;"
        "from jupyter_cloudide.gateway.ratelimit import build_rate_limiter, Limit;"
        "build_rate_limiter('memory', {'chat': Limit(1)}, None);"
        "heavy = ['sqlalchemy', 'alembic', 'lancedb', 'openai', 'anthropic', 'torch',"
        " 'redis', 'pyarrow', 'psycopg'];"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    result = _run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"heavy modules imported: {result.stdout}"
