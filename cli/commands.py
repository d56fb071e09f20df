"""Imports every command module so that each registers its commands on the app."""

from __future__ import annotations

import importlib

# Each name is a module of dynscreen.cli that decorates functions with @app.command.
COMMAND_MODULES: tuple[str, ...] = (
    "checkconfig",
    "run",
    "status",
    "top",
    "blocks",
    "allow",
    "accounts",
    "control",
    "replay",
    "history",
    "explain",
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"dynscreen.cli.{_name}")
