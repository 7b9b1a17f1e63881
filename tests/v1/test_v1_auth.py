"""Every way in (and out) of ``cloudide/v1``: the server token, our API keys (scoped, expired,
revoked, wrong), the server's identity provider (as JupyterHub's checks a hub token), the
Authorizer's ``cloudide:v1``; cookies and ``?token=`` never count on this prefix."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import openai
import pytest
from cloudide_testing import DenyResources, MultiUserIdentity
from fake_upstream import FakeUpstream, Turn
from tornado.httpclient import AsyncHTTPClient
from v1_testing import ledger_rows, make_key

pytestmark = pytest.mark.timeout(120)
USER_MSG = [{"role": "user", "content": "hi"}]


async def get(url: str, headers: dict[str, str]) -> Any:
    return await AsyncHTTPClient().fetch(url, headers=headers, raise_error=False,
                                         request_timeout=20)


def client(url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=20)


async def test_server_token_in_each_header_form(cloudide: Any, v1_url: str,
                                                server_token: str) -> None:
    for headers in ({"Authorization": f"Bearer {server_token}"},
                    {"Authorization": f"token {server_token}"},
                    {"x-api-key": server_token}):
        response = await get(v1_url + "/models", headers)
        assert response.code == 200, headers
        assert json.loads(response.body)["object"] == "list"


async def test_missing_and_wrong_credentials_are_401_with_www_authenticate(
        cloudide: Any, v1_url: str, server_token: str) -> None:
    missing = await get(v1_url + "/models", {})
    assert missing.code == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="jupyter_cloudide"'
    assert json.loads(missing.body)["error"]["code"] == "invalid_api_key"
    for wrong in (server_token + "x", "cide_" + "A" * 43, "not-a-token", server_token[:-1]):
        response = await get(v1_url + "/chat/completions", {"Authorization": f"Bearer {wrong}"})
        assert response.code == 401, wrong
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
        error = json.loads(response.body)["error"]
        assert set(error) == {"message", "type", "param", "code"}
    async with client(v1_url, "sk-wrong") as api:
        with pytest.raises(openai.AuthenticationError):
            await api.models.list()


async def test_cookies_and_url_tokens_do_not_count(cloudide: Any, v1_url: str,
                                                   jp_fetch: Any, server_token: str) -> None:
    # a token request elsewhere sets jupyter's login cookie; a browser would send it along
    page = await jp_fetch("cloudide", "api", "health")
    cookie = "; ".join(c.split(";", 1)[0] for c in page.headers.get_list("Set-Cookie"))
    assert cookie, "jupyter_server set no login cookie"
    assert (await get(v1_url + "/models", {"Cookie": cookie})).code == 401
    assert (await get(v1_url + f"/models?token={server_token}", {})).code == 401
    # a wrong bearer is not rescued by a valid cookie
    response = await get(v1_url + "/models", {"Cookie": cookie, "Authorization": "Bearer nope"})
    assert response.code == 401


async def test_unknown_routes_and_methods_answer_in_openai_shape(cloudide: Any, v1_url: str,
                                                                 server_token: str) -> None:
    auth = {"Authorization": f"Bearer {server_token}"}
    for path, code in (("/nope", 404), ("/chat/completions", 405), ("/files", 404)):
        response = await get(v1_url + path, auth)
        assert response.code == code, path
        assert json.loads(response.body)["error"]["message"], path
    assert (await get(v1_url + "/nope", {})).code == 401  # auth first, like every route


async def test_api_keys_scoped_expired_revoked(cloudide: Any, v1_url: str,
                                               upstream: FakeUpstream,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    owner = cloudide._owner_name
    scoped = await make_key(cloudide, owner, models=("gpt-4o-mini", "cloudide-*"))
    expired = await make_key(cloudide, owner, expires_in=timedelta(seconds=-1))
    upstream.script(Turn(text="scoped ok"))
    async with client(v1_url, scoped) as api:
        listed = [m.id for m in (await api.models.list()).data]
        answer = await api.chat.completions.create(model="gpt-4o-mini", messages=USER_MSG)
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await api.chat.completions.create(model="gpt-4o", messages=USER_MSG)
        with pytest.raises(openai.NotFoundError):
            await api.models.retrieve("gpt-4o")
    assert listed == ["gpt-4o-mini", "cloudide-agent", "cloudide-embedding"]
    assert answer.choices[0].message.content == "scoped ok"
    assert denied.value.code == "model_not_allowed" and denied.value.param == "model"
    async with client(v1_url, expired) as api:
        with pytest.raises(openai.AuthenticationError):
            await api.models.list()
    rows = await ledger_rows(cloudide, owner)
    assert rows[-1].extra["via"] == "api_key" and rows[-1].extra["key_id"]
    # revoked through the REST API: refused at once (the verification cache is dropped)
    store = await cloudide.metadata_store()
    record = (await store.call(store.list_api_keys, owner))[0]
    from tornado.httpclient import HTTPRequest

    base = v1_url.rsplit("/cloudide/v1", 1)[0]
    token = cloudide.server.identity_provider.token
    deleted = await AsyncHTTPClient().fetch(HTTPRequest(
        f"{base}/cloudide/api/tokens/{record.id}", method="DELETE",
        headers={"Authorization": f"token {token}"}), raise_error=False)
    assert deleted.code == 204
    async with client(v1_url, scoped) as api:
        with pytest.raises(openai.AuthenticationError):
            await api.models.list()
    logged = caplog.text
    assert scoped not in logged and expired not in logged  # keys never reach the logs


class TestIdentityProvider:
    """Under another identity provider (as under JupyterHub, whose HubAuth checks a hub API
    token for this server), the provider decides who a bearer is; the server's own token is
    nobody's credential there."""

    @pytest.fixture
    def server_config(self) -> dict[str, Any]:
        return {"identity_provider_class": MultiUserIdentity}

    async def test_provider_tokens_name_the_user(self, cloudide: Any, v1_url: str,
                                                 server_token: str,
                                                 upstream: FakeUpstream) -> None:
        upstream.script(Turn(text="hello alice", usage=(3, 2)))
        async with client(v1_url, "alice-token") as api:
            answer = await api.chat.completions.create(model="gpt-4o-mini", messages=USER_MSG)
        assert answer.choices[0].message.content == "hello alice"
        rows = await ledger_rows(cloudide, "alice")
        assert rows[-1].extra["via"] == "identity" and rows[-1].user == "alice"
        assert (await get(v1_url + "/models", {"Authorization": "Bearer bob-token"})).code \
            == 200
        assert (await get(v1_url + "/models", {"Authorization": f"Bearer {server_token}"})
                ).code == 401
        # a key is its owner's, whoever presents it
        key = await make_key(cloudide, "bob")
        upstream.script(Turn(text="hello bob", usage=(3, 2)))
        async with client(v1_url, key) as api:
            await api.chat.completions.create(model="gpt-4o-mini", messages=USER_MSG)
        assert (await ledger_rows(cloudide, "bob"))[-1].extra["via"] == "api_key"


