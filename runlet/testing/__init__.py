"""Public fakes for the adapter seams, in the shape of httpx's MockTransport.

`MemoryBroker` stands in for `runlet.adapters.broker.Broker`, `MemoryLedgerDb` for the
PostgreSQL ledger store and `MemoryBlobStore` for the S3 blob store: an actor or a client built
on them runs its real logic with no network. Tests of the real adapters use the real services,
and the contract tests run the same assertions on a fake and on the store it stands for.
"""

from runlet.testing.blob_store import MemoryBlobStore
from runlet.testing.broker import MemoryBroker, MemoryIncoming, Published, topic_matches
from runlet.testing.ledger_db import MemoryLedgerDb

__all__ = [
    "MemoryBlobStore",
    "MemoryBroker",
    "MemoryIncoming",
    "MemoryLedgerDb",
    "Published",
    "topic_matches",
]
