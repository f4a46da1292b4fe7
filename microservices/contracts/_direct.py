"""Keep-alive HTTP/1.1 connections to one service, for the typed clients on a hot path.

Through httpx a call costs about a millisecond of the caller's CPU here (its client layers,
the connection pool, anyio, h11 and the OpenTelemetry wrapper around its transport): more than
the call itself. A typed client built with `direct=True` sends each request in one `write` on a
connection it keeps, and parses the answer with httptools (uvicorn's parser); `ServiceClient`
gives the call the CLIENT span, trace headers, bearer token and `HTTP Request` line the httpx
path has. Errors are httpx's exception types, so callers handle both paths alike.
"""

from __future__ import annotations

import asyncio
import urllib.request
from dataclasses import dataclass
from typing import cast

import httptools
import httpx

KEEPALIVE_S = 4.0
"""How long an idle connection is reused: below uvicorn's 5 s keep-alive, so a server's close
of an idle connection does not race a request sent on it."""
MAX_IDLE = 8
"""Idle connections kept per service; more are closed after their answer."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A response: status, reason phrase and body (the headers are not kept)."""

    status: int
    reason: str
    content: bytes


def direct_origin(url: httpx.URL) -> tuple[str, int] | None:
    """(host, port) of a plain-HTTP `url` reached without a proxy, else None (httpx serves
    TLS and proxies)."""
    if url.scheme != "http" or not url.host:
        return None
    if urllib.request.getproxies_environment().get("http") and not (
        urllib.request.proxy_bypass_environment(url.host)  # type: ignore[attr-defined]
    ):
        return None
    return url.host, url.port or 80


class _Connection(asyncio.Protocol):
    """One connection: at most one exchange at a time, the answer parsed as it arrives."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Answer] | None = None
        self._reason = b""
        self._body: list[bytes] = []
        self.closed = False
        self.idle_since = 0.0

    # asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports (the services' loop) do not derive from asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed response: {exc}"))
            self.abort()

    def eof_received(self) -> bool:
        self._fail(httpx.RemoteProtocolError("Server disconnected without sending a response."))
        self.closed = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(httpx.RemoteProtocolError(f"connection lost: {exc or 'closed'}"))

    # httptools callbacks -----------------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        answer = Answer(
            self._parser.get_status_code(),
            self._reason.decode("latin-1"),
            b"".join(self._body),
        )
        if not self._parser.should_keep_alive():
            self.closed = True
            if self._transport is not None:
                self._transport.close()
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            # An answer nobody asked for: the connection is out of step, never reuse it.
            self.abort()
        elif not waiter.done():
            waiter.set_result(answer)

    # Exchanges ---------------------------------------------------------------------------------

    def send(self, data: bytes) -> asyncio.Future[Answer]:
        assert self._transport is not None and self._waiter is None
        self._reason, self._body = b"", []
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            self._transport.write(data)
        except (OSError, RuntimeError) as exc:  # a transport closed under us
            self._waiter = None
            raise httpx.WriteError(str(exc)) from exc
        return waiter

    def abort(self) -> None:
        """Drop the connection (an answer not read to its end must not reach the next one)."""
        self.closed = True
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class DirectConnections:
    """The keep-alive connections to one origin, reused last-in first-out."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[_Connection] = []

    async def exchange(self, request: bytes, timeout: httpx.Timeout) -> Answer:
        """Send `request` (head and body) and read its answer, on an idle connection or a new
        one. A failure or a cancellation drops the connection; nothing is sent twice."""
        loop = asyncio.get_running_loop()
        connection = self._take(loop.time())
        if connection is None:
            connection = await self._connect(timeout.connect)
        try:
            async with asyncio.timeout(timeout.read):
                answer = await connection.send(request)
        except TimeoutError:
            connection.abort()
            raise httpx.ReadTimeout(f"no answer within {timeout.read} s") from None
        except BaseException:
            connection.abort()
            raise
        if not connection.closed:
            if len(self._idle) < MAX_IDLE:
                connection.idle_since = loop.time()
                self._idle.append(connection)
            else:
                connection.abort()
        return answer

    def close(self) -> None:
        """Close the idle connections."""
        while self._idle:
            self._idle.pop().abort()

    def _take(self, now: float) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < KEEPALIVE_S:
                return connection
            connection.abort()
        return None

    async def _connect(self, timeout_s: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                _transport, connection = await loop.create_connection(
                    _Connection, self.host, self.port
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection within {timeout_s} s") from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc)) from exc
        return connection
