"""The model registry and router: which models exist, who may use which, and which one a turn
gets (with fallbacks when one fails).

Providers come from configuration and from the SDKs' environment variables (``OPENAI_API_KEY``,
``OPENAI_BASE_URL``, ``ANTHROPIC_API_KEY``, ``ANTHROPIC_BASE_URL``), so a server with nothing
but those set can chat. Models are declared with capabilities, context window, prices and
roles; models an OpenAI-compatible server offers but nobody declared are discovered from its
``/v1/models``.

The router orders the allowed candidates by a strategy (quality, cost, latency, balanced), using
measured first-token latency and error rates, and skips models in cooldown: a model that just
failed with a retryable error (429, 5xx, timeout, connection) is left alone for a while, longer
after each consecutive failure, at least as long as its ``Retry-After`` asked (a circuit
breaker). Every choice carries a reason, recorded with the turn.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ForbiddenError, InvalidInputError, NotFoundError
from .providers.base import Provider, ProviderError

if TYPE_CHECKING:
    from ..adapters.base import SecretSources

log = logging.getLogger(__name__)

ROLES = frozenset({"chat", "agent", "completion", "embedding"})
CAPABILITIES = frozenset({"tools", "vision", "fim"})
STRATEGIES = ("quality", "cost", "latency", "balanced")
#: "adapter": a protocol adapter from the entry point group jupyter_cloudide.adapters
PROVIDER_KINDS = ("openai", "anthropic", "adapter")
#: cooldown after the first retryable failure; doubles per consecutive failure, capped
BASE_COOLDOWN_S = 5.0
MAX_COOLDOWN_S = 300.0
#: weight of the newest sample in the latency and error-rate moving averages
EWMA = 0.2
#: first-token latency assumed for a model never measured (ms)
PRIOR_LATENCY_MS = 1500.0


@dataclass(frozen=True)
class ModelSpec:
    """One model users can pick. ``id`` is what they see; ``model`` the upstream's name."""

    id: str
    provider: str
    model: str
    context_window: int = 128_000
    max_output_tokens: int = 4096
    capabilities: frozenset[str] = frozenset({"tools"})
    roles: frozenset[str] = frozenset({"chat", "agent"})
    #: USD per 1,000 tokens
    price_input: float = 0.0
    price_output: float = 0.0
    price_cached_input: float | None = None
    #: admin-declared rank for the quality strategy (higher is better)
    quality: int = 50
    discovered: bool = False

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float:
        cached_price = self.price_input if self.price_cached_input is None \
            else self.price_cached_input
        fresh = max(0, input_tokens - cached_tokens)
        return (fresh * self.price_input + cached_tokens * cached_price
                + output_tokens * self.price_output) / 1000.0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "provider": self.provider, "context_window": self.context_window,
            "max_output_tokens": self.max_output_tokens,
            "capabilities": sorted(self.capabilities), "roles": sorted(self.roles),
            "price_per_1k": {"input": self.price_input, "output": self.price_output},
            "quality": self.quality, "discovered": self.discovered,
        }


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    kind: str
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)  # never in logs or reprs
    #: kind "adapter": its entry point name and raw options (validated when it loads)
    adapter: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict, repr=False, hash=False)
    #: kind "adapter": where its secret options resolve (environment, secrets file)
    sources: SecretSources | None = field(default=None, repr=False, compare=False)


@dataclass
class ModelHealth:
    latency_ms: float | None = None
    error_rate: float = 0.0
    consecutive_failures: int = 0
    cooldown_until: float = 0.0
    last_error: str | None = None

    def cooling(self, now: float) -> bool:
        return now < self.cooldown_until

    def to_json(self, now: float) -> dict[str, Any]:
        return {"latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
                "error_rate": round(self.error_rate, 3),
                "cooldown_s": round(max(0.0, self.cooldown_until - now), 1),
                "last_error": self.last_error}


@dataclass(frozen=True)
class Choice:
    model: ModelSpec
    reason: str


