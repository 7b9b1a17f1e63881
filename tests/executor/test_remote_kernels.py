"""The executor against a real Jupyter Kernel Gateway: the server's ``GatewayClient.url`` points
at a gateway the suite starts on loopback, so every kernel is remote (started, run, interrupted
and shut down through the gateway's REST and WebSocket API)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from cloudide_testing import MultiUserIdentity, auth
from execute_client import check_streamed_run, ok, run, text_of, ws_streaming_run
from jupyter_server.gateway.gateway_client import GatewayClient
from services import KernelGateway
from tornado.httpclient import AsyncHTTPClient

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def server_config() -> dict[str, Any]:
    return {"identity_provider_class": MultiUserIdentity}


@pytest.fixture
def cloudide_config() -> dict[str, Any]:
    return {"interrupt_grace_seconds": 5.0, "execute_timeout": 30.0}


@pytest.fixture
def gateway_client_reset() -> Iterator[None]:
    """GatewayClient is a process-wide singleton: start from and leave behind a fresh one, so
    no other test's server picks up our gateway."""
    GatewayClient.clear_instance()
    yield
    GatewayClient.clear_instance()


@pytest.fixture
def jp_server_config(jp_server_config: dict[str, Any], kernel_gateway: KernelGateway,
                     gateway_client_reset: None) -> dict[str, Any]:
    """The suite's server config (tests/conftest.py), plus the gateway."""
    config = dict(jp_server_config)
    config["GatewayClient"] = {"url": kernel_gateway.url,
                               "auth_token": kernel_gateway.auth_token}
    config["GatewayMappingKernelManager"] = {
        "kernel_manager_class": "jupyter_cloudide.executor.gateway.TokenGatewayKernelManager"}
    return config


@pytest.fixture(autouse=True)
def remote_kernels_shut_down(jp_serverapp: Any, jp_asyncio_loop: Any) -> Iterator[None]:
    """Shut this test's kernels down on the gateway while the server still knows its address
    (pytest-jupyter's own cleanup runs after ours, when the GatewayClient is already reset)."""
    yield
    jp_asyncio_loop.run_until_complete(jp_serverapp.kernel_manager.shutdown_all())
    GatewayClient.clear_instance()





async def gateway_kernels(gateway: KernelGateway) -> dict[str, str]:
    """The gateway's own view: kernel id -> kernelspec name."""
    response = await AsyncHTTPClient().fetch(f"{gateway.url}/api/kernels",
                                             headers=gateway.headers())
    return {k["id"]: k["name"] for k in json.loads(response.body)}


