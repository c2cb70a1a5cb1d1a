"""The value checks of the config schema: each takes one raw TOML value and returns it typed.

A check is a small frozen callable object. It raises `Invalid` with a problem that reads
after the key's name (``must be from 1 to 600, got 0``); the loader adds the key. Its `doc`
is the type text shown by ``runlet config-keys`` and in README's table, and its `shape` says
how an environment variable's text is read for it.

A problem must never echo what could be a secret (a URL's login, a query string), and
echoes other values only cut short (`preview`), with control characters escaped.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import ClassVar, Literal, Protocol
from urllib.parse import SplitResult, parse_qsl, urlsplit

# How an environment variable's text becomes a value: read as TOML (numbers, booleans), taken
# as written (strings and paths), or split on commas (lists).
Shape = Literal["scalar", "text", "list"]

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_IPV4_LIKE = re.compile(r"\d+\.\d+\.\d+\.\d+")
# Reserved by AWS for its own bucket kinds (access points, directory and table buckets).
_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
_PREVIEW_CHARS = 60


class Invalid(Exception):
    """A value failed its check; `index` points at the bad item of a list."""

    def __init__(self, problem: str, index: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.index = index


class Conflict(Invalid):
    """Keys of one section that do not go together; `key` is the dotted key to blame."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key


class Check(Protocol):
    """Checks one raw TOML value and returns the typed value, or raises `Invalid`."""

    @property
    def shape(self) -> Shape: ...

    @property
    def doc(self) -> str: ...

    def __call__(self, value: object, /) -> object: ...


