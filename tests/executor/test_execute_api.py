"""The execute API on a real server with real ipykernel kernels (REST, WS, jobs, pool)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

import pytest
from cloudide_testing import MultiUserIdentity, auth
from execute_client import check_streamed_run, ok, run, text_of, ws_streaming_run

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def server_config() -> dict[str, Any]:
    return {"identity_provider_class": MultiUserIdentity}


@pytest.fixture
def cloudide_config() -> dict[str, Any]:
    return {"interrupt_grace_seconds": 3.0, "execute_timeout": 30.0}





@pytest.fixture
def kernel_id(cloudide: Any, jp_serverapp: Any, jp_asyncio_loop: Any) -> str:
    """A kernel started through the executor (IPC transport), shut down after the test."""
    service = cloudide.executor_service()
    kid: str = jp_asyncio_loop.run_until_complete(service.kernels.start("python3"))
    return kid


# -- outputs ------------------------------------------------------------------------------------


async def test_rich_outputs_and_result(jp_fetch: Any, kernel_id: str) -> None:
    code = (
        "import base64, sys\n"
        "from IPython.display import display, Image, HTML\n"
        "print('out'); print('err', file=sys.stderr)\n"
        "png = base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
        "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==')\n"
        "display(Image(data=png, format='png'))\n"
        "display(HTML('<b>x</b>'))\n"
        "40 + 2\n"
    )
    result = await ok(jp_fetch, {"code": code, "kernel_id": kernel_id})
    assert result["status"] == "ok"
    assert result["kernel_id"] == kernel_id
    assert text_of(result) == "out\n"
    assert text_of(result, "stderr") == "err\n"
    kinds = [o["output_type"] for o in result["outputs"]]
    assert kinds.count("display_data") == 2
    images = [o for o in result["outputs"] if "image/png" in o.get("data", {})]
    assert images and images[0]["data"]["image/png"].startswith("iVBOR")
    final = result["outputs"][-1]
    assert final["output_type"] == "execute_result"
    assert final["data"]["text/plain"] == "42"
    assert isinstance(result["execution_count"], int)
    assert result["duration_s"] >= result["busy_s"] > 0


async def test_error_result(jp_fetch: Any, kernel_id: str) -> None:
    result = await ok(jp_fetch, {"code": "1/0", "kernel_id": kernel_id})
    assert result["status"] == "error"
    error = result["outputs"][-1]
    assert error["output_type"] == "error" and error["ename"] == "ZeroDivisionError"


async def test_new_kernel_uses_ipc_and_default_spec(cloudide: Any, jp_fetch: Any,
                                                    jp_serverapp: Any) -> None:
    result = await ok(jp_fetch, {"code": "import os; os.getpid()"})
    assert result["status"] == "ok" and result["kernel_name"] == "python3"
    km = jp_serverapp.kernel_manager.get_kernel(result["kernel_id"])
    assert km.transport == "ipc"  # no TCP port for other local users to reach


async def test_kernel_outside_allowlist_is_refused_without_a_process(
        cloudide: Any, jp_fetch: Any, jp_serverapp: Any) -> None:
    before = set(jp_serverapp.kernel_manager.list_kernel_ids())
    response = await run(jp_fetch, {"code": "1", "kernel_name": "bash"})
    assert response.code == 403
    assert json.loads(response.body)["field"] == "kernel_name"
    assert set(jp_serverapp.kernel_manager.list_kernel_ids()) == before


async def test_unknown_kernel_and_bad_targets(cloudide: Any, jp_fetch: Any) -> None:
    missing = await run(jp_fetch, {"code": "1",
                                   "kernel_id": "00000000-0000-4000-8000-000000000000"})
    assert missing.code == 404
    both = await run(jp_fetch, {"code": "1", "kernel_name": "python3",
                                "kernel_id": "00000000-0000-4000-8000-000000000000"})
    assert both.code == 400
    bad = await run(jp_fetch, {"code": "1", "kernel_name": "../../bin/sh"})
    assert bad.code == 400 and json.loads(bad.body)["field"] == "kernel_name"
    huge_timeout = await run(jp_fetch, {"code": "1", "timeout_s": 10**9})
    assert huge_timeout.code == 400 and json.loads(huge_timeout.body)["field"] == "timeout_s"


# -- safety ------------------------------------------------------------------------------------


async def test_infinite_loop_times_out_and_kernel_survives(jp_fetch: Any, kernel_id: str) -> None:
    result = await ok(jp_fetch, {"code": "x = 1\nwhile True: pass", "kernel_id": kernel_id,
                                 "timeout_s": 2})
    assert result["status"] == "timeout"
    assert result["restarted"] is False  # the interrupt took
    assert result["outputs"][-1]["ename"] == "KeyboardInterrupt"
    after = await ok(jp_fetch, {"code": "x + 1", "kernel_id": kernel_id})
    assert after["outputs"][-1]["data"]["text/plain"] == "2"  # same kernel, state kept


async def test_interrupt_that_does_not_take_restarts(jp_fetch: Any, kernel_id: str) -> None:
    # SIG_IGN must be set in the same cell (ipykernel re-installs its SIGINT handler before
    # each execution), and reached before the timeout: 3 s leaves room on a loaded machine.
    code = ("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "while True: time.sleep(0.01)")
    result = await ok(jp_fetch, {"code": code, "kernel_id": kernel_id, "timeout_s": 3})
    assert result["status"] == "timeout"
    assert result["restarted"] is True
    # jupyter_client's own restarter can catch the process down mid-restart and restart it
    # again under the next run (reported honestly as dead or timeout, and recovered by the
    # executor); the guarantee is that the kernel is usable again within a few runs.
    for _ in range(4):
        after = await ok(jp_fetch, {"code": "'signal' in dir()", "kernel_id": kernel_id,
                                    "timeout_s": 15})
        if after["status"] == "ok":
            break
    assert after["status"] == "ok"
    assert after["outputs"][-1]["data"]["text/plain"] == "False"  # a fresh kernel


async def test_sigkill_mid_execution_is_dead(jp_fetch: Any, kernel_id: str,
                                             jp_serverapp: Any) -> None:
    pid = jp_serverapp.kernel_manager.get_kernel(kernel_id).provisioner.pid

    async def kill_soon() -> None:
        await asyncio.sleep(1.0)
        os.kill(pid, signal.SIGKILL)

    killer = asyncio.ensure_future(kill_soon())
    result = await ok(jp_fetch, {"code": "import time\ntime.sleep(60)", "kernel_id": kernel_id})
    await killer
    assert result["status"] == "dead"  # ended at death (a 30 s timeout would say "timeout")
    assert result["busy_s"] <= result["duration_s"]


async def test_fifty_megabyte_print_is_capped(cloudide: Any, jp_fetch: Any,
                                              kernel_id: str) -> None:
    result = await ok(jp_fetch, {"code": "print('x' * 50_000_000)", "kernel_id": kernel_id})
    assert result["status"] == "ok"
    assert result["truncated"] is True
    kept = text_of(result)
    assert len(kept.encode()) <= cloudide.output_max_bytes
    marker = result["outputs"][-1]
    assert marker["name"] == "stderr" and "output truncated" in marker["text"]


async def test_output_flood_is_capped_by_message_count(cloudide: Any, jp_fetch: Any,
                                                       kernel_id: str) -> None:
    code = ("import sys\nfor i in range(20000):\n"
            "    print(i); sys.stdout.flush()\n")
    result = await ok(jp_fetch, {"code": code, "kernel_id": kernel_id})
    assert result["status"] == "ok"
    assert result["truncated"] is True
    assert "output truncated" in result["outputs"][-1]["text"]
    assert text_of(result).startswith("0\n1\n2\n")
    assert len(json.dumps(result)) < 2 * cloudide.output_max_bytes


async def test_input_answered_from_stdin(jp_fetch: Any, kernel_id: str) -> None:
    result = await ok(jp_fetch, {"code": "a = input('a? '); b = input(); print(a + b)",
                                 "kernel_id": kernel_id, "stdin": ["x", "y"]})
    assert result["status"] == "ok"
    assert text_of(result).endswith("xy\n")


async def test_input_without_stdin_is_refused_not_hung(jp_fetch: Any, kernel_id: str) -> None:
    result = await ok(jp_fetch, {"code": "input('name? ')", "kernel_id": kernel_id,
                                 "timeout_s": 20})
    assert result["status"] == "error"
    assert result["outputs"][-1]["ename"] == "StdinNotImplementedError"
    more = await ok(jp_fetch, {"code": "a = input(); b = input()", "kernel_id": kernel_id,
                               "stdin": ["only one"], "timeout_s": 20})
    assert more["status"] == "error"
    assert "more lines than stdin provided" in more["message"]


async def test_executions_on_one_kernel_are_queued_not_interleaved(
        jp_fetch: Any, kernel_id: str) -> None:
    code = "import time\nprint('{n}-start'); time.sleep(0.4); print('{n}-end')"
    results = await asyncio.gather(*(
        ok(jp_fetch, {"code": code.format(n=n), "kernel_id": kernel_id}) for n in range(3)))
    counts = sorted(r["execution_count"] for r in results)
    assert counts == list(range(counts[0], counts[0] + 3))
    for n, result in enumerate(results):
        assert text_of(result) == f"{n}-start\n{n}-end\n"  # nothing of another run


# -- other targets -----------------------------------------------------------------------------


async def test_notebook_session_target(cloudide: Any, jp_fetch: Any,
                                       jp_serverapp: Any) -> None:
    session = await jp_fetch("api", "sessions", method="POST", headers=auth("alice"),
                             body=json.dumps({"path": "work/analysis.ipynb", "type": "notebook",
                                              "name": "analysis.ipynb",
                                              "kernel": {"name": "python3"}}))
    kid = json.loads(session.body)["kernel"]["id"]
    await ok(jp_fetch, {"code": "marker = 'from-notebook'", "kernel_id": kid})
    result = await ok(jp_fetch, {"code": "marker", "notebook_path": "/work/analysis.ipynb"})
    assert result["kernel_id"] == kid
    assert result["outputs"][-1]["data"]["text/plain"] == "'from-notebook'"
    missing = await run(jp_fetch, {"code": "1", "notebook_path": "nope.ipynb"})
    assert missing.code == 404


# -- websocket ---------------------------------------------------------------------------------


async def test_ws_execute_streams_outputs_then_result(jp_fetch: Any, jp_http_port: int,
                                                      jp_base_url: str,
                                                      kernel_id: str) -> None:
    events, response, refused = await ws_streaming_run(jp_http_port, jp_base_url, kernel_id,
                                                       refused_kernel_name="bash")
    check_streamed_run(events, response, refused)
    assert response["payload"]["kernel_id"] == kernel_id


# -- jobs --------------------------------------------------------------------------------------


async def test_detached_job_poll_and_cancel(jp_fetch: Any, kernel_id: str) -> None:
    started = await run(jp_fetch, {"code": "import time\nprint('tick', flush=True)\n"
                                           "time.sleep(60)", "kernel_id": kernel_id,
                                   "detach": True})
    assert started.code == 202
    job = json.loads(started.body)
    assert job["state"] == "running" and len(job["job_id"]) == 32
    path = ("cloudide", "api", "execute", job["job_id"])
    for _ in range(100):
        polled = json.loads((await jp_fetch(*path, headers=auth("alice"))).body)
        if polled["outputs_so_far"] >= 1:
            break
        await asyncio.sleep(0.1)
    assert polled["state"] == "running" and polled["outputs_so_far"] >= 1
    theirs = await jp_fetch(*path, headers=auth("bob"), raise_error=False)
    assert theirs.code == 404  # jobs are private
    await jp_fetch(*path, method="DELETE", headers=auth("alice"))
    for _ in range(200):
        polled = json.loads((await jp_fetch(*path, headers=auth("alice"))).body)
        if polled["state"] != "running":
            break
        await asyncio.sleep(0.1)
    assert polled["state"] == "cancelled"
    assert polled["result"]["status"] == "interrupted"
    assert polled["result"]["outputs"][0]["text"] == "tick\n"


async def test_finished_job_result(jp_fetch: Any, kernel_id: str) -> None:
    started = json.loads((await run(jp_fetch, {"code": "6 * 7", "kernel_id": kernel_id,
                                               "detach": True})).body)
    path = ("cloudide", "api", "execute", started["job_id"])
    for _ in range(200):
        polled = json.loads((await jp_fetch(*path, headers=auth("alice"))).body)
        if polled["state"] == "finished":
            break
        await asyncio.sleep(0.05)
    assert polled["result"]["outputs"][-1]["data"]["text/plain"] == "42"


# -- warm pool ---------------------------------------------------------------------------------


class TestWarmPool:
    @pytest.fixture
    def cloudide_config(self) -> dict[str, Any]:
        return {"warm_pool_size": 1}

    async def test_first_execution_takes_a_pool_kernel_and_refills(
            self, cloudide: Any, jp_fetch: Any, jp_serverapp: Any) -> None:
        pool = cloudide.executor_service().pool
        for _ in range(300):
            if pool.state()["ready"]["python3"] == 1:
                break
            await asyncio.sleep(0.1)
        assert pool.state()["ready"]["python3"] == 1
        (warm_id, _), = pool._ready["python3"]
        result = await ok(jp_fetch, {"code": "1 + 1"})
        assert result["kernel_id"] == warm_id
        assert pool.state()["taken"] == 1
        for _ in range(300):  # refilled in the background
            if pool.state()["ready"]["python3"] == 1:
                break
            await asyncio.sleep(0.1)
        assert pool.state()["ready"]["python3"] == 1
        assert pool._ready["python3"][0][0] != warm_id
        health = json.loads((await jp_fetch("cloudide", "api", "health",
                                            headers=auth("alice"))).body)
        assert health["components"]["executor"]["pool"]["taken"] == 1

    async def test_idle_pool_kernels_are_culled(self, cloudide: Any, jp_serverapp: Any) -> None:
        pool = cloudide.executor_service().pool
        for _ in range(300):
            if pool.state()["ready"]["python3"] == 1:
                break
            await asyncio.sleep(0.1)
        (warm_id, _), = pool._ready["python3"]
        pool.max_idle_s = 0.0
        assert await pool.cull() == 1
        assert warm_id not in jp_serverapp.kernel_manager.list_kernel_ids()


# -- limits ------------------------------------------------------------------------------------


class TestExecuteRateLimit:
    @pytest.fixture
    def cloudide_config(self) -> dict[str, Any]:
        return {"rate_limits": {"execute": {"requests_per_minute": 2}}}

    async def test_execute_class_is_limited(self, jp_fetch: Any, kernel_id: str) -> None:
        codes = [(await run(jp_fetch, {"code": "1", "kernel_id": kernel_id})).code
                 for _ in range(3)]
        assert codes == [200, 200, 429]
        assert (await run(jp_fetch, {"code": "1", "kernel_id": kernel_id},
                          user="bob")).code == 200


# -- kernel-time metering ----------------------------------------------------------------------


async def test_kernel_time_of_api_executions_reaches_the_ledger(
        cloudide: Any, jp_fetch: Any, kernel_id: str) -> None:
    result = await ok(jp_fetch, {"code": "import time\ntime.sleep(0.6)", "kernel_id": kernel_id})
    assert result["busy_s"] >= 0.5
    store = cloudide.store
    busy = 0.0
    for _ in range(150):
        totals = await store.call(store.usage_totals, cloudide.usage_owner)
        busy = totals["by_kind"].get("kernel_busy", {}).get("quantity", 0.0)
        if busy >= 0.5:
            break
        await asyncio.sleep(0.1)
    assert busy >= 0.5
    assert busy <= result["duration_s"] + 5  # nothing billed twice
    metrics = (await jp_fetch("metrics", headers=auth("alice"))).body.decode()
    assert 'cloudide_kernel_busy_seconds_total{source="user"}' in metrics
    watcher = cloudide.kernel_watcher
    await watcher.checkpoint()  # what a periodic checkpoint or shutdown writes
    await watcher.flush()  # hands the rows to the ledger, which writes them in batches
    await cloudide.ledger.flush()
    totals = await store.call(store.usage_totals, cloudide.usage_owner)
    lifetime = totals["by_kind"]["kernel_lifetime"]["quantity"]
    assert lifetime >= busy  # busy time never exceeds the kernel's wall time
