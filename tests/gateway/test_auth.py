"""Every route authenticates and authorizes: a static check of the routes table and a table
test of every api.yaml operation x {anonymous, authorized, denied}, on a real server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cloudide_testing import DenyResources, MultiUserIdentity, auth
from tornado.httpclient import HTTPClientError
from tornado.websocket import websocket_connect

from jupyter_cloudide.gateway import routes, spec
from jupyter_cloudide.gateway.base import CloudIDEHandler
from jupyter_cloudide.gateway.websocket import SessionChannelHandler

VERBS = ("get", "post", "put", "patch", "delete")
MISSING_ID = "00000000-0000-4000-8000-000000000000"

#: one request per api.yaml operation; a new operation without a row here fails the test
SAMPLES: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "getHealth": ("GET", "cloudide/api/health", None),
    "listConversations": ("GET", "cloudide/api/conversations", None),
    "createConversation": ("POST", "cloudide/api/conversations", {"title": "t"}),
    "getConversation": ("GET", f"cloudide/api/conversations/{MISSING_ID}", None),
    "openSessionChannel": ("WS", "cloudide/api/ws", None),
    "execute": ("POST", "cloudide/api/execute", {"code": "1", "kernel_id": MISSING_ID}),
    "getJob": ("GET", f"cloudide/api/execute/{'0' * 32}", None),
    "cancelJob": ("DELETE", f"cloudide/api/execute/{'0' * 32}", None),
    "getIndex": ("GET", "cloudide/api/index", None),
    "rebuildIndex": ("POST", "cloudide/api/index", {}),
    "search": ("POST", "cloudide/api/search", {"query": "x", "mode": "text"}),
    "getModels": ("GET", "cloudide/api/models", None),
    "getUsage": ("GET", "cloudide/api/usage", None),
    "renameConversation": ("PATCH", f"cloudide/api/conversations/{MISSING_ID}",
                           {"title": "t"}),
    "deleteConversation": ("DELETE", f"cloudide/api/conversations/{MISSING_ID}", None),
    "listTokens": ("GET", "cloudide/api/tokens", None),
    "createToken": ("POST", "cloudide/api/tokens", {"name": "t", "expires": "1d"}),
    "revokeToken": ("DELETE", f"cloudide/api/tokens/{MISSING_ID}", None),
    "listV1Models": ("GET", "cloudide/v1/models", None),
    "getV1Model": ("GET", "cloudide/v1/models/no-such-model", None),
    "createChatCompletion": ("POST", "cloudide/v1/chat/completions",
                             {"model": "no-such-model",
                              "messages": [{"role": "user", "content": "x"}]}),
    "createEmbeddings": ("POST", "cloudide/v1/embeddings",
                         {"model": "no-such-model", "input": "x"}),
    "createMessage": ("POST", "cloudide/v1/messages",
                      {"model": "no-such-model", "max_tokens": 8,
                       "messages": [{"role": "user", "content": "x"}]}),
}
#: operations whose sample names something that does not exist: authorized means 404
MISSING_TARGET = {"getConversation", "execute", "getJob", "cancelJob", "renameConversation",
                  "deleteConversation", "revokeToken", "getV1Model", "createChatCompletion",
                  "createEmbeddings", "createMessage"}
RESOURCES = sorted({op["auth_resource"] for op in spec.operations().values()})


def test_every_operation_has_a_sample_and_a_resource() -> None:
    assert set(SAMPLES) == set(spec.operations())
    for name, op in spec.operations().items():
        assert str(op["auth_resource"]).startswith("cloudide:"), name


def test_routes_table_handlers_are_authenticated_and_name_a_resource() -> None:
    for pattern, handler in routes.all_handlers():
        assert issubclass(handler, (CloudIDEHandler, SessionChannelHandler)), pattern
        assert handler.auth_resource.startswith("cloudide:"), pattern
        for verb in VERBS:
            method = handler.__dict__.get(verb)
            if method is None:
                continue
            assert not getattr(method, "__allow_unauthenticated", False), (pattern, verb)
            # @web.authenticated / @ws_authenticated and @authorized wrap the verb
            assert hasattr(method, "__wrapped__"), (pattern, verb)
        if issubclass(handler, CloudIDEHandler):
            for verb, operation in handler.operations.items():
                assert spec.operations()[operation]["method"] == verb, (pattern, operation)
                assert spec.operations()[operation]["auth_resource"] == handler.auth_resource


async def test_server_finds_no_unauthenticated_endpoint(cloudide: Any,
                                                         jp_serverapp: Any) -> None:
    """jupyter_server's own check (the one allow_unauthenticated_access=False enforces at
    load) passes for every rule the extension registered, and would catch a bare verb."""
    web_app = jp_serverapp.web_app
    ours = [(p, h) for p, h in routes.all_handlers()]
    assert ours
    for pattern, handler in ours:
        assert web_app._check_handler_auth(pattern, handler) == [], pattern

    class Bare(CloudIDEHandler):
        auth_resource = "cloudide:health"
        route_name = "bare"

        async def get(self) -> None:
            pass

    assert web_app._check_handler_auth("/bare", Bare) != []
    assert "jupyter_cloudide" in jp_serverapp.extension_manager.extensions
    assert cloudide.serverapp is jp_serverapp


def test_spec_paths_match_routes() -> None:
    import re

    patterns = [re.compile(p + "$") for p, _ in routes.all_handlers()]
    for name, (_, path, _) in SAMPLES.items():
        assert any(p.match("/" + path) for p in patterns), name


async def _call(jp_fetch: Any, jp_http_port: int, jp_base_url: str, operation: str,
                headers: dict[str, str]) -> int:
    method, path, body = SAMPLES[operation]
    if method == "WS":
        url = f"ws://127.0.0.1:{jp_http_port}{jp_base_url}{path}"
        try:
            conn = await websocket_connect(_request(url, headers))
        except HTTPClientError as e:
            return e.code
        frame = json.loads(await conn.read_message())  # type: ignore[arg-type]
        conn.close()
        assert frame["type"] == "welcome"
        return 101
    kwargs: dict[str, Any] = {"method": method, "headers": headers, "raise_error": False}
    if body is not None:
        kwargs["body"] = json.dumps(body)
    response = await jp_fetch(*path.split("/"), **kwargs)
    if response.code >= 400:
        assert response.headers["Content-Type"].startswith("application/json"), operation
        body = json.loads(response.body)
        if path.startswith("cloudide/v1/"):  # OpenAI's (or Anthropic's) error shape there
            body = body["error"]
        assert "message" in body, operation
    return int(response.code)


def _request(url: str, headers: dict[str, str]) -> Any:
    from tornado.httpclient import HTTPRequest

    return HTTPRequest(url, headers=headers)


@pytest.fixture
def server_config() -> dict[str, Any]:
    return {"identity_provider_class": MultiUserIdentity}


@pytest.mark.parametrize("operation", sorted(SAMPLES))
async def test_anonymous_is_refused(cloudide: Any, jp_fetch: Any, jp_http_port: int,
                                    jp_base_url: str, operation: str) -> None:
    status = await _call(jp_fetch, jp_http_port, jp_base_url, operation,
                         {"Authorization": ""})
    assert status in (401, 403), operation
    status = await _call(jp_fetch, jp_http_port, jp_base_url, operation,
                         {"Authorization": "token wrong-token"})
    assert status in (401, 403), operation


@pytest.mark.parametrize("operation", sorted(SAMPLES))
async def test_authorized_user_is_served(cloudide: Any, jp_fetch: Any, jp_http_port: int,
                                         jp_base_url: str, operation: str) -> None:
    status = await _call(jp_fetch, jp_http_port, jp_base_url, operation, auth("alice"))
    if operation in MISSING_TARGET:
        assert status == 404, (operation, status)
    else:
        assert status < 400, (operation, status)


@pytest.fixture(params=RESOURCES)
def denied_resource(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server_config_denied(denied_resource: str) -> dict[str, Any]:
    authorizer = type("Deny", (DenyResources,), {"denied": frozenset({denied_resource})})
    return {"identity_provider_class": MultiUserIdentity, "authorizer_class": authorizer}


class TestDenied:
    """An Authorizer that denies one resource: 403 on exactly that resource's routes."""

    @pytest.fixture
    def server_config(self, server_config_denied: dict[str, Any]) -> dict[str, Any]:
        return server_config_denied

    async def test_denied_table(self, cloudide: Any, jp_fetch: Any, jp_http_port: int,
                                jp_base_url: str, denied_resource: str) -> None:
        for operation, op in spec.operations().items():
            status = await _call(jp_fetch, jp_http_port, jp_base_url, operation, auth("alice"))
            if op["auth_resource"] == denied_resource:
                assert status == 403, (operation, status)
            else:
                assert status != 403, (operation, status)
