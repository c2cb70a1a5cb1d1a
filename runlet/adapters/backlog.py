"""The vault's upload backlog, kept in the vault folder itself so it survives any restart.

A log needs uploading when it is finished (it ends with its FINAL chunk) and no marker says
it was uploaded as it is now. The marker `<job>.rlog.uploaded` holds the hash of the bytes
that reached the store; it is written only after the store confirmed them. So the backlog is
never a separate record that could disagree with the files: it is read off the folder.

Retention follows the same marks: only a log whose marker matches it may be evicted, oldest
first, and never a log that is open or still waiting for its upload.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterable
from pathlib import Path

from runlet.adapters.logfile import scan_log
from runlet.errors import StorageError

MARKER_SUFFIX = ".uploaded"
LOG_SUFFIX = ".rlog"


def marker_of(log: Path) -> Path:
    return log.with_name(log.name + MARKER_SUFFIX)


def job_of(log: Path) -> str:
    return log.name.removesuffix(LOG_SUFFIX)


def uploaded_hash(log: Path) -> str | None:
    """The hash recorded when this log was last uploaded, if its marker is current."""
    marker = marker_of(log)
    try:
        if marker.stat().st_mtime < log.stat().st_mtime:
            return None  # the log changed after that upload
        text = marker.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else None


def mark_uploaded(log: Path, digest: str) -> None:
    """Record that exactly the bytes hashing to `digest` are in the store."""
    marker = marker_of(log)
    tmp = marker.with_name(f".{marker.name}.tmp")
    try:
        tmp.write_text(digest + "\n", encoding="ascii")
        os.replace(tmp, marker)
    except OSError as exc:
        raise StorageError(f"cannot record the upload of {log}: {exc}") from exc


def finished(log: Path) -> bool:
    try:
        return scan_log(log).finished
    except StorageError:
        return False


def pending(folder: Path, *, skip: Iterable[str] = ()) -> list[Path]:
    """Finished logs without a current upload marker, oldest first."""
    skipped = set(skip)
    logs = [p for p in _logs(folder) if job_of(p) not in skipped]
    waiting = [p for p in logs if uploaded_hash(p) is None and finished(p)]
    return sorted(waiting, key=_mtime)


def backoff(
    attempt: int, *, base: float = 1.0, cap: float = 300.0, rng: Callable[[], float] = random.random
) -> float:
    """Seconds before retry number `attempt` (1, 2, …): exponential, capped, with jitter."""
    ceiling = min(cap, base * 2.0 ** min(max(0, attempt - 1), 60))  # no overflow, ever
    return float(ceiling * (0.5 + rng() / 2))


def eviction(folder: Path, max_bytes: int, *, keep: Iterable[str] = ()) -> list[Path]:
    """Uploaded logs to delete, oldest first, so the vault fits in `max_bytes` (0: no bound)."""
    if max_bytes <= 0:
        return []
    logs = sorted(_logs(folder), key=_mtime)
    total = sum(_size(p) for p in logs)
    kept = set(keep)
    chosen: list[Path] = []
    for log in logs:
        if total <= max_bytes:
            break
        if job_of(log) in kept or uploaded_hash(log) is None:
            continue
        chosen.append(log)
        total -= _size(log)
    return chosen


def evict(logs: Iterable[Path]) -> int:
    """Delete logs and their markers; returns the bytes freed."""
    freed = 0
    for log in logs:
        freed += _size(log)
        for path in (log, marker_of(log)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return freed


def _logs(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.name.endswith(LOG_SUFFIX) and p.is_file()]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StorageError(f"cannot list the vault {folder}: {exc.strerror or exc}") from exc


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
