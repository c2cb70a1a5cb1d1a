"""Figures of the reliability scenarios: each test records one row; `table` prints them all."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

RESULTS = Path(os.environ.get("RUNLET_RELIABILITY_RESULTS", "bench-results/reliability.jsonl"))


def record(
    scenario: str,
    load: str,
    *,
    lost: int,
    duplicated: int,
    recovery_s: float | None,
    note: str = "",
) -> None:
    """Append one scenario's figures (and print them, so the test's output shows them)."""
    row = {
        "scenario": scenario,
        "load": load,
        "lost": lost,
        "duplicated": duplicated,
        "recovery_s": None if recovery_s is None else round(recovery_s, 2),
        "note": note,
        "at": time.time(),
    }
    print(f"\nRELIABILITY {json.dumps(row)}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as out:
        out.write(json.dumps(row) + "\n")


def table(path: Path = RESULTS) -> str:
    """The latest row of every scenario as an aligned table."""
    rows: dict[str, dict[str, object]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            rows[str(row["scenario"])] = row
    header = ["scenario", "load", "lost", "duplicated", "recovery (s)", "note"]
    body = [
        [
            str(r["scenario"]),
            str(r["load"]),
            str(r["lost"]),
            str(r["duplicated"]),
            "-" if r["recovery_s"] is None else str(r["recovery_s"]),
            str(r["note"]),
        ]
        for r in sorted(rows.values(), key=lambda r: str(r["scenario"]))
    ]
    widths = [max(len(c) for c in col) for col in zip(header, *body, strict=False)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)).rstrip()
        for line in [header, ["-" * w for w in widths], *body]
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
    sys.exit(0)
