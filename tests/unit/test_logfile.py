"""The encrypted on-disk log of one job (runlet.adapters.logfile)."""

from __future__ import annotations

import errno
import os
import stat
import struct
from pathlib import Path

import pytest

from runlet import files
from runlet.adapters import logfile
from runlet.adapters.logfile import (
    FLAG_FINAL,
    MAX_OUTPUT_DATA,
    MAX_RECORD,
    DamageKind,
    LogWriter,
    Record,
    open_output,
    read_records,
    scan_log,
    seal_output,
)
from runlet.errors import AuthenticationFailed, ClosedError, LogDamage, ProtocolError, StorageError
from runlet.protocol.crypto import OVERHEAD, FleetKey, JobKey, Kind

JOB = "job-1"
HEADER = b"RLOG\x01" + struct.pack(">H", len(JOB)) + JOB.encode()

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


@pytest.fixture
def key() -> JobKey:
    return FleetKey.generate().job_key(JOB)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "vault" / f"{JOB}.rlog"


def chunk(key: JobKey, seq: int, *, final: bool = False) -> Record:
    flags, sealed = seal_output(key, seq, 1000.0 + seq, f"line {seq}\n".encode(), final=final)
    return Record(seq, flags, sealed)


def write_log(path: Path, key: JobKey, count: int, *, final: bool = False) -> None:
    with LogWriter(path, JOB) as writer:
        for seq in range(count):
            writer.append(chunk(key, seq, final=final and seq == count - 1))


def raw_record(seq: int, flags: int = 0, sealed: bytes = b"\0" * OVERHEAD) -> bytes:
    return struct.pack(">IQB", 9 + len(sealed), seq, flags) + sealed


def collect(path: Path) -> tuple[list[Record], LogDamage | None]:
    """Read a log the way a viewer does: everything readable, then the damage if any."""
    records: list[Record] = []
    try:
        for record in read_records(path):
            records.append(record)
    except LogDamage as exc:
        return records, exc
    return records, None


# --- output chunks -------------------------------------------------------------------------


def test_output_chunk_round_trip(key: JobKey) -> None:
    """seal_output/open_output carry the time and the bytes; final sets FLAG_FINAL."""
    flags, sealed = seal_output(key, 3, 1712345678.25, b"hello", final=True)
    assert flags == FLAG_FINAL
    assert len(sealed) == 8 + 5 + OVERHEAD
    assert open_output(key, 3, flags, sealed) == (1712345678.25, b"hello")


def test_output_chunk_empty_data(key: JobKey) -> None:
    """An output chunk with no bytes still carries its time."""
    flags, sealed = seal_output(key, 0, 1.5, b"")
    assert open_output(key, 0, flags, sealed) == (1.5, b"")


def test_output_final_flag_is_authenticated(key: JobKey) -> None:
    """Stripping FINAL from a chunk makes it fail to open."""
    flags, sealed = seal_output(key, 0, 1.0, b"bye", final=True)
    with pytest.raises(AuthenticationFailed):
        open_output(key, 0, flags & ~FLAG_FINAL, sealed)


def test_output_without_timestamp_is_protocol_error(key: JobKey) -> None:
    """An authentic output message too short for its timestamp is a ProtocolError."""
    sealed = key.seal(Kind.OUTPUT, 0, b"abc")
    with pytest.raises(ProtocolError, match="no timestamp"):
        open_output(key, 0, 0, sealed)


def test_output_size_limit(key: JobKey) -> None:
    """A chunk of MAX_OUTPUT_DATA bytes fits in a record; one byte more is refused."""
    flags, sealed = seal_output(key, 0, 0.0, b"x" * MAX_OUTPUT_DATA)
    assert 4 + 9 + len(sealed) == 4 + MAX_RECORD
    Record(0, flags, sealed)
    with pytest.raises(ValueError, match="at most"):
        seal_output(key, 0, 0.0, b"x" * (MAX_OUTPUT_DATA + 1))