def load_secrets(path: str) -> dict[str, str]:
    """An admin-managed JSON file ``{"name": "secret", ...}`` that only the server's user may
    read: refused (with a log line naming the problem, never the content) if others can."""
    if not path:
        return {}
    try:
        info = os.stat(path)
    except OSError as exc:
        log.error("secrets file %s: %s", path, exc.strerror)
        return {}
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.error("secrets file %s is readable by others (mode %o): not used", path,
                  stat.S_IMODE(info.st_mode))
        return {}
    try:
        data = json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        log.error("secrets file %s: not a JSON object (%s)", path, type(exc).__name__)
        return {}
    if not isinstance(data, dict):
        log.error("secrets file %s: not a JSON object", path)
        return {}
    return {str(k): str(v) for k, v in data.items()}


def provider_configs(configured: Iterable[Mapping[str, Any]], env: Mapping[str, str],
                     secrets: Mapping[str, str]) -> list[ProviderConfig]:
    """Configured providers, plus ``openai``/``anthropic`` from the SDK environment variables
    when not configured under those names. ``api_key_secret`` names a secrets-file entry."""
    out: dict[str, ProviderConfig] = {}
    for raw in configured:
        name = str(raw.get("name") or "")
        kind = str(raw.get("kind") or "openai")
        if not name or kind not in PROVIDER_KINDS:
            raise InvalidInputError(f"provider {name!r}: needs a name and a kind "
                                    f"({', '.join(PROVIDER_KINDS)})")
        key = raw.get("api_key")
        if raw.get("api_key_secret"):
            key = secrets.get(str(raw["api_key_secret"]))
            if key is None:
                log.error("provider %s: secret %r not in the secrets file", name,
                          raw["api_key_secret"])
        elif raw.get("api_key_env"):
            key = env.get(str(raw["api_key_env"]))
        if kind == "adapter":
            # the adapter must be installed (read from metadata: its code loads on first use)
            from ..adapters.base import SecretSources
            from ..adapters.registry import check_adapter_config

            adapter, options = check_adapter_config(name, raw)
            out[name] = ProviderConfig(name, kind, None, key or None, adapter=adapter,
                                       options=options, sources=SecretSources(env, secrets))
            continue
        out[name] = ProviderConfig(name, kind, raw.get("base_url") or None, key or None)
    for kind, prefix in (("openai", "OPENAI"), ("anthropic", "ANTHROPIC")):
        key, base = env.get(f"{prefix}_API_KEY"), env.get(f"{prefix}_BASE_URL")
        if kind not in out and (key or base):
            out[kind] = ProviderConfig(kind, kind, base or None, key or None)
    return list(out.values())


def model_specs(configured: Iterable[Mapping[str, Any]], providers: Iterable[str]
                ) -> dict[str, ModelSpec]:
    known = set(providers)
    out: dict[str, ModelSpec] = {}
    for raw in configured:
        provider = str(raw.get("provider") or "")
        upstream = str(raw.get("model") or raw.get("id") or "")
        model_id = str(raw.get("id") or upstream)
        if provider not in known:
            raise InvalidInputError(f"model {model_id!r}: unknown provider {provider!r}")
        roles = frozenset(raw.get("roles") or ("chat", "agent"))
        caps = frozenset(raw.get("capabilities") or ("tools",))
        if not upstream or roles - ROLES or caps - CAPABILITIES:
            raise InvalidInputError(f"model {model_id!r}: needs a model name; roles from "
                                    f"{sorted(ROLES)}, capabilities from {sorted(CAPABILITIES)}")
        price = raw.get("price_per_1k") or {}
        out[model_id] = ModelSpec(
            id=model_id, provider=provider, model=upstream,
            context_window=int(raw.get("context_window", 128_000)),
            max_output_tokens=int(raw.get("max_output_tokens", 4096)),
            capabilities=caps, roles=roles,
            price_input=float(price.get("input", 0.0)),
            price_output=float(price.get("output", 0.0)),
            price_cached_input=None if price.get("cached_input") is None
            else float(price["cached_input"]),
            quality=int(raw.get("quality", 50)),
        )
    return out


