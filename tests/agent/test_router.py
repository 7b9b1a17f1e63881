"""The model registry and router: configuration, allowlists, strategies, cooldowns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jupyter_cloudide.agent.models import (
    ModelRegistry,
    ModelSpec,
    load_secrets,
    model_specs,
    provider_configs,
)
from jupyter_cloudide.agent.providers.base import ProviderError
from jupyter_cloudide.errors import CloudIDEError, ForbiddenError, NotFoundError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def registry(clock: Clock, **kwargs: Any) -> ModelRegistry:
    models = {
        "big": ModelSpec("big", "p", "big-1", quality=90, price_input=0.01, price_output=0.03),
        "small": ModelSpec("small", "p", "small-1", quality=40, price_input=0.0001,
                           price_output=0.0004),
        "vision": ModelSpec("vision", "p", "v-1", quality=70, price_input=0.002,
                            price_output=0.006, capabilities=frozenset({"tools", "vision"})),
        "fim": ModelSpec("fim", "p", "fim-1", roles=frozenset({"completion"}),
                         capabilities=frozenset({"fim"})),
    }
    return ModelRegistry({}, models, clock=clock, **kwargs)


def ids(choices: list[Any]) -> list[str]:
    return [c.model.id for c in choices]


def test_strategies_order_candidates() -> None:
    reg = registry(Clock())
    assert ids(reg.route("u", strategy="quality")) == ["big", "vision", "small"]
    assert ids(reg.route("u", strategy="cost")) == ["small", "vision", "big"]
    reg.record_success("small", 900.0)
    reg.record_success("big", 200.0)
    reg.record_success("vision", 500.0)
    assert ids(reg.route("u", strategy="latency")) == ["big", "vision", "small"]
    assert ids(reg.route("u", needs=["vision"])) == ["vision"]
    assert ids(reg.route("u", role="completion")) == ["fim"]
    first = reg.route("u", strategy="cost")[0]
    assert "cost strategy rank 1" in first.reason


def test_requested_model_first_then_fallbacks_and_refusals() -> None:
    reg = registry(Clock(), allowlist={"*": ["small", "vision"], "user:ada": ["big"]})
    choices = reg.route("bob", requested="vision", strategy="quality")
    assert ids(choices) == ["vision", "small"]
    assert choices[0].reason.startswith("requested")
    assert choices[1].reason.startswith("fallback")
    with pytest.raises(ForbiddenError):
        reg.route("bob", requested="big")
    with pytest.raises(NotFoundError):
        reg.route("bob", requested="no-such-model")
    assert "big" in ids(reg.route("ada", strategy="quality"))
    assert set(ids(reg.route("bob", groups=["x"]))) == {"small", "vision"}
    group_reg = registry(Clock(), allowlist={"group:research": ["b*"]})
    assert ids(group_reg.route("carol", groups=["research"])) == ["big"]
    with pytest.raises(NotFoundError):
        group_reg.route("dave")  # no entry for everyone: nothing allowed


def test_cooldown_circuit_breaker_and_recovery() -> None:
    clock = Clock()
    reg = registry(clock)
    reg.record_failure("big", ProviderError("rate_limited", "slow down", retry_after_s=30))
    order = ids(reg.route("u", strategy="quality"))
    assert order[-1] == "big", "a model in cooldown is only a last resort"
    assert "cooldown" in reg.route("u", strategy="quality")[-1].reason
    clock.now += 29
    assert ids(reg.route("u", strategy="quality"))[-1] == "big"
    clock.now += 2
    assert ids(reg.route("u", strategy="quality"))[0] == "big"
    # consecutive failures back off exponentially (the 429 above was the first: 5 s x 2^3)
    for _ in range(3):
        reg.record_failure("big", ProviderError("server", "boom"))
    assert reg.health["big"].cooldown_until - clock.now == pytest.approx(40.0)
    reg.record_success("big", 100.0)
    assert not reg.health["big"].cooling(clock.now)
    # a bad request says nothing about the model's health
    reg.record_failure("small", ProviderError("bad_request", "bad"))
    assert not reg.health["small"].cooling(clock.now)


def test_configuration_from_env_config_and_secrets(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"vllm": "sk-from-file"}))
    secrets.chmod(0o600)
    loaded = load_secrets(str(secrets))
    assert loaded == {"vllm": "sk-from-file"}
    secrets.chmod(0o644)
    assert load_secrets(str(secrets)) == {}, "a world-readable secrets file is refused"
    configs = provider_configs(
        [{"name": "vllm", "kind": "openai", "base_url": "http://127.0.0.1:9/v1",
          "api_key_secret": "vllm"}],
        {"OPENAI_API_KEY": "sk-env", "ANTHROPIC_BASE_URL": "http://127.0.0.1:8"}, loaded)
    by_name = {c.name: c for c in configs}
    assert by_name["vllm"].api_key == "sk-from-file"
    assert by_name["openai"].api_key == "sk-env" and by_name["openai"].base_url is None
    assert by_name["anthropic"].base_url == "http://127.0.0.1:8"
    assert "sk-from-file" not in repr(by_name["vllm"])
    specs = model_specs([{"provider": "vllm", "model": "llama", "price_per_1k":
                          {"input": 0.001, "output": 0.002}}], by_name)
    assert specs["llama"].cost(1000, 500) == pytest.approx(0.002)
    with pytest.raises(CloudIDEError):
        model_specs([{"provider": "nope", "model": "x"}], by_name)
    with pytest.raises(CloudIDEError):
        model_specs([{"provider": "vllm", "model": "x", "roles": ["dancing"]}], by_name)
