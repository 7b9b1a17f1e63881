"""API keys: ``cloudide/api/tokens`` (each user manages only their own) and
``jupyter cloudide token create|list|revoke`` as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cloudide_testing import MultiUserIdentity, auth
from tornado.httpclient import AsyncHTTPClient

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def server_config() -> dict[str, Any]:
    return {"identity_provider_class": MultiUserIdentity}


async def test_rest_create_list_revoke_own_keys_only(cloudide: Any, jp_fetch: Any,
                                                     v1_url: str) -> None:
    created = await jp_fetch("cloudide", "api", "tokens", method="POST", headers=auth("alice"),
                             body=json.dumps({"name": "laptop", "models": ["gpt-*"],
                                              "expires": "30d", "allow_auto_approve": True}))
    assert created.code == 201 and created.headers["Cache-Control"] == "no-store"
    body = json.loads(created.body)
    key, meta = body["key"], body["token"]
    assert key.startswith("cide_") and meta["prefix"] == key[:8]
    assert (meta["models"], meta["allow_auto_approve"], meta["state"]) == (["gpt-*"], True,
                                                                           "active")
    assert meta["expires_at"] is not None
    listed = json.loads((await jp_fetch("cloudide", "api", "tokens",
                                        headers=auth("alice"))).body)["tokens"]
    assert [t["id"] for t in listed] == [meta["id"]] and key not in json.dumps(listed)
    assert json.loads((await jp_fetch("cloudide", "api", "tokens",
                                      headers=auth("bob"))).body) == {"tokens": []}
    # the key works, within its scope
    models = await AsyncHTTPClient().fetch(v1_url + "/models",
                                           headers={"Authorization": f"Bearer {key}"})
    assert [m["id"] for m in json.loads(models.body)["data"]] == ["gpt-4o", "gpt-4o-mini"]
    # bob cannot revoke it; alice can, once
    for user, code in (("bob", 404), ("alice", 204), ("alice", 404)):
        response = await jp_fetch("cloudide", "api", "tokens", meta["id"], method="DELETE",
                                  headers=auth(user), raise_error=False)
        assert response.code == code, user
    refused = await AsyncHTTPClient().fetch(v1_url + "/models", raise_error=False,
                                            headers={"Authorization": f"Bearer {key}"})
    assert refused.code == 401
    listed = json.loads((await jp_fetch("cloudide", "api", "tokens",
                                        headers=auth("alice"))).body)["tokens"]
    assert listed[0]["state"] == "revoked"


async def test_rest_refuses_bad_bodies_by_field(cloudide: Any, jp_fetch: Any) -> None:
    for body, field in (({"expires": "30x"}, "expires"), ({"expires": "9999w"}, "expires"),
                        ({"models": ["gpt 4"]}, "models.0"), ({"admin": True}, "admin")):
        response = await jp_fetch("cloudide", "api", "tokens", method="POST",
                                  headers=auth("alice"), body=json.dumps(body),
                                  raise_error=False)
        assert response.code == 400, body
        assert json.loads(response.body)["field"] == field, body


def cli(*args: str, data: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JUPYTER_CLOUDIDE_DATA_DIR": str(data),
           "JUPYTER_CONFIG_DIR": str(data / "config"), "JUPYTER_PLATFORM_DIRS": "1"}
    return subprocess.run([sys.executable, "-m", "jupyter_cloudide.cli", "token", *args],
                          env=env, capture_output=True, text=True, timeout=100)


def test_cli_create_list_revoke(tmp_path: Path) -> None:
    from jupyter_cloudide.storage.db import MetadataStore

    made = cli("create", "--models", "gpt-*,claude-haiku-4-5", "--expires", "30d",
               "--auto-approve", "--name", "laptop", data=tmp_path)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("cide_") and len(key.splitlines()) == 1
    assert "shown only now" in made.stderr and key not in made.stderr
    listed = cli("list", "--json", data=tmp_path)
    (item,) = json.loads(listed.stdout)
    assert (item["name"], item["models"], item["allow_auto_approve"]) == (
        "laptop", ["gpt-*", "claude-haiku-4-5"], True)
    assert key not in listed.stdout
    with MetadataStore(f"sqlite:///{tmp_path / 'cloudide.db'}").open() as store:
        record = store.verify_api_key(key)
        assert record is not None and record.allows_model("gpt-4o")
        assert not record.allows_model("claude-sonnet-4-5")
    assert cli("revoke", item["id"], data=tmp_path).returncode == 0
    again = cli("revoke", item["id"], data=tmp_path)
    assert again.returncode == 1 and "no active API key" in again.stderr
    with MetadataStore(f"sqlite:///{tmp_path / 'cloudide.db'}").open() as store:
        assert store.verify_api_key(key) is None
    bad = cli("create", "--expires", "soon", data=tmp_path)
    assert bad.returncode == 1 and "expires" in bad.stderr
