"""``cloudide/api/usage``: usage and cost from the ledger (totals, per model, per user, series
over time), as JSON or CSV.

The caller's own usage by default. ``?user=`` / ``?group=`` ask for someone else's or a
group's: only usage admins may (``CloudIDEApp.usage_admins`` names them, by user name or
``group:<name>``, and the Authorizer must also allow ``read`` on ``cloudide:usage-admin``);
anyone else gets 403. ``?format=csv`` answers the ledger rows (``export=rows``, default) or
the grouped series (``export=series``) as an attachment whose cells cannot run as formulas.
"""

from __future__ import annotations

import inspect
import re
from datetime import datetime, timezone
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ...errors import ForbiddenError, InvalidInputError
from ...metering.pricing import period_bounds
from ...metering.reports import (
    BUCKETS,
    ledger_csv,
    period,
    series_csv,
    series_rows,
    usage_report,
)
from ..base import CloudIDEHandler, write_json

MAX_DAYS = 366
#: ledger rows in one CSV export (the response says when it was cut there)
MAX_CSV_ROWS = 100_000
ADMIN_RESOURCE = "cloudide:usage-admin"
_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,255}")


def parse_period(days: str, bucket: str, month: str | None) -> tuple[datetime, datetime, str]:
    """``days`` (1..366) back from the end of today, or ``period=month`` (this UTC month)."""
    if bucket not in BUCKETS:
        raise InvalidInputError(f"bucket: one of {', '.join(BUCKETS)}", field="bucket")
    if month is not None:
        if month != "month":
            raise InvalidInputError("period: only 'month' (the current UTC month)",
                                    field="period")
        now = datetime.now(timezone.utc)
        return period_bounds("month", now)[0], period(1, now)[1], bucket
    if not re.fullmatch(r"[0-9]{1,3}", days) or not 1 <= int(days) <= MAX_DAYS:
        raise InvalidInputError(f"days: an integer from 1 to {MAX_DAYS}", field="days")
    since, until = period(int(days))
    return since, until, bucket


class UsageHandler(CloudIDEHandler):
    auth_resource = "cloudide:usage"
    route_name = "usage"

    @web.authenticated
    @authorized
    async def get(self) -> None:
        since, until, bucket = parse_period(self.get_query_argument("days", "30"),
                                            self.get_query_argument("bucket", "day"),
                                            self.get_query_argument("period", None))
        user, group = await self._subject()
        fmt = self.get_query_argument("format", "json")
        if fmt not in ("json", "csv"):
            raise InvalidInputError("format: json or csv", field="format")
        export = self.get_query_argument("export", "rows")
        if export not in ("rows", "series"):
            raise InvalidInputError("export: rows or series", field="export")
        store = await self.cloudide.metadata_store()
        if fmt == "csv":
            await self._csv(store, user, group, since, until, bucket, export)
            return
        report = await store.call(usage_report, store.engine, user, since=since,
                                  until=until, bucket=bucket, group=group)
        if user != self.username:
            # budgets are the caller's; another user's or a group's report has none here
            report["budgets"], report["budget"] = [], None
            write_json(self, report)
            return
        # every budget that applies to the caller, most used first; ``budget`` is the first
        # (the status bar's figure), None without budgets
        budgets = await self.cloudide.budget_manager.status(
            self.username, self.cloudide.groups_of(self.current_user))
        report["budgets"] = budgets
        report["budget"] = budgets[0] if budgets else None
        write_json(self, report)

    async def _subject(self) -> tuple[str | None, str | None]:
        """``(user, group)`` the report is about: the caller unless an admin asked for a
        user or a group (403 for anyone else asking for anything but their own)."""
        user = self.get_query_argument("user", None)
        group = self.get_query_argument("group", None)
        for name, value in (("user", user), ("group", group)):
            if value is not None and not _NAME.fullmatch(value):
                raise InvalidInputError(f"{name}: 1 to 255 printable characters", field=name)
        if user is not None and group is not None:
            raise InvalidInputError("user and group: one or the other", field="group")
        if group is None and user in (None, self.username):
            return self.username, None
        if not await self._is_usage_admin():
            self.cloudide.emit_refused(reason="forbidden", route=self.route_name,
                                       user=self.username)
            raise ForbiddenError("only usage admins may see another user's or a group's usage")
        return user, group

    async def _is_usage_admin(self) -> bool:
        admins = set(self.cloudide.usage_admins)
        groups = self.cloudide.groups_of(self.current_user)
        if self.username not in admins and not any(f"group:{g}" in admins for g in groups):
            return False
        allowed = self.authorizer.is_authorized(self, self.current_user, "read",
                                                ADMIN_RESOURCE)
        if inspect.isawaitable(allowed):
            allowed = await allowed
        return bool(allowed)

    async def _csv(self, store: Any, user: str | None, group: str | None, since: datetime,
                   until: datetime, bucket: str, export: str) -> None:
        if export == "series":
            rows = await store.call(series_rows, store.engine, user, since=since, until=until,
                                    bucket=bucket, group=group)
            body = series_csv(rows)
        else:
            records = await store.call(store.list_usage_events, user, since, until,
                                       group=group, limit=MAX_CSV_ROWS + 1)
            if len(records) > MAX_CSV_ROWS:
                records = records[:MAX_CSV_ROWS]
                self.set_header("X-CloudIDE-Truncated", "true")
            body = ledger_csv(records)
        subject = re.sub(r"[^A-Za-z0-9._-]", "_", group or user or "all")[:64]
        name = f"cloudide-usage-{subject}-{since.date().isoformat()}-{until.date().isoformat()}"
        self.set_header("Content-Disposition", f'attachment; filename="{name}-{export}.csv"')
        self.finish(body, set_content_type="text/csv; charset=utf-8")


default_handlers = [(r"/cloudide/api/usage", UsageHandler)]