@dataclass(frozen=True, slots=True)
class Int:
    lo: int
    hi: int
    shape: ClassVar[Shape] = "scalar"

    @property
    def doc(self) -> str:
        return f"integer {self.lo}..{self.hi}"

    def __call__(self, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(expected("an integer", value))
        if not self.lo <= value <= self.hi:
            raise Invalid(f"must be from {self.lo} to {self.hi}, got {preview(value)}")
        return value


@dataclass(frozen=True, slots=True)
class Positive:
    hi: float | None = None
    shape: ClassVar[Shape] = "scalar"

    @property
    def doc(self) -> str:
        return "number > 0" + ("" if self.hi is None else f", at most {self.hi:g}")

    def __call__(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(expected("a number", value))
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise Invalid(f"must be a finite number, got {preview(value)}")
        if number <= 0:
            raise Invalid(f"must be greater than 0, got {number:g}")
        if self.hi is not None and number > self.hi:
            raise Invalid(f"must be at most {self.hi:g}, got {number:g}")
        return number


@dataclass(frozen=True, slots=True)
class Bool:
    shape: ClassVar[Shape] = "scalar"
    doc: ClassVar[str] = "true | false"

    def __call__(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise Invalid(expected("true or false", value))
        return value


@dataclass(frozen=True, slots=True)
class Choice:
    options: tuple[str, ...]
    shape: ClassVar[Shape] = "text"

    @property
    def doc(self) -> str:
        return " | ".join(json.dumps(option) for option in self.options)

    def __call__(self, value: object) -> str:
        if not isinstance(value, str):
            raise Invalid(expected("a string", value))
        if value not in self.options:
            allowed = ", ".join(repr(option) for option in self.options)
            raise Invalid(f"must be one of {allowed}, got {preview(value)}")
        return value


class Text:
    """A non-empty string; the base of the checks that refine one (`refine` gets the string)."""

    __slots__ = ()
    shape: ClassVar[Shape] = "text"
    doc: ClassVar[str] = "non-empty string"

    def __call__(self, value: object) -> object:
        return self.refine(text(value))

    def refine(self, found: str) -> object:
        return found


class PathValue(Text):
    __slots__ = ()
    doc: ClassVar[str] = "path"

    def refine(self, found: str) -> Path:
        return expand(found)


@dataclass(frozen=True, slots=True)
class Matching:
    """A string that `pattern` matches in full; `rule` is the problem when it does not."""

    pattern: re.Pattern[str]
    doc: str
    rule: str
    any_string: bool = False  # even empty or with NUL characters: then `rule` says what is wrong
    shape: ClassVar[Shape] = "text"

    def __call__(self, value: object) -> str:
        found = value if self.any_string and isinstance(value, str) else text(value)
        if not self.pattern.fullmatch(found):
            raise Invalid(f"{self.rule}, got {preview(found)}")
        return found


NAME_CHECK = Matching(
    NAME,
    "name (1-64 of A-Z a-z 0-9 _ -)",
    "must be 1 to 64 ASCII letters, digits, '_' or '-' (it becomes a routing-key word, so no"
    " dots or spaces)",
    any_string=True,
)
# It goes into host names and request signatures: no dots, slashes or spaces.
REGION_CHECK = Matching(
    re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"),
    "region name (1-64 of A-Z a-z 0-9 _ -)",
    "must be 1 to 64 ASCII letters, digits, '_' or '-' (like us-east-1)",
)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_NAME_CHECK = Matching(
    re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*"),
    "DNS host name",
    "must be a DNS host name: dot-separated labels of letters, digits and '-', at most 253"
    " characters",
)
_BUCKET_NAME = Matching(
    re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"),
    "S3 bucket name (3-63 of a-z 0-9 . -)",
    "must be an S3 bucket name: 3 to 63 lower-case letters, digits, '.' or '-', starting and"
    " ending with a letter or digit",
)


class Bucket(Text):
    __slots__ = ()
    doc: ClassVar[str] = _BUCKET_NAME.doc

    def refine(self, found: str) -> str:
        name = _BUCKET_NAME(found)
        if ".." in name or _IPV4_LIKE.fullmatch(name):
            raise Invalid(f"must not hold '..' or look like an IP address, got {preview(name)}")
        if name.startswith(_BUCKET_PREFIXES) or name.endswith(_BUCKET_SUFFIXES):
            raise Invalid(f"uses a prefix or suffix S3 reserves, got {preview(name)}")
        return name


class HostPort(Text):
    __slots__ = ()
    doc: ClassVar[str] = "HOST:PORT"

    def refine(self, found: str) -> str:
        host, sep, port = found.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise Invalid(f"must be HOST:PORT with a port from 1 to 65535, got {preview(found)}")
        if any(char <= " " for char in host):
            raise Invalid("host must not contain spaces or control characters")
        return found


@dataclass(frozen=True, slots=True)
class Url:
    """A URL with one of two schemes, a host and a good port; problems never repeat the URL.

    An `endpoint` (an HTTP service of ours) may hold no login, query or fragment, and a port
    that cannot be parsed is blamed on the URL's syntax, before its scheme is looked at.
    """

    schemes: tuple[str, str]
    example: str  # shown when the host is missing
    endpoint: bool = False
    # query parameters the library would act on behind our back: (name, the key to use)
    taken: tuple[tuple[str, str], ...] = ()
    shape: ClassVar[Shape] = "text"

    @property
    def doc(self) -> str:
        return f"{self.schemes[0]}:// or {self.schemes[1]}:// URL"

    def __call__(self, value: object) -> str:
        url = text(value)
        if any(char <= " " or char == "\x7f" for char in url):
            raise Invalid("must not contain spaces or control characters")
        try:
            parts = urlsplit(url)
            port = parts.port if self.endpoint else _port_or_zero(parts)
        except ValueError:
            problem = ", or has a bad port (1 to 65535)" if self.endpoint else ""
            raise Invalid(f"is not a valid URL{problem}") from None
        if parts.scheme not in self.schemes:  # urlsplit lower-cases the scheme
            raise Invalid(f"must start with {self.schemes[0]}:// or {self.schemes[1]}://")
        if not parts.hostname:
            raise Invalid(f"must name a host ({self.example})")
        if port == 0:
            raise Invalid("has a bad port: it must be a number from 1 to 65535")
        if self.endpoint and "@" in parts.netloc:  # never echo it: that part is a login
            raise Invalid("must not hold a login: put the keys in storage.credentials_file")
        if self.endpoint and (parts.query or parts.fragment):  # a query may hold a signature
            raise Invalid("must not have a query (?...) or fragment (#...)")
        names = {name.lower() for name, _ in parse_qsl(parts.query, keep_blank_values=True)}
        for name, instead in self.taken:
            if name in names:
                raise Invalid(f"must not set {name!r} in its query: use {instead}")
        return url


def _port_or_zero(parts: SplitResult) -> int | None:
    try:
        return parts.port
    except ValueError:
        return 0


# aiormq reads TLS files and the login mechanism from the URL's query; Runlet has keys for them
_AMQP_TAKEN = (
    ("cafile", "broker.ca_file"),
    ("capath", "broker.ca_file"),
    ("cadata", "broker.ca_file"),
    ("certfile", "broker.cert_file"),
    ("keyfile", "broker.key_file"),
    ("no_verify_ssl", "broker.verify"),
    ("auth", "broker.login"),
)
AMQP_URL_CHECK = Url(("amqp", "amqps"), "amqp://user:password@host:port/vhost", taken=_AMQP_TAKEN)
HTTP_URL_CHECK = Url(("http", "https"), "https://host:port", endpoint=True)


@dataclass(frozen=True, slots=True)
class ListOf:
    item: Check
    non_empty: bool = False
    shape: ClassVar[Shape] = "list"

    @property
    def doc(self) -> str:
        return f"array, each {self.item.doc}" + (", at least one" if self.non_empty else "")

    def __call__(self, value: object) -> tuple[object, ...]:
        if not isinstance(value, list):
            raise Invalid(expected("an array", value))
        if self.non_empty and not value:
            raise Invalid("must not be empty")
        checked = []
        for index, item in enumerate(value):
            try:
                checked.append(self.item(item))
            except Invalid as exc:
                raise Invalid(exc.problem, index) from None
        return tuple(checked)


# --- helpers shared with the loader --------------------------------------------------------


def text(value: object) -> str:
    """`value` if it is a non-empty string without NUL characters."""
    if not isinstance(value, str):
        raise Invalid(expected("a string", value))
    if not value:
        raise Invalid("must not be empty")
    if "\x00" in value:
        raise Invalid("must not contain NUL characters")
    return value


def expand(path: str) -> Path:
    """`path` with ``~`` expanded."""
    try:
        return Path(path).expanduser()
    except RuntimeError as exc:  # no home directory, or an unknown ~user
        raise Invalid(f"cannot expand '~': {exc}") from None


_TOML_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),  # before int: bool is an int to Python, never to us
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "an array"),
    (dict, "a table"),
    (datetime, "a date-time"),  # before date, its base class
    (date, "a date"),
    (time, "a time"),
)


def type_name(value: object) -> str:
    """The TOML type of a parsed value, with its article (``an integer``)."""
    return next((name for kind, name in _TOML_TYPES if isinstance(value, kind)), "a value")


def expected(what: str, value: object) -> str:
    return f"must be {what}, got {type_name(value)}"


def preview(value: object) -> str:
    """`repr` (which escapes control characters), cut short for messages."""
    shown = repr(value)
    return shown if len(shown) <= _PREVIEW_CHARS else shown[: _PREVIEW_CHARS - 3] + "..."


def label(name: str) -> str:
    """A key from the input as it can be shown: quoted TOML-style unless it is a plain word."""
    return name if NAME.fullmatch(name) else json.dumps(name)
