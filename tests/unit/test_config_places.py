"""Where a config is looked for with no path given (runlet.config.places), and check-config
saying which file it read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runlet.cli import main
from runlet.config import default_places, locate_config, user_config_path
from runlet.config.places import FROM_ENV, FROM_OPTION, FROM_SYSTEM, FROM_USER
from runlet.errors import ConfigError

MINIMAL = 'role = "client"\nuser = "alice"\nnode = "laptop"\n[crypto]\nkey_file = "k"\n'


def _write(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(MINIMAL)
    return path


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"XDG_CONFIG_HOME": "/x", "HOME": "/h"}, "/x/runlet/config.toml"),
        ({"HOME": "/h"}, "/h/.config/runlet/config.toml"),
        ({"XDG_CONFIG_HOME": "", "HOME": "/h"}, "/h/.config/runlet/config.toml"),
        ({"XDG_CONFIG_HOME": "relative/x", "HOME": "/h"}, "/h/.config/runlet/config.toml"),
        ({"HOME": "not/absolute", "APPDATA": "/appdata"}, "/appdata/runlet/config.toml"),
        ({}, None),
    ],
)
def test_user_place_follows_xdg(env: dict[str, str], expected: str | None) -> None:
    """$XDG_CONFIG_HOME when absolute, else ~/.config (a relative value is ignored, as XDG
    says); no home at all gives no user place."""
    found = user_config_path(env)
    assert (None if found is None else str(found)) == expected


def test_order_option_env_user_system(tmp_path: Path) -> None:
    """-c beats RUNLET_CONFIG beats the user place beats the system place."""
    user = _write(tmp_path / "xdg" / "runlet" / "config.toml")
    system = _write(tmp_path / "etc" / "runlet.toml")
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "RUNLET_CONFIG": str(tmp_path / "env.toml")}
    assert locate_config(tmp_path / "opt.toml", env, system=system).found_by == FROM_OPTION
    assert locate_config(None, env, system=system).found_by == FROM_ENV
    del env["RUNLET_CONFIG"]
    place = locate_config(None, env, system=system)
    assert (place.path, place.found_by) == (user, FROM_USER)
    user.unlink()
    place = locate_config(None, env, system=system)
    assert (place.path, place.found_by) == (system, FROM_SYSTEM)


def test_a_folder_in_a_default_place_is_not_a_config(tmp_path: Path) -> None:
    """Only a regular file counts in a default place: a folder there is passed over."""
    (tmp_path / "xdg" / "runlet" / "config.toml").mkdir(parents=True)
    system = _write(tmp_path / "etc" / "runlet.toml")
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert locate_config(None, env, system=system).path == system


def test_nothing_found_lists_the_places_and_says_init(tmp_path: Path) -> None:
    """With no file anywhere the error names every place looked at and `runlet init`."""
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    with pytest.raises(ConfigError) as info:
        locate_config(None, env, system=tmp_path / "etc.toml")
    problem = info.value.problem
    assert str(tmp_path / "xdg" / "runlet" / "config.toml") in problem
    assert str(tmp_path / "etc.toml") in problem
    assert "runlet init" in problem
    assert [p.found_by for p in default_places(env)] == [FROM_USER, FROM_SYSTEM]


def test_a_named_file_that_is_missing_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    """RUNLET_CONFIG naming a missing file fails; the user place is not tried instead."""
    _write(tmp_path / "xdg" / "runlet" / "config.toml")
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "RUNLET_CONFIG": str(tmp_path / "gone")}
    from runlet.config import load_config

    with pytest.raises(ConfigError, match="file not found"):
        load_config(None, env=env)


def test_check_config_says_which_file_and_how_it_was_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """check-config with no file reads the user place and names it, in text and in JSON."""
    monkeypatch.delenv("RUNLET_CONFIG", raising=False)
    monkeypatch.setattr("runlet.logging.configure", lambda *args, **kwargs: None)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    path = _write(tmp_path / "runlet" / "config.toml")
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: ok")
    assert FROM_USER in out
    assert main(["check-config", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["source"], shown["found_by"]) == (str(path), FROM_USER)
    assert main(["-c", str(path), "check-config", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["found_by"] == FROM_OPTION
