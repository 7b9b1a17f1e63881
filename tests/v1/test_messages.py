"""``cloudide/v1/messages``: the Anthropic Messages API, driven by the real ``anthropic`` SDK
(and by raw HTTP for the exact bytes), over the same governed models as Chat Completions.

The fake upstream speaks OpenAI's wire format for the ``openai`` provider, so most of these
tests check a full translation: Anthropic request → the agent's messages → OpenAI upstream →
Anthropic events. One class routes a model to the fake's Anthropic endpoint too, to show
``tool_use`` passing through an Anthropic upstream.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anthropic
import pytest
from fake_upstream import FakeUpstream, ToolCall, Turn, agent_config
from v1_testing import MODELS, ledger_rows, make_key

from jupyter_cloudide.agent.api import Routed
from jupyter_cloudide.agent.providers import anthropic_provider
from jupyter_cloudide.agent.providers.base import (
    Finish,
    ProviderError,
    TextDelta,
    ToolCallDelta,
    ToolCallStarted,
    Usage,
)
from jupyter_cloudide.agent.providers.base import ToolCall as DoneCall
from jupyter_cloudide.agent.wire import anthropic as wire
from jupyter_cloudide.errors import BudgetExceededError, InvalidInputError, RateLimitedError

pytestmark = pytest.mark.timeout(120)

WEATHER = {"name": "get_weather", "description": "Weather of a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}


@pytest.fixture(autouse=True)
def _no_sdk_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK would add credentials from the environment to every request."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sdk_base(v1_url: str) -> str:
    """The SDK appends ``/v1/messages`` to its base URL: ours ends before ``/v1``."""
    return v1_url.removesuffix("/v1")


def client(sdk_base: str, **kwargs: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=sdk_base, max_retries=0, timeout=30, **kwargs)


async def raw_post(v1_url: str, token: str, body: dict[str, Any],
                   headers: dict[str, str] | None = None) -> tuple[Any, str]:
    """POST through tornado's client; (response, body text) — no SDK in between."""
    from tornado.httpclient import AsyncHTTPClient

    response = await AsyncHTTPClient().fetch(
        v1_url + "/messages", method="POST", body=json.dumps(body),
        headers={"x-api-key": token, "anthropic-version": "2023-06-01",
                 "Content-Type": "application/json", **(headers or {})},
        raise_error=False, request_timeout=30)
    return response, response.body.decode()


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each SSE event; every event has both lines, and its data's
    ``type`` is its name."""
    assert text.endswith("\n\n"), text[-80:]
    out = []
    for frame in text[:-2].split("\n\n"):
        name_line, data_line = frame.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: "), frame
        data = json.loads(data_line[6:])
        assert data["type"] == name_line[7:], frame
        out.append((name_line[7:], data))
    return out


# -- the SDK against the server -------------------------------------------------------------


async def test_create_non_streaming(cloudide: Any, sdk_base: str, server_token: str,
                                    upstream: FakeUpstream) -> None:
    upstream.script(Turn(text="Hello there", usage=(21, 4)))
    async with client(sdk_base, api_key=server_token) as api:
        message = await api.messages.create(
            model="gpt-4o-mini", max_tokens=64, stop_sequences=["###"],
            system=[{"type": "text", "text": "Be brief."}], metadata={"user_id": "u-1"},
            messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
            # this SDK has no sampling parameters any more; the API still takes them
            extra_body={"temperature": 0.5, "top_k": 5, "some_future_field": True})
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.model == "gpt-4o-mini"
    assert [(b.type, b.text) for b in message.content] == [("text", "Hello there")]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (21, 4)
    assert message.usage.cache_read_input_tokens == 0
    sent = upstream.requests[-1]["body"]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Hi"}]
    assert (sent["max_tokens"], sent["temperature"], sent["stop"]) == (64, 0.5, ["###"])
    assert "some_future_field" not in sent and "top_k" not in sent
    assert not sent.get("stream"), "a non-streaming request makes one non-streamed call"


async def test_stream_final_message_and_text_stream(cloudide: Any, sdk_base: str,
                                                    server_token: str,
                                                    upstream: FakeUpstream) -> None:
    upstream.script(Turn(text="streamed words here", chunk_size=4, usage=(30, 7),
                         cached_tokens=10),
                    Turn(text="second answer", chunk_size=3, usage=(9, 2)))
    async with client(sdk_base, api_key=server_token) as api:
        async with api.messages.stream(model="gpt-4o-mini", max_tokens=100, messages=[
                {"role": "user", "content": "stream please"}]) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_message()
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
        assert final.content[0].text == "streamed words here"
        assert final.stop_reason == "end_turn"
        # the upstream's counts: 30 prompt tokens of which 10 cached, 7 produced
        assert (final.usage.input_tokens, final.usage.cache_read_input_tokens,
                final.usage.output_tokens) == (20, 10, 7)
        async with api.messages.stream(model="gpt-4o-mini", max_tokens=100, messages=[
                {"role": "user", "content": "again"}]) as stream:
            pieces = [text async for text in stream.text_stream]
        assert pieces == ["sec", "ond", " an", "swe", "r"]
    rows = await ledger_rows(cloudide, cloudide._owner_name, count=2)
    assert {(r.input_tokens, r.output_tokens) for r in rows} >= {(30, 7), (9, 2)}


async def test_tool_use_round_trip(cloudide: Any, sdk_base: str, server_token: str,
                                   upstream: FakeUpstream) -> None:
    upstream.script(Turn(text="Let me check.", chunk_size=5, usage=(50, 20), tool_calls=[
        ToolCall("get_weather", {"city": "Paris"}, id="call_W1")]),
        Turn(text="It is 18C in Paris.", usage=(80, 8)))
    question = {"role": "user", "content": "Weather in Paris?"}
    async with client(sdk_base, api_key=server_token) as api:
        async with api.messages.stream(
                model="gpt-4o-mini", max_tokens=200, tools=[WEATHER],
                tool_choice={"type": "auto", "disable_parallel_tool_use": True},
                messages=[question]) as stream:
            first = await stream.get_final_message()
        assert first.stop_reason == "tool_use"
        text, call = first.content
        assert (text.type, text.text) == ("text", "Let me check.")
        assert (call.type, call.id, call.name, call.input) == (
            "tool_use", "call_W1", "get_weather", {"city": "Paris"})
        sent = upstream.requests[-1]["body"]
        assert sent["tools"] == [{"type": "function", "function": {
            "name": "get_weather", "description": "Weather of a city",
            "parameters": WEATHER["input_schema"]}}]
        assert (sent["tool_choice"], sent["parallel_tool_calls"]) == ("auto", False)
        second = await api.messages.create(
            model="gpt-4o-mini", max_tokens=200, tools=[WEATHER], messages=[
                question, {"role": "assistant", "content": first.content},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": call.id,
                     "content": [{"type": "text", "text": "18C, sunny"}]},
                    {"type": "text", "text": "Answer in one line."}]}])
    assert second.content[0].text == "It is 18C in Paris." and second.stop_reason == "end_turn"
    assert upstream.requests[-1]["body"]["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "call_W1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_W1", "content": "18C, sunny"},
        {"role": "user", "content": "Answer in one line."}]


async def test_tool_choice_forced_and_failed_tool_result(cloudide: Any, sdk_base: str,
                                                         server_token: str,
                                                         upstream: FakeUpstream) -> None:
    upstream.script(Turn(tool_calls=[ToolCall("get_weather", {"city": "Oslo"}, id="c1")]),
                    Turn(text="Sorry."))
    async with client(sdk_base, api_key=server_token) as api:
        first = await api.messages.create(
            model="gpt-4o-mini", max_tokens=50, tools=[WEATHER],
            tool_choice={"type": "tool", "name": "get_weather"},
            messages=[{"role": "user", "content": "Oslo?"}])
        assert [b.type for b in first.content] == ["tool_use"]
        assert first.stop_reason == "tool_use" and first.content[0].input == {"city": "Oslo"}
        assert upstream.requests[-1]["body"]["tool_choice"] == {
            "type": "function", "function": {"name": "get_weather"}}
        await api.messages.create(
            model="gpt-4o-mini", max_tokens=50, tools=[WEATHER], tool_choice={"type": "any"},
            messages=[{"role": "user", "content": "Oslo?"},
                      {"role": "assistant", "content": first.content},
                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1",
                                                    "content": "city unknown",
                                                    "is_error": True}]}])
    sent = upstream.requests[-1]["body"]
    assert sent["tool_choice"] == "required"
    assert sent["messages"][-1] == {"role": "tool", "tool_call_id": "c1",
                                    "content": "Error: city unknown"}


async def test_agent_model(cloudide: Any, sdk_base: str, server_token: str,
                           upstream: FakeUpstream) -> None:
    """``cloudide-agent`` falls out of the shared service: the agent's turn, as a message."""
    upstream.script(Turn(text="The agent answers.", usage=(120, 6)))
    async with client(sdk_base, api_key=server_token) as api:
        message = await api.messages.create(model="cloudide-agent", max_tokens=100, messages=[
            {"role": "user", "content": "Who are you?"}])
    assert message.model == "cloudide-agent" and message.stop_reason == "end_turn"
    assert message.content[0].text == "The agent answers."
    assert message.usage.input_tokens >= 120 and message.usage.output_tokens >= 6


