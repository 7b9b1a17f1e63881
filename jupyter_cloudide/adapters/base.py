"""What an adapter author writes: one :class:`Adapter` subclass that speaks a model service's
own protocol, and one entry point in the group ``jupyter_cloudide.adapters`` naming it.

The adapter yields the same events as every provider (:class:`TextDelta`,
:class:`ToolCallStarted`, :class:`ToolCallDelta`, :class:`ToolCall`, :class:`Usage`,
:class:`Finish`) and raises
:class:`ProviderError` with a kind the router acts on; :mod:`.registry` wraps it so that it is,
to the router, one more OpenAI-compatible provider (timeouts, estimated usage when the service
reports none, unexpected exceptions mapped), and :mod:`.sidecar` serves it as an
OpenAI-compatible HTTP server.

Options are a frozen dataclass (``Options``) validated from the provider's ``"options"``: types
checked, unknown names refused, and secrets (fields made with :func:`secret`) taken from the
same places as provider keys: the value itself, ``<name>_env`` (an environment variable) or
``<name>_secret`` (an entry of the secrets file). The provider-level ``api_key`` /
``api_key_env`` / ``api_key_secret`` fill the option named by ``key_option``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import logging
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from ..agent.providers.base import (
    ChatRequest,
    Event,
    Finish,
    ProviderError,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStarted,
    ToolSpec,
    Usage,
)
from ..errors import InvalidInputError

__all__ = [
    "Adapter",
    "AdapterConfigError",
    "ChatRequest",
    "Event",
    "Finish",
    "NoOptions",
    "ProviderError",
    "SecretSources",
    "TextDelta",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallStarted",
    "ToolSpec",
    "Usage",
    "parse_options",
    "secret",
]

log = logging.getLogger(__name__)

#: dataclass field metadata marking a secret option
_SECRET = "jupyter_cloudide.secret"  # noqa: S105 - a metadata key, not a secret
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

OptionsT = TypeVar("OptionsT")


class AdapterConfigError(InvalidInputError):
    """An adapter is unknown, or its options are wrong; the message names the provider and the
    option, never a secret's value."""


def secret(*, default: Any = dataclasses.MISSING) -> Any:
    """A secret option: given as ``<name>``, ``<name>_env`` (an environment variable) or
    ``<name>_secret`` (an entry of the secrets file); kept out of reprs."""
    if default is dataclasses.MISSING:
        return field(repr=False, metadata={_SECRET: True})
    return field(default=default, repr=False, metadata={_SECRET: True})


@dataclass(frozen=True)
class NoOptions:
    """For adapters without options."""


@dataclass(frozen=True)
class SecretSources:
    """Where secret references resolve: the environment and the admin's secrets file."""

    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)


class Adapter(ABC, Generic[OptionsT]):
    """A model service with its own protocol, seen by the router as an OpenAI-compatible
    provider. Subclasses set ``Options`` and implement :meth:`stream`; :meth:`models` and
    :meth:`aclose` when they have something to say or release.

    One instance serves every call of its provider, concurrently: connections, tokens and
    caches live on it. ``stream`` is an async generator; closing it early (the user cancelled,
    the client went away, a timeout) must cancel the call at the service.
    """

    #: the options dataclass, validated from the provider's ``"options"``
    Options: ClassVar[type[Any]] = NoOptions
    #: the secret option the provider-level ``api_key`` (``_env``, ``_secret``) fills
    key_option: ClassVar[str | None] = None

    def __init__(self, options: OptionsT, *, name: str, timeout_s: float = 60.0) -> None:
        self.options = options
        #: the provider's configured name (for log lines and messages)
        self.name = name
        #: a default for network timeouts (connect, token fetch); calls have their own
        self.timeout_s = timeout_s

    @abstractmethod
    def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        """The events of one completion: text deltas, tool calls, usage, the finish reason.
        Raise :class:`ProviderError` (also mid-stream) with the kind that fits."""

    async def models(self) -> list[str]:
        """Model ids the service offers; [] when it cannot say (models are then declared)."""
        return []

    async def aclose(self) -> None:
        """Release connections (the provider is shut down)."""

    def secret_values(self) -> tuple[str, ...]:
        """This adapter's secrets, to redact from what models see."""
        options: Any = self.options
        return tuple(str(getattr(options, f.name)) for f in dataclasses.fields(options)
                     if f.metadata.get(_SECRET) and getattr(options, f.name, None))


# -- options ------------------------------------------------------------------------------------


