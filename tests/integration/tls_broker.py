"""A real RabbitMQ node with a TLS listener and certificates made for the run.

The machine's own RabbitMQ (127.0.0.1:5672) is shared and is never reconfigured: this module
starts a separate node, `tls@localhost`, that listens only for AMQPS on 127.0.0.1:5690
(distribution port 25690), keeps its data, logs, Erlang cookie and certificates in a folder of
its own, and is stopped when the test session ends. Its certificates, all made here with
`cryptography`:

- a CA, and a server certificate it signs for `localhost` (DNS name only, so connecting to
  127.0.0.1 without `broker.server_name` is a host-name mismatch);
- an expired server certificate from the same CA, shown to a client that asks for
  `expired.localhost` (TLS SNI, Erlang's `sni_hosts`);
- client certificates: `runlet-<user>` signed by the CA (the broker logs it in with SASL
  EXTERNAL, `rabbitmq_auth_mechanism_ssl`, by its common name), an expired one, and one signed
  by a second CA the broker does not trust;
- that second CA, for a client that trusts the wrong one.

The broker asks for a client certificate but does not require one, so password logins over
TLS work too; it refuses a certificate it cannot verify. Use it through the session fixture
`tls_broker` (imported into a conftest). A node left behind by a killed run (its pid file in
the fixed folder names a live `beam` process started for that folder) is stopped first; a
second test session at the same time waits for the first (a lock file beside the folder).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runlet.adapters.rabbitmq_admin import permission_pattern
from tests.certs import Authority, Pair

HOST = "127.0.0.1"
PORT = 5690
DIST_PORT = 25690
NODE = "tls@localhost"
BASE = Path(os.environ.get("RUNLET_TLS_NODE_DIR", "/tmp/runlet-tls-node"))
BIN = Path("/usr/lib/rabbitmq/bin")
EXPIRED_NAME = "expired.localhost"
CERT_USER = "tlsdevice"  # its certificate's common name is the broker user runlet-tlsdevice
BOOT_SECONDS = 180


@dataclass(frozen=True, slots=True)
class TlsBroker:
    """The running TLS node and the files a client needs to talk to it."""

    base: Path
    ca: Path  # the CA the broker's certificates come from
    wrong_ca: Path  # a CA that signed nothing the broker shows
    client: Pair  # CN runlet-tlsdevice, from `ca`
    expired_client: Pair  # the same name, expired
    stranger: Pair  # the same name, from `wrong_ca`
    cert_user: str = CERT_USER
    port: int = PORT

    def url(self, host: str = "localhost", login: str = "guest:guest@") -> str:
        return f"amqps://{login}{host}:{self.port}/"

    def add_cert_user(self) -> None:
        """Make the broker user the client certificate names, without a password."""
        common = f"runlet-{self.cert_user}"
        self.ctl("add_user", common, os.urandom(16).hex())
        self.ctl("clear_password", common)  # it can log in with its certificate only
        pattern = permission_pattern(self.cert_user)
        self.ctl("set_permissions", "-p", "/", common, pattern, pattern, pattern)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """rabbitmqctl against this node; its output, or an AssertionError with it."""
        return _ctl(self.base, *args, timeout=timeout)


# -- the node ---------------------------------------------------------------------------------


def _env(base: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HOME": str(base / "home"),
        "RABBITMQ_NODENAME": NODE,
        "RABBITMQ_NODE_IP_ADDRESS": HOST,
        "RABBITMQ_DIST_PORT": str(DIST_PORT),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_PID_FILE": str(base / "pid"),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_CONF_ENV_FILE": str(base / "empty-env.conf"),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }


def _ctl(base: Path, *args: str, timeout: float = 60) -> str:
    proc = subprocess.run(
        [str(BIN / "rabbitmqctl"), "-n", NODE, *args],
        env=_env(base),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"rabbitmqctl {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def _our_node(base: Path) -> int | None:
    """The pid of a live node started for `base`, from its pid file, or None."""
    try:
        pid = int((base / "pid").read_text().strip())
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        comm = Path(f"/proc/{pid}/comm").read_text()
    except (OSError, ValueError):
        return None
    mine = f"RABBITMQ_PID_FILE={base / 'pid'}".encode() in environ
    return pid if mine and comm.startswith("beam") else None


def _stop(base: Path) -> None:
    if _our_node(base) is not None:
        _ctl(base, "stop", str(base / "pid"), timeout=120)


def _port_taken(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((HOST, port)) == 0


def _erl(path: Path) -> str:
    """`path` as an Erlang string literal."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _configure(base: Path, ca: Authority, server: Pair, expired: Pair) -> None:
    (base / "home").mkdir(mode=0o700)
    cookie = base / "home" / ".erlang.cookie"
    cookie.write_text(os.urandom(20).hex())
    cookie.chmod(0o400)
    (base / "empty-env.conf").write_text("")
    (base / "enabled_plugins").write_text("[rabbitmq_auth_mechanism_ssl].\n")
    (base / "rabbitmq.conf").write_text(
        "listeners.tcp = none\n"
        f"listeners.ssl.default = {HOST}:{PORT}\n"
        "auth_mechanisms.1 = PLAIN\n"
        "auth_mechanisms.2 = EXTERNAL\n"
        "ssl_cert_login_from = common_name\n"
        "loopback_users = none\n"
    )
    # All of ssl_options here, not in rabbitmq.conf: advanced.config replaces the whole list.
    # SNI: a client asking for EXPIRED_NAME is shown the expired certificate.
    sni = (
        f'[{{"{EXPIRED_NAME}", [{{certfile, {_erl(expired.cert)}}},'
        f" {{keyfile, {_erl(expired.key)}}}]}}]"
    )
    options = (
        f"{{cacertfile, {_erl(base / ca.path)}}}, {{certfile, {_erl(server.cert)}}},"
        f" {{keyfile, {_erl(server.key)}}}, {{verify, verify_peer}},"
        f" {{fail_if_no_peer_cert, false}}, {{sni_hosts, {sni}}}"
    )
    (base / "advanced.config").write_text(f"[{{rabbit, [{{ssl_options, [{options}]}}]}}].\n")


