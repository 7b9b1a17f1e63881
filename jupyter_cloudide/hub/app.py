"""CloudIDEHubService: the JupyterHub-managed service that aggregates team usage.

Run by the Hub as a managed service (``python -m jupyter_cloudide.hub``); the Hub passes
``JUPYTERHUB_SERVICE_NAME``, ``JUPYTERHUB_SERVICE_URL``, ``JUPYTERHUB_SERVICE_PREFIX``,
``JUPYTERHUB_API_URL`` and ``JUPYTERHUB_API_TOKEN``. Every setting is a traitlet, read from
``--config <file>`` (a Python config file like jupyterhub_config.py) and the command line.
See docs/hub.md for the Hub side (service entry, roles, scopes).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from traitlets import Dict, Float, Int, List, Unicode, default, validate
from traitlets.config import Application

from .._version import __version__
from ..errors import InvalidInputError
from ..metering.reports import period
from .team import BudgetRule, TeamLedger, parse_budget_rules, parse_rows

if TYPE_CHECKING:
    from jupyterhub.services.auth import HubOAuth

    from ..storage.db import MetadataStore
    from .hubapi import GroupDirectory

__all__ = ["CloudIDEHubService", "main"]


class CloudIDEHubService(Application):
    """Team usage and team budgets for jupyter_cloudide servers under one JupyterHub."""

    name = "jupyter-cloudide-hub"
    version = __version__
    description = __doc__

    aliases = {"config": "CloudIDEHubService.config_file",
               "db-url": "CloudIDEHubService.db_url",
               "data-dir": "CloudIDEHubService.data_dir"}

    config_file = Unicode("", config=True, help="A Python config file to load first.")

    service_name = Unicode(
        config=True, help="The service's name in the Hub (JUPYTERHUB_SERVICE_NAME).")

    @default("service_name")
    def _default_name(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_NAME", "cloudide")

    service_prefix = Unicode(
        config=True,
        help="URL prefix the proxy routes to the service (JUPYTERHUB_SERVICE_PREFIX).")

    @default("service_prefix")
    def _default_prefix(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or f"/services/{self.service_name}/"

    @validate("service_prefix")
    def _slash(self, proposal: Any) -> str:
        value = "/" + str(proposal["value"]).strip("/") + "/"
        return value.replace("//", "/")

    service_url = Unicode(
        config=True, help="Where to listen, http://host:port (JUPYTERHUB_SERVICE_URL).")

    @default("service_url")
    def _default_url(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")

    data_dir = Unicode(
        config=True,
        help="""Folder of the service's own data: its SQLite ledger and its cookie secret.
        Default: JUPYTER_CLOUDIDE_HUB_DATA_DIR, else `cloudide-hub` in the working
        directory (the Hub starts managed services in its own).""",
    )

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return os.environ.get("JUPYTER_CLOUDIDE_HUB_DATA_DIR") or os.path.abspath("cloudide-hub")

    db_url = Unicode(
        config=True,
        help="""SQLAlchemy URL of the service's ledger (never a user server's database).
        Default: SQLite in data_dir; PostgreSQL for a large hub. Env:
        JUPYTER_CLOUDIDE_HUB_DB_URL.""",
    )

    @default("db_url")
    def _default_db_url(self) -> str:
        return os.environ.get("JUPYTER_CLOUDIDE_HUB_DB_URL") or (
            "sqlite:///" + os.path.join(self.data_dir, "hub-usage.db"))

    budgets = List(
        Dict(), config=True,
        help="""Team budgets given back to user servers: [{"scope": "group:<name>",
        "period": "day" | "month", "metric": "cost" | "kernel_seconds", "limit": 50.0,
        "warn_percent": 80}]. Each server enforces them for its user, with its own spend
        plus the spend of the group's other members that this service reports.""",
    )

    @validate("budgets")
    def _valid_budgets(self, proposal: Any) -> list[dict[str, Any]]:
        parse_budget_rules(proposal["value"])  # raises ValueError naming the entry
        return list(proposal["value"])

    admin_scope = Unicode(
        "custom:cloudide:usage-admin", config=True,
        help="""A custom Hub scope (JupyterHub.custom_scopes) whose holders see the admin
        page and report besides Hub admins. It reaches the service through OAuth only if the
        service's oauth_client_allowed_scopes lists it.""",
    )
    max_body_bytes = Int(
        4 * 1024 * 1024, config=True, help="Size limit of a usage report body (413 above).")
    max_rows = Int(5000, config=True, help="Rows per usage report, at most (400 above).")
    groups_ttl = Float(
        30.0, config=True, help="Seconds group membership read from the Hub is reused.")
    hub_api_url = Unicode(config=True, help="The Hub's REST API (JUPYTERHUB_API_URL).")

    @default("hub_api_url")
    def _default_api(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")

    # -- runtime ------------------------------------------------------------------------------

    store: MetadataStore | None = None
    ledger: TeamLedger
    groups: GroupDirectory
    hub_auth: HubOAuth
    rules: list[BudgetRule]

    def initialize(self, argv: Any = None) -> None:
        """Parse the command line, then the config file, then the command line again (so
        flags win over the file)."""
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
            self.update_config(self.cli_config)
        self.rules = parse_budget_rules(self.budgets)

    def is_admin(self, model: dict[str, Any]) -> bool:
        """Hub admins, and users whose token carries ``admin_scope``."""
        if model.get("admin"):
            return True
        held = set(model.get("scopes") or ())
        return self.admin_scope in held

    async def accept_report(self, user: str, body: Any) -> dict[str, Any]:
        """Record a report from ``user``'s server; 400/403 from :func:`parse_rows`."""
        rows = parse_rows(user, body, max_rows=self.max_rows)
        assert self.store is not None
        inserted = await self.store.call(self.ledger.record, rows) if rows else 0
        return {"accepted": len(rows), "inserted": inserted}

    async def budgets_for(self, user: str) -> dict[str, Any]:
        """The rules of the user's groups and the spend of each group's other members."""
        members = await self.groups.members()
        mine = sorted(g for g, names in members.items() if user in names)
        rules = [r for r in self.rules if r.group in mine]
        assert self.store is not None
        others = await self.store.call(self.ledger.others_spend, user,
                                       sorted({r.group for r in rules if r.group}), members)
        return {"budgets": [r.to_dict() for r in rules], "others": others}

    async def report(self, *, days: int, group: str | None, user: str | None) -> dict[str, Any]:
        """Totals per user and group over the last ``days`` UTC days (today included)."""
        members = await self.groups.members()
        users: set[str] | None = None
        if group is not None:
            if group not in members:
                raise InvalidInputError(f"group: no group {group[:64]!r} in the Hub")
            users = set(members[group])
        if user is not None:
            users = {user} if users is None else users & {user}
        since, until = period(days)
        assert self.store is not None
        report: dict[str, Any] = await self.store.call(
            self.ledger.report, since=since, until=until, members=members, users=users)
        report.update({"days": days, "group": group, "user": user})
        return report

    def _cookie_secret(self) -> bytes:
        """Persisted so an admin's login survives a service restart."""
        path = Path(self.data_dir) / "cookie_secret"
        if path.exists():
            return bytes.fromhex(path.read_text().strip())
        value = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(value.hex())
        return value

    async def serve(self) -> None:
        """Open the store, listen, and run until SIGTERM/SIGINT."""
        from jupyterhub.services.auth import HubOAuth
        from tornado.httpserver import HTTPServer
        from tornado.web import Application as WebApplication

        from ..storage.db import MetadataStore
        from .handlers import UsageHandler, handlers
        from .hubapi import GroupDirectory

        await asyncio.to_thread(Path(self.data_dir).mkdir, mode=0o700, parents=True,
                                exist_ok=True)
        token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        self.store = await asyncio.to_thread(MetadataStore(self.db_url).open)
        self.ledger = TeamLedger(self.store)
        self.groups = GroupDirectory(self.hub_api_url, token, ttl=self.groups_ttl)
        self.hub_auth = HubOAuth(api_token=token, api_url=self.hub_api_url,
                                 cache_max_age=60, parent=self)
        web_app = WebApplication(
            handlers(self.service_prefix), cloudide_hub=self, hub_auth=self.hub_auth,
            cookie_secret=self._cookie_secret(), login_url=self.hub_auth.login_url)
        url = urlparse(self.service_url)
        server = HTTPServer(web_app, xheaders=True,
                            max_body_size=self.max_body_bytes * UsageHandler.DISCARD_FACTOR)
        server.listen(url.port or 80, url.hostname or "127.0.0.1")
        self.log.info("jupyter_cloudide hub service %s on %s%s (ledger %s, %d budget rules)",
                      __version__, self.service_url, self.service_prefix,
                      self.store.display_url, len(self.rules))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            server.stop()
            await self.groups.close()
            store, self.store = self.store, None
            await asyncio.to_thread(store.close)

    def start(self) -> None:
        asyncio.run(self.serve())


def main(argv: list[str] | None = None) -> None:
    """``python -m jupyter_cloudide.hub [--config FILE] [--CloudIDEHubService.x=y]``."""
    service = CloudIDEHubService()
    service.initialize(argv)
    service.start()
