"""The `relay` command (entry point `relay.client.cli:main`): parsing, the commands, their
context and progress display."""

from relay.client.cli.app import main

__all__ = ["main"]
