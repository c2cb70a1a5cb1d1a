"""The newer commands of the command line (`logs`, `jobs`, `job`, `ping`, `user`, `start` as a
server), run in-process through `runlet.cli.main`.

Nothing here reaches a broker, a database or a management API: every case ends on an argument
or config error before a connection would be made, or reads a finished log from the local
vault (which `logs` does without connecting when no object store is configured).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from runlet.adapters.logfile import LogWriter, Record, seal_output
from runlet.adapters.rabbitmq_admin import Account
from runlet.cli import main
from runlet.client.logview import show_log
from runlet.protocol.crypto import FleetKey

JOB = "0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No RUNLET_* variable from the outside leaks in, and logging is not reconfigured: what is
    logged is captured, as a client's log lines never reach its stdout."""
    for name in list(os.environ):
        if name.startswith("RUNLET_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr("runlet.logging.configure", lambda *args, **kwargs: None)
    with structlog.testing.capture_logs():
        yield


def write_config(folder: Path, *, role: str = "client", sections: str = "") -> Path:
    """A complete, valid config in `folder` (plus whole `sections` of TOML at the end)."""
    path = folder / "runlet.toml"
    path.write_text(
        f'role = "{role}"\n'
        'user = "alice"\n'
        'node = "laptop"\n'
        f'data_dir = "{folder / "data"}"\n'
        "[crypto]\n"
        f'key_file = "{folder / "fleet.key"}"\n'
        f"{sections}",
        encoding="utf-8",
    )
    return path


def with_key(folder: Path) -> tuple[str, FleetKey]:
    """A client config whose fleet key exists."""
    config = write_config(folder)
    key = FleetKey.generate()
    key.save(folder / "fleet.key")
    return str(config), key


def exits(argv: list[str]) -> int:
    """The status argparse exits with (it raises SystemExit instead of returning)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    code = info.value.code
    assert isinstance(code, int)
    return code


def vault_log(folder: Path, key: FleetKey, times: list[float], *, bad: int | None = None) -> None:
    """A finished log of JOB in the local vault, chunk `bad` (if any) altered."""
    job_key = key.job_key(JOB)
    with LogWriter(folder / "data" / "vault" / f"{JOB}.rlog", JOB) as writer:
        for seq, t in enumerate(times):
            flags, sealed = seal_output(
                job_key, seq, t, f"out {seq}\r\n".encode(), final=seq == len(times) - 1
            )
            if seq == bad:
                sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
            writer.append(Record(seq, flags, sealed))


# --- logs --------------------------------------------------------------------------------------

BAD_JOB_IDS = [
    pytest.param("not-a-job", id="word"),
    pytest.param("", id="empty"),
    pytest.param(JOB[:-1], id="truncated"),
    pytest.param(JOB + "0", id="one-too-long"),
    pytest.param(JOB.upper(), id="uppercase"),
    pytest.param("../../" + JOB, id="path"),
    pytest.param(JOB + "\n", id="newline"),
    pytest.param(JOB + ".bad.node", id="two-dots"),
    pytest.param("f" * 100_000, id="oversize"),
    pytest.param("\x1b[2J" + JOB, id="terminal-escape"),
]


@pytest.mark.parametrize("job_id", BAD_JOB_IDS)
def test_logs_bad_job_id(tmp_path: Path, capsys: pytest.CaptureFixture[str], job_id: str) -> None:
    """A malformed job id is a usage error (64) with a short message, before any log is read."""
    config, _ = with_key(tmp_path)
    assert main(["-c", config, "logs", job_id]) == 64
    err = capsys.readouterr().err
    assert "not a job id" in err
    assert len(err) < 300
    assert not (tmp_path / "data" / "vault").exists()


@pytest.mark.parametrize("option", ["--speed", "--max-pause"])
@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("0", "must be above 0"),
        ("-1", "must be above 0"),
        ("1001", "at most 1000"),
        ("nan", "must be above 0"),
        ("inf", "must be above 0"),
        ("abc", "not a number: 'abc'"),
        ("", "not a number: ''"),
        ("1" * 400, "must be above 0"),
    ],
)
def test_logs_bad_play_numbers(
    capsys: pytest.CaptureFixture[str], option: str, value: str, says: str
) -> None:
    """--speed and --max-pause outside (0, 1000] are usage errors (exit 2) naming the option."""
    assert exits(["logs", JOB, option, value]) == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err
    assert says in err


def test_logs_play_numbers_at_the_bounds(capsys: pytest.CaptureFixture[str]) -> None:
    """The extreme accepted values pass parsing (the run then stops for want of a config)."""
    assert main(["logs", JOB, "--play", "--speed", "1000", "--max-pause", "0.001"]) == 78
    assert "no config file given" in capsys.readouterr().err


def test_logs_local_finished_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A finished log in the local vault is shown, verified, without connecting: exit 0."""
    config, key = with_key(tmp_path)
    vault_log(tmp_path, key, [1.0, 2.0, 3.0])
    assert main(["-c", config, "logs", JOB]) == 0
    captured = capsys.readouterr()
    assert captured.out == "out 0\nout 1\nout 2\n"
    assert captured.err == ""


def test_logs_local_damaged_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An altered chunk is reported on stderr with its number, the rest shown: exit 65."""
    config, key = with_key(tmp_path)
    vault_log(tmp_path, key, [1.0, 2.0, 3.0], bad=1)
    assert main(["-c", config, "logs", JOB]) == 65
    captured = capsys.readouterr()
    assert captured.out == "out 0\nout 2\n"
    assert "[runlet] chunk 1 did not authenticate" in captured.err


def test_logs_play_speed_and_max_pause(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--play replays gaps divided by --speed and capped at --max-pause."""
    config, key = with_key(tmp_path)
    vault_log(tmp_path, key, [10.0, 11.0, 12.0, 500.0])
    pauses: list[float] = []
    assert show_log.__kwdefaults__ is not None
    monkeypatch.setitem(show_log.__kwdefaults__, "sleep", pauses.append)
    argv = ["-c", config, "logs", JOB, "--play", "--speed", "4", "--max-pause", "0.5"]
    assert main(argv) == 0
    assert pauses == [0.25, 0.25, 0.5]
    assert capsys.readouterr().out.count("out ") == 4


def test_logs_no_pauses_without_play(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--speed without --play changes nothing: the log is written at once."""
    config, key = with_key(tmp_path)
    vault_log(tmp_path, key, [10.0, 500.0])
    pauses: list[float] = []
    assert show_log.__kwdefaults__ is not None
    monkeypatch.setitem(show_log.__kwdefaults__, "sleep", pauses.append)
    assert main(["-c", config, "logs", JOB, "--speed", "0.5"]) == 0
    assert pauses == []
    capsys.readouterr()


# --- jobs and job ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "since", ["yesterday", "", "10 minutes", "-10m", "2024-13-01", "\x1b[31m", "x" * 5000]
)
def test_jobs_bad_since(capsys: pytest.CaptureFixture[str], since: str) -> None:
    """A --since that is not a time exits 64 before any config is read."""
    assert main(["jobs", f"--since={since}"]) == 64
    err = capsys.readouterr().err
    assert err.startswith("runlet jobs: not a time:")
    assert "10m, 2h, 1d" in err


@pytest.mark.parametrize("since", ["nan", "inf", "1e300", "99999999999999999999d"])
def test_jobs_unrepresentable_since(capsys: pytest.CaptureFixture[str], since: str) -> None:
    """A --since that is no representable moment exits 64 before any config is read."""
    assert main(["jobs", f"--since={since}"]) == 64
    assert "not a time" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--state", "unknown"], "unknown state 'unknown'"),
        (["--state", ""], "unknown state ''"),
        (["--state", "RUNNING"], "unknown state 'RUNNING'"),
        (["--state", "x" * 10_000], "unknown state 'xxxxxxxx"),
        (["--limit", "0"], "limit 0 out of range 1..10000"),
        (["--limit", "-5"], "limit -5 out of range"),
        (["--limit", "10001"], "limit 10001 out of range"),
        (["--limit", "100001"], "limit 100001 out of range"),
        (["--limit", str(10**30)], "out of range"),
        (["--node", "a.b"], "invalid node 'a.b'"),
        (["--node", ""], "invalid node ''"),
        (["--node", "n" * 65], "invalid node"),
    ],
)
def test_jobs_bad_filters(capsys: pytest.CaptureFixture[str], argv: list[str], says: str) -> None:
    """A bad --state, --limit or --node exits 64 with a short message, before any config."""
    assert main(["jobs", *argv]) == 64
    err = capsys.readouterr().err
    assert err.startswith("runlet jobs: ")
    assert says in err
    assert len(err) < 300


@pytest.mark.parametrize("limit", ["abc", "1.5", ""])
def test_jobs_limit_not_an_integer(capsys: pytest.CaptureFixture[str], limit: str) -> None:
    """A --limit that is not an integer is an argparse usage error (exit 2)."""
    assert exits(["jobs", "--limit", limit]) == 2
    assert "argument --limit" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--limit", "1"],
        ["--limit", "10000"],
        ["--state", "running", "--since", "2h"],
        ["--node", "edge-1", "--since", "2024-01-01"],
    ],
)
def test_jobs_good_filters_reach_config(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """Valid filters pass the checks: without a config the run stops there (78), unconnected."""
    assert main(["jobs", *argv]) == 78
    assert "no config file given" in capsys.readouterr().err


@pytest.mark.parametrize("job_id", BAD_JOB_IDS)
def test_job_bad_id(capsys: pytest.CaptureFixture[str], job_id: str) -> None:
    """`job` with a malformed id exits 64 with a short message, before any config."""
    assert main(["job", job_id]) == 64
    err = capsys.readouterr().err
    assert err.startswith("runlet job: invalid job id")
    assert len(err) < 300


def test_job_good_id_reaches_config(capsys: pytest.CaptureFixture[str]) -> None:
    """A well-formed id (or fan-out child id) passes the check and stops at the config."""
    assert main(["job", JOB]) == 78
    assert main(["job", f"{JOB}.edge-1"]) == 78
    capsys.readouterr()


# --- ping --------------------------------------------------------------------------------------

PING_USAGE = "runlet ping: need a node name, 1 <= --count <= 100000, 0 <= --interval <= 60"


@pytest.mark.parametrize(
    "argv",
    [
        ["edge-1", "--count", "0"],
        ["edge-1", "--count", "-1"],
        ["edge-1", "--count", "100001"],
        ["edge-1", "--interval", "-0.1"],
        ["edge-1", "--interval", "61"],
        ["edge-1", "--interval", "nan"],
        ["edge-1", "--interval", "inf"],
        ["a.b"],
        [""],
        ["n" * 65],
        ["nœud"],
        ["edge 1"],
        ["edge-1\n"],
        ["x" * 100_000],
    ],
)
def test_ping_bad_arguments(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """A bad node name, count or interval exits 64 before any config is read."""
    assert main(["ping", *argv]) == 64
    assert capsys.readouterr().err.strip() == PING_USAGE


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--timeout", "0"], "-W/--timeout"),
        (["--timeout", "-1"], "-W/--timeout"),
        (["--timeout", "nan"], "-W/--timeout"),
        (["--timeout", "abc"], "-W/--timeout"),
        (["--timeout", "1001"], "-W/--timeout"),
        (["--count", "abc"], "-c/--count"),
        (["--count", "1.5"], "-c/--count"),
        (["--interval", "abc"], "-i/--interval"),
    ],
)
def test_ping_unparsable_numbers(
    capsys: pytest.CaptureFixture[str], argv: list[str], option: str
) -> None:
    """Numbers argparse cannot take are usage errors (exit 2) naming the option."""
    assert exits(["ping", "edge-1", *argv]) == 2
    assert f"argument {option}: " in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["edge-1", "--count", "1"],
        ["edge-1", "--count", "100000", "--interval", "0"],
        ["edge-1", "--interval", "60", "--timeout", "1000"],
    ],
)
def test_ping_bounds_reach_config(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """Values at the bounds pass the checks and stop at the missing config (78)."""
    assert main(["ping", *argv]) == 78
    assert "no config file given" in capsys.readouterr().err


# --- user --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv", [["user", "add", "bob"], ["user", "list"], ["user", "remove", "bob"]]
)
def test_user_commands_need_server_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """With a client config (no [server]) every user command exits 78 naming the section."""
    config = str(write_config(tmp_path))
    assert main(["-c", config, *argv]) == 78
    err = capsys.readouterr().err
    assert f"{config}: server: `runlet user` needs the server's config ([server] section)" in err


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("bad.name", id="dot"),
        pytest.param("", id="empty"),
        pytest.param("bob smith", id="space"),
        pytest.param("bob\n", id="newline"),
        pytest.param("bøb", id="unicode"),
        pytest.param("x" * 65, id="too-long"),
        pytest.param("y" * 100_000, id="oversize"),
        pytest.param("$(reboot)", id="shell"),
    ],
)
@pytest.mark.parametrize("action", ["add", "remove"])
def test_user_bad_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str, name: str
) -> None:
    """A user name that is not a valid name is a usage error (64), said in a short message."""
    config = str(write_config(tmp_path))
    assert main(["-c", config, "user", action, name]) == 64
    err = capsys.readouterr().err
    assert "is not a valid name (1-64 of A-Z a-z 0-9 _ -)" in err
    assert len(err) < 300


@pytest.mark.parametrize("node", ["bad.name", 'x"\nrole = "server', ""])
def test_user_add_bad_node_refused_first(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    node: str,
) -> None:
    """A bad --node is refused before any account is created."""
    created: list[str] = []

    async def add_user(config: Any, name: str, *, rotate: bool = False) -> Account:
        created.append(name)
        return Account(name, f"runlet-{name}", "pw")

    monkeypatch.setattr("runlet.roots.admin.add_user", add_user)
    config = str(write_config(tmp_path, role="server", sections="[server]\n"))
    assert main(["-c", config, "user", "add", "bob", "--node", node]) in (64, 78)
    assert created == []
    capsys.readouterr()


def test_user_add_prints_device_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the account made (faked here), `user add` prints the device config for --node."""

    async def add_user(config: Any, name: str, *, rotate: bool = False) -> Account:
        return Account(name, f"runlet-{name}", "pw-" + ("rotated" if rotate else "new"))

    monkeypatch.setattr("runlet.roots.admin.add_user", add_user)
    config = str(write_config(tmp_path, role="server", sections="[server]\n"))
    argv = ["user", "add", "bob", "--node", "edge-3", "--rotate"]
    assert main(["-c", config, *argv, "--broker-url", "amqps://mq.example.net/"]) == 0
    out = capsys.readouterr().out
    assert 'user = "bob"\nnode = "edge-3"\n' in out
    assert '"amqps://runlet-bob:pw-rotated@mq.example.net/"' in out
    assert "runlet:" not in capsys.readouterr().err


def test_user_add_warns_when_it_falls_back_to_the_servers_own_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --broker-url or public_broker_urls, the server's own (non-loopback) address
    is written, with a warning on stderr that devices may need another one."""

    async def add_user(config: Any, name: str, *, rotate: bool = False) -> Account:
        return Account(name, f"runlet-{name}", "pw")

    monkeypatch.setattr("runlet.roots.admin.add_user", add_user)
    path = tmp_path / "server.toml"
    path.write_text(
        'role = "server"\nuser = "admin"\nnode = "s"\n'
        '[broker]\nurls = ["amqp://runlet-server@rabbitmq:5672/"]\n[server]\n'
    )
    assert main(["-c", str(path), "user", "add", "bob"]) == 0
    captured = capsys.readouterr()
    assert '"amqp://runlet-bob:pw@rabbitmq:5672/"' in captured.out
    assert "pass --broker-url or set server.public_broker_urls" in captured.err


@pytest.mark.parametrize(
    ("extra", "text"),
    [
        ([], "the server reaches the broker at amqp://guest:***@127.0.0.1:5672/, a loopback"),
        (["--broker-url", "http://mq/"], "--broker-url #1 must start with amqp:// or amqps://"),
        (["--broker-url", "amqp://mq/", "--broker-url", "amqp:// x"], "#2 must not contain"),
        (["--broker-url", "amqp://u:s3cr3t@mq/"], "#1 must not hold a login"),
        (["--broker-url", "amqp://a/", "--broker-url", "amqps://b/"], "mix amqp:// and amqps://"),
        (["--broker-url", "amqp://mq/?auth=external"], "use broker.login"),
        (["--broker-url", "amqp://" + "m" * 100_000 + " "], "#1 must not contain spaces"),
        (["--broker-url", ""], "--broker-url #1 must not be empty"),
    ],
)
def test_user_add_refuses_a_broker_address_first(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    text: str,
) -> None:
    """No usable device address (only the server's loopback, or a bad --broker-url): a usage
    error before any account is made, never echoing a login."""
    created: list[str] = []

    async def add_user(config: Any, name: str, *, rotate: bool = False) -> Account:
        created.append(name)
        return Account(name, f"runlet-{name}", "pw")

    monkeypatch.setattr("runlet.roots.admin.add_user", add_user)
    config = str(write_config(tmp_path, role="server", sections="[server]\n"))
    assert main(["-c", config, "user", "add", "bob", *extra]) == 64
    err = capsys.readouterr().err
    assert text in err
    assert "s3cr3t" not in err
    assert len(err) < 400
    assert created == []


# --- device ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["device", "add", "bob", "pi"], ["device", "list", "bob"], ["device", "revoke", "bob", "pi"]],
)
def test_device_commands_need_server_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """Every device command needs the server's config, like the user commands."""
    config = str(write_config(tmp_path))
    assert main(["-c", config, *argv]) == 78
    assert "`runlet user` needs the server's config" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name", ["bad.name", "", "pi 1", "pi\n", "x" * 65, "y" * 100_000, "$(reboot)", "ü"]
)
@pytest.mark.parametrize("where", ["user", "node"])
def test_device_bad_names_are_refused_first(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    where: str,
) -> None:
    """A bad user or node name is a usage error before any account is made or revoked."""
    touched: list[str] = []

    async def add_device(*args: Any, **kwargs: Any) -> Account:
        touched.append("add")
        return Account("bob", "runlet-bob.pi", "pw")

    async def revoke_device(*args: Any) -> bool:
        touched.append("revoke")
        return True

    monkeypatch.setattr("runlet.roots.admin.add_device", add_device)
    monkeypatch.setattr("runlet.roots.admin.revoke_device", revoke_device)
    config = str(write_config(tmp_path, role="server", sections="[server]\n"))
    user, node = (name, "pi") if where == "user" else ("bob", name)
    for action in ("add", "revoke"):
        argv = ["-c", config, "device", action, user, node, "--broker-url", "amqp://mq/"]
        assert main(argv if action == "add" else argv[:-2]) == 64
        err = capsys.readouterr().err
        assert "is not a valid name" in err
        assert len(err) < 300
    assert touched == []


def test_device_add_prints_a_config_for_the_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`device add` passes --run-only on and prints the config with the device's own login."""
    calls: list[tuple[str, str, bool, bool]] = []

    async def add_device(
        config: Any, user: str, node: str, *, run_only: bool = False, rotate: bool = False
    ) -> Account:
        calls.append((user, node, run_only, rotate))
        return Account(user, f"runlet-{user}.{node}", "pw-dev")

    monkeypatch.setattr("runlet.roots.admin.add_device", add_device)
    config = str(write_config(tmp_path, role="server", sections="[server]\n"))
    argv = ["device", "add", "bob", "pi-1", "--run-only", "--broker-url", "amqps://mq/"]
    assert main(["-c", config, *argv]) == 0
    out = capsys.readouterr().out
    assert calls == [("bob", "pi-1", True, False)]
    assert 'user = "bob"\nnode = "pi-1"\n' in out
    assert '"amqps://runlet-bob.pi-1:pw-dev@mq/"' in out


# --- start -------------------------------------------------------------------------------------


def test_start_server_without_server_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`start` with role server and no [server] section exits 78 naming the section."""
    config = str(write_config(tmp_path, role="server"))
    assert main(["-c", config, "start"]) == 78
    err = capsys.readouterr().err
    assert f"{config}: server: role server needs a [server] section" in err
