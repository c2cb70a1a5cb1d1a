"""The vault's upload backlog (runlet.adapters.backlog), read off a real folder of real logs.

Times on files are set with `os.utime`, never waited for: "older" and "newer" are exact.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from runlet.adapters import backlog
from runlet.adapters.logfile import LogWriter, Record, seal_output
from runlet.errors import StorageError
from runlet.protocol.crypto import FleetKey

DIGEST = "0123456789abcdef" * 4
KEY = FleetKey.generate()


def job(n: int) -> str:
    return f"{n:032x}"


def make_log(folder: Path, job_id: str, *, chunks: int = 2, final: bool = True) -> Path:
    """A real log of `chunks` output chunks in `folder`, the last FINAL if `final`."""
    path = folder / f"{job_id}.rlog"
    key = KEY.job_key(job_id)
    with LogWriter(path, job_id) as writer:
        for seq in range(chunks):
            last = final and seq == chunks - 1
            flags, sealed = seal_output(key, seq, 100.0 + seq, b"x" * 50, final=last)
            writer.append(Record(seq, flags, sealed))
    return path


def set_mtime(path: Path, when: float) -> None:
    os.utime(path, (when, when))


def mark(log: Path, when: float, digest: str = DIGEST) -> None:
    """An upload marker written at `when`, for a log last changed before it."""
    backlog.mark_uploaded(log, digest)
    set_mtime(backlog.marker_of(log), when)


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    folder = tmp_path / "vault"
    folder.mkdir()
    return folder


# --- names ---------------------------------------------------------------------------------


def test_marker_and_job_names(vault: Path) -> None:
    """A log's marker is `<job>.rlog.uploaded` beside it; the job is the name without .rlog."""
    log = vault / f"{job(1)}.rlog"
    assert backlog.marker_of(log) == vault / f"{job(1)}.rlog.uploaded"
    assert backlog.job_of(log) == job(1)


# --- uploaded_hash: the marker is an input file ---------------------------------------------


def test_uploaded_hash_round_trip(vault: Path) -> None:
    """A marker written after the log's last change yields the recorded digest."""
    log = make_log(vault, job(1))
    set_mtime(log, 1000.0)
    mark(log, 2000.0)
    assert backlog.uploaded_hash(log) == DIGEST


def test_uploaded_hash_same_mtime_is_current(vault: Path) -> None:
    """A marker as new as the log counts: only a strictly newer log makes it stale."""
    log = make_log(vault, job(1))
    set_mtime(log, 1000.0)
    mark(log, 1000.0)
    assert backlog.uploaded_hash(log) == DIGEST


def test_uploaded_hash_stale_after_log_changed(vault: Path) -> None:
    """A log changed after its upload has no current hash: it must be uploaded again."""
    log = make_log(vault, job(1))
    mark(log, 1000.0)
    set_mtime(log, 1000.5)
    assert backlog.uploaded_hash(log) is None


def test_uploaded_hash_without_marker(vault: Path) -> None:
    """A log never uploaded has no hash."""
    assert backlog.uploaded_hash(make_log(vault, job(1))) is None


def test_uploaded_hash_without_log(vault: Path) -> None:
    """A marker whose log is gone yields no hash rather than an error."""
    log = vault / f"{job(1)}.rlog"
    backlog.marker_of(log).write_text(DIGEST, encoding="ascii")
    assert backlog.uploaded_hash(log) is None


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(DIGEST[:63].encode(), id="truncated"),
        pytest.param((DIGEST + "0").encode(), id="one-too-long"),
        pytest.param(DIGEST.upper().encode(), id="uppercase"),
        pytest.param(("g" * 64).encode(), id="not-hex"),
        pytest.param(b"\xff" * 64, id="not-ascii"),
        pytest.param(("\u0660" * 64).encode(), id="unicode-digits"),
        pytest.param(DIGEST.encode() + b"\0", id="nul"),
        pytest.param(b"a" * (4 << 20), id="oversize"),
        pytest.param(b"\x00" * 64, id="binary"),
    ],
)
def test_uploaded_hash_rejects_bad_marker(vault: Path, content: bytes) -> None:
    """A broken, truncated, oversize or hostile marker counts as no upload, never an error."""
    log = make_log(vault, job(1))
    set_mtime(log, 1000.0)
    marker = backlog.marker_of(log)
    marker.write_bytes(content)
    set_mtime(marker, 2000.0)
    assert backlog.uploaded_hash(log) is None


def test_uploaded_hash_tolerates_surrounding_whitespace(vault: Path) -> None:
    """The newline mark_uploaded writes (and stray blanks) do not spoil the digest."""
    log = make_log(vault, job(1))
    set_mtime(log, 1000.0)
    marker = backlog.marker_of(log)
    marker.write_text(f"  {DIGEST}\r\n", encoding="ascii")
    set_mtime(marker, 2000.0)
    assert backlog.uploaded_hash(log) == DIGEST


