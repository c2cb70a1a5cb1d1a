"""Reading a stored log for a person (client.logview.show_log), on real encrypted logs.

Logs are built in tmp_path with the real fleet key and `LogWriter`; damage is made by editing
sealed bytes or the file itself. Play mode gets a fake `sleep` that records each pause.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runlet.adapters.logfile import FLAG_FINAL, MAX_RECORD, LogWriter, Record, seal_output
from runlet.client.logview import Verdict, show_log
from runlet.protocol.crypto import FleetKey, JobKey, Kind

JOB = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
HEADER_SIZE = 4 + 1 + 2 + len(JOB)
NOT_AUTHENTIC = "did not authenticate (altered, or from another log)"
NO_FINAL = "the log ends without its FINAL chunk: incomplete (still running, or cut off)"


@dataclass
class Screen:
    """What show_log wrote, noted and paused, in order."""

    events: list[tuple[str, bytes | str | float]] = field(default_factory=list)

    def write(self, data: bytes) -> None:
        self.events.append(("write", data))

    def note(self, text: str) -> None:
        self.events.append(("note", text))

    def sleep(self, seconds: float) -> None:
        self.events.append(("sleep", seconds))

    @property
    def out(self) -> bytes:
        return b"".join(e for _, e in self.events if isinstance(e, bytes))

    @property
    def notes(self) -> list[str]:
        return [e for _, e in self.events if isinstance(e, str)]

    @property
    def pauses(self) -> list[float]:
        return [float(e) for _, e in self.events if isinstance(e, int | float)]


@pytest.fixture
def fleet() -> FleetKey:
    return FleetKey.generate()


@pytest.fixture
def key(fleet: FleetKey) -> JobKey:
    return fleet.job_key(JOB)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "vault" / f"{JOB}.rlog"


def data(seq: int) -> bytes:
    return f"line {seq}\r\n".encode()


def chunk(key: JobKey, seq: int, *, t: float | None = None, final: bool = False) -> Record:
    when = 1000.0 + seq if t is None else t
    flags, sealed = seal_output(key, seq, when, data(seq), final=final)
    return Record(seq, flags, sealed)


def chunks(key: JobKey, count: int, *, final: bool = True) -> list[Record]:
    return [chunk(key, seq, final=final and seq == count - 1) for seq in range(count)]


def write_log(path: Path, records: list[Record], job_id: str = JOB) -> None:
    with LogWriter(path, job_id) as writer:
        for record in records:
            writer.append(record)


def flipped(record: Record, at: int | None = None) -> Record:
    """The same record with one bit of its sealed bytes flipped."""
    sealed = bytearray(record.sealed)
    sealed[len(sealed) // 2 if at is None else at] ^= 0x01
    return Record(record.seq, record.flags, bytes(sealed))


def record_offset(records: list[Record], index: int) -> int:
    """Byte offset in the file where record `index` starts."""
    return HEADER_SIZE + sum(4 + 9 + len(r.sealed) for r in records[:index])


def show(
    path: Path,
    fleet: FleetKey,
    job_id: str = JOB,
    *,
    play_speed: float | None = None,
    max_pause: float = 2.0,
) -> tuple[Verdict, Screen]:
    screen = Screen()
    verdict = show_log(
        path,
        job_id,
        fleet,
        screen.write,
        screen.note,
        play_speed=play_speed,
        max_pause=max_pause,
        sleep=screen.sleep,
    )
    return verdict, screen


# --- intact and incomplete logs --------------------------------------------------------------


def test_intact_log_shown_whole(path: Path, fleet: FleetKey, key: JobKey) -> None:
    """An intact log's output is written unchanged and in order, with nothing noted."""
    write_log(path, chunks(key, 4))
    verdict, screen = show(path, fleet)
    assert screen.out == b"".join(data(n) for n in range(4))
    assert screen.notes == []
    assert verdict == Verdict(chunks=4, bytes=len(screen.out), finished=True, problems=[])
    assert verdict.intact


