"""A real HTTP risk-safety stub: GET /state answers a signed trading state, as risk-safety does."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from backend.trading.approval import DEVELOPMENT_SECRET, SignedState, sign_state
from tests.support.factories import now_ms


class RiskStub:
    """risk-safety's GET /state as a real HTTP server: a signed state, ACTIVE in epoch 0 first.

    `change(state)` moves to the next epoch as risk-safety does on every state change and
    records when; `failing` answers 503; `signed = False` leaves out `epoch` and `state_token`
    (a risk-safety that does not sign its state).
    """

    def __init__(self, secret: str = DEVELOPMENT_SECRET) -> None:
        self.secret = secret
        self.state = "ACTIVE"
        self.epoch = 0
        self.changed_at_ms = now_ms()
        self.failing = False
        self.signed = True
        self.polls = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub.polls += 1
                if self.path != "/state" or stub.failing:
                    self.send_response(404 if self.path != "/state" else 503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                payload = json.dumps(stub.body()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def signed_state(self) -> SignedState:
        return sign_state(self.secret, state=self.state, epoch=self.epoch)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"state": self.state, "reason": "", "changed": True}
        if self.signed:
            body.update(epoch=self.epoch, state_token=self.signed_state().token)
        return body

    def change(self, state: str) -> SignedState:
        """The next epoch in `state`, served from now on; returns its signed state."""
        return self.serve(self.next(state))

    def next(self, state: str) -> SignedState:
        """The next epoch in `state`, signed but not served yet (what risk-safety pushes before
        it commits the change)."""
        return sign_state(self.secret, state=state, epoch=self.epoch + 1)

    def serve(self, signed: SignedState) -> SignedState:
        """Serve `signed` from now on (risk-safety's commit of the change)."""
        self.state, self.epoch, self.changed_at_ms = signed.state, signed.epoch, now_ms()
        return signed

    def push_body(self, signed: SignedState | None = None, reason: str = "test") -> dict[str, Any]:
        signed = signed or self.signed_state()
        return {
            "state": signed.state,
            "epoch": signed.epoch,
            "token": signed.token,
            "reason": reason,
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
