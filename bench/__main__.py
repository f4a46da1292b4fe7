"""`python -m bench [NAME...]`: every benchmark of the project (or the ones named), in turn."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = (
    "bench.bench_http",
    "bench.bench_eventbus",
    "bench.halt_window",
    "bench.rl_training",
    "bench.clm_drift",
    "bench.startup",
    "bench.collector",
    "bench.viewer",
    "bench.order_path",
)
NAMES = tuple(module.rsplit(".", 1)[1] for module in BENCHMARKS)


def main(argv: list[str] | None = None) -> int:
    selected = (sys.argv[1:] if argv is None else argv) or list(NAMES)
    unknown = [name for name in selected if name not in NAMES]
    if unknown:
        print(
            f"unknown benchmark {', '.join(unknown)}; the benchmarks are: {', '.join(NAMES)}",
            file=sys.stderr,
        )
        return 2
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
