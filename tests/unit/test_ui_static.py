"""The page's static files: the vendored ones match their list, and nothing loads from outside."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path

from tests.support import REPO

STATIC = REPO / "runlet" / "ui" / "static"
VENDOR = STATIC / "vendor"
LOCK = REPO / "scripts" / "ui-vendor" / "package-lock.json"
URL = re.compile(r"""(?:https?|wss?)://[A-Za-z0-9.-]+[^\s"'`)]*""")
# URLs that appear in the files but are never fetched: XML namespace names (identifiers that
# DOM calls take) and the licence comments' credits.
NOT_FETCHED = {
    "http://www.w3.org/1999/xhtml",
    "http://www.w3.org/2000/svg",
    "http://bellard.org/jslinux/",
    "https://github.com/chjj/term.js",
}


def _vendored() -> dict[str, tuple[str, str]]:
    """file -> (package@version, sha256), from VENDORED."""
    listed = {}
    for line in (VENDOR / "VENDORED").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, package, digest = line.split()
        listed[name] = (package, digest)
    return listed


def test_every_vendored_file_matches_its_listed_hash() -> None:
    """The vendored bytes are the ones scripts/vendor-xterm.sh wrote (sha256 each)."""
    listed = _vendored()
    assert {"xterm.mjs", "xterm.css", "addon-fit.mjs", "LICENSE.xterm"} <= set(listed)
    for name, (_, digest) in listed.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name


def test_nothing_is_vendored_unlisted() -> None:
    """Every file in vendor/ is in the list (a file copied in by hand would not be)."""
    present = {p.name for p in VENDOR.iterdir()} - {"VENDORED"}
    assert present == set(_vendored())


def test_the_vendored_versions_are_the_locked_ones() -> None:
    """Each vendored file's package and version are those pinned in the lockfile."""
    lock = json.loads(LOCK.read_text())["packages"]
    for package in {p for p, _ in _vendored().values()}:
        name, _, version = package.rpartition("@")
        assert lock[f"node_modules/{name}"]["version"] == version, package
    assert "@xterm/addon-clipboard" not in json.dumps(lock), "a job must not write the clipboard"


def test_no_static_file_names_an_outside_url() -> None:
    """No script, style or page fetches anything from outside: the package works offline."""
    for path in sorted(STATIC.rglob("*")):
        if path.is_dir() or path.name in ("VENDORED", "LICENSE.xterm"):
            continue
        text = path.read_text(encoding="utf-8")
        found = {m.group(0) for m in URL.finditer(text)}
        assert found <= NOT_FETCHED, f"{path.relative_to(REPO)} names {sorted(found - NOT_FETCHED)}"


def test_the_url_check_can_fail() -> None:
    """The pattern finds the URLs a page might load."""
    text = 'import x from "https://cdn.example.com/x.mjs"; url(http://fonts.example.org/a.woff)'
    assert {m.group(0) for m in URL.finditer(text)} == {
        "https://cdn.example.com/x.mjs",
        "http://fonts.example.org/a.woff",
    }


def test_the_static_files_ship_in_the_package() -> None:
    """pyproject's package data takes the page and the vendored files."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    data = config["tool"]["setuptools"]["package-data"]["runlet.ui"]
    shipped = {p for pattern in data for p in (REPO / "runlet" / "ui").glob(pattern)}
    expected = {p for p in STATIC.rglob("*") if p.is_file()}
    assert expected <= shipped, sorted(str(p) for p in expected - shipped)


def test_the_page_loads_only_its_own_files() -> None:
    """index.html's scripts and styles are all under /static/."""
    html = (STATIC / "index.html").read_text()
    refs = re.findall(r"""(?:src|href)="([^"]+)\"""", html)
    assert refs
    assert all(ref.startswith("/static/") or ref == "data:," for ref in refs), refs


def test_vendored_files_exist_as_files() -> None:
    """The vendor folder is real files (no links out of the package)."""
    assert all(Path(p).is_file() and not Path(p).is_symlink() for p in VENDOR.iterdir())
