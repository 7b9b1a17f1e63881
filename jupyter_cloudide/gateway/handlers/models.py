"""``cloudide/api/models``: the models the caller may use."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..base import CloudIDEHandler, write_json


class ModelsHandler(CloudIDEHandler):
    auth_resource = "cloudide:agent"
    route_name = "models"

    @web.authenticated
    @authorized
    async def get(self) -> None:
        agent = await self.cloudide.agent_service()
        groups = self.cloudide.groups_of(self.current_user)
        write_json(self, await agent.models_for(self.username, groups))


default_handlers = [(r"/cloudide/api/models", ModelsHandler)]
