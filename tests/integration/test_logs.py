"""Logs that survive anything: upload, backlog, checkpoints, retention, integrity, `runlet logs`."""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from functools import partial
from pathlib import Path

from prometheus_client import REGISTRY

from runlet.adapters.blobstore import BlobStore, RemoteLog, hash_file
from runlet.adapters.logfile import FLAG_FINAL, LogWriter, Record, read_records
from runlet.client.commands import logs_job
from runlet.client.session import Client
from runlet.config import StorageConfig, load_config
from runlet.protocol.addresses import new_job_id
from runlet.protocol.payloads import JobSpec
from runlet.roots.reader import Reader
from tests.integration.s3 import MotoServer, make_storage_config
from tests.support import EVENT_SECONDS, STARTUP_SECONDS, Fleet, follow_to_end, run, wait_for


def storage_toml(cfg: StorageConfig, *, checkpoint: float = 60.0, max_bytes: int = 0) -> str:
    return (
        f'[storage]\nendpoint_url = "{cfg.endpoint_url}"\nbucket = "{cfg.bucket}"\n'
        f'credentials_file = "{cfg.credentials_file}"\ncheckpoint_seconds = {checkpoint}\n'
        f"timeout_seconds = 3\n[vault]\nmax_bytes = {max_bytes}\n"
    )


def run_job(fleet: Fleet, node: str, command: str, viewer: str = "client") -> tuple[str, bytes]:
    async def scenario() -> tuple[str, bytes]:
        async with Client(fleet.client_config(viewer), fleet.key) as client:
            job_id = new_job_id()
            watch = await client.watch(job_id)
            await client.submit(JobSpec((command,)), f"node:{node}", job_id=job_id)
            out, final = await follow_to_end(client, watch, job_id)
            assert final.state == "exited"
            return job_id, out

    return run(scenario())


def remote(cfg: StorageConfig, user: str, node: str, job_id: str) -> RemoteLog | None:
    async def head() -> RemoteLog | None:
        async with BlobStore(cfg, user) as store:
            return await store.head_log(node, job_id)

    return run(head())


def uploaded(cfg: StorageConfig, user: str, node: str, job_id: str) -> bool:
    found = remote(cfg, user, node, job_id)
    return found is not None and found.final


def wait_uploaded(cfg: StorageConfig, user: str, node: str, job_id: str, timeout: float) -> None:
    """Until the job's final log is in the store; on timeout, what the store holds of it."""
    wait_for(
        partial(uploaded, cfg, user, node, job_id),
        timeout,
        f"the final upload of {job_id}",
        seen=lambda: f"in the store: {remote(cfg, user, node, job_id)}",
        interval=0.1,
    )


def failed_uploads() -> float:
    """Final uploads that failed, over every daemon in this process (a process-wide counter)."""
    value = REGISTRY.get_sample_value("runlet_uploads_total", {"kind": "final", "result": "failed"})
    return value or 0.0


def all_objects(cfg: StorageConfig, user: str) -> list[bytes]:
    async def fetch() -> list[bytes]:
        async with BlobStore(cfg, user) as store:
            client = store._require_open()  # test-only peek at every stored byte
            listing = await client.list_objects_v2(Bucket=cfg.bucket)
            bodies = []
            for item in listing.get("Contents", []):
                obj = await client.get_object(Bucket=cfg.bucket, Key=item["Key"])
                bodies.append(await obj["Body"].read())
            return bodies

    return run(fetch())


def logs_args(job_id: str, **overrides: object) -> argparse.Namespace:
    values = {
        "job_id": job_id,
        "follow": False,
        "play": False,
        "speed": 1.0,
        "max_pause": 2.0,
        "raw": True,
        "node": None,
    }
    values.update(overrides)
    return argparse.Namespace(**values)


@contextmanager
def captured_stdout() -> Iterator[io.BytesIO]:
    """Capture what `runlet logs` writes to sys.stdout.buffer."""
    import sys

    buffer = io.BytesIO()
    wrapper = io.TextIOWrapper(buffer, write_through=True)
    saved = sys.stdout
    sys.stdout = wrapper
    try:
        yield buffer
    finally:
        sys.stdout = saved
        wrapper.detach()  # keep the buffer readable after the wrapper goes


def read_logs(fleet: Fleet, node: str, job_id: str, **overrides: object) -> tuple[int, bytes, str]:
    err = io.StringIO()
    with captured_stdout() as out, redirect_stderr(err):
        config = load_config(fleet.root / f"{node}.toml", env={})  # as written, [storage] included
        with Reader(config) as reader:  # as `runlet logs` runs it: with its own Sync Reconciler
            status = run(logs_job(config, fleet.key, logs_args(job_id, **overrides), reader))
    return status, out.getvalue(), err.getvalue()


