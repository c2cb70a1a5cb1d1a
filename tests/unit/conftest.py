"""Unit-test isolation: no config file of the machine's is ever found by a default place."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _no_machine_config(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user place points into an empty folder and the system place at a missing file."""
    empty = tmp_path_factory.mktemp("xdg")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(empty))
    monkeypatch.setattr("runlet.config.places.SYSTEM_CONFIG", Path(empty / "etc" / "runlet.toml"))