class TestAuthorizerDenies:
    @pytest.fixture
    def server_config(self) -> dict[str, Any]:
        deny = type("DenyV1", (DenyResources,), {"denied": frozenset({"cloudide:v1"})})
        return {"identity_provider_class": MultiUserIdentity, "authorizer_class": deny}

    async def test_every_path_in_is_refused(self, cloudide: Any, v1_url: str) -> None:
        key = await make_key(cloudide, "alice")
        bodies = {"/models": None,
                  "/chat/completions": {"model": "gpt-4o-mini", "messages": USER_MSG},
                  "/embeddings": {"model": "cloudide-embedding", "input": "x"}}
        for bearer in ("alice-token", key):
            for path, body in bodies.items():
                response = await AsyncHTTPClient().fetch(
                    v1_url + path, method="GET" if body is None else "POST",
                    body=None if body is None else json.dumps(body), raise_error=False,
                    headers={"Authorization": f"Bearer {bearer}"})
                assert response.code == 403, (bearer, path)
                assert json.loads(response.body)["error"]["type"] == "permission_error"


async def test_oversized_body_is_413_before_it_is_read(cloudide: Any, v1_url: str,
                                                      jp_http_port: int,
                                                      server_token: str) -> None:
    import asyncio

    path = v1_url.split(str(jp_http_port), 1)[1] + "/chat/completions"
    reader, writer = await asyncio.open_connection("127.0.0.1", jp_http_port)
    writer.write((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{jp_http_port}\r\n"
                  f"Authorization: Bearer {server_token}\r\n"
                  f"Content-Length: {50 * 1024 * 1024}\r\n\r\n").encode())  # no body sent
    await writer.drain()
    head = (await asyncio.wait_for(reader.read(65536), 10)).decode()
    writer.close()
    assert head.startswith("HTTP/1.1 413"), head[:80]
    assert '"code": "request_too_large"' in head
