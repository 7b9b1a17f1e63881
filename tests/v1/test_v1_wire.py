"""The pure parts, without a server: the OpenAI wire module (parsing, chunk encoding, the
error mapping, budget exhaustion included), the Anthropic tool_choice translation, and the
approval verdict when nobody can be asked."""

from __future__ import annotations

import json

import pytest

from jupyter_cloudide.agent.api import Routed, agent_input, tool_line
from jupyter_cloudide.agent.approvals import ApprovalPolicy
from jupyter_cloudide.agent.providers.anthropic_provider import tool_choice
from jupyter_cloudide.agent.providers.base import (
    Finish,
    ProviderError,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStarted,
    Usage,
)
from jupyter_cloudide.agent.wire import openai as wire
from jupyter_cloudide.errors import (
    BudgetExceededError,
    ConflictError,
    InvalidInputError,
    RateLimitedError,
)


def parse(**body: object) -> tuple[object, bool, bool]:
    return wire.parse_chat_request({"model": "m", "messages": [
        {"role": "user", "content": "x"}], **body})


def test_budget_exhausted_is_a_429_that_says_do_not_retry() -> None:
    error = wire.error_for(BudgetExceededError("monthly budget of $50 used up"))
    assert error.status == 429 and error.headers["x-should-retry"] == "false"
    assert error.body["error"]["type"] == "insufficient_quota"
    limited = wire.error_for(RateLimitedError("slow down", retry_after_s=3,
                                              headers={"Retry-After": "3"}))
    assert limited.status == 429 and "x-should-retry" not in limited.headers
    assert limited.headers["Retry-After"] == "3"


def test_provider_errors_and_conflicts_map_to_statuses_sdks_understand() -> None:
    cases = {("rate_limited", 2.5): (429, "3"), ("overloaded", None): (503, None),
             ("timeout", None): (504, None), ("bad_request", None): (400, None),
             ("auth", None): (502, None), ("connection", None): (502, None)}
    for (kind, after), (status, header) in cases.items():
        error = wire.error_for(ProviderError(kind, "boom", retry_after_s=after))
        assert error.status == status, kind
        assert error.headers.get("Retry-After") == header, kind
    assert "credentials" in wire.error_for(ProviderError("auth", "sk-secret")).body[
        "error"]["message"]
    assert wire.error_for(ConflictError("changed")).status == 400  # never 409
    assert wire.error_for(RuntimeError("secret detail")).body["error"]["message"] == \
        "internal server error"
    sse = wire.error_for(ProviderError("server", "down")).sse()
    assert sse.startswith('data: {"error":{') and sse.endswith("}\n\n")


def test_parsing_normalises_messages_and_options() -> None:
    request, stream, usage = wire.parse_chat_request({
        "model": "m", "stream": True, "stream_options": {"include_usage": True},
        "max_tokens": 10, "max_completion_tokens": 20, "stop": "END", "n": 1,
        "messages": [{"role": "developer", "content": "sys"},
                     {"role": "user", "content": [{"type": "input_text", "text": "a"},
                                                  {"type": "text", "text": "b"}]},
                     {"role": "assistant", "content": None, "tool_calls": [
                         {"id": "c1", "type": "function",
                          "function": {"name": "f", "arguments": None}}]},
                     {"role": "tool", "tool_call_id": "c1", "content": "r"}]})
    assert stream and usage
    assert request.max_tokens == 20 and request.stop == ("END",)  # type: ignore[attr-defined]
    assert request.messages == [  # type: ignore[attr-defined]
        {"role": "system", "content": "sys"}, {"role": "user", "content": "ab"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "r"}]
    _, stream, usage = parse(stream_options={"include_usage": True})
    assert not stream and not usage  # usage chunks exist only in streams
    with pytest.raises(InvalidInputError) as tool_message:
        parse(messages=[{"role": "tool", "content": "r"}])
    assert tool_message.value.field == "messages[0].tool_call_id"
    tool = {"type": "function", "function": {"name": "f"}}
    with pytest.raises(InvalidInputError) as twice:
        parse(tools=[tool, tool])
    assert twice.value.field == "tools[1].function.name"
    with pytest.raises(InvalidInputError):
        parse(tool_choice="required")
    request, _, _ = parse(tool_choice="auto", parallel_tool_calls=False)
    assert request.tool_choice is None and request.parallel_tool_calls is None  # type: ignore


