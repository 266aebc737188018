"""The fake server in Azure OpenAI's shape (`FakeConfig.azure_api_version`): only Azure's
addresses answer, and only with an `api-key` header and the `api-version` it was given.

    POST /openai/deployments/DEPLOYMENT/chat/completions?api-version=V   (and the others the
         SDK's Azure client sends to a deployment: completions, embeddings, images)
    POST /openai/responses?api-version=V                                 (no deployment)
    /openai/files..., /openai/batches...?api-version=V                   the Batch API
    /openai/v1/...                                                       Azure's v1 API: the
         model in the body, no api-version

A deployment answers as the model it names (the body's model is the deployment's name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from batchrunner.dialects.openai import ENDPOINTS
from batchrunner.fake.answers import error_body
from batchrunner.fake.batches import Refusal, _response

if TYPE_CHECKING:
    from batchrunner.fake.server import FakeServer


def add_azure_routes(server: FakeServer, app: web.Application) -> None:
    def version_refused(request: web.Request) -> Refusal | None:
        """Azure answers 404 to an address without the api-version it serves."""
        wanted = server.config.azure_api_version
        if request.query.get("api-version") != wanted:
            message = f"Resource not found (this resource serves api-version={wanted})"
            return Refusal(404, error_body(message, "invalid_request_error", "404"))
        return None

    async def answer(request: web.Request) -> web.StreamResponse:
        refusal = version_refused(request)
        if refusal is not None:
            server.record(request)
            return _response(refusal)
        return await server._answer(request, f"/v1/{request.match_info['path']}")

    async def v1(request: web.Request) -> web.StreamResponse:
        return await server._answer(request, request.path.removeprefix("/openai"))

    app.router.add_post("/openai/deployments/{deployment}/{path:.+}", answer)
    app.router.add_post("/openai/{path:responses|moderations|videos}", answer)
    server.batch_api.add_routes(app, "/openai", check=version_refused)
    for url in ENDPOINTS:
        app.router.add_post(f"/openai{url}", v1)
    server.batch_api.add_routes(app, "/openai/v1")
