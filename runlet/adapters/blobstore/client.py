"""The S3 client the store talks through, and how its answers are read.

aioboto3 is imported here, off the event loop, only when a store is opened: it is heavy, and a
daemon without storage stays light. botocore is told to try each request once, since the
callers retry with backoff.
"""

from __future__ import annotations

import asyncio
import importlib
import re
from collections.abc import Mapping
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Any

from runlet.adapters.blob_port import RemoteLog, unix_time
from runlet.adapters.blobstore.credentials import load_credentials
from runlet.config import StorageConfig

_HASH = re.compile(r"[0-9a-f]{64}")


async def open_client(config: StorageConfig, stack: AsyncExitStack) -> Any:
    """A client for `config`'s store, closed with `stack`; loads the credentials file."""
    # Importing aioboto3 takes most of a second: do it off the event loop.
    aioboto3 = await asyncio.to_thread(importlib.import_module, "aioboto3")
    from botocore.config import Config as BotoConfig  # type: ignore[import-untyped]

    keys: dict[str, str] = {}
    if config.credentials_file is not None:
        key_id, secret = load_credentials(config.credentials_file)
        keys = {"aws_access_key_id": key_id, "aws_secret_access_key": secret}
    session = aioboto3.Session(region_name=config.region, **keys)
    boto_config = BotoConfig(
        connect_timeout=config.timeout_seconds,
        read_timeout=config.timeout_seconds,
        retries={"total_max_attempts": 1, "mode": "standard"},  # we retry, with backoff
        s3={"addressing_style": "path" if config.path_style else "auto"},
        # Our BLAKE2b hash checks every byte end to end; the CRC checksums botocore adds
        # by default since 1.36 are not understood by every S3-compatible store.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return await stack.enter_async_context(
        session.client("s3", endpoint_url=config.endpoint_url, config=boto_config)
    )


def metadata(job_id: str, digest: str, finished_at: float | None, *, final: bool) -> dict[str, str]:
    """The object metadata of an upload (the package docstring's layout)."""
    found = {"runlet-hash": digest, "runlet-final": "1" if final else "0", "runlet-job": job_id}
    if finished_at is not None:
        found["runlet-finished-at"] = repr(float(finished_at))
    return found


def remote_log(key: str, response: Mapping[str, Any]) -> RemoteLog:
    """A RemoteLog from a HEAD or GET answer; metadata keys come back lower-cased."""
    meta: Mapping[str, str] = response.get("Metadata", {})
    digest = meta.get("runlet-hash", "")
    modified: datetime = response["LastModified"]
    return RemoteLog(
        key=key,
        size=int(response["ContentLength"]),
        hash=digest if _HASH.fullmatch(digest) else "",
        finished_at=unix_time(meta.get("runlet-finished-at")),
        final=meta.get("runlet-final") == "1",
        last_modified=modified.timestamp(),
    )
