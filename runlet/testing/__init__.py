"""Public fakes for the adapter seams, in the shape of httpx's MockTransport.

`MemoryBroker` stands in for `runlet.adapters.broker.Broker` and `MemoryLedgerDb` for the
PostgreSQL ledger store: an actor or a client built on them runs its real logic with no
network. Tests of the real adapters use the real services.
"""

from runlet.testing.broker import MemoryBroker, MemoryIncoming, Published, topic_matches
from runlet.testing.ledger_db import MemoryLedgerDb

__all__ = ["MemoryBroker", "MemoryIncoming", "MemoryLedgerDb", "Published", "topic_matches"]
