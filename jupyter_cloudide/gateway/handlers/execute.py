"""``cloudide/api/execute[/<job_id>]``: run code in a kernel, or start, poll and cancel jobs."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from ...executor.execute import parse_request
from ..base import CloudIDEHandler, write_json

AUTH_RESOURCE = "cloudide:execute"
JOB_ID = r"(?P<job_id>[0-9a-f]{32})"


class ExecuteHandler(CloudIDEHandler):
    """Run code; the answer is the result (200), or a job when ``detach`` is set (202)."""

    auth_resource = AUTH_RESOURCE
    route_name = "execute"
    operations = {"POST": "execute"}

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        await self.rate_limit("execute")
        service = self.cloudide.executor_service()
        request = parse_request(body, source="user")
        if body.get("detach"):
            job = service.start_job(self.username, request, self.cloudide.push_to_user)
            write_json(self, job.to_json(), status=202)
            return
        result = await service.execute(request)
        write_json(self, result.to_json())


class JobHandler(CloudIDEHandler):
    """Poll (GET) or cancel (DELETE) one of the caller's jobs."""

    auth_resource = AUTH_RESOURCE
    route_name = "execute_job"
    operations = {"GET": "getJob", "DELETE": "cancelJob"}

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        job = self.cloudide.executor_service().jobs.get(job_id, self.username)
        write_json(self, job.to_json())

    @web.authenticated
    @authorized
    async def delete(self, job_id: str) -> None:
        job = self.cloudide.executor_service().jobs.cancel(job_id, self.username)
        write_json(self, job.to_json())


default_handlers = [
    (r"/cloudide/api/execute", ExecuteHandler),
    (rf"/cloudide/api/execute/{JOB_ID}", JobHandler),
]
