"""The official ``openai`` SDK against ``cloudide/v1``: streaming, tools (parallel calls), the
``.stream()`` helper, non-streaming, models, embeddings, fallbacks and errors, on a real server
whose only upstream is the fake provider."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import openai
import pytest
from fake_openai import fake_vector
from fake_upstream import FakeUpstream, ToolCall, Turn
from v1_testing import ledger_rows

pytestmark = pytest.mark.timeout(120)

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
        "additionalProperties": False}
#: strict: the SDK's .stream() helper parses only strict tools
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                      "parameters": CITY, "strict": True}},
    {"type": "function", "function": {"name": "get_time", "description": "Local time",
                                      "parameters": CITY, "strict": True}},
]


def client(url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=30)


async def test_streaming_text_with_usage_is_metered(cloudide: Any, v1_url: str,
                                                    server_token: str,
                                                    upstream: FakeUpstream) -> None:
    upstream.script(Turn(text="The churn rate is 4.2% this quarter.", usage=(120, 11)))
    async with client(v1_url, server_token) as api:
        stream = await api.chat.completions.create(
            model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "developer", "content": "Be brief."},
                      {"role": "user", "content": [{"type": "text", "text": "Churn "},
                                                   {"type": "text", "text": "rate?"}]}])
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The churn rate is 4.2% this quarter."
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.id for c in chunks} == {chunks[0].id} and {c.model for c in chunks} == {
        "gpt-4o-mini"}
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (120, 11)
    sent = upstream.requests[-1]["body"]
    # developer → system, text parts → one string, usage always asked upstream
    assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Churn rate?"}]
    assert sent["stream_options"] == {"include_usage": True}
    user = cloudide._owner_name
    rows = await ledger_rows(cloudide, user)
    assert rows[-1].input_tokens == 120 and rows[-1].output_tokens == 11
    assert rows[-1].model == "gpt-4o-mini" and rows[-1].source == "api"
    assert not rows[-1].extra["estimated"] and rows[-1].extra["via"] == "server_token"
    assert rows[-1].cost == pytest.approx((120 * 0.15 + 11 * 0.6) / 1000)


async def test_stream_without_include_usage_has_no_usage_chunk(cloudide: Any, v1_url: str,
                                                               server_token: str,
                                                               upstream: FakeUpstream) -> None:
    upstream.script(Turn(text="hi", usage=(9, 2)))
    async with client(v1_url, server_token) as api:
        stream = await api.chat.completions.create(
            model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "x"}])
        chunks = [chunk async for chunk in stream]
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    # ...but the upstream was asked for usage, and it was metered
    assert upstream.requests[-1]["body"]["stream_options"] == {"include_usage": True}
    rows = await ledger_rows(cloudide, cloudide._owner_name)
    assert (rows[-1].input_tokens, rows[-1].output_tokens) == (9, 2)


async def test_parallel_tool_calls_through_the_stream_helper(cloudide: Any, v1_url: str,
                                                             server_token: str,
                                                             upstream: FakeUpstream) -> None:
    upstream.script(Turn(tool_calls=[ToolCall("get_weather", {"city": "Lisbon"}),
                                     ToolCall("get_time", {"city": "Tokyo, Japan"})],
                         chunk_size=5))
    async with client(v1_url, server_token) as api, api.chat.completions.stream(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "weather and time?"}],
            tools=TOOLS, tool_choice="auto", parallel_tool_calls=True) as stream:
        done_args = [event.arguments async for event in stream
                     if event.type == "tool_calls.function.arguments.done"]
        final = await stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Lisbon"},
                                                                {"city": "Tokyo, Japan"}]
    assert [json.loads(a) for a in done_args] == [{"city": "Lisbon"}, {"city": "Tokyo, Japan"}]
    assert final.choices[0].finish_reason == "tool_calls"
    assert all(c.id.startswith("call_") for c in calls)
    sent = upstream.requests[-1]["body"]
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather", "get_time"]
    assert sent["tool_choice"] == "auto" and sent["parallel_tool_calls"] is True

    # the tool results go back as role "tool" messages, as the client sends them
    upstream.script(Turn(text="Sunny, 09:00."))
    history = [{"role": "user", "content": "weather and time?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": c.id, "type": "function",
                    "function": {"name": c.function.name, "arguments": c.function.arguments}}
                   for c in calls]},
               {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"},
               {"role": "tool", "tool_call_id": calls[1].id,
                "content": [{"type": "text", "text": "09:00"}]}]
    async with client(v1_url, server_token) as api:
        answer = await api.chat.completions.create(model="gpt-4o-mini", messages=history,
                                                   tools=TOOLS, max_completion_tokens=50)
    assert answer.choices[0].message.content == "Sunny, 09:00."
    sent = upstream.requests[-1]["body"]
    assert sent["messages"][-1] == {"role": "tool", "tool_call_id": calls[1].id,
                                    "content": "09:00"}
    assert sent["max_tokens"] == 50 and "parallel_tool_calls" not in sent


async def test_non_streaming_tool_call_and_named_tool_choice(cloudide: Any, v1_url: str,
                                                             server_token: str,
                                                             upstream: FakeUpstream) -> None:
    upstream.script(Turn(text="Checking.", tool_calls=[ToolCall("get_time", {"city": "Oslo"})],
                         usage=(50, 7)))
    async with client(v1_url, server_token) as api:
        answer = await api.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "time in Oslo?"}],
            tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}},
            parallel_tool_calls=False, temperature=0.2, stop=["\n\n"], seed=7,
            extra_body={"unknown_field": {"ignored": True}})
    message = answer.choices[0].message
    assert answer.object == "chat.completion" and answer.model == "gpt-4o-mini"
    assert message.content == "Checking." and answer.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls[0].function.name == "get_time"
    assert json.loads(message.tool_calls[0].function.arguments) == {"city": "Oslo"}
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (50, 7)
    sent = upstream.requests[-1]["body"]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    assert sent["parallel_tool_calls"] is False and sent["temperature"] == 0.2
    assert sent["stop"] == ["\n\n"] and sent["seed"] == 7 and "unknown_field" not in sent


async def test_non_streaming_request_makes_a_non_streamed_upstream_call(
        cloudide: Any, v1_url: str, server_token: str, upstream: FakeUpstream) -> None:
    """One body upstream instead of a chunk per token (far less CPU on every side), metered
    from the upstream's counts; a malformed body still falls back to the next model, and a
    whole answer's latency is not taken for a first-token latency."""
    registry = (await cloudide.agent_service()).registry
    before = registry.health_of("gpt-4o").latency_ms
    upstream.script(Turn(text="whole answer", usage=(21, 4)), model="gpt-4o-mini")
    upstream.script(Turn(text="x", malformed_after=0), model="gpt-4o-mini")
    upstream.script(Turn(text="from the fallback", usage=(9, 3)), model="gpt-4o")
    async with client(v1_url, server_token) as api:
        answer = await api.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        sent = upstream.requests[-1]["body"]
        fallback = await api.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert not sent.get("stream") and "stream_options" not in sent
    assert answer.choices[0].message.content == "whole answer"
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (21, 4)
    assert fallback.model == "gpt-4o"
    assert fallback.choices[0].message.content == "from the fallback"
    assert registry.health_of("gpt-4o-mini").last_error == "malformed"
    assert registry.health_of("gpt-4o").latency_ms == before
    rows = await ledger_rows(cloudide, cloudide._owner_name, count=3)
    ok = [r for r in rows if not r.extra["failed"]]
    assert [(r.model, r.input_tokens, r.output_tokens) for r in ok][-2:] == [
        ("gpt-4o-mini", 21, 4), ("gpt-4o", 9, 3)]
    assert not any(r.extra["estimated"] for r in ok)


