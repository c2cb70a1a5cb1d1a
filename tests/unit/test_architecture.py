"""The package's shape (STYLE.md "Shape", DESIGN.md §1), checked on the source with `ast`.

- only the composition roots (runlet/daemon.py, runlet/server.py) import `actors`;
- actors import runlet's core, never one another;
- every module starts with a docstring;
- only runlet/broker.py talks to aio-pika/aiormq.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNLET = ROOT / "runlet"
ACTORS = ROOT / "actors"
AMQP_LIBRARIES = ("aio_pika", "aiormq")


def modules(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def module_name(path: Path) -> str:
    """The dotted module name of a file under ROOT (`actors/x.py` → `actors.x`)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str | None, level: int, importer: str, is_package: bool) -> str:
    """The absolute name a (possibly relative) `from ... import` refers to."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, *([module] if module else [])])


def imported_names(source: str, importer: str, *, is_package: bool = False) -> set[str]:
    """Every module a source imports, anywhere (also in functions or TYPE_CHECKING blocks).

    `from pkg import name` counts as both `pkg` and `pkg.name`, since `name` may be a module;
    calls to `importlib.import_module("...")` and `__import__("...")` with a literal count too.
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, importer, is_package)
            found.add(base)
            found.update(f"{base}.{alias.name}" if base else alias.name for alias in node.names)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if name in ("import_module", "__import__") and isinstance(first, ast.Constant):
                found.add(str(first.value))
    return found


def imports_of(path: Path) -> set[str]:
    return imported_names(
        path.read_text(encoding="utf-8"),
        module_name(path),
        is_package=path.name == "__init__.py",
    )


def touches(names: set[str], package: str) -> set[str]:
    """The imported names that are `package` or inside it."""
    return {name for name in names if name == package or name.startswith(package + ".")}


# --- the checker itself can see what it must see -----------------------------------------------


@pytest.mark.parametrize(
    ("source", "importer", "expected"),
    [
        ("import actors", "runlet.x", {"actors"}),
        ("import actors.job_queue as q", "runlet.x", {"actors.job_queue"}),
        ("from actors import job_queue", "runlet.x", {"actors", "actors.job_queue"}),
        ("from actors.governor import Governor", "runlet.x", {"actors.governor"}),
        ("def f():\n    from actors import governor", "runlet.x", {"actors.governor"}),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import actors.log_vault",
            "runlet.x",
            {"actors.log_vault"},
        ),
        ("from . import governor", "actors.job_queue", {"actors", "actors.governor"}),
        ("from .governor import Governor", "actors.job_queue", {"actors.governor"}),
        ("from ..actors import governor", "runlet.x", {"actors.governor"}),
        (
            "import importlib\nimportlib.import_module('actors.pty_session')",
            "runlet.x",
            {"actors.pty_session"},
        ),
        ("__import__('aio_pika')", "runlet.x", {"aio_pika"}),
        ("from aio_pika.abc import AbstractChannel", "runlet.x", {"aio_pika.abc"}),
    ],
)
def test_import_collector(source: str, importer: str, expected: set[str]) -> None:
    """The import collector finds plain, from-, relative, nested and dynamic imports."""
    assert expected <= imported_names(source, importer)


def test_relative_import_from_package_init() -> None:
    """`from . import x` in a package's __init__ refers to a module of that package."""
    assert "actors.governor" in imported_names("from . import governor", "actors", is_package=True)


def test_the_source_tree_is_found() -> None:
    """The checks below look at the real modules, so they can fail."""
    assert RUNLET / "daemon.py" in modules(RUNLET)
    assert RUNLET / "broker.py" in modules(RUNLET)
    assert ACTORS / "broker_gateway.py" in modules(ACTORS)
    assert len(modules(ACTORS)) >= 3
    assert touches(imports_of(RUNLET / "daemon.py"), "actors"), "the root must import actors"
    assert touches(imports_of(RUNLET / "broker.py"), "aio_pika"), "the adapter must use aio_pika"


# --- the rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", modules(RUNLET), ids=lambda p: p.name)
def test_only_the_composition_root_imports_actors(path: Path) -> None:
    """No module of runlet/ imports `actors` except the roots, runlet/daemon.py and server.py."""
    if path in (RUNLET / "daemon.py", RUNLET / "server.py"):
        return
    assert touches(imports_of(path), "actors") == set()


@pytest.mark.parametrize("path", modules(ACTORS), ids=lambda p: p.name)
def test_actors_do_not_import_each_other(path: Path) -> None:
    """An actor module imports runlet's core, never another actors module."""
    own = module_name(path)
    others = touches(imports_of(path), "actors") - {own}
    assert others == set(), f"{own} imports {sorted(others)}"


@pytest.mark.parametrize("path", modules(RUNLET) + modules(ACTORS), ids=module_name)
def test_every_module_has_a_docstring(path: Path) -> None:
    """Every module starts with a docstring saying what it is for."""
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert docstring, f"{module_name(path)} has no module docstring"
    assert docstring.strip()


@pytest.mark.parametrize("path", modules(RUNLET) + modules(ACTORS), ids=module_name)
def test_only_the_broker_adapter_imports_amqp_libraries(path: Path) -> None:
    """aio_pika and aiormq are imported by runlet/broker.py only."""
    if path == RUNLET / "broker.py":
        return
    for library in AMQP_LIBRARIES:
        assert touches(imports_of(path), library) == set(), f"{module_name(path)} uses {library}"


def test_broker_gateway_does_not_import_aio_pika() -> None:
    """The Broker Gateway actor goes through runlet.broker, never aio_pika itself."""
    names = imports_of(ACTORS / "broker_gateway.py")
    assert touches(names, "aio_pika") == set()
    assert touches(names, "aiormq") == set()
    assert "runlet.broker" in names
