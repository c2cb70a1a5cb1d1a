"""The actor runtime: the I/O loop thread, actor base, router, supervisor and local messages."""
