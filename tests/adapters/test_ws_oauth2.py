"""The reference adapter against the WebSocket model service, through our provider protocol
(what the router calls): streaming, tool calls, usage, one multiplexed socket, token refresh,
reconnects, and every fault mapped to the error kind the router acts on."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from typing import Any

import pytest
from fake_upstream import ToolCall, Turn
from ws_model_service import CLIENT_SECRET, WsModelService, corp_provider

from jupyter_cloudide.agent.providers.base import (
    ChatRequest,
    Finish,
    ProviderError,
    TextDelta,
    ToolCallDelta,
    ToolCallStarted,
    ToolSpec,
    Usage,
)
from jupyter_cloudide.agent.providers.base import ToolCall as Call

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio]

TOOLS = [ToolSpec("read_file", "Read a file", {"type": "object", "properties": {
    "path": {"type": "string"}}, "required": ["path"]})]
CONVERSATION = [
    {"role": "developer", "content": "be brief"},
    {"role": "user", "content": [{"type": "text", "text": "read "}, {"type": "text",
                                                                      "text": "a.py"}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "read_file", "arguments": '{"path": "a.py"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "print(1)"},
    {"role": "user", "content": "and now?"},
]


def request(**kwargs: Any) -> ChatRequest:
    return ChatRequest(model=kwargs.pop("model", "corp-large"),
                       messages=kwargs.pop("messages", CONVERSATION),
                       tools=kwargs.pop("tools", TOOLS), **kwargs)


async def collect(provider: Any, **kwargs: Any) -> list[Any]:
    return [event async for event in provider.stream_chat(request(**kwargs))]


def text_of(events: list[Any]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_text_and_tool_calls_stream_with_usage(service: WsModelService) -> None:
    service.script(Turn(text="Reading both files.", chunk_size=4, usage=(120, 30),
                        cached_tokens=20,
                        tool_calls=[ToolCall("read_file", {"path": "a.py"}, id="call_a"),
                                    ToolCall("read_file", {"path": "b.py"}, id="call_b")]))
    provider = corp_provider(service)
    try:
        events = await collect(provider, tool_choice="auto", temperature=0.2)
    finally:
        await provider.close()
    assert text_of(events) == "Reading both files."
    assert len([e for e in events if isinstance(e, TextDelta)]) == 5, "deltas stream"
    started = [e for e in events if isinstance(e, ToolCallStarted)]
    calls = [e for e in events if isinstance(e, Call)]
    assert [(s.id, s.name) for s in started] == [("call_a", "read_file"),
                                                 ("call_b", "read_file")]
    assert [json.loads(c.arguments) for c in calls] == [{"path": "a.py"}, {"path": "b.py"}]
    pieces = [e for e in events if isinstance(e, ToolCallDelta)]
    assert len(pieces) > 2 and "".join(p.arguments for p in pieces
                                       if p.id == "call_a") == calls[0].arguments
    assert next(e for e in events if isinstance(e, Usage)) == Usage(120, 30, 20)
    assert events[-1] == Finish("tool_calls")

    # what went over the wire: the protocol's shapes, translated from OpenAI's
    body = service.requests[-1]["body"]
    assert body["type"] == "chat" and body["model"] == "corp-large"
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "read a.py"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"id": "call_1", "name": "read_file",
                         "arguments": '{"path": "a.py"}'}]},
        {"role": "tool", "content": "print(1)", "tool_call_id": "call_1"},
        {"role": "user", "content": "and now?"}]
    assert body["tools"] == [{"name": "read_file", "description": "Read a file",
                              "parameters": TOOLS[0].parameters}]
    assert (body["tool_choice"], body["temperature"], body["max_tokens"]) == ("auto", 0.2, 4096)
    # one token (client_secret_basic, with the scope) and one socket
    assert [(r["method"], r["client_id"], r["form"]) for r in service.token_requests] == [
        ("basic", "cloudide", {"grant_type": "client_credentials", "scope": "models.invoke"})]
    assert service.connections == 1


async def test_client_secret_post_and_models(service: WsModelService) -> None:
    provider = corp_provider(service, auth_method="client_secret_post")
    try:
        assert await provider.list_models() == ["corp-large", "corp-small"]
    finally:
        await provider.close()
    assert service.token_requests[0]["method"] == "post"
    static = corp_provider(service, models=["only-this"])
    try:
        assert await static.list_models() == ["only-this"]
    finally:
        await static.close()
    assert service.connections == 1, "a static list needs no socket"


async def test_concurrent_calls_interleave_on_one_socket(service: WsModelService) -> None:
    for n in range(3):
        service.script(Turn(text=f"answer number {n} " * 3, chunk_size=5,
                            delay_between_chunks=0.02), model=f"m{n}")
    provider = corp_provider(service)
    try:
        results = await asyncio.gather(*(collect(provider, model=f"m{n}", tools=[])
                                         for n in range(3)))
    finally:
        await provider.close()
    assert [text_of(r) for r in results] == [f"answer number {n} " * 3 for n in range(3)]
    assert all(r[-1] == Finish("stop") for r in results)
    assert service.connections == 1 and len(service.token_requests) == 1
    # the answers were interleaved on the wire, not sent one after the other
    order = [rid for _, rid, kind in service.sent if kind == "delta"]
    switches = sum(1 for a, b in itertools.pairwise(order) if a != b)
    assert switches > 3, order


async def test_revoked_token_is_refreshed_in_band_and_the_call_resent(
        service: WsModelService) -> None:
    provider = corp_provider(service)
    try:
        assert text_of(await collect(provider)) == "ok"
        first = service.requests[-1]["token"]
        service.expire_tokens()  # mid-session: the socket stays, its token is now refused
        service.script(Turn(text="after refresh"))
        assert text_of(await collect(provider)) == "after refresh"
    finally:
        await provider.close()
    refused, resent = service.requests[-2:]
    assert refused["token"] == first and "turn" not in refused, "refused, not answered"
    assert resent["token"] != first
    assert [(a["connection"], a["token"]) for a in service.auths] == [(1, resent["token"])]
    assert len(service.token_requests) == 2 and service.connections == 1


async def test_token_refreshed_before_it_expires(service: WsModelService) -> None:
    service.token_ttl_s = 1.0  # refreshed within its last fifth
    provider = corp_provider(service)
    try:
        await collect(provider)
        await asyncio.sleep(0.85)
        await collect(provider)
    finally:
        await provider.close()
    assert len(service.token_requests) == 2 and len(service.auths) == 1
    assert not [s for s in service.sent if s[2] == "error"], "never refused"
    assert service.requests[0]["token"] != service.requests[1]["token"]


async def test_token_refused_at_the_upgrade_is_refreshed_once(service: WsModelService) -> None:
    provider = corp_provider(service)
    try:
        await collect(provider)
        service.expire_tokens()
        service.drop_connections()
        await service.until(lambda: not provider.adapter().connected)
        assert text_of(await collect(provider)) == "ok"
    finally:
        await provider.close()
    assert service.upgrades_refused == [401]
    assert len(service.token_requests) == 2 and service.connections == 2


async def test_invalid_credentials_are_an_auth_error(service: WsModelService) -> None:
    provider = corp_provider(service, client_secret="wrong-secret")
    try:
        with pytest.raises(ProviderError) as info:
            await collect(provider)
    finally:
        await provider.close()
    assert info.value.kind == "auth" and not info.value.retryable
    assert "invalid_client" in info.value.message and "wrong-secret" not in info.value.message
    assert service.connections == 0


async def test_token_endpoint_rate_limit(service: WsModelService) -> None:
    service.token_faults.append(429)
    provider = corp_provider(service)
    try:
        with pytest.raises(ProviderError) as info:
            await collect(provider)
        assert (info.value.kind, info.value.retry_after_s) == ("rate_limited", 3)
        assert text_of(await collect(provider)) == "ok", "the next call fetches again"
    finally:
        await provider.close()


async def test_dropped_socket_fails_its_calls_and_the_next_reconnects(
        service: WsModelService) -> None:
    service.script(Turn(text="partial answer that breaks", chunk_size=4, reset_after=3,
                        delay_between_chunks=0.05), model="breaks")
    service.script(Turn(text="slow bystander", chunk_size=2, delay_between_chunks=0.1),
                   model="bystander")
    provider = corp_provider(service)
    seen: list[str] = []

    async def partial(model: str) -> None:
        async for event in provider.stream_chat(request(model=model, tools=[])):
            if isinstance(event, TextDelta):
                seen.append(event.text)

    try:
        results = await asyncio.gather(partial("breaks"), partial("bystander"),
                                       return_exceptions=True)
        assert [getattr(r, "kind", r) for r in results] == ["connection", "connection"], \
            "every call on the socket fails, retryably"
        assert "".join(seen).startswith(("part", "sl")), "output arrived before the drop"
        service.script(Turn(text="back"))
        assert text_of(await collect(provider)) == "back"
    finally:
        await provider.close()
    assert service.connections == 2 and len(service.token_requests) == 1


async def test_reconnect_backs_off_through_refused_upgrades(service: WsModelService) -> None:
    service.upgrade_faults.extend([503, 502])
    provider = corp_provider(service, backoff_s=0.1)
    started = time.monotonic()
    try:
        assert text_of(await collect(provider)) == "ok"
    finally:
        await provider.close()
    assert service.upgrades_refused == [503, 502] and service.connections == 1
    assert time.monotonic() - started >= 0.1, "waited between attempts (0.05 + 0.1 at least)"
    service.upgrade_faults.extend([503, 503, 503])
    provider = corp_provider(service, backoff_s=0.01, connect_attempts=3)
    try:
        with pytest.raises(ProviderError) as info:
            await collect(provider)
    finally:
        await provider.close()
    assert info.value.kind == "overloaded" and info.value.retry_after_s == 2


async def test_service_down_is_a_connection_error(service: WsModelService) -> None:
    provider = corp_provider(service, backoff_s=0.05, connect_attempts=3)
    await collect(provider)  # token fetched; now the socket's host goes away
    service.stop()
    await asyncio.sleep(0.1)
    try:
        started = time.monotonic()
        with pytest.raises(ProviderError) as info:
            await collect(provider)
        assert info.value.kind == "connection" and info.value.retryable
        assert time.monotonic() - started < 2
    finally:
        await provider.close()
    nothing = corp_provider(service)  # the token endpoint is down too
    try:
        with pytest.raises(ProviderError) as info:
            await collect(nothing)
        assert info.value.kind == "connection"
    finally:
        await nothing.close()


@pytest.mark.parametrize(("turn", "kind"), [
    (Turn(status=429, retry_after=7), "rate_limited"),
    (Turn(status=529, retry_after=2), "overloaded"),
    (Turn(status=500), "server"),
    (Turn(status=504), "timeout"),
    (Turn(status=403), "auth"),
    (Turn(status=400), "bad_request"),
    (Turn(status=404), "not_found"),
    (Turn(text="abcdefghijklmnop", chunk_size=2, error_after=2), "server"),
    (Turn(text="abcdefghijklmnop", chunk_size=2, malformed_after=2), "malformed"),
], ids=["429", "overloaded", "500", "504", "403", "400", "404", "error-mid-stream",
        "malformed"])
async def test_service_errors_map_to_kinds(service: WsModelService, turn: Turn,
                                           kind: str) -> None:
    service.script(turn)
    provider = corp_provider(service)
    try:
        with pytest.raises(ProviderError) as info:
            await collect(provider)
    finally:
        await provider.close()
    assert info.value.kind == kind, info.value.message
    if kind == "rate_limited":
        assert info.value.retry_after_s == 7 and info.value.retryable
    assert CLIENT_SECRET not in info.value.message
    assert len(service.requests) == 1, "no retry of ours: the router decides"


async def test_slow_first_token_times_out_and_cancels_at_the_service(
        service: WsModelService) -> None:
    service.script(Turn(text="late", first_token_delay=1.5))
    provider = corp_provider(service)
    try:
        with pytest.raises(ProviderError) as info:
            await collect(provider, timeout_s=0.5)
        assert info.value.kind == "timeout"
        await service.until(lambda: service.cancelled == [service.requests[0]["id"]])
        service.script(Turn(text="in time", first_token_delay=0.3))
        assert text_of(await collect(provider, timeout_s=5)) == "in time"
    finally:
        await provider.close()
    assert service.connections == 1, "a timed-out call leaves the socket to the others"


async def test_a_reader_that_stops_early_cancels_the_call(service: WsModelService) -> None:
    service.script(Turn(text="a long answer " * 20, chunk_size=3, delay_between_chunks=0.02))
    provider = corp_provider(service)
    try:
        async with contextlib.aclosing(
                provider.stream_chat(request(tools=[]))) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    break
        await service.until(lambda: service.cancelled == [service.requests[0]["id"]])
    finally:
        await provider.close()


async def test_usage_estimated_when_the_service_reports_none(service: WsModelService) -> None:
    service.script(Turn(text="x" * 400, report_usage=False))
    provider = corp_provider(service)
    try:
        events = await collect(provider)
    finally:
        await provider.close()
    usage = next(e for e in events if isinstance(e, Usage))
    assert usage.estimated and usage.output_tokens == 100


@pytest.mark.parametrize(("options", "message"), [
    ({"url": "http://not-a-socket"}, "option 'url': a ws:// or wss:// URL"),
    ({"ca_file": "/no/such/ca.pem"}, "option 'ca_file': no file '/no/such/ca.pem'"),
    ({"auth_method": "private_key_jwt"}, "option 'auth_method': one of"),
    ({"connect_attempts": 0}, "connect_attempts ≥ 1"),
], ids=["url", "ca-file", "auth-method", "attempts"])
async def test_bad_options_fail_clearly(service: WsModelService, options: dict[str, Any],
                                        message: str) -> None:
    provider = corp_provider(service, **options)
    with pytest.raises(ProviderError) as info:
        await collect(provider)
    assert info.value.kind == "other" and message in info.value.message, info.value.message
    assert CLIENT_SECRET not in info.value.message
    assert not service.token_requests
