"""``cloudide/v1``: Chat Completions, Models and Embeddings in OpenAI's wire format.

Thin: each verb parses (``agent.wire.openai``), asks the API service (``agent.api``) and
writes. The same router, allowlists, rate limits (route class ``v1``, tokens counted) and
ledger (route ``v1``) as the chat.
"""

from __future__ import annotations

import time

from jupyter_server.auth.decorator import authorized
from tornado import web

from ...agent.wire import openai as wire
from ...errors import NotFoundError
from .base import V1Handler
from .messages import MessagesHandler


class ChatCompletionsHandler(V1Handler):
    route_name = "v1_chat_completions"
    operations = {"POST": "createChatCompletion"}

    @web.authenticated
    @authorized
    async def post(self) -> None:
        request, stream, include_usage = wire.parse_chat_request(self.json_body())
        completion_id, created = wire.new_completion_id(), int(time.time())
        if stream:
            encoder = wire.ChunkEncoder(completion_id, created, include_usage)
            await self.answer_chat(request, True, encoder.encode, dict)
            return
        builder = wire.CompletionBuilder(completion_id, created)
        await self.answer_chat(request, False, builder.add, builder.body)


class ModelsHandler(V1Handler):
    route_name = "v1_models"

    @web.authenticated
    @authorized
    async def get(self) -> None:
        api = await self.cloudide.api_service()
        self.write_openai(wire.models_body(await api.models(self.principal), api.created))


class ModelHandler(V1Handler):
    route_name = "v1_model"

    @web.authenticated
    @authorized
    async def get(self, model: str) -> None:
        api = await self.cloudide.api_service()
        self.write_openai(wire.model_json(await api.model(self.principal, model), api.created))


class EmbeddingsHandler(V1Handler):
    route_name = "v1_embeddings"
    operations = {"POST": "createEmbeddings"}

    @web.authenticated
    @authorized
    async def post(self) -> None:
        model, texts, encoding, dimensions = wire.parse_embeddings_request(self.json_body())
        app = self.cloudide
        api = await app.api_service()
        api.check_embedding(self.principal, model)
        estimate = sum(len(t) for t in texts) // 4
        budget = await app.reserve_budget(self.principal.user, self.principal.groups,
                                          api.embedding_cost(estimate))
        try:
            await self.rate_limit("v1", estimate)
            vectors, tokens = await api.embed(self.principal, model, texts, dimensions)
        finally:
            app.settle_budget(budget)
        self.write_openai(wire.embeddings_body(model, vectors, tokens, encoding))


class NotFoundHandler(V1Handler):
    """Anything else under the prefix: an OpenAI-shaped 404 (after auth, like the rest)."""

    route_name = "v1_not_found"

    def _missing(self) -> None:
        raise NotFoundError(f"no such route: {self.request.method} {self.request.path[-200:]}")

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self._missing()

    @web.authenticated
    @authorized
    async def post(self) -> None:
        self._missing()

    @web.authenticated
    @authorized
    async def put(self) -> None:
        self._missing()

    @web.authenticated
    @authorized
    async def patch(self) -> None:
        self._missing()

    @web.authenticated
    @authorized
    async def delete(self) -> None:
        self._missing()


default_handlers = [
    (r"/cloudide/v1/chat/completions", ChatCompletionsHandler),
    (r"/cloudide/v1/models", ModelsHandler),
    (r"/cloudide/v1/models/(?P<model>[^\x00]{1,256})", ModelHandler),
    (r"/cloudide/v1/embeddings", EmbeddingsHandler),
    (r"/cloudide/v1/messages", MessagesHandler),  # Anthropic's format (messages.py)
    (r"/cloudide/v1/.*", NotFoundHandler),
]
