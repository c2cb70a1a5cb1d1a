"""Public fakes for the adapter seams, in the shape of httpx's MockTransport.

`MemoryBroker` stands in for `runlet.adapters.broker.Broker`: an actor or a client built on it
runs its real logic with no network. Tests of the real adapters use the real services.
"""

from runlet.testing.broker import MemoryBroker, MemoryIncoming, Published, topic_matches

__all__ = ["MemoryBroker", "MemoryIncoming", "Published", "topic_matches"]
