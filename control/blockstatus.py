"""`status`'s view of the blocks, from a block index: the daemon's and the offline one alike.

Why a room of its own: the running daemon answers from its own index and a
stopped one from an index built from the pinned maps and the block file; both
must show the same shape (``--limit``, ``--all``, the filters), so the view is
made once, here. Without ``--all`` the answer is the counts by reason, the
newest ``limit`` blocks and the ``limit`` most dropping ones (a few dict
probes and one heap over the blocks that have drops); with it, every block,
newest first, as JSON text in chunks (``IndexSnapshot.json_texts``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dynscreen.control.blockindex import BlockIndex, IndexSnapshot
from dynscreen.control.sourcekey import SourceKey

LIMIT = 50  # blocks shown without --limit or --all


class StatusQuery:
    """What `status` asks: how many, which. ValueError names a bad argument."""

    def __init__(self, *, limit: object = LIMIT, show_all: object = False,
                 ip: SourceKey | None = None, reason: object = None,
                 origin: object = None) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError('"limit" must be a whole number, 0 or more')
        for name, val in (("reason", reason), ("source", origin)):
            if val is not None and not isinstance(val, str):
                raise ValueError(f'"{name}" must be a name')
        self.limit = limit
        self.show_all = show_all is True
        self.filters: dict[str, Any] = {k: v for k, v in
                                        (("ip", ip), ("reason", reason), ("origin", origin))
                                        if v is not None}


def summary(index: BlockIndex, q: StatusQuery, now: float) -> dict[str, Any]:
    """The blocks' part of the status reply without --all."""
    return {
        "block_count": len(index),
        "blocks_by_reason": index.count_by_reason(),
        "blocks": [b.to_json(now) for b in index.newest(q.limit, **q.filters)],
        "most_dropping": [b.to_json(now) for b in index.most_dropping(q.limit, **q.filters)
                          if b.drops],
        "blocks_shown": q.limit,
    }


def every_block(index: BlockIndex, snap: IndexSnapshot, q: StatusQuery,
                now: float) -> tuple[dict[str, Any], Iterator[str]]:
    """(head, the "blocks" array's text in chunks) for --all: render the chunks in a worker
    thread, the snapshot's own copy."""
    head = {"block_count": len(index), "blocks_by_reason": index.count_by_reason(),
            "blocks_shown": "all"}
    return head, _texts(snap, now, q.filters)


def _texts(snap: IndexSnapshot, now: float, filters: dict[str, Any]) -> Iterator[str]:
    """The snapshot's JSON chunks, then the snapshot dropped part by part where the chunks
    are made (a worker thread): a million blocks freed in one C-level cascade would hold
    the GIL, and so the event loop, for tens of ms."""
    parts = list(snap.parts)
    yield from snap.json_texts(now, **filters)
    del snap
    while parts:
        parts.pop()
