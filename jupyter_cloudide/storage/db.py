"""The metadata store: conversations, approvals, usage ledger and API keys over SQLAlchemy.

SQLite (default, zero setup) or PostgreSQL (shared, scale-out) behind one synchronous
repository API. Methods are blocking; the server calls them through :meth:`MetadataStore.call`,
which runs them on a small dedicated thread pool so the event loop never blocks. Every method
returns frozen dataclasses, never live ORM objects, so callers never hold a session.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import hashlib
import hmac
import json
import logging
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar, cast, overload
from urllib.parse import quote, quote_plus

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Date,
    Table,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy import (
    cast as sql_cast,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, Connection, CursorResult, Engine, Row, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from .errors import ConflictError, ForbiddenError, NotFoundError, SchemaTooNewError, StorageError
from .models import (
    ROLLUP_KEY,
    ApiKey,
    Approval,
    Conversation,
    GroupMember,
    Message,
    UsageDaily,
    UsageLedger,
    utcnow,
)

__all__ = [
    "API_KEY_PREFIX",
    "MIGRATIONS_DIR",
    "ApiKeyRecord",
    "ApprovalRecord",
    "ConversationRecord",
    "MessageRecord",
    "MetadataStore",
    "UsageEventIn",
    "UsageEventRecord",
    "arguments_hash",
    "head_revision",
    "normalize_url",
]

log = logging.getLogger("jupyter_cloudide.storage")

P = ParamSpec("P")
T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
API_KEY_PREFIX = "cide_"
#: How many characters of the plaintext key are kept to identify it in listings.
API_KEY_SHOWN_CHARS = 8
#: ``last_used_at`` is refreshed at most this often, so verifying a key is usually read-only.
LAST_USED_RESOLUTION = timedelta(seconds=60)
#: Rows per multi-row INSERT (16 parameters a row: keeps SQLite below its bound-parameter
#: limit of 32,766; larger chunks cost fewer round trips, see bench/metering.py).
USAGE_INSERT_CHUNK = 500

#: The ledger insert on PostgreSQL: one array per column, unnested into rows. A multi-row
#: VALUES statement (SQLAlchemy's insertmanyvalues) has 16 placeholders per row, and psycopg
#: re-parses a statement that long on every execution (its parse cache takes short ones only):
#: that parse was 60% of a batch's time (py-spy, bench/metering.py). Here the statement is
#: the same 16 parameters whatever the batch size.
_PG_INSERT_USAGE = text(
    'INSERT INTO usage_ledger (event_id, "user", "group", kind, source, model, kernelspec, '
    "route, input_tokens, output_tokens, quantity, cost, currency, occurred_at, created_at, "
    "extra) "
    "SELECT t.event_id, t.u, t.g, t.kind, t.source, t.model, t.kernelspec, t.route, t.tin, "
    "t.tout, t.quantity, t.cost, t.currency, t.occurred_at, t.created_at, CAST(t.extra AS JSON) "
    "FROM unnest(CAST(:event_id AS TEXT[]), CAST(:user AS TEXT[]), CAST(:group AS TEXT[]), "
    "CAST(:kind AS TEXT[]), CAST(:source AS TEXT[]), CAST(:model AS TEXT[]), "
    "CAST(:kernelspec AS TEXT[]), CAST(:route AS TEXT[]), CAST(:input_tokens AS BIGINT[]), "
    "CAST(:output_tokens AS BIGINT[]), CAST(:quantity AS DOUBLE PRECISION[]), "
    "CAST(:cost AS DOUBLE PRECISION[]), CAST(:currency AS TEXT[]), "
    "CAST(:occurred_at AS TIMESTAMPTZ[]), CAST(:created_at AS TIMESTAMPTZ[]), "
    "CAST(:extra AS TEXT[])) "
    "AS t(event_id, u, g, kind, source, model, kernelspec, route, tin, tout, quantity, cost, "
    "currency, occurred_at, created_at, extra) "
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)
_PG_USAGE_COLUMNS = ("event_id", "user", "group", "kind", "source", "model", "kernelspec",
                     "route", "input_tokens", "output_tokens", "quantity", "cost", "currency",
                     "occurred_at", "created_at")


def _pg_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Ledger rows as one list per column (``_PG_INSERT_USAGE``); ``extra`` as JSON text,
    serialised as the JSON column type does (``json.dumps``)."""
    columns: dict[str, list[Any]] = {name: [r[name] for r in rows] for name in _PG_USAGE_COLUMNS}
    columns["extra"] = [json.dumps(r["extra"]) for r in rows]
    return columns
#: Measures a daily roll-up row sums.
ROLLUP_MEASURES = ("events", "input_tokens", "output_tokens", "quantity", "cost")
#: Ledger rows read and repriced per page (keyset pagination: memory stays bounded).
REPRICE_PAGE = 5_000
#: Key of the PostgreSQL advisory lock that serialises concurrent migrations.
MIGRATION_LOCK_KEY = 0x636C6F7564696465  # "cloudide"
DEFAULT_SQLITE_BUSY_TIMEOUT_MS = 10_000

