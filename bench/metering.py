"""Usage-ledger write throughput on SQLite and PostgreSQL, and the budget check's added p50.

    . .venv/bin/activate
    python bench/metering.py            # ~1 min on 2 cores
    python bench/metering.py --quick    # smoke test

For each database: ``--events`` token/kernel rows written in batches of ``--batch`` through
``MetadataStore.record_usage`` (the ledger insert, idempotent by event id, plus the daily
roll-up upsert in the same transaction) and end to end through ``Ledger.add`` + ``flush``
(pricing, events, metrics, buffering included). The baseline in the same run is a raw DB-API
``executemany`` of the same rows into a plain table of the same columns (no unique key, no
roll-ups), one commit per batch. PostgreSQL is a throwaway cluster started like the test
suite's (tests/services.py); without initdb the PostgreSQL figures are null with a note.

``budget_check_added_ms_p50``: p50 of ``BudgetManager.reserve`` + ``settle`` for a user with
a monthly cost budget, minus the same with no budget configured (what a request pays), when
``jupyter_cloudide.metering.budgets`` provides that API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from _common import REPO, Fleet, bench_main, pct, versions

sys.path.insert(0, str(REPO / "tests"))

COLUMNS = ("event_id", "user", "group", "kind", "source", "model", "kernelspec", "route",
           "input_tokens", "output_tokens", "quantity", "cost", "currency", "occurred_at",
           "created_at", "extra")
TARGET_EVENTS_PER_S = 5000.0
TARGET_BUDGET_MS = 0.5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--checks", type=int, default=5000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.checks = 5000, 1000
    return args


def make_rows(n: int, users: int, prefix: str) -> list[Any]:
    from jupyter_cloudide.storage import UsageEventIn

    start = datetime.now(timezone.utc) - timedelta(hours=2)
    rows = []
    for i in range(n):
        at = start + timedelta(milliseconds=100 * i)
        user = f"user{i % users}"
        if i % 4 == 3:
            rows.append(UsageEventIn(event_id=f"{prefix}{i}", user=user, kind="kernel_busy",
                                     quantity=1.25, kernelspec="python3", source="user",
                                     occurred_at=at, extra={"kernel_id": "k"}))
        else:
            rows.append(UsageEventIn(event_id=f"{prefix}{i}", user=user, kind="tokens",
                                     model=("gpt-4o", "claude")[i % 2], input_tokens=1200,
                                     output_tokens=300, source="agent", route="chat",
                                     occurred_at=at, extra={"cached_tokens": 0}))
    return rows


def batches(rows: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def store_rate(url: str, args: argparse.Namespace) -> float:
    from jupyter_cloudide.storage import MetadataStore

    rows = make_rows(args.events, args.users, "s")
    with MetadataStore(url) as store:
        store.record_usage(make_rows(args.batch, args.users, "warm"))
        t0 = time.perf_counter()
        written = sum(store.record_usage(b) for b in batches(rows, args.batch))
        elapsed = time.perf_counter() - t0
        assert written == len(rows)
        assert store.record_usage(rows[: args.batch]) == 0  # idempotent replay
    return len(rows) / elapsed


def ledger_rate(url: str, args: argparse.Namespace) -> float:
    from jupyter_cloudide.metering.ledger import Ledger
    from jupyter_cloudide.metering.pricing import Pricing
    from jupyter_cloudide.storage import MetadataStore

    pricing = Pricing.from_config(
        models=[{"id": "gpt-4o", "price_per_1k": {"input": 0.0025, "output": 0.01}},
                {"id": "claude", "price_per_1k": {"input": 0.003, "output": 0.015}}],
        kernel_prices={"*": {"kernel_busy": [{"up_to_hours": 100, "per_hour": 0.1},
                                             {"per_hour": 0.05}]}})
    rows = make_rows(args.events, args.users, "l")

    async def run() -> float:
        with MetadataStore(url) as store:
            ledger = Ledger(pricing, flush_interval_s=3600)
            await ledger.start(store)
            t0 = time.perf_counter()
            for batch in batches(rows, args.batch):
                ledger.add(batch)
                await ledger.flush()
            elapsed = time.perf_counter() - t0
            await ledger.close()
        return len(rows) / elapsed

    return asyncio.run(run())


def _raw_rows(rows: list[Any]) -> list[tuple[Any, ...]]:
    import json

    now = datetime.now(timezone.utc)
    return [(r.event_id, r.user, r.group, r.kind, r.source, r.model, r.kernelspec, r.route,
             r.input_tokens, r.output_tokens, r.quantity, r.cost, r.currency,
             r.occurred_at, now, json.dumps(dict(r.extra))) for r in rows]


def sqlite_baseline(path: Path, args: argparse.Namespace) -> float:
    rows = _raw_rows(make_rows(args.events, args.users, "b"))
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"CREATE TABLE plain ({', '.join(f'{c!r}' for c in COLUMNS)})")
    insert = f"INSERT INTO plain VALUES ({', '.join('?' * len(COLUMNS))})"
    t0 = time.perf_counter()
    for batch in batches(rows, args.batch):
        conn.executemany(insert, [tuple(str(v) if isinstance(v, datetime) else v for v in r)
                                  for r in batch])
        conn.commit()
    elapsed = time.perf_counter() - t0
    conn.close()
    return len(rows) / elapsed


def pg_baseline(conninfo: str, args: argparse.Namespace) -> float:
    import psycopg

    rows = _raw_rows(make_rows(args.events, args.users, "b"))
    with psycopg.connect(conninfo) as conn:
        conn.execute('CREATE TABLE plain (event_id text, "user" text, "group" text, kind text, '
                     "source text, model text, kernelspec text, route text, "
                     "input_tokens bigint, output_tokens bigint, quantity float8, cost float8, "
                     "currency text, occurred_at timestamptz, created_at timestamptz, "
                     "extra json)")
        conn.commit()
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            for batch in batches(rows, args.batch):
                cur.executemany(f"INSERT INTO plain VALUES ({', '.join(['%s'] * len(COLUMNS))})",
                                batch)
                conn.commit()
        elapsed = time.perf_counter() - t0
    return len(rows) / elapsed


@contextlib.contextmanager
def postgres() -> Iterator[tuple[str, str] | None]:
    """A throwaway cluster as tests/services.py starts one: (SQLAlchemy URL, conninfo)."""
    from services import _as_pg_user, _find_bindir, _reap, free_port

    bindir = _find_bindir()
    if bindir is None:
        yield None
        return
    root = Path(tempfile.mkdtemp(prefix="cloudide-bench-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres", group="postgres")
    root.chmod(0o700)
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(_as_pg_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                                    "-A", "trust", "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True, timeout=120)
        port = free_port()
        # durable settings (fsync on): the figure a real deployment sees
        proc = subprocess.Popen(
            _as_pg_user([str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k",
                         str(root), "-c", "listen_addresses=127.0.0.1"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import psycopg

        admin = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(admin, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        name = f"bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        yield (f"postgresql+psycopg://postgres@127.0.0.1:{port}/{name}",
               f"host=127.0.0.1 port={port} user=postgres dbname={name}")
    finally:
        if proc is not None and proc.poll() is None:
            subprocess.run(_as_pg_user([str(bindir / "pg_ctl"), "stop", "-D", str(data),
                                        "-m", "fast"]), capture_output=True, timeout=60)
            _reap(proc, timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def budget_added_ms(url: str, args: argparse.Namespace) -> tuple[float | None, str | None]:
    try:
        from jupyter_cloudide.metering import budgets
        from jupyter_cloudide.storage import MetadataStore

        manager_cls, parse_rules = budgets.BudgetManager, budgets.parse_rules
    except (ImportError, AttributeError) as exc:
        return None, f"jupyter_cloudide.metering.budgets has no usable API ({exc})"

    async def measure(rules: list[dict[str, Any]], store: Any) -> float:
        manager = manager_cls(parse_rules(rules), store=store)
        samples = []
        for i in range(args.checks + 50):
            t0 = time.perf_counter()
            reservation = await manager.reserve("user1", ("team",), 0.01)
            manager.settle(reservation)
            if i >= 50:  # the first check loads the period's spend
                samples.append((time.perf_counter() - t0) * 1000)
        return pct(samples, 50)

    async def run() -> float:
        with MetadataStore(url) as store:
            with_budget = await measure([{"scope": "user", "period": "month",
                                          "metric": "cost", "limit": 1e9}], store)
            without = await measure([], store)
        return max(0.0, with_budget - without)

    try:
        return round(asyncio.run(run()), 4), None
    except Exception as exc:
        return None, f"budget check failed: {type(exc).__name__}: {exc}"


def run(args: argparse.Namespace, fleet: Fleet) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cloudide-bench-metering-") as tmp:
        base = Path(tmp)
        out["sqlite_record_usage_events_per_s"] = round(
            store_rate(f"sqlite:///{base / 'store.db'}", args))
        out["sqlite_ledger_events_per_s"] = round(
            ledger_rate(f"sqlite:///{base / 'ledger.db'}", args))
        out["baseline_sqlite_raw_executemany_events_per_s"] = round(
            sqlite_baseline(base / "raw.db", args))
        added, note = budget_added_ms(f"sqlite:///{base / 'budget.db'}", args)
        out["budget_check_added_ms_p50"] = added
        if note:
            out["budget_note"] = note
    with postgres() as pg:
        if pg is None:
            out.update(postgres_record_usage_events_per_s=None,
                       postgres_ledger_events_per_s=None,
                       baseline_postgres_raw_executemany_events_per_s=None,
                       postgres_note="initdb/postgres not found: PostgreSQL skipped")
        else:
            url, conninfo = pg
            out["postgres_record_usage_events_per_s"] = round(store_rate(url, args))
            out["postgres_ledger_events_per_s"] = round(ledger_rate(url, args))
            out["baseline_postgres_raw_executemany_events_per_s"] = round(
                pg_baseline(conninfo, args))
    rates = [v for k, v in out.items() if k.endswith("events_per_s") and v is not None
             and not k.startswith("baseline")]
    out["targets"] = {
        "events_per_s_batched_ge_5000": bool(rates) and min(rates) >= TARGET_EVENTS_PER_S,
        "budget_check_added_ms_p50_le_0_5": None if out["budget_check_added_ms_p50"] is None
        else out["budget_check_added_ms_p50"] <= TARGET_BUDGET_MS,
    }
    return out


def header(args: argparse.Namespace) -> dict[str, Any]:
    return {"versions": versions("sqlalchemy", "psycopg", "alembic"),
            "params": {"events": args.events, "batch": args.batch, "users": args.users,
                       "checks": args.checks, "quick": args.quick, "cpus": os.cpu_count()}}


def main(argv: list[str] | None = None) -> int:
    return bench_main("metering", argv, parse_args, run, header, separators=(",", ":"))


if __name__ == "__main__":
    sys.exit(main())
