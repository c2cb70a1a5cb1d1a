"""Runlet's benchmark suite: `python -m tests.bench.run [--quick] [--only 1,2]`.

It measures Runlet against its anchors (DESIGN targets; see each bench_*.py), prints one
table and writes bench-results/results.json. Figures, never timed assertions: a missed
target is reported as MISS and the run still succeeds; the exit status is non-zero only when a
measurement broke. `make bench` runs it after starting RabbitMQ and PostgreSQL;
`make bench BENCH_QUICK=1` is a smoke run with small counts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from runlet import logging as runlet_logging
from tests.bench import (
    bench_fleet,
    bench_footprint,
    bench_jobs,
    bench_keystroke,
    bench_oneshot,
    bench_output,
    bench_paste,
)
from tests.bench.common import Bench, machine_info
from tests.bench.report import Results, Section
from tests.support import REPO

MEASUREMENTS: dict[int, tuple[str, Callable[[Bench], Section]]] = {
    1: ("keystroke echo", bench_keystroke.run),
    2: ("output throughput", bench_output.run),
    3: ("paste", bench_paste.run),
    4: ("job throughput", bench_jobs.run),
    5: ("daemon footprint", bench_footprint.run),
    6: ("fleet", bench_fleet.run),
    7: ("one-shot", bench_oneshot.run),
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("BENCH_QUICK", "") not in ("", "0"),
        help="small counts for a smoke run (also BENCH_QUICK=1)",
    )
    parser.add_argument("--only", default="", help="comma-separated measurement numbers, e.g. 1,2")
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench-results", help="folder for results.json"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    wanted = sorted(MEASUREMENTS)
    if args.only:
        wanted = sorted({int(n) for n in args.only.split(",") if n.strip()})
        unknown = [n for n in wanted if n not in MEASUREMENTS]
        if unknown:
            print(f"no such measurement: {unknown}; choose from {sorted(MEASUREMENTS)}")
            return 64
    args.out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="runlet-bench-"))
    try:
        with (args.out / "bench.log").open("a") as log_file:
            runlet_logging.configure("warning", "json", stream=log_file)
            results = run_all(wanted, args.quick, root)
    finally:
        runlet_logging.configure("warning", "json")  # the log file is closed now
        if args.keep:
            print(f"temporary folder kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(results.render())
    path = args.out / "results.json"
    results.write_json(path)
    print(f"\nJSON: {path}")
    return 1 if results.errors else 0


def run_all(wanted: list[int], quick: bool, root: Path) -> Results:
    """Run the measurements in turn; one that breaks is recorded and the others still run."""
    results = Results(machine_info(), quick, time.time())
    print("Runlet benchmarks" + (" - quick smoke run" if quick else ""), flush=True)
    for key, value in results.machine.items():
        print(f"  {key}: {value}", flush=True)
    for number in wanted:
        name, measure = MEASUREMENTS[number]
        print(f"#{number} {name} ...", flush=True)
        bench = Bench(quick, root / f"m{number}")
        bench.root.mkdir()
        started = time.monotonic()
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        try:
            section = measure(bench)
            section.details["load_average_at_start"] = load
        except Exception as exc:
            results.errors[str(number)] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        else:
            results.rows += section.rows
            results.details[str(number)] = section.details
        finally:
            try:
                bench.close()
            except Exception as exc:
                results.errors.setdefault(str(number), f"clean-up failed: {exc!r}")
                traceback.print_exc()
            results.durations[str(number)] = time.monotonic() - started
            print(f"#{number} {name}: {results.durations[str(number)]:.0f} s", flush=True)
    results.finished_at = time.time()
    results.machine["load_average_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return results


if __name__ == "__main__":
    sys.exit(main())
