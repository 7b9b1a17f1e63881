"""Usage reports: totals, per-model figures and series grouped in SQL (SQLite and PostgreSQL),
and ``GET cloudide/api/usage`` for the caller only."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cloudide_testing import MultiUserIdentity, auth

from jupyter_cloudide.metering.reports import period, usage_report
from jupyter_cloudide.storage import MetadataStore, UsageEventIn

DAY1 = datetime(2026, 3, 1, 9, 30, tzinfo=timezone.utc)
DAY2 = datetime(2026, 3, 2, 23, 59, tzinfo=timezone.utc)


def _rows(user: str = "alice", at: tuple[datetime, datetime] = (DAY1, DAY2)
          ) -> list[UsageEventIn]:
    day1, day2 = at
    return [
        UsageEventIn(event_id=f"{user}-1", user=user, kind="tokens", model="gpt-4o",
                     input_tokens=1000, output_tokens=100, cost=0.02, occurred_at=day1),
        UsageEventIn(event_id=f"{user}-2", user=user, kind="tokens", model="gpt-4o",
                     input_tokens=500, output_tokens=50, cost=0.01, occurred_at=day2),
        UsageEventIn(event_id=f"{user}-3", user=user, kind="tokens", model="claude",
                     input_tokens=200, output_tokens=20, cost=0.5, occurred_at=day2),
        UsageEventIn(event_id=f"{user}-4", user=user, kind="kernel_busy", quantity=12.5,
                     kernelspec="python3", occurred_at=day1),
        UsageEventIn(event_id=f"{user}-5", user=user, kind="kernel_lifetime", quantity=600.0,
                     kernelspec="python3", occurred_at=day1 + timedelta(hours=1)),
        UsageEventIn(event_id=f"{user}-6", user=user, kind="requests", route="search",
                     quantity=1.0, occurred_at=day1),
    ]


def test_report_groups_by_model_and_day(store: MetadataStore) -> None:
    store.record_usage(_rows() + _rows("bob"))
    report = usage_report(store.engine, "alice", since=datetime(2026, 3, 1, tzinfo=timezone.utc),
                          until=datetime(2026, 3, 3, tzinfo=timezone.utc))
    totals = report["totals"]
    assert totals["cost"] == pytest.approx(0.53)
    assert (totals["input_tokens"], totals["output_tokens"], totals["calls"]) == (1700, 170, 3)
    assert (totals["kernel_busy_seconds"], totals["kernel_seconds"]) == (12.5, 600.0)
    assert [(m["model"], m["calls"]) for m in report["models"]] == [("claude", 1),
                                                                   ("gpt-4o", 2)]
    points = {(p["t"], p["model"]): p["input_tokens"] for p in report["series"]}
    assert points == {("2026-03-01T00:00:00+00:00", "gpt-4o"): 1000,
                      ("2026-03-02T00:00:00+00:00", "gpt-4o"): 500,
                      ("2026-03-02T00:00:00+00:00", "claude"): 200}
    assert report["kernel_series"] == [{"t": "2026-03-01T00:00:00+00:00",
                                        "busy_seconds": 12.5, "seconds": 600.0}]


def test_report_by_hour_and_bounds(store: MetadataStore) -> None:
    store.record_usage(_rows())
    report = usage_report(store.engine, "alice", since=DAY1 - timedelta(minutes=30),
                          until=DAY2, bucket="hour")  # DAY2 rows fall outside [since, until)
    assert {p["t"] for p in report["series"]} == {"2026-03-01T09:00:00+00:00"}
    assert [p["t"] for p in report["kernel_series"]] == ["2026-03-01T09:00:00+00:00",
                                                          "2026-03-01T10:00:00+00:00"]
    assert report["totals"]["calls"] == 1
    with pytest.raises(ValueError, match="bucket"):
        usage_report(store.engine, "alice", since=DAY1, until=DAY2, bucket="week")


def test_period_is_whole_utc_days() -> None:
    since, until = period(7, datetime(2026, 3, 10, 15, 0, tzinfo=timezone.utc))
    assert (since.isoformat(), until.isoformat()) == ("2026-03-04T00:00:00+00:00",
                                                      "2026-03-11T00:00:00+00:00")


@pytest.fixture
def server_config() -> dict[str, Any]:
    return {"identity_provider_class": MultiUserIdentity}


async def test_usage_route_reports_only_the_callers_usage(cloudide: Any, jp_fetch: Any) -> None:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    store = await cloudide.metadata_store()
    store.record_usage(_rows("alice", (now - timedelta(days=1), now))
                       + _rows("bob", (now, now)))
    response = await jp_fetch("cloudide", "api", "usage", headers=auth("alice"))
    body = json.loads(response.body)
    assert body["user"] == "alice" and body["budget"] is None
    assert body["totals"]["calls"] == 3 and len(body["kernel_series"]) == 1
    month = await jp_fetch("cloudide", "api", "usage", params={"period": "month"},
                           headers=auth("bob"))
    assert json.loads(month.body)["totals"]["input_tokens"] == 1700
    for params in ({"days": "0"}, {"days": "x"}, {"bucket": "week"}, {"period": "year"}):
        bad = await jp_fetch("cloudide", "api", "usage", params=params, headers=auth("alice"),
                             raise_error=False)
        assert bad.code == 400, params
        assert json.loads(bad.body)["field"] == next(iter(params))
