"""How a dataclass field documents and checks itself: `setting(...)`, `@schema`, read back.

A config class is decorated `@schema` (a frozen, slotted dataclass) and each of its keys is a
field declared with `setting`: ``heartbeat: int = setting(Int(1, 600), "AMQP heartbeat,
seconds", default=10)``. The `Setting` it leaves in the field's metadata holds the check and
the meaning; the field's own default is the key's default, and a field without one is a
required key, unless its setting has a `fallback` made at load time (the node name).

`keys_of` and `sections_of` read the fields back as `Key` and `Section`, the only view of the
schema the loader and the documentation use.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from typing import Any, TypeVar, dataclass_transform, overload

from runlet.config.checks import Check

T = TypeVar("T")
_SETTING = "runlet.config.setting"


@dataclass(frozen=True, slots=True)
class Setting:
    """What one key accepts and means, kept in its field's metadata."""

    check: Check
    meaning: str
    default_doc: str | None = None  # how the default reads, where the field's value won't do
    fallback: Callable[[], object] | None = None  # the default, made at load time; may raise
    masked: bool = False  # may hold a login: shown only through the caller's mask


@overload
def setting(
    check: Check,
    meaning: str,
    *,
    default: T,
    default_doc: str | None = None,
    masked: bool = False,
    repr: bool = True,
) -> T: ...
@overload
def setting(
    check: Check,
    meaning: str,
    *,
    default_doc: str | None = None,
    fallback: Callable[[], object] | None = None,
    kw_only: bool = False,
) -> Any: ...
def setting(
    check: Check,
    meaning: str,
    *,
    default: Any = MISSING,
    default_doc: str | None = None,
    fallback: Callable[[], object] | None = None,
    masked: bool = False,
    repr: bool = True,
    kw_only: bool = False,
) -> Any:
    """A dataclass field that is a config key (without `default`: a required one)."""
    found = Setting(check, meaning, default_doc, fallback, masked)
    return dataclasses.field(
        default=default, repr=repr, kw_only=kw_only, metadata={_SETTING: found}
    )


@dataclass_transform(frozen_default=True, field_specifiers=(setting, dataclasses.field))
def schema(cls: type[T]) -> type[T]:
    """A config class: a frozen, slotted dataclass whose fields are `setting`s or sections."""
    return dataclass(frozen=True, slots=True)(cls)


@dataclass(frozen=True, slots=True)
class Key:
    """One key as the loader and the documentation see it."""

    dotted: str  # ``jobs.max_parallel``; ``role`` at the top level
    setting: Setting
    default: object  # MISSING if the field has none

    @property
    def name(self) -> str:
        return self.dotted.rpartition(".")[2]

    @property
    def required(self) -> bool:
        return self.default is MISSING and self.setting.fallback is None


@dataclass(frozen=True, slots=True)
class Section:
    """One section: its class, its keys by name, and whether it may be absent (then None)."""

    cls: type[Any]
    keys: Mapping[str, Key]
    optional: bool


def keys_of(cls: type[Any], prefix: str = "") -> dict[str, Key]:
    """The keys of `cls` by name: its fields declared with `setting`, in their order."""
    keys = {}
    for spec in dataclasses.fields(cls):
        found = spec.metadata.get(_SETTING)
        if isinstance(found, Setting):
            keys[spec.name] = Key(prefix + spec.name, found, spec.default)
    return keys


def sections_of(root: type[Any]) -> dict[str, Section]:
    """The sections of `root` by name: its fields typed as a `@schema` class (or it | None).

    Every field of a section must be a key; a section whose field may be None is optional.
    """
    hints = typing.get_type_hints(root)
    sections = {}
    for spec in dataclasses.fields(root):
        kinds = typing.get_args(hints[spec.name]) or (hints[spec.name],)
        cls = next(
            (kind for kind in kinds if isinstance(kind, type) and dataclasses.is_dataclass(kind)),
            None,
        )
        if cls is None:
            continue
        keys = keys_of(cls, spec.name + ".")
        unkeyed = [part.name for part in dataclasses.fields(cls) if part.name not in keys]
        if unkeyed:
            raise TypeError(f"{cls.__name__} fields {unkeyed} are not setting(...)s")
        sections[spec.name] = Section(cls, keys, type(None) in kinds)
    return sections