def parse_options(options_cls: type[OptionsT], raw: Mapping[str, Any], *, where: str,
                  sources: SecretSources | None = None, key: str | None = None,
                  key_option: str | None = None, from_text: bool = False) -> OptionsT:
    """``raw`` validated into ``options_cls`` (a dataclass). ``where`` starts every message
    (``provider 'corp' (adapter ws-oauth2)``); ``key`` fills ``key_option`` unless the options
    give it; ``from_text``: values are command-line strings, converted to the field types."""
    if not dataclasses.is_dataclass(options_cls):
        raise AdapterConfigError(f"{where}: the adapter's Options is not a dataclass")
    if not isinstance(raw, Mapping):
        raise AdapterConfigError(f"{where}: options must be a JSON object")
    sources = sources or SecretSources()
    hints = typing.get_type_hints(options_cls)
    fields = {f.name: f for f in dataclasses.fields(options_cls) if f.init}
    accepted = set(fields)
    for f in fields.values():
        if f.metadata.get(_SECRET):
            accepted |= {f"{f.name}_env", f"{f.name}_secret"}
    unknown = sorted(str(k) for k in raw if k not in accepted)
    if unknown:
        raise AdapterConfigError(f"{where}: unknown option(s) {', '.join(map(repr, unknown))}; "
                                 f"known: {', '.join(sorted(fields)) or 'none'}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if f.metadata.get(_SECRET):
            value = _secret_value(name, raw, sources, where)
            if value is None and key is not None and name == key_option:
                value = key
            if value is not None:
                values[name] = value
            continue
        if name in raw:
            values[name] = _coerce(raw[name], hints.get(name, Any), f"{where}: option {name!r}",
                                   from_text)
    missing = [name for name, f in fields.items() if name not in values
               and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise AdapterConfigError(f"{where}: option(s) {', '.join(map(repr, missing))} required")
    try:
        return options_cls(**values)
    except (TypeError, ValueError) as exc:  # the dataclass's own __post_init__ checks
        raise AdapterConfigError(f"{where}: {exc}") from None


def _secret_value(name: str, raw: Mapping[str, Any], sources: SecretSources,
                  where: str) -> str | None:
    given = [k for k in (name, f"{name}_env", f"{name}_secret") if raw.get(k) not in (None, "")]
    if len(given) > 1:
        raise AdapterConfigError(f"{where}: give one of {', '.join(map(repr, given))}")
    if not given:
        return None
    ref = raw[given[0]]
    if not isinstance(ref, str):
        raise AdapterConfigError(f"{where}: option {given[0]!r} must be a string")
    if given[0] == name:
        return ref
    if given[0].endswith("_env"):
        value = sources.env.get(ref)
        if not value:
            raise AdapterConfigError(f"{where}: option {name!r}: environment variable "
                                     f"{ref[:100]!r} is not set")
        return value
    value = sources.secrets.get(ref)
    if not value:
        raise AdapterConfigError(f"{where}: option {name!r}: no entry {ref[:100]!r} in the "
                                 "secrets file")
    return value


def _coerce(value: Any, tp: Any, where: str, from_text: bool) -> Any:
    """``value`` checked against (and, from text, converted to) the annotation ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union or isinstance(tp, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where, from_text)
            except AdapterConfigError as exc:
                errors.append(exc.message)
        raise AdapterConfigError(errors[0] if errors else f"{where}: must be empty")
    if origin is typing.Literal:
        for choice in args:
            if value == choice or (from_text and str(choice) == value):
                return choice
        raise AdapterConfigError(f"{where}: one of {', '.join(map(repr, args))}")
    if tp is bool:
        if from_text and isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        if isinstance(value, bool):
            return value
        raise AdapterConfigError(f"{where}: must be true or false")
    if tp in (int, float):
        if from_text and isinstance(value, str):
            try:
                value = tp(value)
            except ValueError:
                raise AdapterConfigError(f"{where}: must be a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                tp is int and not isinstance(value, int)):
            what = "an integer" if tp is int else "a number"
            raise AdapterConfigError(f"{where}: must be {what}")
        return tp(value)
    if tp is str:
        if not isinstance(value, str):
            raise AdapterConfigError(f"{where}: must be a string")
        return value
    if origin in (list, tuple, collections.abc.Sequence):
        if from_text and isinstance(value, str):
            value = _json_or(value, lambda text: [p for p in text.split(",") if p])
        if not isinstance(value, (list, tuple)):
            raise AdapterConfigError(f"{where}: must be a list")
        item = args[0] if args else Any
        items = [_coerce(v, item, where, False) for v in value]
        return items if origin is list else tuple(items)
    if origin in (dict, collections.abc.Mapping):
        if from_text and isinstance(value, str):
            value = _json_or(value, lambda text: None)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise AdapterConfigError(f"{where}: must be an object")
        item = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, item, where, False) for k, v in value.items()}
    raise AdapterConfigError(f"{where}: unsupported option type {tp!r} (adapter bug)")


def _json_or(text: str, fallback: Any) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return fallback(text)

