"""``cloudide/api/conversations[/<id>]``: the caller's chat threads (metadata store)."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from ...agent import conversations
from ..base import CloudIDEHandler, write_json

AUTH_RESOURCE = "cloudide:agent"
CONVERSATION_ID = (
    r"(?P<conversation_id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
)


class ConversationsHandler(CloudIDEHandler):
    """List and create the caller's conversations."""

    auth_resource = AUTH_RESOURCE
    route_name = "conversations"
    operations = {"GET": "listConversations", "POST": "createConversation"}

    @web.authenticated
    @authorized
    async def get(self) -> None:
        limit = self.get_query_argument("limit", "50")
        service = await self.cloudide.conversation_service()
        items = await service.list(self.username, conversations.parse_limit(limit))
        write_json(self, {"conversations": items})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        service = await self.cloudide.conversation_service()
        created = await service.create(self.username, body.get("title"), body.get("model"))
        write_json(self, created, status=201)


class ConversationHandler(CloudIDEHandler):
    """One conversation of the caller, with its messages (404 for anyone else's)."""

    auth_resource = AUTH_RESOURCE
    route_name = "conversation"
    operations = {"GET": "getConversation", "PATCH": "renameConversation",
                  "DELETE": "deleteConversation"}

    @web.authenticated
    @authorized
    async def get(self, conversation_id: str) -> None:
        """``?format=markdown`` exports a transcript; default JSON (messages included)."""
        service = await self.cloudide.conversation_service()
        if self.get_query_argument("format", "json") == "markdown":
            text = await service.export_markdown(self.username, conversation_id)
            self.set_header("Content-Disposition",
                            f'attachment; filename="conversation-{conversation_id}.md"')
            # jupyter's APIHandler.finish would otherwise label it application/json
            self.finish(text, set_content_type="text/markdown; charset=utf-8")
            return
        write_json(self, await service.get(self.username, conversation_id))

    @web.authenticated
    @authorized
    async def patch(self, conversation_id: str) -> None:
        body = self.json_body()
        service = await self.cloudide.conversation_service()
        write_json(self, await service.rename(self.username, conversation_id, body["title"]))

    @web.authenticated
    @authorized
    async def delete(self, conversation_id: str) -> None:
        service = await self.cloudide.conversation_service()
        await service.delete(self.username, conversation_id)
        self.set_status(204)
        self.finish()


default_handlers = [
    (r"/cloudide/api/conversations", ConversationsHandler),
    (rf"/cloudide/api/conversations/{CONVERSATION_ID}", ConversationHandler),
]
