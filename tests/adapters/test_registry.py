"""Adapters come from entry points: one installed by a distribution of its own (a real
``.dist-info`` on ``sys.path``, as pip would leave it) is configured, loaded on first use and
called through the provider protocol; options are validated, secrets resolved; the provider
around every adapter bounds its calls and maps what it lets through."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_cloudide.adapters.base import AdapterConfigError
from jupyter_cloudide.adapters.registry import installed_adapters
from jupyter_cloudide.agent.models import build_providers, provider_configs
from jupyter_cloudide.agent.providers.base import (
    ChatRequest,
    Finish,
    ProviderError,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStarted,
    Usage,
)
from jupyter_cloudide.errors import InvalidInputError

pytestmark = [pytest.mark.timeout(60)]

#: an adapter package as a third party would write it: one class, one entry point
ECHO_ADAPTER = '''
"""Echoes the last user message back; behaviours chosen by the model name."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

from jupyter_cloudide.adapters import (
    Adapter, ChatRequest, Finish, ProviderError, TextDelta, ToolCall, Usage, secret)


@dataclass(frozen=True)
class EchoOptions:
    greeting: str
    token: str = secret()
    repeat: int = 1
    ratio: float = 1.0
    loud: bool = False
    mode: Literal["plain", "fancy"] = "plain"
    models: tuple[str, ...] = ("echo-1",)
    labels: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.repeat < 1:
            raise ValueError("option 'repeat' must be at least 1")


class EchoAdapter(Adapter[EchoOptions]):
    Options = EchoOptions
    key_option = "token"
    closed = 0

    async def stream(self, request: ChatRequest):
        text = self.options.greeting + " " + str(request.messages[-1]["content"])
        text = text * self.options.repeat
        if request.model == "whole-call":
            yield ToolCall("", "lookup", '{"q": "x"}')
            yield Finish("tool_calls")
            return
        if request.model == "stall":
            await asyncio.sleep(30)
        if request.model == "crash":
            yield TextDelta("so far")
            raise RuntimeError("adapter bug")
        if request.model == "refuse":
            raise ProviderError("rate_limited", "slow down", retry_after_s=4)
        for word in text.split(" "):
            yield TextDelta(word.upper() if self.options.loud else word)
        if request.model == "unfinished":
            return
        yield Usage(3, 2)
        yield Finish("stop")

    async def models(self) -> list[str]:
        return list(self.options.models)

    async def aclose(self) -> None:
        type(self).closed += 1