def test_single_final_chunk(path: Path, fleet: FleetKey, key: JobKey) -> None:
    """A log of one FINAL chunk is complete."""
    write_log(path, [chunk(key, 0, final=True)])
    verdict, screen = show(path, fleet)
    assert verdict.intact
    assert screen.out == data(0)


def test_missing_final(path: Path, fleet: FleetKey, key: JobKey) -> None:
    """A log without FINAL is shown, then reported incomplete; it is not intact."""
    write_log(path, chunks(key, 3, final=False))
    verdict, screen = show(path, fleet)
    assert screen.out == b"".join(data(n) for n in range(3))
    assert verdict.problems == [NO_FINAL]
    assert screen.notes == [NO_FINAL]
    assert not verdict.finished
    assert not verdict.intact


def test_header_only(path: Path, fleet: FleetKey) -> None:
    """A log with a header and no chunk shows nothing and says it is incomplete."""
    write_log(path, [])
    verdict, screen = show(path, fleet)
    assert screen.out == b""
    assert verdict.problems == [NO_FINAL]


# --- chunks that do not authenticate ----------------------------------------------------------


@pytest.mark.parametrize("bad", [0, 1, 2])
def test_flipped_byte_in_one_chunk(path: Path, fleet: FleetKey, key: JobKey, bad: int) -> None:
    """A chunk altered by one bit is skipped and named; every other chunk is still shown."""
    records = chunks(key, 4)
    records[bad] = flipped(records[bad])
    write_log(path, records)
    verdict, screen = show(path, fleet)
    assert screen.out == b"".join(data(n) for n in range(4) if n != bad)
    assert verdict.problems == [f"chunk {bad} {NOT_AUTHENTIC}"]
    assert screen.notes == [f"chunk {bad} {NOT_AUTHENTIC}; skipped — output below resumes after it"]
    assert verdict.chunks == 3
    assert verdict.finished
    assert not verdict.intact


def test_flipped_byte_on_disk(path: Path, fleet: FleetKey, key: JobKey) -> None:
    """A bit flipped in the file inside a chunk's sealed bytes is caught by its AEAD."""
    records = chunks(key, 3)
    write_log(path, records)
    raw = bytearray(path.read_bytes())
    raw[record_offset(records, 1) + 4 + 9 + 20] ^= 0x80
    path.write_bytes(bytes(raw))
    verdict, screen = show(path, fleet)
    assert verdict.problems == [f"chunk 1 {NOT_AUTHENTIC}"]
    assert screen.out == data(0) + data(2)


def test_altered_final_chunk(path: Path, fleet: FleetKey, key: JobKey) -> None:
    """When the FINAL chunk itself is altered the log also counts as incomplete."""
    records = chunks(key, 3)
    records[2] = flipped(records[2])
    write_log(path, records)
    verdict, screen = show(path, fleet)
    assert verdict.problems == [f"chunk 2 {NOT_AUTHENTIC}", NO_FINAL]
    assert screen.out == data(0) + data(1)
    assert not verdict.finished


def test_every_chunk_altered(path: Path, fleet: FleetKey, key: JobKey) -> None:
    """A log whose every chunk is altered shows nothing and lists each chunk."""
    write_log(path, [flipped(r, at=0) for r in chunks(key, 3)])
    verdict, screen = show(path, fleet)
    assert screen.out == b""
    assert verdict.problems[:3] == [f"chunk {n} {NOT_AUTHENTIC}" for n in range(3)]
    assert verdict.chunks == 0


def test_chunk_from_another_job(path: Path, fleet: FleetKey, key: JobKey) -> None:
    """A genuine chunk of another job, spliced in at the same position, is refused."""
    records = chunks(key, 3)
    records[1] = chunk(fleet.job_key(OTHER), 1)
    write_log(path, records)
    verdict, screen = show(path, fleet)
    assert verdict.problems == [f"chunk 1 {NOT_AUTHENTIC}"]
    assert screen.out == data(0) + data(2)


