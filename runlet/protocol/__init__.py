"""The wire protocol: the codec, message classes, sealed payloads, keys and names on the broker.

Nothing here does I/O; it is what every other layer speaks.
"""
