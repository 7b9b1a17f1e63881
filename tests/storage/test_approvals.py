"""Approvals: owner-only, decide once, argument hash pinning, atomic under concurrency."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from jupyter_cloudide.storage import (
    ApprovalRecord,
    ConflictError,
    ForbiddenError,
    MetadataStore,
    NotFoundError,
    StorageError,
    arguments_hash,
)


def _approval(store: MetadataStore, args: object = None) -> ApprovalRecord:
    conv = store.create_conversation("alice", "agent run")
    return store.create_approval(
        conv.id, "alice", "write_file", args if args is not None else {"path": "a.py", "n": 1}
    )


def test_arguments_hash_is_canonical() -> None:
    assert arguments_hash({"b": 1, "a": [1, 2]}) == arguments_hash({"a": [1, 2], "b": 1})
    assert arguments_hash({"a": 1}) != arguments_hash({"a": 2})
    assert len(arguments_hash({})) == 64


def test_create_and_allow(store: MetadataStore) -> None:
    approval = _approval(store)
    assert approval.status == "pending"
    assert approval.decided_by is None and approval.decided_at is None
    assert approval.arguments == {"path": "a.py", "n": 1}
    assert approval.arguments_hash == arguments_hash({"n": 1, "path": "a.py"})
    assert store.get_approval(approval.id, "alice") == approval

    decided = store.decide_approval(approval.id, "alice", "allow", approval.arguments_hash)
    assert decided.status == "allowed"
    assert decided.decided_by == "alice"
    assert decided.decided_at is not None
    stored = store.get_approval(approval.id, "alice")
    assert (stored.status, stored.decided_by) == ("allowed", "alice")


def test_deny(store: MetadataStore) -> None:
    approval = _approval(store)
    decided = store.decide_approval(approval.id, "alice", "deny", approval.arguments_hash)
    assert decided.status == "denied"
    assert store.get_approval(approval.id, "alice").status == "denied"


def test_only_the_owner_may_decide(store: MetadataStore) -> None:
    approval = _approval(store)
    with pytest.raises(ForbiddenError):
        store.decide_approval(approval.id, "mallory", "allow", approval.arguments_hash)
    with pytest.raises(NotFoundError):
        store.get_approval(approval.id, "mallory")
    assert store.get_approval(approval.id, "alice").status == "pending"


def test_unknown_approval_is_not_found(store: MetadataStore) -> None:
    with pytest.raises(NotFoundError):
        store.decide_approval("no-such-id", "alice", "allow", "0" * 64)


def test_deciding_twice_conflicts(store: MetadataStore) -> None:
    approval = _approval(store)
    store.decide_approval(approval.id, "alice", "deny", approval.arguments_hash)
    with pytest.raises(ConflictError):
        store.decide_approval(approval.id, "alice", "allow", approval.arguments_hash)
    assert store.get_approval(approval.id, "alice").status == "denied"


def test_changed_arguments_conflict(store: MetadataStore) -> None:
    approval = _approval(store)
    tampered = arguments_hash({"path": "/etc/passwd", "n": 1})
    with pytest.raises(ConflictError, match="arguments"):
        store.decide_approval(approval.id, "alice", "allow", tampered)
    assert store.get_approval(approval.id, "alice").status == "pending"


def test_invalid_decision_is_rejected(store: MetadataStore) -> None:
    approval = _approval(store)
    with pytest.raises(ValueError):
        store.decide_approval(approval.id, "alice", "always", approval.arguments_hash)  # type: ignore[arg-type]


def test_concurrent_decisions_exactly_one_wins(store: MetadataStore) -> None:
    approval = _approval(store)
    n = 8
    barrier = threading.Barrier(n)

    def decide(i: int) -> ApprovalRecord | StorageError:
        barrier.wait()
        try:
            return store.decide_approval(
                approval.id, "alice", "allow" if i % 2 else "deny", approval.arguments_hash
            )
        except StorageError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(decide, range(n)))

    winners = [r for r in results if isinstance(r, ApprovalRecord)]
    losers = [r for r in results if not isinstance(r, ApprovalRecord)]
    assert len(winners) == 1, results
    assert all(isinstance(r, ConflictError) for r in losers), losers
    assert store.get_approval(approval.id, "alice").status == winners[0].status


def test_expire_pending_approvals(store: MetadataStore) -> None:
    pending = [_approval(store) for _ in range(3)]
    decided = _approval(store)
    store.decide_approval(decided.id, "alice", "allow", decided.arguments_hash)

    assert store.expire_pending_approvals() == 3
    for approval in pending:
        stored = store.get_approval(approval.id, "alice")
        assert stored.status == "expired"
        assert stored.decided_at is not None
        with pytest.raises(ConflictError):
            store.decide_approval(approval.id, "alice", "allow", approval.arguments_hash)
    assert store.get_approval(decided.id, "alice").status == "allowed"
    assert store.expire_pending_approvals() == 0
