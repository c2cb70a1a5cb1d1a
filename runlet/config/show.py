"""The schema shown to people: ``runlet config-keys``, README's table, ``check-config --json``.

All three are read from the fields of `runlet.config.schema`, so a key added, dropped or
re-documented there changes each of them, and a test keeps README's copy of the table equal
to `markdown_table`. Values that may hold a login are shown only through the caller's mask
(this package never imports the adapters that know how to mask a URL).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from runlet.config.schema import SECTIONS, TOP_KEYS, Config, all_keys
from runlet.config.setting import Key

TABLE_HEADER = "| key | type and default | meaning |"


def describe_keys() -> list[tuple[str, str, str]]:
    """Every key as (dotted key, type and default, one-line meaning), for --help and docs."""
    return [(key.dotted, _kind(key), key.setting.meaning) for key in all_keys()]


def markdown_table() -> str:
    """`describe_keys` as the Markdown table README.md shows under "Configuration"."""
    lines = [TABLE_HEADER, "|---|---|---|"]
    lines += [
        f"| `{dotted}` | {_cell(kind)} | {_cell(meaning)} |"
        for dotted, kind, meaning in describe_keys()
    ]
    return "\n".join(lines) + "\n"


def as_dict(config: Config, *, mask: Callable[[str], str]) -> dict[str, Any]:
    """Every key of `config` as JSON-ready values, by section; an absent section is None.

    `mask` is applied to each value (each item of a list) whose setting is marked masked,
    such as the broker URLs, which may hold a password.
    """
    shown = _values(config, TOP_KEYS, mask)
    for name, section in SECTIONS.items():
        value = getattr(config, name)
        shown[name] = None if value is None else _values(value, section.keys, mask)
    return shown


def _kind(key: Key) -> str:
    if key.required:
        default = "required"
    elif key.setting.default_doc is not None:
        default = f"default {key.setting.default_doc}"
    else:
        default = f"default {_literal(key.default)}"
    return f"{key.setting.check.doc}; {default}"


def _literal(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_literal(item) for item in value) + "]"
    return json.dumps(value) if isinstance(value, str) else str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a bare | would end the table cell


def _values(obj: object, keys: Mapping[str, Key], mask: Callable[[str], str]) -> dict[str, Any]:
    return {
        name: _plain(getattr(obj, name), mask if key.setting.masked else None)
        for name, key in keys.items()
    }


def _plain(value: object, mask: Callable[[str], str] | None) -> object:
    if isinstance(value, tuple):
        return [_plain(item, mask) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str) and mask is not None:
        return mask(value)
    return value
