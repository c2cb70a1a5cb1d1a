"""The command line (runlet.cli): argument parsing, help, and exit statuses, run in-process.

Nothing here reaches a broker: every case ends before a connection would be made.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from runlet import __version__
from runlet.cli import main
from runlet.protocol.crypto import FleetKey

JOB = "0123456789abcdef0123456789abcdef"
HIDDEN = "s3cr3t-pa55"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RUNLET_* variable from the outside leaks in, and logging is not reconfigured."""
    for name in list(os.environ):
        if name.startswith("RUNLET_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr("runlet.logging.configure", lambda *args, **kwargs: None)


def write_config(folder: Path, *, role: str = "client", extra: str = "", broker: str = "") -> Path:
    """A complete, valid config in `folder` (plus `extra` top-level or section text)."""
    path = folder / "runlet.toml"
    path.write_text(
        f'role = "{role}"\n'
        'user = "alice"\n'
        'node = "laptop"\n'
        f'data_dir = "{folder / "data"}"\n'
        f"{extra}\n"
        f"{broker}\n"
        "[crypto]\n"
        f'key_file = "{folder / "fleet.key"}"\n',
        encoding="utf-8",
    )
    return path


def exits(argv: list[str]) -> int:
    """The status argparse exits with (it raises SystemExit instead of returning)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    code = info.value.code
    assert isinstance(code, int)
    return code


# --- help and parsing --------------------------------------------------------------------------


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    """`runlet --help` exits 0 and lists every subcommand and the config option."""
    assert exits(["--help"]) == 0
    out = capsys.readouterr().out
    for word in ("--config", "start", "run", "attach", "send", "cancel", "key", "check-config"):
        assert word in out
    assert "config-keys" in out
    assert "RUNLET_CONFIG" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`runlet --version` prints the package version and exits 0."""
    assert exits(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"runlet {__version__}"


SUBCOMMANDS: list[tuple[list[str], list[str]]] = [
    (["start"], []),
    (
        ["run"],
        [
            "--on",
            "--detach",
            "--deadline",
            "--timeout",
            "--env",
            "--cwd",
            "--json",
            "--detach-key",
            "any",
            "tag:TAG",
        ],
    ),
    (["attach"], ["job_id", "--read-only", "--detach-key"]),
    (["send"], ["job_id", "text"]),
    (["cancel"], ["job_id", "--no-wait"]),
    (["key"], ["init", "export", "import", "show"]),
    (["key", "init"], ["--force"]),
    (["key", "import"], ["--force"]),
    (["key", "export"], []),
    (["key", "show"], []),
    (["check-config"], ["file", "--json"]),
    (["config-keys"], []),
]


@pytest.mark.parametrize(
    ("argv", "words"), SUBCOMMANDS, ids=[" ".join(argv) for argv, _ in SUBCOMMANDS]
)
def test_subcommand_help(
    capsys: pytest.CaptureFixture[str], argv: list[str], words: list[str]
) -> None:
    """Every subcommand's --help exits 0 and mentions each of its options."""
    assert exits([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: runlet {' '.join(argv)}")
    for word in words:
        assert word in out


@pytest.mark.parametrize("argv", [["frobnicate"], ["Run"], ["key", "spin"]])
def test_unknown_subcommand(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """An unknown subcommand is a usage error from argparse (exit 2) naming the choices."""
    assert exits(argv) == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["key"], ["attach"], ["send", JOB]])
def test_missing_arguments(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """A missing subcommand or required argument is a usage error (exit 2)."""
    assert exits(argv) == 2
    assert "required" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["run"], ["run", "--"], ["run", "--on", "any", "--"]])
def test_run_without_command(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """`run` with no command exits 64 and shows how to give one."""
    assert main(argv) == 64
    assert "give the command after --" in capsys.readouterr().err


@pytest.mark.parametrize("item", ["BAD", "=value", "", "A\0B=c", "A=b\0"])
def test_run_bad_env(capsys: pytest.CaptureFixture[str], item: str) -> None:
    """A --env that is not KEY=VALUE exits 64 and quotes it."""
    assert main(["run", "--env", item, "--", "uptime"]) == 64
    assert "--env wants KEY=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--deadline", "--timeout"])
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("-1", "seconds out of range"),
        ("0", "seconds out of range"),
        ("1e12", "seconds out of range"),
        ("nan", "seconds out of range"),
        ("inf", "seconds out of range"),
        ("abc", "not a number of seconds"),
        ("", "not a number of seconds"),
        ("10s", "not a number of seconds"),
    ],
)
def test_run_bad_seconds(
    capsys: pytest.CaptureFixture[str], option: str, value: str, problem: str
) -> None:
    """--deadline and --timeout refuse non-numbers and values out of range (exit 2)."""
    assert exits(["run", f"{option}={value}", "--", "uptime"]) == 2
    err = capsys.readouterr().err
    assert problem in err
    assert option in err


