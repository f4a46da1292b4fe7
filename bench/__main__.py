"""`python -m bench [NAME...] [-- OPTIONS]`: every benchmark of the project (or the ones named),
in turn; options (from the first word starting with `-`, a lone `--` dropped) go to the one
benchmark named, e.g. `python -m bench order_path --seconds 5`."""

from __future__ import annotations

import importlib
import sys

from bench._proc import cpu_ticks, machine_line

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


def split(argv: list[str]) -> tuple[list[str], list[str]]:
    """The benchmark names, and the options that follow them (without a separating `--`)."""
    first = next((i for i, word in enumerate(argv) if word.startswith("-")), len(argv))
    options = argv[first:]
    return argv[:first], options[1:] if options[:1] == ["--"] else options


def main(argv: list[str] | None = None) -> int:
    names, options = split(sys.argv[1:] if argv is None else argv)
    selected = names or list(NAMES)
    unknown = [name for name in selected if name not in NAMES]
    if unknown:
        print(
            f"unknown benchmark {', '.join(unknown)}; the benchmarks are: {', '.join(NAMES)}",
            file=sys.stderr,
        )
        return 2
    if options and len(selected) != 1:
        print(
            f"options ({' '.join(options)}) go to one benchmark: name exactly one",
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
        # The same code runs at different speeds at different hours on a shared machine: each
        # benchmark's figures are framed by how fast the machine was before and after.
        print(machine_line("before"), flush=True)
        ticks = cpu_ticks()
        status |= module.main(options) or 0
        print(machine_line("after", ticks), flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
