"""The first five minutes, in real terminals: `runlet init` on a first device (answering its
questions), `init --join` and `runlet pair` on a second one with a fresh HOME and no key,
`runlet pair CODE` on the first, then a job started on the first runs on the second."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Terminals, client_env
from tests.support import (
    BROKER_URL,
    REPO,
    STARTUP_SECONDS,
    delete_user_resources,
    unique_user,
    wait_ready,
)

CODE = re.compile(r"runlet pair (\d+-[a-z]+-\d+-[a-z]+)")


class Home:
    """One device: its own HOME, so its config and key are in their default places."""

    def __init__(self, root: Path) -> None:
        root.mkdir()
        self.root = root
        self.daemon: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in client_env().items() if not k.startswith("XDG_")}
        return {**env, "HOME": str(self.root)}

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "runlet", *args]

    def start(self) -> None:
        log = (self.root / "daemon.log").open("ab")
        self.daemon = subprocess.Popen(
            self.argv("start"), env=self.env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(STARTUP_SECONDS)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(5)


@pytest.fixture
def user() -> Iterator[str]:
    name = unique_user("five")
    yield name
    delete_user_resources(name)


def test_init_pair_and_run_a_job_on_the_new_device(
    tmp_path: Path, terminal: Terminals, user: str
) -> None:
    """A first device set up by answering init's questions; a second one joined with a code
    and y; a job sent from the first runs on the second (it prints the second's HOME)."""
    first, second = Home(tmp_path / "first"), Home(tmp_path / "second")
    try:
        init = terminal.program(first.argv("init", "--node", "dev-a"), env=first.env())
        init.wait_text("broker URL")
        init.send(BROKER_URL.encode() + b"\r")
        init.wait_text("user:")
        init.send(user.encode() + b"\r")
        init.wait_text("made the fleet key")
        assert init.wait_exit() == 0

        join = terminal.program(
            second.argv(
                "init", "--broker", BROKER_URL, "--user", user, "--node", "dev-b", "--join"
            ),
            env=second.env(),
        )
        join.wait_text("runlet pair")
        assert join.wait_exit() == 0
        assert not (second.root / ".config" / "runlet" / "fleet.key").exists()

        board = terminal.program(second.argv("pair"), env=second.env())
        board.wait_until(lambda: CODE.search(board.text()) is not None, "a pairing code")
        code = CODE.search(board.text())
        assert code is not None
        assert "▄" in board.text()  # the code as a QR code, too

        holder = terminal.program(first.argv("pair", code.group(1)), env=first.env())
        holder.wait_text("send the fleet key to dev-b")
        holder.send(b"y\r")
        holder.wait_text("paired dev-b")
        assert holder.wait_exit() == 0
        board.wait_text("paired: fleet key")
        assert board.wait_exit() == 0

        second.start()
        wait_ready(user, "dev-b", timeout=STARTUP_SECONDS)
        job = terminal.program(
            first.argv("run", "--on", "dev-b", "--", "sh", "-c", 'echo "ran in $HOME"'),
            env=first.env(),
        )
        job.wait_text(f"ran in {second.root}")
        assert job.wait_exit() == 0
    finally:
        second.stop()
