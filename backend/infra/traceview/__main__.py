"""`python -m backend.infra.traceview [--host H] [--port P] [--store FILE]`: the collector and
viewer without the `quantum-trader` command (no dashboard); see `quantum-trader traceview`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._serve import OTLP_GRPC_PORT, OTLP_HTTP_PORT, VIEWER_PORT, Retention, serve


def main() -> None:
    parser = argparse.ArgumentParser(description="Embedded OTLP collector and trace viewer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=VIEWER_PORT)
    parser.add_argument("--grpc-port", type=int, default=OTLP_GRPC_PORT, help="0: none")
    parser.add_argument("--otlp-http-port", type=int, default=OTLP_HTTP_PORT, help="0: none")
    parser.add_argument("--store", type=Path, default=Path("var/traces/spans.sqlite"))
    defaults = Retention()
    parser.add_argument("--max-age-h", type=float, default=defaults.max_age_h)
    parser.add_argument("--max-mb", type=float, default=defaults.max_mb)
    parser.add_argument("--tick-sample-rate", type=float, default=defaults.tick_sample_rate)
    parser.add_argument("--noise-sample-rate", type=float, default=defaults.noise_sample_rate)
    args = parser.parse_args()
    serve(
        args.store,
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port or None,
        otlp_http_port=args.otlp_http_port or None,
        retention=Retention(
            args.max_age_h, args.max_mb, args.tick_sample_rate, args.noise_sample_rate
        ),
    )


if __name__ == "__main__":
    main()
