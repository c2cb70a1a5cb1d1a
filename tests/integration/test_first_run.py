"""The first five minutes on the real broker: `runlet init` in a fresh HOME, then a daemon
started from the default config place with no -c, and `runlet doctor` naming what is wrong."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runlet.adapters.http_date import read_clock
from tests.integration.test_server import ServerUnderTest, free_port
from tests.integration.test_server import schema as schema  # noqa: PLC0414 - a fixture
from tests.support import (
    BROKER_URL,
    REPO,
    STARTUP_SECONDS,
    Fleet,
    delete_user_resources,
    unique_user,
    wait_ready,
)


class Device:
    """A fresh HOME, as a new machine would have, and `runlet` run in it."""

    def __init__(self, home: Path, user: str) -> None:
        self.home = home
        self.user = user
        self.daemons: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("RUNLET_", "XDG_"))}
        return {**keep, "HOME": str(self.home)}

    def runlet(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runlet", *args],
            env=self.env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def start(self) -> subprocess.Popen[bytes]:
        """`runlet start` with no -c: the daemon reads the default config place."""
        log = (self.home / "daemon.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "runlet", "start"],
            env=self.env(),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.daemons.append(proc)
        return proc

    @property
    def config(self) -> Path:
        return self.home / ".config" / "runlet" / "config.toml"

    def close(self) -> None:
        for proc in self.daemons:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STARTUP_SECONDS)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    dev = Device(tmp_path / "home", unique_user("init"))
    dev.home.mkdir()
    try:
        yield dev
    finally:
        dev.close()
        delete_user_resources(dev.user)


def test_init_in_a_fresh_home_then_start_with_no_config_option(device: Device) -> None:
    """init writes a config that check-config accepts and a daemon starts from with no -c;
    a second init refuses to overwrite it."""
    done = device.runlet("init", "--broker", BROKER_URL, "--user", device.user, "--node", "edge-a")
    assert done.returncode == 0, done.stderr
    assert f"wrote {device.config}" in done.stdout
    assert "the broker answered" in done.stdout
    checked = device.runlet("check-config")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"{device.config}: ok")
    again = device.runlet("init", "--broker", BROKER_URL, "--user", device.user)
    assert again.returncode == 70
    assert "refusing to overwrite" in again.stderr
    proc = device.start()
    wait_ready(device.user, "edge-a", timeout=STARTUP_SECONDS)
    assert proc.poll() is None


def test_init_against_a_refused_login_writes_nothing(device: Device) -> None:
    """A password the broker refuses stops init with the account named, and no file."""
    bad = BROKER_URL.replace("guest:guest", "guest:wrong")
    done = device.runlet("init", "--broker", bad, "--user", device.user)
    assert done.returncode == 69
    assert "refused the login of account 'guest'" in done.stderr
    assert "wrong" not in done.stderr
    assert not device.config.exists()


# --- runlet doctor -------------------------------------------------------------------------


def findings(device: Device, *args: str) -> tuple[int, dict[str, dict[str, str]]]:
    """`runlet doctor --json`'s exit status and findings by check."""
    done = device.runlet(*args, "doctor", "--json")
    shown = json.loads(done.stdout)
    return done.returncode, {f["check"]: f for f in shown["findings"]}


def init(device: Device, url: str = BROKER_URL) -> None:
    done = device.runlet("init", "--broker", url, "--user", device.user, "--node", "edge-d")
    assert done.returncode == 0, done.stderr


def test_doctor_names_a_key_open_to_others_and_a_daemon_not_running(device: Device) -> None:
    """Key file mode 0644: a key problem saying chmod 600; no daemon: `runlet start`; the
    config's place and the broker's URL are named."""
    init(device)
    key = device.config.parent / "fleet.key"
    key.chmod(0o644)
    status, found = findings(device)
    assert status == 1
    assert str(device.config) in found["config"]["detail"]
    assert found["broker"]["status"] == "ok"
    assert "127.0.0.1:5672" in found["broker"]["detail"]
    assert found["key"]["status"] == "problem"
    assert found["key"]["fix"] == f"chmod 600 {key}"
    assert (found["daemon"]["status"], found["daemon"]["fix"]) == ("problem", "runlet start")
    assert found["disk"]["status"] == "ok"


