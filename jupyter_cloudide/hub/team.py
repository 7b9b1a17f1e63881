"""Team usage on the hub: the rows user servers report, their sums per user and group, and
the spend of a caller's team mates that the caller's server needs for group budgets.

Domain code without tornado: the handlers parse HTTP, this module decides. It keeps its rows
in the ordinary usage ledger table of a :class:`~jupyter_cloudide.storage.db.MetadataStore`
of its own (a separate database from every user server's), so idempotency by ``event_id``,
both dialects and the schema migrations come for free.

Why event ids are namespaced: a server's ids are unique on that server only (two servers may
both have written ``v1:<uuid>:0``, or a kernel row whose hash happens to match), so the stored
id is ``<user hash>:<event id>``; one user's replay is absorbed, another user's row is never
mistaken for it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from ..errors import ForbiddenError, InvalidInputError
from ..metering.budgets import METRICS, PERIODS, parse_rules, period_bounds

if TYPE_CHECKING:
    from ..storage.db import MetadataStore, UsageEventIn

__all__ = [
    "KIND_KERNEL_BUSY",
    "METRICS",
    "PERIODS",
    "ROW_FIELDS",
    "BudgetRule",
    "TeamLedger",
    "hub_event_id",
    "parse_budget_rules",
    "parse_rows",
]

KIND_KERNEL_BUSY = "kernel_busy"
#: the ledger column of ``event_id`` is 128 characters
EVENT_ID_MAX = 128
_TEXT_MAX = 255
#: the fields a reported row may carry; ``id``, ``created_at`` and ``extra`` are accepted and
#: dropped (the server's own row id and kernel ids mean nothing on the hub)
ROW_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    # name: (types, required)
    "event_id": (str, True),
    "user": (str, True),
    "kind": (str, True),
    "group": ((str, type(None)), False),
    "source": ((str, type(None)), False),
    "model": ((str, type(None)), False),
    "kernelspec": ((str, type(None)), False),
    "route": ((str, type(None)), False),
    "input_tokens": (int, False),
    "output_tokens": (int, False),
    "quantity": ((int, float), False),
    "cost": ((int, float), False),
    "currency": (str, False),
    "occurred_at": (str, True),
}
_DROPPED = frozenset({"id", "created_at", "extra"})
_TEXT_LIMITS = {"event_id": 200, "kind": 64, "source": 32, "currency": 8}


def hub_event_id(user: str, event_id: str) -> str:
    """The id a reported row is stored under: the user's namespace, then the server's id
    (hashed when the two would not fit the column, still deterministic so replays match)."""
    ns = hashlib.sha256(user.encode("utf-8")).hexdigest()[:16]
    stored = f"{ns}:{event_id}"
    if len(stored) <= EVENT_ID_MAX:
        return stored
    return f"{ns}:h:{hashlib.sha256(event_id.encode('utf-8')).hexdigest()}"


def _field_error(index: int, name: str, message: str) -> InvalidInputError:
    return InvalidInputError(f"rows[{index}].{name}: {message}")


def parse_rows(user: str, body: Any, *, max_rows: int) -> list[UsageEventIn]:
    """Validate a report body ``{"rows": [...]}`` from ``user``'s server into ledger rows.

    Raises InvalidInputError (400) naming the first bad field, ForbiddenError (403) when a row
    belongs to somebody else: a server reports its own user's usage and nobody else's.
    """
    from ..storage.db import UsageEventIn

    if not isinstance(body, dict):
        raise InvalidInputError("body: expected a JSON object {\"rows\": [...]}")
    unknown = sorted(set(body) - {"rows"})
    if unknown:
        raise InvalidInputError(f"{unknown[0][:64]}: unknown field")
    rows = body.get("rows")
    if not isinstance(rows, list):
        raise InvalidInputError("rows: expected an array")
    if len(rows) > max_rows:
        raise InvalidInputError(f"rows: at most {max_rows} rows per request")
    parsed: list[UsageEventIn] = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InvalidInputError(f"rows[{index}]: expected an object")
        for name in row:
            if name not in ROW_FIELDS and name not in _DROPPED:
                raise _field_error(index, str(name)[:64], "unknown field")
        values: dict[str, Any] = {}
        for name, (types, required) in ROW_FIELDS.items():
            if name not in row:
                if required:
                    raise _field_error(index, name, "required")
                continue
            value = row[name]
            # bool is an int in Python, never a count here
            if isinstance(value, bool) or not isinstance(value, types):
                raise _field_error(index, name, "wrong type")
            if isinstance(value, str):
                if not value and name in ("event_id", "user", "kind"):
                    raise _field_error(index, name, "must not be empty")
                if len(value) > _TEXT_LIMITS.get(name, _TEXT_MAX):
                    raise _field_error(index, name, "too long")
                if "\x00" in value:
                    raise _field_error(index, name, "contains NUL")
            elif isinstance(value, int | float) and (
                    not math.isfinite(value) or value < 0 or value > 1e15):
                raise _field_error(index, name, "must be a finite number >= 0")
            values[name] = value
        if values["user"] != user:
            raise ForbiddenError(
                f"rows[{index}].user: a server may report only its own user's usage")
        try:
            occurred = datetime.fromisoformat(values["occurred_at"])
        except ValueError:
            raise _field_error(index, "occurred_at", "not an ISO 8601 time") from None
        if occurred.tzinfo is None:
            raise _field_error(index, "occurred_at", "needs a UTC offset")
        parsed.append(UsageEventIn(
            event_id=hub_event_id(user, values["event_id"]), user=user, kind=values["kind"],
            group=values.get("group"), source=values.get("source"), model=values.get("model"),
            kernelspec=values.get("kernelspec"), route=values.get("route"),
            input_tokens=int(values.get("input_tokens", 0)),
            output_tokens=int(values.get("output_tokens", 0)),
            quantity=float(values.get("quantity", 0.0)), cost=float(values.get("cost", 0.0)),
            currency=values.get("currency") or "USD", occurred_at=occurred,
            extra={"server_event_id": values["event_id"][:EVENT_ID_MAX]},
        ))
    return parsed


@dataclass(frozen=True)
class BudgetRule:
    """A team budget configured on the service (the same shape servers use)."""

    scope: str
    period: str
    metric: str
    limit: float
    warn_percent: float | None = None

    @property
    def group(self) -> str | None:
        """The group of a ``group:<name>`` scope, else None."""
        return self.scope[len("group:"):] if self.scope.startswith("group:") else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scope": self.scope, "period": self.period,
                               "metric": self.metric, "limit": self.limit}
        if self.warn_percent is not None:
            out["warn_percent"] = self.warn_percent
        return out


def parse_budget_rules(raw: Iterable[Mapping[str, Any]]) -> list[BudgetRule]:
    """Check the ``budgets`` setting at start-up (a typo must not silently disable a cap).
    Only ``group:<name>`` scopes make sense on the hub: a user's own budget is its server's.
    The rest is checked by the servers' own parser, so the hub never hands out a rule they
    would refuse (``BudgetManager.set_remote``)."""
    items = list(raw)
    for index, item in enumerate(items):
        scope = item.get("scope") if isinstance(item, Mapping) else None
        if not isinstance(scope, str) or not scope.startswith("group:"):
            raise ValueError(f"budgets[{index}].scope: expected 'group:<name>'")
        if "period" not in item:
            raise ValueError(f"budgets[{index}].period: one of {', '.join(PERIODS)}")
    # warn_percent left out (or None): the servers' default applies
    given = [{k: v for k, v in item.items() if not (k == "warn_percent" and v is None)}
             for item in items]
    return [BudgetRule(rule.scope, rule.period, rule.metric, rule.limit,
                       rule.warn_percent if "warn_percent" in item else None)
            for rule, item in zip(parse_rules(given, where="budgets"), given, strict=True)]


def _empty_totals() -> dict[str, Any]:
    return {"events": 0, "input_tokens": 0, "output_tokens": 0, "cost": 0.0,
            "kernel_seconds": 0.0}


class TeamLedger:
    """The hub's ledger: reported rows in, sums per user, group and day out.

    Methods are blocking (SQLAlchemy); callers run them through ``store.call``.
    """

    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    def record(self, rows: list[UsageEventIn]) -> int:
        """Store rows; replays (same user, same event id) are skipped. Returns rows added."""
        return self.store.record_usage(rows)

    def totals_by_user(self, since: datetime, until: datetime,
                       users: Collection[str] | None = None) -> dict[str, dict[str, Any]]:
        """Per user over ``[since, until)``: events, tokens, cost and kernel busy seconds."""
        from sqlalchemy import case, func, select

        from ..storage.models import UsageLedger as L

        busy = case((L.kind == KIND_KERNEL_BUSY, L.quantity), else_=0.0)
        statement = (
            select(L.user, func.count(L.id), func.coalesce(func.sum(L.input_tokens), 0),
                   func.coalesce(func.sum(L.output_tokens), 0),
                   func.coalesce(func.sum(L.cost), 0.0), func.coalesce(func.sum(busy), 0.0))
            .where(L.occurred_at >= since, L.occurred_at < until)
            .group_by(L.user)
        )
        if users is not None:
            if not users:
                return {}
            statement = statement.where(L.user.in_(sorted(users)))
        with self.store.engine.connect() as conn:
            result = conn.execute(statement).all()
        return {
            str(user): {"events": int(n), "input_tokens": int(tin), "output_tokens": int(tout),
                        "cost": float(cost), "kernel_seconds": float(ks)}
            for user, n, tin, tout, cost, ks in result
        }

    def daily_by_user(self, since: datetime, until: datetime,
                      users: Collection[str] | None = None) -> list[dict[str, Any]]:
        """Per UTC day and user over ``[since, until)``: tokens, cost, kernel seconds (plots)."""
        from sqlalchemy import case, func, select

        from ..storage.models import UsageLedger as L

        if self.store.dialect == "sqlite":
            day: Any = func.strftime("%Y-%m-%d", L.occurred_at)
        else:
            day = func.to_char(func.timezone("UTC", L.occurred_at), "YYYY-MM-DD")
        busy = case((L.kind == KIND_KERNEL_BUSY, L.quantity), else_=0.0)
        statement = (
            select(day.label("d"), L.user,
                   func.coalesce(func.sum(L.input_tokens + L.output_tokens), 0),
                   func.coalesce(func.sum(L.cost), 0.0), func.coalesce(func.sum(busy), 0.0))
            .where(L.occurred_at >= since, L.occurred_at < until)
            .group_by(day, L.user).order_by(day, L.user)
        )
        if users is not None:
            if not users:
                return []
            statement = statement.where(L.user.in_(sorted(users)))
        with self.store.engine.connect() as conn:
            result = conn.execute(statement).all()
        return [{"day": str(d), "user": str(u), "tokens": int(t), "cost": float(c),
                 "kernel_seconds": float(k)} for d, u, t, c, k in result]

    def report(self, *, since: datetime, until: datetime, members: Mapping[str, Collection[str]],
               users: Collection[str] | None = None) -> dict[str, Any]:
        """The admin report: per user, per group (current hub membership) and per day.

        ``users`` narrows it (a group's members, or one user); groups are summed from the
        per-user figures, so a user in two groups counts in both, never twice in one.
        """
        by_user = self.totals_by_user(since, until, users)
        groups: dict[str, dict[str, Any]] = {}
        for group, names in sorted(members.items()):
            total = _empty_totals()
            present = [u for u in sorted(names) if users is None or u in users]
            if users is not None and not present:
                continue
            for user in present:
                figures = by_user.get(user)
                if figures:
                    for key in total:
                        total[key] += figures[key]
            groups[group] = {**total, "members": present}
        total = _empty_totals()
        for figures in by_user.values():
            for key in total:
                total[key] += figures[key]
        return {
            "since": since.isoformat(), "until": until.isoformat(),
            "total": total,
            "users": [{"user": u, **by_user[u]} for u in sorted(by_user)],
            "groups": [{"group": g, **v} for g, v in groups.items()],
            "daily": self.daily_by_user(since, until, users),
        }

    def others_spend(self, caller: str, groups: Collection[str],
                     members: Mapping[str, Collection[str]],
                     now: datetime | None = None) -> dict[str, dict[str, float]]:
        """For each of the caller's groups, what its other members spent this day and month.

        ``{"group:<g>": {"day": cost, "month": cost, "day:kernel_seconds": s,
        "month:kernel_seconds": s}}``. The caller's own rows are left out: its server counts
        them from its own ledger, which is also more current than the hub's copy.
        """
        now = now or datetime.now(timezone.utc)
        mates = {g: {u for u in members.get(g, ()) if u != caller} for g in groups}
        everyone = set().union(*mates.values()) if mates else set()
        end = now + timedelta(days=1)
        sums = {p: self.totals_by_user(period_bounds(p, now)[0], end, everyone)
                for p in PERIODS}
        out: dict[str, dict[str, float]] = {}
        for group, names in sorted(mates.items()):
            entry: dict[str, float] = {}
            for p in PERIODS:
                entry[p] = sum(sums[p].get(u, {}).get("cost", 0.0) for u in names)
                entry[f"{p}:kernel_seconds"] = sum(
                    sums[p].get(u, {}).get("kernel_seconds", 0.0) for u in names)
            out[f"group:{group}"] = entry
        return out
