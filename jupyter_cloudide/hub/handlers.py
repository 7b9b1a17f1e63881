"""Tornado handlers of the hub service: authentication, body limits and JSON errors only.

Two kinds of callers:

* user servers (``api/usage``, ``api/budgets``): the server's own Hub API token in the
  ``Authorization`` header, never a cookie. The Hub tells us whose token it is and its
  scopes; the token must hold ``access:services!service=<name>``.
* admins (the page at the prefix, ``api/report``): a Hub OAuth login (cookie) or an API
  token, whose user is a Hub admin or holds ``admin_scope``.

Everything else (what a row may contain, whose rows they are, the sums) is in
:mod:`.team`; the page is built in :mod:`.render`.
"""

from __future__ import annotations

import json
from http.client import responses
from typing import TYPE_CHECKING, Any, cast

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from tornado import web

from ..errors import CloudIDEError, InvalidInputError, PayloadTooLargeError

if TYPE_CHECKING:
    from .app import CloudIDEHubService

_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"


class ServiceHandler(HubOAuthenticated, web.RequestHandler):  # type: ignore[misc]
    """Base: resolves the Hub user in an async ``prepare`` (HubAuth's own lookup would block
    a thread per request) and answers errors as ``{"message": ...}``."""

    #: True: only a token in the Authorization header identifies the caller
    token_only = False
    #: True: the caller must be a Hub admin or hold the service's admin scope
    admin_only = False

    _model: dict[str, Any] | None = None

    @property
    def service(self) -> CloudIDEHubService:
        return cast("CloudIDEHubService", self.settings["cloudide_hub"])

    @property
    def hub_auth(self) -> HubOAuth:
        return cast(HubOAuth, self.settings["hub_auth"])

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", _CSP)
        self.set_header("Cache-Control", "no-store")
        self.set_header("Referrer-Policy", "no-referrer")

    def get_current_user(self) -> dict[str, Any] | None:
        return self._model

    async def prepare(self) -> None:
        if self.token_only:
            token = self.hub_auth.get_token(self, in_cookie=False)
            model = await self.hub_auth.user_for_token(token, sync=False) if token else None
        else:
            model = await self.hub_auth.get_user(self, sync=False)
        if not model:
            if not self.token_only and self.request.method == "GET" and not self.is_api:
                self.redirect(self.get_login_url())
                return
            raise web.HTTPError(401, "authentication required: a JupyterHub API token "
                                     "in the Authorization header")
        if model.get("kind", "user") != "user":
            raise web.HTTPError(403, "only users (their servers) may call this service")
        if not self.hub_auth.check_scopes(self.hub_auth.access_scopes, model):
            raise web.HTTPError(
                403, f"the token lacks {' or '.join(sorted(self.hub_auth.access_scopes))}")
        if self.admin_only and not self.service.is_admin(model):
            raise web.HTTPError(403, "usage reports are for Hub admins and holders of "
                                     f"{self.service.admin_scope}")
        self._model = model

    @property
    def is_api(self) -> bool:
        return self.request.path.startswith(self.service.service_prefix + "api/")

    @property
    def hub_user(self) -> str:
        assert self._model is not None
        return str(self._model["name"])

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(data, separators=(",", ":")))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif isinstance(exc, CloudIDEError):
            message = exc.message
        else:
            message = responses.get(status_code, "error")
        if status_code >= 500:
            message = responses.get(status_code, "server error")
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"message": message}))

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, CloudIDEError):
            self.send_error(e.status, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)


class HealthHandler(web.RequestHandler):
    """``GET api/health``: liveness for the Hub and the tests (no data, no auth)."""

    def get(self) -> None:
        from .._version import __version__

        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"status": "ok", "version": __version__}))


@web.stream_request_body
class UsageHandler(ServiceHandler):
    """``POST api/usage`` ``{"rows": [...]}``: a server reports its user's ledger rows.

    An oversized body is answered 413 without being kept: its bytes are read and dropped
    (closing the connection instead would make the Hub's proxy answer 503, not our 413), up
    to ``DISCARD_FACTOR`` times the limit, past which the connection is closed.
    """

    DISCARD_FACTOR = 16
    token_only = True
    _chunks: list[bytes]
    _received: int

    async def prepare(self) -> None:
        self._chunks, self._received = [], 0
        limit = self.service.max_body_bytes
        self.request.connection.set_max_body_size(  # type: ignore[union-attr]
            limit * self.DISCARD_FACTOR)
        await super().prepare()

    def data_received(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received <= self.service.max_body_bytes:
            self._chunks.append(chunk)
        else:
            self._chunks.clear()

    async def post(self) -> None:
        if self._received > self.service.max_body_bytes:
            raise PayloadTooLargeError(f"body over {self.service.max_body_bytes} bytes")
        raw = b"".join(self._chunks)
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise InvalidInputError("body: not UTF-8 JSON") from None
        result = await self.service.accept_report(self.hub_user, body)
        self.write_json(result)


class BudgetsHandler(ServiceHandler):
    """``GET api/budgets``: the caller's team budgets and its team mates' spend."""

    token_only = True

    async def get(self) -> None:
        self.write_json(await self.service.budgets_for(self.hub_user))


def _days(handler: web.RequestHandler) -> int:
    raw = handler.get_query_argument("days", "30")
    if not raw.isdigit() or not 1 <= int(raw) <= 366:
        raise InvalidInputError("days: an integer from 1 to 366")
    return int(raw)


def _name(handler: web.RequestHandler, field: str) -> str | None:
    value = handler.get_query_argument(field, "").strip()
    if len(value) > 255:
        raise InvalidInputError(f"{field}: too long")
    return value or None


class ReportHandler(ServiceHandler):
    """``GET api/report?group=&user=&days=``: the admin report as JSON."""

    admin_only = True

    async def get(self) -> None:
        report = await self.service.report(days=_days(self), group=_name(self, "group"),
                                           user=_name(self, "user"))
        self.write_json(report)


class AdminPageHandler(ServiceHandler):
    """``GET <prefix>``: the admin page (tables and plots)."""

    admin_only = True

    async def get(self) -> None:
        from .render import admin_page

        days, group, user = _days(self), _name(self, "group"), _name(self, "user")
        report = await self.service.report(days=days, group=group, user=user)
        groups = sorted(await self.service.groups.members())
        page = admin_page(report, viewer=self.hub_user, days=days, group=group, user=user,
                          all_groups=groups, prefix=self.service.service_prefix)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(page)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        from html import escape

        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = responses.get(status_code, "error")
        if isinstance(exc, web.HTTPError) and exc.log_message and status_code < 500:
            message = exc.log_message
        elif isinstance(exc, CloudIDEError) and status_code < 500:
            message = exc.message
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(f"<!DOCTYPE html><title>{status_code}</title><h1>{status_code}</h1>"
                    f"<p>{escape(message)}</p>")


class OAuthCallbackHandler(HubOAuthCallbackHandler):  # type: ignore[misc]
    """Finishes the Hub OAuth login of the admin page."""

    @property
    def hub_auth(self) -> HubOAuth:
        return cast(HubOAuth, self.settings["hub_auth"])


def handlers(prefix: str) -> list[tuple[str, type[web.RequestHandler]]]:
    """The routes under the service prefix (the proxy does not strip it)."""
    return [
        (prefix, AdminPageHandler),
        (prefix + "oauth_callback", OAuthCallbackHandler),
        (prefix + "api/health", HealthHandler),
        (prefix + "api/usage", UsageHandler),
        (prefix + "api/budgets", BudgetsHandler),
        (prefix + "api/report", ReportHandler),
    ]
