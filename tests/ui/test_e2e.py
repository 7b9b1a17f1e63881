"""End to end in real Chromium: JupyterLab with the extension against a real server whose only
model provider is the fake upstream. Chat streaming, an approved edit and its diff, a reload in
the middle of an answer, hostile model output, search, usage. Screenshots of the main views go
to docs/screenshots/."""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest import Lab, open_lab, run_command, screenshot
from fake_upstream import FakeUpstream, ToolCall, Turn

pytestmark = pytest.mark.timeout(300)

CHAT_INPUT = '[data-testid="chat-input"]'
ASSISTANT = '[data-testid="assistant-message"]'


@pytest.fixture(scope="module")
def lab_extra() -> dict[str, Any]:
    # the real index (LanceDB, the packaged embedder) for the search test
    return {"index_enabled": True, "index_scan_interval": 0.0}


def open_chat(page: Any) -> None:
    run_command(page, "cloudide:open-chat")
    page.wait_for_selector(CHAT_INPUT, timeout=30_000)


def send(page: Any, text: str) -> None:
    page.fill(CHAT_INPUT, text)
    page.click('[data-testid="chat-send"]')


def last_answer(page: Any) -> str:
    return str(page.locator(ASSISTANT).last.inner_text())


def wait_answer(page: Any, text: str, timeout: float = 30_000) -> None:
    """Until the newest assistant message contains ``text``."""
    page.wait_for_function("""(text) => {
        const m = [...document.querySelectorAll('[data-testid="assistant-message"]')].pop();
        return !!m && m.innerText.includes(text);
    }""", arg=text, timeout=timeout)


def test_answer_streams_in_as_rendered_markdown(page: Any, upstream: FakeUpstream) -> None:
    words = " ".join(f"word{i}" for i in range(120))
    upstream.script(Turn(text=f"**Churn** is computed per customer. {words} END.",
                         chunk_size=6, delay_between_chunks=0.03))
    open_chat(page)
    send(page, "How is churn computed?")
    # part of the answer is on screen while the rest is still coming
    page.wait_for_function(f"""() => {{
        const m = [...document.querySelectorAll('{ASSISTANT}')].pop();
        return m && m.innerText.includes('word10') && !m.innerText.includes('END.');
    }}""", timeout=30_000)
    wait_answer(page, "END.")
    answer = page.locator(ASSISTANT).last
    assert answer.locator("strong").first.inner_text() == "Churn"
    page.wait_for_selector('[data-testid="usage-line"]', timeout=10_000)
    assert re.search(r"\$\d", page.locator('[data-testid="usage-line"]').last.inner_text())
    screenshot(page, "chat")
    assert not page.errors, page.errors


def test_approved_edit_shows_its_diff(page: Any, lab: Lab, upstream: FakeUpstream) -> None:
    upstream.script(
        Turn(tool_calls=[ToolCall("edit_file", {
            "path": "churn/features.py", "old_string": 'groupby("customer")',
            "new_string": 'groupby("customer_id")'})]),
        Turn(text="Renamed the grouping key."))
    open_chat(page)
    send(page, "Group by customer_id instead.")
    card = page.locator('[data-testid="tool-card"]').last
    card.locator('[data-testid="approval"]').wait_for(timeout=30_000)
    assert "customer_id" in card.locator('[data-testid="tool-arguments"]').inner_text()
    assert 'groupby("customer")' in (lab.root / "churn" / "features.py").read_text()
    screenshot(page, "approval")
    card.locator('[data-testid="approval-approve"]').click()
    diff = card.locator('[data-testid="diff-view"]')
    diff.wait_for(timeout=30_000)
    text = diff.inner_text()
    assert '-    last = events.groupby("customer")' in text
    assert '+    last = events.groupby("customer_id")' in text
    wait_answer(page, "Renamed the grouping key.")
    assert 'groupby("customer_id")' in (lab.root / "churn" / "features.py").read_text()
    screenshot(page, "diff")

    # undo puts the file back
    page.locator('[data-testid="undo-turn"]').last.click()
    page.wait_for_function("() => true")
    for _ in range(100):
        if 'groupby("customer")' in (lab.root / "churn" / "features.py").read_text():
            break
        page.wait_for_timeout(100)
    assert 'groupby("customer")' in (lab.root / "churn" / "features.py").read_text()
    assert not page.errors, page.errors


def test_reload_mid_answer_shows_it_continuing(page: Any, lab: Lab,
                                               upstream: FakeUpstream) -> None:
    words = " ".join(f"w{i}" for i in range(150))
    upstream.script(Turn(text=f"START {words} FINISH", chunk_size=5,
                         delay_between_chunks=0.05))
    open_chat(page)
    send(page, "Tell me a long story.")
    wait_answer(page, "w20")
    page.reload(wait_until="domcontentloaded")
    open_lab(page, lab)
    open_chat(page)
    wait_answer(page, "FINISH", timeout=60_000)
    answer = last_answer(page)
    assert answer.count("START") == 1 and answer.count("FINISH") == 1
    assert " ".join(answer.split()).startswith(f"START {words} FINISH"[:200])
    assert not page.errors, page.errors


