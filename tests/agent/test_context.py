"""The prompt's context: attached items read by the server (confined), tasks with their own
templates and tools, older turns summarised by the model and reused; and the pure fitting of
context blocks into a window."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
from cloudide_testing import MultiUserIdentity, auth
from fake_upstream import FakeUpstream, ToolCall, Turn, agent_config
from test_chat_ws import kinds, open_chat

from jupyter_cloudide.agent.context import ContextBlock
from jupyter_cloudide.agent.prompt import TokenCounter, fit
from jupyter_cloudide.agent.templates import DEFAULT_TEMPLATES, Templates

pytestmark = pytest.mark.timeout(240)

COUNTER = TokenCounter()


def words(prefix: str, tokens: int) -> str:
    """Distinct words making about ``tokens`` tokens."""
    out: list[str] = []
    while COUNTER.count(" ".join(out)) < tokens:
        out.extend(f"{prefix}{i}" for i in range(len(out), len(out) + 20))
    return " ".join(out)


# -- fitting, without a server --------------------------------------------------------------


def _messages(history_turns: int = 0, tokens: int = 300) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "system", "content": "You help."}]
    for n in range(history_turns):
        out.append({"role": "user", "content": words(f"u{n}x", tokens)})
        out.append({"role": "assistant", "content": words(f"a{n}x", tokens)})
    out.append({"role": "user", "content": "What now?"})
    return out


def test_blocks_go_in_by_rank_and_the_first_that_does_not_fit_is_cut() -> None:
    blocks = [ContextBlock("selection", "selection", words("sel", 100)),
              ContextBlock("file", "a.py", words("file", 800)),
              ContextBlock("retrieved", "b.py:1-9", words("ret", 400)),
              ContextBlock("file", "gone.py", error="'gone.py' does not exist")]
    fitted, report = fit(_messages(), window=1000, reserve_output=200, counter=COUNTER,
                         context=blocks, context_share=0.5)
    user = fitted[-1]["content"]
    assert user.startswith("What now?")
    assert "sel0" in user and "file0" in user and "ret0" not in user
    statuses = {i["title"]: i.get("status") for i in report.items if "title" in i}
    assert statuses == {"selection": "included", "a.py": "truncated", "b.py:1-9": "left out",
                        "gone.py": "unavailable"}
    assert report.tokens <= 800 and COUNTER.count_messages(fitted) <= 800
    assert "cut to fit" in user


def test_context_yields_to_history_beyond_its_share_but_takes_what_history_leaves() -> None:
    big = [ContextBlock("file", "big.py", words("big", 3000))]
    _, alone = fit(_messages(), window=4000, reserve_output=0, counter=COUNTER, context=big,
                   context_share=0.25)
    _, crowded = fit(_messages(history_turns=6), window=4000, reserve_output=0,
                     counter=COUNTER, context=big, context_share=0.25)
    tokens = {name: next(i["tokens"] for i in r.items if i.get("title") == "big.py")
              for name, r in (("alone", alone), ("crowded", crowded))}
    assert tokens["alone"] > 2900  # no history: nearly the whole window
    assert 800 < tokens["crowded"] <= 1000  # a quarter of it
    assert crowded.older_turns > 0


def test_a_cut_notebook_keeps_the_active_cell() -> None:
    cells = "\n\n".join(f"# cell {i} id=c{i} type=code\n" + words(f"n{i}x", 60)
                        for i in range(40))
    block = ContextBlock("notebook", "notebook nb.ipynb", cells, path="nb.ipynb", focus=30)
    fitted, _ = fit(_messages(), window=600, reserve_output=0, counter=COUNTER,
                    context=[block], context_share=1.0)
    user = fitted[-1]["content"]
    assert "# cell 30 id=c30" in user and "# cell 0 id=c0" not in user


def test_a_summary_stands_before_the_history() -> None:
    fitted, report = fit(_messages(history_turns=2, tokens=50), window=4000, reserve_output=0,
                         counter=COUNTER, summary="- the user wants churn by month")
    assert fitted[1]["role"] == "system" and "churn by month" in fitted[1]["content"]
    assert [i["kind"] for i in report.items][:3] == ["system", "current turn", "summary"]


def test_templates_fill_fields_and_refuse_unknown_overrides() -> None:
    templates = Templates({"chat": "Costs $5 in $workspace on $date."}, workspace="proj")
    text = templates.render("chat")
    assert text.startswith("Costs $5 in proj on 2") and "$date" not in text
    assert "proj" in Templates(workspace="proj").render("agent")
    with pytest.raises(ValueError, match="unknown prompt template"):
        Templates({"chatt": "x"})
    assert set(DEFAULT_TEMPLATES) >= {"agent", "chat", "explain", "fix", "summarize"}


# -- on a server ------------------------------------------------------------------------------

SMALL_WINDOW = 4000


@pytest.fixture
def server_config() -> dict[str, Any]:
    return {"identity_provider_class": MultiUserIdentity}


@pytest.fixture
def cloudide_config(upstream: FakeUpstream, request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.node.get_closest_marker("small_window"):
        return agent_config(upstream, default_model="small", discover_models=False, models=[
            {"id": "small", "provider": "openai", "model": "gpt-4o-mini",
             "context_window": SMALL_WINDOW, "max_output_tokens": 256}])
    return agent_config(upstream)


def _notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("df.groupby('regionn').revenue.sum()", id="c1")
    cell.outputs = [nbformat.v4.new_output("error", ename="KeyError", evalue="'regionn'",
                                           traceback=["KeyError: 'regionn'"])]
    nb.cells = [nbformat.v4.new_markdown_cell("# Sales", id="m0"), cell,
                nbformat.v4.new_code_cell("print('later cell')", id="c2")]
    nbformat.write(nb, str(path))


async def test_attached_items_are_read_by_the_server_and_confined(
        cloudide: Any, jp_fetch: Any, jp_http_port: int, jp_base_url: str, jp_root_dir: Path,
        upstream: FakeUpstream) -> None:
    _notebook(jp_root_dir / "sales.ipynb")
    (jp_root_dir / ".env").write_text("API_TOKEN=zqxjkvbw\n")
    (jp_root_dir / "lib.py").write_text("".join(f"line{i} = {i}\n" for i in range(1, 21)))
    chat = await open_chat(jp_http_port, jp_base_url)
    try:
        upstream.script(Turn(text="The column is misspelt."))
        response, events, _ = await chat.turn("Why does this fail?", task="fix", context=[
            {"kind": "cell", "path": "sales.ipynb", "cell_id": "c1"},
            {"kind": "selection", "text": "SELECTED_TEXT", "path": "sales.ipynb"},
            {"kind": "selection", "text": f"key = '{upstream.api_key}'\n"
                                          "aws = 'AKIAIOSFODNN7EXAMPLE'"},
            {"kind": "file", "path": "lib.py", "start_line": 3, "end_line": 4},
            {"kind": "file", "path": ".env"},
            {"kind": "file", "path": "../../../etc/passwd"},
            {"kind": "notebook", "path": "missing.ipynb"},
            {"kind": "cell", "path": "sales.ipynb", "cell_id": "nope"}])
        assert response["payload"]["status"] == "ok", response
        body = upstream.requests[-1]["body"]
        user = body["messages"][-1]["content"]
        assert user.startswith("Why does this fail?")
        assert "df.groupby('regionn')" in user and "KeyError" in user
        assert "later cell" not in user  # the cell, not the notebook
        assert "SELECTED_TEXT" in user
        assert "line3 = 3\nline4 = 4" in user and "line5" not in user
        assert "zqxjkvbw" not in json.dumps(body) and "root:" not in json.dumps(body)
        assert upstream.api_key not in user and "AKIAIOSFODNN7EXAMPLE" not in user
        assert "key = '" in user  # the line stays, the secret is replaced
        assert body["messages"][0]["content"].startswith(DEFAULT_TEMPLATES["fix"][:40])
        prompt = next(e for e in events if e.get("kind") == "prompt")
        assert prompt["task"] == "fix"
        statuses = [(i["kind"], i.get("status")) for i in prompt["items"] if "status" in i]
        assert statuses.count(("file", "unavailable")) == 2
        assert ("notebook", "unavailable") in statuses and ("cell", "unavailable") in statuses
        assert ("cell", "included") in statuses and ("selection", "included") in statuses
        errors = " ".join(i.get("error", "") for i in prompt["items"])
        assert "refused" in errors and "does not exist" in errors and "zqxjkvbw" not in errors

        # the next turn carries the earlier message with its attachments named, not re-read
        upstream.script(Turn(text="ok"))
        await chat.turn("And now?", conversation_id=response["payload"]["conversation_id"])
        earlier = upstream.requests[-1]["body"]["messages"][1]["content"]
        assert "[attached: sales.ipynb]" in earlier and "SELECTED_TEXT" in earlier
        assert upstream.api_key not in earlier and "AKIAIOSFODNN7EXAMPLE" not in earlier
        assert "df.groupby" not in earlier
    finally:
        chat.conn.close()


async def test_chat_task_offers_only_reads_and_refuses_a_write(
        cloudide: Any, jp_fetch: Any, jp_http_port: int, jp_base_url: str, jp_root_dir: Path,
        upstream: FakeUpstream) -> None:
    chat = await open_chat(jp_http_port, jp_base_url)
    try:
        upstream.script(Turn(tool_calls=[ToolCall("write_file", {"path": "new.py",
                                                                 "content": "x = 1\n"})]),
                        Turn(text="I can only suggest it."))
        response, events, _ = await chat.turn("Create new.py", task="chat")
        assert response["payload"]["status"] == "ok", response
        first = upstream.requests[-2]["body"]
        offered = {t["function"]["name"] for t in first["tools"]}
        assert offered == {"list_files", "read_file", "read_notebook", "search_codebase"}
        assert first["messages"][0]["content"].startswith(DEFAULT_TEMPLATES["chat"][:40])
        result = next(e for e in events if e.get("kind") == "tool.result")
        assert not result["ok"] and "not available" in result["content"]
        assert "approval.request" not in kinds(events)
        assert not (jp_root_dir / "new.py").exists()

        bad = await chat.send("chat.send", text="hi", task="root")
        while True:
            frame = await chat.frame()
            if frame["type"] == "response" and frame["id"] == bad:
                break
        assert frame["error"]["status"] == 400 and frame["error"]["field"] == "task"
    finally:
        chat.conn.close()


@pytest.mark.small_window
async def test_older_turns_are_summarised_once_and_the_summary_reused(
        cloudide: Any, jp_fetch: Any, jp_http_port: int, jp_base_url: str,
        upstream: FakeUpstream) -> None:
    # budget: 4000 - 256 output - ~1660 tool specs ~ 2080 tokens; a turn here is ~1100.
    # No usage from the upstream: token counts stay uncalibrated (tiktoken's own).
    def turn(text: str) -> Turn:
        return Turn(text=text, report_usage=False)

    chat = await open_chat(jp_http_port, jp_base_url)
    conversation = None
    try:
        for n in (1, 2):
            upstream.script(turn(words(f"r{n}w", 550)))
            response, events, _ = await chat.turn(
                words(f"q{n}w", 550), **({"conversation_id": conversation}
                                         if conversation else {}))
            assert response["payload"]["status"] == "ok", response
            conversation = response["payload"]["conversation_id"]
            assert "history.summarized" not in kinds(events)
        before = len(upstream.requests)

        # turn 3: turn 1 no longer fits -> one summary call, then the answer
        upstream.script(turn("- SUMMARY-ONE: the user asked q1"), turn(words("r3w", 550)))
        response, events, _ = await chat.turn(words("q3w", 550), conversation_id=conversation)
        assert response["payload"]["status"] == "ok", response
        assert kinds(events).count("history.summarized") == 1, \
            [e for e in events if e.get("kind") == "prompt"]
        summary_call, answer_call = upstream.requests[before:before + 2]
        assert summary_call["body"]["messages"][0]["content"] == \
            DEFAULT_TEMPLATES["summarize"]
        assert "tools" not in summary_call["body"] or not summary_call["body"]["tools"]
        transcript = summary_call["body"]["messages"][1]["content"]
        assert "q1w0" in transcript and "r1w0" in transcript and "q2w0" not in transcript
        sent = json.dumps(answer_call["body"]["messages"])
        assert "SUMMARY-ONE" in sent and "q1w0" not in sent and "q2w0" in sent
        usage = [e for e in events if e.get("kind") == "turn.usage"]
        assert len(usage) == 2  # the summary call is metered too

        # turn 4: turn 2 falls out: summarised again, with the previous summary
        upstream.script(turn("- SUMMARY-TWO"), turn("short"))
        response, events, _ = await chat.turn(words("q4w", 550), conversation_id=conversation)
        assert kinds(events).count("history.summarized") == 1
        transcript = upstream.requests[-2]["body"]["messages"][1]["content"]
        assert "SUMMARY-ONE" in transcript and "q2w0" in transcript and "q1w0" not in transcript
        sent = json.dumps(upstream.requests[-1]["body"]["messages"])
        assert "SUMMARY-TWO" in sent and "SUMMARY-ONE" not in sent and "q3w0" in sent

        # turn 5: short: the summary is reused, no new summary call
        before = len(upstream.requests)
        upstream.script(turn("fine"))
        response, events, _ = await chat.turn("thanks", conversation_id=conversation)
        assert "history.summarized" not in kinds(events)
        assert len(upstream.requests) == before + 1
        assert "SUMMARY-TWO" in json.dumps(upstream.requests[-1]["body"]["messages"])
    finally:
        chat.conn.close()

    # the summaries are part of the stored conversation (and survive a restart with it)
    stored = await jp_fetch("cloudide", "api", "conversations", conversation,
                            headers=auth("alice"))
    roles = [m["role"] for m in json.loads(stored.body)["messages"]]
    assert roles.count("summary") == 2
    exported = await jp_fetch("cloudide", "api", "conversations", conversation,
                              params={"format": "markdown"}, headers=auth("alice"))
    assert "summarised for the model" in exported.body.decode()
    assert "> - SUMMARY-TWO" in exported.body.decode()
