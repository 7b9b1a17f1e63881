"""Usage reports from the ledger: totals, per-model and per-user figures, time series, CSV.

The ledger holds one row per metered event (a model call's tokens, a kernel's busy or
lifetime segment, a window's request count, an index-size snapshot). Reports group in the
database - by kind, model, user and time bucket - so a month of a heavy team is one small
result set. Day buckets over whole UTC days read the daily roll-ups (``usage_daily``, kept in
the ledger's insert transaction); hour buckets, or windows not on day boundaries, read the
ledger itself, bucketed with each dialect's own function (SQLite ``strftime``, PostgreSQL
``date_trunc``). Timestamps are UTC on both, so buckets are UTC days or hours.

A report is about one user, one group (rows billed to that group), or everyone (admins).

SQLAlchemy is imported on the first report, not with the routes (server start-up stays light).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = ["BUCKETS", "csv_text", "ledger_csv", "period", "series_csv", "usage_report"]

BUCKETS = ("day", "hour")
_SQLITE_FORMAT = {"day": "%Y-%m-%dT00:00:00", "hour": "%Y-%m-%dT%H:00:00"}
#: cells a spreadsheet would run as a formula (CSV injection); escaped with a leading quote
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
LEDGER_CSV_COLUMNS = ("occurred_at", "event_id", "user", "group", "kind", "source", "model",
                      "kernelspec", "route", "input_tokens", "output_tokens", "quantity",
                      "cost", "currency")
SERIES_CSV_COLUMNS = ("t", "user", "kind", "model", "route", "events", "input_tokens",
                      "output_tokens", "quantity", "cost")


def _bucket(engine: Engine, bucket: str) -> Any:
    from sqlalchemy import func

    from ..storage.models import UsageLedger

    if engine.dialect.name == "sqlite":
        return func.strftime(_SQLITE_FORMAT[bucket], UsageLedger.occurred_at)
    return func.date_trunc(bucket, func.timezone("UTC", UsageLedger.occurred_at))


def _iso(value: Any) -> str:
    """A bucket value (SQLite text, PostgreSQL naive UTC timestamp, a date) as ISO 8601."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    else:
        moment = datetime.fromisoformat(str(value)).replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat()


def _midnight(value: datetime) -> bool:
    return value.astimezone(timezone.utc).time() == datetime.min.time()


def _grouped(engine: Engine, *, user: str | None, group: str | None, since: datetime,
             until: datetime, bucket: str) -> tuple[list[tuple[Any, ...]], str]:
    """``(t, user, kind, model, route, events, in, out, quantity, cost)`` per bucket, and
    which table answered (``usage_daily`` or ``usage_ledger``)."""
    from sqlalchemy import func, select

    from ..storage.db import group_clause
    from ..storage.models import UsageDaily, UsageLedger

    if bucket == "day" and _midnight(since) and _midnight(until):
        d = UsageDaily
        clauses: list[Any] = [d.day >= since.astimezone(timezone.utc).date(),
                              d.day < until.astimezone(timezone.utc).date()]
        if user is not None:
            clauses.append(d.user == user)
        if group is not None:
            clauses.append(group_clause(d.user, d.group, group))
        keys = (d.day, d.user, d.kind, d.model, d.route)
        statement = (select(*keys, func.sum(d.events), func.sum(d.input_tokens),
                            func.sum(d.output_tokens), func.sum(d.quantity), func.sum(d.cost))
                     .where(*clauses).group_by(*keys).order_by(d.day))
        source = "usage_daily"
    else:
        u = UsageLedger
        when = _bucket(engine, bucket).label("t")
        clauses = [u.occurred_at >= since, u.occurred_at < until]
        if user is not None:
            clauses.append(u.user == user)
        if group is not None:
            clauses.append(group_clause(u.user, u.group, group))
        lkeys = (when, u.user, u.kind, u.model, u.route)
        statement = (select(*lkeys, func.count(u.id), func.sum(u.input_tokens),
                            func.sum(u.output_tokens), func.sum(u.quantity), func.sum(u.cost))
                     .where(*clauses).group_by(*lkeys).order_by(when))
        source = "usage_ledger"
    with engine.connect() as connection:
        rows = [tuple(r) for r in connection.execute(statement).all()]
    return rows, source


def _index_bytes(engine: Engine, *, user: str | None, group: str | None, since: datetime,
                 until: datetime) -> dict[str, float]:
    """Each user's latest index-size snapshot in the window (bytes)."""
    from sqlalchemy import and_, func, select

    from ..metering.ledger import KIND_INDEX_BYTES
    from ..storage.db import group_clause
    from ..storage.models import UsageLedger as u

    clauses: list[Any] = [u.kind == KIND_INDEX_BYTES, u.occurred_at >= since,
                          u.occurred_at < until]
    if user is not None:
        clauses.append(u.user == user)
    if group is not None:
        clauses.append(group_clause(u.user, u.group, group))
    latest = (select(u.user.label("who"), func.max(u.occurred_at).label("at"))
              .where(*clauses).group_by(u.user).subquery())
    statement = select(u.user, func.max(u.quantity)).join(
        latest, and_(u.user == latest.c.who, u.occurred_at == latest.c.at)
    ).where(u.kind == KIND_INDEX_BYTES).group_by(u.user)
    with engine.connect() as connection:
        return {str(w): float(q) for w, q in connection.execute(statement).all()}


def _zero() -> dict[str, Any]:
    return {"cost": 0.0, "input_tokens": 0, "output_tokens": 0, "calls": 0,
            "kernel_busy_seconds": 0.0, "kernel_seconds": 0.0, "requests": 0}


