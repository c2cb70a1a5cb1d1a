"""The desktop manager's JSON routes with broken, oversize and hostile requests, and good ones."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runlet.ui.api import MAX_BODY
from tests.support import run
from tests.unit.ui_fakes import JOB, FakeFleet, Page, page


async def _post(p: Page, body: bytes, content_type: str = "application/json") -> Any:
    headers = p.headers(Origin=p.origin, **{"Content-Type": content_type})
    return await p.client.post("/api/jobs", data=body, headers=headers)


def test_nodes_come_from_the_server() -> None:
    """GET /api/nodes answers the ledger's rows."""

    async def scenario() -> None:
        async with page() as p:
            response = await p.client.get("/api/nodes", headers=p.headers())
            assert response.status == 200
            body = await response.json()
            assert body["nodes"][0]["name"] == "edge-1"
            assert (body["source"], body["note"]) == ("server", None)
            assert p.fleet.queries[0].kind == "nodes"

    run(scenario())


def test_no_server_answers_from_what_was_heard_and_says_so() -> None:
    """With no server answering, the lists come from what the process heard, with a note;
    a job never heard of is 404."""

    async def scenario() -> None:
        async with page(FakeFleet(down=True)) as p:
            nodes = await (await p.client.get("/api/nodes", headers=p.headers())).json()
            assert (nodes["source"], nodes["nodes"][0]["online"]) == ("heard", False)
            assert "no server" in nodes["note"]
            jobs = await (await p.client.get("/api/jobs", headers=p.headers())).json()
            assert (jobs["source"], jobs["jobs"]) == ("heard", [])
            missing = await p.client.get(f"/api/jobs/{JOB}", headers=p.headers())
            assert missing.status == 404
            assert "no server" in (await missing.json())["error"]

    run(scenario())


def test_job_filters_reach_the_query() -> None:
    """node, state, since and limit become the server's Query."""

    async def scenario() -> None:
        async with page() as p:
            query = "node=edge-1&state=running&since=2h&limit=5"
            response = await p.client.get(f"/api/jobs?{query}", headers=p.headers())
            assert response.status == 200
            sent = p.fleet.queries[-1]
            assert (sent.kind, sent.node, sent.state, sent.limit) == (
                "jobs",
                "edge-1",
                "running",
                5,
            )
            assert sent.since is not None

    run(scenario())


@pytest.mark.parametrize(
    "query",
    [
        "limit=abc",
        "limit=0",
        "limit=99999999999",
        "limit=-1",
        "state=bogus",
        "node=bad%20name",
        "node=" + "n" * 100,
        "since=yesterday-ish",
        "since=1e400",
        "color=red",
    ],
)
def test_bad_job_filters_are_400(query: str) -> None:
    """Each bad filter is refused with a reason, and no query leaves."""

    async def scenario() -> None:
        async with page() as p:
            response = await p.client.get(f"/api/jobs?{query}", headers=p.headers())
            assert response.status == 400
            assert (await response.json())["error"]
            assert p.fleet.queries == []

    run(scenario())


@pytest.mark.parametrize("job_id", ["nope", "0" * 31, "g" * 32, f"{JOB}.bad name", "0" * 500])
def test_bad_job_ids_are_400(job_id: str) -> None:
    """A malformed job id never becomes a query."""

    async def scenario() -> None:
        async with page() as p:
            response = await p.client.get(f"/api/jobs/{job_id}", headers=p.headers())
            assert response.status == 400
            assert p.fleet.queries == []

    run(scenario())


def test_an_unknown_job_is_404_and_a_known_one_has_its_history() -> None:
    """The ledger's "no job" is 404; a known job comes with its history."""

    async def scenario() -> None:
        fleet = FakeFleet(jobs=[{"job_id": JOB, "state": "exited", "exit_code": 3}])
        async with page(fleet) as p:
            missing = await p.client.get(f"/api/jobs/{'f' * 32}", headers=p.headers())
            assert missing.status == 404
            found = await p.client.get(f"/api/jobs/{JOB}", headers=p.headers())
            assert found.status == 200
            assert (await found.json())["job"]["exit_code"] == 3

    run(scenario())


def test_a_job_starts_from_the_form() -> None:
    """A good start request reaches the fleet as the JobSpec `runlet run` would send."""

    async def scenario() -> None:
        async with page() as p:
            body = {
                "command": "htop -d 5",
                "target": "edge-2",
                "env": {"LANG": "C.UTF-8"},
                "cwd": "/tmp",
                "timeout": 60,
                "deadline": 30,
                "rows": 40,
                "cols": 120,
            }
            response = await _post(p, json.dumps(body).encode())
            assert response.status == 201
            assert (await response.json())["job_id"] == JOB
            spec, target, deadline, rows, cols = p.fleet.started[0]
            assert spec.argv == ("htop -d 5",)
            assert spec.env == {"LANG": "C.UTF-8"}
            assert (spec.cwd, spec.timeout) == ("/tmp", 60.0)
            assert (target, rows, cols) == ("node:edge-2", 40, 120)
            assert deadline is not None

    run(scenario())


