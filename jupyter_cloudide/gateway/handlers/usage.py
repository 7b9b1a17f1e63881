"""``cloudide/api/usage``: the caller's usage and cost from the ledger (totals, per model,
series over time)."""

from __future__ import annotations

import re
from datetime import datetime, timezone

from jupyter_server.auth.decorator import authorized
from tornado import web

from ...errors import InvalidInputError
from ...metering.reports import BUCKETS, period, usage_report
from ..base import CloudIDEHandler, write_json

MAX_DAYS = 366


def parse_period(days: str, bucket: str, month: str | None) -> tuple[datetime, datetime, str]:
    """``days`` (1..366) back from the end of today, or ``period=month`` (this UTC month)."""
    if bucket not in BUCKETS:
        raise InvalidInputError(f"bucket: one of {', '.join(BUCKETS)}", field="bucket")
    if month is not None:
        if month != "month":
            raise InvalidInputError("period: only 'month' (the current UTC month)",
                                    field="period")
        now = datetime.now(timezone.utc)
        since = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        return since, period(1, now)[1], bucket
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
        store = await self.cloudide.metadata_store()
        report = await store.call(usage_report, store.engine, self.username, since=since,
                                  until=until, bucket=bucket)
        # budgets (issue: metering, pricing, budgets) report here once configured
        report["budget"] = None
        write_json(self, report)


default_handlers = [(r"/cloudide/api/usage", UsageHandler)]
