"""Start execution: `python microservices/execution/main.py`, or under uvicorn with several
workers: `uvicorn --factory microservices.execution.main:create_app --workers 2` (with
`EXECUTION_SHARED_VENUE=true` and `PROMETHEUS_MULTIPROC_DIR`; see docs/DEPLOYMENT.md)."""

import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, when run as a script

from fastapi import FastAPI

from microservices.execution.service import create_service


def main() -> None:
    create_service().run()


def create_app() -> FastAPI:
    """The app of one uvicorn worker (uvicorn calls this in each worker process).

    Each worker is a replica of its own in the consumer group: its consumer name is the
    configured one (else the host name) with the worker's process id appended.
    """
    base = os.environ.get("EVENTBUS_CONSUMER_NAME") or socket.gethostname()
    os.environ["EVENTBUS_CONSUMER_NAME"] = f"{base}-{os.getpid()}"
    return create_service().app


if __name__ == "__main__":
    main()
