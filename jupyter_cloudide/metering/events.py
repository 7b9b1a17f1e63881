"""jupyter_events schemas shipped with the package, and typed helpers to emit them."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

SCHEMA_BASE = "https://events.jupyter.org/jupyter_cloudide"
LIFECYCLE = f"{SCHEMA_BASE}/gateway/lifecycle/v1"
REQUEST_REFUSED = f"{SCHEMA_BASE}/gateway/request_refused/v1"


def schema_paths() -> list[Path]:
    """Every event schema file in the package (registered with the server's EventLogger)."""
    root = resources.files("jupyter_cloudide.metering").joinpath("event_schemas")
    return sorted(Path(str(p)) for p in _walk(root) if str(p).endswith(".yaml"))


def _walk(node: Any) -> list[Any]:
    out: list[Any] = []
    for child in node.iterdir():
        if child.is_dir():
            out.extend(_walk(child))
        else:
            out.append(child)
    return out


def register_schemas(event_logger: Any) -> None:
    """Register our schemas on jupyter_server's ``serverapp.event_logger`` (idempotent)."""
    for path in schema_paths():
        try:
            event_logger.register_event_schema(path)
        except ValueError:
            # Already registered (a second extension app instance in tests).
            continue


#: A kernel_busy or kernel_lifetime ledger row was produced (metering/kernel_watch.py).
KERNEL_USAGE = f"{SCHEMA_BASE}/executor/kernel_usage/v1"

#: A billable ledger row (tokens, kernel seconds) was priced and added (metering/ledger.py).
USAGE = f"{SCHEMA_BASE}/metering/usage/v1"

#: Spend crossed a budget's warn percent (metering/budgets.py), once per budget and period.
BUDGET_WARNING = f"{SCHEMA_BASE}/metering/budget_warning/v1"