def test_doctor_names_the_refused_account(device: Device) -> None:
    """A wrong password in the config: the broker finding names the account, not the password,
    and the checks that need the broker are skipped."""
    init(device)
    text = device.config.read_text().replace("guest:guest@", "guest:wrong-pw@")
    device.config.write_text(text)
    status, found = findings(device)
    assert status == 1
    assert found["broker"]["status"] == "problem"
    assert "account 'guest'" in found["broker"]["detail"]
    assert "wrong-pw" not in json.dumps(found)
    assert found["daemon"]["status"] == found["server"]["status"] == "skipped"


def test_doctor_names_a_stopped_broker_and_how_long_it_tried(device: Device) -> None:
    """A broker that is not there (nothing listens on its port): its URL and the time tried."""
    init(device)
    port = free_port()
    text = device.config.read_text().replace("127.0.0.1:5672", f"127.0.0.1:{port}")
    device.config.write_text(text)
    status, found = findings(device)
    assert status == 1
    detail = found["broker"]["detail"]
    assert f"127.0.0.1:{port}" in detail
    assert "tried for" in detail


def test_doctor_a_server_that_does_not_know_the_user(device: Device) -> None:
    """A daemon running but no server knowing the user: the server finding says user add."""
    init(device)
    device.start()
    wait_ready(device.user, "edge-d", timeout=STARTUP_SECONDS)
    status, found = findings(device)
    assert status == 1
    assert found["daemon"]["status"] == "ok"
    assert found["server"]["status"] == "problem"
    assert f"runlet user add {device.user}" in found["server"]["fix"]


def test_doctor_all_ok_with_daemon_and_server(fleet: Fleet, schema: str, tmp_path: Path) -> None:
    """Daemon and server running, key private: every finding ok (the clock may be skipped)
    and the exit status 0; the text form prints one line a check."""
    server = ServerUnderTest(fleet, schema)
    server.start()
    try:
        fleet.start_daemon("edge-1")
        device = Device(tmp_path, fleet.user)
        config = fleet.config_file("edge-1")
        status, found = findings(device, "-c", str(config))
        assert status == 0, found
        assert {check: f["status"] for check, f in found.items()} == {
            "config": "ok",
            "broker": "ok",
            "key": "ok",
            "clock": found["clock"]["status"] if found["clock"]["status"] == "skipped" else "ok",
            "daemon": "ok",
            "server": "ok",
            "disk": "ok",
        }
        text = device.runlet("-c", str(config), "doctor")
        assert text.returncode == 0
        assert [line.split()[1] for line in text.stdout.splitlines()] == list(found)
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("header", "skew"),
    [
        ("Sun, 06 Nov 1994 08:49:37 GMT", "far"),
        (None, None),
        ("", None),
        ("yesterday", None),
        ("Sun, 99 Nov 1994 08:49:37 GMT", None),
        ("Sun, 06 Nov 1994 08:49:37 GMT" + " " * 100, None),
    ],
)
def test_the_clock_reading_takes_only_a_sound_date_header(
    header: str | None, skew: str | None
) -> None:
    """A real HTTP server on loopback sends a Date header: a sound one gives the skew (here
    decades off); none, an empty, a malformed or an oversize one gives no reading."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response_only(200)
            if header is not None:
                self.send_header("Date", header)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        reading = read_clock(f"http://127.0.0.1:{server.server_address[1]}/")
    finally:
        server.shutdown()
        server.server_close()
    if skew is None:
        assert reading is None
    else:
        assert reading is not None
        assert reading.skew < -365 * 86400
