"""An answer whose body is already encoded, with work to run once it is sent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.responses import Response


class SentAnswer(Response):
    """A JSON body encoded by the route, and `after_send` run once it is sent (or failed to be).

    For a route that answers from a model it encoded itself (declare the model as the route's
    `response_model` for the OpenAPI schema: FastAPI neither validates nor encodes it again),
    and whose request left work the answer should not wait behind, such as the outbox relay's
    publication of what the request committed (`Outbox.hold`, released here).
    """

    media_type = "application/json"

    def __init__(
        self, content: bytes, status_code: int, after_send: Callable[[], None] | None = None
    ) -> None:
        super().__init__(content, status_code)
        self._after_send = after_send

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._after_send is not None:
                self._after_send()
