"""The hub service's domain code on a real SQLite store, without a Hub: row validation,
namespaced idempotency, the team mates' spend and the report's sums."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from jupyter_cloudide.errors import ForbiddenError, InvalidInputError
from jupyter_cloudide.hub.render import admin_page
from jupyter_cloudide.hub.team import (
    EVENT_ID_MAX,
    TeamLedger,
    hub_event_id,
    parse_budget_rules,
    parse_rows,
)
from jupyter_cloudide.storage.db import MetadataStore

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[TeamLedger]:
    store = MetadataStore(f"sqlite:///{tmp_path / 'hub.db'}").open()
    try:
        yield TeamLedger(store)
    finally:
        store.close()


def row(user: str, event_id: str, when: datetime = NOW, **extra: Any) -> dict[str, Any]:
    return {"event_id": event_id, "user": user, "kind": "tokens", "model": "m",
            "input_tokens": 10, "output_tokens": 5, "cost": 0.25,
            "occurred_at": when.isoformat(), **extra}


def test_event_ids_are_namespaced_per_user_and_bounded() -> None:
    assert hub_event_id("alice", "v1:1") != hub_event_id("bob", "v1:1")
    assert hub_event_id("alice", "v1:1") == hub_event_id("alice", "v1:1")
    long = hub_event_id("a" * 255, "e" * 200)
    assert len(long) <= EVENT_ID_MAX and long == hub_event_id("a" * 255, "e" * 200)


@pytest.mark.parametrize(("body", "field"), [
    ([], "body"), ({"rows": {}}, "rows"), ({"rows": [], "more": 1}, "more"),
    ({"rows": [1]}, "rows[0]"), ({"rows": [{"user": "alice"}]}, "event_id"),
    ({"rows": [row("alice", "e", cost=float("nan"))]}, "cost"),
    ({"rows": [row("alice", "e", input_tokens=True)]}, "input_tokens"),
    ({"rows": [row("alice", "e", output_tokens=-1)]}, "output_tokens"),
    ({"rows": [row("alice", "e", model="x" * 300)]}, "model"),
    ({"rows": [row("alice", "e\x00")]}, "event_id"),
    ({"rows": [row("alice", "e", occurred_at="yesterday")]}, "occurred_at"),
    ({"rows": [row("alice", "e", occurred_at="2026-01-01T00:00:00")]}, "occurred_at"),
    ({"rows": [row("alice", "e", surprise=1)]}, "surprise"),
])
def test_bad_rows_are_refused_naming_the_field(body: Any, field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_rows("alice", body, max_rows=10)
    assert field in caught.value.message


def test_rows_of_another_user_and_too_many_rows_are_refused() -> None:
    with pytest.raises(ForbiddenError):
        parse_rows("alice", {"rows": [row("alice", "1"), row("bob", "2")]}, max_rows=10)
    with pytest.raises(InvalidInputError, match="at most 2"):
        parse_rows("alice", {"rows": [row("alice", str(i)) for i in range(3)]}, max_rows=2)
    # the server's own id, created_at and extra are accepted and dropped
    parsed = parse_rows("alice", {"rows": [row("alice", "1", id=7, extra={"k": "v"},
                                               created_at="x")]}, max_rows=10)
    assert parsed[0].extra == {"server_event_id": "1"}


def test_budget_rules_are_checked() -> None:
    assert parse_budget_rules([{"scope": "group:t", "period": "day", "limit": 1}])[0].metric \
        == "cost"
    for bad in ({"scope": "user", "period": "day", "limit": 1},
                {"scope": "group:t", "period": "week", "limit": 1},
                {"scope": "group:t", "period": "day", "limit": -1},
                {"scope": "group:t", "period": "day", "limit": 1, "metric": "tokens"},
                {"scope": "group:t", "period": "day", "limit": 1, "typo": 1}):
        with pytest.raises(ValueError):
            parse_budget_rules([bad])


def test_replays_count_once_and_team_mates_spend_excludes_the_caller(
        ledger: TeamLedger) -> None:
    yesterday, last_month = NOW - timedelta(days=1), NOW - timedelta(days=40)
    alice = parse_rows("alice", {"rows": [row("alice", "1"), row("alice", "2", yesterday),
                                          row("alice", "3", last_month)]}, max_rows=10)
    bob = parse_rows("bob", {"rows": [row("bob", "1", cost=1.0),
                                      row("bob", "k", kind="kernel_busy", quantity=30.0,
                                          input_tokens=0, output_tokens=0, cost=0.0)]},
                     max_rows=10)
    assert ledger.record(alice) == 3 and ledger.record(bob) == 2
    assert ledger.record(alice) == 0  # a resent report

    members = {"team": {"alice", "bob", "carol"}, "other": {"dave"}}
    for_alice = ledger.others_spend("alice", ["team"], members, now=NOW)
    assert for_alice == {"group:team": {"day": 1.0, "month": 1.0, "day:kernel_seconds": 30.0,
                                        "month:kernel_seconds": 30.0}}
    for_bob = ledger.others_spend("bob", ["team"], members, now=NOW)
    assert for_bob["group:team"]["day"] == pytest.approx(0.25)
    assert for_bob["group:team"]["month"] == pytest.approx(0.5)

    report = ledger.report(since=NOW - timedelta(days=2), until=NOW + timedelta(days=1),
                           members=members)
    by_user = {u["user"]: u for u in report["users"]}
    assert by_user["alice"]["input_tokens"] == 20 and by_user["bob"]["input_tokens"] == 10
    team = next(g for g in report["groups"] if g["group"] == "team")
    assert team["input_tokens"] == 30 and team["kernel_seconds"] == 30.0
    assert team["cost"] == pytest.approx(1.5)
    assert report["total"]["events"] == 4


def test_the_page_escapes_names(ledger: TeamLedger) -> None:
    evil = "<img src=x onerror=alert(1)>"
    ledger.record(parse_rows(evil, {"rows": [row(evil, "1")]}, max_rows=1))
    report = ledger.report(since=NOW - timedelta(days=1), until=NOW + timedelta(days=1),
                           members={evil: {evil}})
    page = admin_page(report, viewer=evil, days=1, group=evil, user=None,
                      all_groups=[evil], prefix="/services/cloudide/")
    assert evil not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<svg" in page and "<script" not in page
