"""A viewer (any ASGI app) served for real over HTTP, in a thread of the test process."""

from __future__ import annotations

import threading
from typing import Any

import uvicorn

from tests.support.polling import wait_until
from tests.support.procs import free_port


class ServedApp:
    """An ASGI app served by uvicorn on a free port, in a thread of the test process."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> ServedApp:
        self._thread.start()
        wait_until(lambda: self._server.started, 10, "the viewer to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)
