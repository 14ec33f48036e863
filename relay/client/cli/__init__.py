"""The `relay` command (entry point `relay.client.cli:main`): parsing, the commands, their
context, prompts and progress display (relay/client/cli/app.py runs them)."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, NoReturn


def main(argv: list[str] | None = None) -> NoReturn:
    """The entry point. Ctrl-C while Python is still importing (a second or more on a busy
    machine) ends quietly with 130 too; the command installs its own handler after that."""
    def early(signum: int, frame: Any) -> None:
        try:
            sys.stderr.write("\nrelay: interrupted\n")
            sys.stderr.flush()
        finally:
            os._exit(130)

    signal.signal(signal.SIGINT, early)
    signal.signal(signal.SIGTERM, early)
    from relay.client.cli.app import main as run

    run(argv)
