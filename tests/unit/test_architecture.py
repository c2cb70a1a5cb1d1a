"""The package's shape (DESIGN.md §1, the layout by layer), checked on the source with `ast`.

Import rules are folder rules. From the bottom up:

    runlet/errors, files, logging, metrics, config   the foundation, imported by every layer
    runlet/protocol/   codec, messages, payloads, crypto, names    the foundation only
    runlet/runtime/    loop, actor base, router, supervisor        + protocol
    runlet/adapters/   broker, ledger db, blob store, PTYs, files  + protocol
    runlet/client/     session, follow, commands, queries, logs    + protocol, adapters
    runlet/ui/         the desktop manager's web server            + protocol, client
    actors/            one module per actor                        + protocol, runtime, adapters
    runlet/testing/    public fakes of the adapters                + protocol, adapters
    runlet/roots/      daemon, server, admin, reader               anything; only they import actors
    runlet/cli/        the command line: parser, commands          anything but actors

Besides: actors never import one another; only adapters import aio-pika/aiormq, asyncpg,
aioboto3/botocore and ptyprocess/pywinpty; only the protocol imports msgpack, PyNaCl and spake2;
only runlet/ui imports aiohttp (and the blob store, which translates its client errors); only
runlet.cli imports runlet/ui (a daemon never loads the web server); every module starts with
a docstring.
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
    assert RUNLET / "roots" / "daemon.py" in modules(RUNLET)
    assert RUNLET / "adapters" / "broker" / "connection.py" in modules(RUNLET)
    assert ACTORS / "broker_gateway.py" in modules(ACTORS)
    assert len(modules(ACTORS)) >= 3
    daemon = RUNLET / "roots" / "daemon.py"
    broker = RUNLET / "adapters" / "broker" / "connection.py"
    assert touches(imports_of(daemon), "actors"), "the root must import actors"
    assert touches(imports_of(broker), "aio_pika"), "the adapter must use aio_pika"
    assert runlet_imports(ACTORS / "job_queue.py"), "actors import runlet's layers"


# --- the rules -----------------------------------------------------------------------------------

FOUNDATION = (
    "runlet",
    "runlet.errors",
    "runlet.files",
    "runlet.logging",
    "runlet.metrics",
    "runlet.config",
)
LAYERS = (
    "runlet.protocol",
    "runlet.runtime",
    "runlet.adapters",
    "runlet.client",
    "runlet.ui",
    "runlet.roots",
    "runlet.testing",
    "runlet.cli",
)
# folder -> the folders (besides itself and the foundation) its modules may import
ALLOWED: dict[str, tuple[str, ...]] = {
    "runlet.protocol": (),
    "runlet.runtime": ("runlet.protocol",),
    "runlet.adapters": ("runlet.protocol",),
    "runlet.client": ("runlet.protocol", "runlet.adapters"),
    "runlet.testing": ("runlet.protocol", "runlet.adapters"),
    "runlet.ui": ("runlet.protocol", "runlet.client"),
    "actors": ("runlet.protocol", "runlet.runtime", "runlet.adapters"),
    "runlet.roots": ("runlet.protocol", "runlet.runtime", "runlet.adapters", "actors"),
    "runlet.cli": (
        "runlet.protocol",
        "runlet.adapters",
        "runlet.client",
        "runlet.ui",
        "runlet.roots",
    ),
    "runlet.__main__": ("runlet.cli",),
}
# outside library -> the only folders (or modules) that may import it
LIBRARIES: dict[str, tuple[str, ...]] = {
    "aio_pika": ("runlet.adapters.broker",),
    "aiormq": ("runlet.adapters.broker",),
    "asyncpg": ("runlet.adapters",),
    "aioboto3": ("runlet.adapters",),
    "botocore": ("runlet.adapters",),
    "ptyprocess": ("runlet.adapters",),
    "winpty": ("runlet.adapters",),
    "msgpack": ("runlet.protocol",),
    "nacl": ("runlet.protocol",),
    "spake2": ("runlet.protocol",),
    "argcomplete": ("runlet.cli",),
    "segno": ("runlet.cli",),
    "aiohttp": ("runlet.ui", "runlet.adapters.blobstore"),  # the store: its client errors
}


def within(module: str, places: tuple[str, ...]) -> bool:
    """`module` is one of `places` or inside one of them."""
    return any(module == p or module.startswith(p + ".") for p in places)


def folder_of(module: str) -> str:
    """The layer a module belongs to (`runlet.client.session` → `runlet.client`)."""
    for layer in (*LAYERS, "actors", "runlet.config"):  # config: a foundation package
        if within(module, (layer,)):
            return layer
    return module  # a foundation module, runlet.cli or runlet.__main__


def _is_module(name: str) -> bool:
    parts = name.split(".")
    path = ROOT.joinpath(*parts)
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def runlet_imports(path: Path) -> set[str]:
    """The runlet and actors modules a file imports (names inside a module are left out)."""
    return {
        name for name in imports_of(path) if within(name, ("runlet", "actors")) and _is_module(name)
    }


def wrong_imports(importer: str, imported: set[str]) -> set[str]:
    """The imports of `importer` that its folder may not make."""
    own = folder_of(importer)
    allowed = (own, *FOUNDATION, *ALLOWED.get(own, ()))
    if own in FOUNDATION:  # the foundation: config may read errors, nothing more
        allowed = FOUNDATION
    return {name for name in imported if folder_of(name) not in allowed}


ALL_MODULES = modules(RUNLET) + modules(ACTORS)


@pytest.mark.parametrize("path", ALL_MODULES, ids=module_name)
def test_each_folder_imports_only_the_layers_below_it(path: Path) -> None:
    """protocol ← runtime, adapters ← client, actors ← roots ← cli: nothing imports upwards."""
    own = module_name(path)
    wrong = wrong_imports(own, runlet_imports(path))
    assert wrong == set(), f"{own} ({folder_of(own)}) imports {sorted(wrong)}"


@pytest.mark.parametrize(
    ("importer", "imported", "ok"),
    [
        ("runlet.protocol.messages", "runlet.protocol.wire", True),
        ("runlet.protocol.wire", "runlet.adapters.broker", False),
        ("runlet.runtime.actor", "runlet.adapters.ptys", False),
        ("runlet.client.session", "runlet.adapters.broker", True),
        ("runlet.client.follow", "runlet.runtime.loop", False),
        ("runlet.client.follow", "actors.job_queue", False),
        ("actors.job_queue", "runlet.runtime.actor", True),
        ("actors.job_queue", "runlet.client.session", False),
        ("actors.job_queue", "runlet.roots.daemon", False),
        ("runlet.adapters.broker", "runlet.errors", True),
        ("runlet.errors", "runlet.protocol.wire", False),
        ("runlet.cli", "actors.job_queue", False),
        ("runlet.roots.daemon", "actors.job_queue", True),
        ("runlet.roots.reader", "actors.sync_reconciler", True),
        ("runlet.client.commands", "runlet.roots.reader", False),
        ("runlet.client.commands", "actors.sync_reconciler", False),
        ("runlet.cli.commands", "runlet.roots.reader", True),
        ("runlet.testing.blob_store", "runlet.adapters.blob_port", True),
        ("runlet.testing.blob_store", "runlet.runtime.actor", False),
        ("runlet.ui.bridge", "runlet.client.stream", True),
        ("runlet.ui.app", "runlet.adapters.broker", False),
        ("runlet.ui.app", "runlet.runtime.loop", False),
        ("runlet.ui.app", "actors.pty_session", False),
        ("runlet.client.session", "runlet.ui.app", False),
        ("runlet.roots.daemon", "runlet.ui.app", False),
        ("runlet.cli.commands", "runlet.ui.serve", True),
    ],
)
def test_the_layer_rule_itself(importer: str, imported: str, ok: bool) -> None:
    """The folder rule allows downward imports and refuses upward and sideways ones."""
    assert (wrong_imports(importer, {imported}) == set()) is ok


@pytest.mark.parametrize("path", modules(RUNLET), ids=module_name)
def test_only_the_composition_roots_import_actors(path: Path) -> None:
    """No module of runlet/ imports `actors` except those in runlet/roots/."""
    if folder_of(module_name(path)) == "runlet.roots":
        return
    assert touches(imports_of(path), "actors") == set()


@pytest.mark.parametrize("path", modules(ACTORS), ids=lambda p: p.name)
def test_actors_do_not_import_each_other(path: Path) -> None:
    """An actor module imports runlet's layers, never another actors module."""
    own = module_name(path)
    others = touches(imports_of(path), "actors") - {own}
    assert others == set(), f"{own} imports {sorted(others)}"


