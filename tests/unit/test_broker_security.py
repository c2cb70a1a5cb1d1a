"""BrokerSecurity: the files it reads, the URL it dials, the words it finds for a failure."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import aiormq
import pytest
from cryptography.hazmat.primitives import serialization
from structlog.testing import capture_logs

from runlet.adapters.broker import BrokerSecurity
from runlet.config import BrokerConfig
from runlet.errors import ConfigError
from tests.certs import Authority, Pair

SECRET = "pa55-w0rd-in-a-file"  # noqa: S105 - a made-up password that must never be shown
TLS = ("amqps://runlet-alice@mq.example.net:5671/",)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Pair]:
    """A CA file and a client certificate it signed."""
    folder = tmp_path_factory.mktemp("pki")
    ca = Authority.make("ca", folder)
    return folder / "ca.pem", ca.issue(folder, "client", "runlet-alice", server=False)


def private(path: Path, data: bytes | str, mode: int = 0o600) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    path.chmod(mode)
    return path


def of(**keys: object) -> BrokerSecurity:
    return BrokerSecurity.of(BrokerConfig(**keys))  # type: ignore[arg-type]


def refused(**keys: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        of(**keys)
    return info.value


# -- what it reads ----------------------------------------------------------------------------


def test_plain_urls_need_nothing() -> None:
    """The default settings read no file and make no TLS context."""
    security = of()
    assert (security.password, security.context, security.external) == (None, None, False)


def test_password_file_is_read_and_kept_out_of_the_repr(tmp_path: Path) -> None:
    """The password comes from its file, stripped, and never shows in the repr."""
    path = private(tmp_path / "pw", f"  {SECRET}\n")
    security = of(urls=TLS, password_file=path)
    assert security.password == SECRET
    assert SECRET not in repr(security)


@pytest.mark.parametrize(
    ("data", "mode", "text"),
    [
        (SECRET, 0o644, "is open to other users (mode 644)"),
        (SECRET, 0o640, "is open to other users"),
        ("\n \n", 0o600, "is empty"),
        (b"\xff\xfe", 0o600, "is not UTF-8 text"),
        ("pass\x07word", 0o600, "holds control characters"),
        ("x" * (64 * 1024 + 1), 0o600, "is over"),
    ],
)
def test_bad_password_files(tmp_path: Path, data: str | bytes, mode: int, text: str) -> None:
    """A password file open to others, empty, binary or huge is refused by its key."""
    error = refused(urls=TLS, password_file=private(tmp_path / "pw", data, mode))
    assert error.key == "broker.password_file"
    assert text in error.problem
    assert SECRET not in str(error)


def test_missing_password_file(tmp_path: Path) -> None:
    """A password file that is not there says so, naming the key and the path."""
    error = refused(urls=TLS, password_file=tmp_path / "nope")
    assert (error.key, error.problem, error.source) == (
        "broker.password_file",
        "file not found",
        str(tmp_path / "nope"),
    )


def test_password_file_that_is_a_fifo_is_not_waited_on(tmp_path: Path) -> None:
    """A FIFO in place of the password file is refused at once, not read forever."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    assert refused(urls=TLS, password_file=fifo).problem == "is not a regular file"


def test_tls_context_verifies_by_default(pki: tuple[Path, Pair]) -> None:
    """amqps:// gets a context that checks the certificate and the host name, and trusts the
    CAs of ca_file only (not the system's as well)."""
    context = of(urls=TLS, ca_file=pki[0]).context
    assert context is not None
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert len(context.get_ca_certs()) == 1


def test_system_cas_without_ca_file() -> None:
    """Without ca_file the context trusts what the system trusts, still verifying."""
    context = of(urls=TLS).context
    assert context is not None
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert context.get_ca_certs() == ssl.create_default_context().get_ca_certs()


def test_verify_false_turns_checks_off_and_warns() -> None:
    """verify = false: no certificate or name check, and a warning each time it is built."""
    for _ in range(2):
        with capture_logs() as logs:
            context = of(urls=TLS, verify=False).context
        assert context is not None
        assert (context.verify_mode, context.check_hostname) == (ssl.CERT_NONE, False)
        assert [line["event"] for line in logs] == ["broker_tls_unverified"]
        assert logs[0]["log_level"] == "warning"


