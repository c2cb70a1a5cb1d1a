"""Where a config file is looked for when no path is given, and which place a file came from.

In order, the first that applies wins:

1. ``-c/--config FILE`` on the command line;
2. the ``RUNLET_CONFIG`` environment variable;
3. the user's place, ``$XDG_CONFIG_HOME/runlet/config.toml`` (``~/.config`` when the variable
   is unset or not absolute, as the XDG base directory spec says; ``%APPDATA%`` on Windows
   without ``HOME``), if that file exists;
4. the system place, ``/etc/runlet/runlet.toml`` (a service install), if that file exists.

A path named by 1 or 2 must exist; 3 and 4 are only looked at. Nothing found is a
`ConfigError` that lists the places looked at and says how to make one (``runlet init``).
This module reads no file: it only decides which one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from runlet.config.checks import Invalid, expand
from runlet.errors import ConfigError

CONFIG_ENV = "RUNLET_CONFIG"
SYSTEM_CONFIG = Path("/etc/runlet/runlet.toml")
USER_CONFIG_NAME = Path("runlet") / "config.toml"

FROM_OPTION = "-c/--config"
FROM_ENV = CONFIG_ENV
FROM_USER = "the user config place"
FROM_SYSTEM = "the system config place"


@dataclass(frozen=True, slots=True)
class ConfigPlace:
    """The config file to read, and how it was chosen (one of the FROM_* names)."""

    path: Path
    found_by: str


def user_config_path(env: Mapping[str, str]) -> Path | None:
    """``$XDG_CONFIG_HOME/runlet/config.toml`` or its default; None with no home at all."""
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg and os.path.isabs(xdg):  # the spec: a relative value is invalid and ignored
        return Path(xdg) / USER_CONFIG_NAME
    home = env.get("HOME", "")
    if home and os.path.isabs(home):
        return Path(home) / ".config" / USER_CONFIG_NAME
    appdata = env.get("APPDATA", "")
    if appdata and os.path.isabs(appdata):
        return Path(appdata) / USER_CONFIG_NAME
    return None


def default_places(env: Mapping[str, str], system: Path | None = None) -> list[ConfigPlace]:
    """The places looked at when neither -c nor RUNLET_CONFIG names a file, in order."""
    user = user_config_path(env)
    places = [] if user is None else [ConfigPlace(user, FROM_USER)]
    return [*places, ConfigPlace(SYSTEM_CONFIG if system is None else system, FROM_SYSTEM)]


def locate_config(
    path: str | os.PathLike[str] | None,
    env: Mapping[str, str],
    *,
    system: Path | None = None,
) -> ConfigPlace:
    """The config file to read: `path`, else ``$RUNLET_CONFIG``, else the first default place."""
    if path is not None and os.fspath(path):
        return ConfigPlace(_expanded(os.fspath(path)), FROM_OPTION)
    if named := env.get(CONFIG_ENV, ""):
        return ConfigPlace(_expanded(named), FROM_ENV)
    places = default_places(env, system)
    for place in places:
        if place.path.is_file():
            return place
    looked = " and ".join(str(place.path) for place in places)
    raise ConfigError(
        "config",
        f"no config file given or found: pass -c/--config, set {CONFIG_ENV}, or run"
        f" `runlet init --broker URL --user NAME` to write one (looked at {looked})",
    )


def _expanded(chosen: str) -> Path:
    try:
        return expand(chosen)
    except Invalid as exc:
        raise ConfigError("config", exc.problem, source=chosen) from None
