"""The RabbitMQ adapter (aio-pika): `Broker`, a failover connection with confirmed and fast
publishes and the declared topology restored after every reconnect (see `connection`),
`AmqpIncoming`, one delivery (see `delivery`), and `BrokerSecurity`, the TLS context, password
and login every connection of a process uses (see `security`). The types it speaks are in
`broker_port`.
"""

from runlet.adapters.broker.connection import Broker
from runlet.adapters.broker.delivery import AmqpIncoming
from runlet.adapters.broker.security import BrokerSecurity
from runlet.adapters.broker_port import Handler, Incoming, QueueSpec, Statistics, safe_url

__all__ = [
    "AmqpIncoming",
    "Broker",
    "BrokerSecurity",
    "Handler",
    "Incoming",
    "QueueSpec",
    "Statistics",
    "safe_url",
]
