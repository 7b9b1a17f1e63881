"""Inline code completion: the text to insert at the cursor, streamed.

A request carries the text before the cursor (``prefix``) and after it (``suffix``): for a
notebook cell the client sends the cells above and below too, so the model sees the whole
notebook around the cursor. The server cuts both to a budget at line boundaries (the end of
the prefix and the start of the suffix matter most) and asks a model with the ``completion``
role (the ``completion_model`` setting, or any declared with that role):

* a model with the ``fim`` capability gets a fill-in-the-middle call through the Completions
  API (``prompt`` + ``suffix``), as FIM code models on vLLM, llama.cpp, Ollama serve them;
* any other gets a chat "fill the hole" prompt (the ``complete`` template) and its answer is
  cleaned: code fences dropped, an echo of the line before the cursor removed, the overlap
  with the text after the cursor cut.

A cache per user answers a request whose prefix extends a cached one's by exactly what the
cached completion starts with (the user typed what was suggested) with the rest of that
completion, at once and without a model call; the suffix must be the same.

Domain code: no tornado. Cancelling the awaiting task (a newer request from the same editor)
closes the upstream stream.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import BudgetExceededError, CloudIDEError
from ..storage.db import UsageEventIn
from .models import Choice, ModelRegistry
from .providers.base import ChatRequest, FimRequest, ProviderError, TextDelta, Usage
from .templates import Templates

log = logging.getLogger(__name__)

__all__ = ["CompletionCache", "CompletionRequest", "CompletionService", "clean_completion"]

#: characters per token when cutting prefix and suffix (cheap: no tokenizer per keystroke)
_CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class CompletionRequest:
    user: str
    prefix: str
    suffix: str = ""
    language: str = "python"
    path: str | None = None
    model: str | None = None
    groups: tuple[str, ...] = ()
    max_tokens: int = 128
    completion_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class _Entry:
    model: str
    prefix: str
    suffix: str
    text: str


class CompletionCache:
    """Recent completions per user, newest first (bounded)."""

    def __init__(self, per_user: int = 64, users: int = 1024) -> None:
        self.per_user = per_user
        self.users = users
        self._entries: OrderedDict[str, list[_Entry]] = OrderedDict()

    def lookup(self, user: str, model: str, prefix: str, suffix: str) -> str | None:
        """The rest of a cached completion the new prefix is typing through, or None."""
        for entry in self._entries.get(user, ()):
            if entry.model != model or entry.suffix != suffix:
                continue
            if not prefix.startswith(entry.prefix):
                continue
            typed = prefix[len(entry.prefix):]
            if entry.text.startswith(typed) and len(typed) < len(entry.text):
                self._entries.move_to_end(user)
                return entry.text[len(typed):]
        return None

    def store(self, user: str, model: str, prefix: str, suffix: str, text: str) -> None:
        if not text:
            return
        entries = self._entries.setdefault(user, [])
        entries.insert(0, _Entry(model, prefix, suffix, text))
        del entries[self.per_user:]
        self._entries.move_to_end(user)
        while len(self._entries) > self.users:
            self._entries.popitem(last=False)


def cut_prefix(prefix: str, max_chars: int) -> str:
    """The end of ``prefix``, starting at a line boundary when it has to be cut."""
    if len(prefix) <= max_chars:
        return prefix
    tail = prefix[-max_chars:]
    newline = tail.find("\n")
    return tail[newline + 1:] if 0 <= newline < len(tail) - 1 else tail


def cut_suffix(suffix: str, max_chars: int) -> str:
    """The start of ``suffix``, ending at a line boundary when it has to be cut."""
    if len(suffix) <= max_chars:
        return suffix
    head = suffix[:max_chars]
    newline = head.rfind("\n")
    return head[:newline] if newline > 0 else head


def clean_completion(text: str, prefix: str, suffix: str) -> str:
    """A chat model's answer as the text to insert: no fences, no echo, no overlap."""
    out = text
    lines = out.split("\n")
    if lines and lines[0].lstrip().startswith("```"):
        lines = lines[1:]
        while lines and not lines[-1].strip():
            lines.pop()
        if lines and lines[-1].strip().startswith("```"):
            lines.pop()
        out = "\n".join(lines)
    out = out.replace("<CURSOR>", "")
    # an echo of the current line's start (the model repeated what is before the cursor)
    line_start = prefix[prefix.rfind("\n") + 1:]
    if line_start.strip() and out.startswith(line_start):
        out = out[len(line_start):]
    # the end of the answer repeating the start of what follows the cursor
    follow = suffix.split("\n", 1)[0]
    if follow.strip():
        for size in range(min(len(follow), len(out)), 0, -1):
            if out.endswith(follow[:size]) and (size >= 2 or size == len(follow)):
                out = out[:-size]
                break
    return out.rstrip() if "\n" in out else out