def test_uploaded_hash_marker_is_a_folder(vault: Path) -> None:
    """A folder where the marker should be counts as no upload."""
    log = make_log(vault, job(1))
    set_mtime(log, 1000.0)
    backlog.marker_of(log).mkdir()
    assert backlog.uploaded_hash(log) is None


def test_mark_uploaded_leaves_no_temporary(vault: Path) -> None:
    """mark_uploaded replaces the marker atomically: only the marker remains, ending in \\n."""
    log = make_log(vault, job(1))
    backlog.mark_uploaded(log, DIGEST)
    backlog.mark_uploaded(log, "f" * 64)
    names = sorted(p.name for p in vault.iterdir())
    assert names == [log.name, backlog.marker_of(log).name]
    assert backlog.marker_of(log).read_text(encoding="ascii") == "f" * 64 + "\n"


def test_mark_uploaded_unwritable_folder(tmp_path: Path) -> None:
    """A marker that cannot be written raises StorageError naming the log."""
    log = tmp_path / "gone" / f"{job(1)}.rlog"
    with pytest.raises(StorageError, match="cannot record the upload of") as info:
        backlog.mark_uploaded(log, DIGEST)
    assert str(log) in str(info.value)


# --- pending ---------------------------------------------------------------------------------


def test_pending_lists_finished_unmarked_logs_oldest_first(vault: Path) -> None:
    """pending() is every finished log without a current marker, oldest first."""
    newer = make_log(vault, job(1))
    older = make_log(vault, job(2))
    uploaded = make_log(vault, job(3))
    set_mtime(newer, 3000.0)
    set_mtime(older, 1000.0)
    set_mtime(uploaded, 500.0)
    mark(uploaded, 600.0)
    assert backlog.pending(vault) == [older, newer]


def test_pending_skips_running_logs(vault: Path) -> None:
    """A log without its FINAL chunk (still running, or cut off) is not uploaded yet."""
    make_log(vault, job(1), final=False)
    make_log(vault, job(2), chunks=0, final=False)
    assert backlog.pending(vault) == []


def test_pending_honours_skip(vault: Path) -> None:
    """Jobs named in `skip` are left out even when finished and unmarked."""
    make_log(vault, job(1))
    kept = make_log(vault, job(2))
    assert backlog.pending(vault, skip=[job(1)]) == [kept]


def test_pending_includes_log_changed_after_upload(vault: Path) -> None:
    """A finished log rewritten after its marker is pending again."""
    log = make_log(vault, job(1))
    mark(log, 1000.0)
    set_mtime(log, 2000.0)
    assert backlog.pending(vault) == [log]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"RLO", id="truncated-header"),
        pytest.param(b"not a log at all" * 100, id="garbage"),
        pytest.param(b"RLOG\x09\x00\x01x", id="future-version"),
        pytest.param(b"RLOG\x01\xff\xffabc", id="oversize-job-length"),
    ],
)
def test_pending_ignores_unreadable_logs(vault: Path, content: bytes) -> None:
    """A broken or hostile file named *.rlog is never offered for upload, and never raises."""
    (vault / f"{job(9)}.rlog").write_bytes(content)
    good = make_log(vault, job(1))
    assert backlog.pending(vault) == [good]


def test_pending_ignores_truncated_final_record(vault: Path) -> None:
    """A log whose FINAL record was cut short is not finished, so not pending."""
    log = make_log(vault, job(1))
    with log.open("r+b") as f:
        f.truncate(log.stat().st_size - 3)
    assert backlog.pending(vault) == []


def test_pending_ignores_other_files(vault: Path) -> None:
    """Markers, temporaries, other suffixes and folders named *.rlog are not logs."""
    log = make_log(vault, job(1))
    (vault / f".{job(2)}.rlog.uploaded.tmp").write_text(DIGEST, encoding="ascii")
    (vault / f"{job(3)}.rlog.part").write_bytes(log.read_bytes())
    (vault / f"{job(4)}.rlog").mkdir()
    assert backlog.pending(vault) == [log]


def test_pending_missing_folder(tmp_path: Path) -> None:
    """A vault folder that does not exist yet has an empty backlog."""
    assert backlog.pending(tmp_path / "nowhere") == []


def test_pending_folder_is_a_file(tmp_path: Path) -> None:
    """A vault path that is not a folder is reported as a StorageError, not a bare OSError."""
    not_a_folder = tmp_path / "vault"
    not_a_folder.write_text("oops", encoding="utf-8")
    with pytest.raises(StorageError):
        backlog.pending(not_a_folder)


# --- backoff ---------------------------------------------------------------------------------


def fixed(value: float) -> Callable[[], float]:
    return lambda: value


def test_backoff_doubles_from_base() -> None:
    """Without jitter at its top, the delay is base, 2·base, 4·base, …"""
    delays = [backlog.backoff(n, base=1.5, rng=fixed(1.0)) for n in (1, 2, 3, 4)]
    assert delays == [1.5, 3.0, 6.0, 12.0]


