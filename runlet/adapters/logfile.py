"""The encrypted log of one job on disk: the very sealed chunks of the live stream, appended.

Format (all integers big-endian)::

    ┌──────┬─────────┬──────────────┬────────────────────┐
    │ RLOG │ ver u8  │ job_len u16  │ job_id (utf-8)     │   header, version 0x01
    └──────┴─────────┴──────────────┴────────────────────┘
    ┌────────────┬─────────┬──────────┬──────────────────┐
    │ length u32 │ seq u64 │ flags u8 │ sealed           │   record 0, 1, 2, ... (seq = index)
    └────────────┴─────────┴──────────┴──────────────────┘
         └── counts seq + flags + sealed: 9 + len(sealed), at most MAX_RECORD

    sealed = JobKey.seal(Kind.OUTPUT, seq, time f64 ‖ data, flags=flags)
    flags & FLAG_FINAL marks the last record; nothing may follow it.

Sequence numbers run 0, 1, 2, ... without gaps, so a reader notices a missing, reordered or
replayed record even before decrypting, and a log without a FINAL record is known to be
incomplete. A crash can leave only a partial last record (one write per record);
`LogWriter` cuts it off on reopening. Readers stream, one record at a time, and report
damage as `LogDamage` *after* yielding every record before it.

This module never decrypts on its own and never needs the fleet key: the vault stores what
the stream carried. It never writes a record in two pieces, and never leaves half a record
behind after a failed write.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Self

from runlet.errors import ClosedError, LogDamage, ProtocolError, StorageError
from runlet.files import fsync_dir, make_private_dirs, write_all
from runlet.protocol.crypto import OVERHEAD, JobKey, Kind

__all__ = [
    "FLAG_FINAL",
    "MAX_OUTPUT_DATA",
    "MAX_RECORD",
    "DamageKind",
    "LogDamage",
    "LogScan",
    "LogWriter",
    "Record",
    "open_output",
    "read_records",
    "scan_log",
    "seal_output",
]

MAGIC = b"RLOG"
VERSION = 1
FLAG_FINAL = 0x01
MAX_RECORD = 1 << 20

_HEADER = struct.Struct(">4sBH")
_LENGTH = struct.Struct(">I")
_SEQ_FLAGS = struct.Struct(">QB")
_TIME = struct.Struct(">d")
_MIN_RECORD = _SEQ_FLAGS.size + OVERHEAD
MAX_OUTPUT_DATA = MAX_RECORD - _SEQ_FLAGS.size - OVERHEAD - _TIME.size
_O_BINARY = getattr(os, "O_BINARY", 0)


# --- output chunks -------------------------------------------------------------------------


def seal_output(
    key: JobKey, seq: int, t: float, data: bytes, *, final: bool = False
) -> tuple[int, bytes]:
    """Seal output chunk `seq` (unix time `t`, `data`); returns (flags, sealed)."""
    if len(data) > MAX_OUTPUT_DATA:
        raise ValueError(f"an output chunk holds at most {MAX_OUTPUT_DATA} bytes, got {len(data)}")
    flags = FLAG_FINAL if final else 0
    return flags, key.seal(Kind.OUTPUT, seq, _TIME.pack(t) + data, flags=flags)


def open_output(key: JobKey, seq: int, flags: int, sealed: bytes) -> tuple[float, bytes]:
    """Authenticate and decrypt an output chunk; returns (unix time, data)."""
    plaintext = key.open(Kind.OUTPUT, seq, sealed, flags=flags)
    if len(plaintext) < _TIME.size:
        raise ProtocolError(f"output chunk {seq} of job {key.job_id} has no timestamp")
    (t,) = _TIME.unpack_from(plaintext)
    return t, plaintext[_TIME.size :]


# --- records and damage --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One stored chunk, still sealed."""

    seq: int
    flags: int
    sealed: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.seq < 2**64:
            raise ValueError(f"seq must be in 0..2**64-1, got {self.seq}")
        if not 0 <= self.flags <= 0xFF:
            raise ValueError(f"flags must be in 0..255, got {self.flags}")
        if not OVERHEAD <= len(self.sealed) <= MAX_RECORD - _SEQ_FLAGS.size:
            raise ValueError(f"a sealed chunk of {len(self.sealed)} bytes cannot be a record")

    @property
    def final(self) -> bool:
        return bool(self.flags & FLAG_FINAL)


class DamageKind(enum.StrEnum):
    """What is wrong at the point where a log stops being readable."""

    TORN_TAIL = "torn_tail"  # the file ends inside a record (crash, or a writer mid-append)
    BAD_LENGTH = "bad_length"  # a length field is impossible: corrupt bytes
    SEQ_GAP = "seq_gap"  # records are missing
    SEQ_ORDER = "seq_order"  # a record is repeated or out of order
    AFTER_FINAL = "after_final"  # bytes follow the FINAL record


