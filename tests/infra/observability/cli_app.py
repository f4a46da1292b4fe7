"""A seed-style app for `uvicorn tests.infra.observability.cli_app:app` (the CLI deployment)."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from backend.infra.observability import (
    add_health_endpoints,
    add_metrics_middleware,
    init_observability,
    instrument_fastapi,
)

init_observability("cli-app", "INFO")
app = FastAPI()
instrument_fastapi(app)
add_metrics_middleware(app)
add_health_endpoints(app)


@app.get("/items/{item_id}")
async def item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}


@app.get("/call")
def call(port: int) -> dict[str, int]:
    # An outgoing call with a secret in its query string: httpx logs the URL at INFO.
    response = httpx.get(f"http://127.0.0.1:{port}/items/1?token=s3cr3t-t0ken")
    return {"status": response.status_code}
