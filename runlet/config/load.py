"""Reading a config: the file, the ``RUNLET_*`` environment over it, then the dataclasses.

Every key, check and default comes from `runlet.config.schema`; nothing here names a key
except the one rule across keys (``crypto.key_file`` is required unless the role is server).
Any problem is a `ConfigError` naming the dotted key and where its value came from (the file
or the environment variable); this module never falls back silently on a bad value and
never opens the files that path keys name.
"""

from __future__ import annotations

import difflib
import os
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runlet.config.checks import Conflict, Invalid, Shape, label, type_name
from runlet.config.places import CONFIG_ENV, locate_config
from runlet.config.schema import SECTIONS, TOP_KEYS, Config
from runlet.config.setting import Key
from runlet.errors import ConfigError

MAX_CONFIG_BYTES = 1024 * 1024

_ENV_PREFIX = "RUNLET_"
_TOO_LARGE = f"is larger than {MAX_CONFIG_BYTES} bytes (1 MiB); is it really a config file?"


def resolve_config_path(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path:
    """The config file to read: `path`, ``$RUNLET_CONFIG`` or a default place (`places`)."""
    return locate_config(path, env).path


def load_config(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> Config:
    """Read, override from `env` (default: the process environment) and check a config."""
    environ: Mapping[str, str] = os.environ if env is None else env
    file = locate_config(path, environ).path
    text = _read_text(file)
    return parse_config(text, source=str(file), base_dir=file.absolute().parent, env=environ)


def parse_config(
    text: str, *, source: str | None, base_dir: Path, env: Mapping[str, str]
) -> Config:
    """Check TOML `text` with `env` overrides; relative paths resolve against `base_dir`."""
    _check_text(text, source)
    raw = _parse_toml(text, source)
    _check_layout(raw, source)
    origins = _Origins(source)
    return _build(_overlay_env(raw, env, origins), base_dir, origins)


# --- the file ------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    data = _read_bytes(path)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError("config", _TOO_LARGE, source=str(path))
    try:
        return data.decode("utf-8-sig")  # -sig: editors on Windows may write a BOM
    except UnicodeDecodeError as exc:
        problem = f"is not UTF-8 text (bad byte at offset {exc.start})"
        raise ConfigError("config", problem, source=str(path)) from exc


def _read_bytes(path: Path) -> bytes:
    """At most one byte more than allowed, so an oversize file is never read whole."""
    source = str(path)
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError("config", "is a directory, not a file", source=source)
        if not stat.S_ISREG(mode):  # a FIFO or device could block or never end
            raise ConfigError("config", "is not a regular file", source=source)
        with path.open("rb") as handle:
            return handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as exc:
        raise ConfigError("config", "file not found", source=source) from exc
    except PermissionError as exc:
        raise ConfigError("config", "permission denied", source=source) from exc
    except OSError as exc:
        raise ConfigError("config", f"cannot read: {exc.strerror or exc}", source=source) from exc


def _check_text(text: str, source: str | None) -> None:
    if len(text) > MAX_CONFIG_BYTES or len(text.encode("utf-8", "replace")) > MAX_CONFIG_BYTES:
        raise ConfigError("config", _TOO_LARGE, source=source)
    if "\x00" in text:
        raise ConfigError("config", "contains NUL bytes; is it a binary file?", source=source)


def _parse_toml(text: str, source: str | None) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"invalid TOML: {exc}", source=source) from exc
    except RecursionError as exc:
        raise ConfigError("config", "invalid TOML: nested too deeply", source=source) from exc
    except ValueError as exc:  # an integer literal past Python's digit limit
        raise ConfigError(
            "config", f"invalid TOML: a number is too long ({exc})", source=source
        ) from exc


def _check_layout(raw: Mapping[str, Any], source: str | None) -> None:
    """Every top-level name is a known key or section, and every section key is known."""
    for name, value in raw.items():
        if name in SECTIONS:
            _check_section(name, value, source)
        elif name not in TOP_KEYS:
            what = "section" if isinstance(value, dict) else "key"
            problem = _unknown(what, name, [*TOP_KEYS, *SECTIONS])
            raise ConfigError(label(name), problem, source=source)


def _check_section(name: str, table: object, source: str | None) -> None:
    if not isinstance(table, dict):
        problem = f"must be a table ([{name}]), got {type_name(table)}"
        raise ConfigError(name, problem, source=source)
    keys = SECTIONS[name].keys
    for key, value in table.items():
        if key not in keys:
            what = "table" if isinstance(value, dict) else "key"
            raise ConfigError(f"{name}.{label(key)}", _unknown(what, key, keys), source=source)


def _unknown(what: str, name: str, known: Iterable[str]) -> str:
    choices = sorted(known)
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(choices)}"
    return f"unknown {what}; {hint}"


# --- environment overrides -----------------------------------------------------------------


