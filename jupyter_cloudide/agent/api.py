"""The governed models — and the agent — as an API for other clients (``cloudide/v1``).

Wire formats live beside this module (``wire/openai.py``; the Anthropic Messages format can
sit next to it): they parse a request into an :class:`ApiChatRequest` and encode the events
:meth:`ApiService.chat` yields. Everything that makes a call *governed* is here, once, for
every format:

- who may use which model: the router's allowlist, then the API key's own scope (globs);
- the router's fallbacks and cooldowns (a retryable failure before any output moves on to the
  next allowed model; after output the error goes to the client);
- metering: one ledger row per model call (route ``v1``), from the upstream's counts, or
  estimated — a client that disconnects mid-answer is billed for the prompt and what was
  produced until then;
- the rate limiter's token estimate is settled against the real count afterwards.

``model: <agent model>`` runs the agent loop server-side on the last user message (the
earlier messages are its history): tools run under the approval policy, and since nobody can
answer an approval over the API, an "ask" is a denial unless the API key allows auto-approval
(risky code and an administrator's cap at "ask" stay denied even then). The agent's text
streams as the answer; each tool call is reported as one line of text (``tool_activity``).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import (
    BudgetExceededError,
    CloudIDEError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
)
from .providers.base import (
    ChatRequest,
    Event,
    Finish,
    Message,
    ProviderError,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStarted,
    ToolSpec,
    Usage,
    estimate_tokens,
)

if TYPE_CHECKING:
    from ..storage.db import UsageEventIn
    from .models import Choice, ModelSpec

log = logging.getLogger(__name__)

#: request fields only OpenAI-compatible upstreams understand (passed on to those only)
OPENAI_ONLY_FIELDS = ("seed", "presence_penalty", "frequency_penalty", "logit_bias",
                      "response_format", "user", "reasoning_effort", "service_tier")
#: the longest tool-argument summary in an agent's tool line
_ACTIVITY_ARGS_CHARS = 160


@dataclass(frozen=True)
class Principal:
    """Who calls the API, and with which powers."""

    #: the user key: ledger, rate limits, allowlist, conversations
    user: str
    groups: tuple[str, ...] = ()
    #: how they authenticated: api_key | server_token | identity
    via: str = "identity"
    #: an API key's model globs; () = every model the user may use
    scope: tuple[str, ...] = ()
    #: the agent may run tools that would ask for approval (never risky or capped ones)
    auto_approve: bool = False
    key_id: str | None = None

    def may_use(self, model_id: str) -> bool:
        return not self.scope or any(fnmatch.fnmatchcase(model_id, p) for p in self.scope)


@dataclass(frozen=True)
class ApiChatRequest:
    """A chat request in the agent's vocabulary (OpenAI-shaped messages), whatever format
    it arrived in."""

    model: str
    messages: list[Message]
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    #: OPENAI_ONLY_FIELDS the client set
    openai_extra: dict[str, Any] = field(default_factory=dict)
    #: the request's own id (the completion id and the ledger's event ids)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: the client reads the answer as a stream; False lets a provider that can answer in one
    #: body (``complete_chat``) do so, which costs far less than a chunk per token
    stream: bool = True


@dataclass(frozen=True)
class Routed:
    """The first event of every answer: the model that answers (after any fallback)."""

    model: str


ApiEvent = Routed | Event


@dataclass(frozen=True)
class ApiModel:
    id: str
    owned_by: str
    kind: str  # chat | agent | embedding


class ApiUpstreamError(CloudIDEError):
    """The model (or the agent) failed in a way the client cannot fix by changing its
    request."""

    status = 502
    code = "upstream_error"


@dataclass
class ApiSettings:
    agent_model: str = "cloudide-agent"
    embedding_model: str = "cloudide-embedding"
    #: report each agent tool call as a line of the answer's text
    tool_activity: bool = True
    timeout_s: float = 120.0
    #: the whole answer of a non-streamed upstream call (it sends nothing until done)
    complete_timeout_s: float = 600.0
    strategy: str = "balanced"
    embedding_price_per_1k: float = 0.0
    #: texts per embeddings request, at most
    max_embedding_inputs: int = 2048


class ApiService:
    """The API's domain side; the app builds one per server."""

    def __init__(self, agent: Any, settings: ApiSettings, *,
                 meter: Callable[[list[UsageEventIn]], Any] | None = None,
                 settle: Callable[[str, int], Any] | None = None,
                 embedder: Callable[[], Any] | None = None) -> None:
        self.agent = agent
        self.registry = agent.registry
        self.settings = settings
        self.meter = meter
        #: (user, tokens): charge the rate limiter the difference to its estimate
        self.settle = settle
        self._embedder = embedder
        self.created = int(time.time())

    # -- models -------------------------------------------------------------------------

    async def models(self, principal: Principal) -> list[ApiModel]:
        """The models this caller may name (the user's allowlist, then the key's scope)."""
        await self.agent.ready()
        out: list[ApiModel] = []
        allowed = self.registry.allowed(principal.user, principal.groups)
        for spec in allowed:
            if spec.roles & {"chat", "agent"} and principal.may_use(spec.id):
                out.append(ApiModel(spec.id, spec.provider, "chat"))
        agent = self.settings.agent_model
        if agent and principal.may_use(agent) and any(
                "agent" in m.roles and "tools" in m.capabilities for m in allowed):
            out.append(ApiModel(agent, "jupyter_cloudide", "agent"))
        embedding = self.settings.embedding_model
        if embedding and self._embedder is not None and principal.may_use(embedding):
            out.append(ApiModel(embedding, "jupyter_cloudide", "embedding"))
        return out

    async def model(self, principal: Principal, model_id: str) -> ApiModel:
        for item in await self.models(principal):
            if item.id == model_id:
                return item
        raise NotFoundError(f"the model {model_id[:100]!r} does not exist or you do not "
                            "have access to it", field="model")

    def _check_scope(self, principal: Principal, model_id: str) -> None:
        if not principal.may_use(model_id):
            raise ForbiddenError(f"this API key may not use the model {model_id[:100]!r}",
                                 field="model")

    def is_agent(self, model_id: str) -> bool:
        return bool(self.settings.agent_model) and model_id == self.settings.agent_model

    async def check(self, principal: Principal, request: ApiChatRequest) -> list[Choice]:
        """Refuse a model the caller may not use before anything is charged (403/404);
        the candidates in the order to try them."""
        self._check_scope(principal, request.model)
        await self.agent.ready()
        if self.is_agent(request.model):
            return list(self.registry.route(principal.user, principal.groups, role="agent",
                                            strategy=self.settings.strategy,
                                            needs=("tools",)))
        choices = self.registry.route(principal.user, principal.groups, role="chat",
                                      requested=request.model, strategy=self.settings.strategy,
                                      needs=("tools",) if request.tools else ())
        return [c for c in choices if principal.may_use(c.model.id)]

    def worst_case_cost(self, request: ApiChatRequest, choices: Sequence[Choice],
                        input_tokens: int) -> float:
        """What the request can cost at most (the budgets reserve it): the input estimate
        and every output token it may produce, on the dearest model it may fall back to.
        The agent model reserves per model call inside its turn: 0 here (it is still refused
        when a budget is used up)."""
        if self.is_agent(request.model):
            return 0.0
        worst = 0.0
        for choice in choices:
            spec = choice.model
            limit = spec.max_output_tokens
            out = min(request.max_tokens or limit, limit)
            worst = max(worst, spec.cost(input_tokens, out))
        return worst

    def embedding_cost(self, tokens: int) -> float:
        """The cost of embedding ``tokens`` (the budgets reserve it)."""
        return tokens * self.settings.embedding_price_per_1k / 1000.0

    # -- chat ---------------------------------------------------------------------------

    def chat(self, principal: Principal, request: ApiChatRequest, choices: list[Choice],
             reserved: int = 0) -> AsyncGenerator[ApiEvent, None]:
        """The answer's events: :class:`Routed` first, then text, tool calls, usage and the
        finish reason. Raises CloudIDEError / ProviderError; closing the iterator early
        (the client went away) cancels the upstream call and bills what was produced."""
        if self.is_agent(request.model):
            return self._agent_turn(principal, request, reserved)
        return self._model_call(principal, request, choices, reserved)

    async def _model_call(self, principal: Principal, request: ApiChatRequest,
                          choices: list[Choice], reserved: int) -> AsyncGenerator[ApiEvent, None]:
        spent = 0
        last: ProviderError | None = None
        try:
            for attempt, choice in enumerate(choices):
                spec = choice.model
                call = _Call(spec, attempt)
                try:
                    async for event in self._stream(spec, request, call):
                        yield event
                except ProviderError as exc:
                    self.registry.record_failure(spec.id, exc)
                    spent += self._bill(principal, request, call, Usage(
                        0, estimate_tokens(call.produced()), estimated=True), failed=exc.kind)
                    if call.started or not exc.retryable:
                        raise
                    last = exc
                    log.info("v1 %s: %s failed (%s), trying the next model", request.request_id,
                             spec.id, exc.kind)
                    continue
                except BaseException:  # cancelled, or the client closed the stream
                    if not call.billed:
                        prompt = estimate_tokens(json.dumps(request.messages, default=str))
                        spent += self._bill(principal, request, call, call.usage or Usage(
                            prompt, estimate_tokens(call.produced()), estimated=True),
                            failed="cancelled")
                    raise
                # a whole answer's latency is not the first-token latency the router ranks by
                self.registry.record_success(spec.id, None if call.whole else call.first_ms())
                assert call.usage is not None  # closing_events always ends with usage
                spent += self._bill(principal, request, call, call.usage)
                return
            assert last is not None, "route() returns at least one candidate"
            raise last
        finally:
            self._settle(principal, spent - reserved)

    async def _stream(self, spec: ModelSpec, request: ApiChatRequest, call: _Call
                      ) -> AsyncGenerator[ApiEvent, None]:
        from .providers.openai_provider import OpenAIProvider

        provider = self.registry.providers[spec.provider]
        complete = None if request.stream else getattr(provider, "complete_chat", None)
        call.whole = complete is not None
        limit = spec.max_output_tokens
        upstream = ChatRequest(
            model=spec.model, messages=request.messages, tools=request.tools,
            max_tokens=min(request.max_tokens or limit, limit),
            temperature=request.temperature,
            timeout_s=self.settings.complete_timeout_s if call.whole else self.settings.timeout_s,
            tool_choice=request.tool_choice, parallel_tool_calls=request.parallel_tool_calls,
            top_p=request.top_p, stop=request.stop,
            extra=dict(request.openai_extra) if isinstance(provider, OpenAIProvider) else {})
        events = complete(upstream) if complete is not None else provider.stream_chat(upstream)
        async for event in events:
            if not call.started:
                call.started = time.monotonic()
                yield Routed(spec.id)
            if isinstance(event, TextDelta):
                call.text.append(event.text)
            elif isinstance(event, ToolCallDelta) or (
                    isinstance(event, ToolCall) and not call.streamed_calls):
                call.text.append(event.arguments)
            elif isinstance(event, ToolCallStarted):
                call.streamed_calls = True
            elif isinstance(event, Usage):
                call.usage = event
            yield event

    def _bill(self, principal: Principal, request: ApiChatRequest, call: _Call, usage: Usage,
              failed: str | None = None) -> int:
        from ..storage.db import UsageEventIn

        call.billed = True
        spec = call.spec
        if self.meter is not None:
            self.meter([UsageEventIn(
                event_id=f"v1:{request.request_id}:{call.attempt}", user=principal.user,
                kind="tokens", input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                model=spec.id, source="api", route="v1",
                extra={"cached_tokens": usage.cached_tokens, "estimated": usage.estimated,
                       "failed": failed, "via": principal.via, "key_id": principal.key_id,
                       "latency_ms": round((time.monotonic() - call.begun) * 1000, 1)})])
        return usage.input_tokens + usage.output_tokens

    def _settle(self, principal: Principal, difference: int) -> None:
        if self.settle is not None and difference:
            self.settle(principal.user, difference)

    # -- the agent as a model -----------------------------------------------------------

    async def _agent_turn(self, principal: Principal, request: ApiChatRequest,
                          reserved: int) -> AsyncGenerator[ApiEvent, None]:
        from .loop import TurnRequest

        text, prior = agent_input(request.messages)
        store = self.agent.store
        title = "API: " + (" ".join(text.split())[:76] or "request")
        record = await store.call(store.create_conversation, principal.user, title,
                                  self.settings.agent_model)
        turn_request = TurnRequest(
            user=principal.user, conversation_id=record.id, text=text,
            groups=principal.groups, strategy=self.settings.strategy, new_conversation=True,
            route="v1", unattended="allow" if principal.auto_approve else "deny",
            prior=prior)
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

        def emit(frame: str, data: dict[str, Any]) -> None:
            queue.put_nowait((frame, data))

        turn = self.agent.loop.start(turn_request, emit)
        assert turn.task is not None
        turn.task.add_done_callback(lambda _t: queue.put_nowait(("done", {})))
        usage = Usage(0, 0)
        output = ""
        try:
            yield Routed(self.settings.agent_model)
            while True:
                frame, data = await queue.get()
                if frame == "done":
                    break
                if frame == "stream":
                    output += data["delta"]
                    yield TextDelta(data["delta"])
                    continue
                kind = data.get("kind")
                if kind == "turn.usage":
                    usage = Usage(usage.input_tokens + int(data["input_tokens"]),
                                  usage.output_tokens + int(data["output_tokens"]),
                                  usage.cached_tokens + int(data["cached_tokens"]),
                                  usage.estimated or bool(data.get("estimated")))
                elif kind == "tool.result" and self.settings.tool_activity:
                    line = tool_line(data)
                    if output and not output.endswith("\n\n"):
                        line = ("\n" if output.endswith("\n") else "\n\n") + line
                    output += line
                    yield TextDelta(line)
            result = turn.task.result()
        finally:
            if not turn.task.done():  # the client went away: the turn ends with it
                self.agent.loop.cancel(principal.user, turn_request.turn_id)
            self._settle(principal, usage.input_tokens + usage.output_tokens - reserved)
        status = result["status"]
        if status == "error" and result.get("code") == BudgetExceededError.code:
            raise BudgetExceededError(str(result.get("error")))
        if status == "error":
            raise ApiUpstreamError(str(result.get("error") or "the agent failed"))
        if status == "limit":
            note = f"\n\n[stopped: {result.get('error')}]"
            yield TextDelta(note if output else note.lstrip())
        yield usage
        yield Finish("length" if status in ("limit", "truncated") else "stop")

    # -- embeddings ---------------------------------------------------------------------

    def check_embedding(self, principal: Principal, model: str) -> None:
        """Refuse an embedding model the caller may not use, before anything is charged."""
        self._check_scope(principal, model)
        if self._embedder is None or model != self.settings.embedding_model:
            raise NotFoundError(f"the model {model[:100]!r} does not exist or you do not have "
                                "access to it", field="model")

    async def embed(self, principal: Principal, model: str, texts: Sequence[str],
                    dimensions: int | None = None) -> tuple[Any, int]:
        """Unit-length vectors of ``texts`` by the index's embedder, and the tokens counted."""
        self.check_embedding(principal, model)
        assert self._embedder is not None
        if len(texts) > self.settings.max_embedding_inputs:
            raise InvalidInputError(f"input: at most {self.settings.max_embedding_inputs} "
                                    "texts per request", field="input")
        embedder = self._embedder()
        counter = self.agent.loop.counter

        def run() -> tuple[Any, int]:
            tokens = sum(counter.count(t) for t in texts)
            # an embedder refuses nothing but empty strings: a blank text embeds as a space
            return embedder.embed([t if t.strip() else " " for t in texts]), tokens

        from ..storage.embeddings import EmbedderError

        try:
            vectors, tokens = await asyncio.to_thread(run)
        except EmbedderError as exc:
            raise ApiUpstreamError(f"embedding failed: {exc}") from None
        if dimensions is not None and int(vectors.shape[1]) != dimensions:
            raise InvalidInputError(f"dimensions: this model's vectors have "
                                    f"{int(vectors.shape[1])}", field="dimensions")
        if self.meter is not None:
            from ..storage.db import UsageEventIn

            self.meter([UsageEventIn(
                event_id=f"v1:{uuid.uuid4().hex}:0", user=principal.user, kind="tokens",
                input_tokens=tokens, output_tokens=0, model=model,
                source="api", route="v1",
                extra={"embedder": getattr(embedder, "id", ""), "texts": len(texts),
                       "via": principal.via, "key_id": principal.key_id})])
        return vectors, tokens


