"""The base of every jupyter_cloudide REST handler: one place for the rules every route keeps.

- authentication comes from jupyter_server's IdentityProvider (``APIHandler.prepare``), and
  every verb is wrapped in ``@authorized`` against the class's ``auth_resource``
  (``cloudide:<service>``); a test boots the server with ``allow_unauthenticated_access=False``
  and checks no route is left open;
- bodies are streamed, so an oversized one is refused with 413 from its Content-Length before
  any of it is read, and a chunked one is counted, never buffered past the limit;
- bodies decode strictly (UTF-8, JSON, an object) and validate against api.yaml;
- one error path: domain errors (:mod:`jupyter_cloudide.errors`) map to their status here,
  everything else is a JSON 500 without a traceback.
"""

from __future__ import annotations

import contextlib
import json
import time
from http.client import responses
from typing import TYPE_CHECKING, Any, ClassVar, cast

from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from ..errors import CloudIDEError, PayloadTooLargeError, RateLimitedError
from ..metering import metrics
from . import spec

if TYPE_CHECKING:
    from ..app import CloudIDEApp


@web.stream_request_body
class CloudIDEHandler(ExtensionHandlerMixin, APIHandler):
    """Base REST handler; subclasses set ``auth_resource``, ``route_name``, ``operations``."""

    #: authorizer resource, ``cloudide:<service>``
    auth_resource: ClassVar[str]
    #: a bounded metric label for this route
    route_name: ClassVar[str]
    #: HTTP method → api.yaml operationId (body schema and body limit come from there)
    operations: ClassVar[dict[str, str]] = {}

    _t0: float
    _chunks: list[bytes]
    _received: int
    _too_large: bool
    _body_limit: int

    @property
    def cloudide(self) -> CloudIDEApp:
        return cast("CloudIDEApp", self.extensionapp)

    @property
    def username(self) -> str:
        """The caller's stable user key (prepare has already refused anonymous requests)."""
        return self.cloudide.user_key(self.current_user)

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")

    async def prepare(self) -> None:  # type: ignore[override]
        self._t0 = time.perf_counter()
        self._chunks = []
        self._received = 0
        self._too_large = False
        self._body_limit = self.cloudide.body_limit_for(
            self.operations.get(self.request.method or "GET")
        )
        await super().prepare()
        length = self.request.headers.get("Content-Length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise web.HTTPError(400, "invalid Content-Length") from None
            if declared > self._body_limit:
                self._refused("too_large")
                raise PayloadTooLargeError(
                    f"body of {declared} bytes is over this route's limit of "
                    f"{self._body_limit} bytes"
                )

    def data_received(self, chunk: bytes) -> None:
        """Count a streamed chunk; past the limit, drop it rather than buffer it."""
        if self._too_large:
            return
        self._received += len(chunk)
        if self._received > self._body_limit:
            self._too_large = True
            self._chunks.clear()
            return
        self._chunks.append(chunk)

    def json_body(self) -> dict[str, Any]:
        """The request body as a JSON object, validated against this verb's api.yaml schema."""
        if self._too_large:
            self._refused("too_large")
            raise PayloadTooLargeError(
                f"body is over this route's limit of {self._body_limit} bytes"
            )
        body = spec.decode_json_object(b"".join(self._chunks))
        operation = self.operations.get(self.request.method or "")
        pointer = spec.operations()[operation]["body_pointer"] if operation else None
        if pointer is not None:
            spec.validate_schema(body, pointer)
        return body

    def optional_json_body(self) -> dict[str, Any]:
        """:meth:`json_body`, or ``{}`` when the request has no body at all."""
        if not self._received and not self._too_large:
            return {}
        return self.json_body()

    async def rate_limit(self, route_class: str, tokens: int = 0) -> None:
        """Charge one request (and a token estimate) to the caller; 429 when over the limit."""
        decision = await self.cloudide.check_rate_limit(self.username, route_class, tokens)
        headers = decision.headers() if decision is not None else {}
        for name, value in headers.items():
            self.set_header(name, value)
        if decision is not None and not decision.allowed:
            metrics.RATE_LIMITED.labels(route_class, "http").inc()
            self._refused("rate_limited", route_class=route_class,
                          retry_after_s=decision.retry_after_s)
            raise RateLimitedError(
                f"rate limit for {route_class} requests exceeded; retry in "
                f"{decision.retry_after_s:.1f} s",
                retry_after_s=decision.retry_after_s,
                headers=headers,
            )

    def _refused(self, reason: str, **extra: Any) -> None:
        user = self.cloudide.user_key(self.current_user) if self.current_user else "(anonymous)"
        self.cloudide.emit_refused(reason=reason, route=self.route_name, user=user, **extra)

    # -- one error path ---------------------------------------------------------------------

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, CloudIDEError):
            status_code = exc.status
        super().send_error(status_code, **kwargs)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, CloudIDEError):
            # Expected refusals are not server faults: one line, no traceback.
            self.log.info("%s %s → %d %s", self.request.method, self.route_name,
                          value.status, value.code)
            return
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, CloudIDEError):
            body = exc.to_dict()
            for name, value in exc.headers.items():
                self.set_header(name, value)
        elif isinstance(exc, web.HTTPError):
            message = exc.log_message or responses.get(status_code, "error")
            if exc.args:
                with contextlib.suppress(TypeError, ValueError):
                    message = message % exc.args
            body = {"status": status_code, "code": _code_for(status_code), "message": message}
        else:
            body = {"status": status_code, "code": _code_for(status_code),
                    "message": "internal server error" if status_code >= 500
                    else responses.get(status_code, "error")}
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def on_finish(self) -> None:
        status = str(self.get_status())
        method = self.request.method or "?"
        metrics.HTTP_REQUESTS.labels(self.route_name, method, status).inc()
        if self.current_user is not None:  # requests by route, for the usage ledger
            with contextlib.suppress(Exception):  # e.g. a /v1 request refused before auth
                self.cloudide.count_request(self.username, self.route_name)
        started = getattr(self, "_t0", None)
        if started is not None:
            metrics.HTTP_LATENCY.labels(self.route_name, method).observe(
                time.perf_counter() - started
            )


_CODES = {400: "invalid_input", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
          429: "rate_limited", 503: "unavailable"}


def _code_for(status: int) -> str:
    return _CODES.get(status, "internal_error" if status >= 500 else "error")


def write_json(handler: web.RequestHandler, value: Any, status: int = 200) -> None:
    """Serialise a response body (handlers stay one line per verb)."""
    handler.set_status(status)
    handler.finish(json.dumps(value, default=str))
