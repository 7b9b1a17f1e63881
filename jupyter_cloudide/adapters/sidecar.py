"""Sidecar mode: one adapter served as a local OpenAI-compatible HTTP server, without Jupyter,
so that tools outside Jupyter (an IDE plugin, the ``openai`` SDK, curl) can use a model service
that speaks its own protocol::

    jupyter cloudide serve-adapter ws-oauth2 --port 8765 --config corp.json \\
        --option client_secret_env=CORP_CLIENT_SECRET [--api-key-env SIDECAR_KEY]

Routes: ``POST /v1/chat/completions`` (streaming SSE and not, tools,
``stream_options.include_usage``) and ``GET /v1/models``, per ../shared/COMPAT.md. The OpenAI
wire format (request parsing, chunk and completion encoding, error bodies) is
:mod:`jupyter_cloudide.agent.wire.openai`, the same code as the server's ``cloudide/v1``; the
body is validated against that route's schema in api.yaml when the spec has it. The adapter
runs behind the same :class:`~.registry.AdapterProvider` as inside the server (timeouts,
estimated usage, error kinds). Binding to 127.0.0.1 by default; ``--api-key-env`` names an
environment variable whose value local clients must send as ``Authorization: Bearer``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hmac
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncGenerator, Sequence
from http.client import responses
from typing import Any

from jupyter_core.application import JupyterApp
from tornado import httpserver, netutil, web

from ..agent.providers.base import ChatRequest, Event, ProviderError
from ..errors import CloudIDEError, InvalidInputError
from ..gateway.openai_api.sse import SseHandler
from .base import AdapterConfigError, SecretSources
from .registry import AdapterProvider, build_adapter, find_adapter

log = logging.getLogger("jupyter_cloudide.sidecar")

#: a ``: keep-alive`` comment goes out when nothing was written for this long
KEEPALIVE_S = 15.0
MAX_BODY_BYTES = 8 * 1024 * 1024


class Sidecar:
    """What the handlers share: the adapter's provider, the local key, the model list."""

    def __init__(self, provider: AdapterProvider, *, api_key: str | None = None,
                 timeout_s: float = 60.0, keepalive_s: float = KEEPALIVE_S,
                 models: Sequence[str] = ()) -> None:
        self.provider = provider
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.keepalive_s = keepalive_s
        self.models = tuple(models)
        self.created = int(time.time())

    async def model_ids(self) -> list[str]:
        return list(self.models) or await self.provider.list_models()


def make_app(sidecar: Sidecar) -> web.Application:
    return web.Application([
        (r"/v1/chat/completions", ChatCompletionsHandler, {"sidecar": sidecar}),
        (r"/v1/models", ModelsHandler, {"sidecar": sidecar}),
        (r"/v1/models/(?P<model>[^/]+)", ModelsHandler, {"sidecar": sidecar}),
        (r".*", NotFoundHandler, {"sidecar": sidecar}),
    ], log_function=_log_request)


def _log_request(handler: web.RequestHandler) -> None:
    log.info("%s %s %d %.1f ms", handler.request.method, handler.request.path,
             handler.get_status(), 1000 * handler.request.request_time())


class _Handler(SseHandler):
    """OpenAI-shaped errors for everything; the optional bearer key; SSE and cancellation as
    the server's ``cloudide/v1`` handlers do them (:class:`SseHandler`)."""

    def initialize(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self.wire_format = wire()

    def set_default_headers(self) -> None:
        self.clear_header("Server")
        self.set_header("Content-Type", "application/json")

    def prepare(self) -> None:
        key = self.sidecar.api_key
        if key is None:
            return
        scheme, _, given = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 key.encode()):
            self.set_header("WWW-Authenticate", "Bearer")
            self.fail(wire().for_status(401, "missing or wrong API key (Authorization: "
                                             "Bearer <key>)"))

    def fail(self, error: Any) -> None:
        self.set_status(error.status)
        for name, value in error.headers.items():
            self.set_header(name, value)
        self.finish(json.dumps(error.body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, CloudIDEError | ProviderError):
            error = wire().error_for(exc)
        else:
            error = wire().for_status(status_code, "internal server error" if status_code >= 500
                                      else responses.get(status_code, "error"))
        self.fail(error)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, CloudIDEError | ProviderError):
            log.info("%s %s → %s", self.request.method, self.request.path,
                     getattr(value, "kind", type(value).__name__))
            return
        super().log_exception(typ, value, tb)

    def write_json(self, body: dict[str, Any]) -> None:
        self.finish(json.dumps(body, ensure_ascii=False, separators=(",", ":")))