def test_chunk_from_another_fleet(path: Path, fleet: FleetKey, key: JobKey) -> None:
    """A chunk sealed with another fleet key for the same job is refused."""
    records = chunks(key, 3)
    records[1] = chunk(FleetKey.generate().job_key(JOB), 1)
    write_log(path, records)
    verdict, _ = show(path, fleet)
    assert verdict.problems == [f"chunk 1 {NOT_AUTHENTIC}"]


def test_wrong_key_for_whole_log(path: Path, key: JobKey) -> None:
    """Read with another fleet key, no chunk is shown and each is reported."""
    write_log(path, chunks(key, 2))
    verdict, screen = show(path, FleetKey.generate())
    assert screen.out == b""
    assert verdict.problems[:2] == [f"chunk {n} {NOT_AUTHENTIC}" for n in range(2)]


def test_reordered_records(path: Path, fleet: FleetKey, key: JobKey) -> None:
    """Chunks swapped under fresh sequence numbers fail: each chunk's seq is authenticated."""
    records = chunks(key, 3)
    swapped = [
        Record(0, records[1].flags, records[1].sealed),
        Record(1, records[0].flags, records[0].sealed),
        records[2],
    ]
    write_log(path, swapped)
    verdict, screen = show(path, fleet)
    assert verdict.problems == [f"chunk 0 {NOT_AUTHENTIC}", f"chunk 1 {NOT_AUTHENTIC}"]
    assert screen.out == data(2)


def test_final_flag_forged(path: Path, fleet: FleetKey, key: JobKey) -> None:
    """FINAL forged onto a chunk sealed without it is caught: the flags are authenticated."""
    records = chunks(key, 2)
    forged = [
        Record(0, records[0].flags | FLAG_FINAL, records[0].sealed),
    ]
    write_log(path, forged)
    verdict, screen = show(path, fleet)
    assert screen.out == b""
    assert verdict.problems == [f"chunk 0 {NOT_AUTHENTIC}", NO_FINAL]


def test_chunk_without_timestamp(path: Path, fleet: FleetKey, key: JobKey) -> None:
    """An authentic chunk too short to carry its time is reported and skipped, not fatal."""
    records = chunks(key, 3)
    records[1] = Record(1, 0, key.seal(Kind.OUTPUT, 1, b"abc"))
    write_log(path, records)
    verdict, screen = show(path, fleet)
    assert verdict.problems == [f"chunk 1 {NOT_AUTHENTIC}"]
    assert screen.out == data(0) + data(2)


# --- structural damage ----------------------------------------------------------------------


def test_records_out_of_order_on_disk(path: Path, fleet: FleetKey, key: JobKey) -> None:
    """Records physically swapped in the file stop the reading at the first, with its offset."""
    records = chunks(key, 3)
    write_log(path, records)
    raw = path.read_bytes()
    first, second = record_offset(records, 1), record_offset(records, 2)
    path.write_bytes(raw[:HEADER_SIZE] + raw[first:second] + raw[HEADER_SIZE:first] + raw[second:])
    verdict, screen = show(path, fleet)
    assert screen.out == b""
    assert len(verdict.problems) == 1
    assert verdict.problems[0].startswith(f"log damaged at byte {HEADER_SIZE}, after 0 sound")
    assert "missing" in verdict.problems[0]


def test_seq_altered_on_disk(path: Path, fleet: FleetKey, key: JobKey) -> None:
    """A record whose sequence number was changed is a gap: output before it stays shown."""
    records = chunks(key, 3)
    write_log(path, records)
    raw = bytearray(path.read_bytes())
    at = record_offset(records, 1) + 4
    raw[at : at + 8] = struct.pack(">Q", 7)
    path.write_bytes(bytes(raw))
    verdict, screen = show(path, fleet)
    assert screen.out == data(0)
    assert verdict.problems == [
        f"log damaged at byte {record_offset(records, 1)}, after 1 sound chunks: "
        "records 1..6 are missing (next is 7)"
    ]
    assert screen.notes == [verdict.problems[0] + "; what was shown before this point is intact"]


