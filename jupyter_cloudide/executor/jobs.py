"""Detached executions (long jobs): start now, poll later, cancel any time.

A job keeps its outputs (already capped by the executor) and its result; progress goes to
``on_event`` (the gateway pushes it to the owner's WebSocket sessions). Finished jobs are
kept for ``retention_s`` so a poll after completion still finds them, then forgotten.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import NotFoundError, RateLimitedError
from .execute import ExecuteRequest, ExecuteResult, Executor

JsonDict = dict[str, Any]
OnEvent = Callable[[str, JsonDict], None]


@dataclass
class Job:
    id: str
    owner: str
    request: ExecuteRequest
    state: str = "running"  # running | finished | cancelled
    outputs: list[JsonDict] = field(default_factory=list)
    result: ExecuteResult | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def to_json(self) -> JsonDict:
        return {
            "job_id": self.id,
            "state": self.state,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "outputs_so_far": len(self.outputs),
            "result": self.result.to_json() if self.result else None,
        }


class JobRegistry:
    """Jobs by id, private to their owner."""

    def __init__(self, executor: Executor, *, retention_s: float = 3600.0,
                 max_running_per_user: int = 8) -> None:
        self.executor = executor
        self.retention_s = retention_s
        self.max_running_per_user = max_running_per_user
        self._jobs: dict[str, Job] = {}

    def start(self, owner: str, request: ExecuteRequest, on_event: OnEvent | None) -> Job:
        running = sum(1 for j in self._jobs.values() if j.owner == owner and j.state == "running")
        if running >= self.max_running_per_user:
            raise RateLimitedError(
                f"{running} jobs already running (max {self.max_running_per_user})",
                retry_after_s=5.0)
        self.expire()
        job = Job(id=secrets.token_hex(16), owner=owner, request=request)
        self._jobs[job.id] = job
        job.task = asyncio.ensure_future(self._run(job, on_event))
        return job

    async def _run(self, job: Job, on_event: OnEvent | None) -> None:
        def on_output(output: JsonDict) -> None:
            job.outputs.append(output)
            if on_event is not None:
                on_event(job.owner, {"kind": "job.output", "job_id": job.id, "output": output})

        try:
            job.result = await self.executor.execute(job.request, on_output=on_output,
                                                     cancel=job.cancel)
            job.state = "cancelled" if job.cancel.is_set() else "finished"
        except Exception as exc:  # a refused target (404/403) ends the job with that error
            job.state = "finished"
            job.result = ExecuteResult(status="error", kernel_id=job.request.kernel_id or "",
                                       kernel_name=job.request.kernel_name or "",
                                       message=str(getattr(exc, "message", type(exc).__name__)))
        finally:
            job.finished_at = time.time()
            if on_event is not None:
                on_event(job.owner, {"kind": "job.finished", "job_id": job.id,
                                     "state": job.state,
                                     "result": job.result.to_json() if job.result else None})

    def get(self, job_id: str, owner: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None or job.owner != owner:
            raise NotFoundError("job not found")
        return job

    def cancel(self, job_id: str, owner: str) -> Job:
        job = self.get(job_id, owner)
        if job.state == "running":
            job.cancel.set()
        return job

    def expire(self) -> int:
        now = time.time()
        old = [j.id for j in self._jobs.values()
               if j.finished_at is not None and now - j.finished_at > self.retention_s]
        for job_id in old:
            del self._jobs[job_id]
        return len(old)

    async def close(self) -> None:
        for job in self._jobs.values():
            job.cancel.set()
        tasks = [j.task for j in self._jobs.values() if j.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