# -- auth and errors ------------------------------------------------------------------------


async def test_auth_by_x_api_key_and_bearer(cloudide: Any, sdk_base: str, server_token: str,
                                            upstream: FakeUpstream) -> None:
    key = await make_key(cloudide, "alice")
    request = {"model": "gpt-4o-mini", "max_tokens": 16,
               "messages": [{"role": "user", "content": "x"}]}
    # x-api-key: the Anthropic API's own header (this SDK version sends api_key= as a bearer
    # token, so the header is given as is, with no other credential)
    async with client(sdk_base, default_headers={"x-api-key": key}) as api:
        raw = await api.messages.with_raw_response.create(**request)
        assert raw.http_request.headers["x-api-key"] == key
        assert "authorization" not in raw.http_request.headers
        assert (await raw.parse()).content[0].text == "ok"
    rows = await ledger_rows(cloudide, "alice")
    assert rows[-1].extra["via"] == "api_key"
    for credentials in ({"auth_token": server_token}, {"api_key": server_token}):
        async with client(sdk_base, **credentials) as api:  # Authorization: Bearer
            raw = await api.messages.with_raw_response.create(**request)
            assert raw.http_request.headers["authorization"] == f"Bearer {server_token}"
            assert (await raw.parse()).content[0].text == "ok"
    for bad in (client(sdk_base, api_key="cide_not-a-key"), client(sdk_base, api_key="wrong"),
                client(sdk_base, default_headers={"x-api-key": "wrong"})):
        async with bad as api:
            with pytest.raises(anthropic.AuthenticationError) as refused:
                await api.messages.create(**request)
        assert refused.value.status_code == 401
        assert refused.value.body["type"] == "error"
        assert refused.value.body["error"]["type"] == "authentication_error"
        assert set(refused.value.body["error"]) == {"type", "message"}


