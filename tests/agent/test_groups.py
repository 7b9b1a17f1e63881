"""Model allowlists by group: the groups come from the identity (JupyterHub's user model)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cloudide_testing import USER_TOKENS, auth
from fake_upstream import FakeUpstream, Turn, agent_config
from jupyter_server.auth import IdentityProvider, User
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

pytestmark = pytest.mark.timeout(120)

#: as JupyterHub's singleuser identity provider exposes them (``hub_user["groups"]``)
HUB_GROUPS = {"alice": ["research"], "bob": []}


class HubLikeIdentity(IdentityProvider):
    async def get_user(self, handler: Any) -> User | None:  # type: ignore[override]
        scheme, _, token = handler.request.headers.get("Authorization", "").partition(" ")
        name = USER_TOKENS.get(token) if scheme.lower() == "token" else None
        if name is None:
            return None
        handler._token_authenticated = True
        user = User(username=name, name=name)
        user.hub_user = {"name": name, "groups": HUB_GROUPS[name]}  # type: ignore[attr-defined]
        return user


@pytest.fixture
def server_config() -> dict[str, Any]:
    return {"identity_provider_class": HubLikeIdentity}


@pytest.fixture
def cloudide_config(upstream: FakeUpstream) -> dict[str, Any]:
    return agent_config(upstream, model_allowlist={"*": ["gpt-4o-mini"],
                                                   "group:research": ["gpt-4o"]})


async def test_group_allowlist_over_rest_and_ws(cloudide: Any, jp_fetch: Any, jp_http_port: int,
                                                jp_base_url: str,
                                                upstream: FakeUpstream) -> None:
    async def models(user: str) -> set[str]:
        body = json.loads((await jp_fetch("cloudide", "api", "models",
                                          headers=auth(user))).body)
        return {m["id"] for m in body["models"]}

    assert await models("alice") == {"gpt-4o-mini", "gpt-4o"}
    assert await models("bob") == {"gpt-4o-mini"}
    url = f"ws://127.0.0.1:{jp_http_port}{jp_base_url}cloudide/api/ws"
    for user, expected in (("alice", "ok"), ("bob", 403)):
        conn = await websocket_connect(HTTPRequest(url, headers=auth(user)))
        try:
            await conn.read_message()  # welcome
            upstream.script(Turn(text="hi"))
            await conn.write_message(json.dumps({"type": "request", "id": 1, "payload": {
                "kind": "chat.send", "text": "hello", "model": "gpt-4o"}}))
            while True:
                frame = json.loads(await conn.read_message())  # type: ignore[arg-type]
                if frame["type"] == "response":
                    break
            if expected == "ok":
                assert frame["payload"]["status"] == "ok", frame
            else:
                assert frame["error"]["status"] == 403, frame
        finally:
            conn.close()
        upstream.clear()
