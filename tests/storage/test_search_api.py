"""The index and search API on a real server: REST, the WS kind, progress events, saves through
the ContentsManager indexed at once, per-user isolation, refusals."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from cloudide_testing import DenyResources, MultiUserIdentity, auth
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

pytestmark = pytest.mark.timeout(240)

CHURN = '''"""Feature engineering."""


def compute_churn_features(events):
    """Days since last login and sessions per week, per customer."""
    last = events.groupby("customer").login.max()
    return last
'''


@pytest.fixture
def server_config() -> dict[str, Any]:
    return {"identity_provider_class": MultiUserIdentity, "authorizer_class": DenyResources}


@pytest.fixture
def cloudide_config() -> dict[str, Any]:
    return {"index_start_delay": 0.0, "index_scan_interval": 0.0}


@pytest.fixture
def workspace(jp_root_dir: Path) -> Path:
    (jp_root_dir / "features.py").write_text(CHURN)
    (jp_root_dir / "README.md").write_text("# Project\n\nA churn model for the sales team.\n")
    (jp_root_dir / ".env").write_text("API_TOKEN=zqxjkvbw-secret\n")
    DenyResources.denied = frozenset()
    return jp_root_dir


async def post(jp_fetch: Any, path: str, body: Any, user: str = "alice") -> Any:
    return await jp_fetch("cloudide", "api", path, method="POST",
                          body=body if isinstance(body, str) else json.dumps(body),
                          headers=auth(user), raise_error=False, request_timeout=120)


async def built(cloudide: Any, user: str) -> dict[str, Any]:
    service = cloudide.index_service()
    service.request(user, scan=True)
    status: dict[str, Any] = await service.wait_idle(user, timeout=180)
    return status


async def test_search_rest_finds_function_and_never_secrets(
        cloudide: Any, jp_fetch: Any, workspace: Path) -> None:
    status = await built(cloudide, "alice")
    assert status["state"] == "idle" and status["complete"] and status["files"] == 2
    response = await post(jp_fetch, "search", {"query": "where do we compute churn features"})
    assert response.code == 200, response.body
    body = json.loads(response.body)
    top = body["results"][0]
    assert (top["path"], top["symbol"], top["start_line"]) == \
        ("features.py", "compute_churn_features", 4)
    assert body["index"]["chunks"] >= 2
    secret = await post(jp_fetch, "search", {"query": "zqxjkvbw API_TOKEN", "mode": "text"})
    assert json.loads(secret.body)["results"] == []
    only_md = await post(jp_fetch, "search", {"query": "churn", "language": ["markdown"]})
    assert {r["path"] for r in json.loads(only_md.body)["results"]} == {"README.md"}
    globbed = await post(jp_fetch, "search", {"query": "churn", "path_glob": "*.py"})
    assert {r["path"] for r in json.loads(globbed.body)["results"]} == {"features.py"}


async def test_index_status_and_rebuild(cloudide: Any, jp_fetch: Any, workspace: Path) -> None:
    await built(cloudide, "alice")
    status = json.loads((await jp_fetch("cloudide", "api", "index", headers=auth("alice"))).body)
    assert status["files"] == 2 and status["embedder"].startswith("sentence-transformers:")
    response = await post(jp_fetch, "index", {"full": True})
    assert response.code == 202, response.body
    again = await cloudide.index_service().wait_idle("alice", timeout=180)
    assert again["files"] == 2 and again["last_pass"]["chunks_embedded"] == again["chunks"]
    empty_body = await jp_fetch("cloudide", "api", "index", method="POST", body="",
                                headers=auth("alice"), raise_error=False,
                                allow_nonstandard_methods=True)
    assert empty_body.code == 202


async def test_save_through_contents_api_is_searchable(
        cloudide: Any, jp_fetch: Any, workspace: Path) -> None:
    await built(cloudide, "alice")
    model = {"type": "file", "format": "text",
             "content": "def forecast_quarterly_revenue():\n    return 42\n"}
    saved = await jp_fetch("api", "contents", "revenue.py", method="PUT", body=json.dumps(model),
                           headers=auth("alice"))
    assert saved.code in (200, 201)
    for _ in range(200):  # the save event wakes the indexer; no scan runs in this test
        found = await post(jp_fetch, "search", {"query": "forecast_quarterly_revenue",
                                                "mode": "text"})
        paths = [r["path"] for r in json.loads(found.body)["results"]]
        if "revenue.py" in paths:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("a saved file never became searchable")
    deleted = await jp_fetch("api", "contents", "revenue.py", method="DELETE",
                             headers=auth("alice"))
    assert deleted.code == 204
    await cloudide.index_service().wait_idle("alice", timeout=60)
    gone = await post(jp_fetch, "search", {"query": "forecast_quarterly_revenue", "mode": "text"})
    assert "revenue.py" not in [r["path"] for r in json.loads(gone.body)["results"]]


async def test_ws_search_and_progress_events(
        cloudide: Any, jp_fetch: Any, jp_http_port: int, jp_base_url: str,
        workspace: Path) -> None:
    url = f"ws://127.0.0.1:{jp_http_port}{jp_base_url}cloudide/api/ws"
    conn = await websocket_connect(HTTPRequest(url, headers=auth("bob")))
    try:
        assert json.loads(await conn.read_message())["type"] == "welcome"  # type: ignore[arg-type]
        cloudide.index_service().request("bob", scan=True)
        await conn.write_message(json.dumps({"type": "request", "id": 1, "payload": {
            "kind": "search", "query": "churn features", "k": 3}}))
        progress, response = [], None
        while response is None:
            frame = json.loads(await asyncio.wait_for(conn.read_message(), 180))  # type: ignore[arg-type]
            if frame["type"] == "event" and frame["payload"].get("kind") == "index.progress":
                progress.append(frame["payload"]["index"])
            elif frame["type"] == "response":
                response = frame
        await cloudide.index_service().wait_idle("bob", timeout=180)
        assert any(p["state"] == "building" for p in progress), progress
        assert "error" not in response, response
        assert len(response["payload"]["results"]) <= 3
        await conn.write_message(json.dumps({"type": "request", "id": 2, "payload": {
            "kind": "search", "query": "x", "language": ["py'thon"]}}))
        refused = json.loads(await conn.read_message())  # type: ignore[arg-type]
        while refused["type"] != "response":
            refused = json.loads(await conn.read_message())  # type: ignore[arg-type]
        assert refused["error"]["status"] == 400 and "language" in refused["error"]["message"]
    finally:
        conn.close()
    # bob's index is his own folder; alice has none until she asks
    assert cloudide.index_service().status("alice")["state"] == "not_started"


async def test_bad_requests_and_forbidden(cloudide: Any, jp_fetch: Any, workspace: Path) -> None:
    for body in ({"query": ""}, {"query": "x", "k": 0}, {"query": "x", "mode": "sql"},
                 {"query": "x", "language": ["Python'--"]}, {"query": "x", "extra": 1},
                 "{not json"):
        response = await post(jp_fetch, "search", body)
        assert response.code == 400, (body, response.body)
        assert json.loads(response.body)["code"] in ("invalid_input", "invalid_json")
    injected = await post(jp_fetch, "search",
                          {"query": "x' OR '1'='1", "path_glob": "*') OR 1=1 --"})
    assert injected.code == 200
    assert json.loads(injected.body)["results"] == []
    DenyResources.denied = frozenset({"cloudide:search"})
    try:
        assert (await post(jp_fetch, "search", {"query": "churn"})).code == 403
        assert (await jp_fetch("cloudide", "api", "index", headers=auth("alice"),
                               raise_error=False)).code == 403
    finally:
        DenyResources.denied = frozenset()
    unauthenticated = await jp_fetch("cloudide", "api", "search", method="POST",
                                     body='{"query": "x"}', raise_error=False)
    assert unauthenticated.code in (401, 403)
