"""A throwaway OpenSSH server on 127.0.0.1 for the `ssh -tt` baselines.

Everything lives in one temporary folder: a fresh host key, a fresh user key, its own
`sshd_config` and `authorized_keys`. The system's sshd configuration is never read or changed:
the server runs as `/usr/sbin/sshd -D -e -f CONFIG -p PORT` in the foreground, as our child,
and is stopped with it. Debian's openssh-server is installed with apt-get when sshd is missing
(we run as root, so root logs in with the generated key: PermitRootLogin prohibit-password).
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without its privilege-separation dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_installed() -> None:
    """Install Debian's openssh-server (and client) when sshd or ssh is missing."""
    if SSHD.exists() and shutil.which("ssh") and shutil.which("ssh-keygen"):
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"{SSHD} is missing: install openssh-server (needs root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "openssh-server", "openssh-client"],
        check=True,
        env=env,
    )


class Sshd:
    """`with Sshd(folder) as sshd:` … `sshd.argv("cat")` is an `ssh -tt` command line."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = 0
        self.user = getpass.getuser()
        self.proc: subprocess.Popen[bytes] | None = None
        self.host_key = folder / "ssh_host_ed25519_key"
        self.user_key = folder / "id_ed25519"
        self.config = folder / "sshd_config"
        self.authorized = folder / "authorized_keys"
        self.known_hosts = folder / "known_hosts"
        self.log = folder / "sshd.log"

    def __enter__(self) -> Sshd:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        ensure_installed()
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for key in (self.host_key, self.user_key):
            if not key.exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(key)],
                    check=True,
                )
        self.authorized.write_text(self.user_key.with_suffix(".pub").read_text())
        self.authorized.chmod(0o600)
        self.config.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.folder / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.authorized}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",  # the keys sit in a folder under /tmp
                    "PrintMotd no",
                    "PrintLastLog no",
                    "UseDNS no",
                    "X11Forwarding no",
                    "AllowTcpForwarding no",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        if not PRIVSEP_DIR.exists():
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True)
        self.port = free_port()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(self.config), "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_listening()
        # One real login proves keys and config before any measurement relies on them.
        check = subprocess.run(
            [*self.argv("echo ready", tty=False)],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if check.returncode != 0 or b"ready" not in check.stdout:
            raise RuntimeError(
                f"ssh to the bench sshd failed ({check.returncode}): "
                f"{check.stderr.decode(errors='replace')[-500:]} {self.log.read_text()[-500:]}"
            )

    def _wait_listening(self, timeout: float = 15.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited at once: {self.log.read_text()[-800:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not listen on 127.0.0.1:{self.port} in {timeout} s")

    def argv(self, command: str, *, tty: bool = True) -> list[str]:
        """The ssh command line that runs `command` on this server (`-tt`: a remote PTY)."""
        return [
            "ssh",
            *(["-tt"] if tty else ["-T"]),
            "-F",
            "/dev/null",
            "-i",
            str(self.user_key),
            "-p",
            str(self.port),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "LogLevel=ERROR",
            f"{self.user}@127.0.0.1",
            command,
        ]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