@pytest.mark.parametrize(
    ("seq", "flags", "size"), [(-1, 0, OVERHEAD), (0, 256, OVERHEAD), (0, 0, OVERHEAD - 1)]
)
def test_record_fields_checked(seq: int, flags: int, size: int) -> None:
    """A Record with an impossible seq, flags or sealed size cannot be made."""
    with pytest.raises(ValueError, match=r"seq|flags|cannot be a record"):
        Record(seq, flags, b"\0" * size)


# --- writing and reading -------------------------------------------------------------------


def test_append_then_read_back(path: Path, key: JobKey) -> None:
    """Appended records read back in order and decrypt to what was written."""
    write_log(path, key, 3, final=True)
    records = list(read_records(path, job_id=JOB))
    assert [r.seq for r in records] == [0, 1, 2]
    assert [r.final for r in records] == [False, False, True]
    assert [open_output(key, r.seq, r.flags, r.sealed) for r in records] == [
        (1000.0, b"line 0\n"),
        (1001.0, b"line 1\n"),
        (1002.0, b"line 2\n"),
    ]
    assert path.read_bytes().startswith(HEADER)


def test_read_from_seq(path: Path, key: JobKey) -> None:
    """from_seq skips the records before it; beyond the end yields nothing."""
    write_log(path, key, 5)
    assert [r.seq for r in read_records(path, from_seq=3)] == [3, 4]
    assert list(read_records(path, from_seq=9)) == []
    with pytest.raises(ValueError, match="from_seq"):
        read_records(path, from_seq=-1)


def test_reading_streams_a_growing_file(path: Path, key: JobKey) -> None:
    """A reader already past the end sees records appended afterwards (it does not slurp)."""
    with LogWriter(path, JOB) as writer:
        writer.append(chunk(key, 0))
        reader = read_records(path)
        assert next(reader).seq == 0
        writer.append(chunk(key, 1))
        assert next(reader).seq == 1
        assert list(reader) == []


@posix_only
def test_file_and_folder_modes(path: Path) -> None:
    """The log is created 0o600 inside folders created 0o700."""
    LogWriter(path, JOB).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_append_requires_next_seq(path: Path, key: JobKey) -> None:
    """Appending any seq but next_seq is refused."""
    with LogWriter(path, JOB) as writer:
        writer.append(chunk(key, 0))
        with pytest.raises(ValueError, match="record 2 appended where 1 is next"):
            writer.append(chunk(key, 2))
        assert writer.next_seq == 1


def test_reopen_continues_numbering(path: Path, key: JobKey) -> None:
    """A writer reopened on an existing log carries on at the next seq."""
    write_log(path, key, 2)
    with LogWriter(path, JOB) as writer:
        assert (writer.next_seq, writer.repaired_bytes, writer.finished) == (2, 0, False)
        writer.append(chunk(key, 2))
    assert [r.seq for r in read_records(path)] == [0, 1, 2]


def test_final_then_append_refused(path: Path, key: JobKey) -> None:
    """After a FINAL record nothing more can be appended, also after reopening."""
    with LogWriter(path, JOB) as writer:
        writer.append(chunk(key, 0, final=True))
        assert writer.finished
        with pytest.raises(StorageError, match="is final"):
            writer.append(chunk(key, 1))
    with LogWriter(path, JOB) as writer:
        assert writer.finished
        with pytest.raises(StorageError, match="is final"):
            writer.append(chunk(key, 1))


def test_close_is_idempotent_and_final(path: Path, key: JobKey) -> None:
    """close() can be repeated; append and fsync afterwards raise ClosedError."""
    writer = LogWriter(path, JOB)
    writer.close()
    writer.close()
    with pytest.raises(ClosedError):
        writer.append(chunk(key, 0))
    with pytest.raises(ClosedError):
        writer.fsync()


def test_scan_reports_state(path: Path, key: JobKey) -> None:
    """scan_log counts records, sees FINAL and reports an intact file."""
    write_log(path, key, 4, final=True)
    scan = scan_log(path, job_id=JOB)
    assert (scan.job_id, scan.records, scan.next_seq, scan.finished) == (JOB, 4, 4, True)
    assert scan.intact
    assert scan.size == scan.good_size == path.stat().st_size