def test_run_negative_deadline_as_separate_word(capsys: pytest.CaptureFixture[str]) -> None:
    """`--deadline -1` (two words) is read as a value and refused as out of range."""
    assert exits(["run", "--deadline", "-1", "--", "uptime"]) == 2
    assert "seconds out of range: -1" in capsys.readouterr().err


def test_run_checks_usage_before_config(capsys: pytest.CaptureFixture[str]) -> None:
    """A usage error is reported even when no config is given (it is checked first)."""
    assert main(["run", "--env", "BAD", "--", "uptime"]) == 64
    assert "config" not in capsys.readouterr().err


def test_run_without_config(capsys: pytest.CaptureFixture[str]) -> None:
    """A well-formed `run` with no config anywhere exits 78, naming how to give one."""
    assert main(["run", "--", "uptime"]) == 78
    err = capsys.readouterr().err
    assert "no config file given" in err
    assert "RUNLET_CONFIG" in err


# --- check-config ----------------------------------------------------------------------------


def test_check_config_good(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A valid file is reported as ok with its role, node and user (exit 0)."""
    path = write_config(tmp_path)
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ok" in out
    assert "role client" in out
    assert "node laptop" in out
    assert "user alice" in out


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("[jobs]\nmax_parallel = 0", "jobs.max_parallel"),
        ("[jobs]\nmax_paralel = 4", "jobs.max_paralel"),
        ('[broker]\nurls = ["http://x/"]', "broker.urls[0]"),
        ("[broker]\nurls = []", "broker.urls"),
        ('[log]\nlevel = "loud"', "log.level"),
        ('tags = ["ok", "not.ok"]', "tags[1]"),
        ("colour = 1", "colour"),
        ("[jobs]\ngrace_seconds = -1.0", "jobs.grace_seconds"),
    ],
)
def test_check_config_bad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, key: str
) -> None:
    """A bad file exits 78 and names the offending key and the file."""
    path = write_config(tmp_path, extra=extra)
    assert main(["check-config", str(path)]) == 78
    err = capsys.readouterr().err
    assert f"{key}:" in err
    assert str(path) in err


def test_check_config_missing_required(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file without a required key exits 78 and names it."""
    path = tmp_path / "runlet.toml"
    path.write_text('role = "client"\n[crypto]\nkey_file = "k"\n', encoding="utf-8")
    assert main(["check-config", str(path)]) == 78
    assert "user: is required" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["role = ", "\0\0", "[crypto"])
