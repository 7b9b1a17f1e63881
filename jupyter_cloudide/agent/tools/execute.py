"""Code tools: run code, or a notebook cell, in a kernel through the executor.

Both go through :class:`~jupyter_cloudide.executor.service.ExecutorService`, so the
executor's rules hold unchanged for the agent: the kernelspec allowlist, one execution at a
time per kernel, the timeout that interrupts and then restarts, capped outputs, metering
(requests are marked ``source="agent"``). The model gets a summary
(:func:`~.outputs.summarize_result`); the UI gets the raw outputs in ``data``.

Kernels: ``execute_code`` runs in the conversation's kernel (``ToolContext.kernel_id``). A
conversation without one gets a new kernel from the executor (``kernel_name`` picks its
kernelspec), and the result's ``data["kernel_id"]`` tells the loop which kernel to keep for
the next calls. ``run_cell`` runs the cell's saved source in the notebook's own kernel (its
open session), falling back to the conversation's kernel when the notebook has none. Outputs
are returned, not written into the notebook: the JupyterLab document that has the notebook
open owns the file, and a write behind its back would conflict with the user's next save.
"""

from __future__ import annotations

from typing import Any

from ...errors import NotFoundError
from ...executor.execute import ExecuteRequest, ExecuteResult
from .base import Tool, ToolContext, ToolError, ToolKind, ToolResult
from .notebooks import CELL_ID, NOTEBOOK_PATH, find_cell, load_notebook
from .outputs import joined, outputs_for_ui, summarize_result
from .paths import confine_for

__all__ = ["ExecuteCodeTool", "RunCellTool"]

_TIMEOUT = {"type": "number", "exclusiveMinimum": 0, "maximum": 3600,
            "description": "Seconds before the run is interrupted (default: the server's)."}


def _executor(ctx: ToolContext) -> Any:
    if ctx.executor is None:
        raise ToolError("code execution is not available on this server")
    return ctx.executor


def _result(result: ExecuteResult, header: str, extra: dict[str, Any]) -> ToolResult:
    content = f"{header}\n{summarize_result(result)}"
    data = {"status": result.status, "kernel_id": result.kernel_id,
            "kernel_name": result.kernel_name, "execution_count": result.execution_count,
            "duration_s": result.duration_s, "restarted": result.restarted,
            "truncated": result.truncated, "outputs": outputs_for_ui(result.outputs), **extra}
    # A run that raised is still a successful tool call: the model reads the error and
    # fixes the code. Only a run that did not finish is a failed call.
    return ToolResult(ok=result.status in ("ok", "error"), content=content, data=data)


class ExecuteCodeTool(Tool):
    name = "execute_code"
    description = (
        "Run code in the conversation's Jupyter kernel (variables persist between calls) and "
        "return its status and outputs (text, DataFrame columns, errors; images as "
        "placeholders).")
    kind = ToolKind.EXECUTE
    parameters = {
        "type": "object",
        "properties": {
            "code": {"type": "string", "minLength": 1, "maxLength": 200_000},
            "timeout_s": _TIMEOUT,
            "kernel_name": {"type": "string", "pattern": r"^[A-Za-z0-9._-]{1,100}$",
                            "description": "Kernelspec for a new kernel; ignored when the "
                                           "conversation already has a kernel."},
        },
        "required": ["code"],
        "additionalProperties": False,
    }

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        executor = _executor(ctx)
        kernel_name = None if ctx.kernel_id else args.get("kernel_name")
        request = ExecuteRequest(code=args["code"], kernel_id=ctx.kernel_id,
                                 kernel_name=kernel_name, timeout_s=args.get("timeout_s"),
                                 source="agent")
        result: ExecuteResult = await executor.execute(request)
        return _result(result, f"kernel {result.kernel_name}", {})


class RunCellTool(Tool):
    name = "run_cell"
    description = (
        "Run one code cell of a notebook (its saved source) in the notebook's kernel and "
        "return its status and outputs. The outputs are not written into the notebook.")
    kind = ToolKind.EXECUTE
    parameters = {
        "type": "object",
        "properties": {"path": NOTEBOOK_PATH, "cell_id": CELL_ID, "timeout_s": _TIMEOUT},
        "required": ["path", "cell_id"],
        "additionalProperties": False,
    }

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        executor = _executor(ctx)
        path = confine_for(ctx, args["path"])
        if not path.endswith(".ipynb"):
            raise ToolError(f"{path!r} is not a notebook")
        notebook = await load_notebook(ctx, path)
        cell_id: str = args["cell_id"]
        index, cell = find_cell(notebook, cell_id, path)
        if cell.get("cell_type") != "code":
            raise ToolError(f"cell {cell_id} is a {cell.get('cell_type')} cell; only code "
                            "cells run")
        code = joined(cell.get("source"))
        if not code.strip():
            raise ToolError(f"cell {cell_id} is empty")
        timeout = args.get("timeout_s")
        where = "the notebook's kernel"
        try:
            result: ExecuteResult = await executor.execute(ExecuteRequest(
                code=code, notebook_path=path, timeout_s=timeout, source="agent"))
        except NotFoundError:
            if not ctx.kernel_id:
                raise ToolError(f"no kernel is running for {path!r}; open the notebook in "
                                "JupyterLab, or run the code with execute_code") from None
            where = "the conversation's kernel (the notebook has no running kernel)"
            result = await executor.execute(ExecuteRequest(
                code=code, kernel_id=ctx.kernel_id, timeout_s=timeout, source="agent"))
        header = f"ran cell {cell_id} (index {index}) of {path!r} in {where}"
        return _result(result, header, {"path": path, "cell_id": cell_id, "index": index})
