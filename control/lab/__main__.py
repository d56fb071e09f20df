"""``python -m dynscreen.control.lab demo|up`` (as root).

- ``demo`` (``make demo``): build the lab, play an attack mix next to an honest
  user, show dynscreen at work, summarise, remove the lab.
- ``up``: build the lab and keep it until Ctrl-C, printing how to reach it
  (for trying things by hand: ``ip netns exec``, ``dynscreen --socket``).
"""

from __future__ import annotations

import argparse
import signal
import sys


def up(keep: bool) -> int:
    from .lab import LabError, MailLab

    lab = MailLab(signals=True, keep=keep)
    try:
        lab.open()
    except LabError as e:
        print(f"dynscreen lab: {e}", file=sys.stderr)
        return 1
    try:
        c = lab.net.clients
        print(f"""the lab is up (Ctrl-C removes it):
  gateway namespace   {lab.net.gw}: Postfix and Dovecot on {lab.gateway} (25, 587, 110, 143)
  attackers           ip netns exec {c[0].ns} ...   (addresses {c[0].v4[0]} - {c[0].v4[-1]})
  honest clients      ip netns exec {c[1].ns} ...   ({", ".join(c[1].v4)})
  partner network     ip netns exec {c[2].ns} ...   ({", ".join(c[2].v4)})
  dynscreen           dynscreen --socket {lab.socket} status
  config              {lab.config}
  logs                {lab.postfix_log}
                      {lab.dovecot_log}
                      {lab.daemon_log}
  mailboxes           {lab.mail.paths.mail if lab.mail else ""}  (users: alice, bob, carol,
                      dave, erin, frank, postmaster @example.test; password USER-secret)""",
              flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        lab.close()
        print("lab removed" + (f"; files kept in {lab.dir}" if keep else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dynscreen.control.lab",
                                description="dynscreen's mail-gateway lab (needs root)")
    sub = p.add_subparsers(dest="cmd")
    sub.add_parser("demo", help="attacks next to an honest user, dynscreen's view, a summary")
    u = sub.add_parser("up", help="build the lab and keep it until Ctrl-C")
    u.add_argument("--keep", action="store_true", help="keep the lab's files afterwards")
    args = p.parse_args(argv)
    if args.cmd == "up":
        return up(args.keep)
    from .demo import main as demo

    return demo()


if __name__ == "__main__":
    sys.exit(main())
