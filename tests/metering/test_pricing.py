"""Pricing: tier splits exact to the second and to the token, billing periods, validation,
and reprice after a price change (real SQLite and PostgreSQL)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from traitlets import TraitError

from jupyter_cloudide.metering.pricing import Pricing, PricingError, Volumes, reprice
from jupyter_cloudide.storage import MetadataStore, UsageEventIn

T0 = datetime(2026, 3, 10, 8, 0, tzinfo=timezone.utc)
HOUR = 3600.0

KERNEL_TIERS = {"*": {"kernel_busy": [{"up_to_hours": 100, "per_hour": 0.10},
                                      {"up_to_hours": 500, "per_hour": 0.08},
                                      {"per_hour": 0.05}]},
                "gpu": {"kernel_busy": 3.6, "kernel_lifetime": 0.36}}
MODEL_TIERS = [{"id": "big", "provider": "openai",
                "price_per_1k": {"input": 2.0, "output": 8.0, "tiers": [
                    {"up_to_tokens": 1000, "input": 2.0, "cached_input": 1.0, "output": 8.0},
                    {"input": 1.0, "cached_input": 0.5, "output": 4.0}]}},
               {"id": "flat", "provider": "openai",
                "price_per_1k": {"input": 0.5, "output": 1.5, "cached_input": 0.25}}]


def pricing(**kw: Any) -> Pricing:
    return Pricing.from_config(models=MODEL_TIERS, kernel_prices=KERNEL_TIERS, **kw)


def test_kernel_tiers_split_exactly_at_the_second() -> None:
    v = Volumes(pricing())
    # 99 h 59 min 59 s: all in the first tier
    assert v.price("alice", "kernel_busy", T0, kernelspec="python3",
                   quantity=100 * HOUR - 1) == pytest.approx((100 * HOUR - 1) * 0.10 / HOUR)
    # 2 s across the 100 h bound: 1 s at 0.10/h, 1 s at 0.08/h
    assert v.price("alice", "kernel_busy", T0, kernelspec="ir",
                   quantity=2) == pytest.approx((0.10 + 0.08) / HOUR)
    # up to 500 h exactly, then across the 500 h bound into the last tier
    assert v.price("alice", "kernel_busy", T0, kernelspec="python3",
                   quantity=400 * HOUR - 1) == pytest.approx((400 * HOUR - 1) * 0.08 / HOUR)
    assert v.price("alice", "kernel_busy", T0, kernelspec="python3",
                   quantity=10 * HOUR) == pytest.approx(10 * 0.05)
    # another user, another kind, another price entry: their own volumes
    assert v.price("bob", "kernel_busy", T0, kernelspec="python3",
                   quantity=HOUR) == pytest.approx(0.10)
    assert v.price("alice", "kernel_busy", T0, kernelspec="gpu", quantity=10) == \
        pytest.approx(10 * 3.6 / HOUR)
    assert v.price("alice", "kernel_lifetime", T0, kernelspec="python3", quantity=10) is None


def test_the_volume_resets_with_the_billing_period() -> None:
    for period, next_period in (("month", datetime(2026, 4, 1, tzinfo=timezone.utc)),
                                ("day", T0.replace(hour=0) + timedelta(days=1))):
        v = Volumes(pricing(billing_period=period))
        v.price("alice", "kernel_busy", T0, kernelspec="python3", quantity=100 * HOUR)
        assert v.price("alice", "kernel_busy", next_period - timedelta(seconds=1),
                       kernelspec="python3", quantity=HOUR) == pytest.approx(0.08)
        assert v.price("alice", "kernel_busy", next_period, kernelspec="python3",
                       quantity=HOUR) == pytest.approx(0.10)


def test_token_tiers_split_exactly_at_the_token_in_processing_order() -> None:
    v = Volumes(pricing())
    # 990 tokens in: 10 left in the first tier
    assert v.price("alice", "tokens", T0, model="big", input_tokens=990) == \
        pytest.approx(990 * 2.0 / 1000)
    # 30 cached + 20 fresh in + 5 out: the 10 cached first at 1.0, the other 20 cached at
    # 0.5, then 20 fresh at 1.0 and 5 out at 4.0 (all per 1k)
    cost = v.price("alice", "tokens", T0, model="big", input_tokens=50, output_tokens=5,
                   cached_tokens=30)
    assert cost == pytest.approx((10 * 1.0 + 20 * 0.5 + 20 * 1.0 + 5 * 4.0) / 1000)
    # an output crossing the bound in another period of volume (bob starts at zero)
    assert v.price("bob", "tokens", T0, model="big", input_tokens=995, output_tokens=10) \
        == pytest.approx((995 * 2.0 + 5 * 8.0 + 5 * 4.0) / 1000)
    # flat prices agree with ModelSpec.cost
    from jupyter_cloudide.agent.models import ModelSpec

    spec = ModelSpec("flat", "openai", "flat", price_input=0.5, price_output=1.5,
                     price_cached_input=0.25)
    assert v.price("alice", "tokens", T0, model="flat", input_tokens=1234, output_tokens=99,
                   cached_tokens=200) == pytest.approx(spec.cost(1234, 99, 200))
    assert v.price("alice", "tokens", T0, model="unknown", input_tokens=5) is None


@pytest.mark.parametrize(("config", "named"), [
    ({"kernel_prices": {"*": {"kernel_busy": [{"up_to_hours": 10, "per_hour": 1}]}}},
     "last tier must have no upper bound"),
    ({"kernel_prices": {"*": {"kernel_busy": [{"up_to_hours": 10, "per_hour": 1},
                                              {"up_to_hours": 5, "per_hour": 1},
                                              {"per_hour": 1}]}}}, "must increase"),
    ({"kernel_prices": {"py": {"kernel_bsy": 1.0}}}, "kernel_prices['py']: unknown kinds"),
    ({"kernel_prices": {"*": {"kernel_busy": -1}}}, "kernel_prices['*'].kernel_busy"),
    ({"kernel_prices": {"*": {"kernel_busy": [{"per_hr": 1}]}}}, "kernel_busy[0]"),
    ({"models": [{"id": "m", "price_per_1k": {"input": "cheap"}}]}, "models[0] (m)"),
    ({"models": [{"id": "m", "price_per_1k": {"tiers": [{"up_to_tokens": 0, "input": 1},
                                                        {"input": 1}]}}]}, "up_to_tokens"),
    ({"billing_period": "week"}, "billing_period"),
    ({"currency": ""}, "currency"),
])
def test_invalid_pricing_is_refused_with_the_entry_named(config: dict[str, Any],
                                                         named: str) -> None:
    with pytest.raises(PricingError, match=re.escape(named)):
        Pricing.from_config(**config)


def test_the_app_refuses_invalid_prices_at_configuration() -> None:
    from jupyter_cloudide.app import CloudIDEApp

    with pytest.raises(TraitError, match=r"CloudIDEApp.kernel_prices: .*must increase"):
        CloudIDEApp(kernel_prices={"*": {"kernel_busy": [{"up_to_hours": 2, "per_hour": 1},
                                                         {"up_to_hours": 1, "per_hour": 1},
                                                         {"per_hour": 1}]}})
    app = CloudIDEApp(kernel_prices=KERNEL_TIERS, models=MODEL_TIERS, currency="EUR",
                      v1_embedding_price_per_1k=0.02)
    built = app.build_pricing()
    assert built.currency == "EUR"
    assert built.token_cost("cloudide-embedding", 1000, 0) == pytest.approx(0.02)


def _kernel_row(event_id: str, seconds: float, at: datetime, cost: float,
                user: str = "alice") -> UsageEventIn:
    return UsageEventIn(event_id=event_id, user=user, kind="kernel_busy", quantity=seconds,
                        kernelspec="python3", cost=cost, occurred_at=at)


def test_reprice_applies_new_prices_in_order_and_rebuilds_rollups(
        ledger_store: MetadataStore) -> None:
    old = Pricing.from_config(kernel_prices={"*": {"kernel_busy": 1.0}})
    new = Pricing.from_config(kernel_prices=KERNEL_TIERS)
    # written under the old flat price, out of time order (ids != time order)
    at = [T0 + timedelta(hours=i) for i in range(3)]
    rows = [_kernel_row("k3", 2 * HOUR, at[2], 2.0), _kernel_row("k1", 99 * HOUR, at[0], 99.0),
            _kernel_row("k2", 2 * HOUR, at[1], 2.0),
            _kernel_row("prev", 50 * HOUR, T0 - timedelta(days=40), 50.0),
            UsageEventIn(event_id="r", user="alice", kind="requests", quantity=3.0,
                         route="usage", occurred_at=at[0])]
    assert ledger_store.record_usage(rows) == 5
    assert old.currency == new.currency
    result = reprice(ledger_store, new, T0 + timedelta(days=2))  # mid-period: whole month
    assert result["since"] == "2026-03-01T00:00:00+00:00"
    assert (result["rows"], result["changed"]) == (4, 3)
    cost = {r.event_id: r.cost for r in ledger_store.list_usage_events("alice")}
    assert cost["k1"] == pytest.approx(99 * 0.10)
    assert cost["k2"] == pytest.approx(1 * 0.10 + 1 * 0.08)
    assert cost["k3"] == pytest.approx(2 * 0.08)
    assert cost["prev"] == 50.0 and cost["r"] == 0.0  # other period / unpriced: untouched
    totals = ledger_store.usage_totals("alice", datetime(2026, 3, 1, tzinfo=timezone.utc))
    from jupyter_cloudide.metering.reports import usage_report

    report = usage_report(ledger_store.engine, "alice",
                          since=datetime(2026, 3, 1, tzinfo=timezone.utc),
                          until=datetime(2026, 4, 1, tzinfo=timezone.utc))
    assert report["source"] == "usage_daily"
    assert report["totals"]["cost"] == pytest.approx(totals["cost"])
    assert report["totals"]["cost"] == pytest.approx(9.9 + 0.18 + 0.16)
    # repricing again with the same prices changes nothing
    assert reprice(ledger_store, new, T0)["changed"] == 0
