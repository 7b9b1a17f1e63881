"""Which kernel runs the code: targets, the kernelspec allowlist, one client and one queue per
kernel, and IPC transport for the kernels the executor starts.

Everything goes through the server's own kernel manager (``serverapp.kernel_manager``), so
our kernels show in JupyterLab's Running panel, jupyter_server's culler applies to them, and
remote kernels through its GatewayClient work without a code path of their own.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import os
import queue
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from jupyter_core.utils import ensure_async

from ..errors import ForbiddenError, NotFoundError, RateLimitedError

log = logging.getLogger(__name__)

#: async client shutdowns in flight (kept referenced until they finish)
_CLOSING: set[asyncio.Future[Any]] = set()

#: set while the executor starts a kernel, so the manager factory makes it use IPC
_START_WITH_IPC: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "cloudide_start_with_ipc", default=False)


def install_ipc_factory(kernel_manager: Any) -> bool:
    """Wrap the manager's per-kernel factory: kernels the executor starts locally use IPC
    (Unix sockets: no TCP port another local user could reach), the user's own stay as
    configured. Returns False for managers without a local factory (remote gateways)."""
    factory = getattr(kernel_manager, "kernel_manager_factory", None)
    if factory is None or getattr(factory, "_cloudide_ipc", False):
        return factory is not None

    def create(*args: Any, **kwargs: Any) -> Any:
        km = factory(*args, **kwargs)
        if _START_WITH_IPC.get() and hasattr(km, "transport"):
            km.transport = "ipc"
            km.ip = _short_ipc_prefix(str(kwargs.get("connection_file") or km.connection_file))
        return km

    create._cloudide_ipc = True  # type: ignore[attr-defined]
    kernel_manager.kernel_manager_factory = create
    return True


def _short_ipc_prefix(connection_file: str) -> str:
    """Socket path prefix in a private (0700) folder with a short path.

    Unix socket paths are limited to ~107 bytes; the default prefix (next to the connection
    file in the runtime dir) passes that under deep home or test folders.
    """
    folder = os.path.join(tempfile.gettempdir(), f"cloudide-ipc-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    if os.stat(folder).st_uid != os.getuid() or os.stat(folder).st_mode & 0o077:
        raise PermissionError(f"{folder} must be private to this user")
    name = os.path.splitext(os.path.basename(connection_file))[0].removeprefix("kernel-")
    return os.path.join(folder, name[:40])


@contextmanager
def ipc_kernels() -> Iterator[None]:
    token = _START_WITH_IPC.set(True)
    try:
        yield
    finally:
        _START_WITH_IPC.reset(token)


async def wait_for_ready(client: Any, km: Any, timeout: float) -> None:
    """``client.wait_for_ready(timeout)``, asking the kernel's manager whether the kernel lives.

    jupyter_client's version asks ``km._async_is_alive()``, which a remote kernel's manager
    (jupyter_server's GatewayKernelManager) does not override: whenever kernel_info takes more
    than a second (a kernel still restarting), it fails on the assertion of a local
    provisioner. ``km.is_alive()`` is the public method every manager implements.
    """
    deadline = time.monotonic() + timeout
    while True:
        client.kernel_info()
        try:
            reply = await client.get_shell_msg(timeout=1)
        except queue.Empty:
            pass
        else:
            if reply["header"]["msg_type"] == "kernel_info_reply":
                try:  # iopub connected too? (else a run's first outputs could be lost)
                    await client.get_iopub_msg(timeout=0.2)
                except queue.Empty:
                    pass
                else:
                    handle = getattr(client, "_handle_kernel_info_reply", None)
                    if handle is not None:
                        handle(reply)
                    break
        if not await ensure_async(km.is_alive()):
            raise RuntimeError("kernel died before replying to kernel_info")
        if time.monotonic() > deadline:
            raise RuntimeError(f"kernel did not answer kernel_info in {timeout:g} s")
    while True:  # flush iopub
        try:
            await client.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            break


@dataclass
class KernelHandle:
    """Our side of one kernel: the queue (a lock) and a reusable client."""

    kernel_id: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0
    client: Any = None
    #: the kernelspec, once read (it never changes for a kernel id, restarts included)
    kernel_name: str | None = None

    async def connected_client(self, km: Any, ready_timeout: float) -> Any:
        """A started client for the kernel, created once and reused (saves ~ms per run)."""
        if self.client is None:
            client = km.client()
            started = client.start_channels()
            if inspect.isawaitable(started):
                await started
            try:
                await wait_for_ready(client, km, ready_timeout)
            except Exception:
                self._close(client)
                raise
            self.client = client
        return self.client

    def reset_client(self) -> None:
        """Forget the client after a restart or death (its sockets may be stale)."""
        client, self.client = self.client, None
        if client is not None:
            self._close(client)

    @staticmethod
    def _close(client: Any) -> None:
        try:
            stopped = client.stop_channels()
            if inspect.isawaitable(stopped):
                closing = asyncio.ensure_future(stopped)
                _CLOSING.add(closing)
                closing.add_done_callback(_CLOSING.discard)
        except Exception:  # closing a broken client must not mask the real error
            log.debug("closing a kernel client failed", exc_info=True)


class KernelDirectory:
    """Resolves targets to kernel ids and hands out per-kernel handles."""

    def __init__(self, kernel_manager: Any, session_manager: Any, *,
                 allowed_kernelspecs: list[str], default_kernelspec: str,
                 max_queue: int = 16) -> None:
        self.kernel_manager = kernel_manager
        self.session_manager = session_manager
        self.allowed = list(allowed_kernelspecs)
        self.default_kernelspec = default_kernelspec
        self.max_queue = max_queue
        self._handles: dict[str, KernelHandle] = {}
        self.local_ipc = install_ipc_factory(kernel_manager)

    def check_allowed(self, kernel_name: str) -> None:
        """Refuse a kernelspec outside the allowlist, before any process is started."""
        if kernel_name not in self.allowed:
            raise ForbiddenError(
                f"kernel_name: kernelspec {kernel_name[:100]!r} is not allowed "
                f"(allowed: {', '.join(self.allowed) or 'none'})", field="kernel_name")

    async def kernel_name_of(self, kernel_id: str) -> str:
        """The kernelspec the kernel was started from, as the server's kernels API reports it.

        Read from the server's kernel model, not the per-kernel manager: a remote kernel's
        manager (jupyter_server's GatewayKernelManager) keeps ``kernel_name`` at its default
        ("python3") whatever spec the gateway started, which would let any remote kernel past
        the allowlist.
        """
        try:
            km = self.kernel_manager.get_kernel(kernel_id)
        except KeyError:
            raise NotFoundError(f"kernel {kernel_id} not found") from None
        cached = self._handles.get(kernel_id)
        if cached is not None and cached.kernel_name is not None:
            return cached.kernel_name  # a gateway's kernel_model is an HTTP round trip
        model: Any = None
        kernel_model = getattr(self.kernel_manager, "kernel_model", None)
        if kernel_model is not None:
            model = await ensure_async(kernel_model(kernel_id))
        name = model.get("name") if isinstance(model, dict) else None
        resolved = str(name or getattr(km, "kernel_name", "") or "")
        if resolved:
            self.handle(kernel_id).kernel_name = resolved
        return resolved

    async def existing(self, kernel_id: str) -> str:
        """An existing kernel of the server, if its kernelspec is allowed."""
        if kernel_id not in self.kernel_manager.list_kernel_ids():
            raise NotFoundError(f"kernel {kernel_id} not found")
        self.check_allowed(await self.kernel_name_of(kernel_id))
        return kernel_id

    async def of_notebook(self, path: str) -> str:
        """The kernel of the notebook session open at ``path``."""
        wanted = path.strip("/")
        sessions = await ensure_async(self.session_manager.list_sessions())
        for session in sessions:
            if str(session.get("path", "")).strip("/") == wanted and session.get("kernel"):
                return await self.existing(session["kernel"]["id"])
        raise NotFoundError(f"no running kernel for notebook {path[:200]!r}")

    async def start(self, kernel_name: str | None) -> str:
        """Start a new kernel of an allowed kernelspec (IPC transport when local), working in
        the workspace root: without a path, jupyter_server leaves the kernel in the server
        process's own folder, and the agent's code could not import the user's modules."""
        name = kernel_name or self.default_kernelspec
        self.check_allowed(name)
        with ipc_kernels():
            kernel_id = await ensure_async(
                self.kernel_manager.start_kernel(kernel_name=name, path=""))
        return str(kernel_id)

    def handle(self, kernel_id: str) -> KernelHandle:
        handle = self._handles.get(kernel_id)
        if handle is None:
            handle = self._handles[kernel_id] = KernelHandle(kernel_id)
        return handle

    @contextmanager
    def queued(self, kernel_id: str) -> Iterator[KernelHandle]:
        """Count a waiter on the kernel's queue; refuse when the queue is full."""
        handle = self.handle(kernel_id)
        if handle.waiting >= self.max_queue:
            raise RateLimitedError(
                f"kernel {kernel_id} already has {handle.waiting} executions queued",
                retry_after_s=1.0)
        handle.waiting += 1
        try:
            yield handle
        finally:
            handle.waiting -= 1

    def forget_missing(self) -> None:
        """Drop handles of kernels that no longer exist (shut down elsewhere)."""
        alive = set(self.kernel_manager.list_kernel_ids())
        for kernel_id in [k for k in self._handles if k not in alive]:
            self._handles.pop(kernel_id).reset_client()

    def close(self) -> None:
        for handle in self._handles.values():
            handle.reset_client()
        self._handles.clear()
