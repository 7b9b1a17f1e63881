"""The BudgetManager over a real SQLite metadata store: rules, periods, reservations, group
(team) budgets, the exact merge of the database with unwritten rows, remote (hub) spend.

Time is the manager's injected clock (a period rollover without waiting for midnight); the
ledger rows are real rows in a real database."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from jupyter_cloudide.errors import BudgetExceededError, ServiceUnavailableError
from jupyter_cloudide.metering.budgets import (
    BudgetManager,
    parse_rules,
    period_bounds,
    remember_members,
)
from jupyter_cloudide.storage import MetadataStore, UsageEventIn


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetadataStore]:
    with MetadataStore(f"sqlite:///{tmp_path / 'ledger.db'}") as opened:
        yield opened


def row(event_id: str, user: str, cost: float, at: datetime, kind: str = "tokens",
        quantity: float = 0.0) -> UsageEventIn:
    return UsageEventIn(event_id=event_id, user=user, kind=kind, cost=cost, quantity=quantity,
                        occurred_at=at)


NOON = datetime(2026, 3, 14, 12, 0, tzinfo=timezone.utc)


def test_rules_are_validated_with_the_entry_named() -> None:
    assert parse_rules([{"limit": 5}])[0].scope == "user"
    bad = [
        ([{"scope": "team:x", "limit": 1}], "budgets[0].scope"),
        ([{"period": "week", "limit": 1}], "budgets[0].period"),
        ([{"metric": "tokens", "limit": 1}], "budgets[0].metric"),
        ([{"limit": -1}], "budgets[0].limit"),
        ([{"limit": "10"}], "budgets[0].limit"),
        ([{"limit": 1, "warn_percent": 0}], "budgets[0].warn_percent"),
        ([{"limit": 1, "extra": 1}], "unknown key"),
        ([{"limit": 1}, {"limit": 2}], "a second cost budget"),
        (["user"], "expected a dict"),
    ]
    for rules, message in bad:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_rules(rules)


def test_period_bounds_are_utc_days_and_calendar_months() -> None:
    at = datetime(2026, 12, 31, 23, 59, tzinfo=timezone.utc)
    assert period_bounds("day", at) == (datetime(2026, 12, 31, tzinfo=timezone.utc),
                                        datetime(2027, 1, 1, tzinfo=timezone.utc))
    assert period_bounds("month", at) == (datetime(2026, 12, 1, tzinfo=timezone.utc),
                                          datetime(2027, 1, 1, tzinfo=timezone.utc))


async def test_reservations_stop_at_the_limit_and_release(store: MetadataStore) -> None:
    store.record_usage([row("a", "ada", 0.6, NOON - timedelta(hours=1))])
    manager = BudgetManager(parse_rules([{"period": "day", "limit": 1.0}]), store=store,
                            clock=Clock(NOON))
    first = await manager.reserve("ada", (), 0.3)
    with pytest.raises(BudgetExceededError) as refused:
        await manager.reserve("ada", (), 0.3)  # 0.6 spent + 0.3 held + 0.3 > 1.0
    message = refused.value.message
    assert "daily cost budget of 'ada'" in message and "$0.6000 spent" in message
    assert "$0.3000 reserved" in message and "resets at 2026-03-15 00:00 UTC" in message
    assert refused.value.headers["x-should-retry"] == "false"
    manager.settle(first)
    manager.settle(first)  # idempotent
    second = await manager.reserve("ada", (), 0.3)
    # the call cost less than its worst case: the ledger's row is what counts
    manager.on_rows([row("b", "ada", 0.1, NOON)])
    manager.settle(second)
    [status] = await manager.status("ada", ())
    assert status["spent"] == pytest.approx(0.7) and status["reserved"] == 0
    assert status["state"] == "ok" and status["resets_at"] == "2026-03-15T00:00:00+00:00"
    assert await manager.reserve("bob", (), 0.9) is not None  # "user": each their own


async def test_exhausted_budget_refuses_checks_and_a_zero_limit_refuses_all(
        store: MetadataStore) -> None:
    store.record_usage([row("a", "ada", 2.0, NOON)])
    manager = BudgetManager(parse_rules([{"limit": 2.0}, {"scope": "user:cy", "limit": 0}]),
                            store=store, clock=Clock(NOON))
    with pytest.raises(BudgetExceededError, match="monthly cost budget of 'ada' is used up"):
        await manager.check("ada", ())
    with pytest.raises(BudgetExceededError):
        await manager.check("cy", ())
    [ada] = await manager.status("ada", ())
    assert ada["state"] == "exhausted" and ada["percent"] == 100


async def test_period_rollover_starts_from_zero(store: MetadataStore) -> None:
    late = datetime(2026, 3, 31, 23, 59, tzinfo=timezone.utc)
    store.record_usage([row("a", "ada", 0.9, late - timedelta(minutes=5))])
    clock = Clock(late)
    manager = BudgetManager(parse_rules([{"period": "day", "limit": 1.0},
                                         {"period": "month", "limit": 5.0}]),
                            store=store, clock=clock)
    with pytest.raises(BudgetExceededError, match="daily"):
        await manager.reserve("ada", (), 0.2)
    clock.now = late + timedelta(minutes=2)  # April 1st: a new day and a new month
    held = await manager.reserve("ada", (), 0.2)
    manager.settle(held)
    statuses = {s["period"]: s for s in await manager.status("ada", ())}
    assert statuses["day"]["spent"] == 0 and statuses["month"]["spent"] == 0
    assert statuses["month"]["period_start"] == "2026-04-01T00:00:00+00:00"
    # a row stamped before midnight that arrives late does not count on the new periods
    manager.on_rows([row("late", "ada", 0.5, late)])
    assert (await manager.status("ada", ()))[0]["spent"] == 0


async def test_group_budget_is_shared_by_its_members(store: MetadataStore) -> None:
    rules = parse_rules([{"scope": "group:research", "period": "month", "limit": 1.0}])
    unwritten: list[UsageEventIn] = []  # what the ledger has not committed yet
    manager = BudgetManager(rules, store=store, clock=Clock(NOON),
                            unwritten=lambda: list(unwritten))
    assert await manager.reserve("ada", ("research",), 0.5) is not None
    unwritten.append(row("a1", "ada", 0.5, NOON))
    manager.on_rows(unwritten)
    with pytest.raises(BudgetExceededError, match="group 'research'"):
        await manager.reserve("bob", ("research",), 0.6)  # ada's spend and hold count
    with pytest.raises(BudgetExceededError):
        await manager.reserve("ada", ("research",), 0.01)
    assert await manager.reserve("cy", ("other",), 5.0) is None  # not in the group

    # a restarted server knows the members from the table, and reads their rows
    store.record_usage([row("a1", "ada", 0.5, NOON)])
    await asyncio.to_thread(remember_members, store.engine, [("research", "ada")])
    fresh = BudgetManager(rules, store=store, clock=Clock(NOON))
    [status] = await fresh.status("bob", ("research",))
    assert status["scope"] == "group:research" and status["spent"] == pytest.approx(0.5)


async def test_unwritten_rows_and_rows_added_during_a_load_count_once(
        store: MetadataStore) -> None:
    committed = row("c", "ada", 0.25, NOON)
    in_flight = row("f", "ada", 0.5, NOON)  # committed, still listed as unwritten
    waiting = row("w", "ada", 1.0, NOON)  # not written yet
    store.record_usage([committed, in_flight])
    unwritten = [in_flight, waiting]
    manager = BudgetManager(parse_rules([{"limit": 100.0}]), store=store,
                            unwritten=lambda: list(unwritten), clock=Clock(NOON))
    status = asyncio.ensure_future(manager.status("ada", ()))
    await asyncio.sleep(0)  # the load is running: a row arrives through the subscription
    during = row("d", "ada", 2.0, NOON)
    manager.on_rows([during])
    unwritten.append(during)
    [first] = await status
    assert first["spent"] == pytest.approx(3.75)
    store.record_usage([waiting, during])
    await manager.resync()
    [again] = await manager.status("ada", ())
    assert again["spent"] == pytest.approx(3.75)


async def test_remote_rules_and_other_servers_spend(store: MetadataStore) -> None:
    warnings: list[dict[str, Any]] = []
    manager = BudgetManager([], store=store, clock=Clock(NOON), on_warning=warnings.append)
    assert await manager.reserve("ada", ("research",), 1.0) is None
    manager.set_remote([{"scope": "group:research", "period": "month", "limit": 10.0}],
                       {"group:research": {"month": 8.5, "day": 1.0}})
    with pytest.raises(BudgetExceededError, match="group 'research'"):
        await manager.reserve("ada", ("research",), 2.0)
    [status] = await manager.status("ada", ("research",))
    assert status["remote"] and status["remote_spent"] == 8.5 and status["spent"] == 8.5
    assert status["state"] == "warning"
    with pytest.raises(ValueError):
        manager.set_remote([{"scope": "nobody"}], {})
    assert manager.rules[0].scope == "group:research"  # a bad update changes nothing


async def test_warning_once_per_budget_and_period(store: MetadataStore) -> None:
    warnings: list[dict[str, Any]] = []
    clock = Clock(NOON)
    manager = BudgetManager(parse_rules([{"period": "day", "limit": 1.0,
                                          "warn_percent": 50}]),
                            store=store, clock=clock, on_warning=warnings.append)
    await manager.status("ada", ())
    manager.on_rows([row("1", "ada", 0.4, NOON)])
    assert warnings == []
    manager.on_rows([row("2", "ada", 0.2, NOON)])
    manager.on_rows([row("3", "ada", 0.2, NOON)])
    assert len(warnings) == 1
    assert warnings[0]["users"] == ["ada"] and warnings[0]["percent"] == pytest.approx(60)
    clock.now = NOON + timedelta(days=1)
    await manager.status("ada", ())
    manager.on_rows([row("4", "ada", 0.7, clock.now)])
    assert len(warnings) == 2 and warnings[1]["period_start"].startswith("2026-03-15")


async def test_a_ledger_that_cannot_be_read(tmp_path: Path) -> None:
    broken = MetadataStore(f"sqlite:///{tmp_path / 'x.db'}").open()
    broken.close()  # every call raises
    rules = parse_rules([{"limit": 1.0}])
    closed = BudgetManager(rules, store=broken, fail_closed=True, clock=Clock(NOON))
    with pytest.raises(ServiceUnavailableError, match="cannot be read"):
        await closed.reserve("ada", (), 0.1)
    assert closed.snapshot()["state"] == "error"
    opened = BudgetManager(rules, store=broken, clock=Clock(NOON))
    held = await opened.reserve("ada", (), 0.5)  # allowed, counted in memory from now
    opened.on_rows([row("1", "ada", 0.5, NOON)])
    opened.settle(held)
    with pytest.raises(BudgetExceededError):
        await opened.reserve("ada", (), 0.6)
