"""The data plane: where a keystroke's and an output chunk's bytes cross from actor to actor.

Bytes that must be fast stay on the I/O loop (DESIGN §1, "The data plane"). The actors that
own them still decide everything about them, but they lend the loop a function to call:

- a PTY Session lends an **input sink** for its job: the Gateway's consumer calls it with each
  decoded `InputSent` and acks or dead-letters the delivery by its answer, so a keystroke is
  deduplicated, opened, written into the PTY and acked in the loop's one callback;
- the Broker Gateway lends an **output sink**: a session's pump hands it each sealed output
  chunk's `Publish`, and the Gateway publishes it in the job's order (after `running`);
- a PTY Session lends a **store flush**, which hands the Log Vault the chunks it has not been
  told of yet: the Gateway calls every flush before it passes a replay request on.

Nothing here holds a ref to an actor or imports one: the table maps a job id (or nothing)
to a plain callable. When a sink is missing (its owner is starting, restarting or gone) the
caller takes the ordinary way, through the Router and the owner's mailbox, which holds
messages for a restarting actor.

Every method must be called on the loop thread only: the table is not locked.
"""

from __future__ import annotations

from collections.abc import Callable

from runlet.protocol.messages import InputSent
from runlet.runtime.local_messages import Publish

InputSink = Callable[[InputSent], str | None]
"""Take one keystroke delivery: None when it is accepted (typed, or a duplicate), else why not."""

OutputSink = Callable[[Publish, Callable[[], None] | None], None]
"""Publish one output chunk in its job's order; call the second argument once it has left."""


class DataPlane:
    """The loop's table of input sinks (one per running job) and the one output sink."""

    def __init__(self) -> None:
        self._inputs: dict[str, InputSink] = {}
        self._stores: dict[str, Callable[[], None]] = {}
        self._output: OutputSink | None = None

    def attach_input(self, job_id: str, sink: InputSink) -> None:
        self._inputs[job_id] = sink

    def detach_input(self, job_id: str, sink: InputSink) -> None:
        """Forget `job_id`'s sink, if it is still `sink` (a newer one stays)."""
        if self._inputs.get(job_id) == sink:  # ==: bound methods are made anew at each read
            del self._inputs[job_id]

    def input_sink(self, job_id: str) -> InputSink | None:
        return self._inputs.get(job_id)

    def attach_store(self, job_id: str, flush: Callable[[], None]) -> None:
        """`flush` hands the vault whatever output of `job_id` it has not been told of yet."""
        self._stores[job_id] = flush

    def detach_store(self, job_id: str, flush: Callable[[], None]) -> None:
        if self._stores.get(job_id) == flush:
            del self._stores[job_id]

    def flush_stores(self) -> None:
        """Before a replay is asked of the vault: every chunk published so far goes to it."""
        for flush in list(self._stores.values()):
            flush()

    def serve_output(self, sink: OutputSink) -> None:
        """Make `sink` the output sink."""
        self._output = sink

    def withdraw_output(self, sink: OutputSink) -> None:
        """No output sink any more, if it is still `sink`: publishes go through the Router."""
        if self._output == sink:
            self._output = None

    def publish_output(self, message: Publish, on_sent: Callable[[], None] | None = None) -> bool:
        """Hand an output chunk to the output sink; False when there is none to take it."""
        sink = self._output
        if sink is None:
            return False
        sink(message, on_sent)
        return True

    def statistics(self) -> dict[str, int]:
        return {
            "input_sinks": len(self._inputs),
            "store_flushes": len(self._stores),
            "output_sink": int(self._output is not None),
        }