def test_a_tool_call_that_arrives_whole_is_still_sent_in_fragments() -> None:
    encoder = wire.ChunkEncoder("chatcmpl-x", 1, include_usage=False)
    frames = "".join(encoder.encode(e) for e in [
        Routed("m"), ToolCall("call_1", "f", '{"a": 1}'),
        ToolCallStarted("call_2", "g"), ToolCallDelta("call_2", '{"b"'),
        ToolCall("call_2", "g", '{"b": 2}'), Usage(1, 2), Finish("tool_calls")])
    chunks = [json.loads(f[6:]) for f in frames.strip().split("\n\n")[:-1]]
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[1:-1]]
    assert calls == [
        {"index": 0, "id": "call_1", "type": "function",
         "function": {"name": "f", "arguments": ""}},
        {"index": 0, "function": {"arguments": '{"a": 1}'}},
        {"index": 1, "id": "call_2", "type": "function",
         "function": {"name": "g", "arguments": ""}},
        {"index": 1, "function": {"arguments": '{"b"'}},
        {"index": 1, "function": {"arguments": ": 2}"}}]
    builder = wire.CompletionBuilder("chatcmpl-x", 1)
    for event in [Routed("m"), TextDelta("hi"), ToolCall("", "f", "{}"), Usage(3, 4),
                  Finish("stop")]:
        builder.add(event)
    body = builder.body()
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["choices"][0]["message"]["tool_calls"][0]["id"].startswith("call_")
    assert body["usage"]["total_tokens"] == 7


def test_anthropic_tool_choice_translation() -> None:
    assert tool_choice(None, None) is None
    assert tool_choice("auto", None) == {"type": "auto"}
    assert tool_choice("required", False) == {"type": "any", "disable_parallel_tool_use": True}
    assert tool_choice("none", False) == {"type": "none"}
    assert tool_choice({"type": "function", "function": {"name": "f"}}, None) == {
        "type": "tool", "name": "f"}


def test_unattended_verdicts() -> None:
    policy = ApprovalPolicy()
    write = policy.decide("write_file", "write")
    assert write.mode == "ask" and not write.firm
    assert write.unattended(auto_approve=False).mode == "deny"
    assert write.unattended(auto_approve=True).mode == "allow"
    risky = policy.decide("execute_code", "execute", risky_reasons=["os.system"])
    assert risky.firm and risky.unattended(auto_approve=True).mode == "deny"
    capped = ApprovalPolicy(per_tool={"write_file": "allow"}, cap="ask").decide(
        "write_file", "write")
    assert capped.firm and capped.unattended(auto_approve=True).mode == "deny"
    read = policy.decide("read_file", "read")
    assert read.unattended(auto_approve=False).mode == "allow"


def test_agent_input_and_tool_lines() -> None:
    text, prior = agent_input([{"role": "system", "content": "s"},
                               {"role": "assistant", "content": None, "tool_calls": []},
                               {"role": "tool", "tool_call_id": "x", "content": "r"},
                               {"role": "user", "content": "go"}])
    assert text == "go" and prior == [{"role": "system", "content": "s"}]
    with pytest.raises(InvalidInputError):
        agent_input([{"role": "user", "content": "   "}])
    line = tool_line({"name": "write_file", "arguments": {"path": "a", "content": "x" * 500},
                      "ok": False, "denied": True})
    assert line.startswith('> write_file {"path": "a", "content": "xxx') and \
        line.endswith("… → denied\n\n") and len(line) < 200
