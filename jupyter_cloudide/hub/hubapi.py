"""Group membership from the Hub's REST API, with the service's own token.

Why the Hub and not the reporters: a team's spend is the spend of its *current* members, and
only the Hub knows them (an admin moves people between groups in the Hub's UI). One
``GET /hub/api/groups`` (paged) is cached for ``ttl`` seconds; when the Hub cannot be reached
the last good answer is kept, so budgets keep working through a Hub restart.

Needs the service's role to grant ``list:groups`` and ``read:groups`` (docs/hub.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx

__all__ = ["GroupDirectory"]

log = logging.getLogger("jupyter_cloudide.hub")


class GroupDirectory:
    """Cached ``{group: {member, ...}}`` read from the Hub API."""

    def __init__(self, api_url: str, token: str, *, ttl: float = 30.0,
                 timeout: float = 10.0) -> None:
        self._api_url = api_url.rstrip("/")
        self._headers = {"Authorization": f"token {token}",
                         "Accept": "application/jupyterhub-pagination+json"}
        self._ttl = ttl
        self._timeout = timeout
        self._members: dict[str, frozenset[str]] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def invalidate(self) -> None:
        """Forget the cache (tests and admins changing groups want an answer now)."""
        self._fetched_at = None

    async def members(self) -> dict[str, frozenset[str]]:
        """Every group and its members (possibly up to ``ttl`` seconds old)."""
        fresh = self._fetched_at is not None and time.monotonic() - self._fetched_at < self._ttl
        if fresh:
            return self._members
        async with self._lock:
            if self._fetched_at is not None and time.monotonic() - self._fetched_at < self._ttl:
                return self._members
            try:
                self._members = await self._fetch()
                self._fetched_at = time.monotonic()
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                # keep the last answer; retry on the next call
                log.warning("cloudide hub service: groups not read from the Hub API (%s: %s)",
                            type(exc).__name__, str(exc)[:200])
        return self._members

    async def groups_of(self, user: str) -> list[str]:
        return sorted(g for g, names in (await self.members()).items() if user in names)

    async def _fetch(self) -> dict[str, frozenset[str]]:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout, trust_env=False)
        out: dict[str, frozenset[str]] = {}
        offset = 0
        for _ in range(1000):  # bounded: 1000 pages of the Hub's page size
            response = await self._client.get(f"{self._api_url}/groups",
                                              params={"offset": offset},
                                              headers=self._headers)
            response.raise_for_status()
            data: Any = response.json()
            items = data["items"] if isinstance(data, dict) else data
            for group in items:
                out[str(group["name"])] = frozenset(str(u) for u in group.get("users") or ())
            nxt = data.get("_pagination", {}).get("next") if isinstance(data, dict) else None
            if not nxt:
                break
            offset = int(nxt["offset"])
        return out
