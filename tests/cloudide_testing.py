"""Test-side parts we plug into a real server through its documented extension points."""

from __future__ import annotations

from typing import Any

from jupyter_server.auth import Authorizer, IdentityProvider, User

#: bearer tokens of the users of a multi-user test server (as JupyterHub would name them)
USER_TOKENS = {"alice-token": "alice", "bob-token": "bob"}


class MultiUserIdentity(IdentityProvider):
    """Maps ``Authorization: token <t>`` to a named user, like a hub-backed provider would."""

    async def get_user(self, handler: Any) -> User | None:  # type: ignore[override]
        header = handler.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() in ("token", "bearer") and token in USER_TOKENS:
            name = USER_TOKENS[token]
            handler._token_authenticated = True  # token requests are exempt from XSRF
            return User(username=name, name=name, display_name=name)
        return None


class DenyResources(Authorizer):
    """An authorizer that denies the resources listed in ``denied`` (a class attribute)."""

    denied: frozenset[str] = frozenset()

    def is_authorized(self, handler: Any, user: User, action: str, resource: str) -> bool:
        return resource not in self.denied


def auth(user: str) -> dict[str, str]:
    """Request headers authenticating as ``user`` under MultiUserIdentity."""
    token = {v: k for k, v in USER_TOKENS.items()}[user]
    return {"Authorization": f"token {token}"}
