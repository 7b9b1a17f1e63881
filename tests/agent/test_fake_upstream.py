"""The fake LLM upstream speaks the OpenAI and Anthropic wire formats well enough for the real SDKs.

These tests pin two things the agent layer relies on: that ``fake_upstream`` produces what the
providers produce (checked on the raw bytes and through the official ``openai`` and
``anthropic`` SDKs, never mocks), and how those SDKs surface each fault (which exception, whether
they retry). Every client has a short timeout so a regression fails fast instead of hanging.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from fake_upstream import FakeUpstream, ToolCall, Turn

TIMEOUT = 10.0
MESSAGES: list[Any] = [{"role": "user", "content": "What is the weather in Paris and Rome?"}]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}
ANTHROPIC_TOOL: Any = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}
LONG_TEXT = "The quick brown fox jumps over the lazy dog, twice: quick brown fox, lazy dog."


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


def oai(up: FakeUpstream, max_retries: int = 0, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(api_key=up.api_key, base_url=up.openai_base_url, timeout=TIMEOUT,
                         max_retries=max_retries, **kwargs)


def aoai(up: FakeUpstream, max_retries: int = 0, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=up.api_key, base_url=up.openai_base_url,
                              timeout=TIMEOUT, max_retries=max_retries, **kwargs)


def ant(up: FakeUpstream, max_retries: int = 0, **kwargs: Any) -> anthropic.Anthropic:
    kwargs.setdefault("api_key", up.api_key)
    return anthropic.Anthropic(base_url=up.anthropic_base_url, timeout=TIMEOUT,
                               max_retries=max_retries, **kwargs)


def aant(up: FakeUpstream, max_retries: int = 0) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=up.api_key, base_url=up.anthropic_base_url,
                                    timeout=TIMEOUT, max_retries=max_retries)


def raw_post(up: FakeUpstream, path: str, body: dict[str, Any],
             headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
    """POST with the stdlib, to see the exact bytes (http.client undoes only the chunking)."""
    conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=TIMEOUT)
    try:
        conn.request("POST", path, body=json.dumps(body),
                     headers={"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        data = response.read().decode()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


# -- raw wire --------------------------------------------------------------------------------


def test_openai_raw_sse_frames(up: FakeUpstream) -> None:
    up.script(Turn(text="hi there", keepalive_comments=2,
                   tool_calls=[ToolCall("get_weather", {"city": "Paris"}, id="call_1")]))
    status, headers, data = raw_post(
        up, "/v1/chat/completions",
        {"model": "gpt-x", "messages": MESSAGES, "stream": True,
         "stream_options": {"include_usage": True}},
        {"Authorization": f"Bearer {up.api_key}"})
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert "content-encoding" not in headers
    assert data.endswith("data: [DONE]\n\n")
    frames = data.split("\n\n")[:-1]
    assert frames[:2] == [": keep-alive", ": keep-alive"]
    assert "event:" not in data
    chunks = [json.loads(frame.removeprefix("data: ")) for frame in frames[2:-1]]
    assert all(frame.startswith("data: {") and "\n" not in frame for frame in frames[2:-1])
    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {
        (chunks[0]["id"], chunks[0]["created"], "gpt-x", "chat.completion.chunk")}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get(
        "tool_calls", [])]
    assert calls[0] == {"index": 0, "id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}}
    assert all(set(tc) == {"index", "function"} for tc in calls[1:])
    assert json.loads("".join(tc["function"]["arguments"] for tc in calls)) == {"city": "Paris"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert all(c["usage"] is None for c in chunks[:-1])


def test_anthropic_raw_sse_frames(up: FakeUpstream) -> None:
    up.script(Turn(text="hi", keepalive_comments=1, chunk_size=4,
                   tool_calls=[ToolCall("f", {"a": 1})]))  # '{"a": 1}': two pieces
    status, headers, data = raw_post(
        up, "/v1/messages",
        {"model": "claude-x", "max_tokens": 50, "messages": MESSAGES, "stream": True},
        {"x-api-key": up.api_key, "anthropic-version": "2023-06-01"})
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in data
    names = []
    for frame in data.split("\n\n")[:-1]:
        event_line, data_line = frame.split("\n")
        name = event_line.removeprefix("event: ")
        assert json.loads(data_line.removeprefix("data: "))["type"] == name
        names.append(name)
    assert names == ["ping", "message_start",
                     "content_block_start", "content_block_delta", "content_block_stop",
                     "content_block_start", *["content_block_delta"] * 2, "content_block_stop",
                     "message_delta", "message_stop"]


def test_requests_are_recorded(up: FakeUpstream) -> None:
    with oai(up) as client:
        client.chat.completions.create(
            model="gpt-x", tools=[WEATHER_TOOL], tool_choice="auto", max_completion_tokens=9,
            messages=[*MESSAGES,
                      {"role": "assistant", "content": None, "tool_calls": [
                          {"id": "call_1", "type": "function",
                           "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
                      {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}])
    (record,) = up.requests
    assert record["path"] == "/v1/chat/completions" and record["method"] == "POST"
    assert record["headers"]["authorization"] == f"Bearer {up.api_key}"
    assert record["model"] == "gpt-x"
    assert record["body"]["tools"] == [WEATHER_TOOL]
    assert record["body"]["tool_choice"] == "auto"
    assert record["body"]["messages"][-1] == {"role": "tool", "tool_call_id": "call_1",
                                              "content": "sunny"}


def test_scripts_by_model_and_default_reply(up: FakeUpstream) -> None:
    up.script(Turn(text="general"))
    up.script(Turn(text="for-b"), model="model-b")
    with oai(up) as client:
        def ask(model: str) -> str | None:
            reply = client.chat.completions.create(model=model, messages=MESSAGES)
            return reply.choices[0].message.content

        assert ask("model-a") == "general"
        assert ask("model-b") == "for-b"
        assert ask("model-b") == "ok"  # unscripted: the default reply
    assert up.pending() == 0


# -- OpenAI ----------------------------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [True, False])
def test_openai_stream_text_sync(up: FakeUpstream, include_usage: bool) -> None:
    up.script(Turn(text=LONG_TEXT, chunk_size=5, usage=(21, 13), cached_tokens=4))
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    with oai(up) as client:
        chunks = list(client.chat.completions.create(
            model="gpt-x", messages=MESSAGES, stream=True, **extra))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == LONG_TEXT
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 16
    assert chunks[0].choices[0].delta.role == "assistant"
    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert usage_chunks == [chunks[-1]] and chunks[-1].choices == []
        usage = chunks[-1].usage
        assert usage is not None
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (21, 13, 34)
        assert usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.cached_tokens == 4
        assert chunks[-2].choices[0].finish_reason == "stop"
    else:
        assert usage_chunks == []
        assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.asyncio
async def test_openai_stream_text_async(up: FakeUpstream) -> None:
    up.script(Turn(text=LONG_TEXT))
    async with aoai(up) as client:
        stream = await client.chat.completions.create(
            model="gpt-x", messages=MESSAGES, stream=True,
            stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == LONG_TEXT
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def _two_calls() -> Turn:
    return Turn(text="Checking both.", chunk_size=4, tool_calls=[
        ToolCall("get_weather", {"city": "Paris"}),
        ToolCall("get_weather", {"city": "Rome", "unit": "celsius"}, id="call_rome")])


def _assert_two_calls(message: Any) -> None:
    calls = message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_weather"]
    assert [json.loads(c.function.arguments) for c in calls] == [
        {"city": "Paris"}, {"city": "Rome", "unit": "celsius"}]
    assert calls[0].id.startswith("call_") and calls[1].id == "call_rome"
    assert message.content == "Checking both."


def test_openai_stream_helper_parallel_tool_calls_sync(up: FakeUpstream) -> None:
    up.script(_two_calls())
    with oai(up) as client, client.chat.completions.stream(
            model="gpt-x", messages=MESSAGES, tools=[WEATHER_TOOL],
            parallel_tool_calls=True, stream_options={"include_usage": True}) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_completion()
    assert events.count("tool_calls.function.arguments.done") == 2
    assert final.choices[0].finish_reason == "tool_calls"
    _assert_two_calls(final.choices[0].message)
    assert final.usage is not None and final.usage.total_tokens > 0


@pytest.mark.asyncio
async def test_openai_stream_helper_parallel_tool_calls_async(up: FakeUpstream) -> None:
    up.script(_two_calls())
    async with aoai(up) as client, client.chat.completions.stream(
            model="gpt-x", messages=MESSAGES, tools=[WEATHER_TOOL]) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    _assert_two_calls(final.choices[0].message)


def test_openai_invalid_tool_arguments_are_passed_through(up: FakeUpstream) -> None:
    up.script(Turn(tool_calls=[ToolCall("get_weather", '{"city": "Par')]))
    with oai(up) as client, client.chat.completions.stream(
            model="gpt-x", messages=MESSAGES, tools=[WEATHER_TOOL]) as stream:
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    assert call.function.arguments == '{"city": "Par'


def test_openai_non_streaming_tool_calls(up: FakeUpstream) -> None:
    up.script(Turn(tool_calls=[ToolCall("get_weather", {"city": "Paris"})], usage=(50, 7),
                   cached_tokens=32))
    with oai(up) as client:
        reply = client.chat.completions.create(model="gpt-x", messages=MESSAGES,
                                               tools=[WEATHER_TOOL])
    assert reply.object == "chat.completion" and reply.model == "gpt-x"
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (50, 7)
    assert reply.usage.prompt_tokens_details.cached_tokens == 32


@pytest.mark.parametrize("finish_reason", ["length", "max_tokens"])
def test_finish_reason_vocabularies(up: FakeUpstream, finish_reason: str) -> None:
    up.script(Turn(text="cut", finish_reason=finish_reason))
    up.script(Turn(text="cut", finish_reason=finish_reason))
    with oai(up) as client:
        reply = client.chat.completions.create(model="gpt-x", messages=MESSAGES)
    with ant(up) as aclient:
        message = aclient.messages.create(model="claude-x", max_tokens=9, messages=MESSAGES)
    assert reply.choices[0].finish_reason == "length"
    assert message.stop_reason == "max_tokens"


def test_openai_models_and_embeddings(up: FakeUpstream) -> None:
    up.models = ["gpt-a", "gpt-b"]
    with oai(up) as client:
        models = client.models.list()
        assert [m.id for m in models.data] == ["gpt-a", "gpt-b"]
        assert {m.object for m in models.data} == {"model"}
        # the SDK asks for base64 by default and decodes it; floats when asked for floats
        vectors = client.embeddings.create(model="emb", input=["red apple", "red car"]).data
        floats = client.embeddings.create(model="emb", input="red apple",
                                          encoding_format="float").data
    assert [v.index for v in vectors] == [0, 1] and len(vectors[0].embedding) == 64
    assert floats[0].embedding == pytest.approx(vectors[0].embedding, abs=1e-6)
    assert sum(x * x for x in vectors[0].embedding) == pytest.approx(1.0, abs=1e-5)
    assert sum(a * b for a, b in zip(vectors[0].embedding, vectors[1].embedding,
                                     strict=True)) > 0


def test_openai_wrong_key_is_401(up: FakeUpstream) -> None:
    with openai.OpenAI(api_key="sk-wrong", base_url=up.openai_base_url, timeout=TIMEOUT,
                       max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as info:
            client.chat.completions.create(model="gpt-x", messages=MESSAGES)
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    assert up.pending() == 0  # a rejected request consumes no scripted turn


def test_openai_429_is_retried_honouring_retry_after(up: FakeUpstream) -> None:
    # max_retries counts retries: 2 allows three attempts in all
    up.script(Turn(status=429, retry_after=0.2), Turn(status=429, retry_after=0.2),
              Turn(text="finally"))
    started = time.monotonic()
    with oai(up, max_retries=2) as client:
        reply = client.chat.completions.create(model="gpt-x", messages=MESSAGES)
    assert reply.choices[0].message.content == "finally"
    assert time.monotonic() - started >= 0.4  # slept retry-after twice
    assert [r["headers"]["x-stainless-retry-count"] for r in up.requests] == ["0", "1", "2"]


def test_openai_429_exhausting_retries_raises(up: FakeUpstream) -> None:
    up.script(Turn(status=429, retry_after=0.1), Turn(status=429, retry_after=0.1),
              Turn(text="never reached"))
    with oai(up, max_retries=1) as client, pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-x", messages=MESSAGES)
    assert len(up.requests) == 2


@pytest.mark.asyncio
async def test_openai_429_without_retries_shows_retry_after(up: FakeUpstream) -> None:
    up.script(Turn(status=429, retry_after=7))
    async with aoai(up) as client:
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="gpt-x", messages=MESSAGES, stream=True)
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.code == "rate_limit_exceeded"
    assert len(up.requests) == 1


def test_openai_500_is_internal_server_error(up: FakeUpstream) -> None:
    up.script(Turn(status=500))
    with oai(up) as client, pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-x", messages=MESSAGES, stream=True)


def test_openai_malformed_chunk_raises(up: FakeUpstream) -> None:
    # The SDK does not wrap it: a json.JSONDecodeError (a ValueError) escapes the iteration.
    up.script(Turn(text=LONG_TEXT, malformed_after=2))
    seen: list[str] = []
    with oai(up) as client:
        stream = client.chat.completions.create(model="gpt-x", messages=MESSAGES, stream=True)
        with pytest.raises(json.JSONDecodeError):
            for chunk in stream:
                seen.append(chunk.choices[0].delta.content or "")
    assert "".join(seen) == LONG_TEXT[:8]


@pytest.mark.asyncio
async def test_openai_reset_mid_stream_async(up: FakeUpstream) -> None:
    up.script(Turn(text=LONG_TEXT, reset_after=3))
    async with aoai(up) as client:
        stream = await client.chat.completions.create(model="gpt-x", messages=MESSAGES,
                                                      stream=True)
        with pytest.raises(openai.APIConnectionError):
            async for _ in stream:
                pass


def test_openai_reset_mid_stream_sync(up: FakeUpstream) -> None:
    up.script(Turn(text=LONG_TEXT, reset_after=3))
    with oai(up) as client, client.chat.completions.stream(
            model="gpt-x", messages=MESSAGES) as stream, pytest.raises(openai.APIConnectionError):
        stream.get_final_completion()


def test_openai_slow_first_token(up: FakeUpstream) -> None:
    up.script(Turn(text="slow", first_token_delay=0.5, keepalive_comments=3))
    with oai(up) as client:
        started = time.monotonic()
        stream = client.chat.completions.create(model="gpt-x", messages=MESSAGES, stream=True)
        headers_at = time.monotonic() - started
        chunks = iter(stream)
        next(chunks)
        first_at = time.monotonic() - started
        rest = list(chunks)
    assert headers_at < 0.4  # headers went out before the first token
    assert first_at >= 0.45
    assert "".join(c.choices[0].delta.content or "" for c in rest) == "slow"


@pytest.mark.asyncio
async def test_openai_read_timeout_on_silent_stream(up: FakeUpstream) -> None:
    up.script(Turn(text="late", first_token_delay=5))
    async with aoai(up) as client:
        stream = await client.chat.completions.create(
            model="gpt-x", messages=MESSAGES, stream=True, timeout=0.3)
        with pytest.raises(openai.APITimeoutError):
            async for _ in stream:
                pass
    # the fake noticed the client leaving and stopped waiting
    for _ in range(200):
        if up.requests[0]["disconnected"]:
            break
        await asyncio.sleep(0.01)
    assert up.requests[0]["disconnected"]


def test_openai_mid_stream_error_event(up: FakeUpstream) -> None:
    up.script(Turn(text=LONG_TEXT, error_after=2, error_message="upstream fell over"))
    with oai(up) as client:
        stream = client.chat.completions.create(model="gpt-x", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError) as info:
            list(stream)
    # no HTTP status to map: a plain APIError, not an APIStatusError
    assert not isinstance(info.value, openai.APIStatusError)
    assert info.value.message == "upstream fell over"


def test_truncated_stream_is_not_an_sdk_error(up: FakeUpstream) -> None:
    """A body that ends cleanly without a finish_reason/[DONE] is NOT detected by the SDK: the
    agent layer must check finish_reason itself."""
    up.script(Turn(text="partial answer", chunk_size=7, truncate_after=2))
    with oai(up) as client, client.chat.completions.stream(
            model="gpt-x", messages=MESSAGES) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "partial"
    assert final.choices[0].finish_reason is None


def test_client_disconnect_is_recorded(up: FakeUpstream) -> None:
    up.script(Turn(text=LONG_TEXT, delay_between_chunks=0.2))
    with oai(up) as client:
        stream = client.chat.completions.create(model="gpt-x", messages=MESSAGES, stream=True)
        next(iter(stream))
        stream.close()
    deadline = time.monotonic() + 5
    while not up.requests[0]["disconnected"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert up.requests[0]["disconnected"]


# -- Anthropic -------------------------------------------------------------------------------


def _anthropic_turn() -> Turn:
    return Turn(text="Let me check.", chunk_size=3, usage=(120, 30), cached_tokens=100,
                tool_calls=[ToolCall("get_weather", {"city": "Paris", "days": [1, 2]})])


def _assert_anthropic_message(message: Any) -> None:
    text, tool = message.content
    assert text.type == "text" and text.text == "Let me check."
    assert tool.type == "tool_use" and tool.name == "get_weather"
    assert tool.input == {"city": "Paris", "days": [1, 2]} and tool.id.startswith("toolu_")
    assert message.stop_reason == "tool_use"
    # Anthropic counts the uncached part as input_tokens, unlike OpenAI's prompt_tokens
    assert (message.usage.input_tokens, message.usage.output_tokens) == (20, 30)
    assert message.usage.cache_read_input_tokens == 100


def test_anthropic_stream_sync(up: FakeUpstream) -> None:
    up.script(_anthropic_turn())
    with ant(up) as client, client.messages.stream(
            model="claude-x", max_tokens=100, messages=MESSAGES, tools=[ANTHROPIC_TOOL]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Let me check."
    _assert_anthropic_message(final)
    assert up.requests[0]["body"]["tools"] == [ANTHROPIC_TOOL]


@pytest.mark.asyncio
async def test_anthropic_stream_async(up: FakeUpstream) -> None:
    up.script(_anthropic_turn())
    async with aant(up) as client, client.messages.stream(
            model="claude-x", max_tokens=100, messages=MESSAGES) as stream:
        deltas = [event.delta.partial_json async for event in stream
                  if event.type == "content_block_delta" and event.delta.type == "input_json_delta"]
        final = await stream.get_final_message()
    assert len(deltas) > 1 and json.loads("".join(deltas)) == {"city": "Paris", "days": [1, 2]}
    _assert_anthropic_message(final)


def test_anthropic_non_streaming(up: FakeUpstream) -> None:
    up.script(_anthropic_turn())
    with ant(up) as client:
        message = client.messages.create(model="claude-x", max_tokens=100, messages=MESSAGES,
                                         system="be brief")
    assert message.type == "message" and message.model == "claude-x"
    _assert_anthropic_message(message)
    assert up.requests[0]["body"]["system"] == "be brief"


def test_anthropic_auth_by_bearer_and_wrong_key(up: FakeUpstream) -> None:
    with ant(up, api_key=None, auth_token=up.api_key) as client:
        reply = client.messages.create(model="claude-x", max_tokens=9, messages=MESSAGES)
    assert reply.content[0].type == "text" and reply.content[0].text == "ok"
    with ant(up, api_key="sk-wrong") as client, pytest.raises(anthropic.AuthenticationError) as e:
        client.messages.create(model="claude-x", max_tokens=9, messages=MESSAGES)
    assert e.value.status_code == 401
    assert isinstance(e.value.body, dict)
    assert e.value.body["error"]["type"] == "authentication_error"


@pytest.mark.asyncio
async def test_anthropic_529_overloaded(up: FakeUpstream) -> None:
    up.script(Turn(status=529))
    async with aant(up) as client:
        with pytest.raises(anthropic.OverloadedError) as info:
            async with client.messages.stream(model="claude-x", max_tokens=9,
                                              messages=MESSAGES) as stream:
                await stream.get_final_message()
    assert info.value.status_code == 529


def test_anthropic_529_is_retried(up: FakeUpstream) -> None:
    up.script(Turn(status=529, retry_after=0.1), Turn(text="recovered"))
    with ant(up, max_retries=1) as client:
        reply = client.messages.create(model="claude-x", max_tokens=9, messages=MESSAGES)
    assert reply.content[0].type == "text" and reply.content[0].text == "recovered"
    assert len(up.requests) == 2


def test_anthropic_mid_stream_error_event(up: FakeUpstream) -> None:
    up.script(Turn(text=LONG_TEXT, error_after=3))
    with ant(up) as client, pytest.raises(anthropic.APIStatusError) as info, \
            client.messages.stream(model="claude-x", max_tokens=9, messages=MESSAGES) as stream:
        stream.get_final_message()
    # raised on a 200 response: the class comes from the status, the error type from the body
    assert not isinstance(info.value, anthropic.OverloadedError)
    assert info.value.status_code == 200
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "overloaded_error"


def test_anthropic_reset_and_malformed_mid_stream(up: FakeUpstream) -> None:
    up.script(Turn(text=LONG_TEXT, reset_after=3), Turn(text=LONG_TEXT, malformed_after=3))
    with ant(up) as client:
        # the anthropic SDK does not wrap transport errors raised while streaming
        with pytest.raises((anthropic.APIConnectionError, httpx2.TransportError)), \
                client.messages.stream(model="claude-x", max_tokens=9, messages=MESSAGES) as s:
            s.get_final_message()
        with pytest.raises(json.JSONDecodeError), \
                client.messages.stream(model="claude-x", max_tokens=9, messages=MESSAGES) as s:
            s.get_final_message()


def test_anthropic_slow_first_token_with_pings(up: FakeUpstream) -> None:
    up.script(Turn(text="slow", first_token_delay=0.5, keepalive_comments=2))
    with ant(up) as client:
        started = time.monotonic()
        with client.messages.stream(model="claude-x", max_tokens=9, messages=MESSAGES) as stream:
            headers_at = time.monotonic() - started
            text = "".join(stream.text_stream)
            total = time.monotonic() - started
    assert headers_at < 0.4 and total >= 0.45 and text == "slow"
