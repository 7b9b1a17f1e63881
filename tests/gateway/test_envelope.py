"""The channel's fast envelope check accepts exactly what api.yaml's WsClientFrame accepts."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from jupyter_cloudide.errors import InvalidInputError
from jupyter_cloudide.gateway import spec
from jupyter_cloudide.gateway.channel import _envelope_ok

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=70))
ids = st.one_of(st.integers(), st.text(max_size=70), st.booleans(), st.none(),
                st.lists(st.integers(), max_size=2))
payloads = st.one_of(
    scalars,
    st.fixed_dictionaries({}, optional={"kind": st.one_of(st.text(max_size=70), scalars),
                                        "x": scalars}),
)
frames = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["request", "ping", "response", "", "REQUEST", 1]),
        "id": ids,
        "payload": payloads,
        "extra": scalars,
    },
)


def _schema_ok(frame: dict[str, Any]) -> bool:
    try:
        spec.validate_schema(frame, spec.schema_pointer("WsClientFrame"))
    except InvalidInputError:
        return False
    return True


@settings(max_examples=1500, deadline=None)
@given(frames)
def test_fast_check_agrees_with_schema(frame: dict[str, Any]) -> None:
    assert _envelope_ok(frame) == _schema_ok(frame)


def test_known_frames() -> None:
    good = {"type": "request", "id": "a", "payload": {"kind": "health"}}
    assert _envelope_ok(good) and _schema_ok(good)
    for bad in ({"type": "request", "id": True, "payload": {"kind": "x"}},
                {"type": "request", "id": "x" * 65, "payload": {"kind": "x"}},
                {"type": "request", "id": 1, "payload": {"kind": ""}},
                {"type": "request", "id": 1, "payload": []},
                {"type": "pong"}):
        assert not _envelope_ok(bad) and not _schema_ok(bad), bad
