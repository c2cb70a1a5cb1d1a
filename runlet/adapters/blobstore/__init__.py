"""The blob store adapter: job logs in an S3-compatible store (MinIO, AWS S3) over aioboto3.

The layout in the bucket and the port it fills are in runlet.adapters.blob_port. Its parts:

    store        BlobStore: upload (a snapshot), look up, find a job's node, download
    client       the aioboto3 client (made when a store opens) and how its answers are read
    files        the local side: snapshots of a growing log, downloads that land whole or not
    translate    botocore and aiohttp failures → BlobStoreUnavailable, at this boundary only
    credentials  the access keys, from a file only its owner may read

What it must never do: hold plaintext or a sealing key (only sealed bytes pass through), log
or put into a message the access keys or the credentials file's contents, or import aioboto3
before a store is opened (it is heavy, and a daemon without storage stays light).
"""

from runlet.adapters.blob_port import (
    RemoteLog,
    Statistics,
    hash_file,
    index_key,
    object_key,
)
from runlet.adapters.blobstore.credentials import MAX_CREDENTIALS_BYTES, load_credentials
from runlet.adapters.blobstore.store import BlobStore

__all__ = [
    "MAX_CREDENTIALS_BYTES",
    "BlobStore",
    "RemoteLog",
    "Statistics",
    "hash_file",
    "index_key",
    "load_credentials",
    "object_key",
]
