"""#7 One-shot: `runlet run --on NODE -- true` as a whole process, against `ssh host true`.

- Runlet: a real `runlet` process (the console script of this checkout's .venv) with a client
  config, running `true` on a daemon that is a real `runlet start` process; timed from the
  exec to the exit, so interpreter start, imports, connecting, the job's round trip and the
  clean-up all count.
- `ssh -T` to the bench's own sshd on 127.0.0.1 running `true` (key auth, no PTY): what a
  user would type for the same thing.

Repetitions alternate (Runlet, ssh, Runlet, …) so background load hits both alike; the first
of each is a warm-up and not counted (page cache, the broker's first connection of a user).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.bench.common import Bench
from tests.bench.report import Figure, Row, Section, Target

NODE = "edge-1"


def run(bench: Bench) -> Section:
    reps = bench.pick(15, 4)
    fleet = bench.fleet("oneshot")
    fleet.start_process(NODE)
    config = fleet.config_file("laptop", role="client")
    runlet = [str(Path(sys.executable).with_name("runlet")), "--config", str(config)]
    argv = [*runlet, "run", "--on", NODE, "--", "true"]
    ssh = bench.sshd().argv("true", tty=False)
    times: dict[str, list[float]] = {"runlet": [], "ssh": []}
    for rep in range(reps + 1):
        for name, command in (("runlet", argv), ("ssh", ssh)):
            elapsed = timed(command)
            if rep > 0:
                times[name].append(elapsed)
    note = (
        f"{reps} runs each, alternating, after one warm-up; whole process, exec to exit; "
        "spread = min-max of the runs"
    )
    rows = [
        Row(7, "one-shot `run --on NODE -- true`", "ms",
            Figure.of([t * 1000 for t in times["runlet"]]), "ssh -T 127.0.0.1 true",
            Figure.of([t * 1000 for t in times["ssh"]]), Target("ratio_max", 0.5, "≤ 0.5x ssh"),
            note),
    ]  # fmt: skip
    details: dict[str, Any] = {
        "runs": reps,
        "runlet_ms": [round(t * 1000, 2) for t in times["runlet"]],
        "ssh_ms": [round(t * 1000, 2) for t in times["ssh"]],
    }
    return Section(rows, details)


def timed(argv: list[str]) -> float:
    """Seconds from starting `argv` to its exit; it must succeed."""
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False, env=os.environ)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {done.returncode}: {done.stderr[-400:]!r}")
    return elapsed
