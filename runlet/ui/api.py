"""The page's JSON routes: the fleet's nodes, the jobs list, one job's history, start a job.

Every answer is `{"...": rows, "source": ...}` or `{"error": text}` with a status saying who
is at fault: 400 a bad request (the text names the field), 404 no such job, 502 the server's
own refusal. With no server answering, the rows are what this process heard on the broker
(`"source": "heard"`, and a note saying so) instead of the ledger's (`"server"`). Nothing
here acts on a GET; a job is started only by a POST (and the guard has checked its Origin).
Input is checked as strictly as the command line checks it.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from aiohttp import web

from runlet.client.queries import parse_since
from runlet.client.session import target_of
from runlet.errors import NoSuchTarget, RunletError, ServerUnavailable
from runlet.protocol.addresses import valid_job_id
from runlet.protocol.messages import MAX_SEALED, Query
from runlet.protocol.payloads import MAX_ARGV, MAX_ENV, JobSpec
from runlet.ui.fleet import FleetPort

FLEET: web.AppKey[FleetPort] = web.AppKey("fleet", FleetPort)
MAX_BODY = 64 * 1024  # a start request: command, env, options
MAX_SECONDS = 30 * 86400


class BadRequest(ValueError):
    """A request the page should not have sent: 400, with this text."""


def _error(status: int, text: str) -> web.Response:
    return web.json_response({"error": text}, status=status)


Rows = list[dict[str, Any]]
HEARD = "no server answering: what this page heard on the broker since it started"


async def _asked(request: web.Request, query: Query) -> tuple[Rows, str] | web.Response:
    """The server's rows and "server"; with no server, what was heard and "heard"."""
    fleet = request.app[FLEET]
    try:
        return await fleet.ask(query), "server"
    except ServerUnavailable:
        return fleet.heard(query), "heard"
    except RunletError as exc:
        text = str(exc)
        return _error(404 if text.startswith("no job ") else 502, text)


def _answer(name: str, rows: Rows, source: str) -> web.Response:
    note = HEARD if source == "heard" else None
    return web.json_response({name: rows, "source": source, "note": note, "at": time.time()})


async def nodes(request: web.Request) -> web.Response:
    """GET /api/nodes: every node the ledger knows, with its last heartbeat."""
    answer = await _asked(request, Query("nodes"))
    if isinstance(answer, web.Response):
        return answer
    return _answer("nodes", *answer)


def jobs_query(params: Any) -> Query:
    """The Query for GET /api/jobs's parameters (node, state, since, limit); BadRequest."""
    unknown = set(params) - {"node", "state", "since", "limit"}
    if unknown:
        raise BadRequest(f"unknown parameter {sorted(unknown)[0][:40]!r}")
    limit_text = params.get("limit", "100")
    if not limit_text.isdigit() or len(limit_text) > 6:
        raise BadRequest("limit must be a whole number from 1 to 10000")
    try:
        since_text = params.get("since") or None
        since = None if since_text is None else parse_since(since_text)
        return Query(
            "jobs",
            node=params.get("node") or None,
            state=params.get("state") or None,
            since=since,
            limit=int(limit_text),
        )
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


async def jobs(request: web.Request) -> web.Response:
    """GET /api/jobs?node=&state=&since=&limit=: the jobs, most recently changed first."""
    try:
        query = jobs_query(request.query)
    except BadRequest as exc:
        return _error(400, str(exc))
    answer = await _asked(request, query)
    if isinstance(answer, web.Response):
        return answer
    return _answer("jobs", *answer)


async def job(request: web.Request) -> web.Response:
    """GET /api/jobs/{job_id}: one job and its whole state history."""
    job_id = request.match_info["job_id"]
    if not valid_job_id(job_id):
        return _error(400, "not a job id (32 hex digits, optionally .NODE)")
    answer = await _asked(request, Query("job", job_id=job_id))
    if isinstance(answer, web.Response):
        return answer
    rows, source = answer
    if source == "heard" and not rows:
        return _error(404, f"no job {job_id} heard of, and no server answering")
    if len(rows) != 1 or not isinstance(rows[0], dict):
        return _error(502, "the server's answer has an unexpected shape")
    return web.json_response({**rows[0], "source": source})


