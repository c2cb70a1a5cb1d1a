"""The blob store's credentials: a TOML file only its owner may read, never echoed anywhere.

What it must never do: put anything read from the file into a message or a log line.
"""

from __future__ import annotations

import tomllib
from functools import partial
from pathlib import Path

from runlet.errors import ConfigError
from runlet.files import read_secret

MAX_CREDENTIALS_BYTES = 64 * 1024
_CREDENTIALS_KEY = "storage.credentials_file"


def load_credentials(path: Path) -> tuple[str, str]:
    """(access_key_id, secret_access_key) from a TOML file only its owner may read.

    Problems with the file are `ConfigError` on ``storage.credentials_file``; nothing read
    from it ever appears in a message.
    """
    data = read_secret(path, partial(_bad_credentials, path), max_bytes=MAX_CREDENTIALS_BYTES)
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        raise _bad_credentials(path, "is not a TOML file of UTF-8 text") from None
    expected = {"access_key_id", "secret_access_key"}
    if table.keys() != expected:
        missing = ", ".join(sorted(expected - table.keys()))
        problem = f"lacks {missing}" if missing else "holds keys other than these two"
        raise _bad_credentials(
            path, f"{problem}: it must set exactly access_key_id and secret_access_key"
        )
    values = []
    for name in ("access_key_id", "secret_access_key"):
        value = table[name]
        if not isinstance(value, str) or not value or not value.isprintable() or " " in value:
            raise _bad_credentials(path, f"{name} must be a non-empty string without spaces")
        values.append(value)
    return values[0], values[1]


def _bad_credentials(path: Path, problem: str) -> ConfigError:
    return ConfigError(_CREDENTIALS_KEY, problem, source=str(path))
