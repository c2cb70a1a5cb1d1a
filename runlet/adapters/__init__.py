"""Adapters to the outside: RabbitMQ, PostgreSQL, the blob store, PTYs and files on disk.

The only part of Runlet that imports aio-pika, asyncpg, aioboto3/botocore and
ptyprocess/pywinpty; each translates its library's errors into Runlet's own, once.
"""
