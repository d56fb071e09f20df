"""Where the fleet's state lives in Redis (every key under one prefix).

- ``dynscreen:epoch``: a token set once; a new one means Redis lost its data
  (restart without persistence), so members publish their blocks again.
- ``dynscreen:block:<net>``: the current fleet block set, one JSON message per
  block, expiring with it (a member starting late reads them all).
- ``dynscreen:frozen:<user>``: frozen accounts, expiring with the freeze.
- ``dynscreen:allow``: the runtime whitelist entries (a set).
- ``dynscreen:member:<name>``: a member's heartbeat (last seen, blocks made).
- ``dynscreen:notice:<user>``: who mails the postmaster about an account this window.
- ``dynscreen:changes``: the stream every change travels on, read by every member.
"""

from __future__ import annotations

PREFIX = "dynscreen:"
EPOCH = PREFIX + "epoch"
BLOCK = PREFIX + "block:"
FROZEN = PREFIX + "frozen:"
ALLOW = PREFIX + "allow"
MEMBER = PREFIX + "member:"
NOTICE = PREFIX + "notice:"
CHANGES = PREFIX + "changes"
CHANGES_MAXLEN = 200_000  # the stream is trimmed (approximately) to this many changes
MEMBER_TTL = 86400  # a member silent this long leaves the list
