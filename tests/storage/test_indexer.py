"""The indexing service end to end: real files in a temporary workspace, real LanceDB, the real
embedded model (loaded once per session), the same reader shape the app uses.

Workspaces are a handful of small files so the whole module stays fast on a 2-core machine;
every unique word a test searches for lives in exactly one chunk, so "found" and "gone" are
unambiguous.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jupyter_cloudide.storage.chunking import chunk_file, chunk_notebook
from jupyter_cloudide.storage.embeddings import LocalEmbedder
from jupyter_cloudide.storage.index import (
    SCHEMA_VERSION,
    SearchFilter,
    embedding_input,
    embedding_key,
    glob_to_regex,
    sql_literal,
)
from jupyter_cloudide.storage.indexer import (
    IndexService,
    IndexSettings,
    OnProgress,
    user_folder,
)
from jupyter_cloudide.storage.workspace import decode_text

WAIT_S = 120

# --- the workspace ---------------------------------------------------------------------------

FEATURES_PY = '''\
"""Feature engineering for the customer model."""
import pandas as pd


def compute_churn_features(events):
    """Per-customer churn signals: days since the last login, cancelled subscriptions and
    support tickets opened in the last ninety days."""
    last_login = events.groupby("customer_id")["login_at"].max()
    cancelled = events[events.kind == "cancel"].groupby("customer_id").size()
    tickets = events[events.kind == "ticket"].groupby("customer_id").size()
    return pd.DataFrame({"last_login": last_login, "cancelled": cancelled,
                         "tickets": tickets}).fillna(0)


def qxfrobnicate_ledger(ledger):
    """Fold the ledger into per-account balances (marker: alphawombat)."""
    balances = {}
    for account, amount in ledger:
        balances[account] = balances.get(account, 0) + amount
    return balances


def plot_revenue(df):
    """Bar chart of monthly revenue (marker: gammaheron)."""
    monthly = df.resample("M", on="ts")["amount"].sum()
    return monthly.plot.bar()
'''

README_MD = """\
# Project

Internal analytics for the customer team.

## Deployment

