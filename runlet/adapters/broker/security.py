"""How a broker connection proves whom it talks to and who it is: TLS, the password, the login.

`BrokerSecurity.of(settings)` turns the ``[broker]`` keys into what each connection needs, once
per start of a process: the password read from `password_file` (through `runlet.files`, the one
reader of secret files), an `ssl.SSLContext` for amqps:// URLs (the CA file or the system's
CAs, the client certificate, verification on unless ``verify = false``), the host name to verify
and send as SNI, and whether to log in with SASL EXTERNAL (the client certificate's name).
Building it with ``verify = false`` logs the warning ``broker_tls_unverified``: at every start.

`BrokerSecurity.dial` opens one aio-pika connection with them, and `explain` turns a failed
one into the sentence a user needs (which certificate was refused, and why; which key to look
at), never the library's class name alone.

What it must never do: show the password. It is kept out of the repr, it reaches aio-pika only
inside the URL it dials (aio-pika and aiormq mask it in their own strings), and every URL shown
to a person goes through `safe_url`. A bad file is a `ConfigError` naming its key.
"""

from __future__ import annotations

import contextlib
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractConnection
from aio_pika.connection import make_url

from runlet.config import BrokerConfig
from runlet.errors import ConfigError
from runlet.files import read_password, read_secret

if TYPE_CHECKING:
    from yarl import URL  # aio-pika's URL type

log = structlog.get_logger(__name__)

MAX_PEM_BYTES = 1024 * 1024  # a CA bundle of a few hundred certificates fits
_E = TypeVar("_E", bound=BaseException)


@dataclass(frozen=True, slots=True)
class BrokerSecurity:
    """What every connection of one process uses; the default is a plain URL, as written."""

    password: str | None = field(default=None, repr=False)
    context: ssl.SSLContext | None = None  # for amqps:// URLs; None: aiormq's default
    server_name: str | None = None
    external: bool = False  # SASL EXTERNAL: the client certificate is the login
    client_certificate: bool = False

    @classmethod
    def of(cls, settings: BrokerConfig) -> BrokerSecurity:
        """Read the files `settings` names and build the TLS context; bad files name their key."""
        password = None
        if settings.password_file is not None:
            password = read_password(settings.password_file, "broker.password_file")
        context = _context(settings) if settings.tls else None
        if settings.tls and not settings.verify:
            log.warning(
                "broker_tls_unverified",
                problem="broker.verify = false: the broker's certificate and host name are not"
                " checked, so anyone on the path can read and change this traffic",
            )
        return cls(
            password,
            context,
            settings.server_name,
            settings.login == "certificate",
            settings.cert_file is not None,
        )

    def target(self, url: str, *, heartbeat: int) -> URL:
        """The URL aio-pika dials: `url` with the password and the login mechanism put in."""
        extra: dict[str, Any] = {"auth": "external"} if self.external else {}
        target = make_url(url, heartbeat=heartbeat, **extra)
        return target if self.password is None else target.with_password(self.password)

    async def dial(
        self, url: str, *, timeout: float, heartbeat: int, name: str
    ) -> AbstractConnection:
        """One connection to `url`, with the password, TLS context and login of this process."""
        target = self.target(url, heartbeat=heartbeat)
        tls = target.scheme == "amqps"
        connection = aio_pika.Connection(
            target,
            ssl_context=self.context if tls else None,
            client_properties={"connection_name": name},
        )
        if tls and self.server_name is not None:
            # aio-pika passes its kwargs on to asyncio.open_connection: verified name and SNI
            connection.kwargs["server_hostname"] = self.server_name
        try:
            await connection.connect(timeout=timeout)
        except BaseException:
            # closed here, on the loop: left to the garbage collector, aio-pika's __del__
            # makes a close() coroutine that, outside the loop thread, is never awaited
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        return connection

    def explain(self, exc: BaseException) -> str:
        """What went wrong with a connection attempt, in words a user can act on."""
        verify = _find(exc, ssl.SSLCertVerificationError)
        if verify is not None:
            reason = str(verify.verify_message or verify.reason or verify)
            return f"the broker's TLS certificate was refused: {reason}{_hint(reason)}"
        refused = _find(exc, aiormq.exceptions.ProbableAuthenticationError)
        if refused is not None:
            text = str(refused.args[0]) if refused.args else "ACCESS_REFUSED"
            how = (
                "is the client certificate's common name (broker.cert_file) a broker user?"
                if self.external
                else "check the user in broker.urls and its password (broker.password_file)"
            )
            return f"the broker refused the login: {text.split('. For details')[0]}; {how}"
        handshake = _find(exc, ssl.SSLError)
        if handshake is not None:
            reason = str(handshake.reason or handshake)
            return next(
                (said for alert, said in _ALERTS if alert in reason),
                f"the TLS handshake failed: {reason}",
            )
        if self.context is not None and _find(exc, ConnectionResetError) is not None:
            # TLS 1.3: the broker checks our certificate after we think the handshake is
            # done, and its alert may come too late to be read before the reset
            what = (
                "it may have refused this device's certificate (broker.cert_file: expired, or"
                " from a CA the broker does not trust)"
                if self.client_certificate
                else "it may want a client certificate (broker.cert_file)"
            )
            return f"the broker closed the TLS connection: {what}"
        return str(exc) or type(exc).__name__


