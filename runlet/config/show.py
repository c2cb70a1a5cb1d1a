"""The schema shown to people: the key list of ``runlet config-keys`` and ``--help``.

It is read from the fields of `runlet.config.schema`, so a key added, dropped or
re-documented there shows up here with nothing else to change.
"""

from __future__ import annotations

import json

from runlet.config.schema import all_keys
from runlet.config.setting import Key


def describe_keys() -> list[tuple[str, str, str]]:
    """Every key as (dotted key, type and default, one-line meaning), for --help and docs."""
    return [(key.dotted, _kind(key), key.setting.meaning) for key in all_keys()]


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
