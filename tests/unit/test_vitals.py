"""Vitals for the heartbeat, read from a /proc and /sys laid out by the test (and the real ones),
and the heartbeat fields that carry them, with broken and hostile values."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from runlet.adapters.vitals import Vitals, VitalsProbe
from runlet.errors import ProtocolError
from runlet.protocol import wire
from runlet.protocol.messages import NodeHeartbeat

MEMINFO = "MemTotal:        8000000 kB\nMemFree:          500000 kB\nMemAvailable:    6000000 kB\n"


def board(
    root: Path,
    *,
    stat: str = "cpu  100 0 100 800 0 0 0 0 0 0\n",
    zones: dict[str, str] | None = None,
) -> VitalsProbe:
    """A fake board: /proc files and thermal zones under `root`."""
    proc, sys = root / "proc", root / "sys"
    proc.mkdir(parents=True, exist_ok=True)
    (proc / "stat").write_text(stat)
    (proc / "meminfo").write_text(MEMINFO)
    (proc / "loadavg").write_text("0.42 0.30 0.20 1/123 4567\n")
    (proc / "uptime").write_text("3600.25 7000.00\n")
    zones = {"thermal_zone0": "48312\n"} if zones is None else zones
    for name, text in zones.items():
        zone = sys / "class" / "thermal" / name
        zone.mkdir(parents=True, exist_ok=True)
        (zone / "temp").write_text(text)
    return VitalsProbe(proc, sys)


def test_a_pi_like_board_reads_whole(tmp_path: Path) -> None:
    """Memory, load, uptime and the SoC temperature; no CPU % before a second sample."""
    vitals = board(tmp_path).sample()
    assert vitals.mem_total == 8_000_000 * 1024
    assert vitals.mem_used == 2_000_000 * 1024
    assert (vitals.load1, vitals.uptime, vitals.temperature) == (0.42, 3600.25, 48.3)
    assert vitals.cpu_percent is None


def test_cpu_percent_is_the_busy_share_since_the_last_sample(tmp_path: Path) -> None:
    """200 busy of 1000 jiffies, then 300 busy of the next 400: 75 %."""
    probe = board(tmp_path)
    probe.sample()
    (tmp_path / "proc" / "stat").write_text("cpu  300 0 200 900 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
    assert probe.sample().cpu_percent == 75.0


def test_counters_that_went_backwards_give_no_cpu_percent(tmp_path: Path) -> None:
    """A counter reset (or a fake one) is no reading, never a negative or huge percentage."""
    probe = board(tmp_path)
    probe.sample()
    (tmp_path / "proc" / "stat").write_text("cpu  1 0 1 1 0\n")
    assert probe.sample().cpu_percent is None


def test_the_hottest_sane_zone_counts(tmp_path: Path) -> None:
    """Several zones: the hottest; a zone saying nonsense or garbage is left out."""
    zones = {
        "thermal_zone0": "41000",
        "thermal_zone1": "55500",
        "thermal_zone2": "999999999",
        "thermal_zone3": "hot",
        "thermal_zone4": "",
    }
    assert board(tmp_path, zones=zones).sample().temperature == 55.5


def test_no_sensor_no_temperature(tmp_path: Path) -> None:
    """A board without /sys/class/thermal has no temperature, and everything else."""
    probe = board(tmp_path, zones={})
    vitals = probe.sample()
    assert vitals.temperature is None
    assert vitals.mem_total is not None


@pytest.mark.parametrize(
    "stat", ["", "garbage", "cpu  a b c d\n", "cpu  1 2\n", "intr 1 2 3\n", "\x00" * 100]
)
def test_a_broken_stat_is_no_cpu_reading(tmp_path: Path, stat: str) -> None:
    """Truncated or garbled /proc/stat: no CPU %, the rest still read."""
    probe = board(tmp_path, stat=stat)
    probe.sample()
    vitals = probe.sample()
    assert vitals.cpu_percent is None
    assert vitals.load1 == 0.42


def test_broken_files_are_none_not_errors(tmp_path: Path) -> None:
    """Garbage in every file gives Nones (load may come from os.getloadavg); nothing raises."""
    probe = board(tmp_path)
    for name, text in {
        "meminfo": "MemTotal: lots\nMemAvailable: 9 kB\n",
        "loadavg": "nan\n",
        "uptime": "-5 1\n",
    }.items():
        (tmp_path / "proc" / name).write_text(text)
    vitals = probe.sample()
    assert (vitals.mem_used, vitals.mem_total, vitals.uptime) == (None, None, None)
    assert vitals.load1 is None or math.isfinite(vitals.load1)


def test_a_machine_without_proc_reads_nothing_and_does_not_fail(tmp_path: Path) -> None:
    """No /proc at all (macOS, Windows): Nones, except a load average the OS gives."""
    vitals = VitalsProbe(tmp_path / "nothing", tmp_path / "nothing").sample()
    assert replace(vitals, load1=None) == Vitals()


def test_this_machine_reads_its_own_vitals() -> None:
    """On the Linux machine running the tests: memory, load and uptime are there."""
    probe = VitalsProbe()
    probe.sample()
    vitals = probe.sample()
    assert vitals.mem_total is not None
    assert vitals.mem_used is not None
    assert 0 <= vitals.mem_used <= vitals.mem_total
    assert vitals.uptime is not None
    assert vitals.uptime > 0
    assert vitals.load1 is not None


def beat(**vitals: object) -> NodeHeartbeat:
    return NodeHeartbeat("edge-1", 1.0, "0.1.0", "Linux-aarch64", **vitals)  # type: ignore[arg-type]  # the tests pass wrong types on purpose


def test_vitals_travel_in_the_heartbeat() -> None:
    """Every vital survives the codec; a heartbeat without them (an older daemon) still decodes."""
    full = beat(cpu_percent=3.5, mem_used=1, mem_total=2, load1=0.1, uptime=9.0, temperature=-3.0)
    assert wire.decode(wire.encode(full)) == full
    assert wire.decode(wire.encode(beat())) == beat()


@pytest.mark.parametrize(
    "vitals",
    [
        {"cpu_percent": -1.0},
        {"cpu_percent": 100.5},
        {"cpu_percent": math.nan},
        {"mem_used": -1},
        {"mem_used": 5, "mem_total": 4},
        {"load1": math.inf},
        {"uptime": -0.5},
        {"temperature": 1000.0},
        {"temperature": math.nan},
    ],
)
def test_impossible_vitals_are_refused(vitals: dict[str, object]) -> None:
    """Out of range or not finite: the heartbeat is invalid (and dead-lettered on the wire)."""
    with pytest.raises(ValueError, match=r"range|exceed"):
        beat(**vitals)


@pytest.mark.parametrize("value", ["hot", b"\x01", [1], True, math.nan, -400.0])
def test_bad_vitals_on_the_wire_are_a_protocol_error(value: object) -> None:
    """A vital of the wrong type or out of range in a message from the broker is refused."""
    import msgpack  # the test forges a raw message, as a hostile peer would

    raw = msgpack.unpackb(wire.encode(beat()), raw=False)
    raw["temperature"] = value
    with pytest.raises(ProtocolError):
        wire.decode(msgpack.packb(raw, use_bin_type=True))