def test_final_flag_set_mid_log(path: Path, fleet: FleetKey, key: JobKey) -> None:
    """FINAL forged on a middle record: that chunk fails, and what follows is damage."""
    records = chunks(key, 3)
    write_log(path, records)
    raw = bytearray(path.read_bytes())
    raw[record_offset(records, 1) + 4 + 8] |= FLAG_FINAL
    path.write_bytes(bytes(raw))
    verdict, screen = show(path, fleet)
    assert screen.out == data(0)
    assert verdict.problems[0] == f"chunk 1 {NOT_AUTHENTIC}"
    assert "bytes follow the final record" in verdict.problems[1]
    assert NO_FINAL not in verdict.problems


@pytest.mark.parametrize("cut", [1, 4, 20])
def test_truncated_log(path: Path, fleet: FleetKey, key: JobKey, cut: int) -> None:
    """A log cut inside its last record shows what came before and names where it breaks."""
    records = chunks(key, 3)
    write_log(path, records)
    path.write_bytes(path.read_bytes()[:-cut])
    verdict, screen = show(path, fleet)
    assert screen.out == data(0) + data(1)
    assert len(verdict.problems) == 1
    assert verdict.problems[0].startswith(f"log damaged at byte {record_offset(records, 2)}")
    assert "cut short" in verdict.problems[0]
    assert not verdict.intact


def test_truncated_length_field(path: Path, fleet: FleetKey, key: JobKey) -> None:
    """A log ending inside a length field is damage, not a silent end."""
    records = chunks(key, 2, final=False)
    write_log(path, records)
    with path.open("ab") as f:
        f.write(b"\x00\x00")
    verdict, screen = show(path, fleet)
    assert screen.out == data(0) + data(1)
    assert "record 2 is cut short" in verdict.problems[0]


def test_oversize_length_field(path: Path, fleet: FleetKey, key: JobKey) -> None:
    """A record claiming more than MAX_RECORD bytes is reported; nothing huge is read."""
    records = chunks(key, 2, final=False)
    write_log(path, records)
    with path.open("ab") as f:
        f.write(struct.pack(">IQB", MAX_RECORD + 1, 2, 0) + b"\0" * 64)
    verdict, screen = show(path, fleet)
    assert screen.out == data(0) + data(1)
    assert f"record 2 claims {MAX_RECORD + 1} bytes" in verdict.problems[0]


# --- files that are not this job's log --------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "says"),
    [
        pytest.param(b"", "is empty", id="empty"),
        pytest.param(b"RL", "too short", id="truncated-header"),
        pytest.param(b"\x7fELF" + b"\0" * 200, "is not a runlet log", id="garbage"),
        pytest.param(b"RLOG\x02\x00\x01x", "format version 2", id="future-version"),
        pytest.param(b"RLOG\x01\xff\xffabc", "truncated or empty job id", id="oversize-job-len"),
        pytest.param(b"RLOG\x01\x00\x02\xff\xfe", "not UTF-8", id="hostile-job-id"),
    ],
)
def test_not_a_log(path: Path, fleet: FleetKey, content: bytes, says: str) -> None:
    """A file that is not a runlet log shows nothing and says why, once."""
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    verdict, screen = show(path, fleet)
    assert screen.out == b""
    assert len(verdict.problems) == 1
    assert says in verdict.problems[0]
    assert screen.notes == verdict.problems
    assert not verdict.intact


def test_another_jobs_log(path: Path, fleet: FleetKey) -> None:
    """Another job's log, even a sound one under this job's name, is refused by name."""
    write_log(path, chunks(fleet.job_key(OTHER), 2), job_id=OTHER)
    verdict, screen = show(path, fleet)
    assert screen.out == b""
    assert verdict.problems == [f"{path} holds the log of job {OTHER!r}, not of job {JOB!r}"]


def test_missing_file(path: Path, fleet: FleetKey) -> None:
    """A log that does not exist is reported, not raised."""
    verdict, screen = show(path, fleet)
    assert verdict.problems == [f"no log at {path}"]
    assert screen.out == b""