@dataclass
class _Call:
    """One attempt on one model: what it produced so far (for an estimate if cut short)."""

    spec: ModelSpec
    attempt: int
    begun: float = field(default_factory=time.monotonic)
    started: float = 0.0
    text: list[str] = field(default_factory=list)
    usage: Usage | None = None
    streamed_calls: bool = False
    billed: bool = False
    #: one non-streamed upstream call (its events all come at the end)
    whole: bool = False

    def produced(self) -> str:
        return "".join(self.text)

    def first_ms(self) -> float:
        return ((self.started or time.monotonic()) - self.begun) * 1000


def agent_input(messages: Sequence[Message]) -> tuple[str, list[Message]]:
    """The agent's turn (the last user message) and its history from a stateless request:
    system, user and assistant text (the client's own tool calls are not the agent's)."""
    if not messages or messages[-1].get("role") != "user":
        raise InvalidInputError("messages: the agent answers the last message, which must be "
                                "the user's", field="messages")
    prior: list[Message] = []
    for message in messages[:-1]:
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "user", "assistant") and isinstance(content, str) and content:
            prior.append({"role": role, "content": content})
    text = messages[-1].get("content")
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError("messages: the last message has no text", field="messages")
    return text, prior


def tool_line(event: dict[str, Any]) -> str:
    """One line of the answer for a tool call of the agent: ``> name {arguments} → outcome``."""
    arguments = event.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False, separators=(", ", ": "))
    if len(arguments) > _ACTIVITY_ARGS_CHARS:
        arguments = arguments[:_ACTIVITY_ARGS_CHARS] + "…"
    arguments = " ".join(arguments.split())
    if event.get("ok"):
        outcome = "ok"
    elif event.get("denied"):
        outcome = "denied"
    else:
        outcome = "failed"
    return f"> {event.get('name')} {arguments} → {outcome}\n\n"
