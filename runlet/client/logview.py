"""Reading a stored log for a person: verify every chunk, show what is safe, say what is wrong.

Each chunk is authenticated on its own (its job, sequence number and FINAL flag are bound in
by the AEAD), the sequence must run without gaps, and the last chunk must carry FINAL. What is
readable is shown; every problem is reported on stderr with the chunk it concerns, and output
that follows a damaged stretch is clearly marked as resuming after a gap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from runlet.adapters.logfile import open_output, read_records
from runlet.errors import CryptoError, LogDamage, ProtocolError, StorageError
from runlet.protocol.crypto import FleetKey


@dataclass
class Verdict:
    """What reading a log found."""

    chunks: int = 0
    bytes: int = 0
    finished: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return self.finished and not self.problems


def show_log(
    path: Path,
    job_id: str,
    key: FleetKey,
    write: Callable[[bytes], None],
    note: Callable[[str], None],
    *,
    play_speed: float | None = None,
    max_pause: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Verdict:
    """Write the log's output with `write`, problems with `note`; optionally in real time."""
    verdict = Verdict()
    last_t: float | None = None
    for _, t, data in verified_chunks(path, job_id, key, verdict, note):
        if play_speed is not None and last_t is not None:
            sleep(min(max(0.0, (t - last_t) / play_speed), max_pause))
        last_t = t
        write(data)
    return verdict


def verified_chunks(
    path: Path, job_id: str, key: FleetKey, verdict: Verdict, note: Callable[[str], None]
) -> Iterator[tuple[int, float, bytes]]:
    """Each readable chunk as (seq, unix time, plaintext), in order; problems go to `verdict`
    (and `note`, as they are found), a missing FINAL chunk last."""
    job_key = key.job_key(job_id)
    expected = 0
    try:
        for record in read_records(path, job_id=job_id):
            if record.seq != expected:  # read_records reports gaps; this is belt and braces
                verdict.problems.append(f"chunk {expected} missing")
            expected = record.seq + 1
            try:
                t, data = open_output(job_key, record.seq, record.flags, record.sealed)
            except (CryptoError, ProtocolError):
                problem = f"chunk {record.seq} did not authenticate (altered, or from another log)"
                verdict.problems.append(problem)
                note(f"{problem}; skipped — output below resumes after it")
                continue
            verdict.chunks += 1
            verdict.bytes += len(data)
            verdict.finished = record.final
            yield record.seq, t, data
    except LogDamage as damage:
        where = f"byte {damage.offset}, after {damage.good_records} sound chunks"
        problem = f"log damaged at {where}: {damage.detail}"
        verdict.problems.append(problem)
        note(problem + "; what was shown before this point is intact")
    except StorageError as exc:
        verdict.problems.append(str(exc))
        note(str(exc))
        return
    if not verdict.finished and not any("damaged" in p for p in verdict.problems):
        problem = "the log ends without its FINAL chunk: incomplete (still running, or cut off)"
        verdict.problems.append(problem)
        note(problem)