def test_check_config_not_toml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    """A file that is not TOML exits 78 and names the file."""
    path = tmp_path / "bad.toml"
    path.write_text(content, encoding="utf-8")
    assert main(["check-config", str(path)]) == 78
    assert str(path) in capsys.readouterr().err


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that does not exist exits 78 saying so."""
    assert main(["check-config", str(tmp_path / "nope.toml")]) == 78
    assert "file not found" in capsys.readouterr().err


def test_check_config_json_shows_the_password_file_not_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With broker.password_file, --json shows its path and the TLS keys, never its content."""
    secret = tmp_path / "broker_password"
    secret.write_text(HIDDEN)
    secret.chmod(0o600)
    broker = (
        '[broker]\nurls = ["amqps://runlet-alice@mq.example.net:5671/"]\n'
        f'password_file = "{secret}"\nca_file = "ca.pem"\nserver_name = "mq.example.net"\n'
    )
    path = write_config(tmp_path, broker=broker)
    assert main(["check-config", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert HIDDEN not in out
    shown = json.loads(out)["broker"]
    assert shown["password_file"] == str(secret)
    assert (shown["ca_file"], shown["server_name"]) == (str(tmp_path / "ca.pem"), "mq.example.net")
    assert (shown["verify"], shown["login"], shown["cert_file"]) == (True, "password", None)


def test_check_config_json_masks_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints the settings as JSON with each broker password masked."""
    urls = [
        f"amqp://alice:{HIDDEN}@mq1.example.net:5671/",
        f"amqp://bob:{HIDDEN}@mq2.example.net:5672/vhost",
        "amqp://mq3.example.net:5672/",
    ]
    path = write_config(tmp_path, broker=f"[broker]\nurls = {json.dumps(urls)}")
    assert main(["check-config", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert HIDDEN not in out
    settings = json.loads(out)
    assert settings["broker"]["urls"] == [
        "amqp://alice:***@mq1.example.net:5671/",
        "amqp://bob:***@mq2.example.net:5672/vhost",
        "amqp://mq3.example.net:5672/",
    ]
    assert settings["role"] == "client"
    assert settings["user"] == "alice"
    assert settings["node"] == "laptop"
    assert settings["crypto"]["key_file"] == str(tmp_path / "fleet.key")
    assert settings["source"] == str(path)


def test_check_config_json_masks_default_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Even the default broker URL's guest password is masked."""
    assert main(["check-config", "--json", str(write_config(tmp_path))]) == 0
    settings = json.loads(capsys.readouterr().out)
    assert settings["broker"]["urls"] == ["amqp://guest:***@127.0.0.1:5672/"]


def test_config_keys(capsys: pytest.CaptureFixture[str]) -> None:
    """`config-keys` lists every key, required ones marked, and exits 0."""
    assert main(["config-keys"]) == 0
    out = capsys.readouterr().out
    for key in ("role", "user", "node", "broker.urls", "jobs.max_parallel", "crypto.key_file"):
        assert key in out
    assert "required" in out


# --- roles and keys ---------------------------------------------------------------------------


def test_start_with_client_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`start` refuses a client-role config with exit 78, naming the role key."""
    path = write_config(tmp_path, role="client")
    assert main(["-c", str(path), "start"]) == 78
    err = capsys.readouterr().err
    assert "role:" in err
    assert "'client'" in err


def test_config_from_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """RUNLET_CONFIG names the file when -c is not given."""
    monkeypatch.setenv("RUNLET_CONFIG", str(write_config(tmp_path, role="client")))
    assert main(["start"]) == 78
    assert "role:" in capsys.readouterr().err


def test_key_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """key init makes a key, show prints its fingerprint, export/import carry it over."""
    config = str(write_config(tmp_path))
    assert main(["-c", config, "key", "init"]) == 0
    fingerprint = FleetKey.load(tmp_path / "fleet.key").fingerprint()
    assert fingerprint in capsys.readouterr().out
    assert main(["-c", config, "key", "show"]) == 0
    assert capsys.readouterr().out.strip() == fingerprint
    assert main(["-c", config, "key", "export"]) == 0
    exported = capsys.readouterr().out

    other = tmp_path / "other"
    other.mkdir()
    other_config = str(write_config(other))
    monkeypatch.setattr("sys.stdin", io.StringIO(exported))
    assert main(["-c", other_config, "key", "import"]) == 0
    assert FleetKey.load(other / "fleet.key") == FleetKey.load(tmp_path / "fleet.key")


def test_fleet_key_travels_sealed_to_a_new_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """key device (new device) → key seal (old one) → key import (new one): the key arrives,
    and the sealed line opens on that device only."""
    config = str(write_config(tmp_path))
    assert main(["-c", config, "key", "init"]) == 0
    capsys.readouterr()
    new = tmp_path / "new"
    new.mkdir()
    new_config = str(write_config(new))
    assert main(["-c", new_config, "key", "device"]) == 0
    public = capsys.readouterr().out.strip()
    assert public.startswith("runlet-device-v1:")
    assert main(["-c", config, "key", "seal", public]) == 0
    sealed = capsys.readouterr().out
    assert FleetKey.load(tmp_path / "fleet.key").export_text() not in sealed
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    stranger_config = str(write_config(stranger))
    assert main(["-c", stranger_config, "key", "device"]) == 0
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO(sealed))
    assert main(["-c", stranger_config, "key", "import"]) == 77
    assert "sealed for another device" in capsys.readouterr().err
    assert not (stranger / "fleet.key").exists()
    monkeypatch.setattr("sys.stdin", io.StringIO(sealed))
    assert main(["-c", new_config, "key", "import"]) == 0
    assert FleetKey.load(new / "fleet.key") == FleetKey.load(tmp_path / "fleet.key")


@pytest.mark.parametrize("public", ["", "runlet-device-v1:xx", "x" * 100_000, "runlet-key-v1:A"])
def test_key_seal_refuses_what_is_no_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], public: str
) -> None:
    """`key seal` with anything but a device's public line exits 77 and prints no key."""
    config = str(write_config(tmp_path))
    assert main(["-c", config, "key", "init"]) == 0
    capsys.readouterr()
    assert main(["-c", config, "key", "seal", public]) == 77
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err) < 300


@pytest.mark.parametrize(
    ("argv", "status", "text"),
    [
        (["bad.node", "runlet-device-v1:" + "A" * 43], 64, "is not a valid node name"),
        (["", "runlet-device-v1:" + "A" * 43], 64, "is not a valid node name"),
        (["edge", ""], 77, "not a device public key"),
        (["edge", "runlet-device-v1:" + "A" * 10], 77, "holds 7 bytes"),
        (["edge", "x" * 100_000], 77, "over 4096"),
    ],
)
def test_key_grant_refuses_bad_input_before_any_connection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], status: int, text: str
) -> None:
    """A bad node name or public key line is refused before the broker is contacted (the
    config's broker is a closed port: a connection attempt would fail with 69)."""
    config = str(write_config(tmp_path, broker='[broker]\nurls = ["amqp://127.0.0.1:9/"]'))
    assert main(["-c", config, "key", "init"]) == 0
    capsys.readouterr()
    assert main(["-c", config, "key", "grant", *argv]) == status
    err = capsys.readouterr().err
    assert text in err
    assert len(err) < 400


