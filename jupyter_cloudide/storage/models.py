"""SQLAlchemy ORM models of the metadata store (conversations, approvals, ledger, API keys).

The schema itself is owned by the alembic migrations in ``migrations/versions``; these models
must stay in step with them (a test compares the two).
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "APPROVAL_STATUSES",
    "ROLLUP_KEY",
    "ApiKey",
    "Approval",
    "Base",
    "Conversation",
    "GroupMember",
    "Message",
    "UTCDateTime",
    "UsageDaily",
    "UsageLedger",
    "utcnow",
]

APPROVAL_STATUSES = ("pending", "allowed", "denied", "expired")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: 64-bit autoincrement key; SQLite only autoincrements a column declared exactly INTEGER.
AutoId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    """Current time as a timezone-aware UTC datetime."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamp stored in UTC and always returned timezone-aware, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Normalise to UTC (naive values are taken as UTC); SQLite stores naive UTC text."""
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Attach UTC to values read back (SQLite returns naive datetimes)."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base with a naming convention so constraint names match the migrations."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Conversation(Base):
    """A chat thread owned by one user."""

    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_owner_updated_at", "owner", "updated_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    title: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(255), nullable=True)
    status: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Message(Base):
    """One message of a conversation; ``id`` increases with insertion order."""

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    turn_id: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(32))
    content: Mapped[Any] = mapped_column(JSON)
    tokens_in: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens_out: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Approval(Base):
    """A tool call waiting for (or having received) the owner's decision."""

    __tablename__ = "approvals"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'allowed', 'denied', 'expired')", name="status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    owner: Mapped[str] = mapped_column(String(255), index=True)
    tool_name: Mapped[str] = mapped_column(String(255))
    arguments: Mapped[Any] = mapped_column(JSON)
    arguments_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    decided_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class UsageLedger(Base):
    """One metered event (tokens, kernel seconds, requests); ``event_id`` makes it idempotent."""

    __tablename__ = "usage_ledger"
    __table_args__ = (
        Index("ix_usage_ledger_user_occurred_at", "user", "occurred_at"),
        Index("ix_usage_ledger_group_occurred_at", "group", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    user: Mapped[str] = mapped_column(String(255))
    group: Mapped[str | None] = mapped_column(String(255), nullable=True)
    kind: Mapped[str] = mapped_column(String(64))
    source: Mapped[str | None] = mapped_column(String(32), nullable=True)
    model: Mapped[str | None] = mapped_column(String(255), nullable=True)
    kernelspec: Mapped[str | None] = mapped_column(String(255), nullable=True)
    route: Mapped[str | None] = mapped_column(String(255), nullable=True)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    quantity: Mapped[float] = mapped_column(Float)
    cost: Mapped[float] = mapped_column(Float)
    currency: Mapped[str] = mapped_column(String(8))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    extra: Mapped[Any] = mapped_column(JSON)


#: The columns a daily roll-up row is keyed by (its unique constraint, the upsert target).
ROLLUP_KEY = ("day", "user", "group", "kind", "model", "kernelspec", "source", "route",
              "currency")


class UsageDaily(Base):
    """Per-day sums of the ledger, maintained in the transaction that inserts ledger rows.

    Reports over whole days read these instead of the ledger (a month of a heavy user is a
    few hundred rows, not every model call). The key columns are NOT NULL with ``''`` for
    "none": a unique constraint treats NULLs as distinct, so an upsert keyed on a NULL model
    would never find its row. ``day`` is the UTC date of ``occurred_at``.
    """

    __tablename__ = "usage_daily"
    __table_args__ = (
        UniqueConstraint(*ROLLUP_KEY, name="uq_usage_daily_key"),
        Index("ix_usage_daily_user_day", "user", "day"),
        Index("ix_usage_daily_group_day", "group", "day"),
    )

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    day: Mapped[date] = mapped_column(Date)
    user: Mapped[str] = mapped_column(String(255))
    group: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(255))
    kernelspec: Mapped[str] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(32))
    route: Mapped[str] = mapped_column(String(255))
    currency: Mapped[str] = mapped_column(String(8))
    events: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    quantity: Mapped[float] = mapped_column(Float)
    cost: Mapped[float] = mapped_column(Float)


class GroupMember(Base):
    """A user this server has seen in a group (JupyterHub groups): team budgets sum the spend
    of the group's members, including those not seen since a restart."""

    __tablename__ = "group_members"

    group: Mapped[str] = mapped_column(String(255), primary_key=True)
    user: Mapped[str] = mapped_column(String(255), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiKey(Base):
    """A bearer key for the ``/v1`` API; only the sha256 of the secret is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str] = mapped_column(String(255))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    models: Mapped[Any] = mapped_column(JSON)
    allow_auto_approve: Mapped[bool] = mapped_column(Boolean)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
