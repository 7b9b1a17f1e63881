"""The kernel-time watcher against a real Jupyter server and real ipykernel kernels.

Plain ``async def`` tests: pytest-jupyter runs them on the server's own loop. Timeouts are
generous and nothing asserts how fast the machine is, only what was billed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from jupyter_cloudide.metering import events as cloudide_events
from jupyter_cloudide.metering.kernel_time import (
    KIND_BUSY,
    KIND_LIFETIME,
    KernelMeter,
    KernelStarted,
    KernelStopped,
)
from jupyter_cloudide.metering.kernel_watch import KernelWatcher
from jupyter_cloudide.storage import MetadataStore, UsageEventIn

TIMEOUT = 90.0


async def until(pred: Callable[[], Any], timeout: float = TIMEOUT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def watching(
    serverapp: Any,
    *,
    scan_interval_s: float = 0.5,
    on_rows: Callable[[list[UsageEventIn]], Any] | None = None,
) -> AsyncIterator[tuple[KernelWatcher, list[UsageEventIn]]]:
    rows: list[UsageEventIn] = []

    async def sink(batch: list[UsageEventIn]) -> None:
        rows.extend(batch)
        if on_rows is not None:
            await on_rows(batch)

    watcher = KernelWatcher(
        serverapp.kernel_manager,
        KernelMeter("tester"),
        owner="tester",
        on_rows=sink,
        event_logger=serverapp.event_logger,
        scan_interval_s=scan_interval_s,
        checkpoint_interval_s=3600,
        liveness_interval_s=0.25,
    )
    await watcher.start()
    try:
        yield watcher, rows
    finally:
        await watcher.stop()


@contextlib.asynccontextmanager
async def kernel(serverapp: Any) -> AsyncIterator[str]:
    km = serverapp.kernel_manager
    kid: str = await km.start_kernel(kernel_name="python3")
    try:
        yield kid
    finally:
        if kid in km:
            await km.shutdown_kernel(kid, now=True)


@contextlib.asynccontextmanager
async def client_of(serverapp: Any, kid: str) -> AsyncIterator[Any]:
    client = serverapp.kernel_manager.get_kernel(kid).client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=TIMEOUT)
        yield client
    finally:
        client.stop_channels()


def send_execute(client: Any, code: str, mark: Callable[[str], None] | None = None) -> str:
    """Send an execute_request, letting ``mark`` register its msg_id before it leaves."""
    content = {
        "code": code,
        "silent": False,
        "store_history": False,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }
    msg = client.session.msg("execute_request", content)
    msg_id: str = msg["header"]["msg_id"]
    if mark is not None:
        mark(msg_id)
    client.shell_channel.send(msg)
    return msg_id


async def wait_idle(client: Any, msg_id: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            msg = await client.get_iopub_msg(timeout=1)
            if (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"
            ):
                return
    raise AssertionError("execution did not finish")


def of(rows: list[UsageEventIn], kid: str, kind: str) -> list[UsageEventIn]:
    return [r for r in rows if r.extra["kernel_id"] == kid and r.kind == kind]


def span(row: UsageEventIn) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(row.extra["start"]), datetime.fromisoformat(row.extra["end"])


def assert_no_overlap(rows: list[UsageEventIn]) -> None:
    spans = sorted(span(r) for r in rows)
    for (_s1, e1), (s2, _e2) in itertools.pairwise(spans):
        assert e1 <= s2, spans


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_busy_time_by_source_events_and_metrics(jp_serverapp: Any) -> None:
    """Kernel found through kernel_actions (the scan is too slow to matter here)."""
    km = jp_serverapp.kernel_manager
    emitted: list[dict[str, Any]] = []

    async def listen(logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        emitted.append(data)

    jp_serverapp.event_logger.add_listener(schema_id=cloudide_events.KERNEL_USAGE, listener=listen)
    user_before = counter("cloudide_kernel_busy_seconds_total", source="user")
    agent_before = counter("cloudide_kernel_busy_seconds_total", source="agent")
    life_before = counter("cloudide_kernel_lifetime_seconds_total")
    try:
        async with watching(jp_serverapp, scan_interval_s=3600) as (watcher, rows):
            wall_start = datetime.now(timezone.utc)
            async with kernel(jp_serverapp) as kid:
                await until(lambda: kid in watcher.watched(), what="kernel_actions discovery")
                meter = watcher.meter
                async with client_of(jp_serverapp, kid) as client:
                    await asyncio.sleep(0.5)  # let the watcher's SUB socket join
                    # user execution
                    msg_id = send_execute(client, "import time; time.sleep(0.6)")
                    await wait_idle(client, msg_id)
                    await until(lambda: not meter.totals(kid).busy_now, what="idle seen")  # type: ignore[union-attr]
                    await watcher.flush()
                    user_rows = [r for r in of(rows, kid, KIND_BUSY) if r.quantity >= 0.5]
                    assert len(user_rows) == 1, of(rows, kid, KIND_BUSY)
                    assert user_rows[0].source == "user"
                    assert user_rows[0].user == "tester"
                    assert user_rows[0].kernelspec == "python3"
                    wall = (datetime.now(timezone.utc) - wall_start).total_seconds()
                    assert user_rows[0].quantity <= wall
                    # agent execution
                    msg_id = send_execute(client, "time.sleep(0.6)", mark=meter.mark_agent)
                    await wait_idle(client, msg_id)
                    await until(lambda: not meter.totals(kid).busy_now, what="idle seen")  # type: ignore[union-attr]
                    await watcher.flush()
                    agent_rows = [r for r in of(rows, kid, KIND_BUSY) if r.source == "agent"]
                    assert len(agent_rows) == 1
                    assert agent_rows[0].quantity >= 0.5
                await km.shutdown_kernel(kid, now=True)
                await until(lambda: kid not in watcher.watched(), what="shutdown seen")
            await watcher.flush()
            wall = (datetime.now(timezone.utc) - wall_start).total_seconds()
            totals = watcher.meter.totals(kid)
            assert totals is not None and not totals.alive
            lifetime = of(rows, kid, KIND_LIFETIME)
            assert len(lifetime) == 1
            assert totals.busy_s <= totals.lifetime_s <= wall
            assert sum(r.quantity for r in of(rows, kid, KIND_BUSY)) == pytest.approx(totals.busy_s)
        await until(lambda: len(emitted) >= len(rows), timeout=10, what="events")
        kinds = {(e["kind"], e["source"]) for e in emitted if e["kernel_id"] == kid}
        assert {("kernel_busy", "user"), ("kernel_busy", "agent"), ("kernel_lifetime", "user")} <= (
            kinds
        )
        assert all(e["user"] == "tester" and e["seconds"] >= 0 for e in emitted)
        assert counter("cloudide_kernel_busy_seconds_total", source="agent") - agent_before >= 0.5
        assert counter("cloudide_kernel_busy_seconds_total", source="user") - user_before >= 0.5
        assert counter("cloudide_kernel_lifetime_seconds_total") - life_before == pytest.approx(
            lifetime[0].quantity
        )
    finally:
        jp_serverapp.event_logger.remove_listener(
            schema_id=cloudide_events.KERNEL_USAGE, listener=listen
        )


async def test_sigkill_mid_execution_closes_busy_at_death(jp_serverapp: Any) -> None:
    """A kernel started before the watcher (found by the scan) is killed while busy."""
    km = jp_serverapp.kernel_manager
    async with kernel(jp_serverapp) as kid, watching(jp_serverapp) as (watcher, rows):
        meter = watcher.meter
        assert kid in watcher.watched()  # the first scan runs inside start()
        async with client_of(jp_serverapp, kid) as client:
            await asyncio.sleep(0.5)
            send_execute(client, "import time; time.sleep(60)", mark=meter.mark_agent)
            await until(lambda: meter.totals(kid).busy_now, what="busy seen")  # type: ignore[union-attr]
            await asyncio.sleep(0.3)
            managed = km.get_kernel(kid)
            pid = getattr(managed.provisioner, "pid", None) or managed.kernel.pid
            killed_at = datetime.now(timezone.utc)
            os.kill(pid, signal.SIGKILL)
            await until(lambda: of(rows, kid, KIND_LIFETIME), what="lifetime closed at death")
            await watcher.flush()
            busy = [r for r in of(rows, kid, KIND_BUSY) if r.source == "agent"]
            assert busy, of(rows, kid, KIND_BUSY)
            # (on a loaded machine the sleep's span may be split by a request of another
            # client, e.g. a kernel_info; the span open at the kill is the last one)
            _b_start, b_end = span(busy[-1])
            # closed by the death, long before the 60 s sleep would have ended
            assert b_end >= killed_at
            assert sum(r.quantity for r in busy) < 55
            life = of(rows, kid, KIND_LIFETIME)
            assert span(life[-1])[1] >= b_end  # the lifetime closes with (or after) the span
            # jupyter_server's restarter brings the kernel back: a new segment opens
            await until(lambda: meter.is_alive(kid), what="autorestart seen")
            assert not meter.totals(kid).busy_now  # type: ignore[union-attr]
            # shutting down while jupyter_client's autorestart is still starting the new
            # process raises inside jupyter_client: wait for the restart to complete
            await until(lambda: getattr(km.get_kernel(kid), "ready", None) is None
                        or km.get_kernel(kid).ready.done(), what="restart complete")
        await km.shutdown_kernel(kid, now=True)
        await until(lambda: kid not in watcher.watched(), what="shutdown seen")
        await watcher.flush()
        lifetime = of(rows, kid, KIND_LIFETIME)
        # before the kill, and after the autorestart (a liveness poll catching the restart
        # half-done may split the second one; never an overlap)
        assert len(lifetime) >= 2
        assert_no_overlap(lifetime)
        assert_no_overlap(of(rows, kid, KIND_BUSY))
        ordered = sorted(span(r) for r in lifetime)
        assert ordered[0][1] <= ordered[1][0]  # the dead gap is not billed
        totals = meter.totals(kid)
        assert totals is not None and totals.busy_s <= totals.lifetime_s


async def test_restart_is_not_billed_twice_and_rows_reach_the_ledger(
    jp_serverapp: Any, tmp_path: Path
) -> None:
    km = jp_serverapp.kernel_manager
    store = MetadataStore(f"sqlite:///{tmp_path / 'ledger.db'}").open()
    try:

        async def to_ledger(batch: list[UsageEventIn]) -> None:
            await store.call("record_usage", batch)

        async with watching(jp_serverapp, on_rows=to_ledger) as (watcher, rows):
            meter = watcher.meter
            async with kernel(jp_serverapp) as kid:
                await until(lambda: kid in watcher.watched(), what="discovery")
                await until(lambda: meter.is_alive(kid), what="started")
                async with client_of(jp_serverapp, kid) as client:
                    await asyncio.sleep(0.5)
                    msg_id = send_execute(client, "import time; time.sleep(0.6)")
                    await wait_idle(client, msg_id)
                await km.restart_kernel(kid)
                await until(lambda: len(of(rows, kid, KIND_LIFETIME)) >= 1, what="restart split")
                async with client_of(jp_serverapp, kid) as client:
                    await asyncio.sleep(0.5)
                    msg_id = send_execute(client, "import time; time.sleep(0.6)")
                    await wait_idle(client, msg_id)
                await until(lambda: not meter.totals(kid).busy_now, what="idle seen")  # type: ignore[union-attr]
                await watcher.checkpoint()
                await km.shutdown_kernel(kid, now=True)
                await until(lambda: kid not in watcher.watched(), what="shutdown seen")
        # stop() flushed every row through on_rows
        lifetime = of(rows, kid, KIND_LIFETIME)
        assert len(lifetime) >= 3  # before restart, up to the checkpoint, after it
        assert_no_overlap(lifetime)
        spans = sorted(span(r) for r in lifetime)
        first_start, last_end = spans[0][0], spans[-1][1]
        # A restart closes one segment and opens the next at the same instant; if the liveness
        # poll catches the process down mid-restart, that short dead gap is left unbilled.
        gaps = [(b[0] - a[1]).total_seconds() for a, b in itertools.pairwise(spans)]
        assert all(0 <= g < 30 for g in gaps), gaps
        billed = sum(r.quantity for r in lifetime)
        assert billed == pytest.approx((last_end - first_start).total_seconds() - sum(gaps))
        busy = of(rows, kid, KIND_BUSY)
        assert sum(r.quantity for r in busy) >= 1.0  # two 0.6 s sleeps, with slack for jitter
        totals = await store.call("usage_totals", "tester")
        by_kind = totals["by_kind"]
        assert by_kind["kernel_lifetime"]["quantity"] == pytest.approx(
            sum(r.quantity for r in rows if r.kind == KIND_LIFETIME)
        )
        assert by_kind["kernel_busy"]["quantity"] == pytest.approx(
            sum(r.quantity for r in rows if r.kind == KIND_BUSY)
        )
        assert by_kind["kernel_busy"]["events"] == len([r for r in rows if r.kind == KIND_BUSY])
        # replaying the rows is absorbed by the ledger
        assert await store.call("record_usage", rows) == 0
    finally:
        store.close()


async def test_on_rows_failure_is_retried(jp_serverapp: Any) -> None:
    """A failing sink (ledger down) gets the same rows again; nothing is lost."""
    calls: list[int] = []
    delivered: list[UsageEventIn] = []

    async def flaky(batch: list[UsageEventIn]) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("database is down")
        delivered.extend(batch)

    meter = KernelMeter("tester")
    watcher = KernelWatcher(
        jp_serverapp.kernel_manager, meter, owner="tester", on_rows=flaky, scan_interval_s=3600
    )
    await watcher.start()
    try:
        now = datetime.now(timezone.utc)
        meter.apply(KernelStarted("s", now - timedelta(seconds=1), "fake"))
        watcher._publish(meter.apply(KernelStopped("x", now, "fake")))
        await asyncio.wait_for(watcher.flush(), timeout=TIMEOUT)
    finally:
        await watcher.stop()
    assert len(calls) == 2 and len(delivered) == 1
    assert delivered[0].kind == KIND_LIFETIME
