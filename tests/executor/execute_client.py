"""Calling the execute API from tests (REST and the WS kind), shared by the local and the
remote-kernel test modules."""

from __future__ import annotations

import json
from typing import Any

from cloudide_testing import auth
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


async def run(jp_fetch: Any, body: dict[str, Any], user: str = "alice") -> Any:
    """POST cloudide/api/execute; the raw response, whatever its status."""
    return await jp_fetch("cloudide", "api", "execute", method="POST", body=json.dumps(body),
                          headers=auth(user), raise_error=False, request_timeout=120)


async def ok(jp_fetch: Any, body: dict[str, Any]) -> dict[str, Any]:
    """POST cloudide/api/execute expecting 200; the result."""
    response = await run(jp_fetch, body)
    assert response.code == 200, response.body
    result: dict[str, Any] = json.loads(response.body)
    return result


def text_of(result: dict[str, Any], name: str = "stdout") -> str:
    """All stream text of one name in a result."""
    return "".join(o["text"] for o in result["outputs"]
                   if o["output_type"] == "stream" and o["name"] == name)


async def ws_streaming_run(port: int, base_url: str, kernel_id: str,
                           refused_kernel_name: str) -> tuple[list[Any], Any, Any]:
    """Over the session channel: an execute that prints 0..2 then returns 'done', then one
    with a kernelspec outside the allowlist. Returns (events, response, refused frame)."""
    url = f"ws://127.0.0.1:{port}{base_url}cloudide/api/ws"
    conn = await websocket_connect(HTTPRequest(url, headers=auth("alice")))
    try:
        assert json.loads(await conn.read_message())["type"] == "welcome"  # type: ignore[arg-type]
        code = "import time\nfor i in range(3):\n    print(i, flush=True); time.sleep(0.1)\n'done'"
        await conn.write_message(json.dumps({"type": "request", "id": "r1", "payload": {
            "kind": "execute", "code": code, "kernel_id": kernel_id}}))
        events, response = [], None
        while response is None:
            frame = json.loads(await conn.read_message())  # type: ignore[arg-type]
            if frame["type"] == "event":
                events.append(frame)
            elif frame["type"] == "response":
                response = frame
        await conn.write_message(json.dumps({"type": "request", "id": "r2", "payload": {
            "kind": "execute", "code": "1", "kernel_name": refused_kernel_name}}))
        refused = json.loads(await conn.read_message())  # type: ignore[arg-type]
        return events, response, refused
    finally:
        conn.close()


def check_streamed_run(events: list[Any], response: Any, refused: Any) -> None:
    """What ws_streaming_run must have produced, on any kernel."""
    assert [e["payload"]["kind"] for e in events] == ["execute.output"] * len(events)
    assert "".join(e["payload"]["output"].get("text", "") for e in events) == "0\n1\n2\n"
    assert all(e["id"] == "r1" for e in events)
    assert response["payload"]["status"] == "ok"
    assert response["payload"]["outputs"][-1]["data"]["text/plain"] == "'done'"
    seqs = [e["seq"] for e in events] + [response["seq"]]
    assert seqs == sorted(seqs)
    assert refused["error"]["status"] == 403
