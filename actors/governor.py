"""Parallelism Governor: decides when a queued job may start.

At most `jobs.max_parallel` jobs run at once; with `jobs.max_load` set, a job also waits while
the one-minute load average is above it (but one job may always run, so nothing starves).
Grants go out in the order requests came in: the Job Queue asks in FIFO order.
"""

from __future__ import annotations

import os
from collections import deque

from runlet import metrics
from runlet.runtime.actor import Actor, Context
from runlet.runtime.local_messages import AdmissionTick, ReleaseSlot, RequestSlot, SlotGranted
from runlet.runtime.names import GOVERNOR, JOB_QUEUE

LOAD_RECHECK_SECONDS = 2.0


class Governor(Actor):
    """Grants start slots; holds the waiting line."""

    def __init__(self, ctx: Context, name: str = GOVERNOR) -> None:
        super().__init__(ctx, name)
        self.max_parallel: int = ctx.settings.jobs.max_parallel
        self.max_load: float | None = ctx.settings.jobs.max_load
        self.load_average = os.getloadavg if hasattr(os, "getloadavg") else (lambda: (0.0,) * 3)
        self.running: set[str] = set()
        self.waiting: deque[str] = deque()
        self._ticking = False

    def handle(self, message: object) -> None:
        match message:
            case RequestSlot(job_id=job_id) if job_id in self.running:
                # granted before, but the grant was lost with a crashed job queue: grant again
                self.ctx.router.tell(JOB_QUEUE, SlotGranted(job_id))
            case RequestSlot(job_id=job_id):
                if job_id not in self.waiting:
                    self.waiting.append(job_id)
                self._grant()
            case ReleaseSlot(job_id=job_id):
                self.running.discard(job_id)
                if job_id in self.waiting:
                    self.waiting.remove(job_id)
                self._grant()
            case AdmissionTick():
                self._ticking = False
                self._grant()
            case _:
                self.unexpected(message)
        metrics.QUEUE_DEPTH.set(len(self.waiting))

    def _grant(self) -> None:
        while self.waiting and len(self.running) < self.max_parallel:
            if self.running and self._overloaded():
                self._recheck_later()
                return
            job_id = self.waiting.popleft()
            self.running.add(job_id)
            self.ctx.router.tell(JOB_QUEUE, SlotGranted(job_id))

    def _overloaded(self) -> bool:
        return self.max_load is not None and self.load_average()[0] > self.max_load

    def _recheck_later(self) -> None:
        if not self._ticking:
            self._ticking = True
            self.tell_self_later(LOAD_RECHECK_SECONDS, AdmissionTick())