class ModelRegistry:
    """Providers (SDK clients) and models, with health and the per-user allowlist."""

    def __init__(self, providers: Mapping[str, Provider], models: Mapping[str, ModelSpec], *,
                 allowlist: Mapping[str, Iterable[str]] | None = None,
                 default_model: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.providers = dict(providers)
        self.models = dict(models)
        #: "*", "user:<name>" or "group:<name>" → model id globs; no entry for "*" = all
        self.allowlist = {k: tuple(v) for k, v in (allowlist or {}).items()}
        self.default_model = default_model
        self.health: dict[str, ModelHealth] = {}
        self._clock = clock

    async def discover(self) -> list[str]:
        """Add the undeclared models of every provider that lists its models. Returns the ids
        added; a provider that cannot list (Anthropic without a key, a server down) is
        skipped with a log line."""
        added: list[str] = []
        declared = {(m.provider, m.model) for m in self.models.values()}
        for name, provider in self.providers.items():
            try:
                names = await provider.list_models()
            except ProviderError as exc:
                log.info("provider %s: cannot list models (%s)", name, exc.kind)
                continue
            for upstream in names:
                if (name, upstream) in declared:
                    continue
                model_id = upstream if upstream not in self.models else f"{name}/{upstream}"
                self.models[model_id] = ModelSpec(model_id, name, upstream, discovered=True)
                added.append(model_id)
        return added

    def allowed(self, user: str, groups: Iterable[str] = ()) -> list[ModelSpec]:
        keys = ["*", f"user:{user}", *(f"group:{g}" for g in groups)]
        patterns = [p for k in keys for p in self.allowlist.get(k, ())]
        if not self.allowlist:
            return sorted(self.models.values(), key=lambda m: m.id)
        return sorted((m for m in self.models.values()
                       if any(fnmatch.fnmatchcase(m.id, p) for p in patterns)),
                      key=lambda m: m.id)

    def health_of(self, model_id: str) -> ModelHealth:
        return self.health.setdefault(model_id, ModelHealth())

    # -- outcomes feed the router ---------------------------------------------------------

    def record_success(self, model_id: str, first_token_ms: float | None) -> None:
        """A call succeeded; ``first_token_ms`` None: a call that measured no first token (a
        non-streamed answer) leaves the latency figure as it was."""
        h = self.health_of(model_id)
        if first_token_ms is not None:
            h.latency_ms = first_token_ms if h.latency_ms is None else \
                (1 - EWMA) * h.latency_ms + EWMA * first_token_ms
        h.error_rate = (1 - EWMA) * h.error_rate
        h.consecutive_failures = 0
        h.cooldown_until = 0.0

    def record_failure(self, model_id: str, error: ProviderError) -> None:
        h = self.health_of(model_id)
        h.error_rate = (1 - EWMA) * h.error_rate + EWMA
        h.last_error = error.kind
        if not error.retryable:
            return  # a bad request is not the model's health
        h.consecutive_failures += 1
        backoff = min(MAX_COOLDOWN_S, BASE_COOLDOWN_S * 2 ** (h.consecutive_failures - 1))
        h.cooldown_until = self._clock() + max(backoff, error.retry_after_s or 0.0)

    # -- routing ------------------------------------------------------------------------------

    def route(self, user: str, groups: Iterable[str] = (), *, role: str = "agent",
              requested: str | None = None, strategy: str = "balanced",
              needs: Iterable[str] = ()) -> list[Choice]:
        """Candidates in the order to try them (the first is the choice, the rest fallbacks).
        A requested model the user may not use is refused, never silently replaced."""
        if strategy not in STRATEGIES:
            raise InvalidInputError(f"strategy: one of {', '.join(STRATEGIES)}",
                                    field="strategy")
        need = frozenset(needs)
        allowed = self.allowed(user, groups)
        if requested is not None:
            if requested not in self.models:
                raise NotFoundError(f"model {requested[:100]!r} is not configured",
                                    field="model")
            if requested not in {m.id for m in allowed}:
                raise ForbiddenError(f"model {requested[:100]!r} is not allowed for you",
                                     field="model")
        fit = [m for m in allowed if role in m.roles and need <= m.capabilities]
        now = self._clock()
        ready = [m for m in fit if not self.health_of(m.id).cooling(now)]
        cooling = [m for m in fit if self.health_of(m.id).cooling(now)]
        ordered = self._order(ready, strategy)
        # models in cooldown stay available as a last resort, soonest-ready first
        ordered += sorted(cooling, key=lambda m: self.health_of(m.id).cooldown_until)
        choices: list[Choice] = []
        if requested is not None:
            spec = self.models[requested]
            state = "in cooldown" if self.health_of(requested).cooling(now) else "ready"
            choices.append(Choice(spec, f"requested by the user ({state})"))
            ordered = [m for m in ordered if m.id != requested]
        elif self.default_model in {m.id for m in ordered}:
            default = self.models[str(self.default_model)]
            ordered = [default, *(m for m in ordered if m.id != default.id)]
        for i, spec in enumerate(ordered):
            why = ("default model" if requested is None and i == 0
                   and spec.id == self.default_model else f"{strategy} strategy rank {i + 1}")
            if self.health_of(spec.id).cooling(now):
                why += " (in cooldown: last resort)"
            choices.append(Choice(spec, why if requested is None else f"fallback: {why}"))
        if not choices:
            raise NotFoundError(f"no model available for {role}"
                                + (f" with {', '.join(sorted(need))}" if need else ""))
        return choices

    def _order(self, models: list[ModelSpec], strategy: str) -> list[ModelSpec]:
        def latency(m: ModelSpec) -> float:
            measured = self.health_of(m.id).latency_ms
            return PRIOR_LATENCY_MS if measured is None else measured

        def price(m: ModelSpec) -> float:
            return m.price_input + 3 * m.price_output  # output tokens dominate agent turns

        if strategy == "quality":
            return sorted(models, key=lambda m: (-m.quality, price(m), m.id))
        if strategy == "cost":
            return sorted(models, key=lambda m: (price(m), -m.quality, m.id))
        if strategy == "latency":
            return sorted(models, key=lambda m: (latency(m), m.id))
        top_price = max((price(m) for m in models), default=0.0) or 1.0
        top_latency = max((latency(m) for m in models), default=0.0) or 1.0

        def balanced(m: ModelSpec) -> float:
            return (m.quality / 100.0 - 0.5 * price(m) / top_price
                    - 0.5 * latency(m) / top_latency - self.health_of(m.id).error_rate)

        return sorted(models, key=lambda m: (-balanced(m), m.id))

    async def close(self) -> None:
        for provider in self.providers.values():
            await provider.close()


def build_providers(configs: Iterable[ProviderConfig], timeout_s: float = 60.0
                    ) -> dict[str, Provider]:
    """SDK-backed providers for the configs (the SDKs load when first called), and adapters
    (their code loads on first use)."""
    from .providers.anthropic_provider import AnthropicProvider
    from .providers.openai_provider import OpenAIProvider

    out: dict[str, Provider] = {}
    for config in configs:
        if config.kind == "adapter":
            from ..adapters.registry import AdapterProvider

            out[config.name] = AdapterProvider.from_config(config, timeout_s=timeout_s)
        elif config.kind == "anthropic":
            out[config.name] = AnthropicProvider(config.name, api_key=config.api_key,
                                                 base_url=config.base_url, timeout_s=timeout_s)
        else:
            out[config.name] = OpenAIProvider(config.name, api_key=config.api_key,
                                              base_url=config.base_url, timeout_s=timeout_s)
    return out
