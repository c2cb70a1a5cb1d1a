"""Who may talk to the page, and the headers every answer carries.

- The page is for the person who launched `runlet ui`: the URL carries a token of 32 random
  bytes, made at launch. The first request that shows it gets it back as an HttpOnly,
  SameSite=Strict cookie named after the port (so two UIs on one machine keep theirs) and is
  sent on to the same page without it; every other request must carry the cookie. Tokens are
  compared in constant time. No token, or a wrong one: 401.
- The Host header must name the loopback address and the port we listen on (a DNS-rebinding
  page would send its own host name): 403 otherwise.
- Every POST and every websocket upgrade must carry an Origin that is exactly this page's; a
  websocket without one is refused (403): another site's script cannot drive a job.
- Every answer has a strict Content-Security-Policy (only this origin's scripts, sockets,
  fonts and images), `frame-ancestors 'none'`, no referrer, `nosniff` and `no-store`. Styles
  may be inline: xterm.js 6 writes its renderer's rules into <style> elements it makes, and
  without 'unsafe-inline' Chromium blocks them (checked: the browser tests, which fail on any
  console error, fail then). Scripts may not be.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import hdrs, web

TOKEN_BYTES = 32
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
CSP = (
    "default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _refuse(status: int, text: str) -> web.Response:
    response = web.json_response({"error": text}, status=status)
    response.headers.update(SECURITY_HEADERS)
    return response


@dataclass(frozen=True, slots=True)
class Guard:
    """The token, the port and the names the page may be reached by."""

    port: int
    address: str = "127.0.0.1"  # the loopback address listened on (127.0.0.2, ::1, ...)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(TOKEN_BYTES))

    @property
    def cookie(self) -> str:
        return f"runlet_ui_{self.port}"

    @property
    def host(self) -> str:
        return f"[{self.address}]" if ":" in self.address else self.address

    @property
    def hosts(self) -> frozenset[str]:
        return frozenset(f"{name}:{self.port}" for name in (*LOOPBACK_NAMES, self.host))

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(f"http://{host}" for host in self.hosts)

    def url(self) -> str:
        return f"http://{self.host}:{self.port}/?token={self.token}"

    def token_ok(self, shown: str | None) -> bool:
        if not shown or len(shown) > 256:
            return False
        return hmac.compare_digest(shown.encode(), self.token.encode())

    def check(self, request: web.Request) -> web.Response | None:
        """None when the request may go on; otherwise the refusal to send."""
        if request.headers.get(hdrs.HOST, "") not in self.hosts:
            return _refuse(403, "this page answers only on its loopback address")
        upgrade = request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
        if request.method not in ("GET", "HEAD") or upgrade:
            origin = request.headers.get(hdrs.ORIGIN)
            if origin not in self.origins:
                return _refuse(403, "foreign or missing Origin")
        if self.token_ok(request.cookies.get(self.cookie)):
            return None
        if request.method == "GET" and request.path == "/" and "token" in request.query:
            return None  # checked and swapped for the cookie by `enter`
        return _refuse(401, "open the URL printed by `runlet ui` (it carries the token)")

    def enter(self, request: web.Request) -> web.Response | None:
        """The first visit: a good token becomes the cookie, and the URL loses it."""
        if "token" not in request.query:
            return None
        if not self.token_ok(request.query.get("token")):
            return _refuse(401, "wrong token: open the URL printed by `runlet ui`")
        response = web.Response(status=303, headers={hdrs.LOCATION: "/"})
        response.set_cookie(
            self.cookie, self.token, httponly=True, samesite="Strict", path="/", secure=False
        )
        response.headers.update(SECURITY_HEADERS)
        return response

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        refusal = self.check(request) or (self.enter(request) if request.path == "/" else None)
        if refusal is not None:
            return refusal
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(SECURITY_HEADERS)
            raise
        if not response.prepared:  # a websocket's headers left with its upgrade
            response.headers.update(SECURITY_HEADERS)
        return response