Decision = Literal["allow", "deny"]
_DECISION_STATUS = {"allow": "allowed", "deny": "denied"}


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ConversationRecord:
    """A chat thread as returned to callers."""

    id: str
    owner: str
    title: str
    model: str | None
    status: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class MessageRecord:
    """One message of a conversation; ``id`` orders messages by insertion."""

    id: int
    conversation_id: str
    turn_id: str
    role: str
    content: Any
    tokens_in: int | None
    tokens_out: int | None
    created_at: datetime


@dataclass(frozen=True)
class ApprovalRecord:
    """A tool-call approval and its decision (status pending|allowed|denied|expired)."""

    id: str
    conversation_id: str
    owner: str
    tool_name: str
    arguments: Any
    arguments_hash: str
    status: str
    decided_by: str | None
    created_at: datetime
    decided_at: datetime | None


@dataclass(frozen=True)
class UsageEventIn:
    """A usage event to record; ``event_id`` makes recording idempotent (retries are safe)."""

    event_id: str
    user: str
    kind: str
    quantity: float = 0.0
    cost: float = 0.0
    currency: str = "USD"
    input_tokens: int = 0
    output_tokens: int = 0
    model: str | None = None
    source: str | None = None
    group: str | None = None
    kernelspec: str | None = None
    route: str | None = None
    occurred_at: datetime | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UsageEventRecord:
    """A usage event as stored in the ledger."""

    id: int
    event_id: str
    user: str
    group: str | None
    kind: str
    source: str | None
    model: str | None
    kernelspec: str | None
    route: str | None
    input_tokens: int
    output_tokens: int
    quantity: float
    cost: float
    currency: str
    occurred_at: datetime
    created_at: datetime
    extra: dict[str, Any]


@dataclass(frozen=True)
class ApiKeyRecord:
    """An API key's metadata; never carries the secret or its hash."""

    id: str
    user: str
    name: str
    prefix: str
    models: tuple[str, ...]
    allow_auto_approve: bool
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime
    last_used_at: datetime | None

    def allows_model(self, model: str) -> bool:
        """True if the key's scope includes ``model``: its entries are model ids or globs
        (``gpt-*``); an empty scope allows every model."""
        return not self.models or any(fnmatch.fnmatchcase(model, p) for p in self.models)


def _conversation(row: Conversation) -> ConversationRecord:
    return ConversationRecord(
        id=row.id,
        owner=row.owner,
        title=row.title,
        model=row.model,
        status=row.status,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _approval(row: Approval) -> ApprovalRecord:
    return ApprovalRecord(
        id=row.id,
        conversation_id=row.conversation_id,
        owner=row.owner,
        tool_name=row.tool_name,
        arguments=row.arguments,
        arguments_hash=row.arguments_hash,
        status=row.status,
        decided_by=row.decided_by,
        created_at=row.created_at,
        decided_at=row.decided_at,
    )


def _usage(row: UsageLedger | Row[Any]) -> UsageEventRecord:
    """A ledger row (ORM object or Core row: the same attributes) as a record."""
    return UsageEventRecord(
        id=row.id,
        event_id=row.event_id,
        user=row.user,
        group=row.group,
        kind=row.kind,
        source=row.source,
        model=row.model,
        kernelspec=row.kernelspec,
        route=row.route,
        input_tokens=int(row.input_tokens),
        output_tokens=int(row.output_tokens),
        quantity=float(row.quantity),
        cost=float(row.cost),
        currency=row.currency,
        occurred_at=row.occurred_at,
        created_at=row.created_at,
        extra=dict(row.extra or {}),
    )


def _api_key(row: ApiKey) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        user=row.user,
        name=row.name,
        prefix=row.prefix,
        models=tuple(row.models or ()),
        allow_auto_approve=bool(row.allow_auto_approve),
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
    )


# --------------------------------------------------------------------------- hot statements

# The writes and reads on the path of every chat turn (create a conversation, check one, add
# a message) run as Core statements built once, on a plain Connection: statement building
# and the ORM Session's unit of work cost ~4x the CPU of the SQL itself (~500 -> ~130 us an
# add_message on SQLite), all of it holding the GIL the event loop needs meanwhile. Bind
# parameter names must differ from column names (an UPDATE's SET reserves those).
_CONVERSATIONS = cast(Table, Conversation.__table__)
_MESSAGES = cast(Table, Message.__table__)
_USAGE = cast(Table, UsageLedger.__table__)
_DAILY = cast(Table, UsageDaily.__table__)
_INSERT_CONVERSATION = insert(_CONVERSATIONS)
_SELECT_CONVERSATION = select(_CONVERSATIONS).where(
    _CONVERSATIONS.c.id == bindparam("b_id"), _CONVERSATIONS.c.owner == bindparam("b_owner")
)
_TOUCH_CONVERSATION = (
    update(_CONVERSATIONS)
    .where(_CONVERSATIONS.c.id == bindparam("b_id"), _CONVERSATIONS.c.owner == bindparam("b_owner"))
    .values(updated_at=bindparam("b_now"))
)
_INSERT_MESSAGE = insert(_MESSAGES)
_SELECT_MESSAGES = (
    select(_MESSAGES)
    .where(_MESSAGES.c.conversation_id == bindparam("b_id"))
    .order_by(_MESSAGES.c.id)
)


# --------------------------------------------------------------------------- helpers


