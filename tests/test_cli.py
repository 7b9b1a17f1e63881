"""``jupyter cloudide index|search`` as a user runs them: real processes, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)


def cli(*args: str, cwd: Path, data: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JUPYTER_CLOUDIDE_DATA_DIR": str(data),
           "JUPYTER_CONFIG_DIR": str(data / "config"), "JUPYTER_PLATFORM_DIRS": "1"}
    return subprocess.run([sys.executable, "-m", "jupyter_cloudide.cli", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=280)


def test_index_then_search_and_incremental(tmp_path: Path) -> None:
    work, data = tmp_path / "work", tmp_path / "data"
    (work / "pkg").mkdir(parents=True)
    (work / "pkg" / "churn.py").write_text(
        "def compute_churn_features(df):\n    \"\"\"Days since last login.\"\"\"\n    return df\n")
    (work / "notes.md").write_text("# Notes\n\nThe revenue forecast is quarterly.\n")
    (work / ".env").write_text("PASSWORD=hunter2-zzqv\n")

    built = cli("index", cwd=work, data=data)
    assert built.returncode == 0, built.stderr
    status = json.loads(built.stdout)
    assert (status["state"], status["files"], status["complete"]) == ("idle", 2, True)

    found = cli("search", "where are churn features computed", "--json", "--k=2",
                cwd=work, data=data)
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)["results"]
    assert hits[0]["path"] == "pkg/churn.py" and hits[0]["symbol"] == "compute_churn_features"

    secret = cli("search", "hunter2-zzqv", "--json", "--mode=text", cwd=work, data=data)
    assert json.loads(secret.stdout)["results"] == []

    # a file changed outside Jupyter: the next run re-embeds only that file
    (work / "notes.md").write_text("# Notes\n\nThe budget review is monthly.\n")
    again = cli("index", cwd=work, data=data)
    last = json.loads(again.stdout)["last_pass"]
    assert (last["files_changed"], last["chunks_embedded"]) == (1, 1)
    text = cli("search", "budget review", "--mode=text", "--glob=*.md", cwd=work, data=data)
    assert text.stdout.split()[1].startswith("notes.md:"), text.stdout


def test_search_without_query_is_a_usage_error(tmp_path: Path) -> None:
    result = cli("search", cwd=tmp_path, data=tmp_path / "data")
    assert result.returncode != 0
    assert "usage" in (result.stderr + result.stdout)
