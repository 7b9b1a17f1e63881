"""Revenue features per month and per customer."""

from __future__ import annotations

import pandas as pd


def monthly_revenue(orders: pd.DataFrame) -> pd.Series:
    """Revenue aggregated by calendar month of the order date."""
    month = orders["ordered_at"].dt.to_period("M")
    return orders.groupby(month)["amount"].sum().rename("revenue")


def top_customers(orders: pd.DataFrame, n: int = 3) -> pd.Series:
    """The ``n`` customers with the most revenue."""
    return orders.groupby("customer")["amount"].sum().nlargest(n)
