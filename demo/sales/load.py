"""Loading and cleaning orders."""

from __future__ import annotations

import pandas as pd


def sample_orders(rows: int = 200, seed: int = 7) -> pd.DataFrame:
    """A reproducible table of orders: customer, date, amount (some amounts missing)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    dates = pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.integers(0, 180, rows), unit="D")
    amounts = rng.gamma(2.0, 40.0, rows).round(2)
    amounts[rng.random(rows) < 0.05] = np.nan
    return pd.DataFrame({
        "customer": rng.choice(["acme", "globex", "initech", "umbrella", "hooli"], rows),
        "ordered_at": dates,
        "amount": amounts,
    })


def clean_orders(orders: pd.DataFrame) -> pd.DataFrame:
    """Drop orders without an amount and negative amounts; sort by date."""
    kept = orders.dropna(subset=["amount"])
    kept = kept[kept["amount"] >= 0]
    return kept.sort_values("ordered_at").reset_index(drop=True)