def test_verified_start_logs_no_warning(pki: tuple[Path, Pair]) -> None:
    """A verifying configuration builds silently."""
    with capture_logs() as logs:
        of(urls=TLS, ca_file=pki[0])
    assert logs == []


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"", "holds no PEM certificate"),
        (b"hello", "holds no PEM certificate"),
        (
            b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
            "holds no usable PEM CA certificate",
        ),
        (b"-----BEGIN CERTIFICATE-----\n" + b"A" * (1024 * 1024), "is over"),
    ],
)
def test_bad_ca_files(tmp_path: Path, data: bytes, text: str) -> None:
    """A CA file that is empty, not PEM, broken or huge is refused by its key."""
    error = refused(urls=TLS, ca_file=private(tmp_path / "ca.pem", data, 0o644))
    assert error.key == "broker.ca_file"
    assert text in error.problem


def test_ca_file_that_is_missing_or_a_folder(tmp_path: Path) -> None:
    """A missing CA file and a folder in its place are told apart."""
    assert refused(urls=TLS, ca_file=tmp_path / "no.pem").problem == "file not found"
    assert refused(urls=TLS, ca_file=tmp_path).problem == "is not a regular file"


def test_client_certificate_is_loaded(pki: tuple[Path, Pair]) -> None:
    """cert_file and key_file go into the context; the login stays a password one."""
    ca, client = pki
    security = of(urls=TLS, ca_file=ca, cert_file=client.cert, key_file=client.key)
    assert (security.client_certificate, security.external) == (True, False)


def test_key_file_open_to_others_is_refused(pki: tuple[Path, Pair], tmp_path: Path) -> None:
    """The client key is a secret: a copy with mode 644 is refused."""
    _, client = pki
    key = private(tmp_path / "c.key", client.key.read_bytes(), 0o644)
    error = refused(urls=TLS, cert_file=client.cert, key_file=key)
    assert (error.key, error.source) == ("broker.key_file", str(key))
    assert "is open to other users" in error.problem


def test_key_of_another_certificate_is_refused(pki: tuple[Path, Pair], tmp_path: Path) -> None:
    """A key that does not belong to cert_file is refused, naming both keys."""
    _, client = pki
    other = Authority.make("other", tmp_path).issue(tmp_path, "x", "x", server=False)
    error = refused(urls=TLS, cert_file=client.cert, key_file=other.key)
    assert error.key == "broker.key_file"
    assert "is not the PEM private key of broker.cert_file" in error.problem


def test_encrypted_key_is_refused_without_a_prompt(pki: tuple[Path, Pair], tmp_path: Path) -> None:
    """An encrypted key is refused at once: nothing asks for a passphrase on the terminal."""
    _, client = pki
    loaded = serialization.load_pem_private_key(client.key.read_bytes(), password=None)
    locked = loaded.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    key = private(tmp_path / "locked.key", locked)
    error = refused(urls=TLS, cert_file=client.cert, key_file=key)
    assert error.key == "broker.key_file"
    assert "is encrypted" in error.problem


def test_certificate_file_that_is_a_key(pki: tuple[Path, Pair]) -> None:
    """A key given as cert_file is refused as holding no certificate."""
    _, client = pki
    error = refused(urls=TLS, cert_file=client.key, key_file=client.key)
    assert (error.key, error.problem) == ("broker.cert_file", "holds no PEM certificate")


# -- the URL it dials -------------------------------------------------------------------------


def test_target_carries_the_password_and_heartbeat(tmp_path: Path) -> None:
    """The dialled URL has the file's password (quoted) and the heartbeat; the shown one not."""
    security = of(urls=TLS, password_file=private(tmp_path / "pw", "p@ss/w:rd"))
    target = security.target(TLS[0], heartbeat=7)
    assert (target.user, target.password) == ("runlet-alice", "p@ss/w:rd")
    assert target.query["heartbeat"] == "7"
    assert "auth" not in target.query