async def test_unknown_model_bad_content_and_schema_errors(cloudide: Any, sdk_base: str,
                                                           v1_url: str, server_token: str
                                                           ) -> None:
    async with client(sdk_base, api_key=server_token) as api:
        with pytest.raises(anthropic.NotFoundError) as missing:
            await api.messages.create(model="no-such-model", max_tokens=16, messages=[
                {"role": "user", "content": "x"}])
        assert missing.value.body["error"]["type"] == "not_found_error"
        assert "no-such-model" in missing.value.body["error"]["message"]
        with pytest.raises(anthropic.BadRequestError) as image:
            await api.messages.create(model="gpt-4o-mini", max_tokens=16, messages=[
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                 "data": "iVBORw0KGgo="}}]}])
        error = image.value.body["error"]
        assert error["type"] == "invalid_request_error"
        assert error["message"].startswith("messages[0].content[1]: image content is not "
                                           "supported")
        with pytest.raises(anthropic.BadRequestError) as server_tool:
            await api.messages.create(model="gpt-4o-mini", max_tokens=16, tools=[
                {"type": "web_search_20250305", "name": "web_search"}], messages=[
                {"role": "user", "content": "x"}])
        assert "server tools" in server_tool.value.body["error"]["message"]
    response, text = await raw_post(v1_url, server_token, {
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    assert response.code == 400 and json.loads(text) == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "max_tokens: required field is missing"}}
    response, text = await raw_post(v1_url, server_token, {})
    assert response.code == 400 and json.loads(text)["type"] == "error"
    from tornado.httpclient import AsyncHTTPClient

    wrong_verb = await AsyncHTTPClient().fetch(v1_url + "/messages", raise_error=False,
                                               headers={"x-api-key": server_token})
    assert wrong_verb.code == 405
    assert json.loads(wrong_verb.body)["error"]["type"] == "invalid_request_error"


