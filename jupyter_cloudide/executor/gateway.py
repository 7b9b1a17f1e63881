"""Remote kernels on a token-protected Kernel/Enterprise Gateway, for server-side clients.

jupyter_server's ``GatewayKernelClient`` (what ``km.client()`` returns for a remote kernel;
2.21.1 checked) opens the kernel's channels WebSocket without the gateway's auth headers, so a
gateway that requires a token answers 401 and code running in the server (our executor, the
kernel-time watcher) can never reach its kernels. JupyterLab's own kernel WebSockets go through
``GatewayWebSocketConnection``, which sends them. Until that is fixed upstream, configure::

    c.GatewayMappingKernelManager.kernel_manager_class = (
        "jupyter_cloudide.executor.gateway.TokenGatewayKernelManager")
"""

from __future__ import annotations

from threading import Thread
from typing import Any

import websocket
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_core.utils import ensure_async
from jupyter_server.gateway.gateway_client import GatewayClient
from jupyter_server.gateway.managers import GatewayKernelClient, GatewayKernelManager
from jupyter_server.utils import url_path_join
from tornado.escape import url_escape
from traitlets import Type


class TokenGatewayKernelClient(GatewayKernelClient):
    """A GatewayKernelClient whose channels WebSocket carries the gateway's auth headers."""

    async def start_channels(  # type: ignore[override]  # async, as in GatewayKernelClient
        self, shell: bool = True, iopub: bool = True, stdin: bool = True, hb: bool = True,
        control: bool = True,
    ) -> None:
        gateway = GatewayClient.instance()
        ws_url = url_path_join(gateway.ws_url or "", gateway.kernels_endpoint,
                               url_escape(self.kernel_id), "channels")
        headers: Any = gateway.load_connection_args()["headers"]  # type: ignore[no-untyped-call]
        self.channel_socket = websocket.create_connection(
            ws_url, timeout=gateway.KERNEL_LAUNCH_TIMEOUT, enable_multithread=True,
            header=headers)
        started: Any = AsyncKernelClient.start_channels
        await ensure_async(started(self, shell=shell, iopub=iopub, stdin=stdin, hb=hb,
                                   control=control))
        self.response_router = Thread(target=self._route_responses, daemon=True)
        self.response_router.start()


class TokenGatewayKernelManager(GatewayKernelManager):
    """A GatewayKernelManager whose clients authenticate to the gateway."""

    client_factory = Type(TokenGatewayKernelClient, klass=GatewayKernelClient)
