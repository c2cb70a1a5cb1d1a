"""The config schema as the one source: the fields' settings drive the loader's checks,
`runlet config-keys`, README's configuration table and `runlet check-config --json`."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import tomllib
from pathlib import Path
from typing import ClassVar

import pytest

from runlet.cli import main
from runlet.config import Config, describe_keys, markdown_table, parse_config
from runlet.config.checks import Invalid, Shape
from runlet.config.schema import SECTIONS, all_keys
from runlet.config.setting import Key, Setting, keys_of, schema, sections_of, setting
from runlet.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
HIDDEN = "s3cr3t-pa55"
MINIMAL = 'role = "daemon"\nuser = "demo"\n\n[crypto]\nkey_file = "keys/node.key"\n'
# Every optional section on, so that every key has a value to show.
EVERY_SECTION = (
    MINIMAL
    + '[storage]\nbucket = "logs"\n[server]\n'
    + f'database_url = "postgresql://ledger:{HIDDEN}@db.example.net:5432/runlet"\n'
    + '[metrics]\nlisten = "127.0.0.1:9100"\n'
)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RUNLET_* variable leaks in; the host name and home folder are fixed."""
    for name in list(os.environ):
        if name.startswith("RUNLET_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(socket, "gethostname", lambda: "testhost")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr("runlet.logging.configure", lambda *args, **kwargs: None)


def settings_by_field() -> dict[str, Setting]:
    """Each key's Setting read straight off the dataclass fields, not through the schema."""
    found = {}
    classes: list[tuple[str, type]] = [("", Config)]
    classes += [(f"{name}.", section.cls) for name, section in SECTIONS.items()]
    for prefix, cls in classes:
        for spec in dataclasses.fields(cls):
            for value in spec.metadata.values():
                if isinstance(value, Setting):
                    found[prefix + spec.name] = value
    return found


def parse(text: str, env: dict[str, str] | None = None) -> Config:
    return parse_config(text, source="test.toml", base_dir=Path("/etc/runlet"), env=env or {})


def error_key(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value.key


def flatten(shown: dict[str, object]) -> dict[str, object]:
    """`check-config --json` output as dotted keys (an absent section gives no keys)."""
    flat: dict[str, object] = {}
    for name, value in shown.items():
        if name in SECTIONS:
            if isinstance(value, dict):
                flat.update({f"{name}.{key}": item for key, item in value.items()})
        else:
            flat[name] = value
    return flat


def readme_table() -> list[str]:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index(markdown_table().splitlines()[0])
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return lines[start:end]


# --- one source, every output --------------------------------------------------------------


def test_every_key_is_a_field_with_a_setting() -> None:
    """The schema's keys are exactly the dataclass fields that carry a Setting, in order."""
    fields = settings_by_field()
    assert [key.dotted for key in all_keys()] == list(fields)
    assert all(key.setting is fields[key.dotted] for key in all_keys())
    assert len(fields) >= 30
    assert "source" not in fields


def test_one_source_drives_every_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """config-keys, README's table and check-config --json show the same keys, and the first
    two the same type, default and meaning, all read off the fields."""
    fields = settings_by_field()
    rows = describe_keys()
    assert [dotted for dotted, _, _ in rows] == list(fields)
    assert all(meaning == fields[dotted].meaning for dotted, _, meaning in rows)
    assert all(kind.startswith(fields[dotted].check.doc + "; ") for dotted, kind, _ in rows)

    assert main(["config-keys"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"{dotted:24} {kind:32} {meaning}" for dotted, kind, meaning in rows]

    table = markdown_table().splitlines()
    assert len(table) == 2 + len(rows)
    for line, (dotted, kind, meaning) in zip(table[2:], rows, strict=True):
        cells = line.replace("\\|", "\x00").strip("|").split("|")
        shown = [cell.strip().replace("\x00", "|") for cell in cells]
        assert shown == [f"`{dotted}`", kind, meaning]

    path = tmp_path / "runlet.toml"
    path.write_text(EVERY_SECTION, encoding="utf-8")
    assert main(["check-config", "--json", str(path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown.pop("source") == str(path)
    assert shown.pop("found_by") == "-c/--config"
    assert list(flatten(shown)) == list(fields)


def test_readme_table_is_the_generated_one() -> None:
    """README's configuration table is markdown_table() to the letter.

    To regenerate it, replace the table with the output of
    `python -c "import runlet.config as c; print(c.markdown_table(), end='')"`.
    """
    assert readme_table() == markdown_table().splitlines()


def render(values: dict[str, str]) -> str:
    """A TOML file from dotted keys and TOML literals."""
    top = [f"{key} = {value}" for key, value in values.items() if "." not in key]
    tables: dict[str, list[str]] = {}
    for dotted, value in values.items():
        section, _, key = dotted.partition(".")
        if key:
            tables.setdefault(section, []).append(f"{key} = {value}")
    return "\n".join([*top, *(f"[{name}]\n" + "\n".join(lines) for name, lines in tables.items())])


BASE = {"role": '"daemon"', "user": '"demo"', "crypto.key_file": '"k"', "storage.bucket": '"logs"'}


@pytest.mark.parametrize("key", all_keys(), ids=lambda key: key.dotted)
@pytest.mark.parametrize("literal", ["1979-05-27T07:32:00Z", "{ a = 1 }", "[[]]"])
def test_loader_applies_each_fields_own_check(key: Key, literal: str) -> None:
    """For every key, a value of a wrong type fails on that key with the problem its own
    field's check gives."""
    with pytest.raises(ConfigError) as info:
        parse(render({**BASE, key.dotted: literal}))
    with pytest.raises(Invalid) as direct:
        key.setting.check(tomllib.loads(f"v = {literal}")["v"])
    where = key.dotted if direct.value.index is None else f"{key.dotted}[{direct.value.index}]"
    assert (info.value.key, info.value.problem) == (where, direct.value.problem)
    assert "must be" in info.value.problem


def test_check_config_json_shows_every_section_with_logins_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json has every key of every section present; broker and database passwords are masked."""
    path = tmp_path / "runlet.toml"
    path.write_text(
        EVERY_SECTION.replace(
            "[storage]", f'[broker]\nurls = ["amqp://bob:{HIDDEN}@mq:5672/"]\n[storage]'
        ),
        encoding="utf-8",
    )
    assert main(["check-config", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert HIDDEN not in out
    shown = json.loads(out)
    assert shown["broker"]["urls"] == ["amqp://bob:***@mq:5672/"]
    assert shown["server"]["database_url"] == "postgresql://ledger:***@db.example.net:5432/runlet"
    assert shown["storage"]["bucket"] == "logs"
    assert shown["storage"]["endpoint_url"] is None
    assert shown["metrics"] == {"listen": "127.0.0.1:9100"}
    assert shown["vault"] == {"max_bytes": 0}
    assert shown["broker"]["presence_seconds"] == 10.0
    assert shown["crypto"]["key_file"] == str(tmp_path / "keys" / "node.key")


def test_check_config_json_absent_sections_are_null(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sections that are off print as null; the always-present ones print their defaults."""
    path = tmp_path / "runlet.toml"
    path.write_text(MINIMAL, encoding="utf-8")
    assert main(["check-config", "--json", str(path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["storage"], shown["server"], shown["metrics"]) == (None, None, None)
    assert shown["jobs"]["max_load"] is None
    assert shown["tags"] == []


# --- the machinery -------------------------------------------------------------------------


class AnyValue:
    """A check that takes anything, for the toy schemas below."""

    shape: ClassVar[Shape] = "text"
    doc: ClassVar[str] = "anything"

    def __call__(self, value: object) -> object:
        return value


@schema
class Half:
    """A section class with a field that is not a key."""

    documented: int = setting(AnyValue(), "checked", default=1)
    forgotten: int = 2


@schema
class HalfRoot:
    half: Half = dataclasses.field(default_factory=Half)


@schema
class Some:
    needed: str = setting(AnyValue(), "required")
    made: str = setting(AnyValue(), "made", fallback=lambda: "x")
    given: str = setting(AnyValue(), "given", default="y")


def test_a_section_field_without_a_setting_is_refused() -> None:
    """A section class with a plain field cannot become part of a schema unnoticed."""
    with pytest.raises(TypeError, match="forgotten"):
        sections_of(HalfRoot)


def test_required_and_fallback_keys() -> None:
    """No default makes a key required, unless its setting makes the default at load time."""
    keys: dict[str, Key] = keys_of(Some)
    assert [key.required for key in keys.values()] == [True, False, False]
    assert keys["given"].default == "y"
    assert sections_of(Config)["storage"].optional
    assert not sections_of(Config)["broker"].optional


# --- hostile input, key by key -------------------------------------------------------------


@pytest.mark.parametrize("section", list(SECTIONS))
def test_unknown_key_in_every_section(section: str) -> None:
    """Each section refuses a key it does not have, in the file and from the environment."""
    body = MINIMAL if section == "crypto" else MINIMAL + f"[{section}]\n"
    text = body.replace(f"[{section}]\n", f"[{section}]\nbogus_key = 1\n", 1)
    assert error_key(text) == f"{section}.bogus_key"
    variable = f"RUNLET_{section.upper()}__BOGUS_KEY"
    with pytest.raises(ConfigError) as info:
        parse(MINIMAL, {variable: "1"})
    assert (info.value.key, info.value.source) == (
        f"{section}.bogus_key",
        f"environment variable {variable}",
    )


@pytest.mark.parametrize("key", all_keys(), ids=lambda key: key.dotted)
@pytest.mark.parametrize("hostile", ["\x00", "{ a = 1 }\x00", "\x1b[2J\x00"])
def test_hostile_env_value_for_every_key(key: Key, hostile: str) -> None:
    """A NUL-holding value from the environment fails on its key, blamed on its variable."""
    variable = "RUNLET_" + key.dotted.upper().replace(".", "__")
    env = {variable: hostile}
    if key.dotted.startswith("storage.") and key.dotted != "storage.bucket":
        env["RUNLET_STORAGE__BUCKET"] = "logs"
    with pytest.raises(ConfigError) as info:
        parse(MINIMAL, env)
    assert info.value.key.partition("[")[0] == key.dotted
    assert info.value.source == f"environment variable {variable}"
    assert "\x00" not in str(info.value)
    assert "\x1b" not in str(info.value)
