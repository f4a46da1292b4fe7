"""Container health check: GET the service's /health/ready and exit 0 on a 200, 1 otherwise.

The port is PORT, else the catalogue port of the service named in the container's command
(`quantum-trader serve <name>`, read from /proc/1/cmdline). HEALTHCHECK_PATH picks another
endpoint (e.g. /health/live). Standard library only, so it runs in the slim image as is.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path


def service_port() -> int:
    explicit = os.environ.get("PORT", "").strip()
    if explicit:
        return int(explicit)
    from backend.infra.service import service_spec

    argv = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    name = argv[argv.index(b"serve") + 1].decode()
    return service_spec(name).port


def main() -> int:
    path = os.environ.get("HEALTHCHECK_PATH", "/health/ready")
    url = f"http://127.0.0.1:{service_port()}{path}"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
