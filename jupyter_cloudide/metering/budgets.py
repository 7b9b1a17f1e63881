"""Budgets: spending caps per user and per group, per UTC day or calendar month.

Why it is built this way:

- **Spend lives in memory.** A check runs before every metered request (each model call of a
  chat turn, every ``/v1`` call), so it must not touch the database: the spend of each scope
  (``user:<name>`` or ``group:<name>``) for the current day and month is loaded once, lazily
  on its first check (one grouped SQL query), kept current by the ledger's subscription
  (every priced row added to the ledger increments it at once), and re-synced with the
  database periodically (other processes writing the same ledger, drift).
- **Hard limits by reservation.** Before a model call the caller reserves its worst-case cost
  (input estimate x input price + max output tokens x output price). The call is refused when
  ``spent + reserved + this reservation > limit``; otherwise the amount is added to
  ``reserved`` in the same synchronous step, so concurrent requests on the event loop see each
  other's reservations (no await between the check and the reservation). After the call the
  reservation is released (:meth:`BudgetManager.settle`); the real cost arrives through the
  ledger. A request's real cost can exceed its reservation only by the error of the input
  estimate, so a budget is overspent by at most about one request's reservation.
- **Soft limits** emit a warning once per budget and period when spend crosses
  ``warn_percent`` (a jupyter_events event and a push to the members' sessions).
- **Fail closed** (optional): when the ledger cannot be read, refuse metered requests rather
  than allow unknown spend.

Exact re-sync without double counting: a load captures the ledger's unwritten rows (added, not
yet committed) before its query, records the rows added while the query runs, and the query
returns rows created since the load began (and the captured ones) one by one with their
event ids: those three sets are merged by event id, everything older comes as sums. A row is
thus counted once whether it was committed before, during or after the query.

No tornado imports; SQLAlchemy is imported by the query functions only (they run on the
store's thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from ..errors import BudgetExceededError, ServiceUnavailableError
from .pricing import period_bounds

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = [
    "METRICS",
    "PERIODS",
    "BudgetManager",
    "BudgetRule",
    "Reservation",
    "parse_rules",
    "period_bounds",
]

log = logging.getLogger(__name__)

PERIODS = ("day", "month")
METRICS = ("cost", "kernel_seconds")
#: ledger kinds whose ``quantity`` counts as kernel seconds (busy time, not idle lifetime)
KERNEL_KINDS = frozenset({"kernel_busy"})
#: a failed load is retried after this many seconds (fail-open: not on every request)
RETRY_AFTER_FAILURE_S = 5.0
#: rows created this long before a load began are still returned one by one (clock skew)
CREATED_MARGIN = timedelta(seconds=2)

_RULE_KEYS = {"scope", "period", "metric", "limit", "warn_percent"}


# -- rules -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetRule:
    """One configured budget. ``scope``: ``user`` (each user their own), ``user:<name>`` or
    ``group:<name>`` (shared by the group's members: a team budget)."""

    scope: str
    period: str
    metric: str
    limit: float
    warn_percent: float
    #: given by the hub service (set_remote), not this server's configuration
    remote: bool = False

    def key_for(self, user: str, groups: Iterable[str]) -> str | None:
        """The concrete scope key this rule charges for ``user``, or None if it does not
        apply."""
        if self.scope == "user":
            return f"user:{user}"
        kind, _, name = self.scope.partition(":")
        if kind == "user":
            return self.scope if name == user else None
        return self.scope if name in groups else None

    @property
    def id(self) -> str:
        """Stable identity of the budget (warnings are remembered by it)."""
        return f"{self.scope}/{self.period}/{self.metric}"


def parse_rules(raw: Sequence[Mapping[str, Any]], default_warn_percent: float = 80.0, *,
                remote: bool = False, where: str = "budgets") -> list[BudgetRule]:
    """Validate budget rules from configuration; raises ValueError naming the bad entry."""
    if not 0 < float(default_warn_percent) <= 100:
        raise ValueError("budget_warn_percent must be in (0, 100]")
    rules: list[BudgetRule] = []
    seen: set[str] = set()
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"{where}: expected a list of budget rules")
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{at}: expected a dict like {{'scope': 'user', 'period': "
                             "'month', 'metric': 'cost', 'limit': 20}")
        unknown = set(item) - _RULE_KEYS
        if unknown:
            raise ValueError(f"{at}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                             f"known: {', '.join(sorted(_RULE_KEYS))}")
        scope = item.get("scope", "user")
        if not isinstance(scope, str) or not (
                scope == "user" or (scope.partition(":")[0] in ("user", "group")
                                    and scope.partition(":")[2].strip())):
            raise ValueError(f"{at}.scope: 'user', 'user:<name>' or 'group:<name>', "
                             f"not {scope!r}")
        period = item.get("period", "month")
        if period not in PERIODS:
            raise ValueError(f"{at}.period: one of {', '.join(PERIODS)}, not {period!r}")
        metric = item.get("metric", "cost")
        if metric not in METRICS:
            raise ValueError(f"{at}.metric: one of {', '.join(METRICS)}, not {metric!r}")
        limit = item.get("limit")
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) \
                or not math.isfinite(limit) or limit < 0:
            raise ValueError(f"{at}.limit: a number >= 0 (USD for cost, seconds for "
                             f"kernel_seconds), not {limit!r}")
        warn = item.get("warn_percent", default_warn_percent)
        if isinstance(warn, bool) or not isinstance(warn, (int, float)) \
                or not 0 < float(warn) <= 100:
            raise ValueError(f"{at}.warn_percent: a number in (0, 100], not {warn!r}")
        rule = BudgetRule(scope, str(period), str(metric), float(limit), float(warn),
                          remote=remote)
        if rule.id in seen:
            raise ValueError(f"{at}: a second {metric} budget for {scope} per {period}")
        seen.add(rule.id)
        rules.append(rule)
    return rules


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


# -- state -----------------------------------------------------------------------------------


@dataclass
class _Scope:
    """Spend of one scope key in the periods it was loaded for."""

    key: str
    #: (period, metric) → spend recorded in the ledger (this server's view)
    spend: dict[tuple[str, str], float] = field(default_factory=dict)
    #: (period, metric) → reservations of requests in flight
    reserved: dict[tuple[str, str], float] = field(default_factory=dict)
    #: period → the start the spend is for (None until loaded)
    starts: dict[str, datetime] = field(default_factory=dict)
    loaded: bool = False
    #: the last load failed (fail-open: counting from zero until a load succeeds)
    degraded: bool = False
    retry_at: float = 0.0
    #: a load in flight, which every check of the scope awaits
    loading: asyncio.Future[None] | None = None
    #: rows added while a load runs (merged by event id when it completes)
    during: list[Any] | None = None
    #: a reload is due (membership or period changed)
    stale: bool = False

    def spent(self, period: str, metric: str) -> float:
        return self.spend.get((period, metric), 0.0)

    def reserved_of(self, period: str, metric: str) -> float:
        return self.reserved.get((period, metric), 0.0)


@dataclass
class Reservation:
    """What one request reserved; give it back to :meth:`BudgetManager.settle`."""

    amount: float
    #: (scope, period, metric) charged
    entries: list[tuple[_Scope, str, str]]
    settled: bool = False


@dataclass(frozen=True)
class _Applicable:
    rule: BudgetRule
    key: str


def _row_value(row: Any, metric: str) -> float:
    if metric == "cost":
        return float(getattr(row, "cost", 0.0) or 0.0)
    if getattr(row, "kind", None) in KERNEL_KINDS:
        return float(getattr(row, "quantity", 0.0) or 0.0)
    return 0.0


def _row_time(row: Any, now: datetime) -> datetime:
    at = getattr(row, "occurred_at", None)
    if not isinstance(at, datetime):
        return now
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


# -- the manager -----------------------------------------------------------------------------


class BudgetManager:
    """Checks, reserves and reports budgets; one per server, used on the server's loop.

    ``store``: the MetadataStore (its ``call`` runs the loads on its thread) or None (tests of
    the pure logic). ``unwritten``: the ledger's rows added but not yet committed.
    ``on_warning(payload)``: called once per budget and period when spend crosses the warn
    percent (the app emits the event and pushes to the members' sessions).
    """

    def __init__(self, rules: Sequence[BudgetRule], *, store: Any = None,
                 open_store: Callable[[], Awaitable[Any]] | None = None,
                 unwritten: Callable[[], Iterable[Any]] | None = None,
                 fail_closed: bool = False,
                 on_warning: Callable[[dict[str, Any]], None] | None = None,
                 clock: Callable[[], datetime] = _utcnow,
                 remember_member: Callable[[str, str], Any] | None = None) -> None:
        self._local = list(rules)
        self._remote: list[BudgetRule] = []
        self._rules: list[BudgetRule] = list(rules)
        #: scope key → {"day"|"month"|"<period>:<metric>": spend of others elsewhere}
        self._others: dict[str, dict[str, float]] = {}
        self.store = store
        #: waits for the metadata store (the app's store opens after start-up)
        self.open_store = open_store
        self.unwritten = unwritten or (lambda: ())
        self.fail_closed = fail_closed
        self.on_warning = on_warning
        self.clock = clock
        self.remember_member = remember_member
        self._scopes: dict[str, _Scope] = {}
        #: group → users seen in it; user → groups
        self._members: dict[str, set[str]] = {}
        self._groups_of: dict[str, frozenset[str]] = {}
        #: (user, groups) → the budgets that apply (rules change rarely; cleared then)
        self._applicable: dict[tuple[str, tuple[str, ...]], list[_Applicable]] = {}
        #: budget id + scope key → period start it was warned for
        self._warned: dict[tuple[str, str], datetime] = {}
        self._starts: dict[str, datetime] = {}
        self._ends_at = 0.0
        self._roll()

    # -- configuration ----------------------------------------------------------------

    @property
    def rules(self) -> list[BudgetRule]:
        """Every rule in force: the configured ones, then the hub's."""
        return list(self._rules)

    @property
    def enabled(self) -> bool:
        return bool(self._rules)

    def set_remote(self, rules: list[dict[str, Any]], others: dict[str, dict[str, float]]
                   ) -> None:
        """Budgets given by the JupyterHub service, and spend recorded on other servers.

        ``rules``: budget rules in the configuration's format (``{"scope": "group:research",
        "period": "month", "metric": "cost", "limit": 500, "warn_percent": 80}``); they
        replace the previous remote rules (a local rule with the same scope, period and
        metric wins). ``others``: per scope key (``"group:research"``, or ``"user:ada"`` for
        a user's other servers) and period (``"day"`` / ``"month"``), the cost spent by the
        group's *other* members on other servers in the current period; it is added to this
        server's spend of that scope. A key ``"<period>:kernel_seconds"`` gives kernel
        seconds the same way. Raises ValueError for malformed rules (nothing changes).
        """
        parsed = parse_rules(rules, remote=True, where="remote budgets")
        local_ids = {r.id for r in self._local}
        clean: dict[str, dict[str, float]] = {}
        for key, periods in (others or {}).items():
            if not isinstance(periods, Mapping):
                raise ValueError(f"remote spend of {key!r}: expected {{period: amount}}")
            clean[str(key)] = {str(p): float(v) for p, v in periods.items()
                               if isinstance(v, (int, float)) and math.isfinite(v)}
        self._remote = [r for r in parsed if r.id not in local_ids]
        self._rules = [*self._local, *self._remote]
        self._others = clean
        self._applicable.clear()
        for key in clean:
            scope = self._scopes.get(key)
            if scope is not None and scope.loaded:
                self._check_warnings(scope)

    def _other(self, key: str, period: str, metric: str) -> float:
        entry = self._others.get(key)
        if not entry:
            return 0.0
        return entry.get(period if metric == "cost" else f"{period}:{metric}", 0.0)

    # -- membership ----------------------------------------------------------------------

    def note_member(self, user: str, groups: Iterable[str]) -> None:
        """Remember ``user``'s groups (from their identity): group spend is its members'."""
        frozen = frozenset(groups)
        if self._groups_of.get(user) == frozen:
            return
        self._groups_of[user] = frozen
        for group in frozen:
            members = self._members.setdefault(group, set())
            if user in members:
                continue
            members.add(user)
            scope = self._scopes.get(f"group:{group}")
            if scope is not None and scope.loaded:
                scope.stale = True  # their earlier rows of the period count too
            if self.remember_member is not None:
                try:
                    self.remember_member(group, user)
                except Exception:  # the table is a hint for after a restart
                    log.debug("group membership not stored", exc_info=True)

    def _applicable_for(self, user: str, groups: tuple[str, ...]) -> list[_Applicable]:
        cache_key = (user, groups)
        found = self._applicable.get(cache_key)
        if found is None:
            found = []
            for rule in self._rules:
                key = rule.key_for(user, groups)
                if key is not None:
                    found.append(_Applicable(rule, key))
            if len(self._applicable) > 4096:
                self._applicable.clear()
            self._applicable[cache_key] = found
        return found

    # -- periods ---------------------------------------------------------------------------

    def _roll(self) -> None:
        """Recompute the current periods (cheap check on every call, real work at a
        boundary)."""
        now = self.clock()
        for period in PERIODS:
            self._starts[period] = period_bounds(period, now)[0]
        self._ends_at = period_bounds("day", now)[1].timestamp()

    def _current(self) -> dict[str, datetime]:
        if self.clock().timestamp() >= self._ends_at:
            self._roll()
        return self._starts

    # -- loading ---------------------------------------------------------------------------

    def _scope(self, key: str) -> _Scope:
        scope = self._scopes.get(key)
        if scope is None:
            scope = self._scopes[key] = _Scope(key)
        return scope

    def _users_of(self, key: str) -> tuple[str | None, list[str]]:
        kind, _, name = key.partition(":")
        if kind == "user":
            return None, [name]
        return name, sorted(self._members.get(name, ()))

    async def _ensure(self, scope: _Scope) -> None:
        """Make the scope's spend current: load it on first use, after a period boundary or
        a membership change, and retry after a failure."""
        starts = self._current()
        needs = (not scope.loaded or scope.stale or scope.starts != starts
                 or (scope.degraded and time.monotonic() >= scope.retry_at))
        if scope.loading is None and needs:
            # a task of its own: a request cancelled while waiting must not cancel the load
            # every other request of the scope waits for
            scope.loading = asyncio.ensure_future(self._load(scope))
            scope.loading.add_done_callback(lambda _t: setattr(scope, "loading", None))
        if scope.loading is not None:
            await asyncio.shield(scope.loading)
        if scope.degraded and self.fail_closed:
            raise ServiceUnavailableError(
                "usage budgets cannot be checked: the usage ledger cannot be read, so "
                "requests that cost money are refused until it can (budget_fail_closed)")

    async def _load(self, scope: _Scope) -> None:
        """Spend of the scope's current periods: database + unwritten + rows added meanwhile,
        merged by event id (see the module's docstring)."""
        starts = dict(self._current())
        began = self.clock()
        group, users = self._users_of(scope.key)
        pending: dict[str, Any] = {str(r.event_id): r for r in self.unwritten()
                                   if getattr(r, "event_id", None)
                                   and self._row_in(r, group, users)}
        scope.during = []
        try:
            store = self.store
            if store is None and self.open_store is not None:
                store = self.store = await self.open_store()
            if store is None:
                sums: dict[tuple[str, str], float] = {}
                singles: dict[str, tuple[datetime, float, float, str]] = {}
                more_users: list[str] = []
            else:
                sums, singles, more_users = await store.call(
                    load_spend, store.engine, group, users, starts["month"],
                    starts["day"], began - CREATED_MARGIN, list(pending))
        except Exception as exc:
            scope.during = None
            scope.degraded = True
            scope.retry_at = time.monotonic() + RETRY_AFTER_FAILURE_S
            if not scope.loaded:  # fail-open: count from zero until a load succeeds
                scope.loaded, scope.starts, scope.spend = True, starts, {}
            log.warning("budget: spend of %s could not be read (%s)%s", scope.key,
                        type(exc).__name__, "; refusing metered requests" if
                        self.fail_closed else "; allowing requests on in-memory counts")
            return
        during, scope.during = scope.during or [], None
        if group is not None:
            for user in more_users:  # members only the table knew (seen before a restart)
                self._members.setdefault(group, set()).add(user)
                users.append(user)
        for row in during:
            if self._row_in(row, group, users) and getattr(row, "event_id", None):
                pending[str(row.event_id)] = row
        spend = dict(sums)
        ends = {period: period_bounds(period, starts[period])[1] for period in PERIODS}
        merged: dict[str, tuple[datetime, float, float, str]] = dict(singles)
        for event_id, row in pending.items():
            merged[event_id] = (_row_time(row, began), float(getattr(row, "cost", 0) or 0),
                                float(getattr(row, "quantity", 0) or 0),
                                str(getattr(row, "kind", "")))
        for at, cost, quantity, kind in merged.values():
            for period in PERIODS:
                if starts[period] <= at < ends[period]:
                    spend[(period, "cost")] = spend.get((period, "cost"), 0.0) + cost
                    if kind in KERNEL_KINDS:
                        spend[(period, "kernel_seconds")] = \
                            spend.get((period, "kernel_seconds"), 0.0) + quantity
        scope.spend, scope.starts = spend, starts
        scope.loaded, scope.degraded, scope.stale = True, False, False
        self._check_warnings(scope)

    def _row_in(self, row: Any, group: str | None, users: Sequence[str]) -> bool:
        user = getattr(row, "user", None)
        if group is None:
            return user == users[0]
        return user in users or group in self._groups_of.get(str(user), ())

    async def resync(self) -> None:
        """Re-read every loaded scope from the ledger (periodically: other processes write
        the same ledger; rows from before a restart)."""
        for scope in list(self._scopes.values()):
            if scope.loaded and scope.loading is None:
                scope.stale = True
                with contextlib.suppress(ServiceUnavailableError):
                    await self._ensure(scope)  # fail-closed: reported to the next request

    # -- the ledger's subscription --------------------------------------------------------

    def on_rows(self, rows: Iterable[Any]) -> None:
        """Priced rows just added to the ledger: add them to the scopes they belong to."""
        now = self.clock()
        starts = self._current()
        touched: dict[str, _Scope] = {}
        for row in rows:
            user = getattr(row, "user", None)
            if not user:
                continue
            keys = [f"user:{user}"]
            keys.extend(f"group:{g}" for g in self._groups_of.get(user, ()))
            at = _row_time(row, now)
            for key in keys:
                scope = self._scopes.get(key)
                if scope is None:
                    continue
                if scope.during is not None:
                    scope.during.append(row)
                if not scope.loaded or scope.starts != starts:
                    continue
                for period in PERIODS:
                    if at < starts[period]:
                        continue
                    for metric in METRICS:
                        value = _row_value(row, metric)
                        if value:
                            slot = (period, metric)
                            scope.spend[slot] = scope.spend.get(slot, 0.0) + value
                touched[key] = scope
        for scope in touched.values():
            self._check_warnings(scope)

    # -- checks ------------------------------------------------------------------------------

    async def reserve(self, user: str, groups: Sequence[str], amount: float, *,
                      metric: str = "cost") -> Reservation | None:
        """Reserve ``amount`` (the request's worst case) on every budget of ``metric`` that
        applies to ``user``; raises BudgetExceededError if one would go over its limit.
        Returns None when no budget applies (nothing to settle)."""
        groups_t = tuple(groups)
        if groups_t:
            self.note_member(user, groups_t)
        applicable = self._applicable_for(user, groups_t)
        if not applicable:
            return None
        scopes: list[tuple[_Applicable, _Scope]] = []
        for item in applicable:
            if item.rule.metric != metric:
                continue
            scope = self._scope(item.key)
            if not scope.loaded or scope.stale or scope.loading is not None \
                    or scope.starts != self._current() or scope.degraded:
                await self._ensure(scope)
            scopes.append((item, scope))
        if not scopes:
            return None
        # check every budget, then charge them all: no await from here on (race-free)
        amount = max(0.0, float(amount))
        for item, scope in scopes:
            rule = item.rule
            spent = scope.spent(rule.period, metric) + self._other(item.key, rule.period,
                                                                   metric)
            reserved = scope.reserved_of(rule.period, metric)
            if spent + reserved + amount > rule.limit or (amount == 0 and spent >= rule.limit
                                                           and rule.limit >= 0):
                raise BudgetExceededError(self._refusal(item, spent, reserved, amount))
        entries: list[tuple[_Scope, str, str]] = []
        for item, scope in scopes:
            slot = (item.rule.period, metric)
            scope.reserved[slot] = scope.reserved.get(slot, 0.0) + amount
            entries.append((scope, item.rule.period, metric))
        return Reservation(amount, entries)

    async def check(self, user: str, groups: Sequence[str], *, metric: str = "cost") -> None:
        """Refuse when a budget of ``metric`` is used up (spend alone, nothing reserved):
        kernel-time budgets before an agent execution, the agent model over ``/v1``."""
        settled = await self.reserve(user, groups, 0.0, metric=metric)
        if settled is not None:
            self.settle(settled)

    def settle(self, reservation: Reservation | None) -> None:
        """Release a reservation (idempotent); the real cost arrives through the ledger."""
        if reservation is None or reservation.settled:
            return
        reservation.settled = True
        for scope, period, metric in reservation.entries:
            slot = (period, metric)
            left = scope.reserved.get(slot, 0.0) - reservation.amount
            scope.reserved[slot] = left if left > 1e-12 else 0.0

    def _refusal(self, item: _Applicable, spent: float, reserved: float, amount: float) -> str:
        rule = item.rule
        start = self._current()[rule.period]
        reset = period_bounds(rule.period, start)[1]
        fmt = _fmt_cost if rule.metric == "cost" else _fmt_seconds
        what = {"cost": "cost", "kernel_seconds": "kernel-time"}[rule.metric]
        period = {"day": "daily", "month": "monthly"}[rule.period]
        whose = _scope_label(item.key)
        exhausted = spent >= rule.limit
        head = (f"The {period} {what} budget {whose} is used up" if exhausted else
                f"The {period} {what} budget {whose} does not leave enough for this request")
        parts = [f"{head}: {fmt(spent)} spent"]
        if reserved > 0:
            parts.append(f" (+{fmt(reserved)} reserved by requests in progress)")
        parts.append(f" of {fmt(rule.limit)}")
        if amount > 0 and not exhausted:
            parts.append(f"; this request could cost up to {fmt(amount)}")
        parts.append(f". It resets at {reset.strftime('%Y-%m-%d %H:%M')} UTC.")
        return "".join(parts)

    # -- soft limits ---------------------------------------------------------------------

    def _check_warnings(self, scope: _Scope) -> None:
        if self.on_warning is None:
            return
        for rule in self._rules:
            if not self._rule_covers(rule, scope.key):
                continue
            spent = scope.spent(rule.period, rule.metric) + self._other(
                scope.key, rule.period, rule.metric)
            if rule.limit <= 0 or spent < rule.limit * rule.warn_percent / 100.0:
                continue
            start = scope.starts.get(rule.period) or self._current()[rule.period]
            mark = (rule.id, scope.key)
            if self._warned.get(mark) == start:
                continue
            self._warned[mark] = start
            payload = self._describe(rule, scope.key, scope, start)
            _group, users = self._users_of(scope.key)
            payload["users"] = users
            try:
                self.on_warning(payload)
            except Exception:
                log.exception("budget warning handler failed")

    @staticmethod
    def _rule_covers(rule: BudgetRule, key: str) -> bool:
        if rule.scope == "user":
            return key.startswith("user:")
        return rule.scope == key

    # -- reports -----------------------------------------------------------------------------

    def _describe(self, rule: BudgetRule, key: str, scope: _Scope,
                  start: datetime) -> dict[str, Any]:
        spent = scope.spent(rule.period, rule.metric) + self._other(key, rule.period,
                                                                    rule.metric)
        reserved = scope.reserved_of(rule.period, rule.metric)
        percent = spent / rule.limit * 100.0 if rule.limit > 0 else (100.0 if spent else 0.0)
        state = ("exhausted" if spent >= rule.limit else
                 "warning" if percent >= rule.warn_percent else "ok")
        return {
            "scope": key, "rule_scope": rule.scope, "period": rule.period,
            "metric": rule.metric, "unit": "USD" if rule.metric == "cost" else "seconds",
            "limit": rule.limit, "spent": round(spent, 6), "reserved": round(reserved, 6),
            "remote_spent": round(self._other(key, rule.period, rule.metric), 6),
            "percent": round(percent, 2), "warn_percent": rule.warn_percent, "state": state,
            "period_start": start.isoformat(),
            "resets_at": period_bounds(rule.period, start)[1].isoformat(),
            "remote": rule.remote,
        }

    async def status(self, user: str, groups: Sequence[str]) -> list[dict[str, Any]]:
        """The budgets that apply to ``user``, most used first."""
        groups_t = tuple(groups)
        if groups_t:
            self.note_member(user, groups_t)
        out: list[dict[str, Any]] = []
        for item in self._applicable_for(user, groups_t):
            scope = self._scope(item.key)
            await self._ensure(scope)
            out.append(self._describe(item.rule, item.key, scope,
                                      self._current()[item.rule.period]))
        out.sort(key=lambda b: (-b["percent"], b["metric"] != "cost"))
        return out

    def snapshot(self) -> dict[str, Any]:
        """Health: the rules and the scopes held in memory (cheap, no I/O)."""
        degraded = sorted(s.key for s in self._scopes.values() if s.degraded)
        return {"state": "error" if degraded and self.fail_closed else "ok",
                "rules": len(self._rules), "scopes": len(self._scopes),
                **({"degraded": degraded} if degraded else {})}


def _scope_label(key: str) -> str:
    kind, _, name = key.partition(":")
    return f"of the group {name!r}" if kind == "group" else f"of {name!r}"


def _fmt_cost(value: float) -> str:
    return f"${value:,.4f}" if abs(value) < 1 else f"${value:,.2f}"


def _fmt_seconds(value: float) -> str:
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


# -- queries (run on the store's thread) ---------------------------------------------------


def load_spend(engine: Engine, group: str | None, users: Sequence[str], month_start: datetime,
               day_start: datetime, created_after: datetime, candidates: Sequence[str]
               ) -> tuple[dict[tuple[str, str], float],
                          dict[str, tuple[datetime, float, float, str]], list[str]]:
    """One scope's spend this month and today, in one grouped statement: rows created before
    ``created_after`` (and not among ``candidates``) as sums; newer ones and the candidates
    one by one with their event ids (merged with the unwritten rows by the caller). For a
    group, members recorded in ``group_members`` are added to ``users`` first."""
    from sqlalchemy import case, false, func, or_, select

    from ..storage.models import GroupMember, UsageLedger

    more: list[str] = []
    with engine.connect() as conn:
        if group is not None:
            known = set(users)
            stored = conn.execute(select(GroupMember.user).where(GroupMember.group == group))
            more = sorted({u for (u,) in stored} - known)
        everyone = [*users, *more]
        if not everyone:
            return {}, {}, more
        single = or_(UsageLedger.created_at >= created_after,
                     UsageLedger.event_id.in_(list(candidates)) if candidates else false())
        event = case((single, UsageLedger.event_id), else_=None).label("ev")
        today = case((UsageLedger.occurred_at >= day_start, 1), else_=0).label("today")
        kernel = case((UsageLedger.kind.in_(sorted(KERNEL_KINDS)), UsageLedger.quantity),
                      else_=0.0)
        statement = (
            select(event, today, func.max(UsageLedger.occurred_at),
                   func.coalesce(func.sum(UsageLedger.cost), 0.0),
                   func.coalesce(func.sum(kernel), 0.0), func.max(UsageLedger.kind))
            .where(UsageLedger.user.in_(everyone), UsageLedger.occurred_at >= month_start)
            .group_by(event, today)
        )
        rows = conn.execute(statement).all()
    sums: dict[tuple[str, str], float] = {}
    singles: dict[str, tuple[datetime, float, float, str]] = {}
    for ev, is_today, at, cost, seconds, kind in rows:
        if ev is not None:
            moment = at if isinstance(at, datetime) else datetime.fromisoformat(str(at))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            singles[str(ev)] = (moment, float(cost), float(seconds), str(kind)
                                if str(kind) in KERNEL_KINDS else "")
            continue
        periods = ("month", "day") if is_today else ("month",)
        for period in periods:
            sums[(period, "cost")] = sums.get((period, "cost"), 0.0) + float(cost)
            sums[(period, "kernel_seconds")] = \
                sums.get((period, "kernel_seconds"), 0.0) + float(seconds)
    return sums, singles, more


def remember_members(engine: Engine, pairs: Sequence[tuple[str, str]]) -> None:
    """Record (group, user) pairs in ``group_members`` (existing ones keep their row)."""
    from sqlalchemy import insert, select

    from ..storage.models import GroupMember, utcnow

    if not pairs:
        return
    with engine.begin() as conn:
        for group, user in pairs:
            exists = conn.execute(select(GroupMember.user).where(
                GroupMember.group == group, GroupMember.user == user)).first()
            if exists is None:
                conn.execute(insert(GroupMember).values(
                    group=group, user=user, seen_at=utcnow()))


# -- kernel time ------------------------------------------------------------------------------


class BudgetedExecutor:
    """The executor as the agent's tools see it: a new execution for the agent is refused
    while a kernel-time budget of the user is used up (the tool returns the refusal to the
    model and the chat); everything else passes through unchanged."""

    def __init__(self, executor: Any, manager: BudgetManager, user: str,
                 groups: tuple[str, ...]) -> None:
        self._executor = executor
        self._manager = manager
        self._user = user
        self._groups = groups

    async def execute(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(request, "source", None) == "agent":
            await self._manager.check(self._user, self._groups, metric="kernel_seconds")
        return await self._executor.execute(request, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._executor, name)
