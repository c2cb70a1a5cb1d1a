"""The desktop manager's guard: token, cookie, Host and Origin checks, security headers.

Every request goes to the real aiohttp app on loopback (aiohttp's test server); the fleet
behind it is a fake.
"""

from __future__ import annotations

from typing import Any

import pytest

from runlet.ui.guard import CSP, Guard
from tests.support import run
from tests.unit.ui_fakes import page


@pytest.mark.parametrize(
    ("address", "url_host"),
    [("127.0.0.1", "127.0.0.1"), ("127.0.0.2", "127.0.0.2"), ("::1", "[::1]")],
)
def test_the_url_names_the_address_listened_on(address: str, url_host: str) -> None:
    """Another loopback address or IPv6: the URL and the Host allowlist name it."""
    guard = Guard(8765, address)
    assert guard.url().startswith(f"http://{url_host}:8765/?token=")
    assert f"{url_host}:8765" in guard.hosts
    assert "localhost:8765" in guard.hosts
    assert f"http://{url_host}:8765" in guard.origins


def test_the_token_is_long_and_new_each_launch() -> None:
    """32 random bytes, URL-safe, different for every launch; the URL is on loopback."""
    first, second = Guard(8765), Guard(8765)
    assert len(first.token) >= 43
    assert first.token != second.token
    assert first.url() == f"http://127.0.0.1:8765/?token={first.token}"
    assert first.cookie == "runlet_ui_8765"


@pytest.mark.parametrize("shown", [None, "", "x", "A" * 43, "A" * 10_000, "\u00e9" * 43])
def test_a_wrong_token_is_refused(shown: str | None) -> None:
    """Missing, short, wrong, huge or non-ASCII tokens never match."""
    assert not Guard(1).token_ok(shown)


@pytest.mark.parametrize(
    "path", ["/", "/api/nodes", "/api/jobs", "/static/app.mjs", "/ws", "/nothing"]
)
def test_no_token_no_cookie_is_401(path: str) -> None:
    """Without the cookie (or, on `/`, the token) every path answers 401, headers included."""

    async def scenario() -> None:
        async with page() as p:
            response = await p.client.get(path, headers={"Host": p.host})
            assert response.status == 401
            assert response.headers["Content-Security-Policy"] == CSP
            assert "token" in (await response.json())["error"]

    run(scenario())


@pytest.mark.parametrize("token", ["wrong", "A" * 43, "A" * 300, "%00", ""])
def test_a_wrong_token_in_the_url_is_401(token: str) -> None:
    """A wrong token on the first visit sets no cookie."""

    async def scenario() -> None:
        async with page() as p:
            response = await p.client.get(
                f"/?token={token}", headers={"Host": p.host}, allow_redirects=False
            )
            assert response.status == 401
            assert "Set-Cookie" not in response.headers

    run(scenario())


def test_the_token_becomes_a_strict_http_only_cookie() -> None:
    """The first visit's token is swapped for the cookie, and the URL loses the token."""

    async def scenario() -> None:
        async with page() as p:
            response = await p.client.get(
                f"/?token={p.guard.token}", headers={"Host": p.host}, allow_redirects=False
            )
            assert response.status == 303
            assert response.headers["Location"] == "/"
            cookie = response.headers["Set-Cookie"]
            assert cookie.startswith(f"{p.guard.cookie}={p.guard.token};")
            assert "HttpOnly" in cookie
            assert "SameSite=Strict" in cookie
            assert "Path=/" in cookie
            assert response.headers["Referrer-Policy"] == "no-referrer"
            index = await p.client.get("/", headers=p.headers())
            assert index.status == 200
            assert "<title>Runlet</title>" in await index.text()

    run(scenario())


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:{port}", "127.0.0.1:1", "10.0.0.1:{port}", ""]
)
def test_a_foreign_host_is_403_even_with_the_cookie(host: str) -> None:
    """A DNS-rebinding page sends its own Host: refused before anything else."""

    async def scenario() -> None:
        async with page() as p:
            headers = p.headers(Host=host.format(port=p.guard.port))
            for path in ("/", "/api/nodes", f"/?token={p.guard.token}"):
                response = await p.client.get(path, headers=headers, allow_redirects=False)
                assert response.status == 403, path

    run(scenario())


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "[::1]"])
def test_every_loopback_name_is_a_good_host(name: str) -> None:
    """The page answers under each loopback name with its port."""

    async def scenario() -> None:
        async with page() as p:
            response = await p.client.get(
                "/api/nodes", headers=p.headers(Host=f"{name}:{p.guard.port}")
            )
            assert response.status == 200

    run(scenario())


@pytest.mark.parametrize(
    "origin",
    [None, "null", "http://evil.example", "http://127.0.0.1:1", "https://127.0.0.1:{port}"],
)
def test_a_post_without_the_exact_origin_is_403(origin: str | None) -> None:
    """A POST with no Origin, or another one, starts nothing."""

    async def scenario() -> None:
        async with page() as p:
            headers = p.headers(**{"Content-Type": "application/json"})
            if origin is not None:
                headers["Origin"] = origin.format(port=p.guard.port)
            response = await p.client.post("/api/jobs", data=b'{"command": "id"}', headers=headers)
            assert response.status == 403
            assert p.fleet.started == []

    run(scenario())


@pytest.mark.parametrize("origin", [None, "http://evil.example", "http://127.0.0.1:1"])
def test_a_websocket_without_the_exact_origin_is_403(origin: str | None) -> None:
    """A websocket upgrade with no Origin, or a foreign one, is refused before the upgrade."""

    async def scenario() -> None:
        async with page() as p:
            headers: dict[str, Any] = p.headers(
                Upgrade="websocket",
                Connection="Upgrade",
                **{"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
            )
            if origin is not None:
                headers["Origin"] = origin
            response = await p.client.get("/ws", headers=headers)
            assert response.status == 403
            assert p.fleet.views == []

    run(scenario())


@pytest.mark.parametrize("path", ["/", "/static/app.mjs", "/api/nodes", "/static/nothing.js"])
def test_security_headers_on_every_answer(path: str) -> None:
    """CSP, frame-ancestors, no referrer, nosniff and no-store on pages, files, JSON, 404s."""

    async def scenario() -> None:
        async with page() as p:
            response = await p.client.get(path, headers=p.headers())
            assert response.headers["Content-Security-Policy"] == CSP
            assert "frame-ancestors 'none'" in CSP
            assert "default-src 'self'" in CSP
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["Cache-Control"] == "no-store"
            assert response.headers["Referrer-Policy"] == "no-referrer"

    run(scenario())


def test_modules_are_served_as_javascript() -> None:
    """ES modules load only with a JavaScript type (the browser checks, with nosniff)."""

    async def scenario() -> None:
        async with page() as p:
            for path in ("/static/app.mjs", "/static/vendor/xterm.mjs"):
                response = await p.client.get(path, headers=p.headers())
                assert response.status == 200
                assert response.content_type == "text/javascript"

    run(scenario())


@pytest.mark.parametrize(
    "path", ["/static/../guard.py", "/static/%2e%2e/guard.py", "/static/..%2fguard.py"]
)
def test_static_files_stay_in_their_folder(path: str) -> None:
    """No path leaves the static folder."""

    async def scenario() -> None:
        async with page() as p:
            response = await p.client.get(path, headers=p.headers())
            assert response.status in (403, 404)
            assert "Guard" not in await response.text()

    run(scenario())
