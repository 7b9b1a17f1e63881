"""``cloudide/v1/messages``: the Anthropic Messages API over the same governed models.

Thin, like the OpenAI handlers beside it: it parses (``agent.wire.anthropic``), asks the same
API service and writes. Everything else is the ``V1Handler`` base, switched to Anthropic's
shapes by its ``wire_format`` seam: bearer or ``x-api-key`` auth (``anthropic-version`` and
``anthropic-beta`` are accepted and ignored: we serve one version of the format), errors as
``{"type": "error", ...}``, ``ping`` events as keep-alives, a client that leaves cancelling the
upstream call with the tokens so far billed. Same router, allowlists, budget hook, rate-limit
class (``v1``) and ledger route (``v1``) as Chat Completions, so a client's choice of SDK
changes nothing about what it may do or what it costs.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ...agent.wire import anthropic as wire
from .base import V1Handler


class MessagesHandler(V1Handler):
    route_name = "v1_messages"
    operations = {"POST": "createMessage"}
    wire_format: Any = wire

    @web.authenticated
    @authorized
    async def post(self) -> None:
        request, stream = wire.parse_messages_request(self.json_body())
        encoder = wire.MessageEncoder(wire.new_message_id(), request.model)
        await self.answer_chat(request, stream, encoder.encode, encoder.message)
