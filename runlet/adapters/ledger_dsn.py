"""How the ledger store reaches its PostgreSQL server and names it, never showing the password.

`server_dsn` builds the DSN from `[server] database_url` and the password file; `Where` is how
every error of the store (runlet.adapters.ledger_db) names the server: host, port, database and
user, with any password that could echo in a library's message masked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit, urlunsplit

from runlet.errors import DatabaseUnavailable
from runlet.files import read_password


@dataclass(frozen=True, slots=True)
class Where:
    """How errors name the server: host, port, database and user; never the password."""

    text: str
    secrets: tuple[str, ...]

    @classmethod
    def of(cls, dsn: str) -> Where:
        try:
            parts = urlsplit(dsn)
            port = parts.port or 5432
        except ValueError:
            return cls("PostgreSQL (unparsable DSN)", ())
        query = parse_qs(parts.query)
        host = parts.hostname or ",".join(query.get("host", [])) or "localhost"
        database = unquote(parts.path.lstrip("/")) or "(default database)"
        user = unquote(parts.username or "") or "(default user)"
        secrets = [parts.password or "", *query.get("password", [])]
        secrets += [unquote(s) for s in secrets]
        return cls(f"PostgreSQL {host}:{port}/{database} as {user}", tuple(s for s in secrets if s))

    def __str__(self) -> str:
        return self.text

    def mask(self, error: BaseException) -> str:
        text = str(error) or type(error).__name__
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def unavailable(self, error: BaseException) -> DatabaseUnavailable:
        return DatabaseUnavailable(f"{self.text}: {type(error).__name__}: {self.mask(error)}")


def server_dsn(url: str, password_file: Path | None) -> str:
    """The DSN of `[server] database_url`, with the password from its file put in.

    A file that cannot be read is a ConfigError naming `server.database_password_file`.
    """
    if password_file is None:
        return url
    password = read_password(password_file, "server.database_password_file")
    parts = urlsplit(url)
    netloc = f"{quote(parts.username or 'postgres', safe='')}:{quote(password, safe='')}@"
    netloc += parts.netloc.rpartition("@")[2] or "127.0.0.1"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
