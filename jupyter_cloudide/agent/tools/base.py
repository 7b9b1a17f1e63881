"""The agent's tools: what a tool is, what it gets, what it returns, and the one place that
validates, runs, redacts and truncates.

The agent loop only ever calls :meth:`ToolRegistry.run`. That is where the safety rules that
hold for every tool live, so no single tool can forget them:

* arguments are parsed and validated against the tool's JSON Schema (Draft 2020-12,
  ``additionalProperties: false``) before the tool sees them - a schema violation never
  has a side effect;
* every failure becomes an ``ok=False`` result with a message for the model - a tool never
  raises into the loop, and the model never sees a traceback;
* every result is redacted (known secrets, credential shapes) and then truncated to the
  context's budget - in that order, so a cut can never leave half a secret unrecognisable.

Domain code: no tornado here. The ContentsManager's errors are recognised by their
``status_code`` attribute, not their class.
"""

from __future__ import annotations

import json
import logging
import traceback
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from ...errors import CloudIDEError
from .redact import redact
from .truncate import truncate

__all__ = [
    "Checkpoint",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolKind",
    "ToolRegistry",
    "ToolResult",
    "default_tools",
]

log = logging.getLogger(__name__)

#: arguments longer than this are refused before parsing (a write_file content is the largest)
MAX_ARGUMENTS_CHARS = 8_000_000
_MAX_MESSAGE_CHARS = 300


class ToolKind(str, Enum):
    """What a tool does, for the approval policy: reads are usually allowed, writes and
    code execution usually need the user's approval."""

    READ = "read"
    WRITE = "write"
    EXECUTE = "execute"


@dataclass(frozen=True)
class ToolContext:
    """Everything a tool may use, for one user's conversation. Tools hold no state."""

    user: str
    #: jupyter_server's ContentsManager (sync or async methods; tools use ensure_async)
    contents_manager: Any
    #: the ExecutorService, for execute_code and run_cell
    executor: Any | None = None
    #: the IndexService, for search_codebase
    index: Any | None = None
    #: literal secret values to redact from every result (server token, provider keys)
    secrets: tuple[str, ...] = ()
    #: characters of ``content`` the model gets back from one tool call
    result_budget_chars: int = 16_000
    #: the conversation's kernel for execute_code, if it has one yet
    kernel_id: str | None = None


@dataclass
class Checkpoint:
    """What a write replaced, so the UI can undo it.

    ``kind="file"``: ``previous`` is the whole former file (for a notebook, its JSON), or
    None when the file did not exist (undo = delete). ``kind="cell"``: ``previous`` is the
    former source of cell ``cell_id``. Checkpoints are for the server and the UI, never for the
    model, and are not redacted (an undo must restore the exact bytes).
    """

    path: str
    kind: Literal["file", "cell"]
    previous: str | None
    cell_id: str | None = None


@dataclass
class ToolResult:
    """The outcome of one tool call.

    ``content`` goes back to the model; ``data`` is for the UI (diffs, paths, outputs).
    Both are redacted and ``content`` is truncated by :meth:`ToolRegistry.run`.
    """

    ok: bool
    content: str
    data: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[Checkpoint] = field(default_factory=list)


class ToolError(Exception):
    """A failure the model should read and react to (bad path, no match, unknown cell).

    The message is written for the model: what went wrong and what to do instead. It must
    not carry tracebacks or paths outside the workspace.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class Tool(ABC):
    """One tool: a name, a description for the model, a kind for the approval policy, and a
    JSON Schema for its arguments (an object with ``additionalProperties: false``)."""

    name: str
    description: str
    kind: ToolKind
    parameters: dict[str, Any]

    @abstractmethod
    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        """Do the work with already validated ``args``; raise ToolError for expected failures."""

    def spec(self) -> dict[str, Any]:
        """This tool in the OpenAI ``tools`` format."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": json.loads(json.dumps(self.parameters)),
            },
        }


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not valid JSON")


