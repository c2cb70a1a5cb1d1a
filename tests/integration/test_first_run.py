"""The first five minutes on the real broker: `runlet init` in a fresh HOME, then a daemon
started from the default config place with no -c, and `runlet doctor` naming what is wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    BROKER_URL,
    REPO,
    STARTUP_SECONDS,
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
