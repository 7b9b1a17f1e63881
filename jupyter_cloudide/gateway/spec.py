"""api.yaml, loaded once: request-body and WS-payload validation against the published spec.

The same file documents the API, drives schemathesis, and validates input here, so the
spec and the server cannot drift apart. No tornado in this module.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from ..errors import InvalidInputError

SPEC_URI = "urn:jupyter-cloudide:api"
_MAX_MESSAGE = 240
_MAX_FIELD = 64
#: a JSON escape of a UTF-16 surrogate; json.loads turns an unpaired one into a str that no
#: UTF-8 encoder (SQLite, the model SDKs, the socket) accepts
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_METHODS = ("get", "put", "post", "delete", "patch")


@functools.cache
def load_spec() -> dict[str, Any]:
    """The parsed api.yaml shipped in the package."""
    text = resources.files("jupyter_cloudide").joinpath("api.yaml").read_text("utf-8")
    # libyaml's loader parses it in ~2 ms; the pure-Python one takes ~17 ms at start-up.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    spec: dict[str, Any] = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    return spec


@functools.cache
def _registry() -> Registry[Any]:
    resource: Resource[Any] = Resource.from_contents(load_spec(),
                                                     default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
    return registry


@functools.cache
def _validator(pointer: str) -> Draft202012Validator:
    """A validator of the schema at ``pointer``, its local ``$ref``s inlined: resolving them
    through the registry on every request cost more than the rest of the validation. A
    recursive schema keeps its references."""
    try:
        return Draft202012Validator(_inline({"$ref": f"#{pointer}"}, ()))
    except _Recursive:
        return Draft202012Validator({"$ref": f"{SPEC_URI}#{pointer}"}, registry=_registry())


class _Recursive(Exception):
    """A schema refers to itself: it cannot be inlined."""


def _inline(node: Any, seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_inline(item, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if not (isinstance(ref, str) and ref.startswith("#/")):
        return {key: _inline(value, seen) for key, value in node.items()}
    if ref in seen:
        raise _Recursive(ref)
    target: Any = load_spec()
    for part in ref[2:].split("/"):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    resolved = _inline(target, (*seen, ref))
    siblings = {key: _inline(value, seen) for key, value in node.items() if key != "$ref"}
    # 2020-12: keywords next to $ref apply too
    return {"allOf": [resolved, siblings]} if siblings else resolved


@functools.cache
def operations() -> dict[str, dict[str, Any]]:
    """operationId → {path, method, auth_resource, body_pointer, body_limit}."""
    out: dict[str, dict[str, Any]] = {}
    for path, item in load_spec()["paths"].items():
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            pointer = None
            if body is not None:
                ref = body["schema"]["$ref"]
                pointer = ref.removeprefix("#")
            out[op["operationId"]] = {
                "path": path,
                "method": method.upper(),
                "auth_resource": op.get("x-auth-resource"),
                "body_pointer": pointer,
                "body_limit": op.get("x-body-limit"),
                "websocket": bool(op.get("x-websocket")),
            }
    return out


def _field_of(error: ValidationError) -> str:
    """A dotted path naming the offending field, down to the unknown or missing key."""
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        if extra:
            parts.append(extra[0])
    elif error.validator == "required" and isinstance(error.instance, dict):
        missing = [k for k in error.validator_value if k not in error.instance]
        if missing:
            parts.append(missing[0])
    return _short_field(".".join(parts))


def _short_field(path: str) -> str:
    """A field path fit to send back: a client's made-up key (1 MB of it) is not echoed."""
    if len(path) > _MAX_FIELD:
        return path[:_MAX_FIELD] + "…"
    return path or "(body)"


def _describe(error: ValidationError, field: str) -> str:
    if error.validator == "additionalProperties":
        return f"{field}: unknown field"
    if error.validator == "required":
        return f"{field}: required field is missing"
    message = error.message
    if len(message) > _MAX_MESSAGE:
        # jsonschema quotes the instance; a 1 MB string must not come back in the error.
        message = message[:_MAX_MESSAGE] + "…"
    return f"{field}: {message}"


def validate_schema(instance: Any, pointer: str) -> None:
    """Validate ``instance`` against the schema at JSON pointer ``pointer`` inside api.yaml.

    Raises InvalidInputError (400) whose ``field`` names the offending field.
    """
    error = best_match(_validator(pointer).iter_errors(instance))
    if error is not None:
        field = _field_of(error)
        raise InvalidInputError(_describe(error, field), field=field)


def check_unicode(value: Any, text: str) -> None:
    """Refuse an unpaired surrogate anywhere in ``value``, parsed from the JSON ``text``.

    JSON may spell one (``"\\ud800"``) although no UTF-8 text can hold it; accepted, it makes
    the first database write or model call that encodes it fail as a server error. Raises
    InvalidInputError naming the field. Only a text with such an escape is walked."""
    if not _SURROGATE_ESCAPE.search(text):
        return
    path = _surrogate_path(value)
    if path is not None:
        field = _short_field(path)
        raise InvalidInputError(f"{field}: not valid Unicode (an unpaired surrogate)",
                                field=field)


def _surrogate_path(value: Any) -> str | None:
    """The dotted path of the first string holding a surrogate (json.loads pairs the valid
    ones, so any left is unpaired), or None. Iterative: the value may be nested as deep as
    the parser allows."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return path
        elif isinstance(item, dict):
            for key, sub in item.items():
                if _SURROGATE.search(key):
                    return path  # the key itself: name the object holding it
                stack.append((sub, f"{path}.{key}" if path else key))
        elif isinstance(item, list):
            stack.extend((sub, f"{path}.{i}" if path else str(i)) for i, sub in enumerate(item))
    return None


def schema_pointer(name: str) -> str:
    """The pointer of a named component schema, e.g. ``WsResume``."""
    if name not in load_spec()["components"]["schemas"]:
        raise KeyError(f"api.yaml has no components.schemas.{name}")
    return f"/components/schemas/{name}"


def _reject_constant(value: str) -> Any:
    raise InvalidInputError(f"body: {value} is not valid JSON", field="(body)")


_BOM = re.compile(rb"^\xef\xbb\xbf")


def decode_json_object(raw: bytes) -> dict[str, Any]:
    """Strictly decode a request body: UTF-8, JSON, no NaN/Infinity, an object at the top."""
    if _BOM.match(raw):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as e:
        raise InvalidInputError(
            f"body: not valid UTF-8 (byte {e.start})", field="(body)"
        ) from None
    if not text.strip():
        raise InvalidInputError("body: a JSON object is required", field="(body)")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise InvalidInputError(
            f"body: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", field="(body)"
        ) from None
    except ValueError:  # an integer literal over Python's 4300-digit limit
        raise InvalidInputError("body: a number in the JSON is too large",
                                field="(body)") from None
    except RecursionError:
        raise InvalidInputError("body: JSON nested too deeply", field="(body)") from None
    if not isinstance(value, dict):
        raise InvalidInputError(
            f"body: expected a JSON object, got {type(value).__name__}", field="(body)"
        )
    check_unicode(value, text)
    return value