@dataclass(frozen=True, slots=True)
class LogScan:
    """What `scan_log` learnt about a log file without decrypting it."""

    path: Path
    job_id: str
    records: int  # readable records, seq 0 .. records-1
    finished: bool  # the last readable record is FINAL
    size: int  # bytes in the file
    good_size: int  # bytes up to the end of the last readable record
    damage: LogDamage | None

    @property
    def next_seq(self) -> int:
        return self.records

    @property
    def intact(self) -> bool:
        return self.damage is None


# --- reading -------------------------------------------------------------------------------


def read_records(path: Path, *, job_id: str | None = None, from_seq: int = 0) -> Iterator[Record]:
    """Stream the records with seq >= `from_seq`; then raise LogDamage if the log is damaged.

    A bad header or another job's log raises StorageError at the first `next()`. A log that
    its writer is still appending to may end in a TORN_TAIL: treat that as "no more yet".
    """
    if from_seq < 0:
        raise ValueError(f"from_seq must be >= 0, got {from_seq}")
    return _read_records(path, job_id, from_seq)


def _read_records(path: Path, job_id: str | None, from_seq: int) -> Iterator[Record]:
    with _open_for_reading(path) as f:
        try:
            _, header_size = _read_header(f, path, job_id)
            for record in _walk(f, path, header_size):
                if record.seq >= from_seq:
                    yield record
        except OSError as exc:
            raise StorageError(f"cannot read the log {path}: {exc.strerror}") from exc


def scan_log(path: Path, *, job_id: str | None = None) -> LogScan:
    """Check a whole log's structure (header, lengths, sequence, FINAL) in one pass."""
    with _open_for_reading(path) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            found_job, good_size = _read_header(f, path, job_id)
            records, finished, damage = 0, False, None
            try:
                for record in _walk(f, path, good_size):
                    records += 1
                    finished = record.final
                    good_size += _LENGTH.size + _SEQ_FLAGS.size + len(record.sealed)
            except LogDamage as exc:
                damage = exc
        except OSError as exc:
            raise StorageError(f"cannot read the log {path}: {exc.strerror}") from exc
    return LogScan(path, found_job, records, finished, size, good_size, damage)


