"""The aiohttp application behind `runlet ui`: routes, the guard, static files.

    GET  /                  the page (a first visit with ?token=… is swapped for the cookie)
    GET  /static/{file}     the page's modules, stylesheet and vendored xterm.js
    GET  /api/nodes         the fleet
    GET  /api/jobs          the jobs list (node, state, since, limit)
    GET  /api/jobs/{id}     one job and its state history
    POST /api/jobs          start a job
    POST /api/jobs/{id}/cancel   cancel one
    GET  /api/logs/{id}     a finished job's log, verified, with each chunk's time
    GET  /ws                a terminal tab (websocket)

Every request passes the guard first (`runlet.ui.guard`). Bodies over 64 KiB are refused
(413), as are more than `MAX_TABS` terminal tabs at once (503).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from runlet.ui import api, bridge, logs
from runlet.ui.fleet import FleetPort
from runlet.ui.guard import Guard, Handler

STATIC = Path(__file__).resolve().parent / "static"
MAX_TABS = 64
_TABS: web.AppKey[list[int]] = web.AppKey("tabs", list)


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Content-Type": "text/html"})


async def terminal(request: web.Request) -> web.StreamResponse:
    tabs = request.app[_TABS]
    if tabs[0] >= MAX_TABS:
        return web.json_response({"error": f"at most {MAX_TABS} terminal tabs"}, status=503)
    tabs[0] += 1
    try:
        return await bridge.terminal(request)
    finally:
        tabs[0] -= 1


@web.middleware
async def no_cache_types(request: web.Request, handler: Handler) -> web.StreamResponse:
    """ES modules need a JavaScript type: `.mjs` is not in every platform's mimetypes."""
    response = await handler(request)
    if request.path.endswith(".mjs"):
        response.content_type = "text/javascript"
    return response


def make_app(fleet: FleetPort, guard: Guard) -> web.Application:
    app = web.Application(
        middlewares=[guard.middleware, no_cache_types], client_max_size=api.MAX_BODY
    )
    app[api.FLEET] = fleet
    app[_TABS] = [0]
    app.router.add_get("/", index)
    app.router.add_get("/api/nodes", api.nodes)
    app.router.add_get("/api/jobs", api.jobs)
    app.router.add_get("/api/jobs/{job_id}", api.job)
    app.router.add_post("/api/jobs", api.start)
    app.router.add_post("/api/jobs/{job_id}/cancel", api.cancel)
    app.router.add_get("/api/logs/{job_id}", logs.log)
    app.router.add_get("/ws", terminal)
    app.router.add_static("/static/", STATIC, follow_symlinks=False, show_index=False)
    return app
