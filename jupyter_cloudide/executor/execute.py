"""Running code in a Jupyter kernel, safely: one execution at a time per kernel, a timeout that
interrupts and then restarts, capped outputs, answered-or-refused ``input()``, and kernel death
reported instead of hanging.

No tornado here; the gateway calls :meth:`Executor.execute` and streams ``on_output``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from jupyter_core.utils import ensure_async

from ..errors import InvalidInputError
from .kernels import KernelDirectory, KernelHandle
from .outputs import OutputCollector, output_from_message

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]
OnOutput = Callable[[JsonDict], object]
STATUSES = ("ok", "error", "timeout", "interrupted", "dead")
_POLL_S = 0.25
_IDLE_QUIET_S = 1.0


@dataclass(frozen=True)
class ExecuteRequest:
    """What to run and where. Exactly one target or none (a new default kernel)."""

    code: str
    kernel_id: str | None = None
    notebook_path: str | None = None
    kernel_name: str | None = None
    timeout_s: float | None = None
    stdin: tuple[str, ...] | None = None
    source: str = "user"

    def __post_init__(self) -> None:
        targets = [t for t in (self.kernel_id, self.notebook_path, self.kernel_name) if t]
        if len(targets) > 1:
            raise InvalidInputError(
                "target: give one of kernel_id, notebook_path or kernel_name", field="target")


@dataclass
class ExecuteResult:
    """The outcome of one execution (the `result` of the execute API)."""

    status: str
    kernel_id: str
    kernel_name: str
    execution_count: int | None = None
    outputs: list[JsonDict] = field(default_factory=list)
    duration_s: float = 0.0
    busy_s: float = 0.0
    truncated: bool = False
    restarted: bool = False
    message: str | None = None

    def to_json(self) -> JsonDict:
        return asdict(self)


@dataclass(frozen=True)
class ExecutorSettings:
    default_timeout_s: float = 60.0
    max_timeout_s: float = 3600.0
    interrupt_grace_s: float = 5.0
    max_output_bytes: int = 1024 * 1024
    max_output_messages: int = 2000
    ready_timeout_s: float = 60.0


class _Run:
    """The state of one execution while its messages arrive."""

    def __init__(self, msg_id: str, collector: OutputCollector, on_output: OnOutput | None,
                 stdin: tuple[str, ...] | None) -> None:
        self.msg_id = msg_id
        self.collector = collector
        self.on_output = on_output
        self.stdin = list(stdin or ())
        self.busy_at: float | None = None
        self.idle_at: float | None = None
        self.reply: JsonDict | None = None
        self.reply_at: float | None = None
        self.last_iopub_at = time.monotonic()
        self.execution_count: int | None = None
        self.input_refused = False
        #: the kernel process died under us (announced on iopub, see ``on_iopub``)
        self.kernel_lost = False
        #: set when both the idle status and the execute_reply have arrived
        self.finished = asyncio.Event()

    @property
    def done(self) -> bool:
        return self.idle_at is not None and self.reply is not None

    def _check_done(self) -> None:
        if self.done:
            self.finished.set()

    def on_iopub(self, msg: JsonDict) -> None:
        if (msg["header"]["msg_type"] == "status"
                and msg.get("content", {}).get("execution_state") in ("restarting", "dead")):
            # Nobody's reply: jupyter_server's kernel WebSocket announces that the kernel
            # process died (and its restarter is bringing up a new one). Through it is the only
            # way we learn of it for a remote kernel: the gateway's is_alive stays true.
            self.kernel_lost = True
            self.finished.set()
            return
        if msg.get("parent_header", {}).get("msg_id") != self.msg_id:
            return  # another client's traffic on the same kernel
        self.last_iopub_at = time.monotonic()
        msg_type = msg["header"]["msg_type"]
        content = msg.get("content", {})
        if msg_type == "status":
            state = content.get("execution_state")
            if state == "busy" and self.busy_at is None:
                self.busy_at = time.monotonic()
            elif state == "idle":
                self.idle_at = time.monotonic()
                self._check_done()
            return
        if msg_type == "execute_input":
            self.execution_count = content.get("execution_count", self.execution_count)
            return
        output = output_from_message(msg_type, content)
        if output is None:
            return
        kept = self.collector.add(output)
        if kept is not None and self.on_output is not None:
            self.on_output(kept)

    def idle_lost(self, now: float, quiet_s: float) -> bool:
        """The reply came but the idle status did not: under a flood, ZMQ's high-water mark
        drops iopub messages (that bound is what keeps server memory flat), and the idle
        status can be among them. Once our iopub traffic has been quiet for ``quiet_s``
        after the reply, the run is over."""
        if self.reply_at is None or self.idle_at is not None:
            return False
        return now - max(self.reply_at, self.last_iopub_at) >= quiet_s

    def busy_seconds(self, end: float) -> float:
        if self.busy_at is None:
            return 0.0
        return max(0.0, (self.idle_at or end) - self.busy_at)


class Executor:
    """Runs code for the agent and the user on the server's kernels."""

    def __init__(self, directory: KernelDirectory, settings: ExecutorSettings, *,
                 on_agent_msg: Callable[[str], None] | None = None) -> None:
        self.kernels = directory
        self.settings = settings
        self.on_agent_msg = on_agent_msg
        #: warm pool hook: returns a ready kernel id of that kernelspec, or None
        self.take_warm: Callable[[str], str | None] | None = None

    async def resolve(self, request: ExecuteRequest) -> str:
        """The kernel id a request runs on (starting or taking a kernel if needed)."""
        if request.kernel_id:
            return await self.kernels.existing(request.kernel_id)
        if request.notebook_path:
            return await self.kernels.of_notebook(request.notebook_path)
        name = request.kernel_name or self.kernels.default_kernelspec
        self.kernels.check_allowed(name)
        if self.take_warm is not None:
            warm = self.take_warm(name)
            if warm is not None:
                return warm
        return await self.kernels.start(name)

    def timeout_for(self, request: ExecuteRequest) -> float:
        timeout = request.timeout_s or self.settings.default_timeout_s
        return min(float(timeout), self.settings.max_timeout_s)

    async def execute(self, request: ExecuteRequest, *, on_output: OnOutput | None = None,
                      cancel: asyncio.Event | None = None) -> ExecuteResult:
        """Run ``request`` to completion; never raises for kernel-side failures."""
        kernel_id = await self.resolve(request)
        kernel_name = await self.kernels.kernel_name_of(kernel_id)
        with self.kernels.queued(kernel_id) as handle:
            async with handle.lock:
                return await self._run_locked(handle, kernel_name, request, on_output, cancel)

    async def _run_locked(self, handle: KernelHandle, kernel_name: str,
                          request: ExecuteRequest, on_output: OnOutput | None,
                          cancel: asyncio.Event | None) -> ExecuteResult:
        manager = self.kernels.kernel_manager
        kernel_id = handle.kernel_id
        km = manager.get_kernel(kernel_id)
        result = ExecuteResult(status="ok", kernel_id=kernel_id, kernel_name=kernel_name)
        try:
            client = await handle.connected_client(km, self.settings.ready_timeout_s)
        except Exception as exc:  # the kernel died before it answered kernel_info
            handle.reset_client()
            result.status, result.message = "dead", f"kernel not ready: {type(exc).__name__}"
            return result
        collector = OutputCollector(self.settings.max_output_bytes,
                                    self.settings.max_output_messages)
        started = time.monotonic()
        msg_id = client.execute(request.code, store_history=True, stop_on_error=True,
                                allow_stdin=request.stdin is not None)
        if request.source == "agent" and self.on_agent_msg is not None:
            self.on_agent_msg(msg_id)
        run = _Run(msg_id, collector, on_output, request.stdin)
        died = asyncio.Event()
        _watch_restarts(km, died)
        try:
            result.status = await self._wait(client, km, run, request, died, cancel)
        finally:
            _unwatch_restarts(km, died)
        end = time.monotonic()
        if result.status in ("timeout", "interrupted") and not run.done:
            # The interrupt did not take within the grace period: never leave a hung kernel.
            with contextlib.suppress(Exception):
                await ensure_async(manager.restart_kernel(kernel_id))
            result.restarted = True
        if result.restarted or result.status == "dead":
            handle.reset_client()
        if result.restarted:
            # Hold the kernel's queue until it answers again, so the next run starts on a
            # settled kernel rather than racing the restart.
            with contextlib.suppress(Exception):
                await handle.connected_client(manager.get_kernel(kernel_id),
                                              self.settings.ready_timeout_s)
        if run.reply is not None:
            reply_status = run.reply.get("status")
            if result.status == "ok" and reply_status in ("error", "aborted"):
                result.status = "error"
            result.execution_count = run.reply.get("execution_count", run.execution_count)
        else:
            result.execution_count = run.execution_count
        result.outputs = collector.final_outputs()
        result.truncated = collector.truncated
        result.duration_s = round(end - started, 6)
        result.busy_s = round(run.busy_seconds(end), 6)
        if run.input_refused:
            result.message = "input() asked for more lines than stdin provided; interrupted"
        return result

    async def _wait(self, client: Any, km: Any, run: _Run, request: ExecuteRequest,
                    died: asyncio.Event, cancel: asyncio.Event | None) -> str:
        """Pump messages until the run finishes, times out, is cancelled or the kernel dies."""
        deadline = time.monotonic() + self.timeout_for(request)
        status = "ok"
        interrupted_at: float | None = None
        readers = [
            asyncio.ensure_future(self._pump_iopub(client, run)),
            asyncio.ensure_future(self._pump_shell(client, run)),
        ]
        if request.stdin is not None:
            readers.append(asyncio.ensure_future(self._pump_stdin(client, km, run)))
        try:
            while not run.done:
                # Wait first: a short run finishes here without a single liveness probe.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(run.finished.wait(), _POLL_S)
                if run.done:
                    break
                now = time.monotonic()
                if run.idle_lost(now, _IDLE_QUIET_S):
                    run.idle_at = now
                    break
                if died.is_set() or run.kernel_lost or not await ensure_async(km.is_alive()):
                    return "dead"
                if interrupted_at is None:
                    if cancel is not None and cancel.is_set():
                        status, interrupted_at = "interrupted", now
                        await self._interrupt(km)
                    elif now >= deadline:
                        status, interrupted_at = "timeout", now
                        await self._interrupt(km)
                elif now - interrupted_at >= self.settings.interrupt_grace_s:
                    return status  # the interrupt did not take: caller restarts on timeout
                failed = [r for r in readers if r.done() and r.exception() is not None]
                if failed:
                    log.warning("kernel channel failed: %r", failed[0].exception())
                    return "dead"
            return status
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _interrupt(self, km: Any) -> None:
        with contextlib.suppress(Exception):
            await ensure_async(self.kernels.kernel_manager.interrupt_kernel(km.kernel_id))

    @staticmethod
    async def _pump_iopub(client: Any, run: _Run) -> None:
        while run.idle_at is None:
            msg = await _next_msg(client.get_iopub_msg)
            if msg is not None:
                run.on_iopub(msg)

    @staticmethod
    async def _pump_shell(client: Any, run: _Run) -> None:
        while run.reply is None:
            msg = await _next_msg(client.get_shell_msg)
            if msg is not None and msg.get("parent_header", {}).get("msg_id") == run.msg_id:
                run.reply = msg.get("content", {})
                run.reply_at = time.monotonic()
                run._check_done()

    async def _pump_stdin(self, client: Any, km: Any, run: _Run) -> None:
        """Answer ``input()`` from the request's stdin lines; past them, interrupt (refuse)."""
        while not run.done:
            msg = await _next_msg(client.get_stdin_msg)
            if msg is None or msg.get("parent_header", {}).get("msg_id") != run.msg_id:
                continue
            if msg["header"]["msg_type"] != "input_request":
                continue
            if run.stdin:
                _send_input(client, run.stdin.pop(0))
            else:
                run.input_refused = True
                await self._interrupt(km)


