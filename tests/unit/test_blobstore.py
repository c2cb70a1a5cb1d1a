"""The blob store adapter's parts that need no store: object keys and the credentials file.

What needs an S3 server is in tests/integration/test_blobstore.py.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from runlet.adapters.blobstore import (
    MAX_CREDENTIALS_BYTES,
    BlobStore,
    index_key,
    load_credentials,
    object_key,
)
from runlet.config import StorageConfig
from runlet.errors import ConfigError

USER = "alice"
NODE = "edge-1"
JOB = "0123456789abcdef0123456789abcdef"


def offline_config(folder: Path) -> StorageConfig:
    """A config for an endpoint nothing is asked of, with a private credentials file."""
    credentials = write_credentials(
        folder / "s3-credentials.toml", 'access_key_id = "k"\nsecret_access_key = "k"\n'
    )
    return StorageConfig(
        bucket="runlet-offline", endpoint_url="http://127.0.0.1:9", credentials_file=credentials
    )


def test_keys_follow_the_layout() -> None:
    """Logs live at <user>/<node>/<job>.rlog and the index at <user>/by-job/<job>."""
    assert object_key(USER, NODE, JOB) == f"alice/edge-1/{JOB}.rlog"
    assert object_key(USER, NODE, f"{JOB}.edge-2") == f"alice/edge-1/{JOB}.edge-2.rlog"
    assert index_key(USER, JOB) == f"alice/by-job/{JOB}"


@pytest.mark.parametrize(
    ("user", "node", "job"),
    [("a/b", NODE, JOB), (USER, "..", JOB), (USER, NODE, "../../etc"), (USER, NODE, "")],
)
def test_keys_refuse_ids_that_could_escape(user: str, node: str, job: str) -> None:
    """No user, node or job id can add a '/' or '..' to a key."""
    with pytest.raises(ValueError, match="not a"):
        object_key(user, node, job)


def write_credentials(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_credentials_are_read(tmp_path: Path) -> None:
    """A private TOML file with both keys gives them back in order."""
    path = write_credentials(
        tmp_path / "c.toml", 'access_key_id = "AKIA1"\nsecret_access_key = "s3cret/+x"\n'
    )
    assert load_credentials(path) == ("AKIA1", "s3cret/+x")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('access_key_id = "AKIA1"\n', "lacks secret_access_key"),
        ('secret_access_key = "s3cret"\n', "lacks access_key_id"),
        ('access_key_id = "A"\nsecret_access_key = "s3cret"\nsession = "x"\n', "other than"),
        ('access_key_id = "A"\nsecret_access_key = ""\n', "non-empty"),
        ('access_key_id = "A"\nsecret_access_key = 7\n', "non-empty"),
        ('access_key_id = "A B"\nsecret_access_key = "s3cret"\n', "without spaces"),
        ('access_key_id = "A"\nsecret_access_key = "s3cret\\n"\n', "without spaces"),
        ("access_key_id = s3cret garbage\n", "not a TOML file"),
        ("", "lacks"),
    ],
)
def test_bad_credentials_are_config_errors(tmp_path: Path, text: str, problem: str) -> None:
    """Each malformed credentials file is a ConfigError that never echoes the secret."""
    path = write_credentials(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as info:
        load_credentials(path)
    assert info.value.key == "storage.credentials_file"
    assert info.value.source == str(path)
    assert problem in info.value.problem
    assert "s3cret" not in str(info.value)


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_credentials_open_to_others_are_refused(tmp_path: Path, mode: int) -> None:
    """Like the fleet key, a credentials file others can read is refused with the fix."""
    path = write_credentials(
        tmp_path / "c.toml", 'access_key_id = "A"\nsecret_access_key = "s3cret"\n', mode
    )
    with pytest.raises(ConfigError, match="chmod 600"):
        load_credentials(path)


def test_missing_oversize_and_odd_credentials_files(tmp_path: Path) -> None:
    """A missing, oversize, binary or non-regular credentials file is a clear ConfigError."""
    with pytest.raises(ConfigError, match="not found"):
        load_credentials(tmp_path / "nope.toml")
    big = write_credentials(tmp_path / "big.toml", "#" * (MAX_CREDENTIALS_BYTES + 1))
    with pytest.raises(ConfigError, match="over"):
        load_credentials(big)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00s3cret")
    binary.chmod(0o600)
    with pytest.raises(ConfigError, match="UTF-8"):
        load_credentials(binary)
    folder = tmp_path / "dir"
    folder.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="regular file"):
        load_credentials(folder)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo", 0o600)
        with pytest.raises(ConfigError, match="regular file"):
            load_credentials(tmp_path / "fifo")  # refused at once, never waiting for a writer


def test_bad_credentials_file_fails_open(tmp_path: Path) -> None:
    """Opening a store whose credentials file is open to others fails before any request."""
    config = offline_config(tmp_path)
    assert config.credentials_file is not None
    config.credentials_file.chmod(0o644)
    with pytest.raises(ConfigError, match=r"storage\.credentials_file"):
        asyncio.run(BlobStore(config, USER).open())