@dataclass(slots=True)
class _Origins:
    """Where each value came from, so an error names the file or the variable to fix."""

    file: str | None
    env: dict[str, str] = field(default_factory=dict)  # dotted key -> variable name

    def of(self, dotted: str) -> str | None:
        variable = self.env.get(dotted.partition("[")[0])
        return f"environment variable {variable}" if variable else self.file


def _env_name(dotted: str) -> str:
    return _ENV_PREFIX + dotted.upper().replace(".", "__")


def _env_target(variable: str) -> Key | None:
    """The key that `variable` sets, or None if it sets none."""
    if not variable.startswith(_ENV_PREFIX) or variable == CONFIG_ENV:
        return None
    section, nested, name = variable.removeprefix(_ENV_PREFIX).lower().partition("__")
    if not nested:
        return TOP_KEYS.get(section)
    where = f"environment variable {variable}"
    if section not in SECTIONS:
        raise ConfigError(label(section), _unknown("section", section, SECTIONS), source=where)
    keys = SECTIONS[section].keys
    if name not in keys:
        raise ConfigError(f"{section}.{label(name)}", _unknown("key", name, keys), source=where)
    return keys[name]


def _overlay_env(
    raw: Mapping[str, Any], env: Mapping[str, str], origins: _Origins
) -> dict[str, Any]:
    merged = {
        name: dict(value) if isinstance(value, dict) else value for name, value in raw.items()
    }
    for variable in sorted(env):
        key = _env_target(variable)
        if key is None:
            continue
        section = key.dotted.rpartition(".")[0]
        table = merged.setdefault(section, {}) if section else merged
        table[key.name] = _env_value(key.setting.check.shape, env[variable])
        origins.env[key.dotted] = variable
    return merged


def _env_value(shape: Shape, text: str) -> object:
    parsed = _toml_value(text)
    if shape == "scalar":
        return text if parsed is None else parsed
    if shape == "text":
        return parsed if isinstance(parsed, str) else text
    if isinstance(parsed, list):
        return parsed
    words = parsed if isinstance(parsed, str) else text
    return [word.strip() for word in words.split(",")] if words.strip() else []


def _toml_value(text: str) -> object | None:
    """`text` as one TOML value, or None if it is not exactly one (TOML has no null)."""
    try:
        document = tomllib.loads(f"v = {text}")
    except (ValueError, RecursionError):  # TOMLDecodeError is a ValueError
        return None
    return document["v"] if document.keys() == {"v"} else None


# --- building ------------------------------------------------------------------------------


def _build(table: Mapping[str, Any], base_dir: Path, origins: _Origins) -> Config:
    top = _convert_table(TOP_KEYS, table, base_dir, origins)
    sections: dict[str, Any] = {
        name: _section(
            section.cls,
            _convert_table(section.keys, table.get(name, {}), base_dir, origins),
            origins,
        )
        if name in table or not section.optional
        else None
        for name, section in SECTIONS.items()
    }
    for key in TOP_KEYS.values():  # after the sections, so their errors come first
        if key.name not in top and (make := key.setting.fallback) is not None:
            top[key.name] = _fall_back(key.dotted, make, origins)
    if sections["crypto"] is None and top["role"] != "server":
        problem = (
            f"is required for role {top['role']!r} (daemons and clients seal with the fleet"
            f" key): set it in the file or with {_env_name('crypto.key_file')}"
        )
        raise ConfigError("crypto.key_file", problem, source=origins.file)
    return Config(**top, **sections, source=origins.file)


def _section(cls: type[Any], values: dict[str, Any], origins: _Origins) -> Any:
    """A section's object; keys that do not go together (its `Conflict`) name the one to fix."""
    try:
        return cls(**values)
    except Conflict as exc:
        raise ConfigError(exc.key, exc.problem, source=origins.of(exc.key)) from None


def _convert_table(
    keys: Mapping[str, Key], table: Mapping[str, Any], base_dir: Path, origins: _Origins
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in keys.values():
        if key.name in table:
            values[key.name] = _convert(key, table[key.name], base_dir, origins)
        elif key.required:
            problem = f"is required: set it in the file or with {_env_name(key.dotted)}"
            raise ConfigError(key.dotted, problem, source=origins.of(key.dotted))
    return values


def _convert(key: Key, value: object, base_dir: Path, origins: _Origins) -> object:
    try:
        result = key.setting.check(value)
    except Invalid as exc:
        where = key.dotted if exc.index is None else f"{key.dotted}[{exc.index}]"
        raise ConfigError(where, exc.problem, source=origins.of(key.dotted)) from None
    if isinstance(result, Path) and not result.is_absolute():
        return base_dir / result
    return result


def _fall_back(dotted: str, make: Callable[[], object], origins: _Origins) -> object:
    """The default a key's setting makes at load time (the node name from the host name)."""
    try:
        return make()
    except Invalid as exc:
        raise ConfigError(dotted, f"{exc.problem}; set {dotted}", source=origins.file) from None
