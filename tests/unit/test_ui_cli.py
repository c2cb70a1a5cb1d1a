"""`runlet ui` on the command line: what it refuses before it serves anything.

Every case ends before a broker connection would be made: a bad option, a host that is not
loopback, a server's config, a missing key, or a port already taken.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from runlet.cli import main
from runlet.ui.serve import check_host
from tests.unit.test_cli_commands import _isolated, exits, with_key, write_config  # noqa: F401


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com", "", "127.0.0.1 "])
def test_a_host_that_is_not_loopback_is_refused(
    tmp_path: Path, host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The page is for this machine only: any other address is a usage error (64)."""
    config, _ = with_key(tmp_path)
    assert main(["-c", config, "ui", "--no-browser", "--host", host]) == 64
    assert "loopback" in capsys.readouterr().err


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts_are_taken(host: str) -> None:
    """Every loopback address is fine; localhost means 127.0.0.1."""
    assert check_host(host) in (host, "127.0.0.1")


@pytest.mark.parametrize("port", ["-1", "65536", "http", "1e3", "99999999999999999999"])
def test_a_bad_port_is_a_usage_error(tmp_path: Path, port: str) -> None:
    """argparse refuses a port that is not 0..65535."""
    config, _ = with_key(tmp_path)
    assert exits(["-c", config, "ui", "--port", port]) == 2


def test_a_server_config_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The server holds no fleet key: its config cannot run the UI (78, naming role)."""
    config = write_config(tmp_path, role="server", sections="[server]\n")
    assert main(["-c", str(config), "ui", "--no-browser"]) == 78
    assert "role" in capsys.readouterr().err


def test_a_missing_key_is_refused(tmp_path: Path) -> None:
    """No fleet key, no page (77): the page would show nothing but ciphertext."""
    config = write_config(tmp_path)
    assert main(["-c", str(config), "ui", "--no-browser"]) == 77


def test_a_port_in_use_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A port someone else holds is a usage error, before any connection to the broker."""
    config, _ = with_key(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["-c", config, "ui", "--no-browser", "--port", str(port)]) == 64
    assert "cannot listen" in capsys.readouterr().err


def test_the_daemon_and_the_command_line_do_not_load_the_web_server() -> None:
    """Starting runlet (any command but ui) or a daemon loads neither runlet.ui nor aiohttp's
    web server: the daemon's memory is untouched by the desktop manager."""
    import subprocess
    import sys

    code = (
        "import sys, runlet.cli, runlet.roots.daemon, runlet.roots.server;"
        "loaded = sorted(m for m in sys.modules if m.startswith(('runlet.ui', 'aiohttp.web')));"
        "print(loaded)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