def parent_pid(pid: int) -> int | None:
    """The parent of a local process (Linux ``/proc``), None where that is not available."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return int(next(line for line in status if line.startswith("PPid:")).split()[1])
    except OSError:
        return None


@pytest.fixture
def kernel_id(cloudide: Any, jp_asyncio_loop: Any) -> str:
    """A kernel on the gateway, started through the executor (shut down after the test)."""
    service = cloudide.executor_service()
    kid: str = jp_asyncio_loop.run_until_complete(service.kernels.start("python3"))
    return kid


# -- where the kernel runs ---------------------------------------------------------------------


async def test_new_kernel_runs_on_the_gateway(cloudide: Any, jp_fetch: Any, jp_serverapp: Any,
                                              kernel_gateway: KernelGateway) -> None:
    assert type(jp_serverapp.kernel_manager).__name__ == "GatewayMappingKernelManager"
    result = await ok(jp_fetch, {"code": "import os\nprint('hi')\nos.getpid()"})
    assert result["status"] == "ok", result
    assert result["kernel_name"] == "python3"
    assert text_of(result) == "hi\n"
    kid = result["kernel_id"]
    assert (await gateway_kernels(kernel_gateway)).get(kid) == "python3"
    pid = int(result["outputs"][-1]["data"]["text/plain"])
    assert pid != os.getpid()
    assert parent_pid(pid) in (kernel_gateway.pid, None)  # the gateway spawned it, not us
    km = jp_serverapp.kernel_manager.get_kernel(kid)
    assert getattr(km, "provisioner", None) is None  # nothing launched locally
    again = await ok(jp_fetch, {"code": "os.getpid()", "kernel_id": kid})
    assert again["outputs"][-1]["data"]["text/plain"] == str(pid)  # same remote process


# -- outputs -----------------------------------------------------------------------------------


async def test_outputs_errors_and_state_on_an_existing_kernel(jp_fetch: Any,
                                                              kernel_id: str) -> None:
    code = (
        "import base64, sys\n"
        "from IPython.display import display, Image\n"
        "print('out'); print('err', file=sys.stderr)\n"
        "png = base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
        "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==')\n"
        "display(Image(data=png, format='png'))\n"
        "x = 41\n"
        "x + 1\n"
    )
    result = await ok(jp_fetch, {"code": code, "kernel_id": kernel_id})
    assert result["status"] == "ok", result
    assert result["kernel_id"] == kernel_id
    assert text_of(result) == "out\n"
    assert text_of(result, "stderr") == "err\n"
    images = [o for o in result["outputs"] if "image/png" in o.get("data", {})]
    assert images and images[0]["output_type"] == "display_data"
    final = result["outputs"][-1]
    assert final["output_type"] == "execute_result"
    assert final["data"]["text/plain"] == "42"
    assert isinstance(result["execution_count"], int)
    assert result["duration_s"] >= result["busy_s"] > 0

    error = await ok(jp_fetch, {"code": "1/0", "kernel_id": kernel_id})
    assert error["status"] == "error"
    assert error["outputs"][-1]["output_type"] == "error"
    assert error["outputs"][-1]["ename"] == "ZeroDivisionError"
    assert error["execution_count"] == result["execution_count"] + 1

    after = await ok(jp_fetch, {"code": "x", "kernel_id": kernel_id})
    assert after["outputs"][-1]["data"]["text/plain"] == "41"  # state kept between runs


async def test_input_answered_from_stdin(jp_fetch: Any, kernel_id: str) -> None:
    result = await ok(jp_fetch, {"code": "a = input('a? '); b = input(); print(a + b)",
                                 "kernel_id": kernel_id, "stdin": ["x", "y"],
                                 "timeout_s": 20})
    assert result["status"] == "ok", result
    assert text_of(result).endswith("xy\n")


# -- safety ------------------------------------------------------------------------------------


async def test_infinite_loop_times_out_and_is_interrupted_through_the_gateway(
        jp_fetch: Any, kernel_id: str) -> None:
    result = await ok(jp_fetch, {"code": "x = 1\nwhile True: pass", "kernel_id": kernel_id,
                                 "timeout_s": 2})
    assert result["status"] == "timeout", result
    assert result["restarted"] is False  # the gateway's interrupt took
    assert result["outputs"][-1]["ename"] == "KeyboardInterrupt"
    after = await ok(jp_fetch, {"code": "x + 1", "kernel_id": kernel_id})
    assert after["outputs"][-1]["data"]["text/plain"] == "2"  # same kernel, state kept


async def test_interrupt_that_does_not_take_restarts_through_the_gateway(
        jp_fetch: Any, kernel_id: str, kernel_gateway: KernelGateway) -> None:
    code = ("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "while True: time.sleep(0.01)")
    result = await ok(jp_fetch, {"code": code, "kernel_id": kernel_id, "timeout_s": 3})
    assert result["status"] == "timeout"
    assert result["restarted"] is True
    for _ in range(4):  # a late restart announcement may end one run; see the local twin
        after = await ok(jp_fetch, {"code": "'signal' in dir()", "kernel_id": kernel_id,
                                    "timeout_s": 15})
        if after["status"] == "ok":
            break
    assert after["status"] == "ok", after
    assert after["outputs"][-1]["data"]["text/plain"] == "False"  # a fresh kernel process
    assert kernel_id in await gateway_kernels(kernel_gateway)  # restarted, same id


async def test_remote_kernel_killed_mid_execution_is_dead(jp_fetch: Any,
                                                          kernel_id: str) -> None:
    """The gateway's restarter replaces a dead kernel (its is_alive stays true); the death is
    announced on the kernel WebSocket, and the run ends there, not at its timeout."""
    pid = int((await ok(jp_fetch, {"code": "import os; os.getpid()", "kernel_id": kernel_id}))
              ["outputs"][-1]["data"]["text/plain"])

    async def kill_soon() -> None:
        await asyncio.sleep(1.0)
        os.kill(pid, signal.SIGKILL)

    killer = asyncio.ensure_future(kill_soon())
    result = await ok(jp_fetch, {"code": "import time\ntime.sleep(60)", "kernel_id": kernel_id,
                                 "timeout_s": 30})
    await killer
    assert result["status"] == "dead", result  # ended at death, not at the 30 s timeout
    assert result["busy_s"] <= result["duration_s"]
    after = await ok(jp_fetch, {"code": "import os; os.getpid()", "kernel_id": kernel_id})
    assert after["status"] == "ok", after  # the gateway restarted it under the same id
    assert after["outputs"][-1]["data"]["text/plain"] != str(pid)


async def test_kernelspec_outside_the_allowlist_is_refused(
        cloudide: Any, jp_fetch: Any, jp_serverapp: Any,
        kernel_gateway: KernelGateway) -> None:
    before = await gateway_kernels(kernel_gateway)
    response = await run(jp_fetch, {"code": "1", "kernel_name": "other-python"})
    assert response.code == 403
    assert json.loads(response.body)["field"] == "kernel_name"
    assert await gateway_kernels(kernel_gateway) == before  # nothing started remotely

    # A kernel of that spec started by the user (JupyterLab's way) is not ours to run code on.
    started = await jp_fetch("api", "kernels", method="POST", headers=auth("alice"),
                             body=json.dumps({"name": "other-python"}))
    other = json.loads(started.body)["id"]
    assert (await gateway_kernels(kernel_gateway))[other] == "other-python"
    refused = await run(jp_fetch, {"code": "1", "kernel_id": other})
    assert refused.code == 403, refused.body
    assert json.loads(refused.body)["field"] == "kernel_name"


# -- websocket ---------------------------------------------------------------------------------


async def test_ws_execute_streams_outputs_then_result(jp_fetch: Any, jp_http_port: int,
                                                      jp_base_url: str,
                                                      kernel_id: str) -> None:
    events, response, refused = await ws_streaming_run(jp_http_port, jp_base_url, kernel_id,
                                                       refused_kernel_name="other-python")
    check_streamed_run(events, response, refused)
    assert response["payload"]["kernel_id"] == kernel_id

