"""`python -m bench`: every benchmark of the project, one after the other."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("bench.bench_http", "bench.bench_eventbus", "bench.halt_window")


def main() -> int:
    selected = sys.argv[1:] or [name.rsplit(".", 1)[1] for name in BENCHMARKS]
    status = 0
    for module_name in BENCHMARKS:
        if module_name.rsplit(".", 1)[1] not in selected:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            print(f"{module_name}: not available ({exc})")
            continue
        print(f"== {module_name} ==", flush=True)
        status |= module.main([]) or 0
    return status


if __name__ == "__main__":
    raise SystemExit(main())
