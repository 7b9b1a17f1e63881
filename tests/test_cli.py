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


def test_usage_report_csv_and_reprice(tmp_path: Path) -> None:
    from datetime import datetime, timezone

    from jupyter_cloudide.storage import MetadataStore, UsageEventIn

    data = tmp_path / "data"
    (data / "config").mkdir(parents=True)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    with MetadataStore(f"sqlite:///{data / 'cloudide.db'}") as store:
        store.record_usage([
            UsageEventIn(event_id="t", user="alice", kind="tokens", model="m",
                         input_tokens=100, output_tokens=10, cost=0.25, occurred_at=now),
            UsageEventIn(event_id="k", user="bob", kind="kernel_busy", quantity=7200.0,
                         kernelspec="python3", group="@team", occurred_at=now)])
    by_user = cli("usage", "--by", "user", "--csv", cwd=tmp_path, data=data)
    assert by_user.returncode == 0, by_user.stderr
    lines = by_user.stdout.splitlines()
    assert lines[0].startswith("user,cost,input_tokens")
    assert lines[1].startswith("alice,0.25,100,10,1,")
    exported = cli("usage", "--user", "bob", "--rows", "--csv", cwd=tmp_path, data=data)
    assert "'@team" in exported.stdout and ",alice," not in exported.stdout
    # a price change: first hour at 1.0, then 0.5 per hour
    (data / "config" / "jupyter_server_config.py").write_text(
        'c.CloudIDEApp.kernel_prices = {"*": {"kernel_busy": [{"up_to_hours": 1, '
        '"per_hour": 1.0}, {"per_hour": 0.5}]}}\n')
    repriced = cli("usage", "reprice", "--since", now.strftime("%Y-%m-%d"), cwd=tmp_path,
                   data=data)
    assert repriced.returncode == 0, repriced.stderr
    assert json.loads(repriced.stdout)["changed"] == 1
    report = cli("usage", "--json", "--user", "bob", cwd=tmp_path, data=data)
    assert json.loads(report.stdout)["totals"]["cost"] == 1.5
    bad = cli("usage", "--since", "yesterday", cwd=tmp_path, data=data)
    assert bad.returncode != 0 and "YYYY-MM-DD" in bad.stderr
