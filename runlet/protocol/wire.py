"""The one codec: typed message classes to msgpack bytes and back, strictly.

A message is a frozen, slotted dataclass registered with `@message("tag")`. On the wire it is a
msgpack map `{"t": tag, "v": version, <field>: <value>, ...}`. The very same bytes travel
through local mailboxes and over AMQP.

Decoding never trusts its input: an oversize payload, bad msgpack, trailing bytes, an unknown
tag or version, a missing or mistyped field, all raise `ProtocolError` with one clear sentence.
Unknown *extra* fields are ignored, so a newer peer may add fields.

Field types the codec understands: `str`, `int`, `float`, `bool`, `bytes`, `X | None`,
`tuple[str, ...]` and `tuple[int, ...]`. Strings and tuples have size caps; ids and names are
checked by the message classes themselves through `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import msgpack

from runlet.errors import ProtocolError

MAX_MESSAGE = 2 * 1024 * 1024  # bytes of one encoded message; output chunks stay far below it
MAX_STR = 64 * 1024
MAX_ITEMS = 4096
WIRE_VERSION = 1

T = TypeVar("T")
Checker = Callable[[str, Any], Any]

_REGISTRY: dict[str, tuple[type[Any], tuple[tuple[str, Checker, bool], ...]]] = {}
_TAGS: dict[type[Any], str] = {}


def message(tag: str) -> Callable[[type[T]], type[T]]:
    """Register a frozen dataclass as a wire message under `tag`."""

    def register(cls: type[T]) -> type[T]:
        if tag in _REGISTRY:
            raise RuntimeError(f"wire tag {tag!r} registered twice")
        hints = typing.get_type_hints(cls)
        fields = tuple(
            (f.name, _checker(hints[f.name]), _has_default(f))
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        )
        _REGISTRY[tag] = (cls, fields)
        _TAGS[cls] = tag
        return cls

    return register


def _has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def encode(msg: object) -> bytes:
    """Encode a registered message as msgpack bytes."""
    tag = _TAGS.get(type(msg))
    if tag is None:
        raise TypeError(f"{type(msg).__name__} is not a registered wire message")
    body: dict[str, Any] = {"t": tag, "v": WIRE_VERSION}
    for name, check, _ in _REGISTRY[tag][1]:
        value = getattr(msg, name)
        body[name] = list(value) if isinstance(value, tuple) else value
        check(f"{tag}.{name}", body[name])  # never send what a receiver would refuse
    data: bytes = msgpack.packb(body, use_bin_type=True)
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"{tag} message is {len(data)} bytes, over the {MAX_MESSAGE} limit")
    return data


def encode_rows(rows: list[dict[str, Any]]) -> bytes:
    """Encode a query answer's rows (maps of plain values; tuples and sets become lists)."""
    data: bytes = msgpack.packb(rows, use_bin_type=True, default=_plain)
    return data


def decode_rows(data: bytes) -> list[dict[str, Any]]:
    """Decode a query answer's rows, with bounds; anything else raises ProtocolError."""
    try:
        rows = msgpack.unpackb(
            data,
            raw=False,
            max_bin_len=0,
            max_ext_len=0,
            max_str_len=1 << 20,
            max_array_len=100_000,
            max_map_len=64,
        )
    except (ValueError, msgpack.UnpackException, TypeError, RecursionError) as exc:
        raise ProtocolError("the server's answer is not valid msgpack") from exc
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ProtocolError("the server's answer is not a list of rows")
    return rows