async def test_upstream_overloaded_is_529(cloudide: Any, sdk_base: str, server_token: str,
                                          upstream: FakeUpstream) -> None:
    """Every allowed model overloaded upstream (503): Anthropic's 529, retry-after kept."""
    upstream.script(Turn(status=503, retry_after=4), model="gpt-4o-mini")
    upstream.script(Turn(status=503, retry_after=4), model="gpt-4o")
    async with client(sdk_base, api_key=server_token) as api:
        with pytest.raises(anthropic.OverloadedError) as overloaded:
            await api.messages.create(model="gpt-4o-mini", max_tokens=16, messages=[
                {"role": "user", "content": "x"}])
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"
    assert overloaded.value.response.headers["retry-after"] == "4"


class TestRateLimited:
    @pytest.fixture
    def cloudide_config(self, upstream: FakeUpstream) -> dict[str, Any]:
        return agent_config(upstream, discover_models=False, models=MODELS, rate_limits={
            "v1": {"requests_per_minute": 2, "tokens_per_minute": None}})

    async def test_429_with_retry_after_from_our_limiter(self, cloudide: Any, sdk_base: str,
                                                         server_token: str) -> None:
        async with client(sdk_base, api_key=server_token) as api:
            first = await api.messages.with_raw_response.create(
                model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": "x"}])
            assert first.headers["x-ratelimit-limit-requests"] == "2"
            await api.messages.create(model="gpt-4o-mini", max_tokens=16, messages=[
                {"role": "user", "content": "x"}])
            with pytest.raises(anthropic.RateLimitError) as limited:
                async with api.messages.stream(model="gpt-4o-mini", max_tokens=16, messages=[
                        {"role": "user", "content": "x"}]) as stream:
                    await stream.get_final_message()
        response = limited.value.response
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        assert limited.value.body["error"]["type"] == "rate_limit_error"
        assert response.headers.get("x-should-retry") is None  # retrying later does help


# -- the bytes on the wire ------------------------------------------------------------------


async def test_golden_stream(cloudide: Any, v1_url: str, server_token: str,
                             upstream: FakeUpstream) -> None:
    upstream.script(Turn(text="Hi there", chunk_size=4, usage=(30, 12),
                         tool_calls=[ToolCall("f", {"x": 1}, id="call_A"),
                                     ToolCall("g", {"y": "zz"}, id="call_B")]))
    response, text = await raw_post(v1_url, server_token, {
        "model": "gpt-4o-mini", "stream": True, "max_tokens": 100,
        "messages": [{"role": "user", "content": "go"}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}},
                  {"name": "g", "input_schema": {"type": "object"}}]},
        headers={"anthropic-beta": "fine-grained-tool-streaming-2025-05-14"})
    assert response.code == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert "[DONE]" not in text
    events = sse_events(text)
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start == {
        "id": start["id"], "type": "message", "role": "assistant", "model": "gpt-4o-mini",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 0, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0, "output_tokens": 0}}
    # exact bytes of one event: compact JSON, type first
    assert text.split("\n\n")[2] == ('event: content_block_delta\ndata: {"type":'
                                     '"content_block_delta","index":0,"delta":{"type":'
                                     '"text_delta","text":"Hi t"}}')
    shapes = [(name, {k: v for k, v in data.items() if k != "type"})
              for name, data in events[1:]]
    assert shapes[:4] == [
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hi t"}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "here"}}),
        ("content_block_stop", {"index": 0})]
    assert shapes[4] == ("content_block_start", {"index": 1, "content_block": {
        "type": "tool_use", "id": "call_A", "name": "f", "input": {}}})
    names = [name for name, _ in events]
    second = names.index("content_block_start", 6)
    assert set(names[6:second - 1]) == {"content_block_delta"}
    assert names[second - 1] == "content_block_stop" and shapes[second - 1] == (
        "content_block_start", {"index": 2, "content_block": {
            "type": "tool_use", "id": "call_B", "name": "g", "input": {}}})
    assert names[-4:] == ["content_block_delta", "content_block_stop", "message_delta",
                          "message_stop"]
    inputs: dict[int, str] = {}
    for name, data in events:
        if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta":
            assert set(data["delta"]) == {"type", "partial_json"}
            inputs[data["index"]] = inputs.get(data["index"], "") + data["delta"]["partial_json"]
    assert {i: json.loads(s) for i, s in inputs.items()} == {1: {"x": 1}, 2: {"y": "zz"}}
    assert events[-2][1] == {"type": "message_delta",
                             "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                             "usage": {"input_tokens": 30, "cache_creation_input_tokens": 0,
                                       "cache_read_input_tokens": 0, "output_tokens": 12}}
    assert events[-1][1] == {"type": "message_stop"}


