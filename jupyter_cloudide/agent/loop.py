"""The agent loop: one chat turn, from the user's text to the final answer.

A turn repeats *steps* — one model call, then the tool calls it asked for — until the model
answers without tools, or a limit (steps, wall time, tokens) stops it with an explicit error.
Everything the user should see is pushed through ``emit`` as it happens (text deltas, tool
calls, approval requests, tool results, usage, fallbacks), and everything that must survive a
reload is in the metadata store (messages with their tool calls and results, approvals).

Model calls go through the registry's route: the first candidate is tried, and a retryable
failure before any output arrived (429, 5xx, timeout, connection, malformed stream) moves on to
the next allowed model after the failed one is put in cooldown. A failure after output arrived
ends the turn with an error: replaying a half-streamed answer from another model would show
the user two different answers. Tokens are metered for every call, including failed ones
whose usage is known.

Tool calls of one step run concurrently. Each is validated against its schema first (an
invalid call goes back to the model as an error, nothing runs), then the approval policy
decides; ``ask`` creates an approval bound to the exact arguments and the conversation's owner
and waits for ``respond``. Cancelling the turn, or an approval timing out, denies it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import BudgetExceededError, CloudIDEError, ConflictError, NotFoundError
from ..storage.db import UsageEventIn
from .approvals import ApprovalPolicy
from .context import ContextBlock, gather
from .history import read_history, transcript
from .models import Choice, ModelRegistry
from .prompt import TokenCounter, fit
from .providers.base import (
    ChatRequest,
    Finish,
    Message,
    ProviderError,
    TextDelta,
    ToolCall,
    ToolCallStarted,
    ToolSpec,
    Usage,
    within,
)
from .templates import Task, Templates
from .tools.redact import redactor

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], object]
#: arguments of a call that did not validate, as shown to the user
_RAW_ARGUMENTS_CHARS = 2000
#: diffs up to this size are kept with the tool message (larger ones: the live event only)
_SAVED_DIFF_CHARS = 200_000


@dataclass(frozen=True)
class TurnLimits:
    max_steps: int = 20
    max_seconds: float = 600.0
    max_tokens: int = 400_000
    approval_timeout_s: float = 900.0
    #: a pending approval is denied once its user has had no connection for this long (a page
    #: reload re-attaches well within it; a closed laptop does not)
    approval_disconnect_grace_s: float = 30.0
    #: after every allowed model failed transiently: tries of the whole list again
    retry_rounds: int = 2
    base_backoff_s: float = 1.0
    #: a Retry-After longer than this is not waited for: the turn fails visibly instead
    max_backoff_s: float = 20.0
    model_timeout_s: float = 120.0
    max_output_tokens: int = 4096
    #: workspace chunks retrieved into the prompt for each message (0: none)
    retrieve_k: int = 5
    retrieve_timeout_s: float = 3.0
    #: share of the free window attached context and retrieved chunks may take
    context_share: float = 0.5
    #: summarise older turns with the model when they no longer fit (else condensed lines)
    summarize: bool = True
    summary_max_tokens: int = 600


class TurnLimitError(CloudIDEError):
    status = 429
    code = "turn_limit"


@dataclass
class TurnRequest:
    user: str
    conversation_id: str
    text: str
    model: str | None = None
    groups: tuple[str, ...] = ()
    strategy: str = "balanced"
    #: extra context the client attached (active cell, selection): already plain text
    context: list[dict[str, Any]] = field(default_factory=list)
    turn_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: seconds the requesting session has had no live connection (None: connected)
    detached_for: Callable[[], float | None] | None = None
    #: the conversation was created for this turn: there is no history to load
    new_conversation: bool = False
    #: what the user asks for: agent | chat | explain | fix (see templates.TASKS)
    task: str = "agent"
    #: add workspace chunks relevant to the message to the prompt
    retrieve: bool = True
    #: the ledger's route for this turn's model calls (``v1``: the agent served as a model)
    route: str = "chat"
    #: nobody can answer an approval (the ``/v1`` agent): None asks the user; "deny" turns
    #: every "ask" into a denial; "allow" auto-approves the asks that are not firm
    unattended: str | None = None
    #: the conversation before this turn as the caller sent it (a stateless API), instead of
    #: the stored one
    prior: list[Message] | None = None


@dataclass
class _Turn:
    request: TurnRequest
    emit: Emit
    task: asyncio.Task[dict[str, Any]] | None = None
    approvals: dict[str, tuple[asyncio.Future[str], str]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    tokens: int = 0
    steps: int = 0
    #: the model that answered the last step, and why the router picked it
    model: str | None = None
    reason: str | None = None
    #: attached and retrieved context, resolved once per turn
    context: list[ContextBlock] = field(default_factory=list)
    #: notes on the context for the prompt report (e.g. why nothing was retrieved)
    context_notes: list[dict[str, Any]] = field(default_factory=list)
    #: the summary of turns no longer in the message list
    summary: str | None = None
    #: the turn id of each user message in the history, in order
    history_turns: list[str] = field(default_factory=list)
    #: tokens and cost of the last model call (kept with the step's assistant message)
    step_usage: dict[str, Any] | None = None
    #: chat.cancel was asked (the task was cancelled once)
    cancelling: bool = False


class AgentLoop:
    """Runs turns; one instance per server."""

    def __init__(self, registry: ModelRegistry, tools: Any, store: Any, *,
                 policy: ApprovalPolicy | None = None, limits: TurnLimits | None = None,
                 tool_context: Callable[[TurnRequest], Any] | None = None,
                 meter: Callable[[list[UsageEventIn]], Any] | None = None,
                 templates: Templates | None = None, budgets: Any | None = None) -> None:
        self.registry = registry
        #: the BudgetManager: each model call reserves its worst-case cost first
        self.budgets = budgets
        self.templates = templates or Templates()
        self.tools = tools
        self.store = store
        self.policy = policy or ApprovalPolicy()
        self.limits = limits or TurnLimits()
        self.tool_context = tool_context
        self.meter = meter
        self.counter = TokenCounter()
        #: task name → the tool specs its tools may use
        self._specs: dict[str, list[ToolSpec]] = {}
        self._spec_tokens: dict[tuple[int, str], int] = {}
        self._turns: dict[str, _Turn] = {}
        #: conversation id → tools the owner said "always" to
        self._always: dict[str, set[str]] = {}
        #: conversation id → the kernel its code runs in (state survives between calls)
        self._kernels: dict[str, str] = {}

    # -- public -------------------------------------------------------------------------

    def start(self, request: TurnRequest, emit: Emit) -> _Turn:
        """Start a turn in the background; its result also comes as the task's value."""
        turn = _Turn(request, emit)
        self._turns[request.turn_id] = turn
        turn.task = asyncio.create_task(self._run(turn), name=f"turn-{request.turn_id}")
        turn.task.add_done_callback(lambda _t: self._turns.pop(request.turn_id, None))
        return turn

    async def run(self, request: TurnRequest, emit: Emit) -> dict[str, Any]:
        turn = self.start(request, emit)
        assert turn.task is not None
        return await turn.task

    def cancel(self, user: str, turn_id: str) -> bool:
        turn = self._turns.get(turn_id)
        if turn is None or turn.request.user != user:
            raise NotFoundError("no running turn with that id")
        if turn.task is not None and not turn.task.done():
            # once: a second cancel would interrupt the cancelled turn's own clean-up (the
            # record of its end), and the chat.send would get no answer (found by fuzzing)
            if not turn.cancelling:
                turn.cancelling = True
                turn.task.cancel()
            return True
        return False

    async def respond(self, user: str, approval_id: str, decision: str,
                      digest: str | None = None) -> dict[str, Any]:
        """The owner's answer to an approval: allow, deny or always (allow + remember)."""
        for turn in self._turns.values():
            waiting = turn.approvals.get(approval_id)
            if waiting is None:
                continue
            future, expected = waiting
            stored = "deny" if decision == "deny" else "allow"
            record = await self.store.call(self.store.decide_approval, approval_id, user,
                                           stored, digest or expected)
            if decision == "always":
                self._always.setdefault(turn.request.conversation_id, set()).add(
                    record.tool_name)
            if not future.done():
                future.set_result(stored)
            return {"approval_id": approval_id, "status": record.status}
        # not waiting here: already decided, expired, or someone else's → the store says which
        await self.store.call(self.store.get_approval, approval_id, user)
        raise ConflictError("this approval is no longer pending")

    def cancel_all(self) -> None:
        """Server shutdown: every running turn ends (its pending approvals are denied)."""
        for turn in list(self._turns.values()):
            if turn.task is not None and not turn.task.done():
                turn.task.cancel()

    def running(self, user: str) -> list[str]:
        return [tid for tid, t in self._turns.items() if t.request.user == user]

    # -- the turn -------------------------------------------------------------------------

    async def _run(self, turn: _Turn) -> dict[str, Any]:
        req = turn.request
        status, error, code = "ok", None, None
        # The user's message is written while the history is read and the model called (the
        # store runs calls in order on its thread: it lands before the answer's).
        user_saved = asyncio.ensure_future(
            self._save(req, "user", {"text": req.text, "context": req.context,
                                     "task": req.task}))
        try:
            task = self.templates.task(req.task)
            messages, _ = await asyncio.gather(self._history(turn, task),
                                               self._gather_context(turn, task))
            messages.append({"role": "user", "content": req.text})
            if not req.new_conversation and self.limits.summarize:
                messages = await self._summarize_if_needed(turn, messages)
            specs = self._tool_specs(task)
            while True:
                self._check_limits(turn)
                turn.steps += 1
                text, calls, finish = await self._step(turn, messages, specs)
                assistant: Message = {"role": "assistant", "content": text or None}
                if calls:
                    assistant["tool_calls"] = [
                        {"id": c.id, "type": "function",
                         "function": {"name": c.name, "arguments": c.arguments}}
                        for c in calls]
                messages.append(assistant)
                await user_saved
                if not calls and finish == "length":
                    status = "truncated"
                # what a reloaded page needs to show the step as it was seen live: its usage,
                # and whether it ended the turn
                await self._save(req, "assistant", {"text": text, "tool_calls":
                                                    assistant.get("tool_calls", []),
                                                    "model": turn.model,
                                                    "model_reason": turn.reason,
                                                    "usage": turn.step_usage,
                                                    "final": not calls, "status": status})
                if not calls:
                    break
                results = await asyncio.gather(*(self._tool(turn, c) for c in calls))
                for call, content in zip(calls, results, strict=True):
                    messages.append({"role": "tool", "tool_call_id": call.id,
                                     "content": content})
        except asyncio.CancelledError:
            status, error = "cancelled", "the turn was cancelled"
            self._deny_pending(turn)
        except TurnLimitError as exc:
            status, error = "limit", exc.message
        except ProviderError as exc:
            status, error = "error", f"model error ({exc.kind}): {exc.message}"
        except CloudIDEError as exc:
            status, error, code = "error", exc.message, exc.code
        except Exception:
            log.exception("turn %s failed", req.turn_id)
            status, error = "error", "the turn failed (see the server log)"
        if not user_saved.done():
            await asyncio.wait({user_saved})
        if not user_saved.cancelled() and user_saved.exception() is not None:
            log.error("turn %s: the user message was not saved: %r", req.turn_id,
                      user_saved.exception())
        result = {"conversation_id": req.conversation_id, "turn_id": req.turn_id,
                  "status": status, "steps": turn.steps, "tokens": turn.tokens,
                  "model": turn.model}
        if error:
            result["error"] = error
            if code:
                result["code"] = code
            turn.emit("event", {"kind": "turn.error", "turn_id": req.turn_id,
                                "status": status, "message": error})
            try:
                # shielded: a shutdown cancelling the turn again still records how it ended
                await asyncio.shield(self._save(req, "error", {"status": status,
                                                               "message": error}))
            except (Exception, asyncio.CancelledError):
                log.debug("could not record the turn error", exc_info=True)
        return result

    def _tool_specs(self, task: Task) -> list[ToolSpec]:
        specs = self._specs.get(task.name)
        if specs is None:
            allowed = self._task_tools(task)
            specs = self._specs[task.name] = [
                ToolSpec(**s["function"]) for s in self.tools.specs()
                if s["function"]["name"] in allowed]
        return specs

    def _specs_tokens(self, specs: list[ToolSpec], model: str) -> int:
        """Tokens the tool specs take in a request (counted once per list and model)."""
        key = (id(specs), model)
        tokens = self._spec_tokens.get(key)
        if tokens is None:
            text = json.dumps([dataclasses.asdict(s) for s in specs], separators=(",", ":"))
            tokens = self._spec_tokens[key] = self.counter.count(text, model)
        return tokens

    def _task_tools(self, task: Task) -> set[str]:
        return {tool.name for tool in self.tools if tool.kind in task.tool_kinds}

    def _all_tools(self) -> set[str]:
        return {tool.name for tool in self.tools}

    async def _gather_context(self, turn: _Turn, task: Task) -> None:
        req = turn.request
        ctx = self.tool_context(req) if self.tool_context is not None else None
        k = self.limits.retrieve_k if req.retrieve and task.retrieve else 0
        turn.context, turn.context_notes = await gather(
            ctx, req.context, req.text, retrieve_k=k, timeout_s=self.limits.retrieve_timeout_s)

    def _check_limits(self, turn: _Turn) -> None:
        limits = self.limits
        if turn.steps >= limits.max_steps:
            raise TurnLimitError(f"stopped after {limits.max_steps} steps (the step limit)")
        if time.monotonic() - turn.started > limits.max_seconds:
            raise TurnLimitError(f"stopped after {limits.max_seconds:g} s (the time limit)")
        if turn.tokens >= limits.max_tokens:
            raise TurnLimitError(f"stopped after {turn.tokens} tokens (the token budget)")

    async def _step(self, turn: _Turn, messages: list[Message], specs: list[ToolSpec]
                    ) -> tuple[str, list[ToolCall], str]:
        req = turn.request
        choices = self.registry.route(req.user, req.groups, role="agent", requested=req.model,
                                      strategy=req.strategy, needs=("tools",))
        last: ProviderError | None = None
        attempt = 0
        # every allowed model once; then, when all failed transiently, the list again after a
        # backoff (at least the Retry-After asked for), a bounded number of times
        for round_ in range(self.limits.retry_rounds + 1):
            if round_:
                wait = max(self.limits.base_backoff_s * 2 ** (round_ - 1),
                           last.retry_after_s if last and last.retry_after_s else 0.0)
                if wait > self.limits.max_backoff_s or time.monotonic() - turn.started + wait \
                        > self.limits.max_seconds:
                    break
                turn.emit("event", {"kind": "model.retry", "turn_id": req.turn_id,
                                    "after": last.kind if last else None,
                                    "wait_s": round(wait, 2)})
                await asyncio.sleep(wait)
            for choice in choices:
                if attempt:
                    turn.emit("event", {"kind": "model.fallback", "turn_id": req.turn_id,
                                        "model": choice.model.id, "reason": choice.reason,
                                        "after": last.kind if last else None})
                try:
                    return await self._call(turn, choice, messages, specs, attempt)
                except _Failed as failed:
                    last = failed.error
                    attempt += 1
                    if failed.streamed or not failed.error.retryable:
                        raise failed.error from None
        assert last is not None
        raise last

    async def _call(self, turn: _Turn, choice: Choice, messages: list[Message],
                    specs: list[ToolSpec], attempt: int) -> tuple[str, list[ToolCall], str]:
        req, spec = turn.request, choice.model
        provider = self.registry.providers[spec.provider]
        max_tokens = min(spec.max_output_tokens, self.limits.max_output_tokens)
        # the tool specs travel with every request: their tokens are not the prompt's to use
        specs_tokens = self._specs_tokens(specs, spec.id)
        fitted, report = fit(messages, window=spec.context_window,
                             reserve_output=max_tokens + specs_tokens,
                             counter=self.counter, model=spec.id, context=turn.context,
                             context_share=self.limits.context_share, summary=turn.summary)
        report.items.extend(turn.context_notes)
        turn.emit("event", {"kind": "prompt", "turn_id": req.turn_id, "model": spec.id,
                            "task": req.task, **report.to_json()})
        request = ChatRequest(model=spec.model, messages=fitted, tools=specs,
                              max_tokens=max_tokens, timeout_s=self.limits.model_timeout_s)
        # the worst case (whole prompt, every output token) is held on the user's budgets
        # until the call's real cost is in the ledger; refused: the turn ends saying why
        reservation = await self._reserve(
            turn, spec.cost(report.tokens + specs_tokens, max_tokens))
        turn.emit("event", {"kind": "model.call", "turn_id": req.turn_id, "model": spec.id,
                            "reason": choice.reason, "step": turn.steps})
        started = time.monotonic()
        first: float | None = None
        text: list[str] = []
        calls: list[ToolCall] = []
        usage: Usage | None = None
        finish = "stop"
        try:
            async for event in provider.stream_chat(request):
                if first is None:
                    first = time.monotonic()
                if isinstance(event, TextDelta):
                    text.append(event.text)
                    turn.emit("stream", {"conversation_id": req.conversation_id,
                                         "turn_id": req.turn_id, "delta": event.text})
                elif isinstance(event, ToolCallStarted):
                    turn.emit("event", {"kind": "tool.call", "turn_id": req.turn_id,
                                        "tool_call_id": event.id, "name": event.name})
                elif isinstance(event, ToolCall):
                    calls.append(event)
                elif isinstance(event, Usage):
                    usage = event
                elif isinstance(event, Finish):
                    finish = event.reason
        except ProviderError as exc:
            self.registry.record_failure(spec.id, exc)
            self._meter(turn, spec, usage or Usage(0, len("".join(text)) // 4, estimated=True),
                        attempt, started, failed=exc.kind)
            raise _Failed(exc, streamed=bool(text or calls)) from None
        except asyncio.CancelledError:
            # the turn was cancelled mid-answer: the upstream was sent the prompt and produced
            # this much, and bills it
            self._meter(turn, spec, usage or Usage(
                self.counter.count_messages(fitted, spec.id),
                self.counter.count("".join(text), spec.id), estimated=True),
                attempt, started, failed="cancelled")
            raise
        finally:
            # no await from here to the success path's _meter: released and metered at once
            if self.budgets is not None:
                self.budgets.settle(reservation)
        self.registry.record_success(spec.id, ((first or time.monotonic()) - started) * 1000)
        if usage is not None and not usage.estimated:
            self.counter.calibrate(spec.id, report.tokens, usage.input_tokens)
        self._meter(turn, spec, usage or Usage(0, 0, estimated=True), attempt, started)
        turn.model, turn.reason = spec.id, choice.reason
        return "".join(text), calls, finish

    async def _reserve(self, turn: _Turn, amount: float) -> Any:
        if self.budgets is None:
            return None
        return await self.budgets.reserve(turn.request.user, turn.request.groups, amount)

    def _meter(self, turn: _Turn, spec: Any, usage: Usage, attempt: int, started: float,
               failed: str | None = None, label: str = "step") -> None:
        req = turn.request
        turn.tokens += usage.input_tokens + usage.output_tokens
        cost = spec.cost(usage.input_tokens, usage.output_tokens, usage.cached_tokens)
        payload = {"kind": "turn.usage", "turn_id": req.turn_id, "model": spec.id,
                   "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                   "cached_tokens": usage.cached_tokens, "cost": round(cost, 6),
                   "estimated": usage.estimated}
        turn.emit("event", payload)
        if label == "step" and not failed:
            turn.step_usage = {k: payload[k] for k in ("input_tokens", "output_tokens",
                                                       "cached_tokens", "cost", "estimated")}
        if self.meter is None:
            return
        row = UsageEventIn(
            event_id=f"turn:{req.turn_id}:{turn.steps}:{attempt}"
            + ("" if label == "step" else f":{label}"), user=req.user, kind="tokens",
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            model=spec.id, source="agent", route=req.route,
            extra={"conversation_id": req.conversation_id, "cached_tokens": usage.cached_tokens,
                   "estimated": usage.estimated, "failed": failed,
                   "latency_ms": round((time.monotonic() - started) * 1000, 1)})
        self.meter([row])

    # -- tools ----------------------------------------------------------------------------

    async def _tool(self, turn: _Turn, call: ToolCall) -> str:
        req = turn.request
        base = {"turn_id": req.turn_id, "tool_call_id": call.id, "name": call.name}
        try:
            task = self.templates.task(req.task)
            if call.name not in self._task_tools(task) and call.name in self._all_tools():
                # the model was not offered it: "chat" and "explain" never write or run
                raise CloudIDEError(f"{call.name} is not available when the task is "
                                    f"{task.name!r}; say what to change instead")
            arguments = self.tools.validate(call.name, call.arguments)
            tool = self.tools.get(call.name)
        except Exception as exc:  # unknown tool, invalid JSON or schema: back to the model
            message = str(getattr(exc, "message", None) or exc)
            turn.emit("event", {"kind": "tool.result", **base, "ok": False, "content": message,
                                "arguments": call.arguments[:_RAW_ARGUMENTS_CHARS]})
            await self._save(req, "tool", {"tool_call_id": call.id, "name": call.name,
                                           "ok": False, "refused": True, "content": message})
            return f"error: {message}"
        kind = str(getattr(tool.kind, "value", tool.kind))
        risks = self._risks(call.name, arguments) if kind == "execute" else []
        verdict = self.policy.decide(call.name, kind,
                                     always=self._always.get(req.conversation_id, ()),
                                     risky_reasons=risks)
        if verdict.mode == "ask" and req.unattended is not None:
            verdict = verdict.unattended(auto_approve=req.unattended == "allow")
        if verdict.mode == "ask":
            verdict_mode = await self._ask(turn, call, arguments, verdict.reason, risks)
        else:
            verdict_mode = verdict.mode
        if verdict_mode != "allow":
            message = f"the user or the policy did not allow {call.name} ({verdict.reason})" \
                if verdict_mode == "deny" else f"{call.name} was not run"
            turn.emit("event", {"kind": "tool.result", **base, "ok": False, "content": message,
                                "denied": True, "arguments": arguments})
            await self._save(req, "tool", {"tool_call_id": call.id, "name": call.name,
                                           "ok": False, "denied": True, "content": message,
                                           "arguments": arguments})
            return f"error: {message}"
        context = self.tool_context(req) if self.tool_context is not None else None
        kernel = self._kernels.get(req.conversation_id)
        if context is not None and kernel is not None:
            context = dataclasses.replace(context, kernel_id=kernel)
        result = await self.tools.run(call.name, arguments, context)
        if isinstance(result.data, dict) and result.data.get("kernel_id"):
            self._kernels[req.conversation_id] = str(result.data["kernel_id"])
        turn.emit("event", {"kind": "tool.result", **base, "ok": result.ok,
                            "content": result.content, "data": result.data,
                            "arguments": arguments})
        saved: dict[str, Any] = {"tool_call_id": call.id, "name": call.name, "ok": result.ok,
                                 "content": result.content, "arguments": arguments,
                                 "checkpoints": [vars(c) for c in result.checkpoints]}
        data = result.data if isinstance(result.data, dict) else {}
        if isinstance(data.get("diff"), str) and len(data["diff"]) <= _SAVED_DIFF_CHARS:
            saved["diff"] = data["diff"]  # a reloaded page shows the change as it was seen
        if data.get("path"):
            saved["path"] = data["path"]
        await self._save(req, "tool", saved)
        return str(result.content)

    def _risks(self, name: str, arguments: dict[str, Any]) -> list[str]:
        code = arguments.get("code")
        if not isinstance(code, str):
            return []
        from .tools.risk import score_code

        report = score_code(code)
        return list(report.reasons) if report.level == "high" else []

    async def _ask(self, turn: _Turn, call: ToolCall, arguments: dict[str, Any], reason: str,
                   risks: list[str]) -> str:
        req = turn.request
        record = await self.store.call(self.store.create_approval, req.conversation_id,
                                       req.user, call.name, arguments)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        turn.approvals[record.id] = (future, record.arguments_hash)
        turn.emit("event", {"kind": "approval.request", "turn_id": req.turn_id,
                            "approval_id": record.id, "tool_call_id": call.id,
                            "name": call.name, "arguments": arguments,
                            "arguments_hash": record.arguments_hash, "reason": reason,
                            "risks": risks})
        deadline = time.monotonic() + self.limits.approval_timeout_s
        try:
            while not future.done():
                with contextlib.suppress(asyncio.TimeoutError):
                    await within(asyncio.shield(future), 0.5)
                if future.done():
                    break
                gone = req.detached_for() if req.detached_for is not None else None
                if time.monotonic() >= deadline or (
                        gone is not None and gone >= self.limits.approval_disconnect_grace_s):
                    await self._deny(req.user, record.id, record.arguments_hash)
                    return "deny"
            return future.result()
        finally:
            turn.approvals.pop(record.id, None)

    def _deny_pending(self, turn: _Turn) -> None:
        for approval_id, (future, digest) in list(turn.approvals.items()):
            if not future.done():
                future.set_result("deny")
            asyncio.get_running_loop().create_task(
                self._deny(turn.request.user, approval_id, digest))

    async def _deny(self, user: str, approval_id: str, digest: str) -> None:
        with contextlib.suppress(CloudIDEError):  # decided meanwhile
            await self.store.call(self.store.decide_approval, approval_id, user, "deny", digest)

    # -- persistence ------------------------------------------------------------------------

    async def _save(self, req: TurnRequest, role: str, content: dict[str, Any]) -> None:
        await self.store.call(self.store.add_message, req.conversation_id, req.user,
                              req.turn_id, role, content)

    async def _history(self, turn: _Turn, task: Task) -> list[Message]:
        """The conversation before this turn as model messages, after the task's system
        prompt; the summary of older turns goes to ``turn.summary``."""
        req = turn.request
        messages: list[Message] = [{"role": "system",
                                    "content": self.templates.render(task.name)}]
        if req.prior is not None:
            return [*messages, *req.prior]
        if req.new_conversation:
            return messages
        records = await self.store.call(self.store.list_messages, req.conversation_id,
                                        req.user)
        ctx = self.tool_context(req) if self.tool_context is not None else None
        history = read_history(records, req.turn_id,
                               redactor(ctx.secrets if ctx is not None else ()))
        turn.summary, turn.history_turns = history.summary, history.turn_ids
        return [*messages, *history.messages]

    async def _summarize_if_needed(self, turn: _Turn, messages: list[Message]
                                   ) -> list[Message]:
        """When earlier turns no longer fit the first model's window, summarise them (and
        the previous summary) with that model, once, and remember the summary in the
        conversation: later turns start from it. A failed summary costs nothing but the
        attempt: the prompt engine's condensed lines stand in."""
        req = turn.request
        try:
            choice = self.registry.route(req.user, req.groups, role="agent",
                                         requested=req.model, strategy=req.strategy,
                                         needs=("tools",))[0]
        except CloudIDEError:
            return messages  # the step will report it
        spec = choice.model
        max_tokens = min(spec.max_output_tokens, self.limits.max_output_tokens)
        specs = self._tool_specs(self.templates.task(req.task))
        _, report = fit(messages, window=spec.context_window,
                        reserve_output=max_tokens + self._specs_tokens(specs, spec.id),
                        counter=self.counter, model=spec.id, context=turn.context,
                        context_share=self.limits.context_share, summary=turn.summary)
        if not report.older_turns:
            return messages
        from .prompt import _turns

        system, history = messages[:1], messages[1:-1]
        turns = _turns(history)
        older, newer = turns[:report.older_turns], turns[report.older_turns:]
        if not older or older[0][0].get("role") != "user" \
                or len(turns) != len(turn.history_turns):
            return messages  # not whole turns: nothing to summarise safely
        through = turn.history_turns[len(older) - 1]
        summary = await self._summarize(turn, choice, [m for t in older for m in t])
        if summary is None:
            return messages
        turn.summary = summary
        await self._save(req, "summary", {"text": summary, "through_turn": through,
                                          "turns": len(older)})
        turn.emit("event", {"kind": "history.summarized", "turn_id": req.turn_id,
                            "turns": len(older), "model": spec.id})
        return [*system, *(m for t in newer for m in t), messages[-1]]

    async def _summarize(self, turn: _Turn, choice: Choice, older: list[Message]
                         ) -> str | None:
        req, spec = turn.request, choice.model
        room = max(512, spec.context_window - self.limits.summary_max_tokens - 512)
        text = transcript(older, turn.summary,
                          lambda t: self.counter.count(t, spec.id) <= room)
        request = ChatRequest(
            model=spec.model, max_tokens=self.limits.summary_max_tokens,
            timeout_s=self.limits.model_timeout_s,
            messages=[{"role": "system", "content": self.templates.render("summarize")},
                      {"role": "user", "content": text}])
        provider = self.registry.providers[spec.provider]
        try:
            reservation = await self._reserve(turn, spec.cost(
                self.counter.count(text, spec.id) + 64, self.limits.summary_max_tokens))
        except BudgetExceededError:
            return None  # the step's own check says why
        started = time.monotonic()
        parts: list[str] = []
        usage: Usage | None = None
        try:
            async for event in provider.stream_chat(request):
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                elif isinstance(event, Usage):
                    usage = event
        except ProviderError as exc:
            log.warning("turn %s: summarising the history failed (%s): %s", req.turn_id,
                        exc.kind, exc.message)
            self._meter(turn, spec, usage or Usage(0, 0, estimated=True), 0, started,
                        failed=exc.kind, label="summary")
            return None
        finally:  # no await before the success path's _meter (race-free release)
            if self.budgets is not None:
                self.budgets.settle(reservation)
        self._meter(turn, spec, usage or Usage(self.counter.count(text, spec.id),
                                               self.counter.count("".join(parts), spec.id),
                                               estimated=True), 0, started, label="summary")
        summary = "".join(parts).strip()
        return summary or None


class _Failed(Exception):
    def __init__(self, error: ProviderError, *, streamed: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.streamed = streamed
