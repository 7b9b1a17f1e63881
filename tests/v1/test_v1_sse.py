"""The bytes on the wire: golden SSE chunks, keep-alive comments, a client that leaves
mid-stream (the upstream call is cancelled, the tokens so far billed), and 429s from our
limiter with Retry-After."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import openai
import pytest
from fake_upstream import FakeUpstream, ToolCall, Turn, agent_config
from v1_testing import MODELS, ledger_rows

pytestmark = pytest.mark.timeout(120)

CHUNK_KEYS = ["id", "object", "created", "model", "system_fingerprint", "choices"]


async def raw_post(v1_url: str, token: str, body: dict[str, Any]) -> tuple[Any, str]:
    """POST through tornado's client; (response, body text) — no SDK in between."""
    from tornado.httpclient import AsyncHTTPClient

    response = await AsyncHTTPClient().fetch(
        v1_url + "/chat/completions", method="POST", body=json.dumps(body),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                 "Accept-Encoding": "gzip"}, raise_error=False, request_timeout=30,
        decompress_response=False)
    return response, response.body.decode()


def events(text: str) -> list[str]:
    assert text.endswith("\n\n"), text[-80:]
    return text[:-2].split("\n\n")


async def test_golden_stream_with_tools_and_usage(cloudide: Any, v1_url: str,
                                                  server_token: str,
                                                  upstream: FakeUpstream) -> None:
    upstream.script(Turn(text="Hi there", chunk_size=4, usage=(30, 12),
                         tool_calls=[ToolCall("f", {"x": 1}, id="call_A"),
                                     ToolCall("g", {"y": "zz"}, id="call_B")]))
    response, text = await raw_post(v1_url, server_token, {
        "model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "go"}],
        "tools": [{"type": "function", "function": {"name": "f"}},
                  {"type": "function", "function": {"name": "g"}}]})
    assert response.code == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert "Content-Encoding" not in response.headers  # never compressed
    frames = events(text)
    assert all(f.startswith("data: ") and "\n" not in f for f in frames)  # no event: lines
    assert frames[-1] == "data: [DONE]"
    chunks = [json.loads(f[6:]) for f in frames[:-1]]
    first = chunks[0]
    cid, created = first["id"], first["created"]
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{24}", cid)
    # exact bytes of one chunk: field order, compact JSON, usage: null while streaming
    assert frames[1] == (
        'data: {"id":"' + cid + '","object":"chat.completion.chunk","created":'
        + str(created) + ',"model":"gpt-4o-mini","system_fingerprint":null,"choices":[{"index":0,'
        '"delta":{"content":"Hi t"},"logprobs":null,"finish_reason":null}],"usage":null}')
    for chunk in chunks:
        assert list(chunk) == [*CHUNK_KEYS, "usage"]
        assert (chunk["id"], chunk["created"], chunk["model"]) == (cid, created, "gpt-4o-mini")
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1:3] == [{"content": "Hi t"}, {"content": "here"}]
    calls = deltas[3:-1]
    assert calls[0] == {"tool_calls": [{"index": 0, "id": "call_A", "type": "function",
                                        "function": {"name": "f", "arguments": ""}}]}
    # later fragments: only index and argument pieces; the pieces concatenate to the JSON
    by_index: dict[int, str] = {}
    for delta in calls:
        (item,) = delta["tool_calls"]
        assert isinstance(item["index"], int)
        if "id" not in item:
            assert set(item) == {"index", "function"} and set(item["function"]) == {
                "arguments"}
        by_index[item["index"]] = by_index.get(item["index"], "") + item["function"][
            "arguments"]
    assert {i: json.loads(a) for i, a in by_index.items()} == {0: {"x": 1}, 1: {"y": "zz"}}
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == \
        [None] * (len(chunks) - 2) + ["tool_calls"]
    assert chunks[-2]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42,
        "prompt_tokens_details": {"cached_tokens": 0}}