def test_folder_instead_of_file(path: Path, fleet: FleetKey) -> None:
    """A folder where the log should be is reported as unreadable, not raised."""
    path.mkdir(parents=True)
    verdict, _ = show(path, fleet)
    assert len(verdict.problems) == 1
    assert str(path) in verdict.problems[0]


# --- play mode --------------------------------------------------------------------------------


def timed(key: JobKey, times: list[float]) -> list[Record]:
    last = len(times) - 1
    return [chunk(key, n, t=t, final=n == last) for n, t in enumerate(times)]


def test_no_pauses_without_play(path: Path, fleet: FleetKey, key: JobKey) -> None:
    """Without play mode nothing sleeps, however far apart the chunks were."""
    write_log(path, timed(key, [0.0, 500.0, 9000.0]))
    _, screen = show(path, fleet)
    assert screen.pauses == []


def test_play_reproduces_gaps(path: Path, fleet: FleetKey, key: JobKey) -> None:
    """At speed 1 each pause is the gap between chunks, taken before the later chunk."""
    write_log(path, timed(key, [100.0, 100.5, 101.25, 101.25]))
    _, screen = show(path, fleet, play_speed=1.0, max_pause=10.0)
    assert screen.pauses == [0.5, 0.75, 0.0]
    kinds = [kind for kind, _ in screen.events]
    assert kinds == ["write", "sleep", "write", "sleep", "write", "sleep", "write"]


def test_play_capped_by_max_pause(path: Path, fleet: FleetKey, key: JobKey) -> None:
    """A long silence in the job is shortened to max_pause."""
    write_log(path, timed(key, [100.0, 100.5, 4000.0]))
    _, screen = show(path, fleet, play_speed=1.0, max_pause=2.0)
    assert screen.pauses == [0.5, 2.0]


@pytest.mark.parametrize(("speed", "expected"), [(2.0, [0.5, 1.5]), (0.5, [2.0, 6.0])])
def test_play_scaled_by_speed(
    path: Path, fleet: FleetKey, key: JobKey, speed: float, expected: list[float]
) -> None:
    """Pauses are the gaps divided by play_speed."""
    write_log(path, timed(key, [10.0, 11.0, 14.0]))
    _, screen = show(path, fleet, play_speed=speed, max_pause=100.0)
    assert screen.pauses == expected


def test_play_clock_going_backwards(path: Path, fleet: FleetKey, key: JobKey) -> None:
    """A chunk stamped earlier than the one before it is shown at once, never a negative pause."""
    write_log(path, timed(key, [100.0, 50.0, 51.0]))
    _, screen = show(path, fleet, play_speed=1.0)
    assert screen.pauses == [0.0, 1.0]


def test_play_gap_spans_a_bad_chunk(path: Path, fleet: FleetKey, key: JobKey) -> None:
    """After a skipped chunk the pause runs from the last chunk shown."""
    records = timed(key, [100.0, 101.0, 103.0])
    records[1] = flipped(records[1])
    write_log(path, records)
    _, screen = show(path, fleet, play_speed=1.0, max_pause=10.0)
    assert screen.pauses == [3.0]


@pytest.mark.parametrize(
    "times",
    [
        pytest.param([0.0, math.nan, 5.0, 6.0], id="nan"),
        pytest.param([0.0, math.inf, 5.0], id="inf"),
        pytest.param([0.0, -math.inf, 5.0], id="minus-inf"),
        pytest.param([-1e308, 1e308, 0.0], id="huge"),
    ],
)
def test_play_hostile_timestamps(
    path: Path, fleet: FleetKey, key: JobKey, times: list[float]
) -> None:
    """Absurd chunk times never produce a pause outside [0, max_pause]."""
    write_log(path, timed(key, times))
    verdict, screen = show(path, fleet, play_speed=1.0, max_pause=2.0)
    assert verdict.intact
    assert len(screen.pauses) == len(times) - 1
    assert all(0.0 <= p <= 2.0 for p in screen.pauses), screen.pauses
