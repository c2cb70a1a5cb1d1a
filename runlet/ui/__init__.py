"""The desktop manager, `runlet ui`: a web page for the whole fleet, served on loopback.

The web server (aiohttp) runs inside the client process, on its asyncio loop, and is imported
only by the `ui` command: a daemon never loads it. That process holds the fleet key, so the
page gets plaintext only from the user's own machine; the broker, the server and the store
still see nothing but ciphertext.

    guard     who may talk to the page: loopback Host, exact Origin, a per-launch token
              swapped for an HttpOnly cookie; the security headers on every answer
    fleet     the port the handlers use (`FleetPort`, `View`) and its real implementation over
              `runlet.client` (session, queries)
    api       the JSON routes: nodes, jobs, one job, start a job
    logs      a finished job's log, verified chunk by chunk, for playback
    bridge    one terminal tab's websocket: a job's output out, keystrokes and resizes in
    app       the aiohttp application: routes, middlewares, static files
    serve     `runlet ui`: bind 127.0.0.1, print or open the URL, run until interrupted
    static/   the page (plain ES modules, no build step) and vendored xterm.js

What it must never do: listen on anything but loopback, act on a GET, write plaintext to the
browser's storage, or let a read-only tab's keys reach a job.
"""
