"""`runlet init` (runlet.client.device_setup and the CLI): what it writes, where, and what it
refuses. The broker check is replaced by a fake here; the real one is in
tests/integration/test_first_run.py."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest

from runlet.cli import main
from runlet.config import load_config
from runlet.errors import BrokerUnavailable
from runlet.protocol.crypto import FleetKey

URL = "amqp://alice:pw@rabbit.example.org:5672/"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HOME with no XDG_CONFIG_HOME; the broker "answers" at once."""
    for name in list(os.environ):
        if name.startswith("RUNLET_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr("runlet.cli.setup_commands._quiet_logging", lambda: None)
    monkeypatch.setattr("runlet.logging.configure", lambda *args, **kwargs: None)

    async def answers(config: object) -> float:
        return 0.01

    monkeypatch.setattr("runlet.client.device_setup.broker_answers", answers)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal
    return tmp_path


def config_file(home: Path) -> Path:
    return home / ".config" / "runlet" / "config.toml"


def test_init_writes_a_config_the_loader_accepts_and_a_private_key(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In a fresh HOME, init writes ~/.config/runlet/config.toml and fleet.key (both 0600);
    the default-place loader reads it back with the given user, node and broker."""
    assert main(["init", "--broker", URL, "--user", "alice", "--node", "pi-1"]) == 0
    out = capsys.readouterr().out
    path = config_file(home)
    assert f"wrote {path}" in out
    assert "runlet start" in out
    assert "pw" not in out  # the password is masked wherever the URL is shown
    config = load_config(env={"HOME": str(home)})
    assert (config.role, config.user, config.node) == ("daemon", "alice", "pi-1")
    assert config.broker.urls == (URL,)
    assert config.key_file == path.parent / "fleet.key"
    key = FleetKey.load(config.key_file)
    assert key.fingerprint() in out
    for file in (path, config.key_file):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600


def test_init_refuses_to_overwrite_and_force_keeps_the_key(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second init fails and changes nothing; --force replaces the config, never the key."""
    assert main(["init", "--broker", URL, "--user", "alice"]) == 0
    path = config_file(home)
    before = path.read_text()
    key = FleetKey.load(path.parent / "fleet.key")
    capsys.readouterr()
    assert main(["init", "--broker", URL, "--user", "bob"]) == 70
    assert "refusing to overwrite" in capsys.readouterr().err
    assert path.read_text() == before
    assert main(["init", "--broker", URL, "--user", "bob", "--force", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["user"], shown["key"]) == ("bob", "kept")
    assert FleetKey.load(path.parent / "fleet.key") == key


def test_init_join_makes_no_key_and_says_pair(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--join writes the config but no key, and the next step it names is `runlet pair`."""
    assert main(["init", "--broker", URL, "--user", "alice", "--join", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["key"] == "to pair"
    assert shown["fingerprint"] is None
    assert not Path(shown["key_file"]).exists()
    assert any(step.startswith("runlet pair") for step in shown["next"])


@pytest.mark.parametrize(
    "argv",
    [["init"], ["init", "--broker", URL], ["init", "--user", "alice"]],
)
def test_init_off_a_terminal_needs_flags(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """Without a terminal to ask on, a missing --broker or --user is a usage error (64)."""
    assert main(argv) == 64
    err = capsys.readouterr().err
    assert err.startswith("runlet init: give --")
    assert not config_file(home).exists()


def test_init_asks_on_a_terminal(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the broker URL and user are asked for, one line each."""
    answers = iter([URL + "\n", "carol\n"])
    asked: list[str] = []

    def ask(question: str) -> str:
        asked.append(question)
        return next(answers)

    monkeypatch.setattr("runlet.cli.setup_commands._terminal_ask", lambda: ask)
    assert main(["init"]) == 0
    assert len(asked) == 2
    assert load_config(env={"HOME": str(home)}).user == "carol"


def test_init_an_empty_answer_is_a_usage_error(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty answer on the terminal stops with exit 64 and writes nothing."""
    monkeypatch.setattr("runlet.cli.setup_commands._terminal_ask", lambda: lambda q: "\n")
    assert main(["init"]) == 64
    assert not config_file(home).exists()


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--broker", "http://rabbit/", "--broker"),
        ("--broker", "amqp://", "--broker"),
        ("--broker", 'amqp://h/"\n[crypto]\nkey_file = "/etc/passwd', "--broker"),
        ("--broker", "amqp://" + "h" * 100_000, "--broker"),
        ("--user", "al ice", "--user"),
        ("--user", 'a"\nrole = "server', "--user"),
        ("--user", "x" * 65, "--user"),
        ("--node", "pi.1", "--node"),
        ("--node", "", "--node"),
        ("--node", "\x00", "--node"),
    ],
)
def test_init_hostile_values_are_usage_errors_and_write_nothing(
    home: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, says: str
) -> None:
    """A bad, truncated, oversize or TOML-injecting value names its option (exit 64); no
    config and no key are written."""
    argv = {"--broker": URL, "--user": "alice"} | {option: value}
    assert main(["init", *(x for kv in argv.items() for x in kv)]) == 64
    assert says in capsys.readouterr().err
    assert not config_file(home).parent.exists()


def test_init_writes_nothing_when_the_broker_does_not_answer(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker that cannot be reached stops init (69) before any file is written."""

    async def unreachable(config: object) -> float:
        raise BrokerUnavailable("cannot reach RabbitMQ at amqp://rabbit.example.org/")

    monkeypatch.setattr("runlet.client.device_setup.broker_answers", unreachable)
    assert main(["init", "--broker", URL, "--user", "alice"]) == 69
    assert "cannot reach RabbitMQ" in capsys.readouterr().err
    assert not config_file(home).parent.exists()


def test_init_system_writes_the_system_place(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--system writes the system place, with data_dir /var/lib/runlet and the key beside it."""
    system = tmp_path / "etc" / "runlet" / "runlet.toml"
    monkeypatch.setattr("runlet.config.places.SYSTEM_CONFIG", system)
    monkeypatch.setattr("runlet.client.device_setup.SYSTEM_CONFIG", system)
    assert main(["init", "--broker", URL, "--user", "alice", "--system"]) == 0
    config = load_config(env={})
    assert config.source == str(system)
    assert str(config.data_dir) == "/var/lib/runlet"
    assert config.key_file == system.parent / "fleet.key"


def test_pair_code_off_a_terminal_needs_yes(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`runlet pair CODE` with nobody to ask and no --yes is a usage error (64), before any
    config is read or the broker contacted."""
    assert main(["pair", "4-river-7-cactus"]) == 64
    assert "--yes" in capsys.readouterr().err


@pytest.mark.parametrize("code", ["4", "river-7-cactus", "4-river-7-cactus;rm", "x" * 10_000])
def test_pair_a_malformed_code_is_a_usage_error(
    home: Path, capsys: pytest.CaptureFixture[str], code: str
) -> None:
    """A code that is not N-word-N-word stops at once with its shape (64), --yes or not."""
    assert main(["pair", code, "--yes"]) == 64
    assert "4-river-7-cactus" in capsys.readouterr().err


class _Terminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_the_pairing_code_shows_as_a_qr_code_on_a_terminal_only() -> None:
    """On a terminal the code is drawn as a QR code of block characters; piped, nothing."""
    from runlet.cli.setup_commands import show_qr
    from runlet.protocol.pairing import PairingCode

    code = PairingCode(4, "river", 7, "cactus")
    drawn = _Terminal(tty=True)
    show_qr(code, drawn)
    rows = drawn.getvalue().splitlines()
    assert 10 <= len(rows) <= 20
    assert all(set(row) <= set("█▀▄ ") for row in rows)
    assert len({len(row) for row in rows}) == 1  # a square, drawn two modules a row
    piped = _Terminal(tty=False)
    show_qr(code, piped)
    assert piped.getvalue() == ""


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("init", ["--broker", "--user", "--node", "--join", "--system", "--force", "--json"]),
        ("doctor", ["--json", "problem"]),
        ("pair", ["code", "--yes", "SPAKE2"]),
        ("completion", ["bash", "zsh", "fish"]),
    ],
)
def test_first_run_commands_have_help(
    capsys: pytest.CaptureFixture[str], command: str, words: list[str]
) -> None:
    """Each first-run command's --help exits 0 and names its options; `runlet --help` lists it."""
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: runlet {command}")
    for word in words:
        assert word in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert f"    {command} " in capsys.readouterr().out
