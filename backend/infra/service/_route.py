"""A route for hot JSON endpoints: the body validated once, no dependency solving."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY

from ._service import resources_of

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class JsonBodyRoute(APIRoute):
    """An `APIRoute` whose well-formed requests skip FastAPI's per-request machinery.

    For an endpoint `async def f(body: SomeModel, x: Annotated[X, Depends(provided(X))], ...)
    -> Response` (one JSON body model, the service's provided objects, nothing else), a
    request whose `Content-Type` is `application/json` and whose `Content-Length` is within
    the body limit is handled here: its body is decoded and validated as FastAPI would
    (`json.loads`, then the model's validation of the result), the provided objects are
    looked up, and the endpoint is called. Anything else (another content type, a body that
    does not decode or validate, dependency overrides in place) goes to FastAPI's own
    handler, which answers as it always does (a 422 naming the field...). The endpoint must
    return a `Response` (encoded by itself); its `response_model` documents it.

    What this skips per request: the dependency solving (and its sub-`Response`), the
    content-type parsing through `email.message`, the response model's validation.
    """

    def get_route_handler(self) -> Handler:
        standard = super().get_route_handler()
        shape = _simple_shape(self)
        if shape is None:
            return standard
        model, body_name, provides = shape
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            if _overridden(request) or not _plain_json(request):
                return await standard(request)
            try:
                raw = await request.body()
            except Exception as exc:
                # As FastAPI answers a body it cannot read (its size is within the limit).
                raise HTTPException(400, "There was an error parsing the body") from exc
            try:
                body = model.model_validate(json.loads(raw))
            # Broad on purpose: whatever the body does (does not decode, fails validation,
            # nests too deep for the decoder), FastAPI's handler answers it as it always does
            # (the body is kept on the request).
            except Exception:
                return await standard(request)
            resources = resources_of(request)
            values: dict[str, Any] = {name: resources.provided(kind) for name, kind in provides}
            values[body_name] = body
            answer = await endpoint(**values)
            if not isinstance(answer, Response):
                raise TypeError(f"{self.path}: a JsonBodyRoute endpoint returns a Response")
            return answer

        return handler


def _simple_shape(route: APIRoute) -> tuple[type[BaseModel], str, list[tuple[str, type]]] | None:
    """(body model, its parameter, [(parameter, provided kind)]) when the endpoint has this
    route's shape; None otherwise."""
    d = route.dependant
    if (
        d.path_params
        or d.query_params
        or d.header_params
        or d.cookie_params
        or len(d.body_params) != 1
        or d.request_param_name
        or d.websocket_param_name
        or d.http_connection_param_name
        or d.response_param_name
        or d.background_tasks_param_name
        or d.security_scopes_param_name
        or route._embed_body_fields
        or not inspect.iscoroutinefunction(route.endpoint)
    ):
        return None
    (field,) = d.body_params
    model = field.field_info.annotation
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    provides: list[tuple[str, type]] = []
    for sub in d.dependencies:
        kind = getattr(sub.call, "provides", None)
        if kind is None or sub.name is None or sub.dependencies or sub.body_params:
            return None
        provides.append((sub.name, kind))
    return model, field.name, provides


def _overridden(request: Request) -> bool:
    """Whether the app overrides any dependency (tests do): FastAPI's handler applies them."""
    return bool(getattr(request.app, "dependency_overrides", None))


def _plain_json(request: Request) -> bool:
    """`Content-Type: application/json` and a `Content-Length` within the body limit."""
    content_type = length = None
    for name, value in request.scope["headers"]:
        if name == b"content-type":
            content_type = value
        elif name == b"content-length":
            length = value
    if content_type != b"application/json" or length is None or not length.isdigit():
        return False
    limit = request.scope.get(MAX_BODY_SIZE_SCOPE_KEY)
    return limit is None or int(length) <= limit