async def test_golden_without_usage_and_non_streaming(cloudide: Any, v1_url: str,
                                                      server_token: str,
                                                      upstream: FakeUpstream) -> None:
    upstream.script(Turn(text="ok!", usage=(5, 1)), Turn(text="plain", usage=(5, 1)))
    _, text = await raw_post(v1_url, server_token, {
        "model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    frames = events(text)
    chunks = [json.loads(f[6:]) for f in frames[:-1]]
    assert all(list(c) == CHUNK_KEYS for c in chunks)  # no usage key at all
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""}, {"content": "ok!"}, {}]
    response, text = await raw_post(v1_url, server_token, {
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    assert response.headers["Content-Type"].startswith("application/json")
    body = json.loads(text)
    assert body["object"] == "chat.completion" and body["choices"] == [{
        "index": 0, "message": {"role": "assistant", "content": "plain", "refusal": None},
        "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"]["total_tokens"] == 6


async def test_error_before_the_stream_is_a_status(cloudide: Any, v1_url: str,
                                                   server_token: str,
                                                   upstream: FakeUpstream) -> None:
    """Every allowed model rate limited upstream: a 429 with the upstream's Retry-After (the
    headers wait for the first event, so the status can still say so)."""
    upstream.script(Turn(status=429, retry_after=7), model="gpt-4o-mini")
    upstream.script(Turn(status=429, retry_after=9), model="gpt-4o")
    response, text = await raw_post(v1_url, server_token, {
        "model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    assert response.code == 429 and response.headers["Retry-After"] == "9"
    error = json.loads(text)["error"]
    assert error["code"] == "rate_limit_exceeded" and set(error) == {"message", "type",
                                                                      "param", "code"}


class TestKeepAlive:
    @pytest.fixture
    def cloudide_config(self, upstream: FakeUpstream) -> dict[str, Any]:
        return agent_config(upstream, v1_keepalive_seconds=0.2, discover_models=False,
                            models=MODELS)

    async def test_comments_while_the_first_token_is_slow(self, cloudide: Any, v1_url: str,
                                                          server_token: str,
                                                          upstream: FakeUpstream) -> None:
        upstream.script(Turn(text="late", first_token_delay=1.0))
        response, text = await raw_post(v1_url, server_token, {
            "model": "gpt-4o-mini", "stream": True,
            "messages": [{"role": "user", "content": "x"}]})
        frames = events(text)
        assert response.code == 200
        assert frames[0] == ": keep-alive" and frames.count(": keep-alive") >= 3
        assert frames[-1] == "data: [DONE]"
        data = [json.loads(f[6:]) for f in frames[:-1] if f.startswith("data: ")]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in data) == "late"


async def test_client_leaving_mid_stream_cancels_upstream_and_bills(
        cloudide: Any, v1_url: str, jp_http_port: int, server_token: str,
        upstream: FakeUpstream) -> None:
    upstream.script(Turn(text="word " * 200, chunk_size=5, delay_between_chunks=0.05))
    path = v1_url.split(str(jp_http_port), 1)[1] + "/chat/completions"
    body = json.dumps({"model": "gpt-4o-mini", "stream": True,
                       "messages": [{"role": "user", "content": "count words " * 20}]})
    reader, writer = await asyncio.open_connection("127.0.0.1", jp_http_port)
    writer.write((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{jp_http_port}\r\n"
                  f"Authorization: Bearer {server_token}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
    await writer.drain()
    received = b""
    while received.count(b'"content":"word') < 3:
        received += await asyncio.wait_for(reader.read(4096), 10)
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


class TestRateLimited:
    @pytest.fixture
    def cloudide_config(self, upstream: FakeUpstream) -> dict[str, Any]:
        return agent_config(upstream, discover_models=False, models=MODELS, rate_limits={
            "v1": {"requests_per_minute": 2, "tokens_per_minute": None}})

    async def test_429_with_retry_after_from_our_limiter(self, cloudide: Any, v1_url: str,
                                                         server_token: str) -> None:
        async with openai.AsyncOpenAI(base_url=v1_url, api_key=server_token,
                                      max_retries=0) as api:
            first = await api.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
            assert first.headers["x-ratelimit-limit-requests"] == "2"
            await api.chat.completions.create(model="gpt-4o-mini", messages=[
                {"role": "user", "content": "x"}])
            with pytest.raises(openai.RateLimitError) as limited:
                await api.chat.completions.create(model="gpt-4o-mini", stream=True, messages=[
                    {"role": "user", "content": "x"}])
        response = limited.value.response
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        assert limited.value.code == "rate_limit_exceeded"
        assert response.headers.get("x-should-retry") is None  # retrying later does help
