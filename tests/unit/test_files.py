"""The one reader of secret files, and the small durable-file helpers (runlet.files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runlet.errors import ConfigError, CryptoError
from runlet.files import MAX_SECRET_BYTES, make_private_dirs, read_password, read_secret


def secret(tmp_path: Path, data: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(data)
    path.chmod(mode)
    return path


def config_error(problem: str) -> ConfigError:
    return ConfigError("x.password_file", problem)


def test_reads_an_owner_only_file(tmp_path: Path) -> None:
    """A regular file open to its owner only is read whole."""
    assert read_secret(secret(tmp_path, b"s3cret\n"), config_error) == b"s3cret\n"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o666, 0o660])
def test_a_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    """Group or other bits set: refused, saying the mode and the chmod to run, not the secret."""
    path = secret(tmp_path, b"s3cret", mode)
    with pytest.raises(ConfigError, match=f"mode {mode:o}.*chmod 600") as info:
        read_secret(path, config_error)
    assert "s3cret" not in str(info.value)
    assert info.value.key == "x.password_file"


def test_a_missing_file_uses_the_callers_words(tmp_path: Path) -> None:
    """A missing file is `missing()` when given, else 'file not found' under the caller's key."""
    with pytest.raises(ConfigError, match="file not found"):
        read_secret(tmp_path / "none", config_error)
    with pytest.raises(CryptoError, match=r"run `runlet key init`"):
        read_secret(
            tmp_path / "none", config_error, missing=lambda: CryptoError("run `runlet key init`")
        )


def test_a_folder_or_a_fifo_is_not_a_secret_file(tmp_path: Path) -> None:
    """A folder cannot be opened as a file; a FIFO is refused without blocking on it."""
    with pytest.raises(ConfigError, match=r"regular file|cannot"):
        read_secret(tmp_path, config_error)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_secret(fifo, config_error)


def test_an_oversize_file_is_refused(tmp_path: Path) -> None:
    """One byte over the cap is refused; the cap itself is fine."""
    assert len(read_secret(secret(tmp_path, b"x" * MAX_SECRET_BYTES), config_error)) == (
        MAX_SECRET_BYTES
    )
    with pytest.raises(ConfigError, match="is over"):
        read_secret(secret(tmp_path, b"x" * (MAX_SECRET_BYTES + 1)), config_error)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "is empty"),
        (b"  \n\t\n", "is empty"),
        (b"\xff\xfepass", "not UTF-8"),
        (b"pass\x00word", "control characters"),
        (b"pa\x1b[2Jss", "control characters"),
    ],
)
def test_bad_password_files(tmp_path: Path, data: bytes, problem: str) -> None:
    """An empty, binary or control-character password file is a ConfigError naming its key."""
    with pytest.raises(ConfigError, match=problem) as info:
        read_password(secret(tmp_path, data), "server.database_password_file")
    assert info.value.key == "server.database_password_file"


def test_a_password_is_stripped(tmp_path: Path) -> None:
    """Surrounding whitespace (the newline an editor adds) is not part of the password."""
    assert read_password(secret(tmp_path, b"  pw d\n"), "k") == "pw d"


def test_private_dirs_are_owner_only(tmp_path: Path) -> None:
    """Every folder made on the way is 0o700, whatever the umask."""
    old = os.umask(0)
    try:
        make_private_dirs(tmp_path / "a" / "b")
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o700
