"""Order data for the demo: loading, cleaning and monthly features."""

from .features import monthly_revenue, top_customers
from .load import clean_orders, sample_orders

__all__ = ["clean_orders", "monthly_revenue", "sample_orders", "top_customers"]