def test_backoff_jitter_bounds() -> None:
    """Jitter keeps the delay within [half, all] of the exponential ceiling."""
    assert backlog.backoff(3, base=2.0, rng=fixed(0.0)) == 4.0
    assert backlog.backoff(3, base=2.0, rng=fixed(0.5)) == 6.0
    assert backlog.backoff(3, base=2.0, rng=fixed(1.0)) == 8.0


def test_backoff_capped() -> None:
    """The delay never exceeds `cap`, however many attempts failed."""
    assert backlog.backoff(20, cap=300.0, rng=fixed(1.0)) == 300.0
    assert backlog.backoff(20, cap=300.0, rng=fixed(0.0)) == 150.0


@pytest.mark.parametrize("attempt", [0, -1, -(10**9)])
def test_backoff_attempt_below_one(attempt: int) -> None:
    """A zero or negative attempt number is treated as the first attempt."""
    assert backlog.backoff(attempt, base=2.0, rng=fixed(1.0)) == 2.0


def test_backoff_default_rng_in_range() -> None:
    """With the real random source the delay stays within its bounds."""
    for _ in range(200):
        assert 2.0 <= backlog.backoff(2, base=2.0) <= 4.0


def test_backoff_last_attempt_that_fits_a_float() -> None:
    """Attempt 1024 (ceiling 2**1023) still returns the cap."""
    assert backlog.backoff(1024, cap=300.0, rng=fixed(1.0)) == 300.0


@pytest.mark.parametrize("attempt", [1025, 10**6])
def test_backoff_huge_attempt(attempt: int) -> None:
    """After very many failures the delay is still the cap, not an OverflowError."""
    assert backlog.backoff(attempt, cap=300.0, rng=fixed(1.0)) == 300.0


# --- eviction and evict ----------------------------------------------------------------------


def sizes(*logs: Path) -> int:
    return sum(p.stat().st_size for p in logs)


def uploaded_logs(vault: Path, count: int) -> list[Path]:
    """`count` uploaded logs, log n last changed at 1000+n (so oldest first in the list)."""
    logs = []
    for n in range(count):
        log = make_log(vault, job(n))
        set_mtime(log, 1000.0 + n)
        mark(log, 5000.0)
        logs.append(log)
    return logs


@pytest.mark.parametrize("max_bytes", [0, -1, -(2**63)])
def test_eviction_unbounded(vault: Path, max_bytes: int) -> None:
    """max_bytes 0 (or below) means no bound: nothing is ever evicted."""
    uploaded_logs(vault, 3)
    assert backlog.eviction(vault, max_bytes) == []


def test_eviction_nothing_when_it_fits(vault: Path) -> None:
    """A vault within its bound evicts nothing."""
    logs = uploaded_logs(vault, 3)
    assert backlog.eviction(vault, sizes(*logs)) == []


def test_eviction_oldest_first_until_it_fits(vault: Path) -> None:
    """Just enough of the oldest uploaded logs are chosen to get within the bound."""
    logs = uploaded_logs(vault, 4)
    assert backlog.eviction(vault, sizes(*logs) - 1) == [logs[0]]
    assert backlog.eviction(vault, sizes(*logs[2:])) == logs[:2]


def test_eviction_spares_unuploaded_and_kept(vault: Path) -> None:
    """A log not uploaded (or changed since) or named in `keep` is never chosen."""
    logs = uploaded_logs(vault, 4)
    backlog.marker_of(logs[0]).unlink()  # never uploaded
    chosen = backlog.eviction(vault, 1, keep=[job(1)])
    assert chosen == [logs[2], logs[3]]


def test_eviction_stale_marker_protects_log(vault: Path) -> None:
    """A log rewritten after its upload keeps its place even when it is the oldest."""
    logs = uploaded_logs(vault, 2)
    set_mtime(backlog.marker_of(logs[0]), 900.0)  # marker older than the log
    assert backlog.eviction(vault, 1) == [logs[1]]


def test_eviction_missing_folder(tmp_path: Path) -> None:
    """A vault folder that does not exist has nothing to evict."""
    assert backlog.eviction(tmp_path / "nowhere", 10) == []


def test_evict_removes_logs_and_markers(vault: Path) -> None:
    """evict deletes each log and its marker and returns the log bytes freed."""
    logs = uploaded_logs(vault, 3)
    expected = sizes(*logs[:2])
    assert backlog.evict(logs[:2]) == expected
    assert sorted(p.name for p in vault.iterdir()) == [
        logs[2].name,
        backlog.marker_of(logs[2]).name,
    ]


def test_evict_tolerates_missing_files(vault: Path) -> None:
    """A log or marker already gone is skipped without error and frees nothing."""
    logs = uploaded_logs(vault, 2)
    logs[0].unlink()
    backlog.marker_of(logs[1]).unlink()
    expected = logs[1].stat().st_size
    assert backlog.evict(logs) == expected
    assert list(vault.iterdir()) == []


def test_evict_nothing() -> None:
    """Evicting no logs frees nothing."""
    assert backlog.evict([]) == 0
