"""``GET cloudide/api/health``: version and the state of each component."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..base import CloudIDEHandler, write_json

AUTH_RESOURCE = "cloudide:health"


class HealthHandler(CloudIDEHandler):
    """Cheap by design: component states are kept current in memory, never probed here."""

    auth_resource = AUTH_RESOURCE
    route_name = "health"
    operations = {"GET": "getHealth"}

    @web.authenticated
    @authorized
    async def get(self) -> None:
        write_json(self, self.cloudide.health_report())


default_handlers = [(r"/cloudide/api/health", HealthHandler)]