def test_finished_log_is_uploaded_with_hash_and_finish_time(
    fleet: Fleet, storage_config: StorageConfig
) -> None:
    """A finished job's log lands at <user>/<node>/<job>.rlog with its hash and finish time."""
    fleet.start_daemon("edge-1", extra=storage_toml(storage_config))
    job_id, _ = run_job(fleet, "edge-1", "echo uploaded-output")
    wait_uploaded(storage_config, fleet.user, "edge-1", job_id, EVENT_SECONDS)
    found = remote(storage_config, fleet.user, "edge-1", job_id)
    assert found is not None
    local = fleet.root / "edge-1" / "vault" / f"{job_id}.rlog"
    assert found.key == f"{fleet.user}/edge-1/{job_id}.rlog"
    assert found.hash == hash_file(local)
    assert found.finished_at is not None
    assert abs(found.finished_at - local.stat().st_mtime) < 1.0
    # the vault notes the upload once the store has confirmed it: a moment after it is there
    marker = local.parent / f"{job_id}.rlog.uploaded"
    wait_for(marker.exists, EVENT_SECONDS, f"{marker.name}, the vault's note of the upload")
    assert marker.read_text().strip() == hash_file(local)


def test_plaintext_never_reaches_the_store_but_logs_shows_it(
    fleet: Fleet, storage_config: StorageConfig
) -> None:
    """A job's marker is in no stored object, yet `runlet logs` on another device shows it."""
    marker = f"PLAINTEXT-MARKER-{os.urandom(6).hex()}"
    fleet.start_daemon("edge-1", extra=storage_toml(storage_config))
    job_id, out = run_job(fleet, "edge-1", f"echo {marker}")
    assert marker.encode() in out
    wait_uploaded(storage_config, fleet.user, "edge-1", job_id, EVENT_SECONDS)
    for body in all_objects(storage_config, fleet.user):
        assert marker.encode() not in body
    fleet.config_file("laptop", role="client", extra=storage_toml(storage_config))
    status, shown, _ = read_logs(fleet, "laptop", job_id)
    assert status == 0
    assert marker.encode() in shown
    assert (fleet.root / "laptop" / "logs" / f"{job_id}.rlog").exists()  # fetched: rule 1


def test_backlog_survives_a_restart_while_the_store_is_down(
    fleet: Fleet, private_s3_server: MotoServer
) -> None:
    """Store down, daemon restarted, store back: the waiting logs are uploaded, none lost."""
    cfg = make_storage_config(private_s3_server.endpoint, fleet.root, timeout=2.0)
    extra = storage_toml(cfg)

    async def make_bucket() -> None:
        async with BlobStore(cfg, fleet.user) as store:
            await store.ensure_bucket()

    run(make_bucket())
    private_s3_server.stop()
    proc = fleet.start_process("edge-1", extra=extra)
    ids = [run_job(fleet, "edge-1", f"echo while-down-{n}")[0] for n in range(3)]
    proc.kill(signal.SIGTERM)
    vault = fleet.root / "edge-1" / "vault"
    assert all((vault / f"{j}.rlog").exists() for j in ids)
    assert not any((vault / f"{j}.rlog.uploaded").exists() for j in ids)
    private_s3_server.start()
    proc.start()
    for job_id in ids:  # the first one waits for the daemon process to start, too
        wait_uploaded(cfg, fleet.user, "edge-1", job_id, STARTUP_SECONDS)


def test_store_down_for_a_while_then_back_loses_nothing(
    fleet: Fleet, private_s3_server: MotoServer
) -> None:
    """Jobs finished during an outage upload when the store returns, byte for byte."""
    cfg = make_storage_config(private_s3_server.endpoint, fleet.root, timeout=2.0)
    fleet.start_daemon("edge-1", extra=storage_toml(cfg))
    first, _ = run_job(fleet, "edge-1", "echo before")
    wait_uploaded(cfg, fleet.user, "edge-1", first, EVENT_SECONDS)
    failed_before = failed_uploads()
    with private_s3_server.down():
        during = [run_job(fleet, "edge-1", f"echo during-{n}")[0] for n in range(4)]
        # the store comes back only once uploads have failed against it, as many as there are
        # logs waiting (the vault tries a new log before it retries an old one)
        wait_for(
            lambda: failed_uploads() - failed_before >= len(during),
            EVENT_SECONDS,
            f"{len(during)} uploads to fail against the stopped store",
            seen=lambda: f"{failed_uploads() - failed_before:.0f} failed uploads",
        )
    vault = fleet.root / "edge-1" / "vault"
    for job_id in during:  # retried with backoff: a minute is only a bound
        wait_uploaded(cfg, fleet.user, "edge-1", job_id, 60)
        found = remote(cfg, fleet.user, "edge-1", job_id)
        assert found is not None
        assert found.hash == hash_file(vault / f"{job_id}.rlog")


