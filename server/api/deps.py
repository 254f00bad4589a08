"""Typed access to what the app's lifespan set up, for route handlers (``Depends``) and the middleware: one
untyped ``app.state`` lookup, here, instead of one per handler."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.types import Scope

from server.gateway import Gateway, RequestContext


def gateway_of_scope(scope: Scope) -> Gateway:
    """The Gateway of the app serving ``scope`` (set by the lifespan in server/api/app.py)."""
    gateway: Gateway = scope["app"].state.gateway
    return gateway


# Dependencies are coroutines: FastAPI runs a plain-def dependency in its thread pool, a hop per request each
# (in a profile of text-only requests, ~11 % of the process's samples went to those hops and their resolution).
async def gateway(request: Request) -> Gateway:
    return gateway_of_scope(request.scope)


async def context(request: Request) -> RequestContext:
    """The request's start time and id (set by the middleware) and its ASGI receive."""
    return RequestContext(request.state.start, request.state.request_id, request.receive)


GatewayDep = Annotated[Gateway, Depends(gateway)]
ContextDep = Annotated[RequestContext, Depends(context)]
