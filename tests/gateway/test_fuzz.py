"""schemathesis against api.yaml on a real server: positive and negative data, no 5xx.

Also checks the server's side of the contract: every answer is JSON with our error shape,
and valid requests get the documented status codes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import yaml
from cloudide_testing import MultiUserIdentity, auth
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from jupyter_cloudide.gateway import spec

schemathesis = pytest.importorskip("schemathesis")
EXAMPLES = 60


@pytest.fixture
def server_config() -> dict[str, Any]:
    return {"identity_provider_class": MultiUserIdentity}


@pytest.fixture
def cloudide_config() -> dict[str, Any]:
    # Random code must not start kernels: with no kernelspec allowed, every execute request
    # is validated and refused (403) before any process could start.
    return {"allowed_kernelspecs": []}


def _fuzz(base_url: str, mode_name: str) -> dict[str, int]:
    """Run every REST operation's strategy; returns status-code counts. Runs in a thread."""
    import requests
    from schemathesis import GenerationMode

    mode = GenerationMode.POSITIVE if mode_name == "positive" else GenerationMode.NEGATIVE
    document = yaml.safe_load(json.dumps(spec.load_spec()))
    schema = schemathesis.openapi.from_dict(document)
    session = requests.Session()
    counts: dict[str, int] = {}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.definition.raw.get("x-websocket"):
            continue

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            response = case.call(base_url=base_url, session=session, headers=auth("alice"),
                                 timeout=30)
            key = f"{case.method.upper()} {case.path} {response.status_code}"
            counts[key] = counts.get(key, 0) + 1
            if response.status_code >= 500:
                failures.append(f"{key}: {case.body!r} {case.query!r} {response.text[:200]}")
            content_type = response.headers.get("Content-Type", "")
            if response.status_code >= 400 and content_type.startswith("application/json"):
                body = response.json()
                if case.path == "/cloudide/v1/messages":  # Anthropic's error shape there
                    assert body["type"] == "error", body
                    assert set(body["error"]) == {"type", "message"}, body
                elif case.path.startswith("/cloudide/v1/"):  # OpenAI's error shape there
                    assert set(body["error"]) == {"message", "type", "param", "code"}, body
                else:
                    assert "message" in body and "status" in body, body

        try:
            run()
        except Unsatisfiable:
            continue  # e.g. no negative input exists for a parameterless GET
    session.close()
    assert not failures, failures[:5]
    return counts


@pytest.mark.parametrize("mode", ["positive", "negative"])
async def test_schemathesis_finds_no_server_error(cloudide: Any, jp_fetch: Any,
                                                  jp_http_port: int, jp_base_url: str,
                                                  mode: str) -> None:
    base_url = f"http://127.0.0.1:{jp_http_port}{jp_base_url.rstrip('/')}"
    counts = await asyncio.to_thread(_fuzz, base_url, mode)
    statuses = {int(k.rsplit(" ", 1)[1]) for k in counts}
    assert counts, "schemathesis generated no request"
    if mode == "positive":
        assert 201 in statuses  # valid bodies create conversations
    else:
        assert 400 in statuses  # invalid bodies are refused, by name
