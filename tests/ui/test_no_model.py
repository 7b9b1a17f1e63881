"""The demo without a model key (as on Binder): the chat says how an admin connects a model,
while search, code execution and usage all work."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Lab, run_command, screenshot

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def lab_extra() -> dict[str, Any]:
    return {"providers": [], "models": [], "default_model": "", "completion_model": "",
            "index_enabled": True, "index_scan_interval": 0.0}


def test_chat_explains_how_to_connect_a_model(page: Any) -> None:
    run_command(page, "cloudide:open-chat")
    setup = page.locator('[data-testid="chat-setup"]')
    setup.wait_for(timeout=30_000)
    text = setup.inner_text()
    assert "OPENAI_API_KEY" in text and "c.CloudIDEApp.providers" in text
    screenshot(page, "setup")
    assert not page.errors, page.errors


def test_search_and_code_execution_work_without_a_model(page: Any, lab: Lab) -> None:
    run_command(page, "cloudide:open-search")
    box = page.locator('[data-testid="search-input"]')
    box.wait_for(timeout=30_000)
    for _ in range(600):  # the index is built at start
        if lab.api("cloudide/api/index").get("complete"):
            break
        page.wait_for_timeout(200)
    box.fill("compute churn features")
    box.press("Enter")
    page.locator('[data-testid="search-result"][data-path="churn/features.py"]').first.wait_for(
        timeout=60_000)

    run_command(page, "docmanager:open", {"path": "analysis.ipynb"})
    cell = page.locator(".jp-Notebook .jp-Cell").nth(1)
    cell.wait_for(timeout=30_000)
    cell.locator(".cm-content").click()
    page.keyboard.press("Control+End")
    page.keyboard.type("\nprint(math.sqrt(1764))")
    page.keyboard.press("Shift+Enter")
    page.locator(".jp-OutputArea-output", has_text="42.0").wait_for(timeout=60_000)
    # the kernel's busy time reaches the usage report (metered, written a second apart)
    for _ in range(100):
        report = lab.api("cloudide/api/usage?days=1")
        if report["totals"]["kernel_busy_seconds"] > 0:
            break
        page.wait_for_timeout(200)
    assert report["totals"]["kernel_busy_seconds"] > 0
    assert page.locator('[data-testid="usage-status"]').count() == 1
    assert not page.errors, page.errors