async def test_models_list_and_retrieve(cloudide: Any, v1_url: str, server_token: str) -> None:
    async with client(v1_url, server_token) as api:
        listed = await api.models.list()
        one = await api.models.retrieve("gpt-4o")
        with pytest.raises(openai.NotFoundError):
            await api.models.retrieve("no-such-model")
    ids = [m.id for m in listed.data]
    assert ids == ["gpt-4o", "gpt-4o-mini", "cloudide-agent", "cloudide-embedding"]
    assert all(m.object == "model" and m.created > 0 for m in listed.data)
    assert listed.data[0].owned_by == "openai" and one.id == "gpt-4o"


async def test_embeddings_float_and_base64(cloudide: Any, v1_url: str, server_token: str,
                                          upstream: FakeUpstream) -> None:
    texts = ["churn features by customer", "the revenue forecast"]
    async with client(v1_url, server_token) as api:
        as_b64 = await api.embeddings.create(model="cloudide-embedding", input=texts)
        as_float = await api.embeddings.create(model="cloudide-embedding", input=texts[0],
                                               encoding_format="float")
        with pytest.raises(openai.NotFoundError):
            await api.embeddings.create(model="text-embedding-3-small", input="x")
        with pytest.raises(openai.BadRequestError) as bad:
            await api.embeddings.create(model="cloudide-embedding", input="x", dimensions=3)
    assert bad.value.body["param"] == "dimensions"
    assert [d.index for d in as_b64.data] == [0, 1] and as_b64.model == "cloudide-embedding"
    for data, text in zip(as_b64.data, texts, strict=True):
        expected = np.asarray(fake_vector(text, upstream.embedding_dim))
        assert np.allclose(np.asarray(data.embedding), expected, atol=1e-6)
    assert np.allclose(as_float.data[0].embedding, as_b64.data[0].embedding, atol=1e-6)
    assert as_b64.usage.prompt_tokens > 0
    rows = await ledger_rows(cloudide, cloudide._owner_name)
    assert any(r.model == "cloudide-embedding" and r.input_tokens > 0 for r in rows)


