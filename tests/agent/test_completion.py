"""Inline completions: FIM through the Completions API, a chat "fill the hole" prompt for other
models, the prefix cache, stale requests cancelled, metering, the completion rate bucket; and
the pure parts (cache, cleaning, cutting) without a server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from cloudide_testing import MultiUserIdentity, auth
from fake_upstream import FakeUpstream, Turn, agent_config
from test_chat_ws import Chat, open_chat

from jupyter_cloudide.agent.completion import (
    CompletionCache,
    clean_completion,
    cut_prefix,
    cut_suffix,
)

pytestmark = pytest.mark.timeout(120)

# -- pure parts -----------------------------------------------------------------------------


def test_cache_answers_a_prefix_typed_through_the_completion() -> None:
    cache = CompletionCache(per_user=2)
    cache.store("alice", "m", "def f(", ")\n", "x, y")
    assert cache.lookup("alice", "m", "def f(", ")\n") == "x, y"
    assert cache.lookup("alice", "m", "def f(x", ")\n") == ", y"
    assert cache.lookup("alice", "m", "def f(x, y", ")\n") is None  # all typed: nothing left
    assert cache.lookup("alice", "m", "def f(z", ")\n") is None  # typed something else
    assert cache.lookup("alice", "m", "def f(x", "):\n") is None  # the suffix changed
    assert cache.lookup("alice", "other", "def f(x", ")\n") is None
    assert cache.lookup("bob", "m", "def f(x", ")\n") is None
    cache.store("alice", "m", "a", "", "1")
    cache.store("alice", "m", "b", "", "2")
    assert cache.lookup("alice", "m", "def f(", ")\n") is None  # evicted (2 per user)


def test_clean_completion_drops_fences_echo_and_overlap() -> None:
    assert clean_completion("```python\nreturn x + 1\n```", "def f(x):\n    ", "\n") == \
        "return x + 1"
    assert clean_completion("    total = sum(xs)", "    total = ", "\n") == "sum(xs)"
    assert clean_completion("a, b)", "print(", ")") == "a, b"
    assert clean_completion("items[0]", "x = ", "") == "items[0]"


def test_cuts_keep_the_lines_nearest_the_cursor() -> None:
    prefix = "".join(f"line{i}\n" for i in range(100)) + "x = "
    cut = cut_prefix(prefix, 40)
    assert cut.endswith("line99\nx = ") and cut.startswith("line") and len(cut) <= 40
    suffix = "\n" + "".join(f"after{i}\n" for i in range(100))
    head = cut_suffix(suffix, 40)
    assert head.startswith("\nafter0\n") and not head.endswith("after") and len(head) <= 40


# -- on a server ------------------------------------------------------------------------------


@pytest.fixture
def server_config() -> dict[str, Any]:
    return {"identity_provider_class": MultiUserIdentity}


@pytest.fixture
def cloudide_config(upstream: FakeUpstream, request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.node.get_closest_marker("no_completion_model"):
        return agent_config(upstream)
    return agent_config(upstream, discover_models=False, completion_model="coder", models=[
        {"id": "gpt-4o-mini", "provider": "openai", "model": "gpt-4o-mini"},
        {"id": "coder", "provider": "openai", "model": "qwen2.5-coder",
         "roles": ["completion"], "capabilities": ["fim"],
         "price_per_1k": {"input": 1.0, "output": 2.0}},
        {"id": "chatty", "provider": "openai", "model": "gpt-4o-mini",
         "roles": ["completion"], "capabilities": []}],
        rate_limits={"completion": {"requests_per_minute": 6}})


async def complete(chat: Chat, **payload: Any) -> tuple[dict[str, Any], str]:
    """One ``complete`` request: its response frame and the streamed text."""
    rid = await chat.send("complete", **payload)
    deltas: list[str] = []
    while True:
        frame = await chat.frame()
        if frame["type"] == "stream" and "completion_id" in frame["payload"]:
            deltas.append(frame["payload"]["delta"])
        elif frame["type"] == "response" and frame["id"] == rid:
            return frame, "".join(deltas)


async def test_fim_model_gets_prompt_and_suffix_and_is_metered(
        cloudide: Any, jp_fetch: Any, jp_http_port: int, jp_base_url: str,
        upstream: FakeUpstream) -> None:
    chat = await open_chat(jp_http_port, jp_base_url)
    try:
        upstream.script(Turn(text="sum(xs) / len(xs)", chunk_size=4))
        frame, streamed = await complete(chat, prefix="def mean(xs):\n    return ",
                                         suffix="\n\nprint(mean([1]))\n", language="python")
        result = frame["payload"]
        assert result["status"] == "ok" and result["fim"] and not result["cached"]
        assert result["text"] == streamed == "sum(xs) / len(xs)"
        call = upstream.requests[-1]
        assert call["path"] == "/v1/completions" and call["model"] == "qwen2.5-coder"
        assert call["body"]["prompt"].endswith("    return ")
        assert call["body"]["suffix"].startswith("\n\nprint(mean")
        assert call["body"]["stream"] is True

        # typing what was suggested: the rest comes from the cache, no model call
        calls = len(upstream.requests)
        frame, streamed = await complete(chat, prefix="def mean(xs):\n    return sum(",
                                         suffix="\n\nprint(mean([1]))\n")
        assert frame["payload"]["cached"] and frame["payload"]["text"] == "xs) / len(xs)"
        assert streamed == "xs) / len(xs)" and len(upstream.requests) == calls
    finally:
        chat.conn.close()
    models = json.loads((await jp_fetch("cloudide", "api", "models",
                                        headers=auth("alice"))).body)
    assert models["completion_model"] == "coder"
    await cloudide.ledger.flush()
    store = await cloudide.metadata_store()
    rows = [r for r in store.list_usage_events("alice") if r.route == "completion"]
    assert len(rows) == 1 and rows[0].model == "coder" and rows[0].cost > 0


async def test_chat_model_fills_the_hole_and_the_answer_is_cleaned(
        cloudide: Any, jp_fetch: Any, jp_http_port: int, jp_base_url: str,
        upstream: FakeUpstream) -> None:
    chat = await open_chat(jp_http_port, jp_base_url)
    try:
        upstream.script(Turn(text="```python\n    total = sum(xs)\n```"))
        frame, _ = await complete(chat, prefix="def f(xs):\n    total = ", suffix="\n",
                                  model="chatty", path="stats.py")
        assert frame["payload"]["status"] == "ok" and not frame["payload"]["fim"]
        assert frame["payload"]["text"] == "sum(xs)"
        body = upstream.requests[-1]["body"]
        assert upstream.requests[-1]["path"] == "/v1/chat/completions"
        assert "tools" not in body or not body["tools"]
        assert "<CURSOR>" in body["messages"][1]["content"]
        assert "File: stats.py" in body["messages"][1]["content"]
        assert body["messages"][0]["content"].startswith("You are a code completion engine")
    finally:
        chat.conn.close()


async def test_a_newer_request_cancels_the_stale_one(
        cloudide: Any, jp_fetch: Any, jp_http_port: int, jp_base_url: str,
        upstream: FakeUpstream) -> None:
    chat = await open_chat(jp_http_port, jp_base_url)
    try:
        upstream.script(Turn(text="slow", first_token_delay=5.0), Turn(text="fast"))
        stale = await chat.send("complete", prefix="a = ", suffix="")
        await asyncio.to_thread(upstream.wait_for_requests, 1)
        fresh = await chat.send("complete", prefix="ab = ", suffix="")
        answers: dict[int, dict[str, Any]] = {}
        while len(answers) < 2:
            frame = await chat.frame()
            if frame["type"] == "response":
                answers[frame["id"]] = frame["payload"]
        assert answers[stale]["status"] == "cancelled" and answers[stale]["text"] == ""
        assert answers[fresh]["status"] == "ok" and answers[fresh]["text"] == "fast"
        for _ in range(50):  # the upstream sees the cancelled call's connection close
            if upstream.requests[0]["disconnected"]:
                break
            await asyncio.sleep(0.1)
        assert upstream.requests[0]["disconnected"]
    finally:
        chat.conn.close()


async def test_completions_have_their_own_rate_bucket(
        cloudide: Any, jp_fetch: Any, jp_http_port: int, jp_base_url: str,
        upstream: FakeUpstream) -> None:
    chat = await open_chat(jp_http_port, jp_base_url)
    try:
        upstream.script(*(Turn(text=str(i)) for i in range(6)))
        for i in range(6):
            frame, _ = await complete(chat, prefix=f"x{i} = ", suffix="")
            assert frame["payload"]["status"] == "ok", frame
        frame, _ = await complete(chat, prefix="y = ", suffix="")
        assert frame["error"]["status"] == 429
        upstream.script(Turn(text="chat still works"))
        _, _, text = await chat.turn("hello")
        assert text == "chat still works"
    finally:
        chat.conn.close()


@pytest.mark.no_completion_model
async def test_without_a_completion_model_the_request_says_so(
        cloudide: Any, jp_fetch: Any, jp_http_port: int, jp_base_url: str) -> None:
    chat = await open_chat(jp_http_port, jp_base_url)
    try:
        frame, _ = await complete(chat, prefix="x = ", suffix="")
        assert frame["error"]["status"] == 404
        assert "completion" in frame["error"]["message"]
    finally:
        chat.conn.close()
    models = json.loads((await jp_fetch("cloudide", "api", "models",
                                        headers=auth("alice"))).body)
    assert not any("completion" in m["roles"] for m in models["models"])
    assert models["completion_model"] is None
