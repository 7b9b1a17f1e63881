"""Sidecar mode: the reference adapter served as a local OpenAI-compatible API, used by the real
``openai`` SDK (streaming, usage, tools with the ``.stream()`` helper, non-streaming,
``models.list()``, its error classes), checked on the raw SSE bytes, and run as the command a
user types."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from fake_upstream import ToolCall, Turn
from ws_model_service import CLIENT_SECRET, WsModelService

from jupyter_cloudide.adapters.registry import AdapterProvider, build_adapter, find_adapter
from jupyter_cloudide.adapters.sidecar import Sidecar, serve

pytestmark = [pytest.mark.timeout(60)]

KEY = "sidecar-local-key"
TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "read_file", "description": "Read a file", "strict": True,
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                   "required": ["path"], "additionalProperties": False}}}]
HELLO: list[Any] = [{"role": "user", "content": "hello"}]


@pytest_asyncio.fixture
async def base_url(service: WsModelService) -> AsyncIterator[str]:
    adapter = build_adapter(find_adapter("ws-oauth2", where="test"), service.options(),
                            name="corp")
    sidecar = Sidecar(AdapterProvider.of(adapter), api_key=KEY, timeout_s=10,
                      keepalive_s=0.2)
    server, port = await serve(sidecar)
    yield f"http://127.0.0.1:{port}/v1"
    server.stop()
    await server.close_all_connections()
    await sidecar.provider.close()


def client(base_url: str, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0)


@pytest.mark.asyncio
async def test_streaming_with_usage(base_url: str, service: WsModelService) -> None:
    service.script(Turn(text="Hello from the corporate model.", chunk_size=5, usage=(11, 7),
                        cached_tokens=3))
    async with client(base_url) as sdk:
        stream = await sdk.chat.completions.create(
            model="corp-large", messages=HELLO, stream=True, max_completion_tokens=50,
            stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert {c.model for c in chunks} == {"corp-large"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "Hello from the corporate model."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (11, 7)
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 3
    assert all(c.usage is None for c in chunks[:-1])
    assert service.requests[-1]["body"]["max_tokens"] == 50


@pytest.mark.asyncio
async def test_tools_with_the_stream_helper_then_the_tool_result(
        base_url: str, service: WsModelService) -> None:
    service.script(Turn(text="Let me look.", chunk_size=4, tool_calls=[
        ToolCall("read_file", {"path": "a.py"}, id="call_a"),
        ToolCall("read_file", {"path": "b.py"}, id="call_b")]))
    async with client(base_url) as sdk:
        async with sdk.chat.completions.stream(model="corp-large", messages=HELLO,
                                               tools=TOOLS, tool_choice="auto") as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_completion()
        choice = final.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me look."
        calls = choice.message.tool_calls or []
        assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
            ("call_a", "read_file", {"path": "a.py"}), ("call_b", "read_file", {"path": "b.py"})]
        sent = service.requests[-1]["body"]
        assert sent["tools"][0]["name"] == "read_file" and sent["tool_choice"] == "auto"

        service.script(Turn(text="a.py prints 1."))
        answer = await sdk.chat.completions.create(model="corp-large", tools=TOOLS, messages=[
            *HELLO, {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_a", "type": "function",
                 "function": {"name": "read_file", "arguments": '{"path": "a.py"}'}}]},
            {"role": "tool", "tool_call_id": "call_a", "content": "print(1)"}])
    assert answer.choices[0].message.content == "a.py prints 1."
    assert service.requests[-1]["body"]["messages"][-1] == {
        "role": "tool", "content": "print(1)", "tool_call_id": "call_a"}


@pytest.mark.asyncio
async def test_non_streaming_and_models(base_url: str, service: WsModelService) -> None:
    service.script(Turn(text="whole answer", usage=(9, 2)),
                   Turn(tool_calls=[ToolCall("read_file", {"path": "x"}, id="call_x")]))
    async with client(base_url) as sdk:
        answer = await sdk.chat.completions.create(model="corp-small", messages=HELLO)
        called = await sdk.chat.completions.create(model="corp-small", messages=HELLO,
                                                   tools=TOOLS)
        models = await sdk.models.list()
        one = await sdk.models.retrieve("corp-large")
        with pytest.raises(openai.NotFoundError):
            await sdk.models.retrieve("nope")
    assert answer.object == "chat.completion" and answer.model == "corp-small"
    assert answer.choices[0].message.content == "whole answer"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (9, 2)
    assert called.choices[0].finish_reason == "tool_calls"
    assert called.choices[0].message.tool_calls[0].id == "call_x"
    assert [m.id for m in models.data] == ["corp-large", "corp-small"]
    assert one.id == "corp-large" and one.owned_by == "corp"


@pytest.mark.asyncio
async def test_the_local_key_is_required(base_url: str) -> None:
    async with client(base_url, key="wrong") as sdk:
        with pytest.raises(openai.AuthenticationError) as info:
            await sdk.models.list()
    assert info.value.status_code == 401
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{base_url}/models")
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.asyncio
async def test_errors_before_and_during_the_stream(base_url: str,
                                                   service: WsModelService) -> None:
    service.script(Turn(status=429, retry_after=7),
                   Turn(text="abcdefghijkl", chunk_size=2, error_after=3,
                        error_message="the model crashed"))
    async with client(base_url) as sdk:
        with pytest.raises(openai.RateLimitError) as limited:
            await sdk.chat.completions.create(model="corp-large", messages=HELLO, stream=True)
        assert limited.value.response.headers["retry-after"] == "7"
        stream = await sdk.chat.completions.create(model="corp-large", messages=HELLO,
                                                   stream=True)
        seen = []
        with pytest.raises(openai.APIError, match="the model crashed"):
            async for chunk in stream:
                seen.append(chunk)
        assert seen, "the error came after output"
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}) as http:
        bad = await http.post(f"{base_url}/chat/completions", json={"model": "corp-large"})
        unknown = await http.get(f"{base_url}/nothing/here")
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert unknown.status_code == 404 and "error" in unknown.json()


@pytest.mark.asyncio
async def test_raw_sse_keepalive_and_disconnect(base_url: str,
                                                service: WsModelService) -> None:
    service.script(Turn(text="slow start", first_token_delay=0.5))
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(headers=headers, timeout=10) as http:
        async with http.stream("POST", f"{base_url}/chat/completions", json={
                "model": "corp-large", "messages": HELLO, "stream": True,
                "unknown_field": "ignored"}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            raw = "".join([part async for part in response.aiter_text()])
        assert raw.startswith(": keep-alive\n\n"), "a comment while the first token is late"
        events = [e for e in raw.split("\n\n") if e]
        assert all(e.startswith(("data: ", ": keep-alive")) for e in events)
        assert "event:" not in raw and events[-1] == "data: [DONE]"
        chunks = [json.loads(e[6:]) for e in events if e.startswith("data: {")]
        assert all("usage" not in c for c in chunks), "no usage chunk unless asked"

        # a client that leaves mid-answer cancels the call at the model service
        service.script(Turn(text="a long answer " * 50, chunk_size=2,
                            delay_between_chunks=0.02))
        async with http.stream("POST", f"{base_url}/chat/completions", json={
                "model": "corp-large", "messages": HELLO, "stream": True}) as response:
            async for line in response.aiter_lines():
                if "content" in line:
                    break
    rid = service.requests[-1]["id"]
    await service.until(lambda: rid in service.cancelled)


def test_serve_adapter_command(tmp_path: Path, service: WsModelService) -> None:
    config = tmp_path / "corp.json"
    options = {k: v for k, v in service.options().items() if k != "client_secret"}
    config.write_text(json.dumps(options))
    env = {**os.environ, "CORP_CLIENT_SECRET": CLIENT_SECRET, "SIDECAR_KEY": KEY}
    command = [sys.executable, "-m", "jupyter_cloudide.adapters.sidecar", "ws-oauth2",
               "--port", "0", "--config", str(config), "--option",
               "client_secret_env=CORP_CLIENT_SECRET", "--option", "connect_attempts=2",
               "--api-key-env", "SIDECAR_KEY"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("serve-adapter: ws-oauth2 at http://127.0.0.1:"), line
        url = line.split(" at ")[1].strip()
        service.script(Turn(text="from the sidecar process"))
        sdk = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
        stream = sdk.chat.completions.create(model="corp-large", messages=HELLO, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == \
            "from the sidecar process"
        assert [m.id for m in sdk.models.list().data] == ["corp-large", "corp-small"]
        sdk.close()
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert CLIENT_SECRET not in err


@pytest.mark.parametrize(("args", "message"), [
    (["nope"], "unknown adapter 'nope'; installed: "),
    (["ws-oauth2", "--option", "url=ws://x"], "option(s) 'token_url', 'client_id', "
                                              "'client_secret' required"),
    (["ws-oauth2", "--option", "url=http://x", "--option", "token_url=http://t",
      "--option", "client_id=a", "--option", "client_secret=b"], "a ws:// or wss:// URL"),
    (["ws-oauth2", "--api-key-env", "NOT_SET_ANYWHERE"], "$NOT_SET_ANYWHERE is not set"),
    (["ws-oauth2", "--host", "0.0.0.0", "--option", "url=ws://x"],
     "--host 0.0.0.0 is reachable from other machines: set --api-key-env"),
    (["ws-oauth2", "--host", "10.1.2.3"], "--host 10.1.2.3 is reachable from other machines"),
], ids=["unknown", "missing", "bad-url", "key-env", "open-host", "open-host-2"])
def test_serve_adapter_refuses_a_bad_configuration(args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "jupyter_cloudide.adapters.sidecar", *args],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr
