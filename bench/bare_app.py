"""The ceiling: a bare Starlette JSON endpoint under the same uvicorn settings as the gateway."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def hello(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"data": {"hello": "world"}})


app = Starlette(routes=[Route("/graphql", hello, methods=["GET", "POST"])])
