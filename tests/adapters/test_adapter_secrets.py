"""An adapter's secret set in its ``options`` (not through ``api_key_env``) is redacted from what
the model sees, like a provider key: a workspace file that contains the OAuth2 client secret is
read by the agent's tool, and the tool result the model service receives has it masked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cloudide_testing import MultiUserIdentity
from fake_upstream import ToolCall, Turn
from test_adapter_in_server import open_chat, turn
from ws_model_service import CLIENT_SECRET, WsModelService

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def server_config() -> dict[str, Any]:
    return {"identity_provider_class": MultiUserIdentity}


@pytest.fixture
def cloudide_config(service: WsModelService) -> dict[str, Any]:
    assert "client_secret" in service.options(), "the secret is an option, set inline"
    return {
        "providers": [{"name": "corp", "kind": "adapter", "adapter": "ws-oauth2",
                       "options": service.options()}],
        "models": [{"id": "corp-large", "provider": "corp", "model": "corp-large"}],
        "default_model": "corp-large", "discover_models": False, "index_enabled": False,
    }


async def test_inline_option_secret_is_redacted_from_tool_results(
        cloudide: Any, jp_fetch: Any, jp_http_port: int, jp_base_url: str, jp_root_dir: Path,
        service: WsModelService) -> None:
    (jp_root_dir / "deploy-notes.txt").write_text(f"CLIENT_SECRET={CLIENT_SECRET}\nREGION=eu\n")
    service.script(Turn(tool_calls=[ToolCall("read_file", {"path": "deploy-notes.txt"})]),
                   Turn(text="It deploys to eu."))
    conn = await open_chat(jp_http_port, jp_base_url)
    try:
        response, events, text = await turn(conn, "Where does it deploy?")
    finally:
        conn.close()
    assert response["payload"]["status"] == "ok", response
    assert text == "It deploys to eu."
    result = next(e for e in events if e.get("kind") == "tool.result")
    assert result["ok"] and "REGION=eu" in result["content"], result["content"]
    sent = json.dumps(service.requests[-1]["body"]["messages"])
    assert "REGION=eu" in sent, "the file reached the model service"
    assert CLIENT_SECRET not in sent, "the inline client secret was sent to the model"
    assert CLIENT_SECRET not in result["content"]
