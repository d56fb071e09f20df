"""What the Postfix and Dovecot policy tests share: reaching a server and a frozen store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from dynscreen.control.accounts import FrozenStore


async def open_to(server: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a stream to a started server, on its unix socket or its TCP address."""
    where = server.address
    if isinstance(where, Path):
        return await asyncio.open_unix_connection(str(where))
    assert where is not None
    return await asyncio.open_connection(*where)


def loaded_store(tmp_path: Path) -> FrozenStore:
    """An empty frozen-accounts store in a test's own folder."""
    store = FrozenStore(tmp_path / "frozen")
    store.load()
    return store