def group_clause(user_column: Any, group_column: Any, group: str) -> Any:
    """Usage of a group: rows billed to it, and every row of its known members (the
    ``group_members`` table budgets keep), as a group budget counts them."""
    members = select(GroupMember.user).where(GroupMember.group == group)
    return or_(group_column == group, user_column.in_(members))


def arguments_hash(arguments: Any) -> str:
    """sha256 hex of the canonical JSON of tool arguments (sorted keys, compact, UTF-8)."""
    canonical = json.dumps(
        arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _new_id() -> str:
    return str(uuid.uuid4())


def _require(value: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    return value


def _aware(value: datetime | None, what: str) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")
    return value.astimezone(timezone.utc)


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL; ``postgresql://`` and ``postgres://`` become ``postgresql+psycopg``."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # The message of the parser error echoes the URL (and its password): do not chain it.
        raise StorageError("invalid database URL") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _alembic_config() -> Config:
    cfg = Config()
    # ConfigParser interpolates "%": escape it in case the install path contains one.
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest schema revision this code knows (what ``open()`` upgrades to)."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise StorageError("no migrations found")
    return head


# --------------------------------------------------------------------------- the store


class MetadataStore:
    """Repository over the metadata database; create it, call :meth:`open`, then use it."""

    def __init__(
        self,
        url: str | URL,
        *,
        max_workers: int | None = None,
        sqlite_busy_timeout_ms: int = DEFAULT_SQLITE_BUSY_TIMEOUT_MS,
        echo: bool = False,
    ) -> None:
        """Build the engine (no connection yet) and the worker pool for :meth:`call`."""
        self._url = normalize_url(url)
        self._password = self._url.password
        self.dialect = self._url.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise StorageError(f"unsupported database dialect {self.dialect!r}")
        self._engine = self._create_engine(sqlite_busy_timeout_ms, echo)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        insert_for = sqlite_dialect.insert if self.dialect == "sqlite" else pg_dialect.insert
        #: the ledger insert that skips event_ids already recorded (see record_usage)
        self._insert_usage = insert_for(_USAGE).on_conflict_do_nothing(index_elements=["event_id"])
        #: the roll-up upsert: adds a batch's sums to the day's row (see _add_rollups)
        daily = insert_for(_DAILY)
        self._upsert_daily = daily.on_conflict_do_update(
            index_elements=list(ROLLUP_KEY),
            set_={m: _DAILY.c[m] + getattr(daily.excluded, m) for m in ROLLUP_MEASURES},
        )
        workers = max_workers or (1 if self.dialect == "sqlite" else 4)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cloudide-db")
        self._lock = threading.Lock()
        self._schema_version: str | None = None
        self._opened = False
        self._closed = False

    # -- lifecycle -------------------------------------------------------------

    def _create_engine(self, busy_timeout_ms: int, echo: bool) -> Engine:
        if self.dialect == "postgresql":
            return create_engine(
                self._url,
                echo=echo,
                pool_pre_ping=True,
                pool_size=5,
                max_overflow=5,
                connect_args={"connect_timeout": 10},
            )
        database = self._url.database or ""
        in_memory = database in ("", ":memory:") or "mode=memory" in database
        if in_memory:
            engine = create_engine(
                self._url,
                echo=echo,
                poolclass=StaticPool,
                connect_args={"check_same_thread": False},
            )
        else:
            if not database.startswith("file:"):
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(
                self._url,
                echo=echo,
                connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
            )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
                cursor.execute("PRAGMA synchronous=NORMAL")
            finally:
                cursor.close()

        return engine

    def open(self) -> MetadataStore:
        """Connect and upgrade the schema to head; refuse a database with an unknown revision."""
        with self._lock:
            self._check_not_closed()
            if self._opened:
                return self
            cfg = _alembic_config()
            script = ScriptDirectory.from_config(cfg)
            known = {rev.revision for rev in script.walk_revisions()}
            before: str | None = None
            try:
                with self._engine.begin() as conn:
                    if self.dialect == "postgresql":
                        conn.execute(
                            text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                        )
                    current = MigrationContext.configure(conn).get_current_heads()
                    unknown = sorted(rev for rev in current if rev not in known)
                    if unknown:
                        raise SchemaTooNewError(
                            f"database schema revision {', '.join(unknown)} is newer than this "
                            f"version of jupyter_cloudide knows (head {script.get_current_head()});"
                            " upgrade jupyter_cloudide, the database was left untouched"
                        )
                    before = current[0] if current else None
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
                    self._schema_version = MigrationContext.configure(conn).get_current_revision()
            except StorageError:
                raise
            except SQLAlchemyError as exc:
                raise StorageError(
                    f"cannot open metadata database {self.display_url}: {self._describe(exc)}"
                ) from exc
            self._opened = True
        if before != self._schema_version:
            log.info(
                "metadata schema of %s upgraded from %s to %s",
                self.display_url,
                before,
                self._schema_version,
            )
        log.debug("metadata store open: %s (schema %s)", self.display_url, self._schema_version)
        return self

    def close(self) -> None:
        """Stop the worker pool and dispose of the engine's connections (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._engine.dispose()

    def __enter__(self) -> MetadataStore:
        return self.open()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MetadataStore {self.display_url}>"

    @property
    def display_url(self) -> str:
        """The database URL with the password masked, safe for logs and messages."""
        return self._url.render_as_string(hide_password=True)

    @property
    def schema_version(self) -> str | None:
        """The alembic revision of the database (set by :meth:`open`)."""
        return self._schema_version

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for tests and maintenance tools)."""
        return self._engine

    def health(self) -> dict[str, Any]:
        """Probe the database: ``{"state": "ok", "dialect", "schema"}`` or an error message."""
        if self._closed:
            return {"state": "error", "dialect": self.dialect, "message": "store is closed"}
        try:
            with self._engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                revision = MigrationContext.configure(conn).get_current_revision()
        except Exception as exc:
            return {"state": "error", "dialect": self.dialect, "message": self._describe(exc)}
        state = "ok" if revision is not None and revision == self._schema_version else "error"
        result: dict[str, Any] = {"state": state, "dialect": self.dialect, "schema": revision}
        if state != "ok":
            result["message"] = "schema not initialised" if revision is None else "schema changed"
        return result

    # -- async facade ------------------------------------------------------------

    @overload
    async def call(self, fn: str, /, *args: Any, **kwargs: Any) -> Any: ...

    @overload
    async def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...

    async def call(self, fn: str | Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run a blocking store method (by name, or any callable) on the store's thread pool."""
        if isinstance(fn, str):
            if fn.startswith("_") or not callable(getattr(type(self), fn, None)):
                raise AttributeError(f"MetadataStore has no public method {fn!r}")
            target: Callable[..., Any] = getattr(self, fn)
        else:
            target = fn
        self._check_not_closed()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(target, *args, **kwargs)
        )

    # -- internals ---------------------------------------------------------------

    def _check_not_closed(self) -> None:
        if self._closed:
            raise StorageError("metadata store is closed")

    def _scrub(self, message: str) -> str:
        """Remove the password (raw and URL-encoded) from a message."""
        if self._password:
            for form in {
                self._password,
                quote(self._password, safe=""),
                quote_plus(self._password),
            }:
                message = message.replace(form, "***")
        return message

    def _describe(self, exc: BaseException) -> str:
        orig = getattr(exc, "orig", None)
        detail = str(orig if orig is not None else exc).strip().splitlines()
        first = detail[0] if detail else ""
        return self._scrub(f"{type(orig or exc).__name__}: {first}")

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        """A session in a transaction, committed on success; database errors become StorageError."""
        self._check_not_closed()
        try:
            with self._sessions.begin() as session:
                yield session
        except SQLAlchemyError as exc:
            raise StorageError(f"metadata database error: {self._describe(exc)}") from exc

    @contextmanager
    def _conn(self) -> Iterator[Connection]:
        """A Core connection in a transaction, committed on success; database errors become
        StorageError. For the hot statements above: no Session, no unit of work."""
        self._check_not_closed()
        try:
            with self._engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StorageError(f"metadata database error: {self._describe(exc)}") from exc

    @staticmethod
    def _execute(session: Session, statement: Any) -> CursorResult[Any]:
        return cast("CursorResult[Any]", session.connection().execute(statement))

    @staticmethod
    def _owned_conversation(session: Session, conversation_id: str, owner: str) -> Conversation:
        row = session.scalars(
            select(Conversation).where(
                Conversation.id == conversation_id, Conversation.owner == owner
            )
        ).first()
        if row is None:
            raise NotFoundError("conversation not found")
        return row

    # -- conversations -----------------------------------------------------------

    def create_conversation(
        self, owner: str, title: str, model: str | None = None
    ) -> ConversationRecord:
        """Start a new conversation owned by ``owner`` (one Core INSERT: every new chat
        turn waits for it before its model call)."""
        _require(owner, "owner")
        now = utcnow()
        record = ConversationRecord(
            id=_new_id(), owner=owner, title=title or "", model=model, status="active",
            created_at=now, updated_at=now,
        )
        with self._conn() as conn:
            conn.execute(_INSERT_CONVERSATION, {
                "id": record.id, "owner": owner, "title": record.title, "model": model,
                "status": record.status, "created_at": now, "updated_at": now,
            })
        return record

    def list_conversations(
        self, owner: str, limit: int = 50, offset: int = 0
    ) -> list[ConversationRecord]:
        """The owner's conversations, most recently updated first."""
        limit = max(1, min(int(limit), 1000))
        with self._tx() as session:
            rows = session.scalars(
                select(Conversation)
                .where(Conversation.owner == owner)
                .order_by(Conversation.updated_at.desc(), Conversation.id)
                .limit(limit)
                .offset(max(0, int(offset)))
            ).all()
            return [_conversation(row) for row in rows]

    def get_conversation(self, conversation_id: str, owner: str) -> ConversationRecord:
        """One conversation; NotFoundError if missing or owned by someone else (a Core
        SELECT: a chat turn into an existing conversation checks it first)."""
        with self._conn() as conn:
            row = conn.execute(
                _SELECT_CONVERSATION, {"b_id": conversation_id, "b_owner": owner}
            ).first()
        if row is None:
            raise NotFoundError("conversation not found")
        return ConversationRecord(
            id=row.id, owner=row.owner, title=row.title, model=row.model, status=row.status,
            created_at=row.created_at, updated_at=row.updated_at,
        )

    def update_conversation(
        self,
        conversation_id: str,
        owner: str,
        *,
        title: str | None = None,
        model: str | None = None,
        status: str | None = None,
    ) -> ConversationRecord:
        """Change the title, model or status of an owned conversation."""
        with self._tx() as session:
            row = self._owned_conversation(session, conversation_id, owner)
            if title is not None:
                row.title = title
            if model is not None:
                row.model = model
            if status is not None:
                row.status = _require(status, "status")
            row.updated_at = utcnow()
            session.flush()
            return _conversation(row)

    def delete_conversation(self, conversation_id: str, owner: str) -> None:
        """Delete an owned conversation with its messages and approvals."""
        with self._tx() as session:
            row = self._owned_conversation(session, conversation_id, owner)
            session.delete(row)

    def add_message(
        self,
        conversation_id: str,
        owner: str,
        turn_id: str,
        role: str,
        content: Any,
        tokens_in: int | None = None,
        tokens_out: int | None = None,
    ) -> MessageRecord:
        """Append a message to an owned conversation and bump its ``updated_at``.

        Two prebuilt Core statements on a plain Connection (see the hot statements above):
        this is on the path of every chat turn, and the ORM versions (load the conversation,
        add, flush; or statements built per call in a Session) cost ~4x the CPU, all of it
        holding the GIL the event loop needs."""
        _require(turn_id, "turn_id")
        _require(role, "role")
        now = utcnow()
        with self._conn() as conn:
            bumped = conn.execute(
                _TOUCH_CONVERSATION, {"b_id": conversation_id, "b_owner": owner, "b_now": now}
            )
            if bumped.rowcount != 1:
                raise NotFoundError("conversation not found")
            result = conn.execute(_INSERT_MESSAGE, {
                "conversation_id": conversation_id, "turn_id": turn_id, "role": role,
                "content": content, "tokens_in": tokens_in, "tokens_out": tokens_out,
                "created_at": now,
            })
            key = result.inserted_primary_key
            assert key is not None  # a single-row INSERT always reports its key
        return MessageRecord(
            id=int(key[0]), conversation_id=conversation_id, turn_id=turn_id, role=role,
            content=content, tokens_in=tokens_in, tokens_out=tokens_out, created_at=now,
        )

    def list_messages(self, conversation_id: str, owner: str) -> list[MessageRecord]:
        """All messages of an owned conversation in insertion order (Core statements: every
        turn into an existing conversation reads its history first)."""
        with self._conn() as conn:
            if conn.execute(
                _SELECT_CONVERSATION, {"b_id": conversation_id, "b_owner": owner}
            ).first() is None:
                raise NotFoundError("conversation not found")
            rows = conn.execute(_SELECT_MESSAGES, {"b_id": conversation_id}).all()
        return [
            MessageRecord(
                id=row.id, conversation_id=row.conversation_id, turn_id=row.turn_id,
                role=row.role, content=row.content, tokens_in=row.tokens_in,
                tokens_out=row.tokens_out, created_at=row.created_at,
            )
            for row in rows
        ]

    # -- approvals ----------------------------------------------------------------

    def create_approval(
        self, conversation_id: str, owner: str, tool_name: str, arguments: Any
    ) -> ApprovalRecord:
        """Record a pending approval for a tool call in an owned conversation."""
        _require(tool_name, "tool_name")
        digest = arguments_hash(arguments)
        with self._tx() as session:
            self._owned_conversation(session, conversation_id, owner)
            row = Approval(
                id=_new_id(),
                conversation_id=conversation_id,
                owner=owner,
                tool_name=tool_name,
                arguments=arguments,
                arguments_hash=digest,
                status="pending",
                decided_by=None,
                created_at=utcnow(),
                decided_at=None,
            )
            session.add(row)
            session.flush()
            return _approval(row)

    def get_approval(self, approval_id: str, owner: str) -> ApprovalRecord:
        """One approval; NotFoundError if missing or owned by someone else."""
        with self._tx() as session:
            row = session.get(Approval, approval_id)
            if row is None or row.owner != owner:
                raise NotFoundError("approval not found")
            return _approval(row)

    def decide_approval(
        self, approval_id: str, user: str, decision: Decision, arguments_hash: str
    ) -> ApprovalRecord:
        """Allow or deny a pending approval; only its owner, only once, only for the same args.

        The final ``UPDATE ... WHERE status = 'pending'`` makes concurrent decisions race-free:
        exactly one caller wins, the others get ConflictError.
        """
        status = _DECISION_STATUS.get(decision)
        if status is None:
            raise ValueError("decision must be 'allow' or 'deny'")
        with self._tx() as session:
            row = session.get(Approval, approval_id)
            if row is None:
                raise NotFoundError("approval not found")
            if row.owner != user:
                raise ForbiddenError("only the owner of the conversation may decide this approval")
            if row.status != "pending":
                raise ConflictError(f"approval already {row.status}")
            if not hmac.compare_digest(row.arguments_hash, str(arguments_hash)):
                raise ConflictError("tool arguments changed since the approval was requested")
            record = _approval(row)
            now = utcnow()
            result = self._execute(
                session,
                update(Approval)
                .where(
                    and_(
                        Approval.id == approval_id,
                        Approval.status == "pending",
                        Approval.arguments_hash == record.arguments_hash,
                    )
                )
                .values(status=status, decided_by=user, decided_at=now),
            )
            if result.rowcount != 1:
                raise ConflictError("approval already decided")
            session.expunge(row)
            return replace(record, status=status, decided_by=user, decided_at=now)

    def expire_pending_approvals(self) -> int:
        """Mark every pending approval expired (at server start nobody waits for them)."""
        with self._tx() as session:
            result = self._execute(
                session,
                update(Approval)
                .where(Approval.status == "pending")
                .values(status="expired", decided_at=utcnow()),
            )
            return int(result.rowcount)

    # -- usage ledger --------------------------------------------------------------

    def record_usage(self, events: Sequence[UsageEventIn]) -> int:
        """Insert usage events, skipping event_ids already recorded; returns rows inserted.

        The daily roll-ups are updated in the same transaction from the rows actually
        inserted (``RETURNING event_id``), so a retried batch - or the same event twice - is
        neither in the ledger nor in the roll-ups twice, and a failed transaction leaves both
        untouched."""
        now = utcnow()
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        for ev in events:
            _require(ev.event_id, "event_id")
            _require(ev.user, "user")
            _require(ev.kind, "kind")
            if ev.event_id in seen:
                continue
            seen.add(ev.event_id)
            rows.append(
                {
                    "event_id": ev.event_id,
                    "user": ev.user,
                    "group": ev.group,
                    "kind": ev.kind,
                    "source": ev.source,
                    "model": ev.model,
                    "kernelspec": ev.kernelspec,
                    "route": ev.route,
                    "input_tokens": int(ev.input_tokens),
                    "output_tokens": int(ev.output_tokens),
                    "quantity": float(ev.quantity),
                    "cost": float(ev.cost),
                    "currency": ev.currency or "USD",
                    "occurred_at": _aware(ev.occurred_at, "occurred_at") or now,
                    "created_at": now,
                    "extra": dict(ev.extra),
                }
            )
        if not rows:
            return 0
        # One prebuilt statement, executed with a chunk of parameter sets: SQLAlchemy compiles
        # it once (cached) and expands the VALUES itself. A ``.values(chunk)`` statement built
        # per call is compiled per call: ~8x the CPU (21 ms for 100 rows on SQLite), on the
        # store's thread but holding the GIL the event loop needs, once per metering batch.
        inserted: list[dict[str, Any]] = []
        with self._conn() as conn:
            returning = bool(self._engine.dialect.insert_returning)
            for start in range(0, len(rows), USAGE_INSERT_CHUNK):
                chunk = rows[start : start + USAGE_INSERT_CHUNK]
                if self.dialect == "postgresql":
                    fresh = set(conn.execute(_PG_INSERT_USAGE, _pg_columns(chunk)).scalars())
                elif returning:
                    # RETURNING yields exactly the rows inserted; rowcount is unreliable here.
                    result = conn.execute(
                        self._insert_usage.returning(_USAGE.c.event_id), chunk
                    )
                    fresh = {r[0] for r in result.all()}
                else:  # pragma: no cover - SQLite < 3.35: ask which ids exist first
                    ids = [r["event_id"] for r in chunk]
                    known = set(conn.execute(
                        select(_USAGE.c.event_id).where(_USAGE.c.event_id.in_(ids))
                    ).scalars())
                    conn.execute(self._insert_usage, chunk)
                    fresh = set(ids) - known
                inserted.extend(r for r in chunk if r["event_id"] in fresh)
            self._add_rollups(conn, inserted)
        return len(inserted)

    @staticmethod
    def _rollup_key(row: Mapping[str, Any]) -> tuple[Any, ...]:
        return (row["occurred_at"].astimezone(timezone.utc).date(), row["user"],
                row["group"] or "", row["kind"], row["model"] or "", row["kernelspec"] or "",
                row["source"] or "", row["route"] or "", row["currency"])

    def _add_rollups(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Add inserted ledger rows to their days' roll-ups: one upsert per key, keys in a
        fixed order so two servers upserting overlapping keys on PostgreSQL cannot deadlock."""
        sums: dict[tuple[Any, ...], list[Any]] = {}
        for row in rows:
            acc = sums.get(key := self._rollup_key(row))
            if acc is None:
                acc = sums[key] = [0, 0, 0, 0.0, 0.0]
            acc[0] += 1
            acc[1] += row["input_tokens"]
            acc[2] += row["output_tokens"]
            acc[3] += row["quantity"]
            acc[4] += row["cost"]
        if not sums:
            return
        params = [
            {**dict(zip(ROLLUP_KEY, key, strict=True)),
             **dict(zip(ROLLUP_MEASURES, sums[key], strict=True))}
            for key in sorted(sums)
        ]
        conn.execute(self._upsert_daily, params)

    def _day_expr(self) -> Any:
        """The UTC date of ``usage_ledger.occurred_at`` in SQL (SQLite stores naive UTC)."""
        if self.dialect == "sqlite":
            return func.date(_USAGE.c.occurred_at)
        return sql_cast(func.timezone("UTC", _USAGE.c.occurred_at), Date)

    def _rebuild_rollups(self, conn: Connection, since: date | None) -> int:
        if self.dialect == "postgresql":
            # Writers upsert roll-ups after inserting their ledger rows: while this runs they
            # wait here, so a row is either seen by the SELECT below (committed) or added by
            # its writer after this transaction, never both or neither.
            conn.execute(text("LOCK TABLE usage_daily IN EXCLUSIVE MODE"))
        removal = delete(_DAILY)
        if since is not None:
            removal = removal.where(_DAILY.c.day >= since)
        conn.execute(removal)
        day = self._day_expr()
        keys = [day, _USAGE.c.user, func.coalesce(_USAGE.c.group, literal("")), _USAGE.c.kind,
                func.coalesce(_USAGE.c.model, literal("")),
                func.coalesce(_USAGE.c.kernelspec, literal("")),
                func.coalesce(_USAGE.c.source, literal("")),
                func.coalesce(_USAGE.c.route, literal("")), _USAGE.c.currency]
        query = select(*keys, func.count(), func.sum(_USAGE.c.input_tokens),
                       func.sum(_USAGE.c.output_tokens), func.sum(_USAGE.c.quantity),
                       func.sum(_USAGE.c.cost)).group_by(*keys)
        if since is not None:
            query = query.where(_USAGE.c.occurred_at
                                >= datetime(since.year, since.month, since.day,
                                            tzinfo=timezone.utc))
        conn.execute(insert(_DAILY).from_select([*ROLLUP_KEY, *ROLLUP_MEASURES], query))
        count = select(func.count()).select_from(_DAILY)  # rowcount of INSERT..SELECT varies
        if since is not None:
            count = count.where(_DAILY.c.day >= since)
        return int(conn.execute(count).scalar_one())

    def rebuild_rollups(self, since: datetime | date | None = None) -> int:
        """Recompute the daily roll-ups from the ledger for the days from ``since`` (a UTC
        date or an aware datetime, whose day is taken; None: all). For repair after a manual
        ledger edit; :meth:`reprice_usage` calls it. Returns roll-up rows written."""
        day = since.astimezone(timezone.utc).date() if isinstance(since, datetime) else since
        with self._conn() as conn:
            return self._rebuild_rollups(conn, day)

    def usage_volumes(self, since: datetime) -> list[tuple[str, str, str, str, int, int, float]]:
        """``(user, kind, model, kernelspec, input_tokens, output_tokens, quantity)`` summed
        from the roll-ups of the days from ``since`` (the start of a billing period): what
        pricing tiers count from when the ledger starts."""
        day = _aware(since, "since")
        assert day is not None
        c = _DAILY.c
        query = (select(c.user, c.kind, c.model, c.kernelspec, func.sum(c.input_tokens),
                        func.sum(c.output_tokens), func.sum(c.quantity))
                 .where(c.day >= day.date())
                 .group_by(c.user, c.kind, c.model, c.kernelspec))
        with self._conn() as conn:
            return [(u, k, m, ks, int(i or 0), int(o or 0), float(q or 0.0))
                    for u, k, m, ks, i, o, q in conn.execute(query).all()]

    def reprice_usage(
        self,
        since: datetime,
        price: Callable[[UsageEventRecord], float | None],
        currency: str | None = None,
    ) -> tuple[int, int]:
        """Set each ledger row's cost from ``since`` to ``price(row)`` (None: unchanged),
        calling it in ``occurred_at`` order (ties by id) so tiered prices see the volume
        before each row; then rebuild the roll-ups of those days. One transaction. Returns
        ``(rows seen, rows changed)``. ``currency``: also set on every repriced row."""
        start = _aware(since, "since")
        assert start is not None
        seen = changed = 0
        c = _USAGE.c
        change = (update(_USAGE).where(c.id == bindparam("b_id"))
                  .values(cost=bindparam("b_cost"), currency=bindparam("b_currency")))
        with self._conn() as conn:
            after: tuple[datetime, int] | None = None
            while True:
                query = select(_USAGE).where(c.occurred_at >= start)
                if after is not None:
                    query = query.where(tuple_(c.occurred_at, c.id) > tuple_(*after))
                page = conn.execute(
                    query.order_by(c.occurred_at, c.id).limit(REPRICE_PAGE)).all()
                if not page:
                    break
                updates: list[dict[str, Any]] = []
                for raw in page:
                    record = _usage(raw)
                    seen += 1
                    cost = price(record)
                    if cost is None:
                        continue
                    new_currency = currency or record.currency
                    if cost != record.cost or new_currency != record.currency:
                        updates.append({"b_id": record.id, "b_cost": float(cost),
                                        "b_currency": new_currency})
                if updates:
                    conn.execute(change, updates)
                    changed += len(updates)
                last = page[-1]
                after = (last.occurred_at, last.id)
            self._rebuild_rollups(conn, start.date())
        return seen, changed

    def _usage_filter(
        self,
        user: str | None,
        since: datetime | None,
        until: datetime | None,
        group: str | None,
    ) -> list[Any]:
        clauses: list[Any] = []
        if user is not None:
            clauses.append(UsageLedger.user == user)
        if group is not None:
            clauses.append(group_clause(UsageLedger.user, UsageLedger.group, group))
        since = _aware(since, "since")
        until = _aware(until, "until")
        if since is not None:
            clauses.append(UsageLedger.occurred_at >= since)
        if until is not None:
            clauses.append(UsageLedger.occurred_at < until)
        return clauses

    def usage_totals(
        self,
        user: str | None,
        since: datetime | None = None,
        until: datetime | None = None,
        *,
        group: str | None = None,
    ) -> dict[str, Any]:
        """Sums over ``[since, until)`` for a user (None: everyone), by kind, model and currency."""
        clauses = self._usage_filter(user, since, until, group)
        statement = (
            select(
                UsageLedger.kind,
                UsageLedger.model,
                UsageLedger.currency,
                func.count(UsageLedger.id),
                func.coalesce(func.sum(UsageLedger.input_tokens), 0),
                func.coalesce(func.sum(UsageLedger.output_tokens), 0),
                func.coalesce(func.sum(UsageLedger.quantity), 0.0),
                func.coalesce(func.sum(UsageLedger.cost), 0.0),
            )
            .where(*clauses)
            .group_by(UsageLedger.kind, UsageLedger.model, UsageLedger.currency)
        )
        with self._tx() as session:
            result_rows = session.execute(statement).all()

        def bucket() -> dict[str, Any]:
            return {
                "events": 0,
                "input_tokens": 0,
                "output_tokens": 0,
                "quantity": 0.0,
                "cost": 0.0,
            }

        total = bucket()
        by_kind: dict[str, dict[str, Any]] = {}
        by_model: dict[str, dict[str, Any]] = {}
        by_currency: dict[str, float] = {}
        for kind, model, currency, count, tin, tout, quantity, cost in result_rows:
            targets = [total, by_kind.setdefault(kind, bucket())]
            if model is not None:
                targets.append(by_model.setdefault(model, bucket()))
            for target in targets:
                target["events"] += int(count)
                target["input_tokens"] += int(tin)
                target["output_tokens"] += int(tout)
                target["quantity"] += float(quantity)
                target["cost"] += float(cost)
            by_currency[currency] = by_currency.get(currency, 0.0) + float(cost)
        return {
            "user": user,
            "group": group,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            **total,
            "by_kind": by_kind,
            "by_model": by_model,
            "by_currency": by_currency,
        }

    def list_usage_events(
        self,
        user: str | None,
        since: datetime | None = None,
        until: datetime | None = None,
        *,
        group: str | None = None,
        limit: int = 10_000,
    ) -> list[UsageEventRecord]:
        """Ledger rows over ``[since, until)``, oldest first (CSV export, audits)."""
        clauses = self._usage_filter(user, since, until, group)
        with self._tx() as session:
            rows = session.scalars(
                select(UsageLedger)
                .where(*clauses)
                .order_by(UsageLedger.occurred_at, UsageLedger.id)
                .limit(max(1, int(limit)))
            ).all()
            return [_usage(row) for row in rows]

    # -- API keys ------------------------------------------------------------------

    def create_api_key(
        self,
        user: str,
        name: str,
        models: Sequence[str] = (),
        expires_at: datetime | None = None,
        allow_auto_approve: bool = False,
    ) -> tuple[str, ApiKeyRecord]:
        """Mint a key; returns the plaintext (shown once, never stored) and its record."""
        _require(user, "user")
        if isinstance(models, str):
            raise ValueError("models must be a sequence of model names, not a string")
        plaintext = API_KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(
            id=_new_id(),
            user=user,
            name=name or "",
            prefix=plaintext[:API_KEY_SHOWN_CHARS],
            key_hash=_sha256_hex(plaintext),
            models=[str(m) for m in models],
            allow_auto_approve=bool(allow_auto_approve),
            expires_at=_aware(expires_at, "expires_at"),
            revoked_at=None,
            created_at=utcnow(),
            last_used_at=None,
        )
        with self._tx() as session:
            session.add(row)
        return plaintext, _api_key(row)

    def verify_api_key(self, plaintext: str) -> ApiKeyRecord | None:
        """The key's record if the plaintext is a live key (not revoked or expired), else None."""
        if not isinstance(plaintext, str) or not plaintext or len(plaintext) > 512:
            return None
        digest = _sha256_hex(plaintext)
        now = utcnow()
        with self._tx() as session:
            row = session.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).first()
            if row is None or not hmac.compare_digest(row.key_hash, digest):
                return None
            if row.revoked_at is not None:
                return None
            if row.expires_at is not None and row.expires_at <= now:
                return None
            if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
                row.last_used_at = now
                session.flush()
            return _api_key(row)

    def list_api_keys(self, user: str) -> list[ApiKeyRecord]:
        """The user's keys (including revoked and expired ones), oldest first."""
        with self._tx() as session:
            rows = session.scalars(
                select(ApiKey).where(ApiKey.user == user).order_by(ApiKey.created_at, ApiKey.id)
            ).all()
            return [_api_key(row) for row in rows]

    def revoke_api_key(self, key_id: str, user: str) -> bool:
        """Revoke the user's key; False if missing, not theirs or already revoked."""
        with self._tx() as session:
            result = self._execute(
                session,
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.user == user, ApiKey.revoked_at.is_(None))
                .values(revoked_at=utcnow()),
            )
            return int(result.rowcount) == 1
