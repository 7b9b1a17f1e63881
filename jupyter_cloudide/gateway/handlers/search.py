"""``cloudide/api/index`` (status, rebuild) and ``cloudide/api/search`` (hybrid search)."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..base import CloudIDEHandler, write_json

AUTH_RESOURCE = "cloudide:search"


class IndexHandler(CloudIDEHandler):
    """The caller's index: GET its state, POST to bring it up to date (``full``: rebuild)."""

    auth_resource = AUTH_RESOURCE
    route_name = "index"
    operations = {"POST": "rebuildIndex"}

    @web.authenticated
    @authorized
    async def get(self) -> None:
        write_json(self, self.cloudide.index_service().status(self.username))

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.optional_json_body()
        service = self.cloudide.index_service()
        full = bool(body.get("full"))
        ui = service.request(self.username, scan=True, rebuild=full)
        write_json(self, ui.status(), status=202)


class SearchHandler(CloudIDEHandler):
    """Ranked chunks of the caller's index."""

    auth_resource = AUTH_RESOURCE
    route_name = "search"
    operations = {"POST": "search"}

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        await self.rate_limit("search")
        write_json(self, await self.cloudide.search(self.username, body))


default_handlers = [
    (r"/cloudide/api/index", IndexHandler),
    (r"/cloudide/api/search", SearchHandler),
]