def _parse_arguments(arguments: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The arguments as a dict; JSON text from the model is parsed strictly."""
    if arguments is None:
        return {}
    if isinstance(arguments, Mapping):
        return dict(arguments)
    if not isinstance(arguments, str):
        raise ToolError("arguments must be a JSON object")
    if len(arguments) > MAX_ARGUMENTS_CHARS:
        raise ToolError(f"arguments are larger than {MAX_ARGUMENTS_CHARS} characters")
    if not arguments.strip():
        return {}  # some models send "" for a call without arguments
    try:
        parsed = json.loads(arguments, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ToolError(f"arguments are not valid JSON: {exc.msg} at line {exc.lineno} "
                        f"column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise ToolError(f"arguments are not valid JSON: {str(exc)[:100]}") from None
    if not isinstance(parsed, dict):
        raise ToolError(f"arguments must be a JSON object, not {type(parsed).__name__}")
    return parsed


def _describe(error: ValidationError, tool: Tool) -> ToolError:
    """A schema violation as a message naming the field."""
    where = "/".join(str(part) for part in error.absolute_path)
    instance = error.instance
    if error.validator == "required" and isinstance(instance, dict):
        missing = [k for k in error.validator_value if k not in instance]
        name = "/".join(part for part in (where, missing[0] if missing else "") if part)
        return ToolError(f"invalid arguments for {tool.name}: {name}: required field is "
                         "missing", field=name)
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(str(k) for k in instance if k not in allowed)
        name = "/".join(part for part in (where, extra[0] if extra else "") if part)
        return ToolError(
            f"invalid arguments for {tool.name}: {name[:100]}: unknown field (allowed: "
            f"{', '.join(sorted(allowed)) or 'none'})", field=name)
    message = error.message
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[:_MAX_MESSAGE_CHARS] + "..."
    name = where or "(arguments)"
    return ToolError(f"invalid arguments for {tool.name}: {name}: {message}", field=name)


def _redact_data(value: Any, secrets: tuple[str, ...]) -> Any:
    """``value`` with every string inside redacted (keys are ours, left as they are)."""
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, Mapping):
        return {key: _redact_data(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_data(item, secrets) for item in value]
    return value


class ToolRegistry:
    """The tools one agent may call, by name, with validation and safe execution."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        self._tools: dict[str, Tool] = {}
        self._validators: dict[str, Draft202012Validator] = {}
        for tool in tools:
            if tool.name in self._tools:
                raise ValueError(f"duplicate tool name {tool.name!r}")
            schema = tool.parameters
            Draft202012Validator.check_schema(schema)
            if schema.get("type") != "object" or schema.get("additionalProperties") is not False:
                raise ValueError(f"tool {tool.name!r}: parameters must be an object schema with "
                                 "additionalProperties false")
            self._tools[tool.name] = tool
            self._validators[tool.name] = Draft202012Validator(schema)

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def specs(self) -> list[dict[str, Any]]:
        """The tools in the OpenAI ``tools`` format, for the model request."""
        return [tool.spec() for tool in self._tools.values()]

    def get(self, name: str) -> Tool:
        tool = self._tools.get(name) if isinstance(name, str) else None
        if tool is None:
            shown = repr(name)[:100]
            raise ToolError(f"unknown tool {shown}; available: {', '.join(self._tools)}")
        return tool

    def validate(self, name: str, arguments: str | Mapping[str, Any] | None) -> dict[str, Any]:
        """The parsed arguments if they satisfy the tool's schema, else ToolError naming the
        problem. No side effects: the approval step calls this before asking the user."""
        tool = self.get(name)
        args = _parse_arguments(arguments)
        errors = sorted(self._validators[name].iter_errors(args),
                        key=lambda e: (len(e.absolute_path), str(e.validator)))
        if errors:
            # The shallowest error first: "content is missing" beats a nested detail.
            raise _describe(errors[0], tool)
        return args

    async def run(self, name: str, arguments: str | Mapping[str, Any] | None,
                  ctx: ToolContext) -> ToolResult:
        """Validate, run, redact, truncate. Never raises (cancellation aside)."""
        try:
            args = self.validate(name, arguments)
            result = await self._tools[name].run(ctx, args)
        except ToolError as exc:
            result = ToolResult(ok=False, content=exc.message)
        except CloudIDEError as exc:  # a service refused (kernel not allowed, not found...)
            result = ToolResult(ok=False, content=exc.message)
        except Exception as exc:
            # The log gets the traceback, redacted like everything else; the model a notice.
            details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            log.error("tool %s failed unexpectedly:\n%s", name, redact(details, ctx.secrets))
            result = ToolResult(ok=False, content=f"{name} failed with an internal error "
                                "(details are in the server log); try a different approach")
        return self._finish(result, ctx)

    @staticmethod
    def _finish(result: ToolResult, ctx: ToolContext) -> ToolResult:
        content = truncate(redact(result.content, ctx.secrets), ctx.result_budget_chars)
        return ToolResult(ok=result.ok, content=content,
                          data=_redact_data(result.data, ctx.secrets),
                          checkpoints=list(result.checkpoints))


def default_tools() -> ToolRegistry:
    """Every built-in tool."""
    from .execute import ExecuteCodeTool, RunCellTool
    from .files import EditFileTool, ListFilesTool, ReadFileTool, WriteFileTool
    from .notebooks import DeleteCellTool, EditCellTool, InsertCellTool, ReadNotebookTool
    from .search import SearchCodebaseTool

    return ToolRegistry([
        ListFilesTool(), ReadFileTool(), WriteFileTool(), EditFileTool(),
        ReadNotebookTool(), EditCellTool(), InsertCellTool(), DeleteCellTool(),
        RunCellTool(), ExecuteCodeTool(), SearchCodebaseTool(),
    ])
