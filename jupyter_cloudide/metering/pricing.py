"""Pricing as configuration: what a ledger row costs, with volume tiers per billing period.

Three things are priced, each by a *schedule*: a list of tiers, each covering the volume up
to a cumulative bound within the billing period (a UTC day or month) at one rate. A flat price
is a schedule of one unbounded tier.

- ``tokens`` rows: per model (``CloudIDEApp.models[].price_per_1k``; the /v1 embedding model
  from ``v1_embedding_price_per_1k``). The volume of a model is its input plus output tokens
  of that user in the period; within one call the tokens are taken in the order the model
  processes them: cached input, fresh input, then output. Optional ``price_per_1k.tiers``:
  ``[{"up_to_tokens": 1000000, "input": 0.003, "output": 0.015}, {"input": ..., ...}]``.
- ``kernel_busy`` and ``kernel_lifetime`` rows: per kernelspec (``kernel_prices``, ``"*"``
  for every kernelspec not listed), in price per hour, volume in hours:
  ``{"*": {"kernel_busy": [{"up_to_hours": 100, "per_hour": 0.10},
  {"up_to_hours": 500, "per_hour": 0.08}, {"per_hour": 0.05}]}}``. Every kernelspec billed
  by the ``"*"`` entry shares one volume.

Costs are exact tier splits: a row that crosses a bound pays each side at its own rate, to the
token and to the second. The cumulative volume lives in :class:`Volumes`; the ledger loads it
for the current period from the daily roll-ups at start and then tracks it in memory. Several
servers writing one PostgreSQL ledger each track only their own rows, so tier boundaries are
approximate there until :func:`reprice` runs (which prices every row in ``occurred_at``
order per user and price key with the current prices).

No SQLAlchemy here: this module is imported when the server starts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..storage.db import MetadataStore, UsageEventIn, UsageEventRecord

__all__ = [
    "BILLING_PERIODS",
    "KERNEL_KINDS",
    "PRICED_KINDS",
    "TOKEN_KINDS",
    "Pricing",
    "PricingError",
    "Schedule",
    "Tier",
    "TokenPrice",
    "Volumes",
    "period_bounds",
    "reprice",
]

BILLING_PERIODS = ("month", "day")
TOKEN_KINDS = frozenset({"tokens"})
KERNEL_KINDS = frozenset({"kernel_busy", "kernel_lifetime"})
#: Kinds whose cost the ledger always computes (a producer's ``cost`` is ignored).
PRICED_KINDS = TOKEN_KINDS | KERNEL_KINDS
_CURRENCY_LEN = 8


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """``[start, end)`` of the UTC day or calendar month containing ``now`` (billing periods,
    budget periods, the hub's team spend)."""
    now = now.astimezone(timezone.utc)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    start = day.replace(day=1)
    end = (start.replace(year=start.year + 1, month=1) if start.month == 12
           else start.replace(month=start.month + 1))
    return start, end


class PricingError(ValueError):
    """The pricing configuration is invalid; the message names the setting and the entry."""


@dataclass(frozen=True)
class Tier:
    """Up to ``up_to`` (cumulative units in the period; None: no bound) at ``rate`` per unit."""

    up_to: float | None
    rate: float


@dataclass(frozen=True)
class Schedule:
    """Tiers in increasing bound order; the last one is unbounded."""

    tiers: tuple[Tier, ...]

    @classmethod
    def flat(cls, rate: float) -> Schedule:
        return cls((Tier(None, rate),))

    def spans(self, before: float, amount: float) -> Iterable[tuple[float, float]]:
        """``(units, rate)`` pieces of ``amount`` units that start at cumulative ``before``."""
        start, end = before, before + amount
        lower = 0.0
        for tier in self.tiers:
            upper = math.inf if tier.up_to is None else tier.up_to
            piece = min(end, upper) - max(start, lower)
            if piece > 0:
                yield piece, tier.rate
            if end <= upper:
                return
            lower = upper

    def cost(self, before: float, amount: float) -> float:
        return sum(units * rate for units, rate in self.spans(before, amount))


@dataclass(frozen=True)
class TokenPrice:
    """A model's token prices: per tier, per token for input, cached input and output."""

    #: (up_to_tokens, input, cached_input, output) per tier; rates per token
    tiers: tuple[tuple[float | None, float, float, float], ...]

    def cost(self, before: float, cached: int, fresh: int, output: int) -> float:
        """Cost of one call whose tokens start at cumulative volume ``before``."""
        total = 0.0
        at = before
        for count, column in ((cached, 2), (fresh, 1), (output, 3)):
            if count <= 0:
                continue
            schedule = Schedule(tuple(Tier(t[0], t[column] or 0.0) for t in self.tiers))
            total += schedule.cost(at, count)
            at += count
        return total


def _number(value: Any, where: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PricingError(f"{where}: a number, not {value!r}")
    if value < 0 or (positive and value == 0):
        raise PricingError(f"{where}: must be {'> 0' if positive else '>= 0'}, not {value!r}")
    return float(value)


def _check_bounds(bounds: list[float | None], where: str) -> None:
    if not bounds or bounds[-1] is not None:
        raise PricingError(f"{where}: the last tier must have no upper bound")
    if any(b is None for b in bounds[:-1]):
        raise PricingError(f"{where}: only the last tier may have no upper bound")
    numbers = [b for b in bounds[:-1] if b is not None]
    if any(b2 <= b1 for b1, b2 in itertools.pairwise(numbers)):
        raise PricingError(f"{where}: tier bounds must increase")


def _kernel_schedule(raw: Any, where: str) -> Schedule:
    """A number (per hour) or a list of ``{"up_to_hours"?, "per_hour"}`` tiers."""
    if not isinstance(raw, list):
        return Schedule.flat(_number(raw, f"{where} (per hour)") / 3600.0)
    tiers: list[Tier] = []
    bounds: list[float | None] = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, dict) or set(item) - {"up_to_hours", "per_hour"} \
                or "per_hour" not in item:
            raise PricingError(f'{at}: {{"up_to_hours": hours (not on the last tier), '
                               f'"per_hour": price}}, not {item!r}')
        bound = item.get("up_to_hours")
        seconds = None if bound is None else _number(bound, f"{at}.up_to_hours",
                                                     positive=True) * 3600.0
        bounds.append(seconds)
        tiers.append(Tier(seconds, _number(item["per_hour"], f"{at}.per_hour") / 3600.0))
    _check_bounds(bounds, where)
    return Schedule(tuple(tiers))


def _token_price(raw: Mapping[str, Any], where: str) -> TokenPrice:
    """``price_per_1k``: ``{"input", "output", "cached_input"?, "tiers"?}`` (per 1k tokens)."""
    if not isinstance(raw, Mapping):
        raise PricingError(f"{where}: an object, not {raw!r}")
    unknown = set(raw) - {"input", "output", "cached_input", "tiers"}
    if unknown:
        raise PricingError(f"{where}: unknown keys {sorted(unknown)}")

    def rates(item: Mapping[str, Any], at: str) -> tuple[float, float, float]:
        fresh = _number(item.get("input", 0.0), f"{at}.input") / 1000.0
        cached_raw = item.get("cached_input")
        cached = fresh if cached_raw is None else _number(cached_raw, f"{at}.cached_input") / 1000
        return fresh, cached, _number(item.get("output", 0.0), f"{at}.output") / 1000.0

    tiers_raw = raw.get("tiers")
    if tiers_raw is None:
        fresh, cached, output = rates(raw, where)
        return TokenPrice(((None, fresh, cached, output),))
    if not isinstance(tiers_raw, list) or not tiers_raw:
        raise PricingError(f"{where}.tiers: a non-empty list of tiers")
    tiers: list[tuple[float | None, float, float, float]] = []
    for i, item in enumerate(tiers_raw):
        at = f"{where}.tiers[{i}]"
        if not isinstance(item, Mapping) or set(item) - {"up_to_tokens", "input", "output",
                                                         "cached_input"}:
            raise PricingError(f'{at}: {{"up_to_tokens"?, "input", "output", '
                               f'"cached_input"?}}, not {item!r}')
        bound = item.get("up_to_tokens")
        up_to = None if bound is None else _number(bound, f"{at}.up_to_tokens", positive=True)
        tiers.append((up_to, *rates(item, at)))
    _check_bounds([t[0] for t in tiers], f"{where}.tiers")
    return TokenPrice(tuple(tiers))


PriceKey = tuple[str, str]


class Pricing:
    """Prices of every priced kind, the billing period and the currency (immutable)."""

    def __init__(self, models: Mapping[str, TokenPrice] | None = None,
                 kernels: Mapping[str, Mapping[str, Schedule]] | None = None, *,
                 period: str = "month", currency: str = "USD") -> None:
        if period not in BILLING_PERIODS:
            raise PricingError(f"billing_period: one of {', '.join(BILLING_PERIODS)}, "
                               f"not {period!r}")
        if not isinstance(currency, str) or not 1 <= len(currency) <= _CURRENCY_LEN:
            raise PricingError(f"currency: 1 to {_CURRENCY_LEN} characters, not {currency!r}")
        self.models = dict(models or {})
        self.kernels = {spec: dict(kinds) for spec, kinds in (kernels or {}).items()}
        self.period = period
        self.currency = currency

    @classmethod
    def from_config(cls, *, models: Iterable[Mapping[str, Any]] = (),
                    kernel_prices: Mapping[str, Any] | None = None,
                    extra_model_prices: Mapping[str, Mapping[str, Any]] | None = None,
                    billing_period: str = "month", currency: str = "USD") -> Pricing:
        """Build from the app's traitlets; raises :class:`PricingError` naming the entry."""
        prices: dict[str, TokenPrice] = {}
        for i, raw in enumerate(models):
            model_id = str(raw.get("id") or raw.get("model") or "")
            where = f"models[{i}] ({model_id or '?'}).price_per_1k"
            prices[model_id] = _token_price(raw.get("price_per_1k") or {}, where)
        for model_id, raw in (extra_model_prices or {}).items():
            prices.setdefault(model_id, _token_price(raw, f"{model_id}.price_per_1k"))
        kernels: dict[str, dict[str, Schedule]] = {}
        if not isinstance(kernel_prices or {}, Mapping):
            raise PricingError("kernel_prices: an object {kernelspec | '*': {kind: price}}")
        for spec, kinds in (kernel_prices or {}).items():
            if not isinstance(kinds, Mapping):
                raise PricingError(f"kernel_prices[{spec!r}]: an object {{kind: price}}, "
                                   f"kinds {sorted(KERNEL_KINDS)}")
            unknown = set(kinds) - KERNEL_KINDS
            if unknown:
                raise PricingError(f"kernel_prices[{spec!r}]: unknown kinds {sorted(unknown)}; "
                                   f"known: {sorted(KERNEL_KINDS)}")
            kernels[str(spec)] = {kind: _kernel_schedule(raw, f"kernel_prices[{spec!r}].{kind}")
                                  for kind, raw in kinds.items()}
        return cls(prices, kernels, period=billing_period, currency=currency)

    # -- periods and keys ---------------------------------------------------------------

    def period_start(self, at: datetime) -> datetime:
        """Start (UTC) of the billing period ``at`` falls in."""
        return period_bounds(self.period, at)[0]

    def key(self, kind: str, model: str | None, kernelspec: str | None) -> PriceKey | None:
        """The price entry a row is billed under (its volume counter), None if unpriced."""
        if kind in TOKEN_KINDS:
            return ("tokens", model) if model is not None and model in self.models else None
        if kind in KERNEL_KINDS:
            spec = kernelspec or ""
            if kind in self.kernels.get(spec, {}):
                return (kind, spec)
            if kind in self.kernels.get("*", {}):
                return (kind, "*")
        return None

    @staticmethod
    def volume(kind: str, input_tokens: int, output_tokens: int, quantity: float) -> float:
        """What a row adds to its price key's volume (tokens, or seconds)."""
        return float(input_tokens + output_tokens) if kind in TOKEN_KINDS else float(quantity)

    def cost(self, key: PriceKey, before: float, *, input_tokens: int = 0,
             output_tokens: int = 0, cached_tokens: int = 0, quantity: float = 0.0) -> float:
        """The cost of one row under ``key`` whose volume starts at ``before``."""
        what, name = key
        if what == "tokens":
            cached = max(0, min(int(cached_tokens), int(input_tokens)))
            return self.models[name].cost(before, cached, int(input_tokens) - cached,
                                          int(output_tokens))
        return self.kernels[name][what].cost(before, max(0.0, float(quantity)))

    def token_cost(self, model: str, input_tokens: int, output_tokens: int,
                   cached_tokens: int = 0, *, volume: float = 0.0) -> float:
        """Cost of a call on ``model`` at period volume ``volume`` (0.0 if the model is not
        priced): for estimates before a call, e.g. a budget's worst-case reservation."""
        if model not in self.models:
            return 0.0
        return self.cost(("tokens", model), volume, input_tokens=input_tokens,
                         output_tokens=output_tokens, cached_tokens=cached_tokens)


def cached_tokens_of(extra: Mapping[str, Any] | None) -> int:
    """``extra.cached_tokens`` of a token row, as producers record it."""
    value = (extra or {}).get("cached_tokens")
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


class Volumes:
    """Cumulative volume per (period start, user, price key): what tiers are measured by.

    Only the current and the previous period are kept (late rows of the previous period
    still find their counter; older ones start from zero, which a reprice corrects).
    """

    def __init__(self, pricing: Pricing) -> None:
        self.pricing = pricing
        self._counts: dict[tuple[datetime, str, PriceKey], float] = {}
        self._periods: list[datetime] = []

    def get(self, period: datetime, user: str, key: PriceKey) -> float:
        return self._counts.get((period, user, key), 0.0)

    def add(self, period: datetime, user: str, key: PriceKey, amount: float) -> None:
        if period not in self._periods:
            self._periods.append(period)
            self._periods.sort()
            for old in self._periods[:-2]:
                self._periods.remove(old)
                for k in [k for k in self._counts if k[0] == old]:
                    del self._counts[k]
        k = (period, user, key)
        self._counts[k] = self._counts.get(k, 0.0) + amount

    def load(self, period: datetime, totals: Iterable[tuple[str, str, str | None, str | None,
                                                            int, int, float]]) -> None:
        """Add roll-up sums ``(user, kind, model, kernelspec, in, out, quantity)`` of
        ``period`` (rows priced before the load keep their counts: both add up)."""
        for user, kind, model, kernelspec, tin, tout, quantity in totals:
            key = self.pricing.key(kind, model or None, kernelspec or None)
            if key is not None:
                self.add(period, user, key, self.pricing.volume(kind, tin, tout, quantity))

    def price(self, user: str, kind: str, at: datetime, *, model: str | None = None,
              kernelspec: str | None = None, input_tokens: int = 0, output_tokens: int = 0,
              cached_tokens: int = 0, quantity: float = 0.0) -> float | None:
        """Cost of one row and advance its volume; None if the kind or entry is unpriced."""
        key = self.pricing.key(kind, model, kernelspec)
        if key is None:
            return None
        period = self.pricing.period_start(at)
        before = self.get(period, user, key)
        cost = self.pricing.cost(key, before, input_tokens=input_tokens,
                                 output_tokens=output_tokens, cached_tokens=cached_tokens,
                                 quantity=quantity)
        self.add(period, user, key, self.pricing.volume(kind, input_tokens, output_tokens,
                                                        quantity))
        return cost

    def price_row(self, row: UsageEventIn | UsageEventRecord, at: datetime) -> float | None:
        return self.price(row.user, row.kind, at, model=row.model, kernelspec=row.kernelspec,
                          input_tokens=row.input_tokens, output_tokens=row.output_tokens,
                          cached_tokens=cached_tokens_of(row.extra), quantity=row.quantity)


def reprice(store: MetadataStore, pricing: Pricing, since: datetime) -> dict[str, Any]:
    """Recompute the cost of every ledger row from the start of the billing period that
    holds ``since`` (tiers need the whole period), with the current prices, and rebuild the
    roll-ups of those days. Blocking (call it through ``store.call`` on a server); one
    transaction: a failure changes nothing. Rows of unpriced kinds keep their cost."""
    start = pricing.period_start(since)
    volumes = Volumes(pricing)

    def price(row: UsageEventRecord) -> float | None:
        return volumes.price_row(row, row.occurred_at)

    seen, changed = store.reprice_usage(start, price, pricing.currency)
    return {"since": start.isoformat(), "rows": seen, "changed": changed,
            "currency": pricing.currency}
