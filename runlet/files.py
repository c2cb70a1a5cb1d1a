"""Files on this device: secret files read with one policy, private folders, durable writes.

Every secret Runlet reads from disk — the fleet key, the blob store's credentials, the
database and broker-management passwords — goes through `read_secret`: a regular file, open to
its owner only (on POSIX), at most `MAX_SECRET_BYTES`; anything else is an error built by the
caller, so it names the setting concerned. Nothing read from a secret file ever appears in a
message.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from runlet.errors import ConfigError, RunletError

MAX_SECRET_BYTES = 64 * 1024


def read_secret(
    path: Path,
    error: Callable[[str], RunletError],
    *,
    missing: Callable[[], RunletError] | None = None,
    max_bytes: int = MAX_SECRET_BYTES,
) -> bytes:
    """The bytes of a secret file; `error(problem)` (or `missing()`) is raised when it is bad."""
    try:
        # O_NONBLOCK: a FIFO put in its place must not hang us; a regular file ignores it.
        flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise (missing() if missing is not None else error("file not found")) from None
    except OSError as exc:
        raise error(f"cannot open: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error("is not a regular file")
        if os.name == "posix" and mode & 0o077:
            raise error(
                f"is open to other users (mode {stat.S_IMODE(mode):o}): run `chmod 600 {path}`"
            )
        data = os.read(fd, max_bytes + 1)  # a regular file gives it all at once
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise error(f"is over {max_bytes} bytes: not a secret file")
    return data


def read_password(path: Path, key: str) -> str:
    """A password file's text, stripped of surrounding whitespace; a bad one names `key`."""

    def error(problem: str) -> ConfigError:
        return ConfigError(key, problem, source=str(path))

    data = read_secret(path, error)
    try:
        password = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise error("is not UTF-8 text") from None
    if not password:
        raise error("is empty")
    if not password.isprintable():
        raise error("holds control characters")
    return password


def make_private_dirs(folder: Path) -> None:
    """Create `folder` and any missing parents, each 0o700 (mkdir -p would use the umask)."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` durable (a no-op where folders cannot be synced)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is out, waiting out a full non-blocking descriptor."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        view = view[written:]


def write_private_file(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write `data` to `path` with mode 0o600, atomically (temporary file, fsync, rename).

    Without `overwrite` an existing `path` raises FileExistsError, also one that appears
    while we write (the new file is hard-linked into place, which never replaces).
    """
    make_private_dirs(path.parent)
    if not overwrite and path.exists():
        raise FileExistsError(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise
            except OSError:  # no hard links here: the check above has to do
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
