"""Daily roll-ups: kept in the insert transaction from the rows actually inserted, equal to a
rebuild from the ledger, backfilled by the migration, and what day reports read."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from alembic import command
from sqlalchemy import text

from jupyter_cloudide.metering.reports import usage_report
from jupyter_cloudide.storage import MetadataStore, UsageEventIn
from jupyter_cloudide.storage.db import _alembic_config

T0 = datetime(2026, 3, 1, 23, 30, tzinfo=timezone.utc)


def rows(prefix: str, n: int = 30) -> list[UsageEventIn]:
    out = []
    for i in range(n):
        at = T0 + timedelta(minutes=7 * i)  # across midnight into 2 March
        if i % 3 == 0:
            out.append(UsageEventIn(event_id=f"{prefix}{i}", user=("alice", "bob")[i % 2],
                                    kind="kernel_busy", quantity=1.5 * i, cost=0.01 * i,
                                    kernelspec="python3", occurred_at=at))
        else:
            out.append(UsageEventIn(event_id=f"{prefix}{i}", user=("alice", "bob")[i % 2],
                                    kind="tokens", model=("a", None)[i % 5 == 0],
                                    input_tokens=i, output_tokens=2 * i, cost=0.001 * i,
                                    group="team" if i % 4 == 0 else None, occurred_at=at))
    return out


def rollups(store: MetadataStore) -> list[tuple[Any, ...]]:
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            'SELECT day, "user", "group", kind, model, kernelspec, source, route, currency, '
            "events, input_tokens, output_tokens, round(CAST(quantity AS numeric), 6), "
            "round(CAST(cost AS numeric), 9) FROM usage_daily ORDER BY 1, 2, 3, 4, 5")).all()]


def test_rollups_count_inserted_rows_once_and_match_a_rebuild(store: MetadataStore) -> None:
    batch = rows("e")
    assert store.record_usage(batch[:20]) == 20
    assert store.record_usage(batch) == 10  # a retry of the first 20 plus 10 new
    assert store.record_usage(batch[5:8] + batch[5:8]) == 0
    incremental = rollups(store)
    assert sum(r[9] for r in incremental) == 30
    assert store.rebuild_rollups() > 0
    assert rollups(store) == incremental
    assert store.rebuild_rollups(datetime(2026, 3, 2, tzinfo=timezone.utc)) > 0
    assert rollups(store) == incremental
    # day reports (roll-ups) and hour reports (ledger) agree
    since, until = datetime(2026, 3, 1, tzinfo=timezone.utc), datetime(2026, 3, 3,
                                                                      tzinfo=timezone.utc)
    for user in ("alice", "bob"):
        by_day = usage_report(store.engine, user, since=since, until=until)
        by_hour = usage_report(store.engine, user, since=since, until=until, bucket="hour")
        assert (by_day["source"], by_hour["source"]) == ("usage_daily", "usage_ledger")
        assert by_day["totals"] == by_hour["totals"]
    team = usage_report(store.engine, None, group="team", since=since, until=until)
    assert team["totals"]["calls"] == sum(1 for r in batch if r.group == "team" and r.model)


def test_the_migration_backfills_rollups_from_an_existing_ledger(db_url: str) -> None:
    with MetadataStore(db_url) as store:
        engine = store.engine
        with engine.begin() as conn:  # back to the schema before roll-ups, keep the rows
            cfg = _alembic_config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0001")
        with engine.begin() as conn:
            conn.execute(store._insert_usage, [{
                "event_id": r.event_id, "user": r.user, "group": r.group, "kind": r.kind,
                "source": r.source, "model": r.model, "kernelspec": r.kernelspec,
                "route": r.route, "input_tokens": r.input_tokens,
                "output_tokens": r.output_tokens, "quantity": r.quantity, "cost": r.cost,
                "currency": "USD", "occurred_at": r.occurred_at, "created_at": T0,
                "extra": {}} for r in rows("m")])
    with MetadataStore(db_url) as store:  # opening upgrades to head, filling usage_daily
        backfilled = rollups(store)
        store.rebuild_rollups()
        assert rollups(store) == backfilled
        assert sum(r[9] for r in backfilled) == 30