@pytest.mark.parametrize("path", ALL_MODULES, ids=module_name)
def test_every_module_has_a_docstring(path: Path) -> None:
    """Every module starts with a docstring saying what it is for."""
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert docstring, f"{module_name(path)} has no module docstring"
    assert docstring.strip()


@pytest.mark.parametrize("path", ALL_MODULES, ids=module_name)
def test_outside_libraries_are_imported_only_where_they_belong(path: Path) -> None:
    """aio-pika only in the broker adapter; asyncpg, botocore and PTY libraries only in
    adapters; msgpack, PyNaCl and spake2 only in the protocol."""
    own = module_name(path)
    names = imports_of(path)
    for library, places in LIBRARIES.items():
        if not within(own, places):
            assert touches(names, library) == set(), f"{own} imports {library}"


@pytest.mark.parametrize("path", ALL_MODULES, ids=module_name)
def test_only_the_command_line_loads_the_web_server(path: Path) -> None:
    """runlet/ui is imported by runlet.cli (the `ui` command) and itself, nothing else."""
    own = module_name(path)
    if within(own, ("runlet.ui", "runlet.cli")):
        return
    assert touches(imports_of(path), "runlet.ui") == set(), f"{own} imports runlet.ui"


def test_broker_gateway_goes_through_the_broker_adapter() -> None:
    """The Broker Gateway actor uses runlet.adapters.broker, never aio_pika itself."""
    names = imports_of(ACTORS / "broker_gateway.py")
    assert touches(names, "aio_pika") == set()
    assert "runlet.adapters.broker" in names
