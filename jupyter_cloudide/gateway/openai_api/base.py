"""The base of the ``cloudide/v1`` handlers: bearer auth, OpenAI-shaped errors, SSE.

Every answer under the prefix has the OpenAI shape, whatever raised it: our domain errors,
provider errors, and tornado's/jupyter_server's own refusals (405, a foreign Host) all go
through :meth:`V1Handler.write_error`. Streams are written one flushed event at a time, never
compressed; the headers go out with the first event, so an error before it (a 429 from the
limiter or from every allowed upstream, a 404 model) is a real HTTP status the SDKs act on.
While an answer is slow to come (an agent's tool, a cold model), a ``: keep-alive`` comment
goes out every ``v1_keepalive_seconds`` (which also sends the headers). A client that goes
away cancels the work: the upstream call is closed and what it produced is billed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from http.client import responses
from typing import Any

from tornado import web

from ...agent.api import ApiChatRequest, ApiEvent, Principal
from ...agent.providers.base import ProviderError
from ...agent.wire import openai as wire
from ...errors import CloudIDEError
from ..base import CloudIDEHandler
from .auth import BearerIdentity
from .sse import SseHandler


class V1Handler(SseHandler, CloudIDEHandler):
    """Base of every ``cloudide/v1`` handler (SSE and cancellation: :class:`.sse.SseHandler`)."""

    auth_resource = "cloudide:v1"
    #: the wire format's error and keep-alive encoders (``error_for``, ``for_status``,
    #: ``KEEPALIVE``): a handler of another format (Anthropic Messages) sets its own module
    wire_format: Any = wire
    v1_principal: Principal

    @property
    def identity_provider(self) -> Any:
        return BearerIdentity(self.settings["identity_provider"], self.cloudide)

    @property
    def principal(self) -> Principal:
        return self.v1_principal

    @property
    def username(self) -> str:
        return self.v1_principal.user

    async def prepare(self) -> None:  # type: ignore[override]
        self._transforms = []  # never compressed: an SSE event must leave when written
        await super().prepare()

    # -- errors -------------------------------------------------------------------------

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, CloudIDEError | ProviderError):
            status_code = self.wire_format.error_for(exc).status
        super(CloudIDEHandler, self).send_error(status_code, **kwargs)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, ProviderError):
            self.log.info("%s %s → model error (%s)", self.request.method, self.route_name,
                          value.kind)
            return
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, CloudIDEError | ProviderError):
            error = self.wire_format.error_for(exc)
        elif isinstance(exc, web.HTTPError):
            message = exc.log_message or responses.get(status_code, "error")
            if exc.args:
                with contextlib.suppress(TypeError, ValueError):
                    message = message % exc.args
            error = self.wire_format.for_status(status_code, message)
        else:
            message = "internal server error" if status_code >= 500 \
                else responses.get(status_code, "error")
            error = self.wire_format.for_status(status_code, message)
        for name, value in error.headers.items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(error.body))

    async def answer_chat(self, request: ApiChatRequest, stream: bool,
                          encode: Callable[[ApiEvent], Any],
                          body: Callable[[], dict[str, Any]]) -> None:
        """A model answer's life on either wire (Chat Completions, Messages): the model and
        allowlist checked, the worst case held on the caller's budgets (BudgetExceededError:
        429, ``x-should-retry: false``) until the real cost is in the ledger, the tokens
        rate-limited, then the events streamed through ``encode`` (-> an SSE frame) or
        collected through it and ``body()`` written. The budget hold is released whatever
        happens (refused, failed, the client gone)."""
        app = self.cloudide
        api = await app.api_service()
        choices = await api.check(self.principal, request)
        reserved = self._received // 4  # ~4 bytes a token; settled with the real count after
        budget = await app.reserve_budget(self.principal.user, self.principal.groups,
                                          api.worst_case_cost(request, choices, reserved))
        try:
            await self.rate_limit("v1", reserved)
            events = api.chat(self.principal, request, choices, reserved=reserved)
            if stream:
                await self.run_cancellable(self.stream_events(events, encode,
                                                              app.v1_keepalive_seconds))
                return

            async def complete() -> None:
                async for event in events:
                    encode(event)
                self.write_openai(body())

            await self.run_cancellable(complete())
        finally:
            app.settle_budget(budget)

    def finish(self, *args: Any, **kwargs: Any) -> Any:
        if self._sse:
            kwargs["set_content_type"] = "text/event-stream; charset=utf-8"
        return super().finish(*args, **kwargs)

    def write_openai(self, body: dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(body, ensure_ascii=False, separators=(",", ":")))