def start(base: Path = BASE) -> TlsBroker:
    """Make the certificates and boot the node in a fresh `base`; the running node."""
    _stop(base)
    if _port_taken(PORT) or _port_taken(DIST_PORT):
        raise RuntimeError(f"{HOST}:{PORT} or :{DIST_PORT} is taken by a process not ours")
    shutil.rmtree(base, ignore_errors=True)
    (base / "log").mkdir(parents=True)
    (base / "mnesia").mkdir()
    certs = base / "certs"
    certs.mkdir(mode=0o700)
    ca = Authority.make("ca", base)
    wrong = Authority.make("wrong-ca", base)
    server = ca.issue(certs, "server", "localhost", server=True)
    expired = ca.issue(certs, "expired-server", EXPIRED_NAME, server=True, expired=True)
    common = f"runlet-{CERT_USER}"
    client = ca.issue(certs, "client", common, server=False)
    expired_client = ca.issue(certs, "expired-client", common, server=False, expired=True)
    stranger = wrong.issue(certs, "stranger", common, server=False)
    _configure(base, ca, server, expired)
    with (base / "log" / "startup.out").open("ab") as out:
        subprocess.run(
            [str(BIN / "rabbitmq-server"), "-detached"],
            env=_env(base),
            cwd=base,
            stdout=out,
            stderr=out,
            timeout=60,
            check=True,
        )
    _ctl(base, "wait", str(base / "pid"), "--timeout", str(BOOT_SECONDS), timeout=BOOT_SECONDS + 30)
    broker = TlsBroker(base, base / ca.path, base / wrong.path, client, expired_client, stranger)
    broker.add_cert_user()
    return broker


@contextlib.contextmanager
def _session_lock(path: Path) -> Iterator[None]:
    """One test session at a time owns the node (its ports are fixed): others wait for it."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.stderr.write(f"waiting for another test session's TLS node ({path})\n")
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when that session ends
        yield


@pytest.fixture(scope="session")
def tls_broker() -> Iterator[TlsBroker]:
    """The TLS node for the whole session; stopped at its end."""
    with _session_lock(BASE.with_name(BASE.name + ".lock")):
        broker = start()
        try:
            yield broker
        finally:
            _stop(broker.base)
