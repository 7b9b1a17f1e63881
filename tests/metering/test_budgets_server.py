"""Budgets on a real server: the fake upstream is the only model provider, real clients (the
openai SDK, a WebSocket) call it over real sockets, spend lands in the real SQLite ledger.

Identities come as JupyterHub's would (a user model with groups), so group (team) budgets
are exercised the way a hub deployment sees them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from cloudide_testing import USER_TOKENS, auth
from fake_upstream import FakeUpstream, ToolCall, Turn, agent_config
from jupyter_server.auth import IdentityProvider, User
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from jupyter_cloudide.metering import events as cloudide_events

pytestmark = pytest.mark.timeout(240)

#: USD per 1k tokens: 4,000 prompt tokens of gpt-4o-mini cost $0.60
MODELS = [{"id": "gpt-4o-mini", "provider": "openai", "model": "gpt-4o-mini",
           "max_output_tokens": 4096, "price_per_1k": {"input": 0.15, "output": 0.6}}]
GROUPS = {"alice": ["research"], "bob": ["research"]}


class HubIdentity(IdentityProvider):
    """As JupyterHub's single-user provider: a user model with groups; token or bearer."""

    async def get_user(self, handler: Any) -> User | None:  # type: ignore[override]
        scheme, _, token = handler.request.headers.get("Authorization", "").partition(" ")
        name = USER_TOKENS.get(token) if scheme.lower() in ("token", "bearer") else None
        if name is None:
            return None
        handler._token_authenticated = True
        user = User(username=name, name=name)
        user.hub_user = {"name": name, "groups": GROUPS[name]}  # type: ignore[attr-defined]
        return user


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def server_config() -> dict[str, Any]:
    return {"identity_provider_class": HubIdentity}


@pytest.fixture
def cloudide_config(upstream: FakeUpstream, request: Any) -> dict[str, Any]:
    extra = dict(getattr(request, "param", {}))
    return agent_config(upstream, models=MODELS, discover_models=False, warm_pool_size=0,
                        budget_refresh_seconds=0, usage_write_interval=0.2, **extra)


def budgets(*rules: dict[str, Any], **extra: Any) -> Any:
    return pytest.mark.parametrize("cloudide_config", [{"budgets": list(rules), **extra}],
                                   indirect=True)


@pytest.fixture
def v1_url(cloudide: Any, http_server_client: Any, jp_http_port: int, jp_base_url: str) -> str:
    return f"http://127.0.0.1:{jp_http_port}{jp_base_url}cloudide/v1"


def client(v1_url: str, user: str = "alice") -> openai.AsyncOpenAI:
    token = {v: k for k, v in USER_TOKENS.items()}[user]
    return openai.AsyncOpenAI(base_url=v1_url, api_key=token, max_retries=2)


async def ledger_cost(cloudide: Any, *users: str) -> float:
    await cloudide.ledger.flush()
    store = await cloudide.metadata_store()
    total = 0.0
    for user in users:
        rows = await store.call(store.list_usage_events, user=user)
        total += sum(r.cost for r in rows if r.kind == "tokens")
    return total


async def open_ws(port: int, base_url: str, user: str = "alice") -> WebSocketClientConnection:
    url = f"ws://127.0.0.1:{port}{base_url}cloudide/api/ws"
    conn = await websocket_connect(HTTPRequest(url, headers=auth(user)))
    assert json.loads(await conn.read_message() or "{}")["type"] == "welcome"  # type: ignore[arg-type]
    return conn


