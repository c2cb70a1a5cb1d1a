"""An S3 server for integration tests: moto's, over real HTTP on 127.0.0.1, in this process.

Fixtures (import them into a conftest or a test module):

- `s3_server` (session): the endpoint URL of one moto server for the whole run
  (`moto_server`, also session-scoped, is that `MotoServer` itself);
- `storage_config` (function): a `StorageConfig` for that server with a bucket name of its
  own (not yet created: call `BlobStore.ensure_bucket`) and a 0o600 credentials file;
- `private_s3_server` (function): a server of the test's own, to stop and start again
  (`.stop()`, `.start()`, `with server.down(): ...`) without disturbing other tests.

moto keeps its buckets in process-wide memory, so a restarted server (same port) and every
server of the run see the same objects. For an endpoint that refuses connections or never
answers, use `refusing_endpoint()` and `silent_endpoint()` (`silent_store()` also counts the
connections made to it).
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from runlet.config import StorageConfig

HOST = "127.0.0.1"
MOTO_KEY = "testing"  # moto takes any access key id and secret


class MotoServer:
    """moto's threaded server that can be stopped and started again on the same port."""

    def __init__(self) -> None:
        self._server: ThreadedMotoServer | None = None
        self.port = 0  # 0 until the first start picks a free port

    @property
    def endpoint(self) -> str:
        if not self.port:
            raise RuntimeError("the S3 server has not been started")
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Listen (again) on the same port; the first start takes a free one."""
        if self._server is not None:
            return
        server = ThreadedMotoServer(ip_address=HOST, port=self.port, verbose=False)
        server.start()  # returns once the socket listens
        self.port = server.get_host_and_port()[1]
        self._server = server

    def stop(self) -> None:
        """Close the listening socket: connections are refused until `start`."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()  # joins the thread, which closes the socket

    @contextmanager
    def down(self) -> Iterator[None]:
        """The server is stopped inside the block and running again after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto S3 server for the whole test run (stop it only through `down()`)."""
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server(moto_server: MotoServer) -> str:
    """The endpoint URL of the run's moto S3 server."""
    return moto_server.endpoint


@pytest.fixture
def private_s3_server() -> Iterator[MotoServer]:
    """A moto S3 server this test may stop and start."""
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def storage_config(s3_server: str, tmp_path: Path) -> StorageConfig:
    """A storage config for the run's server with a fresh bucket name."""
    return make_storage_config(s3_server, tmp_path)


def make_storage_config(endpoint: str, folder: Path, *, timeout: float = 5.0) -> StorageConfig:
    """A config for `endpoint` with a unique bucket and a credentials file in `folder`."""
    credentials = folder / "s3-credentials.toml"
    if not credentials.exists():
        credentials.write_text(f'access_key_id = "{MOTO_KEY}"\nsecret_access_key = "{MOTO_KEY}"\n')
        credentials.chmod(0o600)
    return StorageConfig(
        bucket=unique_bucket(),
        endpoint_url=endpoint,
        credentials_file=credentials,
        timeout_seconds=timeout,
    )


def unique_bucket() -> str:
    return f"runlet-test-{uuid.uuid4().hex[:16]}"


@contextmanager
def refusing_endpoint() -> Iterator[str]:
    """An http:// endpoint where nothing listens: every connection is refused."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    yield f"http://{HOST}:{port}"


@dataclass
class SilentStore:
    """An endpoint whose connections wait in the kernel's backlog, never taken, never answered."""

    endpoint: str
    listener: socket.socket

    def connections(self) -> int:
        """How many connections were made to it since the last call (takes and closes them)."""
        self.listener.setblocking(False)
        count = 0
        while True:
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1


@contextmanager
def silent_store() -> Iterator[SilentStore]:
    """A `SilentStore` on 127.0.0.1: every connection is accepted (in the kernel) and no
    request ever answered; it counts the connections."""
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(16)
        yield SilentStore(f"http://{HOST}:{listener.getsockname()[1]}", listener)


@contextmanager
def silent_endpoint() -> Iterator[str]:
    """An http:// endpoint that accepts connections (in the kernel) and never answers."""
    with silent_store() as store:
        yield store.endpoint


@dataclass
class FailingStore:
    """An HTTP server that answers every request with one S3 error; counts the requests."""

    endpoint: str
    requests: int = 0


@contextmanager
def failing_store(status: int, code: str) -> Iterator[FailingStore]:
    """A store whose every answer is HTTP `status` with S3 error `code` (no body to HEAD)."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>injected by the test</Message></Error>"
    ).encode()
    store = FailingStore(endpoint="")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            with lock:
                store.requests += 1
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = answer

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the tests count requests instead."""

    server = ThreadingHTTPServer((HOST, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="failing-s3", daemon=True)
    thread.start()
    store.endpoint = f"http://{HOST}:{server.server_address[1]}"
    try:
        yield store
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
