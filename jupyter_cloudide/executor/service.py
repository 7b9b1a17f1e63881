"""The executor layer as one object the app wires and the gateway calls."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .execute import ExecuteRequest, ExecuteResult, Executor, ExecutorSettings, OnOutput
from .jobs import Job, JobRegistry, OnEvent
from .kernels import KernelDirectory
from .pool import KernelPool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecutorConfig:
    """Everything the app's traitlets decide about execution."""

    allowed_kernelspecs: tuple[str, ...] = ("python3",)
    default_kernelspec: str = "python3"
    settings: ExecutorSettings = field(default_factory=ExecutorSettings)
    warm_pool_size: int = 1
    warm_pool_max_idle_s: float = 3600.0
    job_retention_s: float = 3600.0
    max_queue_per_kernel: int = 16


class ExecutorService:
    """Kernel directory + executor + warm pool + jobs, with one lifecycle."""

    def __init__(self, kernel_manager: Any, session_manager: Any, config: ExecutorConfig, *,
                 on_agent_msg: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.kernels = KernelDirectory(
            kernel_manager, session_manager,
            allowed_kernelspecs=list(config.allowed_kernelspecs),
            default_kernelspec=config.default_kernelspec,
            max_queue=config.max_queue_per_kernel,
        )
        self.executor = Executor(self.kernels, config.settings, on_agent_msg=on_agent_msg)
        self.pool = KernelPool(
            kernel_manager, self.kernels.start, self._prepare,
            sizes=dict.fromkeys(config.allowed_kernelspecs, config.warm_pool_size),
            max_idle_s=config.warm_pool_max_idle_s,
        )
        self.executor.take_warm = self.pool.take
        self.jobs = JobRegistry(self.executor, retention_s=config.job_retention_s)

    async def _prepare(self, kernel_id: str) -> None:
        """Connect our client to a pool kernel now, so its first execution does not."""
        km = self.kernels.kernel_manager.get_kernel(kernel_id)
        await self.kernels.handle(kernel_id).connected_client(
            km, self.config.settings.ready_timeout_s)

    def start(self) -> None:
        self.pool.fill()

    async def execute(self, request: ExecuteRequest, *,
                      on_output: OnOutput | None = None) -> ExecuteResult:
        return await self.executor.execute(request, on_output=on_output)

    def start_job(self, owner: str, request: ExecuteRequest, on_event: OnEvent | None) -> Job:
        return self.jobs.start(owner, request, on_event)

    async def housekeeping(self) -> None:
        """Periodic: cull idle pool kernels, forget finished jobs and vanished kernels."""
        await self.pool.cull()
        self.jobs.expire()
        self.kernels.forget_missing()

    def state(self) -> dict[str, Any]:
        return {"state": "ok", "allowed": list(self.config.allowed_kernelspecs),
                "local_ipc": self.kernels.local_ipc, "pool": self.pool.state()}

    async def close(self) -> None:
        await self.jobs.close()
        await self.pool.close()
        self.kernels.close()
