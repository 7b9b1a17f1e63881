"""Usage reports from the ledger: totals, per-model figures and time series for one user.

The ledger holds one row per metered event (a model call's tokens, a kernel's busy or
lifetime segment). Reports group in the database - by kind, model and time bucket - so a
month of a heavy user is one small result set, not every row. Buckets are computed in SQL
with each dialect's own function (SQLite ``strftime``, PostgreSQL ``date_trunc``); the
ledger's timestamps are UTC on both, so buckets are UTC days or hours.

SQLAlchemy is imported on the first report, not with the routes (server start-up stays light).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = ["BUCKETS", "usage_report"]

BUCKETS = ("day", "hour")
_SQLITE_FORMAT = {"day": "%Y-%m-%dT00:00:00", "hour": "%Y-%m-%dT%H:00:00"}


def _bucket(engine: Engine, bucket: str) -> Any:
    from sqlalchemy import func

    from ..storage.models import UsageLedger

    if engine.dialect.name == "sqlite":
        return func.strftime(_SQLITE_FORMAT[bucket], UsageLedger.occurred_at)
    return func.date_trunc(bucket, func.timezone("UTC", UsageLedger.occurred_at))


def _iso(value: Any) -> str:
    """A bucket value (SQLite text, PostgreSQL naive UTC timestamp) as ISO 8601 with UTC."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    else:
        moment = datetime.fromisoformat(str(value)).replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat()


def usage_report(engine: Engine, user: str, *, since: datetime, until: datetime,
                 bucket: str = "day") -> dict[str, Any]:
    """Totals, per-model figures and series of ``user`` over ``[since, until)``."""
    from sqlalchemy import func, select

    from ..storage.models import UsageLedger
    from .kernel_time import KIND_BUSY, KIND_LIFETIME

    if bucket not in BUCKETS:
        raise ValueError(f"bucket: one of {', '.join(BUCKETS)}")
    when = _bucket(engine, bucket).label("t")
    statement = (
        select(
            when,
            UsageLedger.kind,
            UsageLedger.model,
            func.count(UsageLedger.id),
            func.coalesce(func.sum(UsageLedger.input_tokens), 0),
            func.coalesce(func.sum(UsageLedger.output_tokens), 0),
            func.coalesce(func.sum(UsageLedger.quantity), 0.0),
            func.coalesce(func.sum(UsageLedger.cost), 0.0),
        )
        .where(UsageLedger.user == user, UsageLedger.occurred_at >= since,
               UsageLedger.occurred_at < until)
        .group_by(when, UsageLedger.kind, UsageLedger.model)
        .order_by(when)
    )
    with engine.connect() as connection:
        rows = connection.execute(statement).all()
    totals = {"cost": 0.0, "input_tokens": 0, "output_tokens": 0, "calls": 0,
              "kernel_busy_seconds": 0.0, "kernel_seconds": 0.0}
    models: dict[str, dict[str, Any]] = {}
    series: list[dict[str, Any]] = []
    kernel: dict[str, dict[str, Any]] = {}
    for t, kind, model, count, tin, tout, quantity, cost in rows:
        at = _iso(t)
        totals["cost"] += float(cost)
        if kind in (KIND_BUSY, KIND_LIFETIME):
            point = kernel.setdefault(at, {"t": at, "busy_seconds": 0.0, "seconds": 0.0})
            field = "busy_seconds" if kind == KIND_BUSY else "seconds"
            point[field] += float(quantity)
            totals["kernel_busy_seconds" if kind == KIND_BUSY else "kernel_seconds"] += \
                float(quantity)
            continue
        if model is None:
            continue  # requests by route and other unpriced kinds: not part of these figures
        totals["input_tokens"] += int(tin)
        totals["output_tokens"] += int(tout)
        totals["calls"] += int(count)
        entry = models.setdefault(model, {"model": model, "cost": 0.0, "input_tokens": 0,
                                          "output_tokens": 0, "calls": 0})
        entry["cost"] += float(cost)
        entry["input_tokens"] += int(tin)
        entry["output_tokens"] += int(tout)
        entry["calls"] += int(count)
        series.append({"t": at, "model": model, "cost": round(float(cost), 6),
                       "input_tokens": int(tin), "output_tokens": int(tout)})
    totals["cost"] = round(totals["cost"], 6)
    for entry in models.values():
        entry["cost"] = round(entry["cost"], 6)
    return {
        "user": user, "since": since.isoformat(), "until": until.isoformat(), "bucket": bucket,
        "totals": totals,
        "models": sorted(models.values(), key=lambda m: (-m["cost"], m["model"])),
        "series": series,
        "kernel_series": [kernel[t] for t in sorted(kernel)],
    }


def period(days: int, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The last ``days`` whole UTC days up to the end of today."""
    now = now or datetime.now(timezone.utc)
    end = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return end - timedelta(days=days), end