# --- crash repair --------------------------------------------------------------------------


def test_torn_tail_reported_then_repaired(path: Path, key: JobKey) -> None:
    """A half-written last record is reported by readers and cut off by the next writer."""
    write_log(path, key, 2)
    intact = path.read_bytes()
    with path.open("ab") as f:
        f.write(raw_record(2)[:20])
    records, damage = collect(path)
    assert [r.seq for r in records] == [0, 1]
    assert damage is not None
    assert (damage.kind, damage.offset, damage.good_records) == (
        DamageKind.TORN_TAIL,
        len(intact),
        2,
    )
    with LogWriter(path, JOB) as writer:
        assert (writer.repaired_bytes, writer.next_seq) == (20, 2)
        writer.append(chunk(key, 2, final=True))
    assert [r.seq for r in read_records(path)] == [0, 1, 2]


def test_torn_length_field_repaired(path: Path, key: JobKey) -> None:
    """A crash inside the 4-byte length field is also a torn tail."""
    write_log(path, key, 1)
    with path.open("ab") as f:
        f.write(b"\0\0")
    with LogWriter(path, JOB) as writer:
        assert (writer.repaired_bytes, writer.next_seq) == (2, 1)


def test_zero_filled_tail_repaired(path: Path, key: JobKey) -> None:
    """Zeros where a crash left unwritten blocks are cut off like a torn tail."""
    write_log(path, key, 1)
    with path.open("ab") as f:
        f.write(b"\0" * 4096)
    assert collect(path)[1] is not None
    with LogWriter(path, JOB) as writer:
        assert (writer.repaired_bytes, writer.next_seq) == (4096, 1)


@pytest.mark.parametrize("cut", [0, 3, len(HEADER) - 1])
def test_torn_header_rewritten(path: Path, key: JobKey, cut: int) -> None:
    """An empty file or a partial header of this job is rewritten by the writer."""
    path.parent.mkdir(parents=True)
    path.write_bytes(HEADER[:cut])
    with LogWriter(path, JOB) as writer:
        assert (writer.repaired_bytes, writer.next_seq) == (cut, 0)
        writer.append(chunk(key, 0))
    assert [r.seq for r in read_records(path)] == [0]


# --- refusals and damage -------------------------------------------------------------------


def test_other_jobs_log_refused(path: Path, key: JobKey) -> None:
    """A log of another job is refused by the writer and by a reader that names the job."""
    write_log(path, key, 1)
    before = path.read_bytes()
    with pytest.raises(StorageError, match="holds the log of job 'job-1', not of job 'job-2'"):
        LogWriter(path, "job-2")
    with pytest.raises(StorageError, match="not of job 'job-2'"):
        list(read_records(path, job_id="job-2"))
    assert path.read_bytes() == before


def test_corrupt_length_reported_and_not_repaired(path: Path, key: JobKey) -> None:
    """An impossible length mid-file is reported after the good records; the writer refuses."""
    write_log(path, key, 3)
    data = bytearray(path.read_bytes())
    second = len(HEADER) + 4 + struct.unpack_from(">I", data, len(HEADER))[0]
    data[second : second + 4] = struct.pack(">I", MAX_RECORD + 1)
    path.write_bytes(bytes(data))
    records, damage = collect(path)
    assert [r.seq for r in records] == [0]
    assert damage is not None
    assert (damage.kind, damage.offset, damage.good_records) == (DamageKind.BAD_LENGTH, second, 1)
    assert f"at byte {second}" in str(damage)
    with pytest.raises(StorageError, match="cannot append") as info:
        LogWriter(path, JOB)
    assert isinstance(info.value.__cause__, LogDamage)
    assert path.read_bytes() == bytes(data)