We deploy with kubectl to the staging cluster first (marker: deltakestrel), then to production.
"""

PNG_PAYLOAD = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkZmbmzzIxYmkpmgqxbinary"


def analysis_notebook() -> dict[str, Any]:
    html = (
        "<table border='1' class='dataframe'><thead><tr><th></th>"
        "<th>cohort_month</th><th>cohortltvusd</th></tr></thead>"
        "<tbody><tr><th>0</th><td>2024-01</td><td>bodycellzorblax</td></tr></tbody></table>"
    )
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "language": "python",
                                    "display_name": "Python 3"}},
        "cells": [
            {"cell_type": "markdown", "id": "intro", "metadata": {},
             "source": ["# Quarterly analysis\n", "This notebook explores retention cohorts."]},
            {"cell_type": "code", "id": "load", "metadata": {}, "execution_count": 1,
             "source": ["import pandas as pd\n", "cohorts = pd.read_csv('cohorts.csv')\n",
                        "cohorts.head()"],
             "outputs": [{"output_type": "execute_result", "execution_count": 1, "metadata": {},
                          "data": {"text/html": [html],
                                   "text/plain": ["  cohort_month  cohortltvusd"]}}]},
            {"cell_type": "code", "id": "plot", "metadata": {}, "execution_count": 2,
             "source": ["import matplotlib.pyplot as plt\n",
                        "plt.plot(cohorts.cohort_month, cohorts.index)  # epsilonlynx"],
             "outputs": [{"output_type": "display_data", "metadata": {},
                          "data": {"image/png": PNG_PAYLOAD,
                                   "text/plain": ["<Figure size 640x480 with 1 Axes>"]}}]},
        ],
    }


def write(root: Path, files: dict[str, str | dict[str, Any]]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = content if isinstance(content, str) else json.dumps(content, indent=1)
        path.write_text(text, "utf-8")


def basic_workspace(root: Path) -> None:
    write(root, {"features.py": FEATURES_PY, "README.md": README_MD,
                 "analysis.ipynb": analysis_notebook()})


def small_py(name: str, marker: str) -> str:
    return (f'def {name}(x):\n    """Helper {name} (marker: {marker})."""\n'
            f"    return x + {len(name)}\n")


def chunks_of(root: Path, rel: str, settings: IndexSettings) -> list[Any]:
    data = (root / rel).read_bytes()
    if rel.endswith(".ipynb"):
        return chunk_notebook(rel, json.loads(data), max_lines=settings.max_lines,
                              overlap=settings.overlap)
    text = decode_text(data)
    assert text is not None
    return chunk_file(rel, text, max_lines=settings.max_lines, overlap=settings.overlap)


def expected_chunks(root: Path, rels: Sequence[str], settings: IndexSettings) -> int:
    return sum(len(chunks_of(root, rel, settings)) for rel in rels)


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.split("\n"), start=1) if needle in line)


def folder_snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


# --- the service -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def embedder() -> LocalEmbedder:
    """The real packaged model, loaded once for the whole session."""
    model = LocalEmbedder()
    assert model.dim == 384
    return model


def make_reader(root: Path, delay_s: float = 0.0) -> Any:
    async def reader(path: str) -> str | dict[str, Any] | None:
        if delay_s:
            await asyncio.sleep(delay_s)
        data = (root / path).read_bytes()
        if path.endswith(".ipynb"):
            notebook: dict[str, Any] = json.loads(data)
            return notebook
        return decode_text(data)

    return reader


def settings_for(root: Path, data: Path, **overrides: Any) -> IndexSettings:
    overrides.setdefault("scan_interval_s", 0)
    return IndexSettings(root_dir=str(root), data_dir=data, **overrides)


@asynccontextmanager
async def running(root: Path, data: Path, embedder: Any, *, on_progress: OnProgress | None = None,
                  reader_delay_s: float = 0.0, **overrides: Any) -> AsyncIterator[IndexService]:
    service = IndexService(settings_for(root, data, **overrides), embedder,
                           make_reader(root, reader_delay_s), on_progress=on_progress)
    try:
        yield service
    finally:
        await service.close()


async def build(service: IndexService, user: str = "alice") -> dict[str, Any]:
    service.start([user])
    status = await service.wait_idle(user, WAIT_S)
    assert status["state"] == "idle", status
    assert "error" not in status, status
    return status


async def hits(service: IndexService, query: str, user: str = "alice", **kw: Any
               ) -> list[dict[str, Any]]:
    kw.setdefault("k", 20)
    result = await service.search(user, query, **kw)
    found: list[dict[str, Any]] = result["results"]
    return found


async def text_paths(service: IndexService, token: str, user: str = "alice") -> set[str]:
    """Paths whose chunks contain ``token`` (a full-text search, checked against the text)."""
    return {h["path"] for h in await hits(service, token, user, mode="text")
            if token.lower() in h["snippet"].lower()}


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    root, data = tmp_path / "root", tmp_path / "data"
    root.mkdir()
    yield root, data


# --- 1. a full build -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_full_build_indexes_code_markdown_and_notebooks(
        workspace: tuple[Path, Path], embedder: LocalEmbedder) -> None:
    root, data = workspace
    basic_workspace(root)
    async with running(root, data, embedder) as service:
        status = await build(service)
        rels = ["features.py", "README.md", "analysis.ipynb"]
        total = expected_chunks(root, rels, service.settings)
        assert status["complete"] is True
        assert status["files"] == 3
        assert status["chunks"] == total
        assert status["embedder"] == embedder.id
        assert status["last_pass"]["files_changed"] == 3
        assert status["last_pass"]["chunks_embedded"] == total
        assert status["last_pass"]["cancelled"] is False

        # a question in words finds the function that does it
        for mode in ("vector", "hybrid"):
            top = (await hits(service, "where do we compute churn features", mode=mode))[0]
            assert (top["path"], top.get("symbol")) == ("features.py", "compute_churn_features")
            assert top["language"] == "python"
            assert top["kind"] == "function"
            assert top["start_line"] == line_of(FEATURES_PY, "def compute_churn_features")
            assert top["end_line"] == line_of(FEATURES_PY, '"tickets": tickets}).fillna(0)')

        # an exact identifier, full text only
        top = (await hits(service, "qxfrobnicate_ledger", mode="text"))[0]
        assert top["symbol"] == "qxfrobnicate_ledger"
        assert top["start_line"] == line_of(FEATURES_PY, "def qxfrobnicate_ledger")
        assert top["end_line"] == line_of(FEATURES_PY, "return balances")
        assert await text_paths(service, "alphawombat") == {"features.py"}

        # markdown sections carry their heading and real lines
        [section] = [h for h in await hits(service, "deltakestrel", mode="text")
                     if h["path"] == "README.md"]
        assert section["language"] == "markdown"
        assert section["symbol"] == "Project > Deployment"
        assert section["start_line"] == line_of(README_MD, "## Deployment")
        assert section["end_line"] == line_of(README_MD, "deltakestrel")

        # notebook hits name their cell; a DataFrame output contributes its columns only
        [columns_hit] = [h for h in await hits(service, "cohortltvusd", mode="text")
                         if h["path"] == "analysis.ipynb"]
        assert (columns_hit["cell_index"], columns_hit["cell_id"]) == (1, "load")
        assert columns_hit["kind"] == "cell"
        assert (columns_hit["start_line"], columns_hit["end_line"]) == (1, 3)
        assert "cohortltvusd" in columns_hit["snippet"]
        [plot_hit] = [h for h in await hits(service, "epsilonlynx", mode="text")
                      if h["path"] == "analysis.ipynb"]
        assert (plot_hit["cell_index"], plot_hit["cell_id"]) == (2, "plot")
        assert (plot_hit["start_line"], plot_hit["end_line"]) == (1, 2)
        top = (await hits(service, "quarterly analysis retention cohorts", mode="hybrid"))[0]
        assert (top["path"], top["cell_index"], top["language"]) == ("analysis.ipynb", 0,
                                                                     "markdown")
        # table bodies and images never reach the index
        assert await text_paths(service, "bodycellzorblax") == set()
        assert await text_paths(service, PNG_PAYLOAD[:40]) == set()
        for hit in await hits(service, "figure plot cohorts", mode="hybrid"):
            assert PNG_PAYLOAD[:20] not in hit["snippet"]


# --- 2. incremental update -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_save_reindexes_only_the_changed_chunks(
        workspace: tuple[Path, Path], embedder: LocalEmbedder) -> None:
    root, data = workspace
    basic_workspace(root)
    async with running(root, data, embedder) as service:
        await build(service)
        old_keys = {embedding_key(embedding_input(c))
                    for c in chunks_of(root, "features.py", service.settings)}
        # the middle function changes and grows a line: the last one moves down, unchanged
        changed = FEATURES_PY.replace(
            '    """Fold the ledger into per-account balances (marker: alphawombat)."""\n',
            '    """Fold the ledger into per-account balances (marker: betaotter)."""\n'
            "    # negative amounts are refunds\n")
        assert changed != FEATURES_PY
        write(root, {"features.py": changed})
        service.on_contents_event({"action": "save", "path": "features.py"})
        status = await service.wait_idle("alice", WAIT_S)

        new_chunks = chunks_of(root, "features.py", service.settings)
        fresh = [c for c in new_chunks if embedding_key(embedding_input(c)) not in old_keys]
        assert len(fresh) == 1 and fresh[0].symbol == "qxfrobnicate_ledger"
        last = status["last_pass"]
        assert last["files_changed"] == 1
        assert last["files_removed"] == 0
        assert last["chunks_embedded"] == 1
        assert last["chunks_reused"] == len(new_chunks) - 1 > 0
        assert status["chunks"] == expected_chunks(
            root, ["features.py", "README.md", "analysis.ipynb"], service.settings)

        assert await text_paths(service, "betaotter") == {"features.py"}
        assert await text_paths(service, "alphawombat") == set()
        # the moved function's reused vector comes with its new line range
        [moved] = [h for h in await hits(service, "gammaheron", mode="text")
                   if h["path"] == "features.py"]
        assert moved["symbol"] == "plot_revenue"
        assert moved["start_line"] == line_of(changed, "def plot_revenue")
        assert moved["start_line"] == line_of(FEATURES_PY, "def plot_revenue") + 1
        top = (await hits(service, "where do we compute churn features", mode="vector"))[0]
        assert top.get("symbol") == "compute_churn_features"


# --- 3. mtime-only change --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_touch_without_content_change_embeds_nothing(
        workspace: tuple[Path, Path], embedder: LocalEmbedder) -> None:
    root, data = workspace
    basic_workspace(root)
    async with running(root, data, embedder) as service:
        before = await build(service)
        for rel in ("features.py", "analysis.ipynb"):
            stat = (root / rel).stat()
            os.utime(root / rel, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
            service.on_contents_event({"action": "save", "path": rel})
        status = await service.wait_idle("alice", WAIT_S)
        last = status["last_pass"]
        assert last["files_changed"] == 2
        assert last["chunks_embedded"] == 0
        assert status["chunks"] == before["chunks"]
        assert status["files"] == before["files"]
        assert await text_paths(service, "alphawombat") == {"features.py"}
        # the new mtimes were recorded: a scan finds nothing to do
        service.request("alice", scan=True)
        status = await service.wait_idle("alice", WAIT_S)
        assert status["last_pass"]["files_changed"] == 0
        assert status["last_pass"]["chunks_embedded"] == 0


# --- 4. changes outside Jupyter --------------------------------------------------------------


@pytest.mark.asyncio
async def test_scan_finds_changes_made_outside_jupyter(
        workspace: tuple[Path, Path], embedder: LocalEmbedder) -> None:
    root, data = workspace
    write(root, {"a.py": small_py("first_helper", "zetaibis"),
                 "b.py": small_py("second_helper", "etajackal"),
                 "sub/c.md": "# Notes\n\nmarker: thetakoala\n"})
    async with running(root, data, embedder) as service:
        await build(service)
        write(root, {"a.py": small_py("first_helper", "iotalemur"),
                     "sub/new.txt": "brand new file, marker: kappamarmot\n"})
        (root / "b.py").unlink()
        (root / "sub" / "c.md").unlink()
        service.request("alice", scan=True)
        status = await service.wait_idle("alice", WAIT_S)
        last = status["last_pass"]
        assert (last["files_changed"], last["files_removed"]) == (2, 2)
        assert status["files"] == 2
        assert status["chunks"] == expected_chunks(root, ["a.py", "sub/new.txt"],
                                                   service.settings)
        assert await text_paths(service, "iotalemur") == {"a.py"}
        assert await text_paths(service, "kappamarmot") == {"sub/new.txt"}
        for gone in ("zetaibis", "etajackal", "thetakoala"):
            assert await text_paths(service, gone) == set()
        every = {h["path"] for h in await hits(service, "helper notes marker", k=50)}
        assert every <= {"a.py", "sub/new.txt"}


@pytest.mark.asyncio
async def test_periodic_scan_picks_up_outside_changes(
        workspace: tuple[Path, Path], embedder: LocalEmbedder) -> None:
    root, data = workspace
    write(root, {"a.py": small_py("first_helper", "zetaibis")})
    async with running(root, data, embedder, scan_interval_s=0.2) as service:
        await build(service)
        passes = service.user_index("alice").passes
        write(root, {"b.py": small_py("second_helper", "lambdavole")})
        ui = service.user_index("alice")
        for _ in range(200):
            if ui.passes > passes or ui.state != "idle":
                break
            await asyncio.sleep(0.02)
        # a pass the timer started counts as work for wait_idle, like any other
        if ui.state != "idle":
            assert not ui.idle.is_set()
        status = await service.wait_idle("alice", WAIT_S)
        assert status["files"] == 2
        assert await text_paths(service, "lambdavole") == {"b.py"}


# --- 5. rename and delete events -------------------------------------------------------------


@pytest.mark.asyncio
async def test_rename_and_delete_events_for_files_and_folders(
        workspace: tuple[Path, Path], embedder: LocalEmbedder) -> None:
    root, data = workspace
    write(root, {"a.py": small_py("first_helper", "muoriole"),
                 "pkg/x.py": small_py("x_helper", "nupelican"),
                 "pkg/deep/y.md": "# Y\n\nmarker: xiquokka\n",
                 "pkg2/z.py": small_py("z_helper", "omicronnewt")})
    async with running(root, data, embedder) as service:
        await build(service)

        os.rename(root / "a.py", root / "renamed.py")
        service.on_contents_event({"action": "rename", "path": "renamed.py",
                                   "source_path": "a.py"})
        await service.wait_idle("alice", WAIT_S)
        assert await text_paths(service, "muoriole") == {"renamed.py"}

        os.rename(root / "pkg", root / "lib")
        service.on_contents_event({"action": "rename", "path": "lib", "source_path": "pkg"})
        status = await service.wait_idle("alice", WAIT_S)
        assert await text_paths(service, "nupelican") == {"lib/x.py"}
        assert await text_paths(service, "xiquokka") == {"lib/deep/y.md"}
        assert status["files"] == 4
        assert await text_paths(service, "omicronnewt") == {"pkg2/z.py"}

        (root / "renamed.py").unlink()
        service.on_contents_event({"action": "delete", "path": "renamed.py"})
        status = await service.wait_idle("alice", WAIT_S)
        assert await text_paths(service, "muoriole") == set()
        assert status["files"] == 3

        shutil.rmtree(root / "lib")
        service.on_contents_event({"action": "delete", "path": "/lib/"})
        status = await service.wait_idle("alice", WAIT_S)
        assert status["last_pass"]["files_removed"] == 2
        assert await text_paths(service, "nupelican") == set()
        assert await text_paths(service, "xiquokka") == set()
        # a sibling folder sharing the prefix is untouched
        assert await text_paths(service, "omicronnewt") == {"pkg2/z.py"}
        assert status["files"] == 1
        assert status["chunks"] == expected_chunks(root, ["pkg2/z.py"], service.settings)
        paths = {h["path"] for h in await hits(service, "helper marker", k=50)}
        assert paths == {"pkg2/z.py"}


# --- 6. secrets and hidden files -------------------------------------------------------------

SECRETS = {
    ".env": "API_TOKEN=secrettokenenv\n",
    "id_rsa": "-----BEGIN OPENSSH PRIVATE KEY-----\nsecrettokenrsa\n",
    "credentials.json": '{"password": "secrettokencred"}\n',
    "secrets.yaml": "password: secrettokenyaml\n",
    ".hidden/x.py": "PASSWORD = 'secrettokenhidden'\n",
    "ignored.txt": "secrettokenignored\n",
    "build/out.py": "TOKEN = 'secrettokenbuild'\n",
}


@pytest.mark.asyncio
async def test_secrets_hidden_and_gitignored_files_are_never_indexed(
        workspace: tuple[Path, Path], embedder: LocalEmbedder) -> None:
    root, data = workspace
    write(root, {"app.py": "def visible():\n    return 'visibletoken password secret'\n",
                 ".gitignore": "ignored.txt\nbuild/\n", **SECRETS})
    tokens = [re.search(r"secrettoken\w+", text).group(0)  # type: ignore[union-attr]
              for text in SECRETS.values()]

    async def assert_nothing_leaks(service: IndexService) -> None:
        for query in [*tokens, " ".join(tokens), "password API token private key"]:
            for mode in ("text", "hybrid", "vector"):
                for hit in await hits(service, query, mode=mode):
                    assert hit["path"] == "app.py", hit
                    assert "secrettoken" not in hit["snippet"], hit

    async with running(root, data, embedder) as service:
        status = await build(service)
        assert status["files"] == 1
        assert status["chunks"] == expected_chunks(root, ["app.py"], service.settings)
        assert await text_paths(service, "visibletoken") == {"app.py"}
        await assert_nothing_leaks(service)

        # saves (and renames onto) denied paths are ignored just the same
        for rel in SECRETS:
            write(root, {rel: SECRETS[rel] + "# edited\n"})
            service.on_contents_event({"action": "save", "path": rel})
        service.on_contents_event({"action": "rename", "path": ".env",
                                   "source_path": "old.env.txt"})
        status = await service.wait_idle("alice", WAIT_S)
        assert status["files"] == 1
        assert status["last_pass"]["chunks_embedded"] == 0
        await assert_nothing_leaks(service)


# --- 7. users are isolated -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_users_have_separate_indexes(
        workspace: tuple[Path, Path], embedder: LocalEmbedder) -> None:
    root, data = workspace
    write(root, {"a.py": small_py("first_helper", "pirhino"),
                 "b.md": "# B\n\nmarker: rhoskunk\n"})
    alice_dir, bob_dir = data / user_folder("alice"), data / user_folder("bob")
    assert alice_dir != bob_dir
    assert user_folder("a/b") != user_folder("a_b")  # same slug, still distinct
    async with running(root, data, embedder) as service:
        service.start(["alice", "bob"])
        alice = await service.wait_idle("alice", WAIT_S)
        bob = await service.wait_idle("bob", WAIT_S)
        assert alice_dir.is_dir() and bob_dir.is_dir()
        assert (alice["files"], alice["chunks"]) == (bob["files"], bob["chunks"]) == (2, 2)
        for user in ("alice", "bob"):
            assert await text_paths(service, "pirhino", user) == {"a.py"}

        snapshot = folder_snapshot(alice_dir)
        alice_passes = service.user_index("alice").passes
        service.request("bob", rebuild=True)
        bob = await service.wait_idle("bob", WAIT_S)
        assert bob["last_pass"]["files_changed"] == 2
        assert bob["last_pass"]["chunks_embedded"] == 2
        assert service.user_index("alice").passes == alice_passes
        assert folder_snapshot(alice_dir) == snapshot
        assert await text_paths(service, "rhoskunk", "bob") == {"b.md"}

        # bob's index gone from under the service: alice does not notice
        shutil.rmtree(bob_dir)
        assert await text_paths(service, "rhoskunk", "alice") == {"b.md"}
        assert folder_snapshot(alice_dir) == snapshot

    # a fresh service opens alice's index as it is: nothing to embed again
    async with running(root, data, embedder) as service:
        alice = await build(service, "alice")
        assert alice["last_pass"]["chunks_embedded"] == 0
        assert alice["last_pass"]["files_changed"] == 0
        assert await text_paths(service, "pirhino", "alice") == {"a.py"}
        assert not bob_dir.exists()


# --- 8. filters cannot be injected -----------------------------------------------------------

FILTER_NAMES = {
    "it's.py": "quoteowl",
    "100%_done.py": "percentyak",
    "a_b.py": "underscoreyak",
    "aXb.py": "lookalikeyak",
    "src/mod.py": "srcmodgnu",
    "src/deep/inner.py": "deepinnergnu",
    "notes.md": "notesgnu",
}

NASTY = [
    "x' OR '1'='1",
    "*') OR 1=1 --",
    "*' OR path LIKE '%",
    "%",
    "_",
    "\\",
    "\\'",
    "''",
    "'''';DROP TABLE chunks;--",
    '"',
    "*\"' OR \"1\"=\"1",
    "*.py') OR regexp_like(path, '.*",
    "[",
    "[!",
    "(",
    "a{2}",
    "$",
    "^.*$",
    "*%*",
    "?_?",
    "**/*' --",
]


def glob_matches(glob: str, path: str) -> bool:
    return re.fullmatch(glob_to_regex(glob), path, re.DOTALL) is not None


@pytest.mark.asyncio
async def test_filters_resist_injection_and_are_obeyed(
        workspace: tuple[Path, Path], embedder: LocalEmbedder) -> None:
    root, data = workspace
    write(root, {rel: small_py("helper_" + marker, marker) for rel, marker in
                 FILTER_NAMES.items() if rel.endswith(".py")})
    write(root, {"notes.md": "# Notes\n\nhelper notes, marker: notesgnu\n"})
    async with running(root, data, embedder) as service:
        status = await build(service)
        assert status["files"] == len(FILTER_NAMES)

        async def search_paths(query: str, **kw: Any) -> list[str]:
            return [h["path"] for h in await hits(service, query, **kw)]

        for bad in NASTY:
            for mode in ("hybrid", "vector", "text"):
                # as a query: just words
                await search_paths(bad, mode=mode)
                # as a glob: matches only what the glob says, never everything
                found = await search_paths("helper marker", mode=mode, path_glob=bad)
                expected = {rel for rel in FILTER_NAMES if glob_matches(bad, rel)}
                assert set(found) == expected, (bad, mode, found)
            if not re.fullmatch(r"[a-z0-9+#._-]{1,32}", bad):
                with pytest.raises(ValueError):
                    await service.search("alice", "helper", languages=(bad,))
            else:  # a well-formed name that no file has
                assert await search_paths("helper", languages=(bad,)) == []

        for languages in (("python'--",), ("python", "x') OR ('1'='1"), ("",), ("PYTHON",)):
            with pytest.raises(ValueError):
                await service.search("alice", "helper", languages=languages)

        expectations = {
            "it's.py": {"it's.py"},
            "100%*": {"100%_done.py"},
            "a_b.py": {"a_b.py"},
            "a?b.py": {"a_b.py", "aXb.py"},
            "*.py": {rel for rel in FILTER_NAMES if rel.endswith(".py")},
            "**/*.py": {rel for rel in FILTER_NAMES if rel.endswith(".py")},
            "src/*.py": {"src/mod.py"},
            "src/**": {"src/mod.py", "src/deep/inner.py"},
            "src/**/*.py": {"src/mod.py", "src/deep/inner.py"},
            "inner.py": {"src/deep/inner.py"},
            "/src/*.py": {"src/mod.py"},
            "*.md": {"notes.md"},
            "[a-z]_b.py": {"a_b.py"},
        }
        for glob, expected in expectations.items():
            for mode in ("hybrid", "vector", "text"):
                found = set(await search_paths("helper marker", mode=mode, path_glob=glob))
                assert found == expected, (glob, mode, found)

        found = await hits(service, "helper marker", mode="hybrid", languages=("markdown",))
        assert {h["path"] for h in found} == {"notes.md"}
        found = await hits(service, "helper marker", mode="hybrid", path_glob="**",
                           languages=("python",))
        assert {h["path"] for h in found} == {rel for rel in FILTER_NAMES if rel.endswith(".py")}


def test_glob_to_regex_and_where_clause() -> None:
    # every other character is literal: regex specials escaped, SQL quotes doubled
    assert glob_to_regex("a.b") == r"^(?:.*/)?a\.b$"
    assert glob_to_regex("src/*.py") == r"^src/[^/]*\.py$"
    assert glob_to_regex("**/*.py") == r"^(?:.*/)?[^/]*\.py$"
    assert glob_to_regex("/src/**") == r"^src/.*$"
    for special in "().+^$|{}\\":
        regex = glob_to_regex(f"a{special}b")
        assert re.fullmatch(regex, f"a{special}b")
        assert not re.fullmatch(regex, "ab")
        assert not re.fullmatch(regex, "aXb")

    def matches(glob: str, path: str) -> bool:
        return re.fullmatch(glob_to_regex(glob), path) is not None

    assert matches("src/*.py", "src/a.py")
    assert not matches("src/*.py", "src/sub/a.py")
    assert not matches("src/*.py", "other/src/a.py")
    assert not matches("src/*.py", "src/a.pyc")
    assert matches("**/*.py", "a.py") and matches("**/*.py", "x/y/a.py")
    assert matches("*.py", "deep/down/a.py")  # no slash: the name at any depth
    assert not matches("*.py", "a.py/b.txt")
    assert matches("a?c", "abc") and not matches("a?c", "a/c")
    assert matches("[ab]x", "bx") and not matches("[ab]x", "cx")
    assert matches("[!ab]x", "cx") and not matches("[!ab]x", "ax")
    assert matches("[a']x", "[a']x")  # not a plain class: literal
    assert matches("100%", "100%") and not matches("100%", "1000")
    assert matches("a_b", "a_b") and not matches("a_b", "aXb")

    assert sql_literal("it's") == "'it''s'"
    assert sql_literal("''") == "''''''"
    assert sql_literal("a\\b") == "'a\\b'"
    with pytest.raises(ValueError):
        sql_literal("a\x00b")

    where = SearchFilter(path_glob="x' OR '1'='1", languages=("python", "c++")).where()
    assert where == ("regexp_like(path, '^(?:.*/)?x''\\ OR\\ ''1''=''1$') AND "
                     "language IN ('python', 'c++')")
    # outside the literals only the fixed SQL text remains: nothing the user typed
    assert re.sub(r"'(?:[^']|'')*'", "L", where) == "regexp_like(path, L) AND language IN (L, L)"
    where = SearchFilter(path_glob="*') OR 1=1 --").where()
    assert where is not None
    assert re.sub(r"'(?:[^']|'')*'", "L", where) == "regexp_like(path, L)"
    assert SearchFilter().where() is None
    assert SearchFilter(languages=("python",)).where() == "language IN ('python')"
    for bad_language in ("python'--", "Python", "", "a b", "x" * 33, "py\x00"):
        with pytest.raises(ValueError):
            SearchFilter(languages=(bad_language,))
    for bad_glob in ("", "a\x00b"):
        with pytest.raises(ValueError):
            SearchFilter(path_glob=bad_glob)


# --- 9. a corrupt index is rebuilt -----------------------------------------------------------


def corrupt(folder: Path, how: str) -> None:
    meta = folder / "meta.json"
    if how == "meta_junk":
        meta.write_text("{not json", "utf-8")
    elif how == "meta_schema":
        content = json.loads(meta.read_text("utf-8"))
        content["schema"] = SCHEMA_VERSION + 1
        meta.write_text(json.dumps(content), "utf-8")
    elif how == "meta_missing":
        meta.unlink()
    elif how == "chunks_garbage":
        files = [p for p in (folder / "chunks.lance").rglob("*") if p.is_file()]
        assert files
        for path in files:
            path.write_bytes(b"\x00garbage\xff" * 64)
    elif how == "chunks_data_garbage":
        files = [p for p in (folder / "chunks.lance" / "data").rglob("*") if p.is_file()]
        assert files
        for path in files:
            path.write_bytes(b"\x00garbage\xff" * 64)
    elif how == "files_missing":
        shutil.rmtree(folder / "files.lance")
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["meta_junk", "meta_schema", "meta_missing", "chunks_garbage",
                                 "chunks_data_garbage", "files_missing"])
async def test_corrupt_index_is_rebuilt(
        workspace: tuple[Path, Path], embedder: LocalEmbedder, how: str) -> None:
    root, data = workspace
    write(root, {"a.py": small_py("first_helper", "sigmabison"),
                 "b.md": "# B\n\nmarker: tauferret\n"})
    async with running(root, data, embedder) as service:
        first = await build(service)
    folder = data / user_folder("alice")
    corrupt(folder, how)

    async with running(root, data, embedder) as service:
        status = await build(service)
        assert status["complete"] is True
        assert (status["files"], status["chunks"]) == (first["files"], first["chunks"])
        last = status["last_pass"]
        assert last["files_changed"] == 2
        assert last["chunks_embedded"] == first["chunks"]
        assert last["chunks_reused"] == 0
        assert await text_paths(service, "sigmabison") == {"a.py"}
        assert await text_paths(service, "tauferret") == {"b.md"}
        top = (await hits(service, "first helper", mode="vector"))[0]
        assert top["path"] == "a.py"
    meta = json.loads((folder / "meta.json").read_text("utf-8"))
    assert meta["schema"] == SCHEMA_VERSION
    assert meta["embedder"] == embedder.id
    assert meta["complete"] is True

    # and the rebuilt index opens cleanly afterwards
    async with running(root, data, embedder) as service:
        status = await build(service)
        assert status["last_pass"]["chunks_embedded"] == 0


# --- 10. cancel half-way, resume -------------------------------------------------------------


@pytest.mark.asyncio
async def test_cancelled_build_resumes_without_redoing_or_duplicating(
        workspace: tuple[Path, Path], embedder: LocalEmbedder) -> None:
    root, data = workspace
    rels = [f"mod{i:02d}.py" for i in range(20)]
    write(root, {rel: small_py(f"helper_{i}", f"resume{i:02d}marker")
                 for i, rel in enumerate(rels)})
    settings = settings_for(root, data, batch_chunks=8)
    total = expected_chunks(root, rels, settings)
    assert total == 20

    progressed = asyncio.Event()

    def on_progress(user: str, status: dict[str, Any]) -> None:
        if status.get("progress", {}).get("chunks_embedded", 0) > 0:
            progressed.set()

    async with running(root, data, embedder, on_progress=on_progress, batch_chunks=8,
                       reader_delay_s=0.1) as service:
        service.start(["alice"])
        await asyncio.wait_for(progressed.wait(), WAIT_S)
        ui = service.user_index("alice")
        assert ui.state == "building"
    # closed half-way: some files are committed, not all
    assert not ui.index.complete

    async with running(root, data, embedder, batch_chunks=8) as service:
        status = await build(service)
        ui = service.user_index("alice")
        states = ui.index.file_states()
        last = status["last_pass"]
        assert status["complete"] is True
        assert 0 < last["chunks_embedded"] < total
        assert last["files_changed"] < len(rels)
        assert status["files"] == len(rels) and set(states) == set(rels)
        assert status["chunks"] == sum(s.chunks for s in states.values()) == total
        for i, rel in enumerate(rels):
            assert await text_paths(service, f"resume{i:02d}marker") == {rel}
        found = await hits(service, "helper marker", k=50, mode="hybrid")
        pairs = [(h["path"], h["start_line"]) for h in found]
        assert len(pairs) == len(set(pairs)) == total


# --- 11. another embedder --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_embedder_change_rebuilds(
        workspace: tuple[Path, Path], embedder: LocalEmbedder) -> None:
    root, data = workspace
    write(root, {"a.py": small_py("first_helper", "upsilonmoose"),
                 "b.md": "# B\n\nmarker: phimongoose\n"})
    folder = data / user_folder("alice")
    async with running(root, data, embedder) as service:
        first = await build(service)
    assert json.loads((folder / "meta.json").read_text("utf-8"))["embedder"] == embedder.id

    # LocalEmbedder's id covers its settings: another truncation is another embedder (the
    # same weights, so it loads in about a second once torch is imported)
    other = LocalEmbedder(max_tokens=64)
    assert other.id != embedder.id
    async with running(root, data, other) as service:
        status = await build(service)
        assert status["embedder"] == other.id
        assert status["last_pass"]["chunks_embedded"] == first["chunks"]
        assert status["last_pass"]["chunks_reused"] == 0
        assert status["chunks"] == first["chunks"]
        assert await text_paths(service, "phimongoose") == {"b.md"}
    meta = json.loads((folder / "meta.json").read_text("utf-8"))
    assert meta["embedder"] == other.id
    assert meta["dim"] == embedder.dim


# --- 12. progress ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_progress_events(workspace: tuple[Path, Path], embedder: LocalEmbedder) -> None:
    root, data = workspace
    rels = [f"p{i}.py" for i in range(6)]
    write(root, {rel: small_py(f"progress_{i}", f"chimarker{i}") for i, rel in enumerate(rels)})
    events: list[tuple[str, dict[str, Any]]] = []
    async with running(root, data, embedder, batch_chunks=2, reader_delay_s=0.1,
                       on_progress=lambda user, status: events.append((user, status))) as service:
        status = await build(service)

    assert {user for user, _ in events} == {"alice"}
    building = [s for _, s in events if s["state"] == "building"]
    assert building, events
    assert all(s["progress"]["files_total"] == len(rels) for s in building)
    done = [s["progress"]["files_done"] for s in building]
    assert done == sorted(done)
    assert done[0] == 0
    assert any(0 < d <= len(rels) for d in done), done
    embedded = [s["progress"]["chunks_embedded"] for s in building]
    assert embedded == sorted(embedded)
    final = events[-1][1]
    assert final["state"] == "idle"
    assert "progress" not in final
    assert final["complete"] is True
    assert (final["files"], final["chunks"]) == (len(rels), len(rels))
    assert final["last_pass"] == status["last_pass"]
    assert np.all(np.diff([s["progress"]["files_done"] for s in building]) >= 0)
