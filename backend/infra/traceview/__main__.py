"""`python -m backend.infra.traceview [--host H] [--port P] [--max-traces N]`."""

from __future__ import annotations

import argparse

import uvicorn

from ._app import create_app
from ._store import TraceStore


def main() -> None:
    parser = argparse.ArgumentParser(description="Embedded OTLP/HTTP trace collector and viewer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=16686)
    parser.add_argument("--max-traces", type=int, default=2000)
    args = parser.parse_args()
    app = create_app(TraceStore(args.max_traces))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
