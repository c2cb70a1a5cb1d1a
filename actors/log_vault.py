"""Log Vault: seals every output chunk, appends it to the job's log, publishes it, uploads it.

The live stream and the stored log are the very same sealed chunks, so a viewer that joins
late asks for a replay from a sequence number and then follows live output, dropping what it
already has. The log of a job that ended is finalised with a FINAL chunk; one left unfinished
by a crash is finalised when the daemon comes back (`OpenLog(finalise=True)`).

With a `[storage]` section, every finished log is uploaded (ciphertext only) with its hash
and finish time; failed uploads are retried with backoff and jitter from a backlog read off
the vault folder (`runlet.adapters.backlog`), so it survives restarts; running jobs' logs are
checkpointed every `storage.checkpoint_seconds`. A log is never evicted before its upload.

Its seams, in `ctx.services`: `blob_store_factory` (default `runlet.adapters.blobstore.BlobStore`;
a test passes a `runlet.testing.MemoryBlobStore`'s `factory`) and `upload_backoff` (default
`runlet.adapters.backlog.backoff`: seconds before retry number n of an upload or of opening the
store).
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runlet import metrics
from runlet.adapters import backlog
from runlet.adapters.blob_port import BlobStorePort, hash_file
from runlet.adapters.blobstore import BlobStore
from runlet.adapters.logfile import LogWriter, Record, read_records, seal_output
from runlet.config import StorageConfig
from runlet.errors import RunletError, StorageError
from runlet.protocol import addresses, wire
from runlet.protocol.messages import LogStored, OutputChunk, ReplayFinished
from runlet.runtime.actor import Actor, Context
from runlet.runtime.local_messages import (
    CheckpointTick,
    LogFailed,
    OpenLog,
    OutputProduced,
    OutputSealed,
    OutputStored,
    Publish,
    ReopenStore,
    Replay,
    StoreOpened,
    UploadDone,
    UploadTick,
)
from runlet.runtime.names import JOB_QUEUE, VAULT, session_name


class LogVault(Actor):
    """Owns the `<data_dir>/vault/` folder and every open log writer."""

    def __init__(self, ctx: Context, name: str = VAULT) -> None:
        super().__init__(ctx, name)
        self.node: str = ctx.settings.node
        self.folder: Path = ctx.settings.data_dir / "vault"
        self.fleet_key = ctx.services["fleet_key"]
        self.writers: dict[str, LogWriter] = {}
        self.broken: dict[str, str] = {}  # jobs whose log could not be written, and why
        self.storage: StorageConfig | None = getattr(ctx.settings, "storage", None)
        self.max_bytes: int = getattr(getattr(ctx.settings, "vault", None), "max_bytes", 0)
        self.store: Any = None  # a BlobStorePort once opened
        self.make_store: Callable[[StorageConfig, str], BlobStorePort] = ctx.services.get(
            "blob_store_factory", BlobStore
        )
        self.backoff: Callable[[int], float] = ctx.services.get("upload_backoff", backlog.backoff)
        self.store_ready = False
        self.attempts: dict[str, int] = {}  # failed uploads so far, by job
        self.due: dict[str, float] = {}  # when each backlog entry may be tried next
        self.in_flight: set[str] = set()
        self.tick_pending = False

    def started(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for log in backlog.pending(self.folder):
            self.due[backlog.job_of(log)] = 0.0
        metrics.UPLOAD_BACKLOG.set(len(self.due))
        if self.storage is not None:
            self._open_store()
            self.tell_self_later(self.storage.checkpoint_seconds, CheckpointTick())
        self._evict()

    def path(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.rlog"

    def on_stop(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
        if self.store is not None and not self.ctx.loop.closed:
            try:
                self.ctx.loop.run_sync(self.store.close(), 5)
            except (concurrent.futures.TimeoutError, RunletError):
                self.log.warning("store_close_timed_out")

    def handle(self, message: object) -> None:
        match message:
            case OpenLog(job_id=job_id, finalise=finalise):
                self._open(job_id, finalise)
            case OutputProduced():
                self._append(message)
            case OutputSealed():
                self._keep(message)
            case Replay():
                self._replay(message)
            case StoreOpened(error=None):
                self.store_ready = True
                self.log.info("store_ready")
                self._kick()
            case StoreOpened(error=error):
                self.log.warning("store_unavailable", error=error)
                self.attempts["(store)"] = self.attempts.get("(store)", 0) + 1
                self.tell_self_later(self.backoff(self.attempts["(store)"]), ReopenStore())
            case ReopenStore():
                self._open_store()
            case UploadTick():
                self.tick_pending = False
                self._kick()
            case UploadDone():
                self._uploaded(message)
            case CheckpointTick():
                self._checkpoint()
            case _:
                self.unexpected(message)

    def _writer(self, job_id: str) -> LogWriter:
        writer = self.writers.get(job_id)
        if writer is None:
            writer = LogWriter(self.path(job_id), job_id)
            if writer.repaired_bytes:
                self.log.warning("log_repaired", job=job_id, cut_bytes=writer.repaired_bytes)
            self.writers[job_id] = writer
        return writer

    def _open(self, job_id: str, finalise: bool) -> None:
        try:
            writer = self._writer(job_id)
            if finalise and not writer.finished:
                flags, sealed = seal_output(
                    self.fleet_key.job_key(job_id), writer.next_seq, time.time(), b"", final=True
                )
                writer.append(Record(writer.next_seq, flags, sealed))
                self.log.info("log_finalised", job=job_id)
        except StorageError as exc:
            self.log.error("log_open_failed", job=job_id, error=str(exc))
            return
        if writer.finished:
            writer.close()
            self.writers.pop(job_id, None)
            self._enqueue(job_id)

    def _append(self, out: OutputProduced) -> None:
        key = self.fleet_key.job_key(out.job_id)
        flags, sealed = seal_output(key, out.seq, out.at, out.data, final=out.final)
        if out.job_id not in self.broken:
            self._store(out, flags, sealed)
        chunk = OutputChunk(out.job_id, out.seq, flags, sealed)
        self.ctx.router.publish(
            Publish(
                addresses.output_key(out.job_id),
                wire.encode(chunk),
                message_id=f"{out.job_id}:o{out.seq}",
                job_id=out.job_id,
                after_start=True,
            )
        )
        self.ctx.router.tell(
            session_name(out.job_id), OutputStored(out.job_id, out.seq, len(out.data))
        )
        if out.final and out.job_id in self.writers:
            self.writers.pop(out.job_id).close()
            self._enqueue(out.job_id)
        if out.final:
            self.broken.pop(out.job_id, None)

    def _keep(self, out: OutputSealed) -> None:
        """Store a chunk its session sealed and published itself (the data plane, on the loop)."""
        if out.job_id not in self.broken:
            self._store(out, out.flags, out.sealed)
        self.ctx.router.tell(session_name(out.job_id), OutputStored(out.job_id, out.seq, out.size))
        if out.final and out.job_id in self.writers:
            self.writers.pop(out.job_id).close()
            self._enqueue(out.job_id)
        if out.final:
            self.broken.pop(out.job_id, None)

    def _store(self, out: OutputProduced | OutputSealed, flags: int, sealed: bytes) -> None:
        """Append to the log; on failure the log stays valid but ends there, and we say so."""
        try:
            writer = self._writer(out.job_id)
            writer.append(Record(out.seq, flags, sealed))
        except (StorageError, ValueError) as exc:
            self.broken[out.job_id] = str(exc)
            self.log.error("log_append_failed", job=out.job_id, seq=out.seq, error=str(exc))
            self.ctx.router.tell(JOB_QUEUE, LogFailed(out.job_id, out.seq, str(exc)))
            if out.job_id in self.writers:
                self.writers.pop(out.job_id).close()

    def _replay(self, ask: Replay) -> None:
        next_seq = ask.from_seq
        try:
            for record in read_records(
                self.path(ask.job_id), job_id=ask.job_id, from_seq=ask.from_seq
            ):
                chunk = OutputChunk(ask.job_id, record.seq, record.flags, record.sealed)
                self._reply(ask, wire.encode(chunk), f"r{record.seq}")
                next_seq = record.seq + 1
        except (StorageError, OSError) as exc:
            self.log.warning("log_replay_failed", job=ask.job_id, error=str(exc))
        done = ReplayFinished(ask.job_id, self.node, next_seq, ask.state, ask.exit_code, ask.signal)
        self._reply(ask, wire.encode(done), "done")

    def _reply(self, ask: Replay, body: bytes, suffix: str) -> None:
        self.ctx.router.publish(
            Publish(
                ask.reply_to,
                body,
                message_id=f"{ask.job_id}:{suffix}",
                correlation_id=ask.correlation_id,
            )
        )

    # -- uploads -----------------------------------------------------------------------------

    def _open_store(self) -> None:
        assert self.storage is not None
        if self.store is None:
            self.store = self.make_store(self.storage, self.ctx.settings.user)
        store = self.store
        ref = self.actor_ref

        async def open_store() -> None:
            await store.open()
            await store.ensure_bucket()

        def done(future: concurrent.futures.Future[None]) -> None:
            exc = None if future.cancelled() else future.exception()
            _tell(ref, StoreOpened(None if exc is None else str(exc) or type(exc).__name__))

        self.ctx.loop.submit(open_store(), done)

    def _enqueue(self, job_id: str) -> None:
        if self.storage is None:
            return
        self.due.setdefault(job_id, 0.0)
        metrics.UPLOAD_BACKLOG.set(len(self.due))
        self._kick()

    def _kick(self) -> None:
        """Start the next due upload (one at a time), or wake up when one is due."""
        if not self.store_ready or self.in_flight or not self.due:
            return
        now = time.monotonic()
        job_id = min(self.due, key=lambda j: self.due[j])
        if self.due[job_id] > now:
            if not self.tick_pending:
                self.tick_pending = True
                self.tell_self_later(self.due[job_id] - now, UploadTick())
            return
        path = self.path(job_id)
        if not path.exists():
            self.due.pop(job_id)
            metrics.UPLOAD_BACKLOG.set(len(self.due))
            self._kick()
            return
        self._upload(job_id, path, final=True)

    def _upload(self, job_id: str, path: Path, *, final: bool) -> None:
        self.in_flight.add(job_id)
        digest = hash_file(path) if final else None
        finished_at = path.stat().st_mtime if final else None
        store, ref = self.store, self.actor_ref

        async def put() -> str:
            remote = await store.put_log(
                self.node, job_id, path, hash=digest, finished_at=finished_at, final=final
            )
            return str(remote.hash)

        def done(future: concurrent.futures.Future[str]) -> None:
            if future.cancelled():
                _tell(ref, UploadDone(job_id, final, error="cancelled"))
            elif (exc := future.exception()) is not None:
                _tell(ref, UploadDone(job_id, final, error=str(exc) or type(exc).__name__))
            else:
                _tell(ref, UploadDone(job_id, final, digest=future.result()))

        self.ctx.loop.submit(put(), done)

    def _uploaded(self, done: UploadDone) -> None:
        self.in_flight.discard(done.job_id)
        kind = "final" if done.final else "checkpoint"
        if done.error is None and done.digest is not None:
            metrics.UPLOADS.labels(kind=kind, result="ok").inc()
            if done.final:
                backlog.mark_uploaded(self.path(done.job_id), done.digest)
                self._announce(done.job_id, done.digest)
                self.due.pop(done.job_id, None)
                self.attempts.pop(done.job_id, None)
                self.log.info("log_uploaded", job=done.job_id, hash=done.digest[:16])
                self._evict()
        else:
            metrics.UPLOADS.labels(kind=kind, result="failed").inc()
            if done.final:
                tries = self.attempts[done.job_id] = self.attempts.get(done.job_id, 0) + 1
                delay = self.backoff(tries)
                self.due[done.job_id] = time.monotonic() + delay
                self.log.warning(
                    "upload_failed",
                    job=done.job_id,
                    error=done.error,
                    attempt=tries,
                    retry_in=round(delay, 1),
                )
        metrics.UPLOAD_BACKLOG.set(len(self.due))
        self._kick()

    def _announce(self, job_id: str, digest: str) -> None:
        """Tell the ledger where the log is (the server records location and hash)."""
        key = f"{self.ctx.settings.user}/{self.node}/{job_id}.rlog"
        stored = LogStored(job_id, self.node, key, digest)
        self.ctx.router.publish(
            Publish(
                addresses.log_key(job_id),
                wire.encode(stored),
                message_id=f"{job_id}:log:{digest[:16]}",
                durable=True,
                mandatory=True,
            )
        )

    def _checkpoint(self) -> None:
        """Upload what running jobs wrote so far, so a device that dies leaves it behind."""
        assert self.storage is not None
        if self.store_ready:
            for job_id in list(self.writers):
                if job_id not in self.in_flight and not self.in_flight:
                    self._upload(job_id, self.path(job_id), final=False)
        self.tell_self_later(self.storage.checkpoint_seconds, CheckpointTick())

    def _evict(self) -> None:
        keep = set(self.writers) | set(self.due) | self.in_flight
        chosen = backlog.eviction(self.folder, self.max_bytes, keep=keep)
        if chosen:
            freed = backlog.evict(chosen)
            self.log.info("logs_evicted", count=len(chosen), freed_bytes=freed)


def _tell(ref: Any, message: object) -> None:
    try:
        ref.tell(message)
    except Exception:  # noqa: BLE001 - the vault stopped meanwhile; the backlog is on disk
        return