async def frames_until(conn: WebSocketClientConnection, done: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    while True:
        raw = await asyncio.wait_for(conn.read_message(), 60)
        assert raw is not None, "socket closed"
        frame = json.loads(raw)
        seen.append(frame)
        if done(frame):
            return seen


@budgets({"scope": "user", "period": "day", "limit": 0.0})
async def test_v1_answers_429_that_the_sdk_does_not_retry(
        cloudide: Any, v1_url: str, upstream: FakeUpstream) -> None:
    api = client(v1_url)
    with pytest.raises(openai.RateLimitError) as refused:
        await api.chat.completions.create(model="gpt-4o-mini", max_tokens=50,
                                          messages=[{"role": "user", "content": "hi"}])
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert refused.value.code == "insufficient_quota"  # OpenAI's code for quota
    assert "daily cost budget of 'alice' is used up" in refused.value.message
    assert upstream.requests == []  # neither our server nor the SDK went on
    with pytest.raises(openai.RateLimitError):
        await api.embeddings.create(model="cloudide-embedding", input=["x"])
    await api.close()


@budgets({"scope": "user", "period": "month", "limit": 0.5})
async def test_fifty_concurrent_requests_overspend_by_at_most_one_reservation(
        cloudide: Any, v1_url: str, upstream: FakeUpstream) -> None:
    """Item 6: 50 concurrent /v1 calls of one user against a budget."""
    max_tokens = 100
    upstream.script(*[Turn(text="ok", usage=(60, max_tokens)) for _ in range(50)])
    api = client(v1_url)

    async def call() -> str:
        try:
            await api.chat.completions.create(
                model="gpt-4o-mini", max_tokens=max_tokens,
                messages=[{"role": "user", "content": "count to three"}])
        except openai.RateLimitError as exc:
            assert exc.code == "insufficient_quota", exc
            return "refused"
        return "ok"

    outcomes = await asyncio.gather(*(call() for _ in range(50)))
    await api.close()
    served = outcomes.count("ok")
    assert 0 < served < 50 and outcomes.count("refused") == 50 - served
    # one request's reservation: every prompt token estimated (and then some) plus max_tokens
    reservation = (60 * 0.15 + max_tokens * 0.6) / 1000
    spent = await ledger_cost(cloudide, "alice")
    assert spent == pytest.approx(served * (60 * 0.15 + max_tokens * 0.6) / 1000)
    assert spent <= 0.5 + reservation
    [status] = (await cloudide.budget_manager.status("alice", ("research",)))
    assert status["reserved"] == 0 and status["spent"] == pytest.approx(spent)


@budgets({"scope": "user", "period": "month", "limit": 0.0})
async def test_chat_turn_says_which_budget_and_when_it_resets(
        cloudide: Any, jp_fetch: Any, jp_http_port: int, jp_base_url: str,
        upstream: FakeUpstream) -> None:
    conn = await open_ws(jp_http_port, jp_base_url)
    try:
        await conn.write_message(json.dumps({"type": "request", "id": 1, "payload": {
            "kind": "chat.send", "text": "hello"}}))
        frames = await frames_until(conn, lambda f: f["type"] == "response")
    finally:
        conn.close()
    assert frames[-1]["payload"]["status"] == "error"
    error = next(f["payload"] for f in frames if f["type"] == "event"
                 and f["payload"].get("kind") == "turn.error")
    assert "monthly cost budget of 'alice' is used up" in error["message"]
    assert "$0.0000 spent" in error["message"] and "It resets at" in error["message"]
    assert not any(r["path"].endswith("/chat/completions") for r in upstream.requests)
    body = json.loads((await jp_fetch("cloudide", "api", "usage",
                                      headers=auth("alice"))).body)
    assert body["budget"]["state"] == "exhausted" and body["budget"]["limit"] == 0
    assert body["budget"]["scope"] == "user:alice" and len(body["budgets"]) == 1


@budgets({"scope": "user", "period": "month", "limit": 1.0, "warn_percent": 50})
async def test_soft_limit_emits_an_event_and_pushes_a_notice_once(
        cloudide: Any, v1_url: str, jp_http_port: int, jp_base_url: str,
        upstream: FakeUpstream) -> None:
    emitted: list[dict[str, Any]] = []

    async def listener(logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        emitted.append(dict(data))

    cloudide.event_logger.add_listener(schema_id=cloudide_events.BUDGET_WARNING,
                                       listener=listener)
    conn = await open_ws(jp_http_port, jp_base_url)
    api = client(v1_url)
    try:
        upstream.script(Turn(text="ok", usage=(4000, 0)), Turn(text="ok", usage=(100, 0)))
        for _ in range(2):  # $0.60, then $0.015: the threshold is crossed once
            await api.chat.completions.create(model="gpt-4o-mini", max_tokens=10,
                                              messages=[{"role": "user", "content": "x"}])
        frames = await frames_until(conn, lambda f: f["type"] == "event"
                                    and f["payload"].get("kind") == "budget.warning")
        notice = frames[-1]["payload"]["budget"]
        assert notice["state"] == "warning" and notice["percent"] == pytest.approx(60)
        assert notice["scope"] == "user:alice" and notice["resets_at"]
        for _ in range(50):
            if emitted:
                break
            await asyncio.sleep(0.05)
        assert len(emitted) == 1 and emitted[0]["scope"] == "user:alice"
        assert emitted[0]["warn_percent"] == 50
    finally:
        await api.close()
        conn.close()
        cloudide.event_logger.remove_listener(schema_id=cloudide_events.BUDGET_WARNING,
                                              listener=listener)


@pytest.mark.parametrize("cloudide_config", [
    {"budgets": [{"scope": "user", "limit": 5.0}], "budget_fail_closed": True},
    {"budgets": [{"scope": "user", "limit": 5.0}], "budget_fail_closed": False},
], indirect=True, ids=["closed", "open"])
async def test_a_ledger_that_cannot_be_read(cloudide: Any, v1_url: str,
                                            upstream: FakeUpstream) -> None:
    store = await cloudide.metadata_store()

    def break_ledger() -> None:
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE usage_ledger RENAME TO usage_ledger_gone")

    await store.call(break_ledger)
    api = client(v1_url)
    api = api.with_options(max_retries=0)
    request = {"model": "gpt-4o-mini", "max_tokens": 10,
               "messages": [{"role": "user", "content": "hi"}]}
    if cloudide.budget_fail_closed:
        with pytest.raises(openai.InternalServerError) as refused:
            await api.chat.completions.create(**request)
        assert refused.value.status_code == 503
        assert "ledger cannot be read" in refused.value.message
    else:
        answer = await api.chat.completions.create(**request)
        assert answer.choices[0].message.content == "ok"
    await api.close()


@budgets({"scope": "user", "metric": "kernel_seconds", "period": "day", "limit": 0},
         tool_approvals={"execute_code": "allow"})
async def test_kernel_time_budget_refuses_agent_executions(
        cloudide: Any, http_server_client: Any, jp_http_port: int, jp_base_url: str,
        upstream: FakeUpstream) -> None:
    upstream.script(Turn(tool_calls=[ToolCall("execute_code", {"code": "print(1)"})]),
                    Turn(text="I cannot run code now."))
    conn = await open_ws(jp_http_port, jp_base_url)
    try:
        await conn.write_message(json.dumps({"type": "request", "id": 1, "payload": {
            "kind": "chat.send", "text": "run it"}}))
        frames = await frames_until(conn, lambda f: f["type"] == "response")
    finally:
        conn.close()
    assert frames[-1]["payload"]["status"] == "ok"  # the turn goes on; the model is told
    result = next(f["payload"] for f in frames if f["type"] == "event"
                  and f["payload"].get("kind") == "tool.result")
    assert result["ok"] is False
    assert "daily kernel-time budget of 'alice' is used up" in result["content"]
    assert cloudide.server.kernel_manager.list_kernel_ids() == []  # nothing started


@budgets({"scope": "group:research", "period": "month", "limit": 0.7})
async def test_group_budget_is_shared_by_two_users(
        cloudide: Any, v1_url: str, jp_fetch: Any, upstream: FakeUpstream) -> None:
    upstream.script(Turn(text="ok", usage=(4000, 0)))
    alice, bob = client(v1_url, "alice"), client(v1_url, "bob")
    await alice.chat.completions.create(model="gpt-4o-mini", max_tokens=10,
                                        messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.RateLimitError) as refused:  # $0.60 of $0.70 spent by alice
        await bob.chat.completions.create(model="gpt-4o-mini", max_tokens=200,
                                          messages=[{"role": "user", "content": "y"}])
    assert "budget of the group 'research'" in refused.value.message
    await alice.close()
    await bob.close()
    body = json.loads((await jp_fetch("cloudide", "api", "usage", headers=auth("bob"))).body)
    assert body["budget"]["scope"] == "group:research"
    assert body["budget"]["spent"] == pytest.approx(0.6) and body["budget"]["state"] == "warning"


async def test_no_budgets_no_budget_field(cloudide: Any, jp_fetch: Any) -> None:
    body = json.loads((await jp_fetch("cloudide", "api", "usage", headers=auth("alice"))).body)
    assert body["budget"] is None and body["budgets"] == []


def test_invalid_budget_configuration_is_named(jp_configurable_serverapp: Any) -> None:
    from traitlets import TraitError

    from jupyter_cloudide.app import CloudIDEApp

    with pytest.raises(TraitError, match=r"CloudIDEApp.budgets\[0\].period"):
        CloudIDEApp(budgets=[{"scope": "user", "period": "week", "limit": 1}])