def test_target_of_a_certificate_login(pki: tuple[Path, Pair]) -> None:
    """login = "certificate" asks aiormq for SASL EXTERNAL, and no password is added."""
    ca, client = pki
    security = of(
        urls=("amqps://mq.example.net/",),
        ca_file=ca,
        cert_file=client.cert,
        key_file=client.key,
        login="certificate",
    )
    target = security.target("amqps://mq.example.net/", heartbeat=10)
    assert (target.query["auth"], target.password) == ("external", None)


# -- the words for a failure ------------------------------------------------------------------


def wrapped(cause: BaseException) -> BaseException:
    """`cause` as aiormq raises it: an AMQPConnectionError from it."""
    try:
        raise aiormq.exceptions.AMQPConnectionError(*cause.args) from cause
    except aiormq.exceptions.AMQPConnectionError as exc:
        return exc


def verify_error(message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    error.verify_message = message
    return error


@pytest.mark.parametrize(
    ("message", "hint"),
    [
        ("certificate has expired", "(the broker's certificate must be renewed)"),
        (
            "Hostname mismatch, certificate is not valid for 'mq'.",
            "(connect by a name the certificate holds, or set broker.server_name to one)",
        ),
        (
            "unable to get local issuer certificate",
            "(is broker.ca_file the CA that signed the broker's certificate?)",
        ),
        (
            "self-signed certificate",
            "(is broker.ca_file the CA that signed the broker's certificate?)",
        ),
        ("unsupported certificate purpose", ""),
    ],
)
def test_explains_a_refused_broker_certificate(message: str, hint: str) -> None:
    """Each verification failure is named, with the key to look at where there is one."""
    said = BrokerSecurity().explain(wrapped(verify_error(message)))
    assert said.startswith(f"the broker's TLS certificate was refused: {message}")
    assert said.endswith(hint)


@pytest.mark.parametrize(
    ("reason", "said"),
    [
        ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "certificate: it has expired (broker.cert_file)"),
        ("TLSV1_ALERT_UNKNOWN_CA", "not from a CA the broker trusts (broker.cert_file)"),
        ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "wants a client certificate (broker.cert_file)"),
        ("SSLV3_ALERT_BAD_CERTIFICATE", "refused this device's certificate (broker.cert_file)"),
        ("WRONG_VERSION_NUMBER", "the TLS handshake failed: WRONG_VERSION_NUMBER"),
    ],
)
def test_explains_a_tls_alert(reason: str, said: str) -> None:
    """The broker's alerts about our certificate read as what happened to it."""
    alert = ssl.SSLError(1, f"[SSL: {reason}] alert")
    alert.reason = reason
    assert BrokerSecurity().explain(wrapped(alert)).endswith(said)


def test_explains_a_reset_during_tls() -> None:
    """A reset on a TLS connection points at the client certificate, with or without one."""
    reset = wrapped(ConnectionResetError(104, "Connection reset by peer"))
    context = ssl.create_default_context()
    with_cert = BrokerSecurity(context=context, client_certificate=True).explain(reset)
    assert "it may have refused this device's certificate (broker.cert_file" in with_cert
    assert "it may want a client certificate" in BrokerSecurity(context=context).explain(reset)
    assert BrokerSecurity().explain(reset) == str(reset)


def test_explains_a_refused_login() -> None:
    """ACCESS_REFUSED says which keys make the login, for a password and a certificate."""
    refused_login = aiormq.exceptions.ProbableAuthenticationError(
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details"
        " see the broker logfile."
    )
    assert BrokerSecurity().explain(refused_login) == (
        "the broker refused the login: ACCESS_REFUSED - Login was refused using authentication"
        " mechanism PLAIN; check the user in broker.urls and its password"
        " (broker.password_file)"
    )
    assert "common name (broker.cert_file)" in BrokerSecurity(external=True).explain(refused_login)


def test_other_failures_keep_their_text() -> None:
    """A failure unrelated to trust is passed on as it is."""
    assert BrokerSecurity().explain(ConnectionRefusedError(111, "refused")) == "[Errno 111] refused"
    assert BrokerSecurity().explain(TimeoutError()) == "TimeoutError"


def test_a_cause_cycle_ends() -> None:
    """An exception whose causes loop back is walked once."""
    first, second = OSError("a"), OSError("b")
    first.__cause__, second.__cause__ = second, first
    assert BrokerSecurity().explain(first) == "a"