'''

BROKEN_ADAPTER = "raise ImportError('a dependency is missing')\n"


@pytest.fixture
def echo_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A distribution ``echo-adapter`` on sys.path registering ``echo``, ``broken`` and
    ``not-a-class`` in the group ``jupyter_cloudide.adapters``."""
    (tmp_path / "echo_adapter.py").write_text(ECHO_ADAPTER)
    (tmp_path / "broken_adapter.py").write_text(BROKEN_ADAPTER)
    info = tmp_path / "echo_adapter-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-adapter\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [jupyter_cloudide.adapters]
        echo = echo_adapter:EchoAdapter
        broken = broken_adapter:Adapter
        not-a-class = echo_adapter:EchoOptions
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    for name in ("echo_adapter", "broken_adapter"):
        sys.modules.pop(name, None)


def echo(options: dict[str, Any] | None = None, *, env: dict[str, str] | None = None,
         secrets: dict[str, str] | None = None, adapter: str = "echo",
         **provider: Any) -> Any:
    raw = {"name": "echoes", "kind": "adapter", "adapter": adapter,
           "options": {"greeting": "hi", "token": "t0k", **(options or {})}, **provider}
    configs = provider_configs([raw], env or {}, secrets or {})
    return build_providers(configs, timeout_s=5)["echoes"]


async def events_of(provider: Any, model: str = "echo-1", timeout_s: float = 5.0
                    ) -> list[Any]:
    request = ChatRequest(model=model, messages=[{"role": "user", "content": "there"}],
                          timeout_s=timeout_s)
    return [e async for e in provider.stream_chat(request)]


def test_the_reference_adapter_is_installed() -> None:
    assert installed_adapters()["ws-oauth2"].value == \
        "jupyter_cloudide.adapters.ws_oauth2:WsOAuth2Adapter"


@pytest.mark.asyncio
async def test_an_entry_point_adapter_is_configured_loaded_lazily_and_called(
        echo_dist: Path) -> None:
    provider = echo({"repeat": 1})
    assert "echo_adapter" not in sys.modules, "configured and built: nothing imported yet"
    try:
        assert await provider.list_models() == ["echo-1"]
        assert "echo_adapter" in sys.modules
        events = await events_of(provider)
    finally:
        await provider.close()
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["hi", "there"]
    assert events[-2:] == [Usage(3, 2), Finish("stop")]
    assert sys.modules["echo_adapter"].EchoAdapter.closed == 1


def test_unknown_adapter_fails_at_configuration(echo_dist: Path) -> None:
    with pytest.raises(InvalidInputError) as info:
        echo(adapter="nope")
    assert "unknown adapter 'nope'" in info.value.message
    assert "echo" in info.value.message and "ws-oauth2" in info.value.message
    with pytest.raises(InvalidInputError, match="needs \"adapter\""):
        provider_configs([{"name": "x", "kind": "adapter"}], {}, {})
    with pytest.raises(InvalidInputError, match="options\" must be an object"):
        provider_configs([{"name": "x", "kind": "adapter", "adapter": "echo",
                           "options": ["a"]}], {}, {})


@pytest.mark.asyncio
@pytest.mark.parametrize(("options", "message"), [
    ({"greeting": None}, "option 'greeting': must be a string"),
    ({"repeat": "2"}, "option 'repeat': must be an integer"),
    ({"repeat": True}, "option 'repeat': must be an integer"),
    ({"repeat": 0}, "option 'repeat' must be at least 1"),
    ({"loud": "yes"}, "option 'loud': must be true or false"),
    ({"mode": "odd"}, "option 'mode': one of 'plain', 'fancy'"),
    ({"models": "echo-1"}, "option 'models': must be a list"),
    ({"labels": {"a": 1}}, "option 'labels': must be a string"),
    ({"colour": "red"}, "unknown option(s) 'colour'"),
    ({"token": None}, "option(s) 'token' required"),
    ({"token": "a", "token_env": "B"}, "give one of 'token', 'token_env'"),
    ({"token": None, "token_env": "MISSING"}, "environment variable 'MISSING' is not set"),
    ({"token": None, "token_secret": "nope"}, "no entry 'nope' in the secrets file"),
], ids=lambda v: str(v)[:40])
async def test_bad_options_fail_the_first_use_clearly(
        echo_dist: Path, options: dict[str, Any], message: str) -> None:
    provider = echo(options)  # configuration reads metadata only: the class is not loaded
    with pytest.raises(ProviderError) as info:
        await events_of(provider)
    assert info.value.kind == "other" and not info.value.retryable
    assert info.value.message.startswith("provider 'echoes' (adapter 'echo'): ")
    assert message in info.value.message, info.value.message
    with pytest.raises(ProviderError):  # the same error, every time, without a reload
        await provider.list_models()


@pytest.mark.asyncio
async def test_options_typed_and_secrets_resolved(echo_dist: Path) -> None:
    provider = echo({"token": None, "token_env": "ECHO_TOKEN", "repeat": 2, "ratio": 2,
                     "loud": True, "mode": "fancy", "models": ["a", "b"],
                     "labels": {"team": "x"}}, env={"ECHO_TOKEN": "from-env"})
    try:
        assert await provider.list_models() == ["a", "b"]
        adapter = provider.adapter()
        assert adapter.options.token == "from-env" and adapter.options.ratio == 2.0
        assert adapter.options.models == ("a", "b") and adapter.options.labels == {"team": "x"}
        assert "from-env" not in repr(adapter.options), "secrets stay out of reprs"
        assert provider.secret_values() == ("from-env",)
        words = [e.text for e in await events_of(provider) if isinstance(e, TextDelta)]
        assert words[:2] == ["HI", "THEREHI"]
    finally:
        await provider.close()
    from_file = echo({"token": None, "token_secret": "echo"}, secrets={"echo": "from-file"})
    assert from_file.adapter().options.token == "from-file"
    # the provider-level key (api_key / api_key_env / api_key_secret) fills key_option
    keyed = echo({"token": None}, api_key_env="ECHO_KEY", env={"ECHO_KEY": "provider-key"})
    assert keyed.adapter().options.token == "provider-key"
    assert keyed.secret_values() == ("provider-key",)


def test_options_from_command_line_text(echo_dist: Path) -> None:
    from echo_adapter import EchoOptions  # type: ignore[import-not-found]

    from jupyter_cloudide.adapters.base import parse_options

    options = parse_options(EchoOptions, {"greeting": "5", "token": "t", "repeat": "3",
                                          "ratio": "0.5", "loud": "true", "mode": "fancy",
                                          "models": "a,b", "labels": '{"k": "v"}'},
                            where="test", from_text=True)
    assert (options.greeting, options.repeat, options.ratio, options.loud, options.models,
            options.labels) == ("5", 3, 0.5, True, ("a", "b"), {"k": "v"})
    with pytest.raises(AdapterConfigError, match="must be a number"):
        parse_options(EchoOptions, {"greeting": "x", "token": "t", "repeat": "many"},
                      where="test", from_text=True)


@pytest.mark.asyncio
async def test_an_adapter_that_cannot_load(echo_dist: Path) -> None:
    for name, message in (("broken", "cannot load broken_adapter:Adapter (ImportError: a "
                                     "dependency is missing)"),
                          ("not-a-class", "echo_adapter:EchoOptions is not an Adapter")):
        provider = echo(adapter=name)
        with pytest.raises(ProviderError) as info:
            await events_of(provider)
        assert message in info.value.message and info.value.kind == "other"


@pytest.mark.asyncio
async def test_the_provider_bounds_and_maps_what_an_adapter_does(echo_dist: Path) -> None:
    provider = echo()
    try:
        with pytest.raises(ProviderError) as info:
            await events_of(provider, "stall", timeout_s=0.3)
        assert info.value.kind == "timeout"
        with pytest.raises(ProviderError) as info:
            await events_of(provider, "crash")
        assert (info.value.kind, info.value.message) == ("other",
                                                         "model call failed (RuntimeError)")
        with pytest.raises(ProviderError) as info:
            await events_of(provider, "refuse")
        assert (info.value.kind, info.value.retry_after_s) == ("rate_limited", 4)
        with pytest.raises(ProviderError) as info:
            await events_of(provider, "unfinished")
        assert info.value.kind == "connection", "a stream without a finish was cut short"
        # an adapter that sends whole tool calls: they start and stream like any other
        events = await events_of(provider, "whole-call")
        assert events[:3] == [ToolCallStarted("call_0", "lookup"),
                              ToolCallDelta("call_0", '{"q": "x"}'),
                              ToolCall("call_0", "lookup", '{"q": "x"}')]
        usage = events[3]
        assert isinstance(usage, Usage) and usage.estimated, "estimated: none reported"
        assert events[-1] == Finish("tool_calls")
    finally:
        await provider.close()