async def test_fallback_to_the_next_model_before_any_output(cloudide: Any, v1_url: str,
                                                            server_token: str,
                                                            upstream: FakeUpstream) -> None:
    upstream.script(Turn(status=503, retry_after=30), model="gpt-4o-mini")
    upstream.script(Turn(text="from the fallback"), model="gpt-4o")
    async with client(v1_url, server_token) as api:
        answer = await api.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        # the failed model is in cooldown: its requests go to the fallback first... unless
        # asked by name, which the router honours (it is tried, and the fallback answers)
        upstream.script(Turn(text="again"), model="gpt-4o")
        again = await api.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert answer.model == "gpt-4o" and answer.choices[0].message.content == "from the fallback"
    assert again.choices[0].message.content == "again"
    health = cloudide._agent.registry.health_of("gpt-4o-mini")
    assert health.cooldown_until > 0 and health.last_error == "overloaded"


async def test_errors_have_the_openai_shape(cloudide: Any, v1_url: str, server_token: str,
                                            upstream: FakeUpstream) -> None:
    async with client(v1_url, server_token) as api:
        with pytest.raises(openai.NotFoundError) as missing:
            await api.chat.completions.create(model="gpt-9", messages=[
                {"role": "user", "content": "x"}])
        with pytest.raises(openai.BadRequestError) as two:
            await api.chat.completions.create(model="gpt-4o-mini", n=2, messages=[
                {"role": "user", "content": "x"}])
        with pytest.raises(openai.BadRequestError) as image:
            await api.chat.completions.create(model="gpt-4o-mini", messages=[
                {"role": "user", "content": [{"type": "image_url",
                                              "image_url": {"url": "data:,"}}]}])
        with pytest.raises(openai.BadRequestError) as choice:
            await api.chat.completions.create(model="gpt-4o-mini", tools=TOOLS, messages=[
                {"role": "user", "content": "x"}], tool_choice={
                "type": "function", "function": {"name": "nope"}})
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    assert two.value.param == "n"
    assert image.value.param == "messages[0].content[0]"
    assert choice.value.param == "tool_choice"
    # an error in the middle of the stream: one data event with the error, then the end
    upstream.script(Turn(text="partial answer that breaks", error_after=2))
    async with client(v1_url, server_token) as api:
        stream = await api.chat.completions.create(
            model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "x"}])
        got: list[str] = []
        with pytest.raises(openai.APIError) as mid:
            async for chunk in stream:
                got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) and "model error" in str(mid.value.message)
