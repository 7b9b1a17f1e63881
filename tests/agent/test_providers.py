"""Our providers over the real SDKs against the fake upstream: events, usage, translation, and
every fault mapped to the error kind the router acts on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fake_upstream import FakeUpstream, ToolCall, Turn

from jupyter_cloudide.agent.providers.anthropic_provider import AnthropicProvider
from jupyter_cloudide.agent.providers.base import (
    ChatRequest,
    Finish,
    ProviderError,
    TextDelta,
    ToolCallStarted,
    ToolSpec,
    Usage,
)
from jupyter_cloudide.agent.providers.base import ToolCall as Call
from jupyter_cloudide.agent.providers.openai_provider import OpenAIProvider

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio]

TOOLS = [ToolSpec("read_file", "Read a file", {"type": "object", "properties": {
    "path": {"type": "string"}}, "required": ["path"]})]
CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "read a.py"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "read_file", "arguments": '{"path": "a.py"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "print(1)"},
    {"role": "user", "content": "and now?"},
]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


def providers(up: FakeUpstream) -> list[Any]:
    return [OpenAIProvider("openai", api_key=up.api_key, base_url=up.openai_base_url,
                           timeout_s=10),
            AnthropicProvider("anthropic", api_key=up.api_key, base_url=up.anthropic_base_url,
                              timeout_s=10)]


async def collect(provider: Any, **kwargs: Any) -> list[Any]:
    request = ChatRequest(model=kwargs.pop("model", "m"), messages=kwargs.pop(
        "messages", CONVERSATION), tools=kwargs.pop("tools", TOOLS), **kwargs)
    try:
        return [event async for event in provider.stream_chat(request)]
    finally:
        await provider.close()


@pytest.mark.parametrize("which", [0, 1], ids=["openai", "anthropic"])
async def test_text_and_parallel_tool_calls_with_usage(upstream: FakeUpstream,
                                                       which: int) -> None:
    upstream.script(Turn(text="Reading both files.", chunk_size=4, usage=(120, 30),
                         cached_tokens=20,
                         tool_calls=[ToolCall("read_file", {"path": "a.py"}),
                                     ToolCall("read_file", {"path": "b.py"})]))
    events = await collect(providers(upstream)[which])
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Reading both files."
    assert len([e for e in events if isinstance(e, TextDelta)]) > 1, "deltas stream"
    started = [e for e in events if isinstance(e, ToolCallStarted)]
    calls = [e for e in events if isinstance(e, Call)]
    assert [json.loads(c.arguments)["path"] for c in calls] == ["a.py", "b.py"]
    assert [s.id for s in started] == [c.id for c in calls] and all(c.id for c in calls)
    usage = next(e for e in events if isinstance(e, Usage))
    assert (usage.input_tokens, usage.output_tokens, usage.cached_tokens) == (120, 30, 20)
    assert not usage.estimated
    assert events[-1] == Finish("tool_calls")


async def test_openai_request_asks_for_usage_and_sends_tools(upstream: FakeUpstream) -> None:
    await collect(providers(upstream)[0])
    body = upstream.requests[-1]["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["tools"][0]["function"]["name"] == "read_file"
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "call_1",
                                   "content": "print(1)"}
    assert upstream.requests[-1]["headers"]["authorization"] == f"Bearer {upstream.api_key}"


async def test_anthropic_translation(upstream: FakeUpstream) -> None:
    await collect(providers(upstream)[1])
    body = upstream.requests[-1]["body"]
    assert body["system"] == "be brief"
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"][0] == {
        "type": "tool_use", "id": "call_1", "name": "read_file", "input": {"path": "a.py"}}
    result, follow_up = body["messages"][2]["content"]
    assert result == {"type": "tool_result", "tool_use_id": "call_1", "content": "print(1)"}
    assert follow_up == {"type": "text", "text": "and now?"}
    assert body["tools"][0]["input_schema"]["required"] == ["path"]
    assert "temperature" not in body and "top_p" not in body


async def test_anthropic_sampling_parameters_reach_the_body(upstream: FakeUpstream) -> None:
    """The SDK takes no sampling arguments any more: they must still reach the wire."""
    upstream.script(Turn(text="ok"))
    events = await collect(providers(upstream)[1], temperature=0.2, top_p=0.9)
    assert events[-1] == Finish("stop")
    body = upstream.requests[-1]["body"]
    assert (body["temperature"], body["top_p"]) == (0.2, 0.9)


@pytest.mark.parametrize("which", [0, 1], ids=["openai", "anthropic"])
@pytest.mark.parametrize(("turn", "kind"), [
    (Turn(status=429, retry_after=7), "rate_limited"),
    (Turn(status=500), "server"),
    (Turn(status=401), "auth"),
    (Turn(status=400), "bad_request"),
    (Turn(text="abcdefghijklmnop", chunk_size=2, malformed_after=2), "malformed"),
    (Turn(text="abcdefghijklmnop", chunk_size=2, reset_after=2), "connection"),
    # OpenAI's error event carries no type; Anthropic's default one says overloaded_error
    (Turn(text="abcdefghijklmnop", chunk_size=2, error_after=2), "server|overloaded"),
    (Turn(text="abcdefghijklmnop", chunk_size=2, truncate_after=3), "connection"),
], ids=["429", "500", "401", "400", "malformed", "reset", "error-event", "truncated"])
async def test_faults_map_to_kinds(upstream: FakeUpstream, which: int, turn: Turn,
                                   kind: str) -> None:
    upstream.script(turn)
    with pytest.raises(ProviderError) as info:
        await collect(providers(upstream)[which])
    assert info.value.kind in kind.split("|"), info.value.message
    if kind == "rate_limited":
        assert info.value.retry_after_s == 7
        assert info.value.retryable
    assert upstream.api_key not in info.value.message
    assert len(upstream.requests) == 1, "the SDK's own retries are off: the router decides"


@pytest.mark.parametrize("which", [0, 1], ids=["openai", "anthropic"])
async def test_slow_first_token_times_out_and_within_budget_works(
        upstream: FakeUpstream, which: int) -> None:
    upstream.script(Turn(text="late", first_token_delay=1.5))
    with pytest.raises(ProviderError) as info:
        await collect(providers(upstream)[which], timeout_s=0.5)
    assert info.value.kind == "timeout"
    upstream.script(Turn(text="in time", first_token_delay=0.3, keepalive_comments=2))
    events = await collect(providers(upstream)[which], timeout_s=5)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "in time"


async def test_usage_estimated_when_upstream_reports_none(upstream: FakeUpstream) -> None:
    upstream.script(Turn(text="x" * 400, report_usage=False))
    events = await collect(providers(upstream)[0])
    usage = next(e for e in events if isinstance(e, Usage))
    assert usage.estimated and usage.output_tokens == 100


async def test_list_models(upstream: FakeUpstream) -> None:
    provider = providers(upstream)[0]
    try:
        assert "gpt-4o-mini" in await provider.list_models()
    finally:
        await provider.close()


async def test_within_never_drops_a_cancellation_that_races_the_result() -> None:
    """asyncio.wait_for on Python < 3.12 returns the result and forgets the cancel when both
    land in the same loop iteration; a cancelled chat turn then ran on."""
    from jupyter_cloudide.agent.providers.base import within

    discarded: list[str] = []
    result: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    waiter = asyncio.ensure_future(within(result, 5.0, discard=discarded.append))
    await asyncio.sleep(0)  # the waiter is waiting
    result.set_result("stream")
    waiter.cancel()  # same iteration as the result
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert discarded == ["stream"]  # the late result is handed over to be closed

    slow: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    with pytest.raises(asyncio.TimeoutError):
        await within(slow, 0.01)
    assert slow.cancelled()
    assert await within(asyncio.sleep(0, result="ok"), 1.0) == "ok"
