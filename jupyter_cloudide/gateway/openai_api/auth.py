"""Who calls ``cloudide/v1``: bearer credentials only, resolved in this order.

1. The credential: ``Authorization: Bearer <t>`` (or ``token <t>``, Jupyter's spelling), else
   ``x-api-key: <t>`` (the Anthropic SDK's header). Cookies and ``?token=`` never count on this
   prefix: an API has no browser session to ride on, and a URL is logged.
2. A key of ours (``cide_...``): looked up by its sha256 in the metadata store (revoked and
   expired keys fail). It never falls through to the other checks.
3. With jupyter_server's own identity provider (token/password): the server token, compared in
   constant time; its holder is the server's owner. Auto-approval is a key's privilege only.
4. With any other identity provider (JupyterHub's, a custom one): the provider decides, on a
   request that carries just the bearer header — a JupyterHub API token for this server is
   checked by JupyterHub's own HubAuth, scopes included.

The result is a :class:`~jupyter_cloudide.agent.api.Principal` on the handler and a
jupyter_server ``User`` as its ``current_user``, which ``@authorized`` hands to the server's
Authorizer with the ``cloudide:v1`` resource, like every other route.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import TYPE_CHECKING, Any

from jupyter_server.auth import User

from ...agent.api import Principal
from ...errors import ForbiddenError, UnauthorizedError

if TYPE_CHECKING:
    from ...app import CloudIDEApp

KEY_PREFIX = "cide_"
_SCHEME = re.compile(r"(?:bearer|token)[ \t]+(\S+)[ \t]*\Z", re.IGNORECASE)
#: a verified key is trusted this long before the store is asked again (a revocation takes
#: effect within it)
KEY_CACHE_S = 5.0
_KEY_CACHE_MAX = 1024
REALM = 'Bearer realm="jupyter_cloudide"'


def credential(headers: Any) -> str | None:
    """The bearer credential of a request, if any."""
    header = headers.get("Authorization")
    if header:
        match = _SCHEME.match(header.strip())
        return match.group(1) if match else None
    key = headers.get("x-api-key")
    return key.strip() or None if key else None


def unauthorized(message: str, bad: bool) -> UnauthorizedError:
    value = REALM + (', error="invalid_token"' if bad else "")
    return UnauthorizedError(message, headers={"WWW-Authenticate": value})


class ApiKeyUser(User):
    """A user authenticated by one of our API keys (the key's owner)."""


class BearerIdentity:
    """The identity provider the ``/v1`` handlers see: bearer credentials as the module says,
    everything else (login URLs, cookie names) delegated to the server's own provider."""

    def __init__(self, inner: Any, app: CloudIDEApp) -> None:
        self._inner = inner
        self._app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get_user(self, handler: Any) -> User:
        principal, user = await self._resolve(handler)
        handler.v1_principal = principal
        handler._token_authenticated = True  # bearer requests are exempt from XSRF
        return user

    def is_token_authenticated(self, handler: Any) -> bool:
        return bool(getattr(handler, "_token_authenticated", False))

    def should_check_origin(self, handler: Any) -> bool:
        return not self.is_token_authenticated(handler)

    async def _resolve(self, handler: Any) -> tuple[Principal, User]:
        app = self._app
        secret = credential(handler.request.headers)
        if not secret:
            if self._own_provider() and not self._inner.auth_enabled:
                return self._owner(), User(app._owner_name)  # the operator turned auth off
            raise unauthorized("missing credentials: send 'Authorization: Bearer <key>' with "
                               "a jupyter_cloudide API key or the server's token", bad=False)
        if secret.startswith(KEY_PREFIX):
            return await self._api_key(handler, secret)
        if self._own_provider():
            token = getattr(self._inner, "token", "") or ""
            if (token and hmac.compare_digest(secret.encode(), token.encode())) \
                    or not self._inner.auth_enabled:
                return self._owner(), User(app._owner_name)
            raise unauthorized("invalid credentials", bad=True)
        user = await self._delegate(handler, secret)
        if user is None:
            raise unauthorized("invalid credentials", bad=True)
        principal = Principal(user=app.user_key(user), groups=app.groups_of(user),
                              via="identity")
        return principal, user

    def _own_provider(self) -> bool:
        """jupyter_server's token/password provider (whose token is the server's token:
        under JupyterHub ``token`` is the server's own hub API token, never a user's)."""
        from jupyter_server.auth.identity import IdentityProvider, PasswordIdentityProvider

        return type(self._inner) in (IdentityProvider, PasswordIdentityProvider)

    def _owner(self) -> Principal:
        owner = self._app._owner_name
        return Principal(user=owner, via="server_token")

    async def _api_key(self, handler: Any, secret: str) -> tuple[Principal, User]:
        app = self._app
        digest = _digest(secret)
        record = _cached(app, digest)
        if record is None:
            store = await app.metadata_store()
            record = await store.call(store.verify_api_key, secret)
            if record is None:
                raise unauthorized("invalid, expired or revoked API key", bad=True)
            _remember(app, digest, record)
        user = ApiKeyUser(record.user)
        try:  # an Authorizer that cannot judge a key's user (JupyterHub's needs a hub model)
            allowed = app.server.authorizer.is_authorized(handler, user, "read",
                                                             "cloudide:v1")
        except Exception as exc:
            handler.log.warning("the authorizer cannot judge API-key users (%s): refused",
                                type(exc).__name__)
            allowed = False
        if not allowed:
            raise ForbiddenError("this server's authorizer does not allow API keys here")
        return Principal(user=record.user, via="api_key", scope=record.models,
                         auto_approve=record.allow_auto_approve, key_id=record.id), user

    async def _delegate(self, handler: Any, secret: str) -> User | None:
        """Ask the server's provider, on a request stripped to the bearer header."""
        request = handler.request
        request.headers.pop("Cookie", None)
        request.__dict__.pop("_cookies", None)
        for arguments in (request.arguments, request.query_arguments):
            arguments.pop("token", None)
        request.headers["Authorization"] = f"Bearer {secret}"
        user = self._inner.get_user(handler)
        if hasattr(user, "__await__"):
            user = await user
        return user if isinstance(user, User) else None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _cached(app: Any, digest: str) -> Any:
    cache: dict[str, tuple[float, Any]] = app.__dict__.setdefault("_v1_key_cache", {})
    hit = cache.get(digest)
    if hit is None:
        return None
    if hit[0] < time.monotonic():
        cache.pop(digest, None)
        return None
    record = hit[1]
    expires = record.expires_at
    if expires is not None:
        from datetime import datetime, timezone

        if expires <= datetime.now(timezone.utc):
            cache.pop(digest, None)
            return None
    return record


def _remember(app: Any, digest: str, record: Any) -> None:
    cache: dict[str, tuple[float, Any]] = app.__dict__.setdefault("_v1_key_cache", {})
    if len(cache) >= _KEY_CACHE_MAX:
        cache.clear()
    cache[digest] = (time.monotonic() + KEY_CACHE_S, record)


def forget_keys(app: Any) -> None:
    """A key was revoked here: stop trusting cached verifications at once."""
    app.__dict__.pop("_v1_key_cache", None)