class CompletionService:
    """Completions for every user of the server."""

    def __init__(self, registry: ModelRegistry, templates: Templates, *,
                 completion_model: str | None = None,
                 meter: Callable[[list[UsageEventIn]], Any] | None = None,
                 prefix_tokens: int = 1500, suffix_tokens: int = 500,
                 timeout_s: float = 15.0, budgets: Any | None = None) -> None:
        self.registry = registry
        #: the BudgetManager: a completion reserves its worst case, or is quietly skipped
        self.budgets = budgets
        self.templates = templates
        self.completion_model = completion_model or None
        self.meter = meter
        self.prefix_chars = prefix_tokens * _CHARS_PER_TOKEN
        self.suffix_chars = suffix_tokens * _CHARS_PER_TOKEN
        self.timeout_s = timeout_s
        self.cache = CompletionCache()

    def choices(self, user: str, groups: Sequence[str], requested: str | None) -> list[Choice]:
        """Models for completion: the requested one, else the configured completion model,
        else those declared with the ``completion`` role (fastest first)."""
        wanted = requested or self.completion_model
        choices = self.registry.route(user, groups, role="completion", requested=wanted,
                                      strategy="latency")
        if wanted is None:
            return choices
        return choices[:1]  # a named model: no silent fallback to another

    async def complete(self, req: CompletionRequest,
                       on_delta: Callable[[str], None] | None = None) -> dict[str, Any]:
        completion_id = req.completion_id
        choice = self.choices(req.user, req.groups, req.model)[0]
        spec = choice.model
        prefix = cut_prefix(req.prefix, self.prefix_chars)
        suffix = cut_suffix(req.suffix, self.suffix_chars)
        cached = self.cache.lookup(req.user, spec.id, req.prefix, req.suffix)
        if cached is not None:
            if on_delta is not None:
                on_delta(cached)
            return {"completion_id": completion_id, "text": cached, "model": spec.id,
                    "cached": True, "fim": "fim" in spec.capabilities}
        provider = self.registry.providers[spec.provider]
        stream_fim = getattr(provider, "stream_fim", None)
        fim = "fim" in spec.capabilities and stream_fim is not None
        max_tokens = max(1, min(req.max_tokens, spec.max_output_tokens))
        reservation = None
        if self.budgets is not None:
            try:
                reservation = await self.budgets.reserve(
                    req.user, req.groups,
                    spec.cost((len(prefix) + len(suffix)) // _CHARS_PER_TOKEN + 64, max_tokens))
            except BudgetExceededError:
                # quietly: no suggestion (the chat and the status bar say why)
                return {"completion_id": completion_id, "text": "", "model": spec.id,
                        "cached": False, "fim": fim, "refused": "budget_exceeded"}
        try:
            return await self._complete(req, spec, provider, prefix, suffix, fim,
                                        stream_fim, max_tokens, on_delta)
        finally:
            if self.budgets is not None:
                self.budgets.settle(reservation)

    async def _complete(self, req: CompletionRequest, spec: Any, provider: Any, prefix: str,
                        suffix: str, fim: bool, stream_fim: Any, max_tokens: int,
                        on_delta: Callable[[str], None] | None) -> dict[str, Any]:
        completion_id = req.completion_id
        if fim:  # implies stream_fim
            events = stream_fim(FimRequest(
                model=spec.model, prompt=prefix, suffix=suffix, max_tokens=max_tokens,
                timeout_s=self.timeout_s))
        else:
            where = f"File: {req.path}\n" if req.path else ""
            events = provider.stream_chat(ChatRequest(
                model=spec.model, max_tokens=max_tokens, temperature=0.0,
                timeout_s=self.timeout_s,
                messages=[{"role": "system", "content": self.templates.render("complete")},
                          {"role": "user", "content": f"{where}Language: {req.language}\n\n"
                                                      f"{prefix}<CURSOR>{suffix}"}]))
        started = time.monotonic()
        parts: list[str] = []
        usage: Usage | None = None
        fence = _FenceFilter() if not fim else None
        try:
            async with contextlib.aclosing(events) as stream:
                async for event in stream:
                    if isinstance(event, TextDelta):
                        parts.append(event.text)
                        shown = fence.feed(event.text) if fence is not None else event.text
                        if shown and on_delta is not None:
                            on_delta(shown)
                    elif isinstance(event, Usage):
                        usage = event
        except ProviderError as exc:
            self.registry.record_failure(spec.id, exc)
            raise CloudIDEError(f"completion failed ({exc.kind}): {exc.message}") from None
        latency_ms = (time.monotonic() - started) * 1000
        self.registry.record_success(spec.id, latency_ms)
        raw = "".join(parts)
        text = raw if fim else clean_completion(raw, prefix, suffix)
        self.cache.store(req.user, spec.id, req.prefix, req.suffix, text)
        self._meter(req, spec, usage, completion_id, latency_ms)
        return {"completion_id": completion_id, "text": text, "model": spec.id,
                "cached": False, "fim": fim}

    def _meter(self, req: CompletionRequest, spec: Any, usage: Usage | None,
               completion_id: str, latency_ms: float) -> None:
        if self.meter is None or usage is None:
            return
        # quantities only: the ledger prices token rows (tiers included)
        self.meter([UsageEventIn(
            event_id=f"completion:{completion_id}", user=req.user, kind="tokens",
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            model=spec.id, source="completion", route="completion",
            extra={"cached_tokens": usage.cached_tokens, "estimated": usage.estimated,
                   "latency_ms": round(latency_ms, 1)})])


class _FenceFilter:
    """Streams a chat answer without its opening code fence line (held back until the first
    newline shows whether the answer starts with one)."""

    def __init__(self) -> None:
        self._head: str | None = ""

    def feed(self, text: str) -> str:
        if self._head is None:
            return text
        self._head += text
        if "\n" not in self._head and len(self._head) < 64:
            return ""
        head, self._head = self._head, None
        if head.lstrip().startswith("```"):
            return head.split("\n", 1)[1] if "\n" in head else ""
        return head
