"""The issue's bar: with nothing configured but OPENAI_BASE_URL / OPENAI_API_KEY (here pointing at
the fake upstream, an OpenAI-compatible server), a user holds a multi-turn conversation over the
WS channel in which the agent reads and searches (parallel tool calls), edits under approval and
runs code in a kernel; models are discovered from the server's /v1/models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudide_testing import MultiUserIdentity, auth
from fake_upstream import FakeUpstream, ToolCall, Turn
from test_chat_ws import kinds, open_chat

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def server_config() -> dict[str, Any]:
    return {"identity_provider_class": MultiUserIdentity}


@pytest.fixture
def cloudide_config(upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
                    ) -> Iterator[dict[str, Any]]:
    upstream.clear()
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", upstream.openai_base_url)
    monkeypatch.setenv("OPENAI_API_KEY", upstream.api_key)
    # no providers, no models, no default: only the environment (and the index, for search)
    yield {"index_start_delay": 0.0, "index_scan_interval": 0.0}


async def test_multi_turn_conversation_from_the_environment_alone(
        cloudide: Any, jp_fetch: Any, jp_http_port: int, jp_base_url: str, jp_root_dir: Path,
        upstream: FakeUpstream) -> None:
    (jp_root_dir / "prices.py").write_text(
        "def net_price(gross, vat):\n    return gross / (1 + vat)\n")
    service = cloudide.index_service()
    service.request("alice", scan=True)
    assert (await service.wait_idle("alice", timeout=180))["complete"]
    models = json.loads((await jp_fetch("cloudide", "api", "models",
                                        headers=auth("alice"))).body)
    discovered = {m["id"] for m in models["models"]}
    assert discovered and discovered <= set(upstream.models)

    chat = await open_chat(jp_http_port, jp_base_url)
    try:
        # 1. read and search in one step (two tool calls run concurrently), then answer
        upstream.script(Turn(tool_calls=[ToolCall("read_file", {"path": "prices.py"}),
                                         ToolCall("search_codebase", {"query": "net price"})]),
                        Turn(text="net_price divides by 1 + vat."))
        response, events, text = await chat.turn("How is the net price computed?")
        assert response["payload"]["status"] == "ok", response
        conversation = response["payload"]["conversation_id"]
        results = {e["name"]: e for e in events if e.get("kind") == "tool.result"}
        assert results["read_file"]["ok"] and "gross / (1 + vat)" in results["read_file"][
            "content"]
        assert results["search_codebase"]["ok"] and "prices.py" in results["search_codebase"][
            "content"]
        assert text == "net_price divides by 1 + vat."
        call = upstream.requests[-1]
        assert call["headers"]["authorization"] == f"Bearer {upstream.api_key}"

        # 2. an edit, under approval
        upstream.script(Turn(tool_calls=[ToolCall("edit_file", {
            "path": "prices.py", "old_string": "gross / (1 + vat)",
            "new_string": "round(gross / (1 + vat), 2)"})]), Turn(text="Rounded."))
        response, events, _ = await chat.turn("Round it to cents.", approve="allow",
                                              conversation_id=conversation)
        assert "approval.request" in kinds(events) and response["payload"]["status"] == "ok"
        assert "round(gross / (1 + vat), 2)" in (jp_root_dir / "prices.py").read_text()

        # 3. code in a kernel, under approval, using the edited file
        upstream.script(Turn(tool_calls=[ToolCall("execute_code", {
            "code": "from prices import net_price\nprint(net_price(121, 0.21))"})]),
            Turn(text="It gives 100.0."))
        response, events, _ = await chat.turn("Try it with 121 and 21%.", approve="allow",
                                              conversation_id=conversation)
        ran = next(e for e in events if e.get("kind") == "tool.result")
        assert ran["ok"] and "100.0" in ran["content"], ran
        # the third turn's first request carried the two earlier turns
        history = upstream.requests[-2]["body"]["messages"]
        assert [m["role"] for m in history].count("user") == 3
    finally:
        chat.conn.close()
