#!/usr/bin/env python3
"""`runlet-env COMMAND...`: run COMMAND with the broker password, read from a file, in the URLs.

Runlet reads a broker password only from `[broker] urls` (there is no `broker.password_file`
yet), and a config file must not hold secrets. So the server container starts through this
wrapper (its ENTRYPOINT, see deploy/Dockerfile): when RUNLET_BROKER_PASSWORD_FILE names a
file, it reads the config's `broker.urls` (the file given by -c/--config when COMMAND is
runlet, else $RUNLET_CONFIG), puts the URL-encoded password into every URL that has a user
name but no password, and hands the result to runlet in RUNLET_BROKER__URLS, which overrides
the file.
Then it replaces itself with COMMAND. Without RUNLET_BROKER_PASSWORD_FILE it only runs COMMAND.

It never prints a password or a URL that holds one. `docker compose exec` bypasses the
ENTRYPOINT: put `runlet-env` in front of a runlet command that needs the broker there.
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from collections.abc import Sequence
from typing import NoReturn
from urllib.parse import quote, urlsplit, urlunsplit

EX_USAGE = 64
EX_CONFIG = 78  # runlet's own status for a bad config


def fail(status: int, message: str) -> NoReturn:
    print(f"runlet-env: {message}", file=sys.stderr)
    sys.exit(status)


def config_path(command: Sequence[str]) -> str:
    """The -c/--config value of a runlet COMMAND, else $RUNLET_CONFIG, else ""."""
    if os.path.basename(command[0]) != "runlet":  # another program's -c means something else
        return os.environ.get("RUNLET_CONFIG", "")
    for index, arg in enumerate(command):
        if arg in ("-c", "--config") and index + 1 < len(command):
            return command[index + 1]
        if arg.startswith("--config="):
            return arg.partition("=")[2]
        if arg.startswith("-c") and len(arg) > 2:
            return arg[2:]
    return os.environ.get("RUNLET_CONFIG", "")


def broker_urls(path: str) -> list[str]:
    if not path:
        fail(EX_CONFIG, "RUNLET_BROKER_PASSWORD_FILE is set but no config names broker.urls")
    try:
        with open(path, "rb") as handle:
            config = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        fail(EX_CONFIG, f"cannot read broker.urls from {path}: {exc}")
    urls = config.get("broker", {}).get("urls")
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        fail(EX_CONFIG, f"{path}: broker.urls must be a non-empty list of URLs")
    return urls


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" in userinfo:  # no user name to pair it with, or a password already
        return url
    netloc = f"{userinfo}:{quote(password, safe='')}@{hostport}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def main(command: Sequence[str]) -> None:
    if not command:
        fail(EX_USAGE, "usage: runlet-env COMMAND [ARG...]")
    password_file = os.environ.get("RUNLET_BROKER_PASSWORD_FILE", "")
    if password_file:
        try:
            with open(password_file, encoding="utf-8") as handle:
                password = handle.read().strip()
        except OSError as exc:
            fail(EX_CONFIG, f"RUNLET_BROKER_PASSWORD_FILE={password_file}: {exc.strerror}")
        if not password:
            fail(EX_CONFIG, f"RUNLET_BROKER_PASSWORD_FILE={password_file} is empty")
        urls = [with_password(url, password) for url in broker_urls(config_path(command))]
        os.environ["RUNLET_BROKER__URLS"] = json.dumps(urls)  # a TOML array as well
    try:
        os.execvp(command[0], list(command))  # noqa: S606 - runs the command it was given
    except OSError as exc:
        fail(127, f"cannot run {command[0]}: {exc.strerror}")


if __name__ == "__main__":
    main(sys.argv[1:])