def test_seq_gap_detected(path: Path) -> None:
    """A missing record is reported with the seq found instead."""
    path.parent.mkdir(parents=True)
    path.write_bytes(HEADER + raw_record(0) + raw_record(1) + raw_record(4))
    records, damage = collect(path)
    assert [r.seq for r in records] == [0, 1]
    assert damage is not None
    assert (damage.kind, damage.found_seq, damage.good_records) == (DamageKind.SEQ_GAP, 4, 2)
    assert "records 2..3 are missing" in str(damage)


def test_seq_out_of_order_detected(path: Path) -> None:
    """A repeated or earlier seq is reported as out of order."""
    path.parent.mkdir(parents=True)
    path.write_bytes(HEADER + raw_record(0) + raw_record(1) + raw_record(0))
    records, damage = collect(path)
    assert [r.seq for r in records] == [0, 1]
    assert damage is not None
    assert (damage.kind, damage.found_seq) == (DamageKind.SEQ_ORDER, 0)


def test_first_record_must_be_zero(path: Path) -> None:
    """A log whose first record is not seq 0 has lost its beginning."""
    path.parent.mkdir(parents=True)
    path.write_bytes(HEADER + raw_record(1))
    records, damage = collect(path)
    assert records == []
    assert damage is not None
    assert damage.kind == DamageKind.SEQ_GAP


def test_bytes_after_final_detected(path: Path) -> None:
    """Anything after the FINAL record is damage."""
    path.parent.mkdir(parents=True)
    path.write_bytes(HEADER + raw_record(0, FLAG_FINAL) + raw_record(1))
    records, damage = collect(path)
    assert [r.seq for r in records] == [0]
    assert damage is not None
    assert damage.kind == DamageKind.AFTER_FINAL
    scan = scan_log(path)
    assert (scan.records, scan.finished, scan.damage is not None) == (1, True, True)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty"),
        (b"RLO", "too short"),
        (b"\x7fELF\x02\x01\x01\x00" + bytes(64), "not a runlet log"),
        (b"RLOG\x02\x00\x01x", "format version 2"),
        (b"RLOG\x01\x00\x09job", "truncated or empty job id"),
        (b"RLOG\x01\x00\x00", "truncated or empty job id"),
        (b"RLOG\x01\x00\x02\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_header_refused(path: Path, content: bytes, problem: str) -> None:
    """Empty, garbage, newer-version or malformed headers raise StorageError."""
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(StorageError, match=problem) as info:
        list(read_records(path))
    assert not isinstance(info.value, LogDamage)


def test_garbage_file_not_overwritten_by_writer(path: Path) -> None:
    """A writer opened on a file that is not this job's log refuses and leaves it alone."""
    path.parent.mkdir(parents=True)
    path.write_bytes(b"important notes\n")
    with pytest.raises(StorageError, match="not a runlet log"):
        LogWriter(path, JOB)
    assert path.read_bytes() == b"important notes\n"


def test_missing_log(tmp_path: Path) -> None:
    """Reading a log that does not exist raises StorageError naming it."""
    with pytest.raises(StorageError, match="no log at"):
        list(read_records(tmp_path / "none.rlog"))
    with pytest.raises(StorageError, match="no log at"):
        scan_log(tmp_path / "none.rlog")


# --- disk full -----------------------------------------------------------------------------


def test_disk_full_leaves_no_half_record(
    path: Path, key: JobKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC mid-record raises StorageError and truncates back; the same seq then succeeds."""
    real_write_all = files.write_all

    def write_half_then_fail(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with LogWriter(path, JOB) as writer:
        writer.append(chunk(key, 0))
        before = path.read_bytes()
        monkeypatch.setattr(logfile, "write_all", write_half_then_fail)
        with pytest.raises(StorageError, match="No space left") as info:
            writer.append(chunk(key, 1))
        assert isinstance(info.value.__cause__, OSError)
        assert info.value.__cause__.errno == errno.ENOSPC
        assert path.read_bytes() == before
        assert writer.next_seq == 1
        monkeypatch.setattr(logfile, "write_all", real_write_all)
        writer.append(chunk(key, 1, final=True))
    records, damage = collect(path)
    assert damage is None
    assert [r.seq for r in records] == [0, 1]
