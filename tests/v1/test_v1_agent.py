"""``model: cloudide-agent``: the agent loop on the server, its tools under the approval policy
(an "ask" is denied unless the API key allows auto-approval; risky code is denied even then),
its text streamed as chunks with one line per tool call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from fake_upstream import FakeUpstream, ToolCall, Turn
from v1_testing import ledger_rows, make_key

pytestmark = pytest.mark.timeout(180)


async def ask_agent(v1_url: str, key: str, messages: list[dict[str, Any]]
                    ) -> tuple[str, Any, list[Any]]:
    async with openai.AsyncOpenAI(base_url=v1_url, api_key=key, max_retries=0,
                                  timeout=60) as api:
        stream = await api.chat.completions.create(
            model="cloudide-agent", messages=messages, stream=True,
            stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks[-1].usage, chunks


async def test_without_auto_approve_a_write_is_denied(cloudide: Any, v1_url: str,
                                                      jp_root_dir: Path,
                                                      upstream: FakeUpstream) -> None:
    (jp_root_dir / "notes.md").write_text("Quarterly churn: 4.2%\n")
    key = await make_key(cloudide, cloudide._owner_name)
    upstream.script(
        Turn(text="Let me look.", tool_calls=[
            ToolCall("read_file", {"path": "notes.md"}),
            ToolCall("write_file", {"path": "summary.md", "content": "churn 4.2%"})]),
        Turn(text="Churn is 4.2%; I could not save the summary.", usage=(200, 12)))
    text, usage, chunks = await ask_agent(v1_url, key, [
        {"role": "system", "content": "Answer in one line."},
        {"role": "user", "content": "What was churn?"},
        {"role": "assistant", "content": "Which quarter?"},
        {"role": "user", "content": "This one. Save a summary too."}])
    assert not (jp_root_dir / "summary.md").exists()
    assert text.startswith("Let me look.\n\n> ")  # then one line per tool, as each ends
    assert '> read_file {"path": "notes.md"} → ok' in text
    assert "> write_file " in text and "→ denied" in text
    assert text.endswith("Churn is 4.2%; I could not save the summary.")
    assert {c.model for c in chunks} == {"cloudide-agent"}
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert usage.prompt_tokens >= 200 and usage.completion_tokens >= 12
    first, second = upstream.requests[-2]["body"], upstream.requests[-1]["body"]
    # the client's earlier messages are the agent's history, after its own system prompt
    roles = [(m["role"], m.get("content")) for m in first["messages"]]
    assert roles[0][0] == "system" and roles[1:] == [
        ("system", "Answer in one line."), ("user", "What was churn?"),
        ("assistant", "Which quarter?"), ("user", "This one. Save a summary too.")]
    results = {m["tool_call_id"]: m["content"] for m in second["messages"]
               if m["role"] == "tool"}
    assert any("Quarterly churn" in r for r in results.values())
    assert any("nobody can approve it over the API" in r for r in results.values())
    rows = await ledger_rows(cloudide, cloudide._owner_name, count=2)
    assert [r.source for r in rows[-2:]] == ["agent", "agent"]
    # the turn is kept as a conversation of the key's owner
    store = await cloudide.metadata_store()
    titles = [c.title for c in await store.call(store.list_conversations,
                                                cloudide._owner_name)]
    assert "API: This one. Save a summary too." in titles


async def test_auto_approve_key_writes_but_never_runs_risky_code(cloudide: Any, v1_url: str,
                                                                 jp_root_dir: Path,
                                                                 upstream: FakeUpstream) -> None:
    key = await make_key(cloudide, cloudide._owner_name, auto_approve=True)
    marker = jp_root_dir / "pwned.txt"
    upstream.script(
        Turn(tool_calls=[ToolCall("write_file", {"path": "summary.md", "content": "ok\n"}),
                         ToolCall("execute_code", {
                             "code": f"import os; os.system('touch {marker}')"})]),
        Turn(text="Saved."))
    text, _, _ = await ask_agent(v1_url, key, [{"role": "user", "content": "save it"}])
    assert (jp_root_dir / "summary.md").read_text() == "ok\n"
    assert not marker.exists()
    assert "> write_file " in text and "→ ok" in text
    assert "> execute_code " in text and "→ denied" in text
    results = [m["content"] for m in upstream.requests[-1]["body"]["messages"]
               if m["role"] == "tool"]
    assert any("needs a person's approval" in r for r in results)


async def test_server_token_is_the_owner_without_auto_approve(cloudide: Any, v1_url: str,
                                                              server_token: str,
                                                              jp_root_dir: Path,
                                                              upstream: FakeUpstream) -> None:
    upstream.script(Turn(tool_calls=[ToolCall("write_file", {"path": "t.md",
                                                             "content": "x"})]),
                    Turn(text="Not allowed."))
    async with openai.AsyncOpenAI(base_url=v1_url, api_key=server_token, max_retries=0,
                                  timeout=60) as api:
        answer = await api.chat.completions.create(
            model="cloudide-agent", messages=[{"role": "user", "content": "write t.md"}])
    assert not (jp_root_dir / "t.md").exists()
    content = answer.choices[0].message.content
    assert "→ denied" in content and content.endswith("Not allowed.")
    assert answer.model == "cloudide-agent" and answer.usage.total_tokens > 0


class TestNoToolLines:
    @pytest.fixture
    def cloudide_config(self, cloudide_config: dict[str, Any]) -> dict[str, Any]:
        return {**cloudide_config, "v1_agent_tool_activity": False}

    async def test_only_the_agents_text(self, cloudide: Any, v1_url: str, server_token: str,
                                        jp_root_dir: Path, upstream: FakeUpstream) -> None:
        (jp_root_dir / "a.txt").write_text("alpha\n")
        upstream.script(Turn(tool_calls=[ToolCall("read_file", {"path": "a.txt"})]),
                        Turn(text="It says alpha."))
        text, _, _ = await ask_agent(v1_url, server_token,
                                     [{"role": "user", "content": "read a.txt"}])
        assert text == "It says alpha."


async def test_agent_errors(cloudide: Any, v1_url: str, server_token: str,
                            upstream: FakeUpstream) -> None:
    async with openai.AsyncOpenAI(base_url=v1_url, api_key=server_token, max_retries=0,
                                  timeout=60) as api:
        with pytest.raises(openai.BadRequestError) as last_not_user:
            await api.chat.completions.create(model="cloudide-agent", messages=[
                {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])
        # every model failing: the agent's error before any output is a real status
        upstream.script(*[Turn(status=400, error_message="bad prompt")] * 2)
        with pytest.raises(openai.APIStatusError) as failed:
            await api.chat.completions.create(model="cloudide-agent", messages=[
                {"role": "user", "content": "x"}])
    assert last_not_user.value.param == "messages"
    assert failed.value.status_code == 502 and "bad prompt" in failed.value.message
