"""GET /api/logs/{job_id}: a finished job's log, verified chunk by chunk, for playback.

The log is the copy the sync rule picks (`runlet logs` does the same): this device's own, or
the object store's, fetched. Each chunk is authenticated on its own; the answer lists the
readable chunks with their sequence numbers and times (so the page can play them back with
the original timing) and every problem with the chunk it concerns. No finished copy here or in
the store: `{"stored": false}`, and the page asks the node holding the job for a replay.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

from aiohttp import web

from runlet.client.logview import Verdict, verified_chunks
from runlet.errors import RunletError
from runlet.protocol.addresses import valid_job_id
from runlet.protocol.crypto import FleetKey
from runlet.ui.api import FLEET

MAX_LOG_BYTES = 32 * 1024 * 1024  # more than this is for `runlet logs`, not a page


class TooLarge(Exception):
    """The log's plaintext is over MAX_LOG_BYTES."""


def read_log(path: Path, job_id: str, key: FleetKey) -> dict[str, Any]:
    """The log as the page takes it: chunks [seq, time, base64], problems, finished, intact."""
    verdict = Verdict()
    chunks: list[list[Any]] = []
    for seq, t, data in verified_chunks(path, job_id, key, verdict, lambda _text: None):
        if verdict.bytes > MAX_LOG_BYTES:
            raise TooLarge
        chunks.append([seq, t, base64.b64encode(data).decode("ascii")])
    return {
        "job_id": job_id,
        "stored": True,
        "chunks": chunks,
        "bytes": verdict.bytes,
        "problems": verdict.problems,
        "finished": verdict.finished,
        "intact": verdict.intact,
    }


async def log(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    if not valid_job_id(job_id):
        return web.json_response({"error": "not a job id"}, status=400)
    fleet = request.app[FLEET]
    try:
        path = await fleet.stored_log(job_id)
    except RunletError as exc:
        return web.json_response({"error": f"cannot fetch the log: {exc}"}, status=503)
    if path is None:  # not an error: the page asks the node instead
        return web.json_response({"job_id": job_id, "stored": False})
    try:
        body = await asyncio.get_running_loop().run_in_executor(
            None, read_log, path, job_id, fleet.key
        )
    except TooLarge:
        text = f"the log is over {MAX_LOG_BYTES >> 20} MiB: read it with `runlet logs`"
        return web.json_response({"error": text}, status=413)
    return web.json_response(body)
