"""The `dynscreen` command."""