def _plain(value: object) -> object:
    if isinstance(value, tuple | frozenset | set):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def decode(data: bytes) -> Any:
    """Decode and validate bytes into their message; any fault raises ProtocolError."""
    raw = _unpack(data)
    tag = raw.get("t")
    if not isinstance(tag, str) or tag not in _REGISTRY:
        raise ProtocolError(f"unknown message type {_show(tag)}")
    version = raw.get("v")
    if type(version) is not int or version != WIRE_VERSION:
        raise ProtocolError(f"{tag}: unsupported wire version {_show(version)}")
    cls, fields = _REGISTRY[tag]
    kwargs: dict[str, Any] = {}
    for name, check, optional in fields:
        if name not in raw:
            if optional:
                continue
            raise ProtocolError(f"{tag}: missing field {name!r}")
        kwargs[name] = check(f"{tag}.{name}", raw[name])
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"{tag}: {exc}") from exc


def decode_as(data: bytes, cls: type[T]) -> T:
    """Decode and insist the message is of class `cls`."""
    msg = decode(data)
    if not isinstance(msg, cls):
        raise ProtocolError(f"expected {_TAGS.get(cls, cls.__name__)}, got {_TAGS[type(msg)]}")
    return msg


def _unpack(data: bytes) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"message body must be bytes, not {type(data).__name__}")
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message is {len(data)} bytes, over the {MAX_MESSAGE} limit")
    if not data:
        raise ProtocolError("empty message")
    try:
        raw = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=MAX_STR,
            max_bin_len=MAX_MESSAGE,
            max_array_len=MAX_ITEMS,
            max_map_len=256,
            max_ext_len=0,
        )
    except msgpack.ExtraData as exc:
        raise ProtocolError("trailing bytes after the message") from exc
    except msgpack.StackError as exc:
        raise ProtocolError("message nested too deeply") from exc
    except (ValueError, msgpack.UnpackException, TypeError, RecursionError) as exc:
        detail = str(exc) or "malformed data"
        raise ProtocolError(
            f"not a valid msgpack message ({type(exc).__name__}: {detail})"
        ) from exc
    if not isinstance(raw, dict):
        raise ProtocolError(f"message must be a map, got {type(raw).__name__}")
    return raw


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- field checkers, built once per message class -------------------------------------------


def _checker(tp: Any) -> Checker:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {tp}")
        inner = _checker(args[0])
        return lambda where, v: None if v is None else inner(where, v)
    if origin is tuple:
        item_type, ellipsis = typing.get_args(tp)
        if ellipsis is not Ellipsis:
            raise TypeError(f"only homogeneous tuples are supported, not {tp}")
        item = _checker(item_type)
        return lambda where, v: _check_tuple(where, v, item)
    simple = _SIMPLE.get(tp)
    if simple is None:
        raise TypeError(f"unsupported wire field type {tp}")
    return simple


def _check_tuple(where: str, value: Any, item: Checker) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise ProtocolError(f"{where}: expected a list, got {type(value).__name__}")
    if len(value) > MAX_ITEMS:
        raise ProtocolError(f"{where}: {len(value)} items, over the {MAX_ITEMS} limit")
    return tuple(item(f"{where}[{i}]", v) for i, v in enumerate(value))


def _check_str(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{where}: expected text, got {type(value).__name__}")
    try:
        size = len(value) if value.isascii() else len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ProtocolError(f"{where}: text is not valid Unicode (lone surrogate)") from exc
    if size > MAX_STR:
        raise ProtocolError(f"{where}: text of {size} UTF-8 bytes, over the {MAX_STR} limit")
    return value


def _check_int(where: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"{where}: expected an integer, got {type(value).__name__}")
    if not -(2**63) <= value < 2**64:
        raise ProtocolError(f"{where}: integer out of the 64-bit range")
    return value


def _check_float(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{where}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ProtocolError(f"{where}: expected a finite number")
    return float(value)


def _check_bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(f"{where}: expected true or false, got {type(value).__name__}")
    return value


def _check_bytes(where: str, value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise ProtocolError(f"{where}: expected bytes, got {type(value).__name__}")
    return value


_SIMPLE: dict[Any, Checker] = {
    str: _check_str,
    int: _check_int,
    float: _check_float,
    bool: _check_bool,
    bytes: _check_bytes,
}