async def _next_msg(get: Callable[..., Any]) -> JsonDict | None:
    """The next message of a client channel, or None when a second passed without one.

    Channels signal a timeout with ``queue.Empty`` (ZMQ clients) or their own ``Empty``
    (websocket-backed gateway clients): matched by name so both count."""
    try:
        msg: JsonDict = await get(timeout=1)
    except Exception as exc:
        if type(exc).__name__ == "Empty":
            return None
        raise
    return msg


def _send_input(client: Any, value: str) -> None:
    """``client.input(value)``, with the message naming its channel.

    A client that bridges all channels over one WebSocket (jupyter_server's
    GatewayKernelClient, for remote kernels) sends messages as they are, and the far end routes
    a message without ``channel`` to shell, where the kernel never reads an input_reply. ZMQ
    channels ignore the extra key.
    """
    msg = client.session.msg("input_reply", {"value": value})
    msg["channel"] = "stdin"
    client.stdin_channel.send(msg)


def _watch_restarts(km: Any, died: asyncio.Event) -> None:
    """Know at once when the kernel restarter sees the kernel die (faster than polling)."""
    add = getattr(km, "add_restart_callback", None)
    if add is None:
        return
    callback = died.set
    died._cloudide_callback = callback  # type: ignore[attr-defined]
    for event in ("restart", "dead"):
        with contextlib.suppress(Exception):
            add(callback, event)


def _unwatch_restarts(km: Any, died: asyncio.Event) -> None:
    remove = getattr(km, "remove_restart_callback", None)
    callback = getattr(died, "_cloudide_callback", None)
    if remove is None or callback is None:
        return
    for event in ("restart", "dead"):
        with contextlib.suppress(Exception):
            remove(callback, event)


def parse_request(body: JsonDict, *, source: str) -> ExecuteRequest:
    """An ExecuteRequest from a validated API body (REST or WS)."""
    stdin = body.get("stdin")
    return ExecuteRequest(
        code=body["code"],
        kernel_id=body.get("kernel_id"),
        notebook_path=body.get("notebook_path"),
        kernel_name=body.get("kernel_name"),
        timeout_s=body.get("timeout_s"),
        stdin=tuple(stdin) if stdin is not None else None,
        source=source,
    )