async def test_golden_non_streaming_and_max_tokens(cloudide: Any, v1_url: str,
                                                   server_token: str,
                                                   upstream: FakeUpstream) -> None:
    upstream.script(Turn(text="cut sh", finish_reason="length", usage=(5, 2)))
    response, text = await raw_post(v1_url, server_token, {
        "model": "gpt-4o-mini", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]})
    assert response.headers["Content-Type"].startswith("application/json")
    body = json.loads(text)
    assert body == {"id": body["id"], "type": "message", "role": "assistant",
                    "model": "gpt-4o-mini", "content": [{"type": "text", "text": "cut sh"}],
                    "stop_reason": "max_tokens", "stop_sequence": None,
                    "usage": {"input_tokens": 5, "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 0, "output_tokens": 2}}


async def test_error_mid_stream_is_an_error_event(cloudide: Any, v1_url: str,
                                                  server_token: str,
                                                  upstream: FakeUpstream) -> None:
    upstream.script(Turn(text="partial answer", chunk_size=4, error_after=3))
    response, text = await raw_post(v1_url, server_token, {
        "model": "gpt-4o-mini", "stream": True, "max_tokens": 100,
        "messages": [{"role": "user", "content": "x"}]})
    assert response.code == 200
    events = sse_events(text)
    assert [name for name, _ in events[:2]] == ["message_start", "content_block_start"]
    name, data = events[-1]
    assert name == "error" and data["error"]["type"] == "api_error"
    assert set(data) == {"type", "error"} and "message_stop" not in [n for n, _ in events]


class TestKeepAlive:
    @pytest.fixture
    def cloudide_config(self, upstream: FakeUpstream) -> dict[str, Any]:
        return agent_config(upstream, v1_keepalive_seconds=0.2, discover_models=False,
                            models=MODELS)

    async def test_pings_while_the_first_token_is_slow(self, cloudide: Any, v1_url: str,
                                                       sdk_base: str, server_token: str,
                                                       upstream: FakeUpstream) -> None:
        upstream.script(Turn(text="late", first_token_delay=1.0),
                        Turn(text="late too", first_token_delay=0.7))
        _, text = await raw_post(v1_url, server_token, {
            "model": "gpt-4o-mini", "stream": True, "max_tokens": 10,
            "messages": [{"role": "user", "content": "x"}]})
        names = [name for name, _ in sse_events(text)]
        assert names[0] == "ping" and names.count("ping") >= 3
        assert names[-1] == "message_stop"
        api = client(sdk_base, api_key=server_token)
        async with api, api.messages.stream(model="gpt-4o-mini", max_tokens=10, messages=[
                {"role": "user", "content": "x"}]) as stream:  # the SDK skips the pings
            assert (await stream.get_final_text()) == "late too"


async def test_client_leaving_mid_stream_cancels_upstream_and_bills(
        cloudide: Any, v1_url: str, jp_http_port: int, server_token: str,
        upstream: FakeUpstream) -> None:
    upstream.script(Turn(text="word " * 200, chunk_size=5, delay_between_chunks=0.05))
    path = v1_url.split(str(jp_http_port), 1)[1] + "/messages"
    body = json.dumps({"model": "gpt-4o-mini", "stream": True, "max_tokens": 1000,
                       "messages": [{"role": "user", "content": "count words " * 20}]})
    reader, writer = await asyncio.open_connection("127.0.0.1", jp_http_port)
    writer.write((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{jp_http_port}\r\n"
                  f"x-api-key: {server_token}\r\nanthropic-version: 2023-06-01\r\n"
                  f"Content-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
    await writer.drain()
    received = b""
    while received.count(b'"text":"word') < 3:
        received += await asyncio.wait_for(reader.read(4096), 10)
    assert b"event: message_start" in received
    writer.close()  # the client goes away mid-answer
    for _ in range(100):
        if upstream.requests[-1]["disconnected"]:
            break
        await asyncio.sleep(0.05)
    assert upstream.requests[-1]["disconnected"], "the upstream call was not cancelled"
    rows = await ledger_rows(cloudide, cloudide._owner_name)
    row = rows[-1]
    assert row.extra["failed"] == "cancelled" and row.extra["estimated"]
    assert row.input_tokens > 20 and 3 <= row.output_tokens < 200  # what came, not the rest


# -- an Anthropic upstream ------------------------------------------------------------------


class TestAnthropicUpstream:
    """A model served by an Anthropic upstream: Messages in, Messages out, through the
    agent's format in between; tool calls and cache counts pass through."""

    @pytest.fixture
    def cloudide_config(self, upstream: FakeUpstream) -> dict[str, Any]:
        config = agent_config(upstream, discover_models=False, models=[
            *MODELS, {"id": "claude-haiku-4-5", "provider": "anthropic",
                      "model": "claude-haiku-4-5", "capabilities": ["tools"]}])
        config["providers"].append({"name": "anthropic", "kind": "anthropic",
                                    "base_url": upstream.anthropic_base_url,
                                    "api_key": upstream.api_key})
        return config

    async def test_tool_use_through_an_anthropic_upstream(self, cloudide: Any, sdk_base: str,
                                                          server_token: str,
                                                          upstream: FakeUpstream) -> None:
        upstream.script(Turn(text="Checking.", usage=(60, 15), cached_tokens=40,
                             tool_calls=[ToolCall("get_weather", {"city": "Rome"},
                                                  id="toolu_R1")]),
                        Turn(text="Warm.", usage=(90, 3)))
        async with client(sdk_base, api_key=server_token) as api:
            async with api.messages.stream(
                    model="claude-haiku-4-5", max_tokens=300, system="Be terse.",
                    tools=[WEATHER], tool_choice={"type": "any"},
                    messages=[{"role": "user", "content": "Rome?"}]) as stream:
                first = await stream.get_final_message()
            sent = upstream.requests[-1]
            assert sent["path"] == "/v1/messages"
            assert sent["body"]["system"] == "Be terse."
            assert sent["body"]["tools"] == [WEATHER]
            assert sent["body"]["tool_choice"] == {"type": "any"}
            assert first.model == "claude-haiku-4-5" and first.stop_reason == "tool_use"
            assert [(b.type, getattr(b, "id", None)) for b in first.content] == [
                ("text", None), ("tool_use", "toolu_R1")]
            assert first.content[1].input == {"city": "Rome"}
            assert (first.usage.input_tokens, first.usage.cache_read_input_tokens,
                    first.usage.output_tokens) == (20, 40, 15)
            second = await api.messages.create(
                model="claude-haiku-4-5", max_tokens=300, tools=[WEATHER], messages=[
                    {"role": "user", "content": "Rome?"},
                    {"role": "assistant", "content": first.content},
                    {"role": "user", "content": [{"type": "tool_result",
                                                  "tool_use_id": "toolu_R1",
                                                  "content": "25C"}]}])
        assert second.content[0].text == "Warm."
        assert upstream.requests[-1]["body"]["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": "Rome?"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_R1", "name": "get_weather",
                 "input": {"city": "Rome"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_R1",
                                          "content": "25C"}]}]


# -- the wire module, without a server ------------------------------------------------------


def parse(**body: Any) -> Any:
    request, _ = wire.parse_messages_request({
        "model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}], **body})
    return request


def test_tool_choice_is_the_providers_mapping_inverted() -> None:
    tools = [WEATHER]
    for choice in ({"type": "auto"}, {"type": "any"}, {"type": "none"},
                   {"type": "tool", "name": "get_weather"},
                   {"type": "auto", "disable_parallel_tool_use": True},
                   {"type": "any", "disable_parallel_tool_use": True},
                   {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}):
        request = parse(tools=tools, tool_choice=choice)
        assert anthropic_provider.tool_choice(request.tool_choice,
                                              request.parallel_tool_calls) == choice
    with pytest.raises(InvalidInputError) as unknown:
        parse(tools=tools, tool_choice={"type": "tool", "name": "nope"})
    assert unknown.value.field == "tool_choice.name"
    with pytest.raises(InvalidInputError):
        parse(tool_choice={"type": "any"})
    with pytest.raises(InvalidInputError) as twice:
        parse(tools=[WEATHER, WEATHER])
    assert twice.value.field == "tools[1].name"


def test_stop_reasons_are_the_providers_mapping_inverted() -> None:
    for ours, theirs in wire.STOP_REASONS.items():
        assert anthropic_provider.STOP_REASONS[theirs] == ours
    assert wire.stop_reason("stop", called=True) == "tool_use"
    assert wire.stop_reason("length", called=True) == "max_tokens"
    assert wire.stop_reason("error", called=False) == "end_turn"


def test_messages_translate_to_the_agents_vocabulary() -> None:
    request = parse(system="S", messages=[
        {"role": "user", "content": [{"type": "text", "text": "a"},
                                     {"type": "text", "text": "b", "cache_control": {
                                         "type": "ephemeral"}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "tool_use", "id": "t1", "name": "f", "input": {"k": [1]}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1"},
            {"type": "tool_result", "tool_use_id": "t2", "content": "bad", "is_error": True}]},
        {"role": "assistant", "content": "prefill"}])
    assert request.messages == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "a\n\nb"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "f",
                                                          "arguments": '{"k":[1]}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": ""},
        {"role": "tool", "tool_call_id": "t2", "content": "Error: bad"},
        {"role": "assistant", "content": "prefill"}]
    for content, field in (
            ([{"type": "document", "source": {}}], "messages[0].content[0]"),
            ([{"type": "tool_use", "id": "x", "name": "f", "input": {}}],
             "messages[0].content[0]"),
            ([{"type": "tool_result", "tool_use_id": "x",
               "content": [{"type": "image", "source": {}}]}],
             "messages[0].content[0].content[0]")):
        with pytest.raises(InvalidInputError) as refused:
            parse(messages=[{"role": "user", "content": content}])
        assert refused.value.field == field


def test_encoder_handles_calls_that_never_streamed_and_late_ids() -> None:
    encoder = wire.MessageEncoder("msg_1", "m")
    frames = "".join(encoder.encode(e) for e in (
        Routed("m"), ToolCallStarted("", "f"), ToolCallDelta("", '{"a":'),
        DoneCall("call_0", "f", '{"a":1}'), DoneCall("call_1", "g", '{"b":2}'),
        TextDelta("after"), Usage(10, 4, cached_tokens=3), Finish("tool_calls")))
    message = encoder.message()
    assert [b["type"] for b in message["content"]] == ["tool_use", "tool_use", "text"]
    assert [b.get("input") for b in message["content"][:2]] == [{"a": 1}, {"b": 2}]
    assert message["content"][0]["id"].startswith("toolu_")
    assert message["usage"] == {"input_tokens": 7, "cache_creation_input_tokens": 0,
                                "cache_read_input_tokens": 3, "output_tokens": 4}
    names = [line[7:] for line in frames.split("\n") if line.startswith("event: ")]
    assert names.count("content_block_start") == names.count("content_block_stop") == 3
    assert names[-2:] == ["message_delta", "message_stop"]


def test_errors_have_anthropics_shape_and_statuses() -> None:
    budget = wire.error_for(BudgetExceededError("monthly budget of $50 used up"))
    assert (budget.status, budget.headers["x-should-retry"]) == (429, "false")
    assert budget.body == {"type": "error", "error": {
        "type": "rate_limit_error", "message": "monthly budget of $50 used up"}}
    limited = wire.error_for(RateLimitedError("slow down", retry_after_s=3,
                                              headers={"Retry-After": "3"}))
    assert limited.status == 429 and "x-should-retry" not in limited.headers
    cases = {("rate_limited", 2.5): (429, "rate_limit_error", "3"),
             ("overloaded", None): (529, "overloaded_error", None),
             ("timeout", None): (504, "api_error", None),
             ("bad_request", None): (400, "invalid_request_error", None),
             ("auth", None): (502, "api_error", None)}
    for (kind, after), (status, type_, header) in cases.items():
        error = wire.error_for(ProviderError(kind, "boom", retry_after_s=after))
        assert (error.status, error.body["error"]["type"]) == (status, type_), kind
        assert error.headers.get("Retry-After") == header, kind
    assert wire.error_for(RuntimeError("secret")).body["error"] == {
        "type": "api_error", "message": "internal server error"}
    for status, type_ in ((401, "authentication_error"), (403, "permission_error"),
                          (404, "not_found_error"), (413, "request_too_large"),
                          (409, "invalid_request_error")):
        assert wire.for_status(status, "x").body["error"]["type"] == type_
    assert wire.error_for(ProviderError("server", "down")).sse().startswith(
        'event: error\ndata: {"type":"error","error":{"type":"api_error"')
