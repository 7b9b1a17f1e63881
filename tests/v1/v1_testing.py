"""Helpers of the /v1 tests (imported by name: tests/v1 is on the path)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

#: a second declared model (served by the same upstream) for fallbacks and key scopes
MODELS = [
    {"id": "gpt-4o-mini", "provider": "openai", "model": "gpt-4o-mini", "quality": 60,
     "price_per_1k": {"input": 0.15, "output": 0.6}},
    {"id": "gpt-4o", "provider": "openai", "model": "gpt-4o", "quality": 80,
     "price_per_1k": {"input": 2.5, "output": 10.0}},
]


async def make_key(cloudide: Any, user: str, *, models: tuple[str, ...] = (),
                   expires_in: timedelta | None = None, auto_approve: bool = False) -> str:
    store = await cloudide.metadata_store()
    expires = None if expires_in is None else datetime.now(timezone.utc) + expires_in
    plaintext, _ = await store.call(store.create_api_key, user, "test", list(models), expires,
                                    auto_approve)
    return str(plaintext)


async def ledger_rows(cloudide: Any, user: str, *, count: int = 1,
                      timeout: float = 10.0) -> list[Any]:
    """The user's v1 ledger rows, once at least ``count`` have been written (batched)."""
    store = await cloudide.metadata_store()
    rows: list[Any] = []
    for _ in range(int(timeout / 0.1)):
        await cloudide.ledger.flush()
        rows = [r for r in await store.call(store.list_usage_events, user=user)
                if r.route == "v1"]
        if len(rows) >= count:
            break
        await asyncio.sleep(0.1)
    return rows
