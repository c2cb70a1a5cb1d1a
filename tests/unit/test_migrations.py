"""The ledger's SQL migrations as files: found in the package, well numbered, never edited.

An applied migration must never change (the server refuses to start on a changed checksum), so
each file's checksum is pinned here: a change to a file fails this test, and the remedy is a new
numbered file, with its checksum added below.
"""

from __future__ import annotations

import fnmatch
import hashlib
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from runlet.adapters.ledger_migrations import load_migrations
from runlet.errors import MigrationError

ROOT = Path(__file__).resolve().parents[2]
PINNED = {
    "0001": "a0383055e920cfb1638d3a084a3a749b01a9cef1e484df1bc3b6254f1ef06757",
    "0002": "65823e6e39a3b6713047efef6b21eab6bdcf880f11d0860c8c7cdd4a49fe5511",
}


def test_migrations_are_found_in_the_package() -> None:
    """The .sql files are read through importlib.resources from runlet.adapters.migrations."""
    migrations = load_migrations()
    assert [(m.version, m.name) for m in migrations][:1] == [("0001", "ledger")]
    shipped = {entry.name for entry in resources.files("runlet.adapters.migrations").iterdir()}
    assert {f"{m.version}_{m.name}.sql" for m in migrations} <= shipped


def test_migrations_are_declared_package_data() -> None:
    """pyproject.toml ships runlet.adapters.migrations and its .sql files in the wheel."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "setuptools"
    ]
    found = setuptools["packages"]["find"]["include"]  # setuptools matches them as fnmatch
    assert any(fnmatch.fnmatchcase("runlet.adapters.migrations", p) for p in found)
    assert "*.sql" in setuptools.get("package-data", {}).get("runlet.adapters.migrations", [])


def test_migrations_are_numbered_without_gaps_and_not_empty() -> None:
    """Versions run 0001, 0002, … and every file holds some SQL besides comments."""
    migrations = load_migrations()
    assert [m.version for m in migrations] == [f"{n:04d}" for n in range(1, len(migrations) + 1)]
    for migration in migrations:
        statements = [
            line
            for line in migration.sql.splitlines()
            if line.strip() and not line.startswith("--")
        ]
        assert statements, f"{migration.version} is empty"


def test_checksums_are_stable_and_pinned() -> None:
    """Each checksum is SHA-256 of the file's text, the same every time, and the pinned one."""
    first, second = load_migrations(), load_migrations()
    assert first == second
    for migration in first:
        assert migration.checksum == hashlib.sha256(migration.sql.encode()).hexdigest()
    assert {m.version: m.checksum for m in first} == PINNED


def test_checksum_ignores_line_endings(tmp_path: Path) -> None:
    """A checkout with CRLF line ends has the same checksums (no refused start on Windows)."""
    for migration in load_migrations():
        crlf = migration.sql.replace("\n", "\r\n").encode()
        (tmp_path / f"{migration.version}_{migration.name}.sql").write_bytes(crlf)
    assert load_migrations(tmp_path) == load_migrations()


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({"0001_a.sql": "SELECT 1;", "0003_c.sql": "SELECT 1;"}, "numbered"),
        ({"0001_a.sql": "SELECT 1;", "0001_b.sql": "SELECT 1;"}, "numbered"),
        ({"0002_b.sql": "SELECT 1;"}, "numbered"),
        ({"0001_a.sql": "-- only a comment\n\n"}, "no SQL"),
        ({"1_a.sql": "SELECT 1;"}, "NNNN_name.sql"),
        ({"0001-Add.sql": "SELECT 1;"}, "NNNN_name.sql"),
    ],
)
def test_badly_made_migrations_are_refused(
    tmp_path: Path, files: dict[str, str], problem: str
) -> None:
    """Gaps, repeats, a missing first file, an empty file and a bad name are all refused."""
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(MigrationError, match=problem):
        load_migrations(tmp_path)


def test_other_files_are_ignored(tmp_path: Path) -> None:
    """Only .sql files are migrations: a README or __init__.py beside them is not."""
    (tmp_path / "0001_a.sql").write_text("SELECT 1;", encoding="utf-8")
    (tmp_path / "README.md").write_text("notes", encoding="utf-8")
    (tmp_path / "__init__.py").write_text('"""x"""', encoding="utf-8")
    assert [m.name for m in load_migrations(tmp_path)] == ["a"]
