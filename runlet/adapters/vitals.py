"""A device's vitals for its heartbeat: CPU %, memory used/total, load, uptime, temperature.

Read from Linux's /proc (stat, meminfo, loadavg, uptime) and /sys/class/thermal (a Raspberry
Pi's SoC sensor is thermal_zone0, in millidegrees). CPU % is the busy share of the time since
the previous sample, so the first sample has none. On another system, or where a file is
missing or unreadable, that vital is None: a heartbeat never fails for want of a number.
Reading is a few small files, cheap enough for every heartbeat.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from runlet import __version__
from runlet.protocol.messages import NodeHeartbeat

MAX_READ = 64 * 1024  # /proc/stat on a large machine is a few KiB


@dataclass(frozen=True, slots=True)
class Vitals:
    """One sample; every field None when it could not be read."""

    cpu_percent: float | None = None
    mem_used: int | None = None  # bytes: total minus available
    mem_total: int | None = None
    load1: float | None = None
    uptime: float | None = None  # seconds since boot
    temperature: float | None = None  # degrees Celsius, the hottest zone


class VitalsProbe:
    """Samples vitals; keeps the previous CPU counters to turn them into a percentage."""

    def __init__(self, proc: Path = Path("/proc"), sys: Path = Path("/sys")) -> None:
        self.proc = proc
        self.thermal = sys / "class" / "thermal"
        self._cpu: tuple[int, int] | None = None  # (busy, total) jiffies at the last sample

    def sample(self) -> Vitals:
        used, total = self._memory()
        return Vitals(
            cpu_percent=self._cpu_percent(),
            mem_used=used,
            mem_total=total,
            load1=self._load(),
            uptime=self._uptime(),
            temperature=self._temperature(),
        )

    def _read(self, path: Path) -> str | None:
        try:
            with path.open("rb") as f:
                return f.read(MAX_READ).decode("ascii", "replace")
        except OSError:
            return None

    def _cpu_percent(self) -> float | None:
        text = self._read(self.proc / "stat")
        if text is None or not text.startswith("cpu "):
            return None
        try:
            ticks = [int(v) for v in text.splitlines()[0].split()[1:]]
        except ValueError:
            return None
        if len(ticks) < 4:
            return None
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        now = (sum(ticks) - idle, sum(ticks))
        before, self._cpu = self._cpu, now
        if before is None or now[1] <= before[1]:
            return None
        busy = (now[0] - before[0]) / (now[1] - before[1])
        return round(min(max(busy, 0.0), 1.0) * 100, 1)

    def _memory(self) -> tuple[int | None, int | None]:
        text = self._read(self.proc / "meminfo")
        if text is None:
            return None, None
        fields: dict[str, int] = {}
        for line in text.splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                fields[name] = int(parts[0]) * 1024  # kB
        total, available = fields.get("MemTotal"), fields.get("MemAvailable")
        if total is None or available is None or not 0 <= available <= total:
            return None, total
        return total - available, total

    def _load(self) -> float | None:
        text = self._read(self.proc / "loadavg")
        if text is not None:
            with contextlib.suppress(ValueError, IndexError):
                return _finite(float(text.split()[0]))
        try:
            return _finite(os.getloadavg()[0])
        except (OSError, AttributeError):  # not on Windows
            return None

    def _uptime(self) -> float | None:
        text = self._read(self.proc / "uptime")
        if text is None:
            return None
        try:
            return _finite(float(text.split()[0]))
        except (ValueError, IndexError):
            return None

    def _temperature(self) -> float | None:
        try:
            zones = sorted(self.thermal.glob("thermal_zone*/temp"))
        except OSError:
            return None
        readings = []
        for zone in zones[:32]:
            text = self._read(zone)
            with contextlib.suppress(ValueError, TypeError):
                celsius = int((text or "").strip()) / 1000
                if -60 <= celsius <= 200:  # a sensor that reports nonsense is left out
                    readings.append(celsius)
        return round(max(readings), 1) if readings else None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) and value >= 0 else None


def heartbeat(
    node: str, at: float, tags: Iterable[str], counts: Mapping[str, int], vitals: Vitals
) -> NodeHeartbeat:
    """This node's heartbeat: its version and platform, its running and queued jobs, `vitals`."""
    return NodeHeartbeat(
        node,
        at,
        __version__,
        f"{platform.system()}-{platform.machine()}",
        tuple(tags),
        counts.get("running", 0),
        counts.get("queued", 0),
        vitals.cpu_percent,
        vitals.mem_used,
        vitals.mem_total,
        vitals.load1,
        vitals.uptime,
        vitals.temperature,
    )