def _text(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise BadRequest(f"{name} is required")
        return None
    if not isinstance(value, str) or "\0" in value or len(value) > MAX_SEALED:
        raise BadRequest(f"{name} must be text without NUL")
    return value


def _seconds(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{name} must be a number of seconds")
    if not math.isfinite(value) or not 0 < value <= MAX_SECONDS:
        raise BadRequest(f"{name} must be above 0 and at most {MAX_SECONDS} seconds")
    return float(value)


def _size(body: dict[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise BadRequest(f"{name} must be a whole number from 1 to 1000")
    return value


def _env(body: dict[str, Any]) -> dict[str, str]:
    env = body.get("env")
    if env is None:
        return {}
    if not isinstance(env, dict) or len(env) > MAX_ENV:
        raise BadRequest(f"env must be a map of at most {MAX_ENV} names to values")
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or not isinstance(value, str) or "\0" in value:
            raise BadRequest("env names must be non-empty, without '=' or NUL; values text")
    return dict(env)


def start_request(body: object, own_node: str) -> tuple[JobSpec, str, float | None, int, int]:
    """(spec, target, deadline, rows, cols) from a start request's JSON; BadRequest."""
    if not isinstance(body, dict):
        raise BadRequest("the request must be a JSON object")
    unknown = set(body) - {"command", "target", "env", "cwd", "timeout", "deadline", "rows", "cols"}
    if unknown:
        raise BadRequest(f"unknown field {sorted(map(str, unknown))[0][:40]!r}")
    command = body.get("command")
    if isinstance(command, list):
        if (
            not command
            or len(command) > MAX_ARGV
            or not all(isinstance(a, str) and "\0" not in a for a in command)
        ):
            raise BadRequest("command must be text, or a non-empty list of texts")
        argv = tuple(command)
    else:
        text = _text(body, "command", required=True)
        assert text is not None
        if not text.strip():
            raise BadRequest("command is required")
        argv = (text,)
    try:
        target = target_of(_text(body, "target") or "", own_node)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    spec = JobSpec(argv, _env(body), _text(body, "cwd"), _seconds(body, "timeout"))
    wait = _seconds(body, "deadline")
    deadline = None if wait is None else time.time() + wait
    return spec, target, deadline, _size(body, "rows", 24), _size(body, "cols", 80)


async def _json_body(request: web.Request) -> object:
    """The request's JSON, or the refusal to send (415, 413, 400)."""
    if request.content_type != "application/json":
        return _error(415, "send the job as application/json")
    try:
        return json.loads(await request.read())
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"the request is over {MAX_BODY} bytes")
    except (UnicodeDecodeError, ValueError):
        return _error(400, "the request is not valid JSON")


async def start(request: web.Request) -> web.Response:
    """POST /api/jobs: start a job; 201 with its id (the page then opens its terminal).

    A job for `all` or `tag:T` answers once its executions had two seconds to be heard of,
    with their ids (`JOB.NODE`), so the page opens one tab each."""
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    fleet = request.app[FLEET]
    try:
        spec, target, deadline, rows, cols = start_request(body, fleet.node)
    except BadRequest as exc:
        return _error(400, str(exc))
    try:
        sent = await fleet.submit(spec, target, deadline=deadline, rows=rows, cols=cols)
    except NoSuchTarget as exc:
        return _error(404, str(exc))
    except RunletError as exc:
        return _error(503, str(exc))
    children = await fleet.children(sent) if sent.fans_out else []
    reply = {
        "job_id": sent.job_id,
        "target": sent.target,
        "fans_out": sent.fans_out,
        "children": children,
        "offline": sent.offline,
    }
    return web.json_response(reply, status=201)


async def cancel(request: web.Request) -> web.Response:
    """POST /api/jobs/{job_id}/cancel: end a queued or running job, as `runlet cancel` does."""
    job_id = request.match_info["job_id"]
    if not valid_job_id(job_id):
        return _error(400, "not a job id (32 hex digits, optionally .NODE)")
    try:
        await request.app[FLEET].cancel(job_id)
    except NoSuchTarget:
        return _error(404, f"job {job_id} is not queued or running on any node")
    except RunletError as exc:
        return _error(503, str(exc))
    return web.json_response({"job_id": job_id, "cancel": "sent"}, status=202)