def test_no_target_means_this_node() -> None:
    """As with `runlet run`, the default target is the client's own node."""

    async def scenario() -> None:
        async with page() as p:
            response = await _post(p, b'{"command": ["ls", "-l"]}')
            assert response.status == 201
            spec, target, *_ = p.fleet.started[0]
            assert (spec.argv, target) == (("ls", "-l"), "node:laptop")

    run(scenario())


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'"htop"',
        b"null",
        b"{}",
        b'{"command": ""}',
        b'{"command": "   "}',
        b'{"command": 42}',
        b'{"command": []}',
        b'{"command": ["a", 1]}',
        b'{"command": "a\\u0000b"}',
        b'{"command": "id", "target": "tag:"}',
        b'{"command": "id", "target": "bad name"}',
        b'{"command": "id", "env": []}',
        b'{"command": "id", "env": {"A=B": "c"}}',
        b'{"command": "id", "env": {"": "c"}}',
        b'{"command": "id", "env": {"A": 1}}',
        b'{"command": "id", "timeout": -1}',
        b'{"command": "id", "timeout": "10"}',
        b'{"command": "id", "timeout": true}',
        b'{"command": "id", "timeout": NaN}',
        b'{"command": "id", "timeout": Infinity}',
        b'{"command": "id", "deadline": 1e300}',
        b'{"command": "id", "rows": 0}',
        b'{"command": "id", "cols": 5000}',
        b'{"command": "id", "rows": 2.5}',
        b'{"command": "id", "cwd": 7}',
        b'{"command": "id", "shell": "/bin/evil"}',
    ],
)
def test_broken_start_requests_are_400(body: bytes) -> None:
    """Each broken or hostile start request is refused with a reason; nothing starts."""

    async def scenario() -> None:
        async with page() as p:
            response = await _post(p, body)
            assert response.status == 400, await response.text()
            assert (await response.json())["error"]
            assert p.fleet.started == []

    run(scenario())


def test_a_huge_start_request_is_413() -> None:
    """A body over the limit is refused before it is parsed."""

    async def scenario() -> None:
        async with page() as p:
            body = json.dumps({"command": "x" * (MAX_BODY + 10)}).encode()
            response = await _post(p, body)
            assert response.status == 413
            assert p.fleet.started == []

    run(scenario())


def test_a_start_request_must_say_it_is_json() -> None:
    """A form post or text body is 415: a cross-site form cannot even get that far."""

    async def scenario() -> None:
        async with page() as p:
            for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
                response = await _post(p, b'{"command": "id"}', content_type=kind)
                assert response.status == 415
            assert p.fleet.started == []

    run(scenario())


def test_a_target_nobody_serves_is_404() -> None:
    """The fleet's NoSuchTarget is the page's 404, with the target named."""

    async def scenario() -> None:
        async with page() as p:
            response = await _post(p, b'{"command": "id", "target": "ghost"}')
            assert response.status == 404
            assert "ghost" in (await response.json())["error"]

    run(scenario())


def test_get_never_starts_a_job() -> None:
    """GET /api/jobs lists; it never starts anything, whatever its parameters."""

    async def scenario() -> None:
        async with page() as p:
            await p.client.get("/api/jobs?command=id", headers=p.headers())
            await p.client.get("/api/jobs", headers=p.headers())
            assert p.fleet.started == []

    run(scenario())


def test_a_fanned_out_job_answers_with_its_executions() -> None:
    """`all`: the answer lists each node's execution id, so the page opens a tab for each."""

    async def scenario() -> None:
        async with page() as p:
            response = await _post(p, b'{"command": "uptime", "target": "all"}')
            assert response.status == 201
            body = await response.json()
            assert body["fans_out"] is True
            assert body["children"] == [f"{JOB}.edge-1", f"{JOB}.edge-2"]

    run(scenario())


def test_cancel_reaches_the_fleet_and_a_job_nobody_holds_is_404() -> None:
    """POST .../cancel sends the cancel; an unknown job is 404, a bad id 400, a GET 405."""

    async def scenario() -> None:
        async with page() as p:
            headers = p.headers(Origin=p.origin)
            sent = await p.client.post(f"/api/jobs/{JOB}/cancel", headers=headers)
            assert sent.status == 202
            assert p.fleet.cancelled == [JOB]
            gone = await p.client.post(f"/api/jobs/{'f' * 32}/cancel", headers=headers)
            assert gone.status == 404
            bad = await p.client.post("/api/jobs/nope/cancel", headers=headers)
            assert bad.status == 400
            get = await p.client.get(f"/api/jobs/{JOB}/cancel", headers=p.headers())
            assert get.status == 405
            foreign = await p.client.post(
                f"/api/jobs/{JOB}/cancel", headers=p.headers(Origin="http://evil.example")
            )
            assert foreign.status == 403
            assert p.fleet.cancelled == [JOB]

    run(scenario())