def usage_report(engine: Engine, user: str | None, *, since: datetime, until: datetime,
                 bucket: str = "day", group: str | None = None) -> dict[str, Any]:
    """Totals, per-model, per-user and per-route figures and series over ``[since, until)``
    for ``user`` (None with ``group``: the group's rows; both None: everyone)."""
    from .kernel_time import KIND_BUSY, KIND_LIFETIME
    from .ledger import KIND_INDEX_BYTES, KIND_REQUESTS

    if bucket not in BUCKETS:
        raise ValueError(f"bucket: one of {', '.join(BUCKETS)}")
    rows, source = _grouped(engine, user=user, group=group, since=since, until=until,
                            bucket=bucket)
    totals = _zero()
    models: dict[str, dict[str, Any]] = {}
    users: dict[str, dict[str, Any]] = {}
    routes: dict[str, int] = {}
    series: dict[tuple[str, str], dict[str, Any]] = {}
    kernel: dict[str, dict[str, Any]] = {}
    for t, who, kind, model, route, count, tin, tout, quantity, cost in rows:
        at = _iso(t)
        count, tin, tout = int(count or 0), int(tin or 0), int(tout or 0)
        quantity, cost = float(quantity or 0.0), float(cost or 0.0)
        model = model or None
        per_user = users.setdefault(who, {"user": who, **_zero()})
        for target in (totals, per_user):
            target["cost"] += cost
        if kind in (KIND_BUSY, KIND_LIFETIME):
            point = kernel.setdefault(at, {"t": at, "busy_seconds": 0.0, "seconds": 0.0})
            field = "busy_seconds" if kind == KIND_BUSY else "seconds"
            point[field] += quantity
            for target in (totals, per_user):
                target["kernel_busy_seconds" if kind == KIND_BUSY else "kernel_seconds"] += \
                    quantity
            continue
        if kind == KIND_REQUESTS:
            routes[route or "(none)"] = routes.get(route or "(none)", 0) + int(quantity)
            for target in (totals, per_user):
                target["requests"] += int(quantity)
            continue
        if kind == KIND_INDEX_BYTES or model is None:
            continue  # snapshots (below) and other unpriced kinds: not part of these figures
        for target in (totals, per_user):
            target["input_tokens"] += tin
            target["output_tokens"] += tout
            target["calls"] += count
        entry = models.setdefault(model, {"model": model, "cost": 0.0, "input_tokens": 0,
                                          "output_tokens": 0, "calls": 0})
        entry["cost"] += cost
        entry["input_tokens"] += tin
        entry["output_tokens"] += tout
        entry["calls"] += count
        point = series.setdefault((at, model), {"t": at, "model": model, "cost": 0.0,
                                                "input_tokens": 0, "output_tokens": 0})
        point["cost"] += cost
        point["input_tokens"] += tin
        point["output_tokens"] += tout
    index = _index_bytes(engine, user=user, group=group, since=since, until=until)
    totals["index_bytes"] = sum(index.values())
    for who, size in index.items():
        users.setdefault(who, {"user": who, **_zero()})["index_bytes"] = size
    for entry in (totals, *models.values(), *users.values(), *series.values()):
        entry["cost"] = round(entry["cost"], 6)
    return {
        "user": user, "group": group, "since": since.isoformat(), "until": until.isoformat(),
        "bucket": bucket, "source": source,
        "totals": totals,
        "models": sorted(models.values(), key=lambda m: (-m["cost"], m["model"])),
        "users": sorted(users.values(), key=lambda m: (-m["cost"], m["user"])),
        "routes": [{"route": r, "requests": n} for r, n in sorted(routes.items())],
        "series": sorted(series.values(), key=lambda p: (p["t"], p["model"])),
        "kernel_series": [kernel[t] for t in sorted(kernel)],
    }


def series_rows(engine: Engine, user: str | None, *, since: datetime, until: datetime,
                bucket: str = "day", group: str | None = None) -> list[dict[str, Any]]:
    """The report's grouped rows, one per bucket, user, kind, model and route (CSV)."""
    rows, _ = _grouped(engine, user=user, group=group, since=since, until=until,
                       bucket=bucket)
    return [{"t": _iso(t), "user": who, "kind": kind, "model": model or "",
             "route": route or "", "events": int(n or 0), "input_tokens": int(tin or 0),
             "output_tokens": int(tout or 0), "quantity": float(q or 0.0),
             "cost": round(float(c or 0.0), 9)}
            for t, who, kind, model, route, n, tin, tout, q, c in rows]


def safe_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not evaluate: text starting with ``= + - @`` (or
    a tab or carriage return) gets a leading apostrophe. Numbers stay numbers."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_text(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    """CSV with a header row, every text cell passed through :func:`safe_cell`."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([safe_cell("" if row.get(c) is None else row.get(c)) for c in columns])
    return out.getvalue()


def ledger_csv(records: Iterable[Any]) -> str:
    """Ledger rows (``UsageEventRecord``) as CSV, oldest first."""
    return csv_text(LEDGER_CSV_COLUMNS, (
        {**{c: getattr(r, c) for c in LEDGER_CSV_COLUMNS if c != "occurred_at"},
         "occurred_at": r.occurred_at.isoformat()} for r in records))


def series_csv(rows: Iterable[dict[str, Any]]) -> str:
    return csv_text(SERIES_CSV_COLUMNS, rows)


def period(days: int, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The last ``days`` whole UTC days up to the end of today."""
    now = now or datetime.now(timezone.utc)
    end = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return end - timedelta(days=days), end
