"""The prompt engine: token counts and fitting a conversation into a window."""

from __future__ import annotations

from typing import Any

from jupyter_cloudide.agent.prompt import TokenCounter, fit


def conversation(turns: int, words: int = 200) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You help."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i} " + "lorem " * words})
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": f"c{i}", "type": "function",
             "function": {"name": "read_file", "arguments": '{"path": "a.py"}'}}]})
        messages.append({"role": "tool", "tool_call_id": f"c{i}", "content": "x = 1\n" * words})
        messages.append({"role": "assistant", "content": f"answer {i} " + "ipsum " * words})
    messages.append({"role": "user", "content": "the current question"})
    return messages


def test_counts_are_tiktoken_and_calibrate() -> None:
    counter = TokenCounter()
    assert counter.count("hello world") == 2  # cl100k_base, offline
    counter.calibrate("claude", 100, 120)
    assert counter.count("hello world " * 50, "claude") == round(
        counter.count("hello world " * 50) * 1.2)
    counter.calibrate("claude", 100, 1000)  # not the same prompt: ignored
    assert counter.ratios["claude"] == 1.2


def test_everything_fits_when_the_window_is_large() -> None:
    messages = conversation(3)
    out, report = fit(messages, window=100_000, reserve_output=1000, counter=TokenCounter())
    assert out == messages
    assert report.dropped_turns == 0 and report.condensed_turns == 0
    assert report.tokens == TokenCounter().count_messages(messages)


def test_old_turns_condensed_whole_and_current_kept() -> None:
    counter = TokenCounter()
    messages = conversation(10)
    out, report = fit(messages, window=3000, reserve_output=500, counter=counter)
    assert counter.count_messages(out) <= 2500
    assert out[0]["role"] == "system" and out[-1]["content"] == "the current question"
    assert report.condensed_turns + report.dropped_turns > 0
    # every tool result still follows the assistant message that called it
    open_calls: set[str] = set()
    for message in out:
        if message["role"] == "assistant":
            open_calls |= {c["id"] for c in message.get("tool_calls") or ()}
        if message["role"] == "tool":
            assert message["tool_call_id"] in open_calls
    if report.condensed_turns:
        assert "condensed" in out[1]["content"]
    kinds = [item["kind"] for item in report.items]
    assert kinds[:2] == ["system", "current turn"]


def test_oversized_current_turn_tool_results_are_shortened() -> None:
    counter = TokenCounter()
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c", "type": "function",
                     "function": {"name": "read_file", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c", "content": "data " * 20000}]
    out, _ = fit(messages, window=4000, reserve_output=1000, counter=counter)
    assert counter.count_messages(out) <= 3000
    assert "truncated to fit" in out[-1]["content"]
    assert [m["role"] for m in out] == ["system", "user", "assistant", "tool"]
