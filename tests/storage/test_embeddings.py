"""Embedders: the child-process one against the in-process model, and the OpenAI-compatible
one against a local server speaking the wire protocol (real `openai` SDK)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fake_openai import API_KEY, FakeOpenAI

from jupyter_cloudide.storage.embed_worker import ProcessEmbedder
from jupyter_cloudide.storage.embeddings import EmbedderError, LocalEmbedder, OpenAIEmbedder
from jupyter_cloudide.storage.indexer import IndexService, IndexSettings
from jupyter_cloudide.storage.workspace import decode_text

pytestmark = pytest.mark.timeout(240)

TEXTS = ["def compute_churn_features(df):", "quarterly revenue forecast", "", "ünïcödé ✓"]


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(dim=48) as server:
        yield server


def test_process_embedder_matches_in_process_and_restarts() -> None:
    child = ProcessEmbedder(LocalEmbedder(), idle_timeout_s=0.5)
    try:
        assert child.id == LocalEmbedder().id
        vectors = child.embed(TEXTS)
        assert vectors.shape == (4, 384) and vectors.dtype == np.float32
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
        assert np.allclose(vectors, LocalEmbedder().embed(TEXTS), atol=1e-5)
        first = child.starts
        deadline = time.monotonic() + 30
        while child.running and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not child.running, "idle child did not exit"
        assert child.embed_query("again").shape == (384,)
        assert child.starts == first + 1
        # killed between calls (the OOM killer): the next call gets a fresh child
        assert child._proc is not None
        os.kill(child._proc.pid, signal.SIGKILL)
        child._proc.wait()
        assert child.embed(["x"]).shape == (1, 384)
        assert child.starts == first + 2
        # killed during a call: one clear error, then a fresh child
        assert child._proc is not None
        pid = child._proc.pid
        killer = threading.Timer(0.2, os.kill, (pid, signal.SIGKILL))
        killer.start()
        with pytest.raises(EmbedderError, match="died"):
            child.embed(["a long text to embed " * 50] * 20000)
        killer.join()
        assert child.embed(["x"]).shape == (1, 384)
    finally:
        child.close()
    assert not child.running


def test_process_embedder_reports_model_errors() -> None:
    broken = ProcessEmbedder(LocalEmbedder(model_path="/nonexistent/model"), idle_timeout_s=0)
    try:
        with pytest.raises(EmbedderError):
            broken.embed(["x"])
    finally:
        broken.close()


def test_openai_embedder_orders_by_index_and_normalizes(fake: FakeOpenAI) -> None:
    embedder = OpenAIEmbedder(model="text-embedding-3-small", base_url=fake.url,
                              api_key=API_KEY, batch_size=3)
    vectors = embedder.embed(TEXTS)
    assert vectors.shape == (4, 48) and embedder.dim == 48
    # the server returns data reversed; rows must still follow the inputs
    same = embedder.embed([TEXTS[1]])[0]
    assert np.allclose(vectors[1], same)
    assert [len(r["body"]["input"]) for r in fake.requests[-3:-1]] == [3, 1]
    assert all(r["body"]["input"][0] != "" for r in fake.requests)  # blank input sent as " "
    assert embedder.id == f"openai:{fake.url}:text-embedding-3-small"
    assert API_KEY not in embedder.id


def test_openai_embedder_errors_are_clear_and_keyless(fake: FakeOpenAI) -> None:
    wrong = OpenAIEmbedder(model="m", base_url=fake.url, api_key="sk-wrong-secret-123")
    with pytest.raises(EmbedderError) as info:
        wrong.embed(["x"])
    assert "AuthenticationError" in str(info.value)
    assert "sk-wrong-secret-123" not in str(info.value)
    fake.fail_next = 5  # more than the SDK's 2 retries
    with pytest.raises(EmbedderError, match="InternalServerError"):
        OpenAIEmbedder(model="m", base_url=fake.url, api_key=API_KEY).embed(["x"])


@pytest.mark.asyncio
async def test_index_with_openai_compatible_endpoint(fake: FakeOpenAI, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "churn.py").write_text("def churn_features(df):\n    return df.groupby('c')\n")
    (root / "notes.md").write_text("# Budget\n\nThe quarterly budget review.\n")

    async def reader(path: str) -> str | None:
        return decode_text((root / path).read_bytes())

    embedder = OpenAIEmbedder(model="m", base_url=fake.url, api_key=API_KEY)
    service = IndexService(IndexSettings(root_dir=str(root), data_dir=tmp_path / "data"),
                           embedder, reader)
    try:
        service.start(["alice"])
        status = await service.wait_idle("alice", 60)
        assert status["state"] == "idle" and status["files"] == 2, status
        assert status["embedder"] == embedder.id
        found = await service.search("alice", "quarterly budget review", k=1, mode="vector")
        assert found["results"][0]["path"] == "notes.md"
    finally:
        await service.close()
    sent = " ".join(str(r["body"]) for r in fake.requests)
    assert "churn_features" in sent  # the chunks went to the endpoint, the key did not
    assert all(API_KEY not in str(r["body"]) for r in fake.requests)
