"""botocore's and aiohttp's failures, turned into Runlet's errors at the store's boundary.

Every failure of the store (refused, timed out, 5xx, bad credentials, missing bucket) becomes a
`BlobStoreUnavailable` naming the endpoint and bucket, never the keys; botocore and aiohttp
errors never leave the adapter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from runlet.adapters.blob_port import Statistics
from runlet.errors import BlobStoreUnavailable

NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_REFUSED = frozenset(
    {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}
)


def boto() -> Any:
    """botocore's exceptions, imported only once a store is used."""
    from botocore import exceptions  # type: ignore[import-untyped]

    return exceptions


def code(exc: Any) -> str:
    """The S3 error code of a botocore ClientError."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def no_bucket(where: str) -> str:
    return f"{where}: the bucket does not exist; create it or fix storage.bucket"


@contextlib.contextmanager
def translating(where: str, timeout: float, stats: Statistics, what: str) -> Iterator[None]:
    """Turn botocore and aiohttp failures into BlobStoreUnavailable (never with secrets)."""
    import aiohttp

    errors = boto()

    try:
        yield
    except BlobStoreUnavailable:
        stats.failures += 1
        raise
    except errors.ClientError as exc:
        stats.failures += 1
        raise BlobStoreUnavailable(_client_error(exc, where, what)) from exc
    except (errors.NoCredentialsError, errors.PartialCredentialsError) as exc:
        stats.failures += 1
        problem = f"{where} cannot {what}: no credentials; set storage.credentials_file"
        raise BlobStoreUnavailable(problem) from exc
    except (errors.ConnectTimeoutError, errors.ReadTimeoutError, TimeoutError) as exc:
        stats.failures += 1
        problem = f"{where} did not answer within {timeout:g} s; could not {what}"
        raise BlobStoreUnavailable(problem) from exc
    except errors.EndpointConnectionError as exc:
        stats.failures += 1
        raise BlobStoreUnavailable(f"cannot connect to {where} to {what}") from exc
    except (errors.BotoCoreError, aiohttp.ClientError) as exc:
        stats.failures += 1
        problem = f"{where} failed to {what}: {type(exc).__name__}: {exc}"
        raise BlobStoreUnavailable(problem) from exc


def _client_error(exc: Any, where: str, what: str) -> str:
    found = code(exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
    if found == "NoSuchBucket":
        return no_bucket(where)
    if found in _REFUSED:
        return (
            f"{where} refused to {what} ({found}): check the keys in"
            " storage.credentials_file and the bucket's access policy"
        )
    return f"{where} failed to {what}: {found} (HTTP {status})"
