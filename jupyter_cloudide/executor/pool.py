"""Warm pool: kernels started ahead of time, so a new agent session does not wait ~0.5 s for
a kernel to start. Taking one schedules a refill in the background; pool kernels nobody took
for ``max_idle_s`` are shut down (and the pool refills on the next take)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from jupyter_core.utils import ensure_async

log = logging.getLogger(__name__)

StartKernel = Callable[[str], Awaitable[str]]
Prepare = Callable[[str], Awaitable[None]]


class KernelPool:
    """``size`` ready kernels per kernelspec."""

    def __init__(self, kernel_manager: Any, start: StartKernel, prepare: Prepare, *,
                 sizes: dict[str, int], max_idle_s: float = 3600.0) -> None:
        self.kernel_manager = kernel_manager
        self._start = start
        self._prepare = prepare
        self.sizes = {name: max(0, n) for name, n in sizes.items()}
        self.max_idle_s = max_idle_s
        self._ready: dict[str, list[tuple[str, float]]] = {name: [] for name in self.sizes}
        self._starting: dict[str, int] = dict.fromkeys(self.sizes, 0)
        self._tasks: set[asyncio.Task[None]] = set()
        self.taken = 0
        self.misses = 0

    def fill(self) -> None:
        """Start what is missing for every kernelspec, in the background."""
        for name in self.sizes:
            self._refill(name)

    def take(self, kernel_name: str) -> str | None:
        """A ready kernel of ``kernel_name`` (removed from the pool), or None."""
        ready = self._ready.get(kernel_name)
        alive = set(self.kernel_manager.list_kernel_ids())
        while ready:
            kernel_id, _ = ready.pop(0)
            if kernel_id in alive:
                self.taken += 1
                self._refill(kernel_name)
                return kernel_id
        self.misses += 1
        if kernel_name in self.sizes:
            self._refill(kernel_name)
        return None

    def owns(self, kernel_id: str) -> bool:
        return any(kernel_id == k for ready in self._ready.values() for k, _ in ready)

    def _refill(self, name: str) -> None:
        missing = self.sizes.get(name, 0) - len(self._ready[name]) - self._starting[name]
        for _ in range(max(0, missing)):
            self._starting[name] += 1
            task = asyncio.ensure_future(self._start_one(name))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _start_one(self, name: str) -> None:
        try:
            kernel_id = await self._start(name)
            await self._prepare(kernel_id)  # client connected, kernel_info answered
            self._ready[name].append((kernel_id, time.monotonic()))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("warm pool: starting a %s kernel failed", name, exc_info=True)
        finally:
            self._starting[name] -= 1

    async def cull(self) -> int:
        """Shut down pool kernels idle for longer than ``max_idle_s``; returns how many."""
        now = time.monotonic()
        culled = 0
        for name, ready in self._ready.items():
            keep = []
            for kernel_id, since in ready:
                if now - since > self.max_idle_s:
                    with contextlib.suppress(Exception):
                        await ensure_async(self.kernel_manager.shutdown_kernel(kernel_id))
                    culled += 1
                else:
                    keep.append((kernel_id, since))
            self._ready[name] = keep
        return culled

    def state(self) -> dict[str, Any]:
        return {
            "ready": {name: len(r) for name, r in self._ready.items()},
            "starting": dict(self._starting),
            "taken": self.taken,
            "misses": self.misses,
        }

    async def close(self, *, shutdown: bool = True) -> None:
        """Stop refilling; shut the unused pool kernels down."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if shutdown:
            for ready in self._ready.values():
                for kernel_id, _ in ready:
                    with contextlib.suppress(Exception):
                        await ensure_async(self.kernel_manager.shutdown_kernel(kernel_id))
        for ready in self._ready.values():
            ready.clear()