def test_key_init_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second `key init` fails with a storage error (exit 70); --force replaces the key."""
    config = str(write_config(tmp_path))
    assert main(["-c", config, "key", "init"]) == 0
    first = FleetKey.load(tmp_path / "fleet.key")
    capsys.readouterr()
    assert main(["-c", config, "key", "init"]) == 70
    assert "already exists" in capsys.readouterr().err
    assert FleetKey.load(tmp_path / "fleet.key") == first
    assert main(["-c", config, "key", "init", "--force"]) == 0
    assert FleetKey.load(tmp_path / "fleet.key") != first


def test_key_import_garbage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Importing text that is not a key exits 77 and writes nothing."""
    config = str(write_config(tmp_path))
    monkeypatch.setattr("sys.stdin", io.StringIO("not a key\n"))
    assert main(["-c", config, "key", "import"]) == 77
    assert "not a runlet key" in capsys.readouterr().err
    assert not (tmp_path / "fleet.key").exists()


def test_missing_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A command needing the fleet key exits 77 when there is none, saying how to make one."""
    config = str(write_config(tmp_path))
    assert main(["-c", config, "key", "show"]) == 77
    assert "runlet key init" in capsys.readouterr().err


def _with_key(tmp_path: Path) -> str:
    config = write_config(tmp_path)
    FleetKey.generate().save(tmp_path / "fleet.key")
    return str(config)


@pytest.mark.parametrize("command", ["send", "cancel", "attach"])
def test_bad_job_id(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    """A malformed job id is a usage error (exit 64) before anything is sent."""
    argv = ["-c", _with_key(tmp_path), command, "not-a-job"]
    if command == "send":
        argv.append("y")
    assert main(argv) == 64
    assert "not a job id" in capsys.readouterr().err


def test_send_bad_escape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown escape in `send`'s text is a usage error (exit 64) before anything is sent."""
    assert main(["-c", _with_key(tmp_path), "send", JOB, r"y\q"]) == 64
    assert r"unknown escape \q" in capsys.readouterr().err


def test_run_bad_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid --on target exits 64 before anything is sent."""
    assert main(["-c", _with_key(tmp_path), "run", "--on", "a.b", "--", "uptime"]) == 64
    assert "invalid target" in capsys.readouterr().err