def test_running_job_is_checkpointed(fleet: Fleet, storage_config: StorageConfig) -> None:
    """A long job's partial log reaches the store before it ends (not final), then the final one."""
    fleet.start_daemon("edge-1", extra=storage_toml(storage_config, checkpoint=0.3))

    async def scenario() -> str:
        async with Client(fleet.client_config(), fleet.key) as client:
            job_id = new_job_id()
            watch = await client.watch(job_id)
            await client.submit(
                JobSpec(("echo partial; read x; echo done",)), "node:edge-1", job_id=job_id
            )
            await asyncio.to_thread(
                wait_for,
                lambda: remote(storage_config, fleet.user, "edge-1", job_id) is not None,
                EVENT_SECONDS,
                "a checkpoint",
                interval=0.1,
            )
            found = await asyncio.to_thread(remote, storage_config, fleet.user, "edge-1", job_id)
            assert found is not None
            assert found.final is False
            await client.send_input(job_id, b"go\r", confirm=True)
            await follow_to_end(client, watch, job_id)
            return job_id

    job_id = run(scenario())
    wait_uploaded(storage_config, fleet.user, "edge-1", job_id, EVENT_SECONDS)


def test_retention_evicts_only_uploaded_logs_oldest_first(
    fleet: Fleet, private_s3_server: MotoServer
) -> None:
    """With a tiny max_bytes, uploaded logs are evicted oldest first; never-uploaded ones stay."""
    cfg = make_storage_config(private_s3_server.endpoint, fleet.root, timeout=2.0)
    fleet.start_daemon("edge-1", extra=storage_toml(cfg, max_bytes=1))
    vault = fleet.root / "edge-1" / "vault"
    uploaded_ids = [run_job(fleet, "edge-1", f"echo kept-remotely-{n}")[0] for n in range(3)]
    for job_id in uploaded_ids:
        wait_for(partial(_gone, vault / f"{job_id}.rlog"), EVENT_SECONDS, f"eviction of {job_id}")
        assert uploaded(cfg, fleet.user, "edge-1", job_id)
    failed_before = failed_uploads()
    with private_s3_server.down():
        stuck, _ = run_job(fleet, "edge-1", "echo not-uploaded")
        # the vault has dealt with the finished log (its upload tried, and failed: the only
        # log waiting) before we look
        wait_for(
            lambda: failed_uploads() > failed_before,
            EVENT_SECONDS,
            f"the upload of {stuck} to fail against the stopped store",
        )
        assert (vault / f"{stuck}.rlog").exists()  # over max_bytes, but never uploaded: kept


def _gone(path: Path) -> bool:
    return not path.exists()


def _damaged_copy(src: Path, dest: Path, job_id: str, change: str) -> None:
    records = list(read_records(src, job_id=job_id))
    if change == "reorder":
        records[0], records[1] = records[1], records[0]
    with LogWriter(dest, job_id) as writer:
        for n, record in enumerate(records):
            if change == "truncate" and record.final:
                break
            sealed = record.sealed
            if change == "flip" and n == 1:
                sealed = sealed[:30] + bytes([sealed[30] ^ 0x01]) + sealed[31:]
            writer.append(Record(n, record.flags, sealed))


def test_integrity_problems_are_detected_and_reported(fleet: Fleet) -> None:
    """Flipped byte, reordered or foreign chunk, missing FINAL: each is named; exit 65."""
    daemon = fleet.start_daemon("edge-1")
    job_id, _ = run_job(fleet, "edge-1", "echo one; sleep 0.1; echo two; sleep 0.1; echo three")
    other_id, _ = run_job(fleet, "edge-1", "echo foreign")
    vault = fleet.root / "edge-1" / "vault"
    original = vault / f"{job_id}.rlog"
    status, shown, err = read_logs(fleet, "edge-1", job_id)
    assert (status, err) == (0, "")
    assert b"one" in shown
    assert b"three" in shown
    assert len(list(read_records(original, job_id=job_id))) >= 3

    daemon.stop()  # the node is gone: the reader's own copy is all there is
    fleet.daemons.remove(daemon)
    reader = fleet.config_file("reader", role="client")
    assert reader.exists()
    copy = fleet.root / "reader" / "vault" / f"{job_id}.rlog"
    for change, expected in [
        ("flip", "chunk 1 did not authenticate"),
        ("reorder", "did not authenticate"),
        ("truncate", "without its FINAL chunk"),
    ]:
        copy.unlink(missing_ok=True)
        _damaged_copy(original, copy, job_id, change)
        status, shown, err = read_logs(fleet, "reader", job_id)
        assert status == 65, change
        assert expected in err, (change, err)
        assert b"one" in shown or change == "reorder"

    # a chunk from another job's log, spliced in with the right sequence number
    copy.unlink()
    foreign = list(read_records(vault / f"{other_id}.rlog", job_id=other_id))
    records = list(read_records(original, job_id=job_id))
    with LogWriter(copy, job_id) as writer:
        for n, record in enumerate(records):
            sealed = foreign[0].sealed if n == 0 else record.sealed
            writer.append(Record(n, record.flags & FLAG_FINAL, sealed))
    status, _, err = read_logs(fleet, "reader", job_id)
    assert status == 65
    assert "chunk 0 did not authenticate" in err
