"""``GET cloudide/api/usage`` for admins and everyone else, CSV export, and requests by route
metered into the ledger (a real server, MultiUserIdentity)."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cloudide_testing import MultiUserIdentity, auth

from jupyter_cloudide.storage import UsageEventIn


@pytest.fixture
def server_config() -> dict[str, Any]:
    return {"identity_provider_class": MultiUserIdentity}


@pytest.fixture
def cloudide_config() -> dict[str, Any]:
    return {"usage_admins": ["alice"], "usage_request_interval": 3600.0}


def _rows(user: str, at: datetime) -> list[UsageEventIn]:
    return [
        UsageEventIn(event_id=f"{user}-t", user=user, kind="tokens", model="gpt",
                     input_tokens=100, output_tokens=10, cost=0.5, group="team",
                     occurred_at=at),
        UsageEventIn(event_id=f"{user}-k", user=user, kind="kernel_busy", quantity=61.0,
                     kernelspec="=HYPERLINK(\"http://x\")", occurred_at=at),
    ]


async def test_admins_see_anyone_others_only_themselves(cloudide: Any, jp_fetch: Any) -> None:
    now = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=1)
    store = await cloudide.metadata_store()
    store.record_usage(_rows("alice", now) + _rows("bob", now))

    async def get(caller: str, **params: str) -> Any:
        return await jp_fetch("cloudide", "api", "usage", params=params, headers=auth(caller),
                              raise_error=False)

    own = await get("bob")
    assert own.code == 200 and json.loads(own.body)["user"] == "bob"
    assert (await get("bob", user="bob")).code == 200
    for params in ({"user": "alice"}, {"group": "team"}, {"user": "alice", "format": "csv"}):
        refused = await get("bob", **params)
        assert refused.code == 403, params
        assert b"alice-t" not in refused.body
    other = json.loads((await get("alice", user="bob")).body)
    assert other["user"] == "bob" and other["totals"]["input_tokens"] == 100
    assert other["budget"] is None
    team = json.loads((await get("alice", group="team")).body)
    assert team["totals"]["input_tokens"] == 200
    assert [u["user"] for u in team["users"]] == ["alice", "bob"]
    assert (await get("alice", user="x", group="team")).code == 400

    exported = await get("alice", user="bob", format="csv")
    assert exported.code == 200
    assert exported.headers["Content-Type"].startswith("text/csv")
    assert exported.headers["Content-Disposition"].startswith(
        'attachment; filename="cloudide-usage-bob-')
    table = list(csv.DictReader(io.StringIO(exported.body.decode())))
    assert sorted(r["event_id"] for r in table) == ["bob-k", "bob-t"]
    kernel = next(r for r in table if r["event_id"] == "bob-k")
    assert kernel["kernelspec"] == "'=HYPERLINK(\"http://x\")"  # not a formula
    assert kernel["quantity"] == "61.0"
    series = await get("bob", format="csv", export="series")
    lines = list(csv.DictReader(io.StringIO(series.body.decode())))
    assert {(r["kind"], r["events"]) for r in lines} == {("tokens", "1"), ("kernel_busy", "1")}
    assert (await get("bob", format="xml")).code == 400


async def test_requests_are_counted_by_route_into_the_ledger(cloudide: Any,
                                                              jp_fetch: Any) -> None:
    for _ in range(3):
        await jp_fetch("cloudide", "api", "usage", headers=auth("bob"))
    await jp_fetch("cloudide", "api", "health", headers=auth("alice"))
    cloudide.ledger.flush_requests()
    await cloudide.ledger.flush()
    store = await cloudide.metadata_store()
    counted = {(r.user, r.route): r.quantity for r in store.list_usage_events(None)
               if r.kind == "requests"}
    assert counted[("bob", "usage")] == 3.0
    assert counted[("alice", "health")] == 1.0
