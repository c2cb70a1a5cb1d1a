"""Log Vault (local part): seals every output chunk, appends it to the job's log, publishes it.

The live stream and the stored log are the very same sealed chunks, so a viewer that joins
late asks for a replay from a sequence number and then follows live output, dropping what it
already has. The log of a job that ended is finalised with a FINAL chunk; one left unfinished
by a crash is finalised when the daemon comes back (`OpenLog(finalise=True)`).
"""

from __future__ import annotations

import time
from pathlib import Path

from runlet import addresses, wire
from runlet.errors import StorageError
from runlet.local import OpenLog, OutputProduced, OutputStored, Publish, Replay
from runlet.logfile import LogWriter, Record, read_records, seal_output
from runlet.messages import OutputChunk, ReplayFinished
from runlet.runtime import Actor, Context


class LogVault(Actor):
    """Owns the `<data_dir>/vault/` folder and every open log writer."""

    def __init__(self, ctx: Context, name: str = "vault") -> None:
        super().__init__(ctx, name)
        self.node: str = ctx.settings.node
        self.folder: Path = ctx.settings.data_dir / "vault"
        self.fleet_key = ctx.services["fleet_key"]
        self.writers: dict[str, LogWriter] = {}

    def path(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.rlog"

    def on_stop(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()

    def handle(self, message: object) -> None:
        match message:
            case OpenLog(job_id=job_id, finalise=finalise):
                self._open(job_id, finalise)
            case OutputProduced():
                self._append(message)
            case Replay():
                self._replay(message)
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

    def _append(self, out: OutputProduced) -> None:
        key = self.fleet_key.job_key(out.job_id)
        flags, sealed = seal_output(key, out.seq, out.at, out.data, final=out.final)
        try:
            writer = self._writer(out.job_id)
            writer.append(Record(out.seq, flags, sealed))
        except (StorageError, ValueError) as exc:
            self.log.error("log_append_failed", job=out.job_id, seq=out.seq, error=str(exc))
        chunk = OutputChunk(out.job_id, out.seq, flags, sealed)
        self.ctx.router.publish(
            Publish(
                addresses.output_key(out.job_id),
                wire.encode(chunk),
                message_id=f"{out.job_id}:o{out.seq}",
            )
        )
        self.ctx.router.tell(f"pty:{out.job_id}", OutputStored(out.job_id, out.seq, len(out.data)))
        if out.final and out.job_id in self.writers:
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
                exchange="",
                correlation_id=ask.correlation_id,
            )
        )
