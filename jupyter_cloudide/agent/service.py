"""The agent layer as one object the app wires and the gateway calls: the model registry (with
discovery), the tools, the approval policy and the loop."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import CloudIDEError, InvalidInputError
from .approvals import ApprovalPolicy
from .completion import CompletionService
from .loop import AgentLoop, Emit, TurnLimits, TurnRequest
from .models import ModelRegistry, build_providers, load_secrets, model_specs, provider_configs
from .templates import Templates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentConfig:
    """Everything the app's traitlets decide about the agent."""

    providers: tuple[Mapping[str, Any], ...] = ()
    models: tuple[Mapping[str, Any], ...] = ()
    allowlist: Mapping[str, list[str]] = field(default_factory=dict)
    default_model: str | None = None
    strategy: str = "balanced"
    secrets_file: str = ""
    discover: bool = True
    tool_modes: Mapping[str, str] = field(default_factory=dict)
    approval_cap: str = "allow"
    limits: TurnLimits = field(default_factory=TurnLimits)
    provider_timeout_s: float = 60.0
    #: system prompts by task, over the built-in ones
    templates: Mapping[str, str] = field(default_factory=dict)
    #: the workspace's folder name, for the prompts
    workspace: str = "the workspace"
    #: the model inline completions use (else any declared with the completion role)
    completion_model: str | None = None


class AgentService:
    def __init__(self, config: AgentConfig, store: Any, *,
                 tool_context: Callable[[TurnRequest], Any],
                 meter: Callable[[list[Any]], Any] | None = None,
                 env: Mapping[str, str] | None = None, budgets: Any | None = None) -> None:
        from .tools.base import default_tools

        self.config = config
        self.store = store
        env = os.environ if env is None else env
        self.secrets = load_secrets(config.secrets_file)
        configs = provider_configs(config.providers, env, self.secrets)
        self._api_keys = tuple(c.api_key for c in configs if c.api_key)
        providers = build_providers(configs, timeout_s=config.provider_timeout_s)
        self.registry = ModelRegistry(providers, model_specs(config.models, providers),
                                      allowlist=config.allowlist,
                                      default_model=config.default_model)
        self.tools = default_tools()
        self.templates = Templates(config.templates, workspace=config.workspace)
        self.loop = AgentLoop(self.registry, self.tools, store,
                              policy=ApprovalPolicy(per_tool=dict(config.tool_modes),
                                                    cap=config.approval_cap),
                              limits=config.limits, tool_context=tool_context, meter=meter,
                              templates=self.templates, budgets=budgets)
        self.completions = CompletionService(self.registry, self.templates,
                                             completion_model=config.completion_model,
                                             meter=meter, budgets=budgets)
        self._discovered: asyncio.Task[list[str]] | None = None

    @property
    def key_values(self) -> tuple[str, ...]:
        """Provider keys and adapters' secret options (an OAuth2 client secret set in a
        provider's ``options``): redacted from every tool result and context item the model
        sees."""
        values: list[str] = list(self._api_keys)
        for provider in self.registry.providers.values():
            secret_values = getattr(provider, "secret_values", None)
            if secret_values is not None:
                values.extend(secret_values())
        return tuple(dict.fromkeys(v for v in values if v))

    async def ready(self) -> None:
        """Discover undeclared models once (a provider that is down is retried next time)."""
        if not self.config.discover:
            return
        if self._discovered is None or (self._discovered.done()
                                        and self._discovered.exception() is not None):
            self._discovered = asyncio.ensure_future(self.registry.discover())
        try:
            added = await asyncio.shield(self._discovered)
        except Exception:
            log.exception("model discovery failed")
            return
        if added:
            log.info("models discovered: %s", ", ".join(added))

    async def models_for(self, user: str, groups: tuple[str, ...] = ()) -> dict[str, Any]:
        await self.ready()
        now = time.monotonic()
        out = []
        for spec in self.registry.allowed(user, groups):
            item = spec.to_json()
            item["health"] = self.registry.health_of(spec.id).to_json(now)
            out.append(item)
        return {"models": out, "default": self.registry.default_model,
                "strategy": self.config.strategy,
                "completion_model": self._completion_model(user, groups)}

    def _completion_model(self, user: str, groups: tuple[str, ...]) -> str | None:
        """The model inline completions would use for this user, or None (they are off)."""
        try:
            return self.completions.choices(user, groups, None)[0].model.id
        except CloudIDEError:
            return None

    async def send(self, user: str, payload: dict[str, Any], emit: Emit,
                   groups: tuple[str, ...] = (),
                   detached_for: Callable[[], float | None] | None = None) -> dict[str, Any]:
        """A ``chat.send``: into an existing conversation of the user, or a new one."""
        await self.ready()
        task = self.templates.task(payload.get("task"))  # an unknown task: 400, nothing written
        if payload.get("model"):
            # refuse a model the user may not use before anything is written (403/404)
            self.registry.route(user, groups, requested=str(payload["model"]),
                                strategy=self.config.strategy)
        conversation_id = payload.get("conversation_id")
        new = not conversation_id
        if conversation_id:
            await self.store.call(self.store.get_conversation, conversation_id, user)
        else:
            title = " ".join(str(payload["text"]).split())[:80] or "New conversation"
            record = await self.store.call(self.store.create_conversation, user, title,
                                           payload.get("model"))
            conversation_id = record.id
        request = TurnRequest(user=user, conversation_id=str(conversation_id),
                              text=str(payload["text"]), model=payload.get("model"),
                              groups=groups, strategy=self.config.strategy,
                              context=list(payload.get("context") or []),
                              detached_for=detached_for, new_conversation=new,
                              task=task.name, retrieve=bool(payload.get("retrieve", True)))
        emit("event", {"kind": "turn.started", "conversation_id": request.conversation_id,
                       "turn_id": request.turn_id})
        return await self.loop.run(request, emit)

    def cancel(self, user: str, turn_id: str) -> dict[str, Any]:
        cancelled = self.loop.cancel(user, turn_id)
        return {"turn_id": turn_id, "cancelled": cancelled}

    async def respond(self, user: str, payload: dict[str, Any]) -> dict[str, Any]:
        decision = str(payload["decision"])
        if decision not in ("allow", "deny", "always"):
            raise InvalidInputError("decision: allow, deny or always", field="decision")
        return await self.loop.respond(user, str(payload["approval_id"]), decision,
                                       payload.get("arguments_hash"))

    async def undo(self, user: str, payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
        """Put back what a finished turn's tools changed."""
        from ..errors import ConflictError
        from .undo import undo_turn

        turn_id = str(payload["turn_id"])
        if turn_id in self.loop.running(user):
            raise ConflictError("the turn is still running: cancel it first")
        return await undo_turn(self.store, ctx, str(payload["conversation_id"]), turn_id)

    async def close(self) -> None:
        self.loop.cancel_all()
        await self.registry.close()
