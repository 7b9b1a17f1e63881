"""Prometheus metrics of jupyter_cloudide, registered on the default registry.

jupyter_server's ``/metrics`` route serves prometheus_client's default registry, so
defining them here at import is all it takes for them to appear there. Label values are
always bounded sets (route names, statuses, kinds), never user input, to keep the number
of series bounded on a server of a thousand users.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "cloudide_http_requests",
    "HTTP requests served by jupyter_cloudide routes.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "cloudide_http_request_duration_seconds",
    "Latency of jupyter_cloudide HTTP routes, from prepare to finish.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WS_CONNECTIONS = Gauge(
    "cloudide_ws_connections",
    "Open session-channel WebSocket connections.",
)
WS_SESSIONS = Gauge(
    "cloudide_ws_sessions",
    "Live session-channel sessions (attached or waiting for a reconnect).",
)
WS_FRAMES = Counter(
    "cloudide_ws_frames",
    "Session-channel frames, by direction.",
    ["direction"],
)
WS_REQUESTS = Counter(
    "cloudide_ws_requests",
    "Session-channel requests, by kind and outcome.",
    ["kind", "status"],
)
WS_DISCONNECTS = Counter(
    "cloudide_ws_disconnects",
    "Session-channel connections closed, by reason.",
    ["reason"],
)
RATE_LIMITED = Counter(
    "cloudide_rate_limited_requests",
    "Requests refused by a rate limit, by route class and transport (http, ws).",
    ["route_class", "transport"],
)
KERNEL_BUSY_SECONDS = Counter(
    "cloudide_kernel_busy_seconds",
    "Kernel busy seconds (union of busy spans from iopub status), by source (agent, user).",
    ["source"],
)
KERNEL_LIFETIME_SECONDS = Counter(
    "cloudide_kernel_lifetime_seconds",
    "Kernel lifetime seconds (start to shutdown or death; restarts are not billed twice).",
)
KERNELS_WATCHED = Gauge(
    "cloudide_kernels_watched",
    "Kernels of the server whose iopub the kernel-time watcher is listening to.",
)
TOKENS = Counter(
    "cloudide_tokens",
    "Model tokens metered into the usage ledger, by model and direction (input, output). "
    "Models past the first 200 distinct ids are counted as (other).",
    ["model", "direction"],
)
USAGE_COST = Counter(
    "cloudide_usage_cost",
    "Cost of the usage metered into the ledger, in the configured currency, by row kind.",
    ["kind"],
)
ROUTE_REQUESTS = Counter(
    "cloudide_route_requests",
    "Requests metered into the usage ledger by route (REST route name or ws:<request kind>).",
    ["route"],
)
LEDGER_ROWS_WRITTEN = Counter(
    "cloudide_ledger_rows_written",
    "Usage rows committed to the ledger (duplicates by event id are not counted).",
)
LEDGER_WRITE_ERRORS = Counter(
    "cloudide_ledger_write_errors",
    "Failed ledger write attempts (the rows are kept and retried with backoff).",
)
LEDGER_ROWS_DROPPED = Counter(
    "cloudide_ledger_rows_dropped",
    "Usage rows dropped because the ledger stayed unwritable past the in-memory bound.",
)
LEDGER_UNWRITTEN = Gauge(
    "cloudide_ledger_unwritten_rows",
    "Usage rows added to the ledger but not committed yet.",
)
