"""The Ledger: priced rows, subscribers, batched writes with roll-ups, retries that lose and
duplicate nothing when the database fails and comes back, bounded memory, request and
index-size rows, one jupyter_events event per billable row, Prometheus counters."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from jupyter_events import EventLogger
from prometheus_client import REGISTRY
from sqlalchemy import text

from jupyter_cloudide.metering import events
from jupyter_cloudide.metering.ledger import Ledger
from jupyter_cloudide.metering.pricing import Pricing
from jupyter_cloudide.storage import MetadataStore, UsageEventIn

T0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=5)
MODELS = [{"id": "m", "provider": "openai", "price_per_1k": {"input": 1.0, "output": 2.0}}]
KERNELS = {"*": {"kernel_busy": [{"up_to_hours": 1, "per_hour": 3.6}, {"per_hour": 1.8}]}}


def pricing() -> Pricing:
    return Pricing.from_config(models=MODELS, kernel_prices=KERNELS)


def tokens(event_id: str, tin: int = 1000, tout: int = 500, user: str = "alice",
           cost: float = 99.0) -> UsageEventIn:
    return UsageEventIn(event_id=event_id, user=user, kind="tokens", model="m",
                        input_tokens=tin, output_tokens=tout, cost=cost, occurred_at=T0)


def busy(event_id: str, seconds: float, user: str = "alice") -> UsageEventIn:
    return UsageEventIn(event_id=event_id, user=user, kind="kernel_busy", quantity=seconds,
                        kernelspec="python3", occurred_at=T0, source="user")


def ledger_rows(store: MetadataStore) -> dict[str, tuple[float, float]]:
    return {r.event_id: (r.quantity or r.input_tokens + r.output_tokens, r.cost)
            for r in store.list_usage_events(None)}


def daily(store: MetadataStore) -> list[tuple[Any, ...]]:
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            'SELECT "user", kind, events, input_tokens, output_tokens, quantity, cost '
            'FROM usage_daily ORDER BY "user", kind')).all()]


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.msg
        self.records.append(dict(msg) if isinstance(msg, dict) else json.loads(str(msg)))


def event_logger() -> tuple[EventLogger, Captured]:
    captured = Captured()
    logger = EventLogger(handlers=[captured])
    events.register_schemas(logger)
    return logger, captured


async def test_add_prices_publishes_and_writes_in_batches(ledger_store: MetadataStore) -> None:
    logger, captured = event_logger()
    ledger = Ledger(pricing(), event_logger=logger, flush_interval_s=0.05)
    seen: list[list[UsageEventIn]] = []
    ledger.subscribe(seen.append)
    await ledger.start(ledger_store)
    before = REGISTRY.get_sample_value("cloudide_tokens_total",
                                       {"model": "m", "direction": "output"}) or 0.0
    priced = ledger.add([tokens("t1"), busy("k1", 3599.0), busy("k2", 2.0)])
    # producers' cost is ignored for priced kinds: 1000 in at 1.0/1k + 500 out at 2.0/1k
    assert [r.cost for r in priced] == pytest.approx([2.0, 3.599, 0.001 + 0.0005])
    assert seen == [priced]
    assert {r.event_id for r in ledger.unwritten()} == {"t1", "k1", "k2"}
    await ledger.flush()
    assert ledger.unwritten() == []
    assert ledger_rows(ledger_store) == {"t1": (1500, 2.0), "k1": (3599.0, pytest.approx(3.599)),
                                         "k2": (2.0, pytest.approx(0.0015))}
    assert daily(ledger_store) == [
        ("alice", "kernel_busy", 2, 0, 0, 3601.0, pytest.approx(3.6005)),
        ("alice", "tokens", 1, 1000, 500, 0.0, 2.0)]
    # one event per billable row, with the ledger's id and cost and no free text
    assert [(e["event_id"], e["kind"]) for e in captured.records] == [
        ("t1", "tokens"), ("k1", "kernel_busy"), ("k2", "kernel_busy")]
    assert captured.records[0]["__schema__"] == events.USAGE
    assert captured.records[0]["cost"] == 2.0 and "extra" not in captured.records[0]
    after = REGISTRY.get_sample_value("cloudide_tokens_total",
                                      {"model": "m", "direction": "output"})
    assert after == before + 500
    await ledger.close()


async def test_a_failing_database_loses_and_duplicates_nothing(
        ledger_store: MetadataStore) -> None:
    """The roll-up table disappears mid-run: every write fails (and rolls back the ledger
    insert with it); when it is back, the writer's retries land every row exactly once."""
    ledger = Ledger(pricing(), flush_interval_s=0.01)
    await ledger.start(ledger_store)
    with ledger_store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE usage_daily RENAME TO usage_daily_away"))
    ledger.add([tokens("a"), busy("b", 10.0)])
    with pytest.raises(Exception, match="usage_daily"):
        await ledger.flush()
    ledger.add([tokens("c", 10, 0), tokens("a")])  # "a" again: a producer's retry
    await asyncio.sleep(0.1)  # the writer retries (and fails) meanwhile
    assert len(ledger.unwritten()) == 4
    assert ledger_rows(ledger_store) == {}
    with ledger_store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE usage_daily_away RENAME TO usage_daily"))
    for _ in range(200):
        if not ledger.unwritten():
            break
        await asyncio.sleep(0.05)
    assert ledger.unwritten() == []
    assert set(ledger_rows(ledger_store)) == {"a", "b", "c"}
    assert daily(ledger_store) == [
        ("alice", "kernel_busy", 1, 0, 0, 10.0, pytest.approx(0.01)),
        ("alice", "tokens", 2, 1010, 500, 0.0, pytest.approx(2.0 + 0.01))]
    # a batch whose commit succeeded but whose answer was lost is simply written again
    assert ledger_store.record_usage([tokens("a"), tokens("c", 10, 0)]) == 0
    assert daily(ledger_store)[1][2] == 2
    await ledger.close()