class ChatCompletionsHandler(_Handler):
    async def post(self) -> None:
        body = parse_body(self.request.body)
        try:
            parsed, stream, include_usage = wire().parse_chat_request(body)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise InvalidInputError("body: not a Chat Completions request") from None
        request = ChatRequest(
            model=parsed.model, messages=parsed.messages, tools=parsed.tools,
            max_tokens=parsed.max_tokens or 4096, temperature=parsed.temperature,
            top_p=parsed.top_p, stop=parsed.stop, tool_choice=parsed.tool_choice,
            parallel_tool_calls=parsed.parallel_tool_calls, timeout_s=self.sidecar.timeout_s)
        events = self.sidecar.provider.stream_chat(request)
        if stream:
            await self.run_cancellable(self.stream(parsed.model, events, include_usage))
        else:
            await self.run_cancellable(self.whole(parsed.model, events))

    async def whole(self, model: str, events: AsyncGenerator[Event, None]) -> None:
        w = wire()
        builder = w.CompletionBuilder(w.new_completion_id(), int(time.time()))
        builder.add(routed(model))
        async with contextlib.aclosing(events) as stream:
            async for event in stream:
                builder.add(event)
        self.write_json(builder.body())

    async def stream(self, model: str, events: AsyncGenerator[Event, None],
                     include_usage: bool) -> None:
        """An error before the first event is a real status; after it, one error event."""
        w = wire()
        encoder = w.ChunkEncoder(w.new_completion_id(), int(time.time()), include_usage)
        first = True

        def encode(event: Event) -> Any:
            nonlocal first
            if not first:
                return encoder.encode(event)
            first = False  # the role chunk goes with the first event, not before it
            return encoder.encode(routed(model)) + encoder.encode(event)

        await self.stream_events(events, encode, self.sidecar.keepalive_s)


class ModelsHandler(_Handler):
    async def get(self, model: str | None = None) -> None:
        w = wire()
        from ..agent.api import ApiModel

        ids = await self.sidecar.model_ids()
        owner = self.sidecar.provider.name
        if model is None:
            self.write_json(w.models_body([ApiModel(i, owner, "chat") for i in ids],
                                          self.sidecar.created))
        elif model in ids:
            self.write_json(w.model_json(ApiModel(model, owner, "chat"), self.sidecar.created))
        else:
            self.fail(w.for_status(404, f"model {model[:100]!r} does not exist", "model"))


class NotFoundHandler(_Handler):
    def prepare(self) -> None:
        super().prepare()
        if not self._finished:
            self.fail(wire().for_status(404, f"no route {self.request.path[:100]}"))


# -- the wire format ------------------------------------------------------------------------


def wire() -> Any:
    """The OpenAI wire module (imported on first use)."""
    from ..agent.wire import openai

    return openai


def routed(model: str) -> Any:
    from ..agent.api import Routed

    return Routed(model)


@functools.cache
def _chat_schema() -> str | None:
    """The api.yaml schema of ``/v1/chat/completions`` bodies, if the spec has the route."""
    from ..gateway.spec import operations

    for op in operations().values():
        if op["method"] == "POST" and str(op["path"]).endswith("/v1/chat/completions"):
            return str(op["body_pointer"]) if op["body_pointer"] else None
    return None


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body: strict JSON object, valid Unicode, the route's schema."""
    from ..gateway.spec import check_unicode, decode_json_object, validate_schema

    body = decode_json_object(raw)
    check_unicode(body, raw.decode("utf-8", errors="replace"))
    pointer = _chat_schema()
    if pointer is not None:
        validate_schema(body, pointer)
    return body


# -- running it -----------------------------------------------------------------------------


