"""Events POSTed as JSON to a webhook ([notify] webhook): blocks, freezes, protections,
a degraded fleet, for a chat channel, a ticket queue or a pager.

Why a subclass of the postmaster's Notifier (control/notify.py): the same promises
hold and are kept once: ``send`` only queues (the event loop never waits for a web
server), one worker thread delivers, a batch at most every ``interval`` seconds
(the first event at once, the ones after it together), a failure is retried with
exponential backoff, and what is still unsent lives in a spool file across restarts.

The HTTP client is the standard library's ``urllib.request`` in that thread: one POST
of a small JSON body needs no connection pool or async client, and no dependency.
The body::

    {"source": "dynscreen", "host": "mx1", "events": [EVENT...], "omitted": 0}

where EVENT is ``{"event": "block|freeze|protect|...", "time": unix, "ip"|"user", "reason",
"origin", ...}`` (``omitted``: events past MAX_LISTED in one batch, counted only). Any
2xx answer is delivery; anything else, or no answer within the timeout, is retried.
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dynscreen.control.notify import BACKOFF_INITIAL, BACKOFF_MAX, Notifier

log = logging.getLogger(__name__)

INTERVAL = 10.0  # seconds between two POSTs at most once the first went out
TIMEOUT = 10.0  # per POST
KEY = "webhook"  # the one queue (Notifier keys its queues by account)


def spool_path(state_file: Path) -> Path:
    """Where the unsent events wait: beside the block file, in the state folder."""
    return state_file.with_name("webhook.spool")


class Webhook(Notifier):
    """Queues events and POSTs them in batches from a worker thread."""

    thread_name = "dynscreen-webhook"

    def __init__(
        self,
        url: str,
        *,
        interval: float = INTERVAL,
        spool: Path | None = None,
        clock: Callable[[], float] | None = None,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        timeout: float = TIMEOUT,
        hostname: str | None = None,
        user_agent: str = "dynscreen",
    ) -> None:
        extra: dict[str, Any] = {"clock": clock} if clock is not None else {}
        super().__init__("", ("", 0), interval / 60.0, spool=spool,
                         backoff_initial=backoff_initial, backoff_max=backoff_max,
                         timeout=timeout, hostname=hostname or socket.gethostname(), **extra)
        self.url = url
        self.user_agent = user_agent

    def send(self, event: str, ts: float, **fields: Any) -> None:
        """Queue one event; returns at once."""
        item = {"event": event, "time": ts}
        item.update({k: v for k, v in fields.items() if v is not None})
        self._queue(KEY, item)

    def _encode(self, item: Any) -> dict[str, Any]:
        return dict(item)

    def _decode(self, item: dict[str, Any]) -> Any:
        if not isinstance(item, dict) or not isinstance(item.get("event"), str):
            raise ValueError("not a webhook event")
        return item

    def _send(self, batch: list[tuple[str, str, list[Any], int]]) -> bool:
        """POST each queue's events (there is one); True if it failed."""
        failed = False
        for key, _user, events, omitted in batch:
            body = json.dumps({"source": "dynscreen", "host": self.hostname,
                               "events": events, "omitted": omitted}).encode()
            req = urllib.request.Request(
                self.url, data=body, method="POST",
                headers={"Content-Type": "application/json", "User-Agent": self.user_agent})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as reply:
                    reply.read(65536)
            except urllib.error.HTTPError as e:
                failed = True
                self.send_failures += 1
                log.error("webhook: %s answered %d %s: %d event(s) kept for a retry",
                          self.url, e.code, e.reason, len(events))
                continue
            except (OSError, ValueError) as e:  # URLError, timeouts, refused connections
                failed = True
                self.send_failures += 1
                log.warning("webhook: cannot POST to %s: %s: %d event(s) kept for a retry",
                            self.url, getattr(e, "reason", e), len(events))
                continue
            self._sent(key, len(events), omitted)
            log.info("webhook: %d event(s) POSTed to %s", len(events), self.url)
        return failed
