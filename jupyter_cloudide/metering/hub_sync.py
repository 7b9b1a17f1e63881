"""Hub sync: a user server under JupyterHub reports its ledger to the hub service and takes
the team budgets back.

Every ``interval`` seconds:

1. **push** - ledger rows of this server's user with an id above the cursor go to
   ``POST <service>/api/usage`` in batches; the cursor (the last id the service accepted) is
   kept in ``<data_dir>/hub_sync.json``, so a restart resumes where it stopped, and the
   service is idempotent by event id, so a resend after a lost answer counts nothing twice;
2. **pull** - ``GET <service>/api/budgets`` gives the rules of the user's groups and the spend
   of their other members, handed to ``on_budgets`` (``BudgetManager.set_remote``).

Authentication is the server's own Hub API token (``JUPYTERHUB_API_TOKEN``), which the Hub
must grant ``access:services!service=<name>`` (docs/hub.md). Failures never reach a user:
they are logged once when they start (without the token or a body) and retried with
exponential backoff. Nothing here is imported at server start: the app imports this module
when the sync starts, and httpx and SQLAlchemy load on the first tick, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from ..storage.db import MetadataStore

__all__ = ["HubSync", "HubSyncSettings", "settings_from_env"]

log = logging.getLogger("jupyter_cloudide.hub_sync")

#: rows per report (the service accepts up to its max_rows, 5000 by default)
BATCH_ROWS = 500
#: batches per tick: a server that was offline for long catches up over a few ticks
MAX_BATCHES = 20
#: the longest pause between attempts while the service fails
MAX_BACKOFF_S = 300.0
#: PostgreSQL hands out ids before commit, so a row with a lower id can become visible after
#: a higher one was read; rows younger than this are left for the next tick
POSTGRES_SETTLE = timedelta(seconds=5)


@dataclass(frozen=True)
class HubSyncSettings:
    """Where and as whom to sync; built from the environment the Hub gives its servers."""

    service_url: str
    token: str
    user: str
    interval: float

    def __repr__(self) -> str:  # never the token
        return f"HubSyncSettings({self.service_url!r}, user={self.user!r})"


def settings_from_env(env: Mapping[str, str], service: str, url: str,
                      interval: float) -> HubSyncSettings | None:
    """The settings when this server runs under JupyterHub and sync is wanted, else None.

    The service's base URL: ``url`` when set (``CloudIDEApp.hub_usage_url``, or the
    JUPYTER_CLOUDIDE_HUB_URL environment variable), else the Hub's public URL with
    ``services/<service>/`` (JUPYTERHUB_PUBLIC_HUB_URL, set when the Hub's public_url is).
    """
    token = env.get("JUPYTERHUB_API_TOKEN", "")
    user = env.get("JUPYTERHUB_USER", "")
    if not service or not token or not env.get("JUPYTERHUB_SERVICE_PREFIX") or not user:
        return None
    base = url or env.get("JUPYTER_CLOUDIDE_HUB_URL", "")
    if not base:
        public_hub = env.get("JUPYTERHUB_PUBLIC_HUB_URL", "")
        if public_hub.rstrip("/").endswith("/hub"):
            base = public_hub.rstrip("/")[: -len("hub")] + f"services/{service}/"
    if not base:
        log.warning("jupyter_cloudide: hub usage sync is off: set CloudIDEApp.hub_usage_url "
                    "(or JUPYTER_CLOUDIDE_HUB_URL) to the %s service's URL", service)
        return None
    return HubSyncSettings(service_url=base.rstrip("/") + "/", token=token, user=user,
                           interval=max(0.1, float(interval)))


def _row_json(row: Any) -> dict[str, Any]:
    return {
        "event_id": row.event_id, "user": row.user, "group": row.group, "kind": row.kind,
        "source": row.source, "model": row.model, "kernelspec": row.kernelspec,
        "route": row.route, "input_tokens": int(row.input_tokens),
        "output_tokens": int(row.output_tokens), "quantity": float(row.quantity),
        "cost": float(row.cost), "currency": row.currency,
        "occurred_at": row.occurred_at.astimezone(timezone.utc).isoformat(),
    }


def rows_after(store: MetadataStore, user: str, after_id: int,
               limit: int) -> list[tuple[int, dict[str, Any]]]:
    """Ledger rows of ``user`` with id above ``after_id``, oldest id first (blocking: runs on
    the store's thread)."""
    from sqlalchemy import select

    from ..storage.models import UsageLedger

    clauses = [UsageLedger.id > after_id, UsageLedger.user == user]
    if store.dialect == "postgresql":
        clauses.append(UsageLedger.created_at < datetime.now(timezone.utc) - POSTGRES_SETTLE)
    statement = (select(UsageLedger).where(*clauses).order_by(UsageLedger.id).limit(limit))
    with store.engine.connect() as conn:
        found = conn.execute(statement).all()
    return [(int(r.id), _row_json(r)) for r in found]


class HubSync:
    """The sync loop of one server; ``run()`` is its task, cancelled at shutdown."""

    def __init__(self, settings: HubSyncSettings, *,
                 store: Callable[[], Awaitable[MetadataStore]], data_dir: str,
                 on_budgets: Callable[[list[dict[str, Any]], dict[str, dict[str, float]]],
                                      None] | None = None,
                 timeout: float = 10.0) -> None:
        self.settings = settings
        self._store = store
        self._cursor_path = Path(data_dir) / "hub_sync.json"
        self._on_budgets = on_budgets
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._cursor: int | None = None
        self._failing = False
        #: what the last successful tick did (health, tests)
        self.state: dict[str, Any] = {"state": "starting"}

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Sync forever: every interval while it works, backing off while it does not."""
        failures = 0
        try:
            while True:
                try:
                    await self.sync_once()
                    if self._failing:
                        log.info("jupyter_cloudide: hub usage sync works again")
                    self._failing, failures = False, 0
                    delay = self.settings.interval
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failures += 1
                    self.state = {"state": "error", "message": _describe(exc)}
                    if not self._failing:
                        log.warning("jupyter_cloudide: hub usage sync failed (%s); retrying "
                                    "with backoff", _describe(exc))
                    self._failing = True
                    delay = min(MAX_BACKOFF_S, self.settings.interval * 2 ** min(failures, 12))
                    delay *= random.uniform(0.8, 1.2)
                await asyncio.sleep(delay)
        finally:
            await self.close()

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                await client.aclose()

    async def sync_once(self) -> dict[str, Any]:
        """One push and one pull; raises on any failure (the loop backs off)."""
        sent = await self.push()
        budgets = await self.pull()
        self.state = {"state": "ok", "cursor": self._cursor, "sent": sent,
                      "budgets": len(budgets.get("budgets", []))}
        return self.state

    # -- push -------------------------------------------------------------------------------

    async def push(self) -> int:
        """Send rows above the cursor; returns how many were accepted."""
        store = await self._store()
        if self._cursor is None:
            self._cursor = await asyncio.to_thread(self._load_cursor)
        sent = 0
        for _ in range(MAX_BATCHES):
            batch = await store.call(rows_after, store, self.settings.user, self._cursor,
                                     BATCH_ROWS)
            if not batch:
                break
            response = await self._request("POST", "api/usage",
                                           {"rows": [row for _, row in batch]})
            sent += int(response.get("accepted", 0))
            self._cursor = batch[-1][0]
            await asyncio.to_thread(self._save_cursor, self._cursor)
            if len(batch) < BATCH_ROWS:
                break
        return sent

    def _load_cursor(self) -> int:
        """The last id the service accepted for this service URL (0: from the start)."""
        try:
            data = json.loads(self._cursor_path.read_text())
        except (OSError, ValueError):
            return 0
        if not isinstance(data, dict) or data.get("service_url") != self.settings.service_url:
            return 0  # another service: it has none of our rows (resending is idempotent)
        value = data.get("last_id")
        return value if isinstance(value, int) and value >= 0 else 0

    def _save_cursor(self, last_id: int) -> None:
        """Atomically, so a crash leaves the old cursor or the new one, never half a file."""
        self._cursor_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self._cursor_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"service_url": self.settings.service_url,
                                   "last_id": last_id}))
        os.replace(tmp, self._cursor_path)

    # -- pull -------------------------------------------------------------------------------

    async def pull(self) -> dict[str, Any]:
        """Fetch the team budgets and hand them to the budget manager."""
        data = await self._request("GET", "api/budgets")
        rules = data.get("budgets")
        others = data.get("others")
        if not isinstance(rules, list) or not isinstance(others, dict):
            raise ValueError("api/budgets: expected {budgets: [...], others: {...}}")
        if self._on_budgets is not None:
            self._on_budgets(rules, others)
        return data

    # -- HTTP ----------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        if self._client is None:
            httpx = await asyncio.to_thread(_import_httpx)
            self._client = httpx.AsyncClient(timeout=self._timeout, trust_env=False)
        response = await self._client.request(
            method, self.settings.service_url + path,
            headers={"Authorization": f"token {self.settings.token}",
                     "Accept": "application/json"},
            json=body)
        if response.status_code >= 400:
            message = ""
            with contextlib.suppress(ValueError, AttributeError):
                message = str(response.json().get("message", ""))[:200]
            raise HubSyncError(f"{method} {path}: HTTP {response.status_code} {message}".strip())
        data = response.json()
        if not isinstance(data, dict):
            raise ValueError(f"{method} {path}: expected a JSON object")
        return data


class HubSyncError(Exception):
    """The hub service answered with an error status."""


def _import_httpx() -> Any:
    import httpx

    return httpx


def _describe(exc: BaseException) -> str:
    """A log-safe one-liner: the exception type and its first line (no token is ever in
    these: it travels in a header, and URLs carry none)."""
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
