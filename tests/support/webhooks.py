"""A real webhook receiver for tests: an HTTP server on a free port, in a thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    """One request as the receiver got it (header names in lower case)."""

    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A webhook receiver on a free port, in a thread: records each request and answers
    `status`, or (while `hold` is set) keeps the request waiting until `release()` or `stop()`,
    then answers 503."""

    def __init__(self, status: int = 204, first: tuple[int, ...] = ()) -> None:
        self.status = status
        self.first = list(first)
        """Statuses of the first requests, in order; `status` after them."""
        self.requests: list[Received] = []
        self.held = threading.Event()
        self.hold = False
        self._stopped = False
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                status = receiver.first.pop(0) if receiver.first else receiver.status
                if receiver.hold:
                    receiver.held.set()
                    receiver._release.wait(30)
                    status = 503
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/quantum?k=abc"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._release.set()

    def stop(self) -> None:
        """Stop listening (new connections are refused), then answer a held request."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self.release()
        self._thread.join(5)


@contextmanager
def receiver(status: int = 204, first: tuple[int, ...] = ()) -> Iterator[Receiver]:
    """A started `Receiver`, stopped on exit."""
    r = Receiver(status, first)
    try:
        yield r
    finally:
        r.stop()