def _open_for_reading(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")  # the callers hold it in a `with`
    except FileNotFoundError as exc:
        raise StorageError(f"no log at {path}") from exc
    except OSError as exc:
        raise StorageError(f"cannot open the log {path}: {exc.strerror}") from exc


def _read_header(f: BinaryIO, path: Path, job_id: str | None) -> tuple[str, int]:
    """Check the header; returns (job id, header size)."""
    fixed = f.read(_HEADER.size)
    if not fixed:
        raise StorageError(f"{path} is empty: not a runlet log, or its writer died at once")
    if len(fixed) < _HEADER.size:
        raise StorageError(f"{path} is too short to be a runlet log")
    magic, version, job_len = _HEADER.unpack(fixed)
    if magic != MAGIC:
        raise StorageError(f"{path} is not a runlet log (it does not start with {MAGIC!r})")
    if version != VERSION:
        raise StorageError(f"{path} is log format version {version}; this runlet reads {VERSION}")
    raw_job = f.read(job_len)
    if job_len == 0 or len(raw_job) < job_len:
        raise StorageError(f"{path} has a truncated or empty job id in its header")
    try:
        found = raw_job.decode("utf-8")
    except UnicodeDecodeError:
        raise StorageError(f"{path} has a job id that is not UTF-8 in its header") from None
    if job_id is not None and found != job_id:
        raise StorageError(f"{path} holds the log of job {found!r}, not of job {job_id!r}")
    return found, _HEADER.size + job_len


def _walk(f: BinaryIO, path: Path, offset: int) -> Iterator[Record]:
    """Yield records from `offset` while they are sound; raise LogDamage where they stop."""
    expected = 0
    final = False

    def damage(kind: DamageKind, detail: str, found: int | None = None) -> LogDamage:
        return LogDamage(path, offset, kind, detail, good_records=expected, found_seq=found)

    while head := f.read(_LENGTH.size):
        if final:
            raise damage(DamageKind.AFTER_FINAL, "bytes follow the final record")
        if len(head) < _LENGTH.size:
            raise damage(DamageKind.TORN_TAIL, f"record {expected} is cut short")
        (length,) = _LENGTH.unpack(head)
        if not _MIN_RECORD <= length <= MAX_RECORD:
            detail = (
                f"record {expected} claims {length} bytes ({_MIN_RECORD}..{MAX_RECORD} allowed)"
            )
            raise damage(DamageKind.BAD_LENGTH, detail)
        body = f.read(length)
        if len(body) < length:
            detail = f"record {expected} is cut short ({len(body)} of {length} bytes)"
            raise damage(DamageKind.TORN_TAIL, detail)
        seq, flags = _SEQ_FLAGS.unpack_from(body)
        if seq > expected:
            detail = f"records {expected}..{seq - 1} are missing (next is {seq})"
            raise damage(DamageKind.SEQ_GAP, detail, seq)
        if seq < expected:
            detail = f"record {seq} appears again where {expected} was expected"
            raise damage(DamageKind.SEQ_ORDER, detail, seq)
        yield Record(seq, flags, body[_SEQ_FLAGS.size :])
        final = bool(flags & FLAG_FINAL)
        expected += 1
        offset += _LENGTH.size + length


# --- writing -------------------------------------------------------------------------------


class LogWriter:
    """Appends records to one job's log; reopening continues it, repairing a torn tail."""

    def __init__(self, path: Path, job_id: str) -> None:
        self._path = path
        self._job_id = job_id
        self._header = _encode_header(job_id)
        self._broken = False
        self.repaired_bytes = 0
        try:
            make_private_dirs(path.parent)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _O_BINARY, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot open the log {path}: {exc.strerror}") from exc
        try:
            self._size, self._next_seq, self._finished = self._prepare(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    @property
    def path(self) -> Path:
        return self._path

    @property
    def job_id(self) -> str:
        return self._job_id

    @property
    def next_seq(self) -> int:
        """The seq the next appended record must carry."""
        return self._next_seq

    @property
    def finished(self) -> bool:
        """A FINAL record has been written: the log is complete."""
        return self._finished

    @property
    def size(self) -> int:
        return self._size

    def append(self, record: Record) -> None:
        """Write one record in a single write; on failure the file is as it was before."""
        fd = self._require_open()
        if self._broken:
            raise StorageError(f"{self._path} was left damaged by a failed write; reopen it")
        if self._finished:
            raise StorageError(f"{self._path} is final; record {record.seq} cannot follow")
        if record.seq != self._next_seq:
            raise ValueError(f"record {record.seq} appended where {self._next_seq} is next")
        data = b"".join(
            (
                _LENGTH.pack(_SEQ_FLAGS.size + len(record.sealed)),
                _SEQ_FLAGS.pack(record.seq, record.flags),
                record.sealed,
            )
        )
        try:
            write_all(fd, data)
        except OSError as exc:
            self._undo_partial_write(fd)
            raise StorageError(
                f"cannot append record {record.seq} to {self._path}: {exc.strerror}"
            ) from exc
        self._size += len(data)
        self._next_seq += 1
        if record.final:
            self._finished = True
            self.fsync()

    def fsync(self) -> None:
        """Make what was appended durable."""
        fd = self._require_open()
        try:
            os.fsync(fd)
        except OSError as exc:
            raise StorageError(f"cannot fsync the log {self._path}: {exc.strerror}") from exc

    def close(self) -> None:
        """Close the file; closing again does nothing."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.close(fd)
        except OSError as exc:
            raise StorageError(f"cannot close the log {self._path}: {exc.strerror}") from exc

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else "final" if self._finished else "open"
        return f"<LogWriter {self._path} job={self._job_id!r} next_seq={self._next_seq} {state}>"

    def _require_open(self) -> int:
        if self._fd is None:
            raise ClosedError(f"the log writer for {self._path} is closed")
        return self._fd

    def _prepare(self, fd: int) -> tuple[int, int, bool]:
        """Start or continue the file; returns (size, next seq, finished)."""
        try:
            size = os.fstat(fd).st_size
            if size < len(self._header) and self._header.startswith(os.read(fd, size)):
                # New, or a crash cut the header short: (re)write it.
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                write_all(fd, self._header)
                self.repaired_bytes = size
                if size == 0:
                    fsync_dir(self._path.parent)
                return len(self._header), 0, False
            scan = scan_log(self._path, job_id=self._job_id)
            if scan.damage is not None:
                self._repair(fd, scan.damage, scan)
            os.lseek(fd, scan.good_size, os.SEEK_SET)
        except OSError as exc:
            raise StorageError(f"cannot prepare the log {self._path}: {exc.strerror}") from exc
        return scan.good_size, scan.records, scan.finished

    def _repair(self, fd: int, damage: LogDamage, scan: LogScan) -> None:
        # A crash leaves a prefix of the last record (one write per record), or on some
        # filesystems zeros where unwritten data would be. Anything else is real damage,
        # and appending past it would hide it.
        if damage.kind != DamageKind.TORN_TAIL and not _zeros_from(fd, scan.good_size):
            raise StorageError(f"cannot append: {damage}") from damage
        os.ftruncate(fd, scan.good_size)
        self.repaired_bytes = scan.size - scan.good_size

    def _undo_partial_write(self, fd: int) -> None:
        try:
            os.ftruncate(fd, self._size)
            os.lseek(fd, self._size, os.SEEK_SET)
        except OSError:
            self._broken = True  # reopening will cut the partial record off


def _encode_header(job_id: str) -> bytes:
    raw = job_id.encode("utf-8")
    if not raw or len(raw) > 0xFFFF or b"\0" in raw:
        raise ValueError("a job id must be 1..65535 UTF-8 bytes without NUL")
    return _HEADER.pack(MAGIC, VERSION, len(raw)) + raw


def _zeros_from(fd: int, offset: int) -> bool:
    os.lseek(fd, offset, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 16):
        if chunk.count(0) != len(chunk):
            return False
    return True
