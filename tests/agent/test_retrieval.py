"""Retrieval into the prompt with the real semantic index (LanceDB and the packaged embedder):
the chunks relevant to a message reach the model, ranked, never a denied file, a file attached whole
not twice, and nothing when the client turns retrieval off."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cloudide_testing import MultiUserIdentity
from fake_upstream import FakeUpstream, Turn, agent_config
from test_chat_ws import open_chat

pytestmark = pytest.mark.timeout(300)

FEATURES = '''"""Feature engineering for the churn model."""


def compute_churn_features(events):
    """Days since last login and sessions per week, per customer."""
    last = events.groupby("customer").login.max()
    return last
'''


@pytest.fixture
def server_config() -> dict[str, Any]:
    return {"identity_provider_class": MultiUserIdentity}


@pytest.fixture
def cloudide_config(upstream: FakeUpstream) -> dict[str, Any]:
    return agent_config(upstream, index_enabled=True, index_start_delay=0.0,
                        index_scan_interval=0.0)


async def test_relevant_chunks_reach_the_prompt(
        cloudide: Any, jp_fetch: Any, jp_http_port: int, jp_base_url: str, jp_root_dir: Path,
        upstream: FakeUpstream) -> None:
    (jp_root_dir / "features.py").write_text(FEATURES)
    (jp_root_dir / "plots.py").write_text("def bar_chart(ax, series):\n    ax.bar(series)\n")
    (jp_root_dir / ".env").write_text("CHURN_API_TOKEN=zqxjkvbw\n")
    service = cloudide.index_service()
    service.request("alice", scan=True)
    status = await service.wait_idle("alice", timeout=180)
    assert status["complete"] and status["files"] == 2, status

    chat = await open_chat(jp_http_port, jp_base_url)
    try:
        upstream.script(Turn(text="It groups by customer."))
        response, events, _ = await chat.turn("How are the churn features computed?")
        assert response["payload"]["status"] == "ok", response
        body = upstream.requests[-1]["body"]
        user = body["messages"][-1]["content"]
        assert '<context kind="retrieved" title="features.py:' in user
        assert "compute_churn_features" in user
        assert user.index("features.py") < user.find("plots.py") or "plots.py" not in user
        assert "zqxjkvbw" not in json.dumps(body)
        prompt = next(e for e in events if e.get("kind") == "prompt")
        retrieved = [i for i in prompt["items"] if i["kind"] == "retrieved"]
        assert retrieved and retrieved[0]["path"] == "features.py"
        assert retrieved[0]["status"] == "included"

        # the file attached whole is not retrieved a second time
        upstream.script(Turn(text="ok"))
        await chat.turn("How are the churn features computed?",
                        context=[{"kind": "file", "path": "features.py"}])
        user = upstream.requests[-1]["body"]["messages"][-1]["content"]
        assert user.count("def compute_churn_features") == 1
        assert '<context kind="file" title="features.py">' in user

        # retrieval off: nothing added
        upstream.script(Turn(text="ok"))
        await chat.turn("How are the churn features computed?", retrieve=False)
        assert "<context" not in upstream.requests[-1]["body"]["messages"][-1]["content"]
    finally:
        chat.conn.close()
