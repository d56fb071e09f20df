"""The fleet: gateways that share blocks, counters, frozen accounts and the runtime
whitelist through one Redis (docs/design.md, "Fleet")."""
