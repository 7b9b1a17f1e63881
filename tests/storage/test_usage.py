"""Usage ledger: idempotent batch inserts and correct totals."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from jupyter_cloudide.storage import MetadataStore, UsageEventIn

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def _tokens(event_id: str, user: str = "alice", **kw: object) -> UsageEventIn:
    base: dict[str, object] = {
        "kind": "llm_tokens",
        "model": "gpt-4o",
        "source": "agent",
        "input_tokens": 100,
        "output_tokens": 20,
        "quantity": 1.0,
        "cost": 0.01,
        "occurred_at": T0,
    }
    base.update(kw)
    return UsageEventIn(event_id=event_id, user=user, **base)  # type: ignore[arg-type]


def _ledger_count(store: MetadataStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM usage_ledger")).scalar_one())


def test_record_usage_round_trip(store: MetadataStore) -> None:
    event = _tokens(
        "e-1",
        group="team-a",
        kernelspec=None,
        route="/v1/chat/completions",
        extra={"request_id": "r1"},
    )
    assert store.record_usage([event]) == 1
    (row,) = store.list_usage_events("alice")
    assert (row.event_id, row.user, row.group, row.kind) == ("e-1", "alice", "team-a", "llm_tokens")
    assert (row.model, row.source, row.route) == ("gpt-4o", "agent", "/v1/chat/completions")
    assert (row.input_tokens, row.output_tokens, row.quantity) == (100, 20, 1.0)
    assert row.cost == pytest.approx(0.01)
    assert row.currency == "USD"
    assert row.occurred_at == T0
    assert row.extra == {"request_id": "r1"}


def test_same_event_id_in_one_batch_counts_once(store: MetadataStore) -> None:
    assert store.record_usage([_tokens("dup"), _tokens("dup"), _tokens("other")]) == 2
    assert _ledger_count(store) == 2


def test_same_event_id_across_batches_counts_once(store: MetadataStore) -> None:
    assert store.record_usage([_tokens("a"), _tokens("b")]) == 2
    assert store.record_usage([_tokens("b"), _tokens("c")]) == 1
    assert store.record_usage([_tokens("a"), _tokens("b"), _tokens("c")]) == 0
    assert store.record_usage([]) == 0
    assert _ledger_count(store) == 3
    assert store.usage_totals("alice")["events"] == 3


def test_large_batch_is_chunked(store: MetadataStore) -> None:
    events = [_tokens(f"bulk-{i}") for i in range(437)]
    assert store.record_usage(events) == 437
    assert store.record_usage([*events[::2], _tokens("bulk-new")]) == 1
    assert _ledger_count(store) == 438


def test_concurrent_retries_are_counted_once(store: MetadataStore) -> None:
    events = [_tokens(f"c-{i}") for i in range(20)]
    barrier = threading.Barrier(6)

    def send(_: int) -> int:
        barrier.wait()
        return store.record_usage(events)

    with ThreadPoolExecutor(max_workers=6) as pool:
        inserted = sum(pool.map(send, range(6)))
    assert inserted == 20
    assert _ledger_count(store) == 20


def test_usage_totals_by_kind_and_model(store: MetadataStore) -> None:
    store.record_usage(
        [
            _tokens("t1", model="gpt-4o", input_tokens=100, output_tokens=10, cost=0.5),
            _tokens("t2", model="gpt-4o", input_tokens=50, output_tokens=5, cost=0.25),
            _tokens("t3", model="claude", input_tokens=7, output_tokens=3, cost=1.0),
            _tokens(
                "k1",
                kind="kernel_busy",
                model=None,
                input_tokens=0,
                output_tokens=0,
                quantity=12.5,
                cost=0.0,
                kernelspec="python3",
                source="user",
            ),
            _tokens(
                "k2",
                kind="kernel_busy",
                model=None,
                input_tokens=0,
                output_tokens=0,
                quantity=2.5,
                cost=0.0,
                kernelspec="python3",
            ),
            _tokens(
                "r1",
                kind="request",
                model=None,
                input_tokens=0,
                output_tokens=0,
                quantity=1,
                cost=0.0,
                route="/v1/models",
            ),
            _tokens("bob-1", user="bob", input_tokens=1000, cost=9.0),
        ]
    )
    totals = store.usage_totals("alice")
    assert totals["user"] == "alice"
    assert totals["events"] == 6
    assert totals["input_tokens"] == 157
    assert totals["output_tokens"] == 18
    assert totals["cost"] == pytest.approx(1.75)
    assert totals["by_currency"] == {"USD": pytest.approx(1.75)}

    by_kind = totals["by_kind"]
    assert set(by_kind) == {"llm_tokens", "kernel_busy", "request"}
    assert by_kind["llm_tokens"]["events"] == 3
    assert by_kind["llm_tokens"]["input_tokens"] == 157
    assert by_kind["llm_tokens"]["cost"] == pytest.approx(1.75)
    assert by_kind["kernel_busy"]["quantity"] == pytest.approx(15.0)
    assert by_kind["kernel_busy"]["events"] == 2
    assert by_kind["request"]["quantity"] == pytest.approx(1.0)

    by_model = totals["by_model"]
    assert set(by_model) == {"gpt-4o", "claude"}
    assert by_model["gpt-4o"]["input_tokens"] == 150
    assert by_model["gpt-4o"]["output_tokens"] == 15
    assert by_model["gpt-4o"]["cost"] == pytest.approx(0.75)
    assert by_model["claude"]["cost"] == pytest.approx(1.0)

    everyone = store.usage_totals(None)
    assert everyone["events"] == 7
    assert everyone["cost"] == pytest.approx(10.75)
    assert store.usage_totals("nobody")["events"] == 0
    assert store.usage_totals("nobody")["by_kind"] == {}


def test_usage_totals_time_window(store: MetadataStore) -> None:
    store.record_usage(
        [
            _tokens("old", occurred_at=T0 - timedelta(days=1), cost=1.0),
            _tokens("now", occurred_at=T0, cost=2.0),
            _tokens("later", occurred_at=T0 + timedelta(hours=1), cost=4.0),
        ]
    )
    # Offsets other than UTC are normalised: this is T0.
    t0_in_plus2 = T0.astimezone(timezone(timedelta(hours=2)))
    assert store.usage_totals("alice", since=t0_in_plus2)["cost"] == pytest.approx(6.0)
    assert store.usage_totals("alice", until=T0)["cost"] == pytest.approx(1.0)
    window = store.usage_totals("alice", since=T0, until=T0 + timedelta(minutes=30))
    assert window["cost"] == pytest.approx(2.0)
    assert window["since"] == T0.isoformat()
    events = store.list_usage_events("alice", since=T0)
    assert [e.event_id for e in events] == ["now", "later"]


def test_group_filter(store: MetadataStore) -> None:
    store.record_usage(
        [
            _tokens("g1", group="team-a", cost=1.0),
            _tokens("g2", user="bob", group="team-a", cost=2.0),
            _tokens("g3", cost=4.0),
        ]
    )
    assert store.usage_totals(None, group="team-a")["cost"] == pytest.approx(3.0)
    assert store.usage_totals("alice", group="team-a")["cost"] == pytest.approx(1.0)


def test_naive_datetimes_are_rejected(store: MetadataStore) -> None:
    with pytest.raises(ValueError):
        store.record_usage([_tokens("naive", occurred_at=datetime(2024, 1, 1))])
    with pytest.raises(ValueError):
        store.usage_totals("alice", since=datetime(2024, 1, 1))
    assert _ledger_count(store) == 0
