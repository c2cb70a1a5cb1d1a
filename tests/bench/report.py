"""The benchmark's output: one table (median and spread, Runlet, baseline, ratio, target) + JSON.

A `Figure` is one number per repetition; the table shows its median and its min-max spread.
A `Target` is checked on medians and only reported (PASS/MISS): the bench never fails
because a target is missed.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

TargetKind = Literal["ratio_max", "ratio_min", "abs_max", "abs_min"]


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured quantity, one sample per repetition."""

    samples: tuple[float, ...]

    @classmethod
    def of(cls, values: list[float] | tuple[float, ...]) -> Figure:
        if not values:
            raise ValueError("a figure needs at least one sample")
        return cls(tuple(float(v) for v in values))

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples))

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def text(self) -> str:
        if len(self.samples) == 1:
            return fmt(self.median)
        return f"{fmt(self.median)} [{fmt(self.low)}-{fmt(self.high)}]"

    def as_dict(self) -> dict[str, Any]:
        return {
            "median": round(self.median, 6),
            "min": round(self.low, 6),
            "max": round(self.high, 6),
            "samples": [round(v, 6) for v in self.samples],
        }


@dataclass(frozen=True, slots=True)
class Target:
    """A goal for Runlet's median: absolute, or relative to the row's baseline."""

    kind: TargetKind
    value: float
    text: str

    def met(self, runlet: float, baseline: float | None) -> bool | None:
        match self.kind:
            case "abs_max":
                return runlet <= self.value
            case "abs_min":
                return runlet >= self.value
            case "ratio_max" if baseline:
                return runlet / baseline <= self.value
            case "ratio_min" if baseline:
                return runlet / baseline >= self.value
        return None


@dataclass(slots=True)
class Row:
    """One line of the table."""

    number: int
    measurement: str
    unit: str
    runlet: Figure | None
    baseline_name: str = ""
    baseline: Figure | None = None
    target: Target | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.runlet is None or self.baseline is None or self.baseline.median == 0:
            return None
        return self.runlet.median / self.baseline.median

    @property
    def verdict(self) -> str:
        if self.target is None or self.runlet is None:
            return ""
        met = self.target.met(self.runlet.median, self.baseline.median if self.baseline else None)
        return "" if met is None else ("PASS" if met else "MISS")

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "measurement": self.measurement,
            "unit": self.unit,
            "runlet": self.runlet.as_dict() if self.runlet else None,
            "baseline_name": self.baseline_name or None,
            "baseline": self.baseline.as_dict() if self.baseline else None,
            "ratio": round(self.ratio, 4) if self.ratio is not None else None,
            "target": self.target.text if self.target else None,
            "result": self.verdict or None,
            "note": self.note or None,
        }


@dataclass(slots=True)
class Section:
    """What one measurement module returns: its rows and its raw details."""

    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def fmt(value: float) -> str:
    """Three significant digits or so, without scientific notation."""
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


COLUMNS = (
    "#",
    "measurement",
    "unit",
    "Runlet median [min-max]",
    "baseline",
    "baseline median [min-max]",
    "ratio",
    "target",
    "result",
)


def render_table(rows: list[Row]) -> str:
    cells = [
        [
            str(row.number),
            row.measurement,
            row.unit,
            row.runlet.text() if row.runlet else "—",
            row.baseline_name or "—",
            row.baseline.text() if row.baseline else "",
            f"{row.ratio:.2f}x" if row.ratio is not None else "",
            row.target.text if row.target else "",
            row.verdict,
        ]
        for row in rows
    ]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(COLUMNS)]
    line = " | ".join(h.ljust(w) for h, w in zip(COLUMNS, widths, strict=True))
    rule = "-+-".join("-" * w for w in widths)
    body = [" | ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    notes = [f"  #{row.number} {row.measurement}: {row.note}" for row in rows if row.note]
    text = "\n".join([line, rule, *body])
    if notes:
        text += "\n\nNotes:\n" + "\n".join(notes)
    return text


def render_machine(machine: dict[str, Any]) -> str:
    width = max(len(k) for k in machine)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in machine.items())


@dataclass(slots=True)
class Results:
    """The whole run: machine, rows, details per measurement, errors."""

    machine: dict[str, Any]
    quick: bool
    started_at: float
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    finished_at: float = 0.0

    def render(self) -> str:
        head = "Runlet benchmarks" + (
            " (BENCH_QUICK: smoke counts, not figures)" if self.quick else ""
        )
        parts = [head, "", "Machine:", render_machine(self.machine), "", render_table(self.rows)]
        if self.durations:
            spent = ", ".join(f"#{k} {v:.0f} s" for k, v in self.durations.items())
            parts += ["", f"Time per measurement: {spent}; total {self.total:.0f} s"]
        if self.errors:
            parts += ["", "ERRORS (these measurements broke):"]
            parts += [f"  #{k}: {v}" for k, v in self.errors.items()]
        return "\n".join(parts)

    @property
    def total(self) -> float:
        return self.finished_at - self.started_at

    def as_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "quick": self.quick,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": round(self.total, 1),
            "seconds_per_measurement": {k: round(v, 1) for k, v in self.durations.items()},
            "rows": [row.as_dict() for row in self.rows],
            "details": self.details,
            "errors": self.errors,
        }

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2, default=str) + "\n")