_REFUSED = "the broker refused this device's certificate"
_ALERTS = (  # the TLS alerts a broker sends about our certificate, as OpenSSL names them
    ("CERTIFICATE_EXPIRED", f"{_REFUSED}: it has expired (broker.cert_file)"),
    ("UNKNOWN_CA", f"{_REFUSED}: it is not from a CA the broker trusts (broker.cert_file)"),
    ("CERTIFICATE_REQUIRED", "the broker wants a client certificate (broker.cert_file)"),
    ("BAD_CERTIFICATE", f"{_REFUSED} (broker.cert_file)"),
    ("CERTIFICATE_UNKNOWN", f"{_REFUSED} (broker.cert_file)"),
)


def _find(exc: BaseException, kind: type[_E]) -> _E | None:
    """`exc` or the first of its causes that is a `kind`."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _hint(reason: str) -> str:
    lowered = reason.lower()
    if "mismatch" in lowered:
        return " (connect by a name the certificate holds, or set broker.server_name to one)"
    if "expired" in lowered:
        return " (the broker's certificate must be renewed)"
    if "issuer" in lowered or "self-signed" in lowered or "self signed" in lowered:
        return " (is broker.ca_file the CA that signed the broker's certificate?)"
    return ""


def _context(settings: BrokerConfig) -> ssl.SSLContext:
    if settings.ca_file is None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)  # the system's CAs
    else:
        # only the CAs of ca_file: create_default_context would add the system's to them
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificate and name
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        pem = _read_pem(settings.ca_file, "broker.ca_file")
        try:
            context.load_verify_locations(cadata=pem)
        except (ssl.SSLError, ValueError) as exc:
            problem = f"holds no usable PEM CA certificate ({_reason(exc)})"
            raise ConfigError("broker.ca_file", problem, source=str(settings.ca_file)) from None
    if settings.cert_file is not None and settings.key_file is not None:
        _load_client_certificate(context, settings.cert_file, settings.key_file)
    if not settings.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _load_client_certificate(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    _read_pem(cert, "broker.cert_file")

    def key_error(problem: str) -> ConfigError:
        return ConfigError("broker.key_file", problem, source=str(key))

    read_secret(key, key_error)  # owner-only, regular, bounded: the policy of every secret

    def no_passphrase() -> str:
        raise key_error("is encrypted: give the key without a passphrase (and mode 600)")

    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except ConfigError:
        raise
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise key_error(
            f"is not the PEM private key of broker.cert_file ({_reason(exc)})"
        ) from None


def _read_pem(path: Path, key: str) -> str:
    """A public PEM file's text: a bounded read of a regular file."""

    def error(problem: str) -> ConfigError:
        return ConfigError(key, problem, source=str(path))

    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise error("is not a regular file")
        with path.open("rb") as handle:
            data = handle.read(MAX_PEM_BYTES + 1)
    except FileNotFoundError:
        raise error("file not found") from None
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_PEM_BYTES:
        raise error(f"is over {MAX_PEM_BYTES} bytes: not a PEM file")
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise error("holds no PEM certificate")
    return data.decode("ascii", "replace")


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc).strip() or type(exc).__name__
