"""The admin page: per-user and per-group tables and inline SVG plots, rendered on the server.

Why server-rendered with no assets: the page is behind the Hub's proxy with a strict CSP
(``default-src 'none'``), works without JavaScript and loads nothing from anywhere. Every
string that a user controls (user and group names, model names) goes through
:func:`html.escape`, in text and in attributes alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from html import escape
from typing import Any

__all__ = ["DAY_CHOICES", "admin_page", "bar_chart"]

DAY_CHOICES = (1, 7, 30, 90, 365)
_BAR = "#3b6ea5"


def _num(value: float, digits: int = 4) -> str:
    return f"{value:,.{digits}f}"


def _int(value: float) -> str:
    return f"{int(value):,}"


def bar_chart(title: str, points: Sequence[tuple[str, float]], *, unit: str = "",
              width: int = 640, height: int = 180) -> str:
    """A vertical bar chart as inline SVG; labels are escaped."""
    label_h, top, left = 34, 22, 8
    plot_h = height - label_h - top
    peak = max((v for _, v in points), default=0.0) or 1.0
    n = max(len(points), 1)
    step = (width - 2 * left) / n
    bar_w = max(2.0, step * 0.7)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}">',
             f'<title>{escape(title)}</title>',
             f'<text x="{left}" y="14" font-size="12" font-weight="bold">{escape(title)} '
             f'(max {escape(_num(peak, 4))}{escape(unit)})</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{width - left}" '
             f'y2="{top + plot_h}" stroke="#888"/>']
    every = max(1, len(points) // 12)
    for i, (label, value) in enumerate(points):
        h = plot_h * (value / peak) if value > 0 else 0.0
        x = left + i * step + (step - bar_w) / 2
        parts.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" '
                     f'height="{h:.1f}" fill="{_BAR}"><title>{escape(label)}: '
                     f'{escape(_num(value, 6))}{escape(unit)}</title></rect>')
        if i % every == 0:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{height - 18}" font-size="10" '
                         f'text-anchor="middle">{escape(label[-14:])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _days(since: datetime, until: datetime) -> list[str]:
    first: date = since.date()
    count = max(0, (until.date() - first).days)
    return [(first + timedelta(days=i)).isoformat() for i in range(count)]


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], caption: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
                   for row in rows) or f'<tr><td colspan="{len(headers)}">no usage</td></tr>'
    return (f"<table><caption>{escape(caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def admin_page(report: dict[str, Any], *, viewer: str, days: int, group: str | None,
               user: str | None, all_groups: Sequence[str], prefix: str) -> str:
    """The whole admin page for one report (see ``TeamLedger.report``)."""
    since = datetime.fromisoformat(report["since"])
    until = datetime.fromisoformat(report["until"])
    daily = report["daily"]
    day_cost = dict.fromkeys(_days(since, until), 0.0)
    day_tokens = dict.fromkeys(day_cost, 0.0)
    for point in daily:
        day_cost[point["day"]] = day_cost.get(point["day"], 0.0) + point["cost"]
        day_tokens[point["day"]] = day_tokens.get(point["day"], 0.0) + point["tokens"]
    users = report["users"]
    user_rows = [
        [escape(u["user"]), _int(u["input_tokens"]), _int(u["output_tokens"]),
         escape(_num(u["cost"])), escape(_num(u["kernel_seconds"] / 3600, 3)), _int(u["events"])]
        for u in users
    ]
    group_rows = [
        [escape(g["group"]), escape(", ".join(g["members"])), _int(g["input_tokens"]),
         _int(g["output_tokens"]), escape(_num(g["cost"])),
         escape(_num(g["kernel_seconds"] / 3600, 3)), _int(g["events"])]
        for g in report["groups"]
    ]
    total = report["total"]
    day_options = "".join(
        f'<option value="{d}"{" selected" if d == days else ""}>{d} day{"s" * (d > 1)}</option>'
        for d in sorted({*DAY_CHOICES, days}))
    group_options = '<option value="">all groups</option>' + "".join(
        f'<option value="{escape(g, quote=True)}"{" selected" if g == group else ""}>'
        f"{escape(g)}</option>" for g in all_groups)
    charts = "".join([
        bar_chart("Cost per day", list(day_cost.items())),
        bar_chart("Tokens per day", list(day_tokens.items())),
        bar_chart("Cost per user", [(u["user"], u["cost"]) for u in users]),
        bar_chart("Kernel hours per user",
                  [(u["user"], u["kernel_seconds"] / 3600) for u in users], unit=" h"),
    ])
    scope = f" — user {escape(user)}" if user else (f" — group {escape(group)}" if group else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Team usage — jupyter_cloudide</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}}
table{{border-collapse:collapse;margin:1rem 0}}caption{{text-align:left;font-weight:bold}}
th,td{{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}}
td:first-child,th:first-child{{text-align:left}}
svg{{display:block;margin:.5rem 0;background:#fafafa}}
.totals span{{margin-right:1.5rem}}
</style></head><body>
<h1>Team usage{scope}</h1>
<p>Signed in as {escape(viewer)}. {escape(report["since"][:10])} to {escape(report["until"][:10])}
(UTC, end exclusive).</p>
<form method="get" action="{escape(prefix, quote=True)}">
<label>Period <select name="days">{day_options}</select></label>
<label>Group <select name="group">{group_options}</select></label>
<label>User <input name="user" value="{escape(user or "", quote=True)}" size="16"></label>
<button type="submit">Show</button>
</form>
<p class="totals"><span>Tokens in: {_int(total["input_tokens"])}</span>
<span>Tokens out: {_int(total["output_tokens"])}</span>
<span>Cost: {escape(_num(total["cost"]))}</span>
<span>Kernel hours: {escape(_num(total["kernel_seconds"] / 3600, 3))}</span></p>
{_table(["user", "input tokens", "output tokens", "cost", "kernel hours", "events"],
        user_rows, "Per user")}
{_table(["group", "members", "input tokens", "output tokens", "cost", "kernel hours", "events"],
        group_rows, "Per group")}
{charts}
</body></html>
"""
