"""`async with` for the adapters' stores, written once: entering opens, leaving closes.

`LedgerDb` and `BlobStore`, and their fakes in runlet.testing, inherit `Closing`; each says
what `open` and `close` do. A store that its factory hands over connected (`LedgerDb`) keeps
the default `open`, which has nothing to do.
"""

from __future__ import annotations

from typing import Self


class Closing:
    """Base of a store used with `async with`: `open()` on the way in, `close()` on the way out."""

    async def open(self) -> None:
        """Make the store ready; one that is ready already has nothing to do."""

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
