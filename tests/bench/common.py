"""What every measurement shares: the run's settings and temp folder, fleets, sshd, /proc reads.

A `Bench` owns every resource a measurement starts (fleets of daemons, the sshd, Celery
workers) through an ExitStack, so they are stopped and the broker namespaces deleted even
when a measurement breaks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import platform
import select
import statistics
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from runlet.protocol.messages import JobStateChanged
from tests.bench.sshd import Sshd
from tests.support import MANAGEMENT_URL, Fleet

T = TypeVar("T")
CLK_TCK = os.sysconf("SC_CLK_TCK")
DSN = os.environ.get("RUNLET_TEST_DATABASE", "postgresql://postgres@127.0.0.1:5432/postgres")


@dataclass
class Bench:
    """One benchmark run's settings and resources."""

    quick: bool
    root: Path
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _sshd: Sshd | None = None
    _fleets: int = 0

    def pick(self, full: T, quick: T) -> T:
        """The full-run or the quick-run value of a count."""
        return quick if self.quick else full

    def fleet(self, name: str) -> Fleet:
        """A fresh Runlet user with its own folder; closed (daemons stopped, queues deleted)."""
        self._fleets += 1
        folder = self.root / f"{name}-{self._fleets}"
        folder.mkdir(parents=True)
        fleet = Fleet(folder, user=f"bench{name}{os.getpid()}x{self._fleets}")
        self.stack.callback(fleet.close)
        return fleet

    def sshd(self) -> Sshd:
        """The run's throwaway OpenSSH server, started on first use."""
        if self._sshd is None:
            self._sshd = self.stack.enter_context(Sshd(self.root / "sshd"))
        return self._sshd

    def close(self) -> None:
        self.stack.close()


# -- statistics ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank, as `runlet ping` reports it."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_summary(seconds: list[float]) -> dict[str, float | int]:
    ms = [s * 1000 for s in seconds]
    return {
        "count": len(ms),
        "min_ms": round(min(ms), 4),
        "p50_ms": round(percentile(ms, 0.5), 4),
        "p90_ms": round(percentile(ms, 0.9), 4),
        "p99_ms": round(percentile(ms, 0.99), 4),
        "max_ms": round(max(ms), 4),
        "mean_ms": round(statistics.fmean(ms), 4),
    }


# -- /proc -----------------------------------------------------------------------------------


def vm_rss_kib(pid: int) -> int:
    """Resident set of one process (not its children), KiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process so far, seconds, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, kernel, Python and the service versions, for the report's head."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "rabbitmq": _rabbitmq_version(),
        "postgresql": _postgres_version(),
        "openssh": _command_version(["ssh", "-V"]),
        "celery": _celery_version(),
        "load_average_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    return info


def _rabbitmq_version() -> str:
    try:
        overview = _management("GET", "/api/overview")
    except OSError as exc:
        return f"unknown ({exc})"
    return f"{overview.get('rabbitmq_version')} (Erlang {overview.get('erlang_version')})"


def _postgres_version() -> str:
    async def ask() -> str:
        import asyncpg

        conn = await asyncpg.connect(DSN, timeout=5)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    try:
        return asyncio.run(ask())
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


def _command_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    except OSError:
        return "not installed"
    return (done.stdout or done.stderr).decode(errors="replace").strip()


def _celery_version() -> str:
    try:
        from importlib.metadata import version

        return version("celery")
    except Exception:
        return "not installed"


def _management(method: str, path: str) -> Any:
    """One call to RabbitMQ's management API on 127.0.0.1 (guest)."""
    request = urllib.request.Request(f"{MANAGEMENT_URL}{path}", method=method)  # noqa: S310
    token = base64.b64encode(b"guest:guest").decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        body = response.read()
    return json.loads(body) if body else None


def management_get(path: str) -> Any:
    return _management("GET", path)


def management_delete(path: str) -> None:
    """Delete a queue or exchange; one that is already gone is fine."""
    with contextlib.suppress(OSError):
        _management("DELETE", path)


# -- helpers for the interactive measurements ---------------------------------------------------


def read_until(fd: int, need: int, timeout: float, buf: bytearray | None = None) -> bytearray:
    """Read from `fd` until `need` bytes in total are in `buf`; raises TimeoutError."""
    out = buf if buf is not None else bytearray()
    end = time.monotonic() + timeout
    while len(out) < need:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"read {len(out)} of {need} bytes in {timeout} s")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError(f"EOF after {len(out)} of {need} bytes")
            out += chunk
    return out


def read_marker(fd: int, marker: bytes, timeout: float = 30.0) -> bytes:
    """Read from `fd` until `marker` has been seen; returns everything read."""
    out = bytearray()
    end = time.monotonic() + timeout
    while marker not in out:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {marker!r} in {bytes(out[-200:])!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError(f"EOF before {marker!r}: {bytes(out[-200:])!r}")
            out += chunk
    return bytes(out)


async def wait_state(
    inbox: asyncio.Queue[object], job_id: str, states: set[str], timeout: float
) -> JobStateChanged:
    """Skip messages until `job_id` reaches one of `states`; a terminal one raises."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await inbox.get()
            if isinstance(msg, JobStateChanged) and msg.job_id == job_id:
                if msg.state in states:
                    return msg
                if msg.terminal:
                    raise RuntimeError(f"job {job_id} ended early: {msg.state} {msg.detail}")