HOSTILE = (
    'Look: <img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script>\n\n'
    '[click me](javascript:window.__pwned=3) '
    '<a href="#" data-commandlinker-command="filebrowser:delete">delete</a> '
    '![remote](http://203.0.113.9/track.png) <iframe src="http://203.0.113.9/"></iframe>\n'
)


def test_hostile_model_output_and_arguments_are_inert(page: Any, lab: Lab,
                                                      upstream: FakeUpstream) -> None:
    remote: list[str] = []
    page.on("request", lambda request: remote.append(request.url)
            if "203.0.113.9" in request.url else None)
    name = '<img src=x onerror="window.__pwned=4">.py'
    upstream.script(
        Turn(tool_calls=[ToolCall("write_file", {"path": name, "content": HOSTILE})]),
        Turn(text=HOSTILE))
    open_chat(page)
    send(page, "Show me something nasty.")
    card = page.locator('[data-testid="tool-card"]').last
    card.locator('[data-testid="approval"]').wait_for(timeout=30_000)
    assert "<script>" in card.locator('[data-testid="tool-arguments"]').inner_text()
    card.locator('[data-testid="approval-approve"]').click()
    card.locator('[data-testid="diff-view"]').wait_for(timeout=30_000)
    wait_answer(page, "click me")
    panel = page.locator('[data-testid="chat-panel"]')
    assert panel.locator("script, iframe, [onerror]").count() == 0
    assert panel.locator("[data-commandlinker-command]").count() == 0
    assert panel.locator('img[src^="http"]').count() == 0
    link = page.locator(ASSISTANT).last.locator("a", has_text="click me")
    if link.count():
        assert not (link.get_attribute("href") or "").lower().startswith("javascript")
        link.click()
    page.locator(ASSISTANT).last.get_by_text("delete").first.click()
    page.wait_for_timeout(500)
    assert page.evaluate("() => window.__pwned") is None
    assert not remote, remote
    assert (lab.root / "churn").exists() and (lab.root / name).exists()  # nothing deleted
    assert not page.errors, page.errors


def lab_index_complete(page: Any) -> None:
    page.evaluate("""async () => {
        for (let i = 0; i < 600; i++) {
            const base = window.jupyterapp.serviceManager.serverSettings.baseUrl;
            const r = await fetch(base + 'cloudide/api/index', {credentials: 'same-origin'});
            if (r.ok && (await r.json()).complete) { return; }
            await new Promise(res => setTimeout(res, 200));
        }
    }""")


def test_search_opens_the_file_at_the_line(page: Any, lab: Lab) -> None:
    run_command(page, "cloudide:open-search")
    box = page.locator('[data-testid="search-input"]')
    box.wait_for(timeout=30_000)
    # the index is built at start (the status row says so once it is complete)
    lab_index_complete(page)
    box.fill("where are churn features computed per customer")
    box.press("Enter")
    hit = page.locator('[data-testid="search-result"][data-path="churn/features.py"]').first
    hit.wait_for(timeout=60_000)
    line = int(hit.get_attribute("data-line") or "0")
    assert line >= 1
    screenshot(page, "search")
    hit.click()
    page.wait_for_selector(".jp-FileEditor", timeout=30_000)
    page.wait_for_function("""(line) => {
        const widget = window.jupyterapp.shell.currentWidget;
        const editor = widget && widget.content && widget.content.editor;
        return !!editor && widget.context.path === 'churn/features.py' &&
            editor.getCursorPosition().line + 1 === line;    }""", arg=line, timeout=30_000)
    assert not page.errors, page.errors


def test_usage_panel_plots_spend_and_kernel_time(page: Any) -> None:
    status = page.locator('[data-testid="usage-status"]')
    status.wait_for(timeout=60_000)
    assert "$" in status.inner_text()
    status.click()
    panel = page.locator('[data-testid="usage-panel"]')
    panel.wait_for(timeout=30_000)
    plot = panel.locator('[data-testid="usage-plot-cost"]')
    plot.wait_for(timeout=30_000)
    assert plot.locator("rect").count() >= 1
    assert panel.locator('[data-testid="usage-plot-kernel"]').count() == 1
    screenshot(page, "usage")
    assert not page.errors, page.errors


def test_inline_completion_is_shown_and_accepted(page: Any, lab: Lab,
                                                 upstream: FakeUpstream) -> None:
    upstream.script(Turn(text="ath.pi * r ** 2", chunk_size=4))
    run_command(page, "docmanager:open", {"path": "analysis.ipynb"})
    cell = page.locator(".jp-Notebook .jp-Cell").nth(2)
    cell.wait_for(timeout=30_000)
    editor = cell.locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+End")
    page.keyboard.type("m", delay=50)
    ghost = page.locator(".jp-GhostText")
    ghost.wait_for(timeout=30_000)
    request = next(r for r in reversed(upstream.requests) if r["path"] == "/v1/completions")
    assert request["body"]["prompt"].endswith("def area(r):\n    return m")
    assert "import math" in request["body"]["prompt"]  # the cells above are the prefix
    screenshot(page, "completion")
    page.keyboard.press("Tab")
    page.wait_for_function("""(expected) => {
        const panel = window.jupyterapp.shell.currentWidget;
        const cell = panel.content.widgets[2];
        return cell.model.sharedModel.getSource() === expected;
    }""", arg="def area(r):\n    return math.pi * r ** 2", timeout=10_000)
    assert not page.errors, page.errors