async def serve(sidecar: Sidecar, host: str = "127.0.0.1", port: int = 0
                ) -> tuple[httpserver.HTTPServer, int]:
    """Start serving on the running loop; returns the server and the port it got."""
    sockets = netutil.bind_sockets(port, host)
    server = httpserver.HTTPServer(make_app(sidecar), max_body_size=MAX_BODY_BYTES,
                                   idle_connection_timeout=300)
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jupyter cloudide serve-adapter",
        description="Serve a protocol adapter as a local OpenAI-compatible API "
                    "(POST /v1/chat/completions, GET /v1/models).")
    p.add_argument("adapter", help="the adapter's name (an entry point of the group "
                                   "jupyter_cloudide.adapters, e.g. ws-oauth2)")
    p.add_argument("--port", type=int, default=8765, help="port (0: any free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p.add_argument("--config", metavar="FILE.json",
                   help="the adapter's options as a JSON object")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option (repeatable; wins over --config); secrets by reference: "
                        "client_secret_env=VAR")
    p.add_argument("--secrets-file", default="", metavar="FILE.json",
                   help="a JSON {name: secret} file readable only by you (for *_secret "
                        "options)")
    p.add_argument("--api-key-env", metavar="VAR",
                   help="require Authorization: Bearer <the value of $VAR> from clients")
    p.add_argument("--no-auth", action="store_true",
                   help="serve a non-loopback address without --api-key-env (refused "
                        "otherwise: anyone who reaches it would spend the adapter's "
                        "credentials)")
    p.add_argument("--model", action="append", default=[], metavar="ID",
                   help="model ids to list (default: the adapter's own list)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds for the first event of an answer, then between events")
    p.add_argument("--log-level", default="INFO")
    return p


def _loopback(host: str) -> bool:
    """True for an address only this machine can reach (a name other than localhost is not
    resolved here: it counts as reachable from elsewhere)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_options(config: str | None, pairs: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if config:
        try:
            with open(config, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise AdapterConfigError(f"serve-adapter: --config {config}: {exc}") from None
        if not isinstance(data, dict):
            raise AdapterConfigError(f"serve-adapter: --config {config}: not a JSON object")
        options.update(data)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise AdapterConfigError(f"serve-adapter: --option {pair[:100]!r}: KEY=VALUE")
        options[key.strip()] = value
    return options


def main(argv: Sequence[str] | None = None) -> int:
    """``jupyter cloudide serve-adapter``: serve until SIGINT/SIGTERM. Returns the exit
    status (2: bad configuration)."""
    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=args.log_level.upper(),
                        format="[%(levelname).1s %(asctime)s %(name)s] %(message)s")
    from ..agent.models import load_secrets

    api_key = None
    try:
        if not args.api_key_env and not args.no_auth and not _loopback(args.host):
            raise AdapterConfigError(
                f"serve-adapter: --host {args.host} is reachable from other machines: set "
                "--api-key-env VAR (clients send Authorization: Bearer <$VAR>), or pass "
                "--no-auth to serve it open on purpose")
        if args.api_key_env:
            api_key = os.environ.get(args.api_key_env)
            if not api_key:
                raise AdapterConfigError(f"serve-adapter: --api-key-env: ${args.api_key_env} "
                                         "is not set")
        entry = find_adapter(args.adapter, where="serve-adapter")
        sources = SecretSources(os.environ, load_secrets(args.secrets_file))
        adapter = build_adapter(entry, load_options(args.config, args.option),
                                name=args.adapter, sources=sources, timeout_s=args.timeout,
                                from_text=True, where=f"serve-adapter {args.adapter}")
    except AdapterConfigError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    if api_key is None and not _loopback(args.host):
        log.warning("serving on %s without a key (--no-auth): anyone who can reach it can "
                    "use the model service with this adapter's credentials", args.host)
    sidecar = Sidecar(AdapterProvider.of(adapter), api_key=api_key, timeout_s=args.timeout,
                      models=args.model)
    return asyncio.run(_run(sidecar, args.host, args.port))


async def _run(sidecar: Sidecar, host: str, port: int) -> int:
    try:
        server, bound = await serve(sidecar, host, port)
    except OSError as exc:
        print(f"serve-adapter: cannot listen on {host}:{port} ({exc.strerror})",
              file=sys.stderr)
        await sidecar.provider.close()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    shown = f"[{host}]" if ":" in host else host
    print(f"serve-adapter: {sidecar.provider.name} at http://{shown}:{bound}/v1", flush=True)
    try:
        await stop.wait()
    finally:
        server.stop()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.close_all_connections(), 5)
        await sidecar.provider.close()
    return 0


class ServeAdapterCommand(JupyterApp):
    """Serve a protocol adapter as a local OpenAI-compatible API (``jupyter cloudide
    serve-adapter --help``)."""

    name = "jupyter-cloudide-serve-adapter"
    description = "Serve a protocol adapter as a local OpenAI-compatible API."

    def initialize(self, argv: Any = None) -> None:
        # the arguments are argparse's (main), not traitlets'
        self.adapter_argv = list(argv or [])

    def start(self) -> None:
        self.exit(main(self.adapter_argv))


if __name__ == "__main__":
    sys.exit(main())
