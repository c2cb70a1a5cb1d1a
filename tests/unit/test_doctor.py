"""`runlet doctor`'s checks that need no broker (runlet.client.doctor): a missing config,
the management URL guessed from a broker URL, the disk check, the exit status."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from runlet.cli import main
from runlet.client import doctor
from runlet.config import Config


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://u:p@rabbit.example.org:5672/", "http://rabbit.example.org:15672/"),
        ("amqps://rabbit.example.org/vhost", "https://rabbit.example.org:15671/"),
        ("amqp://u:p@[::1]:5672/", "http://[::1]:15672/"),
        ("amqp:///", None),
        ("http://rabbit/", None),
        ("not a url", None),
    ],
)
def test_management_url_from_the_broker_url(url: str, expected: str | None) -> None:
    """RabbitMQ's default management port on the broker's host; no host, no URL."""
    assert doctor.management_url(url) == expected


def test_no_config_is_one_problem_saying_init(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no config anywhere doctor prints one problem line and `runlet init`; exit 1."""
    monkeypatch.delenv("RUNLET_CONFIG", raising=False)
    monkeypatch.setattr("runlet.cli.setup_commands._quiet_logging", lambda: None)
    assert main(["doctor"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("problem  config")
    assert "runlet init" in lines[1]
    assert len(lines) == 2


Usage = namedtuple("Usage", "total used free")


def test_disk_low_space_and_missing_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data_dir not made yet is measured at its nearest parent; under 256 MiB free is a
    problem, with what to do."""
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(2**40, 2**40 - 2**20, 2**20))
    finding = doctor._disk(tmp_path / "not" / "yet")
    assert (finding.status, finding.check) == ("problem", "disk")
    assert finding.fix
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(2**40, 0, 2**40))
    assert doctor._disk(tmp_path / "not" / "yet").status == "ok"


def test_a_server_config_skips_the_key(tmp_path: Path) -> None:
    """A server holds no fleet key: the key check is skipped, not a problem."""
    config = Config(role="server", user="ops", node="srv", data_dir=tmp_path)
    finding, key = doctor._key(config)
    assert (finding.status, key) == ("skipped", None)


def test_an_unreadable_config_ends_the_checks(tmp_path: Path) -> None:
    """A config that does not parse is the only finding, naming the file."""
    path = tmp_path / "bad.toml"
    path.write_text("role = [")
    found = asyncio.run(doctor.diagnose(str(path), dict(os.environ)))
    assert [(f.check, f.status) for f in found] == [("config", "problem")]
    assert str(path) in found[0].detail
