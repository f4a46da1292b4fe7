"""HTTP/1.1 keep-alive load generator: N connections, each sending requests back to back.

Run in its own process (pinned to another core than the server) so the load costs the server
nothing. Prints one JSON object: requests, seconds, rps, p50_ms, p99_ms, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


async def _worker(
    host: str, port: int, path: str, stop_at: float, warm_until: float, lat: list[float]
) -> tuple[int, int, int]:
    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    done = errors = sent = 0
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            t1 = time.perf_counter()
            sent += 1
            if t0 >= warm_until:
                if status == 200:
                    done += 1
                    lat.append(t1 - t0)
                else:
                    errors += 1
    finally:
        writer.close()
    return done, errors, sent


async def run(
    host: str, port: int, path: str, seconds: float, warmup: float, conns: int
) -> dict[str, float]:
    start = time.perf_counter()
    warm_until = start + warmup
    stop_at = warm_until + seconds
    lat: list[float] = []
    results = await asyncio.gather(
        *(_worker(host, port, path, stop_at, warm_until, lat) for _ in range(conns))
    )
    done = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    sent = sum(r[2] for r in results)
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000.0 if lat else float("nan")

    return {
        "requests": done,
        "sent": sent,
        "errors": errors,
        "seconds": seconds,
        "rps": done / seconds,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/ping")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(
        run(args.host, args.port, args.path, args.seconds, args.warmup, args.connections)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
