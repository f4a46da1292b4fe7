"""A tiny service written the way the seed writes its services, for cross-process tests.

    python -m tests.support.echo_service PORT [DOWNSTREAM_URL]

`GET /hop/{n}` calls DOWNSTREAM_URL's `/hop/{n-1}` with httpx while n > 0.
"""

from __future__ import annotations

import sys

import httpx
import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from backend.infra.observability import (
    add_metrics_middleware,
    get_logger,
    get_tracer,
    init_observability,
    instrument_fastapi,
)

init_observability(
    service_name=f"echo-{sys.argv[1]}", log_level="INFO", enable_tracing=True, enable_metrics=True
)
logger = get_logger(__name__)
tracer = get_tracer(__name__)
app = FastAPI()
instrument_fastapi(app)
add_metrics_middleware(app)
DOWNSTREAM = sys.argv[2] if len(sys.argv) > 2 else None


@app.get("/health/live")
async def liveness_probe() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@app.get("/hop/{n}")
async def hop(n: int) -> dict[str, object]:
    with tracer.start_as_current_span("process_signal") as span:
        span.set_attribute("symbol", "BTCUSDT")
        logger.info("hop", n=n)
    if n > 0 and DOWNSTREAM:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{DOWNSTREAM}/hop/{n - 1}")
            return {"n": n, "downstream": r.json()}
    return {"n": n}


@app.get("/boom")
async def boom() -> None:
    raise RuntimeError("kaboom")


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]))
