"""Runlet: shell jobs on a fleet of devices, interactive from anywhere, through RabbitMQ."""

__version__ = "0.1.0"