async def test_memory_is_bounded_while_nothing_can_be_written(
        caplog: pytest.LogCaptureFixture) -> None:
    ledger = Ledger(pricing(), max_unwritten_rows=5)
    with caplog.at_level(logging.ERROR):
        ledger.add([tokens(f"t{i}") for i in range(8)])
    assert [r.event_id for r in ledger.unwritten()] == ["t3", "t4", "t5", "t6", "t7"]
    assert ledger.rows_dropped == 3
    assert "max_unwritten_rows" in caplog.text and "dropped the 3 oldest" in caplog.text
    await ledger.close(timeout_s=0)


async def test_close_writes_what_is_buffered_and_tiers_resume_after_restart(
        ledger_store: MetadataStore) -> None:
    ledger = Ledger(pricing(), flush_interval_s=3600)
    await ledger.start(ledger_store)
    ledger.add([busy("k1", 1800.0)])
    await ledger.close()
    assert set(ledger_rows(ledger_store)) == {"k1"}
    # a new server: the period's volume comes from the roll-ups, so the tier bound at one
    # hour is where it was
    again = Ledger(pricing())
    await again.start(ledger_store)
    (row,) = again.add([busy("k2", 3600.0)])
    assert row.cost == pytest.approx(1800 * 3.6 / 3600 + 1800 * 1.8 / 3600)
    await again.close()


async def test_requests_and_index_size_rows(ledger_store: MetadataStore) -> None:
    logger, captured = event_logger()
    ledger = Ledger(pricing(), event_logger=logger)
    await ledger.start(ledger_store)
    for route in ("usage", "usage", "ws:chat.send"):
        ledger.count_request("alice", route)
    ledger.count_request("bob", "usage")
    first = ledger.flush_requests()
    assert sorted((r.user, r.route, r.quantity) for r in first) == [
        ("alice", "usage", 2.0), ("alice", "ws:chat.send", 1.0), ("bob", "usage", 1.0)]
    ledger.count_request("alice", "usage")
    second = ledger.flush_requests()
    assert ledger.flush_requests() == []
    ids = [r.event_id for r in first + second]
    assert len(set(ids)) == 4 and all(len(i) <= 128 for i in ids)
    hour = T0.replace(minute=7)
    ledger.record_index_size("alice", 1234, hour)
    ledger.record_index_size("alice", 999, hour.replace(minute=50))  # same hour: skipped
    ledger.record_index_size("alice", 2048, hour + timedelta(hours=1))
    await ledger.flush()
    rows = ledger_store.list_usage_events("alice")
    assert sum(r.quantity for r in rows if r.kind == "requests") == 4
    assert [r.quantity for r in rows if r.kind == "index_bytes"] == [1234, 2048]
    assert captured.records == []  # telemetry rows are not billable events
    await ledger.close()
