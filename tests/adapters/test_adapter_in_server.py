"""The reference adapter inside a real server: configured as a provider (its client secret from
the environment, as ``api_key_env``), it answers a ``chat.send`` over the session channel, tool
calls included; when its service is down, the router falls back to another provider."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudide_testing import MultiUserIdentity, auth
from fake_upstream import FakeUpstream, ToolCall, Turn
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect
from ws_model_service import CLIENT_SECRET, WsModelService

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def server_config() -> dict[str, Any]:
    return {"identity_provider_class": MultiUserIdentity}


@pytest.fixture
def cloudide_config(service: WsModelService, upstream: FakeUpstream,
                    monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("CORP_CLIENT_SECRET", CLIENT_SECRET)
    options = {k: v for k, v in service.options().items() if k != "client_secret"}
    return {
        "providers": [
            {"name": "corp", "kind": "adapter", "adapter": "ws-oauth2",
             "api_key_env": "CORP_CLIENT_SECRET", "options": options},
            {"name": "openai", "kind": "openai", "base_url": upstream.openai_base_url,
             "api_key": upstream.api_key}],
        "models": [
            {"id": "corp-large", "provider": "corp", "model": "corp-large", "quality": 90},
            {"id": "gpt-4o-mini", "provider": "openai", "model": "gpt-4o-mini",
             "quality": 10}],
        "default_model": "corp-large", "discover_models": False, "index_enabled": False,
    }


async def open_chat(port: int, base_url: str) -> WebSocketClientConnection:
    url = f"ws://127.0.0.1:{port}{base_url}cloudide/api/ws"
    conn = await websocket_connect(HTTPRequest(url, headers=auth("alice")))
    welcome = json.loads(str(await conn.read_message()))
    assert welcome["type"] == "welcome"
    return conn


async def turn(conn: WebSocketClientConnection, text: str
               ) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """A chat.send; (response, event payloads, streamed text)."""
    await conn.write_message(json.dumps({"type": "request", "id": 1, "payload": {
        "kind": "chat.send", "text": text}}))
    events: list[dict[str, Any]] = []
    deltas: list[str] = []
    while True:
        raw = await asyncio.wait_for(conn.read_message(), 60)
        assert raw is not None, "socket closed"
        frame = json.loads(raw)
        if frame["type"] == "stream":
            deltas.append(frame["payload"]["delta"])
        elif frame["type"] == "event":
            events.append(frame["payload"])
        elif frame["type"] == "response" and frame.get("id") == 1:
            return frame, events, "".join(deltas)


async def test_a_chat_turn_answered_by_the_adapter(
        cloudide: Any, jp_fetch: Any, jp_http_port: int, jp_base_url: str, jp_root_dir: Path,
        service: WsModelService, upstream: FakeUpstream) -> None:
    (jp_root_dir / "notes.md").write_text("The launch is on Tuesday.\n")
    service.script(Turn(tool_calls=[ToolCall("read_file", {"path": "notes.md"})]),
                   Turn(text="The launch is on Tuesday.", chunk_size=6, usage=(50, 7)))
    models = json.loads((await jp_fetch("cloudide", "api", "models",
                                        headers=auth("alice"))).body)
    assert {m["id"]: m["provider"] for m in models["models"]}["corp-large"] == "corp"
    conn = await open_chat(jp_http_port, jp_base_url)
    try:
        response, events, text = await turn(conn, "When is the launch?")
    finally:
        conn.close()
    assert response["payload"]["status"] == "ok", response
    assert text == "The launch is on Tuesday."
    result = next(e for e in events if e.get("kind") == "tool.result")
    assert result["ok"] and "Tuesday" in result["content"]
    usage = [e for e in events if e.get("kind") == "turn.usage"]
    assert [u["model"] for u in usage] == ["corp-large", "corp-large"]
    assert (usage[-1]["input_tokens"], usage[-1]["output_tokens"]) == (50, 7)
    # the second call carried the tool's result, in the service's own message shape
    follow_up = service.requests[-1]["body"]["messages"]
    assert follow_up[-1]["role"] == "tool" and "Tuesday" in follow_up[-1]["content"]
    assert follow_up[-2]["tool_calls"][0]["name"] == "read_file"
    assert service.connections == 1 and len(service.token_requests) == 1
    assert not upstream.requests, "the fallback provider was not needed"


async def test_service_down_falls_back_to_another_provider(
        cloudide: Any, jp_fetch: Any, jp_http_port: int, jp_base_url: str,
        service: WsModelService, upstream: FakeUpstream) -> None:
    # (jp_fetch: pytest-jupyter's HTTP server listens once a test asks for it)
    service.stop()
    upstream.script(Turn(text="from the fallback"))
    conn = await open_chat(jp_http_port, jp_base_url)
    try:
        response, events, text = await turn(conn, "hello")
    finally:
        conn.close()
    assert response["payload"]["status"] == "ok", response
    assert text == "from the fallback"
    fallback = next(e for e in events if e.get("kind") == "model.fallback")
    assert (fallback["model"], fallback["after"]) == ("gpt-4o-mini", "connection")
