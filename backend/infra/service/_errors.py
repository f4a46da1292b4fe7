"""The 422 every service answers for a request it cannot accept: always valid JSON, never a 500.

FastAPI's own handler echoes each rejected input back. An input JSON cannot carry (`1e999999`
parses to infinity, `"\\ud800"` to a lone surrogate that UTF-8 cannot encode) then fails the
response itself, and the 422 becomes a 500; a 1 MB input comes back as a 1 MB error. This
handler keeps FastAPI's shape (`{"detail": [{"type", "loc", "msg", "input", "ctx"}]}`) and
writes an input back only when it is short, finite and encodable, otherwise a short
description of it ("a string of 1048576 characters"). Inputs of fields whose name says
they hold a credential are never written back. `NulRefusalMiddleware` refuses, with the same
422 shape, the one character every field takes but PostgreSQL cannot store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_ECHO_CHARS = 100
"""Longest input string written back as it is; longer ones are described."""
MAX_MESSAGE_CHARS = 300
"""A validator's message may quote its input: it is cut to this length."""
MAX_ERRORS = 50
"""Errors listed in one response (a 10 000-item array can fail 10 000 times)."""
_CREDENTIAL_WORDS = ("token", "secret", "password", "authorization", "api_key", "apikey")


def install_validation_handler(app: FastAPI) -> None:
    """Answer every request validation failure of `app` with `validation_error_body`."""
    app.add_exception_handler(RequestValidationError, _handle)


async def _handle(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(status_code=422, content=validation_error_body(exc.errors()))


def validation_error_body(errors: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """`{"detail": [...]}` for `errors`, each naming its field (`loc`), all writable as JSON."""
    detail = [_error(error) for error in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        detail.append(
            {
                "type": "too_many_errors",
                "loc": [],
                "msg": f"{len(errors) - MAX_ERRORS} more errors not listed",
            }
        )
    return {"detail": detail}


def _error(error: Mapping[str, Any]) -> dict[str, Any]:
    loc = [part if isinstance(part, int) else _text(str(part)) for part in error.get("loc", ())]
    written: dict[str, Any] = {
        "type": _text(str(error.get("type", "value_error"))),
        "loc": loc,
        "msg": _text(str(error.get("msg", "invalid value")), MAX_MESSAGE_CHARS),
    }
    if "input" in error:
        if any(_is_credential(part) for part in loc):
            written["input"] = "(not shown: a credential)"
        else:
            written["input"] = _writable(error["input"])
    context = error.get("ctx")
    if isinstance(context, Mapping):
        written["ctx"] = {_text(str(key)): _writable(value) for key, value in context.items()}
    return written


def _is_credential(part: object) -> bool:
    return isinstance(part, str) and any(word in part.lower() for word in _CREDENTIAL_WORDS)


def _writable(value: Any) -> Any:
    """`value` if it is small, finite and encodable as JSON text, else a description of it."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        # 2**70 is valid JSON, but a 10**6-digit integer is a huge echo (and slow to print).
        if value.bit_length() <= 64:
            return value
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return value if math.isfinite(value) else f"a non-finite number ({value!r})"
    if isinstance(value, Decimal):
        if not value.is_finite():
            return f"a non-finite number ({value})"
        digits = len(value.as_tuple().digits)
        exponent = value.as_tuple().exponent
        assert isinstance(exponent, int)
        if digits > 40 or abs(exponent) > 40:
            return f"a number of {digits} digits and exponent {exponent}"
        return str(value)
    if isinstance(value, str):
        if len(value) > MAX_ECHO_CHARS:
            return f"a string of {len(value)} characters"
        if not _encodable(value):
            return "a string that is not valid Unicode"
        return value
    if isinstance(value, bytes):
        return f"{len(value)} bytes"
    if isinstance(value, Mapping):
        return f"an object with {len(value)} keys"
    if isinstance(value, (list, tuple)):
        return f"an array of {len(value)} items"
    if isinstance(value, BaseException):
        return _text(str(value), MAX_MESSAGE_CHARS)
    return _text(type(value).__name__)


def _text(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """`text`, cut to `limit` characters, with anything UTF-8 cannot encode replaced."""
    if len(text) > limit:
        text = text[:limit] + "..."
    if not _encodable(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _encodable(text: str) -> bool:
    try:
        json.dumps(text, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class NulRefusalMiddleware:
    """Refuses (422) a request whose path, query or body carries the NUL character (U+0000).

    JSON and URLs can carry it and SQLite stores it, but PostgreSQL refuses it in text
    (`invalid byte sequence for encoding "UTF8": 0x00`), so it reached a query and came back
    a 500. No field of any service has a use for it. The body is read whole before the route
    runs (FastAPI reads it whole too) and handed on unchanged.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        where = _nul_in_url(scope)
        messages: list[Message] = []
        # Reads never take a body: only the methods that do have theirs read here.
        if where is None and scope.get("method") not in ("GET", "HEAD", "OPTIONS"):
            body = bytearray()
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] != "http.request":
                    break
                body += message.get("body", b"")
                if not message.get("more_body", False):
                    break
            if b"\\u0000" in body:
                where = _nul_in_body(bytes(body))
        if where is not None:
            error = {"type": "string_nul", "loc": where, "msg": NUL_MESSAGE}
            response = JSONResponse(status_code=422, content=validation_error_body([error]))
            await response(scope, receive, send)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


NUL_MESSAGE = "text must not contain the NUL character (U+0000)"


def _nul_in_body(body: bytes) -> list[str | int] | None:
    """Where in the JSON `body` the first NUL is (`["body", "reason"]`), or None.

    A body that does not parse goes on to the route, which refuses it as invalid JSON.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    found = _nul_path(document)
    return None if found is None else ["body", *found]


def _nul_path(value: Any) -> list[str | int] | None:
    pending: list[tuple[Any, list[str | int]]] = [(value, [])]
    while pending:
        item, path = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return path
        elif isinstance(item, dict):
            for key, sub in item.items():
                if "\x00" in key:
                    return [*path, _text(key.replace("\x00", "\\x00"))]
                pending.append((sub, [*path, _text(key)]))
        elif isinstance(item, list):
            pending.extend((sub, [*path, index]) for index, sub in enumerate(item))
    return None


def _nul_in_url(scope: Scope) -> list[str | int] | None:
    if "\x00" in scope.get("path", ""):
        return ["path"]
    query: bytes = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                return ["query", _text(name.replace("\x00", "\\x00"))]
        return ["query"]
    return None
