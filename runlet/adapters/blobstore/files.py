"""The local side of an upload or a download: snapshots of a growing log, downloads that land
whole or not at all.

An upload sends a snapshot: exactly the bytes that were hashed, even while the log's writer
keeps appending (the log is append-only, so a prefix never changes). A download streams to a
private temporary file beside its destination and is renamed into place only once checked.
The in-memory store of runlet.testing uses these too, so it keeps the same promises.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from runlet.adapters.blob_port import CHUNK, Progress, hash_prefix, nanoseconds
from runlet.errors import StorageError


class Prefix(io.RawIOBase):
    """The first `size` bytes of an open file, as a stream botocore can measure and rewind.

    Without `fileno`, so aiohttp sends what `read` gives, never the grown file's new size.
    """

    def __init__(self, f: BinaryIO, size: int) -> None:
        super().__init__()
        self._f = f
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._f.read(min(len(view), self._size - self._pos))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, min(self._size, base + offset))
        self._f.seek(self._pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return self._size - self._pos


def open_log(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")  # the caller holds it in a `with`
    except OSError as exc:
        raise StorageError(f"cannot open the log {path}: {exc.strerror or exc}") from exc


def snapshot(f: BinaryIO, path: Path) -> tuple[int, str]:
    """The file's current size and the hash of that many bytes."""
    try:
        size = os.fstat(f.fileno()).st_size
        return size, hash_prefix(f, size)
    except OSError as exc:
        raise StorageError(f"cannot read the log {path}: {exc.strerror or exc}") from exc


async def receive(body: Any, out: BinaryIO, total: int, progress: Progress | None) -> str:
    """Copy a response body to `out`, hashing it; returns the hex digest."""
    digest = hashlib.blake2b(digest_size=32)
    done = 0
    if progress is not None:
        progress(0, total)
    while chunk := await body.read(CHUNK):
        out.write(chunk)
        digest.update(chunk)
        done += len(chunk)
        if progress is not None:
            progress(done, total)
    out.flush()
    return digest.hexdigest()


class Landing:
    """Where a download is written (`file`), and the mtime it lands with once `keep` says so."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.when: float | None = None

    def keep(self, when: float) -> None:
        """The file is whole and checked: move it into place with mtime `when`."""
        self.when = when


@contextlib.contextmanager
def landing(dest: Path) -> Iterator[Landing]:
    """A private temporary file beside `dest`, renamed to `dest` only if `keep` was called.

    The file is closed before the rename (Windows renames no open file). OSError inside or
    while landing is a StorageError naming `dest`; whatever happens, no temporary file stays.
    """
    tmp = _temporary_beside(dest)
    try:
        with open(tmp, "r+b") as out:  # made 0o600 by mkstemp
            spot = Landing(out)
            yield spot
        if spot.when is not None:
            os.utime(tmp, ns=(nanoseconds(spot.when), nanoseconds(spot.when)))
            os.replace(tmp, dest)
    except OSError as exc:
        raise StorageError(f"cannot write {dest}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _temporary_beside(dest: Path) -> Path:
    """A new private file next to `dest`, so the final rename stays on one filesystem."""
    try:
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise StorageError(f"cannot write beside {dest}: {exc.strerror or exc}") from exc
    os.close(fd)
    return Path(name)
