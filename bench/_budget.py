"""The budget check's added latency per request (not a benchmark script by itself).

``bench/metering.py`` calls :func:`measure_budget_check`; ``python bench/_budget.py [n]``
prints its result as one JSON line. What is measured is what a ``/v1`` request or an agent
model call adds: one ``reserve`` (spend and reservations of every applicable budget checked,
the worst case held) and one ``settle``, on a warmed manager (the spend of the scopes is
loaded: a real SQLite ledger with a month of rows was read once, as a server does on a
scope's first check). A user budget and a group budget apply, as on a hub.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any


def measure_budget_check(n: int = 20_000) -> dict[str, Any]:
    """p50/p99 microseconds (and milliseconds) of one reserve + settle over ``n`` calls."""
    from jupyter_cloudide.metering.budgets import BudgetManager, parse_rules
    from jupyter_cloudide.storage import MetadataStore, UsageEventIn

    rules = parse_rules([{"scope": "user", "period": "day", "limit": 1e9},
                         {"scope": "user", "period": "month", "limit": 1e9},
                         {"scope": "group:research", "period": "month", "limit": 1e9}])
    with tempfile.TemporaryDirectory() as tmp:
        store = MetadataStore(f"sqlite:///{Path(tmp) / 'ledger.db'}").open()
        try:
            now = datetime.now(timezone.utc)
            store.record_usage([
                UsageEventIn(event_id=f"seed-{i}", user="ada", kind="tokens", cost=0.001,
                             input_tokens=100, output_tokens=10, model="m",
                             occurred_at=now - timedelta(minutes=i))
                for i in range(2000)])
            manager = BudgetManager(rules, store=store)

            async def run() -> list[float]:
                groups = ("research",)
                manager.settle(await manager.reserve("ada", groups, 0.01))  # warm: loads
                samples: list[float] = []
                clock = time.perf_counter
                for _ in range(n):
                    start = clock()
                    held = await manager.reserve("ada", groups, 0.01)
                    manager.settle(held)
                    samples.append(clock() - start)
                return samples

            samples = asyncio.run(run())
        finally:
            store.close()
    samples.sort()
    p50 = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return {"budget_check_n": n, "budget_check_p50_us": round(p50 * 1e6, 2),
            "budget_check_p99_us": round(p99 * 1e6, 2),
            "budget_check_p50_ms": round(p50 * 1e3, 4), "budget_check_target_ms": 0.5,
            "budget_check_met": p50 * 1e3 <= 0.5}


if __name__ == "__main__":
    print(json.dumps(measure_budget_check(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)))
