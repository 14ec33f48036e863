"""Questions on the terminal: the code (with tab completion of the code words) and y/N.

A prompt blocks the reactor thread while the user types (nothing else is waiting on us
then but a peer that waits for our answer). Ctrl-C at a prompt raises KeyboardInterrupt
there (the SIGINT handler in relay/client/cli/app.py raises it while `prompting` is set),
which becomes `Interrupted`. The prompt goes to stderr; on a terminal the line is read with
readline (editing, history-free, Tab completes code words): readline writes its prompt to
stdout, so stdout is pointed at the terminal for the time of the question.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from relay.client.errors import Interrupted

MAX_ANSWER = 256  # characters read for a y/N answer or a typed code


class _State:
    prompting = False
    interrupted = False  # a Ctrl-C came (maybe just before a prompt began)


state = _State()


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _real_terminal(stdin: Any, stderr: Any) -> bool:
    """Whether stdin and stderr are the process's own terminal (readline can be used)."""
    return stdin is sys.__stdin__ and stderr is sys.__stderr__ and is_terminal(stdin) \
        and is_terminal(stderr)


@contextmanager
def _stdout_on_terminal() -> Iterator[None]:
    """Point fd 1 at stderr's terminal (readline writes the prompt and echo to stdout)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _completer(words: Sequence[str]) -> Any:
    def complete(text: str, index: int) -> str | None:
        matches = [w for w in words if w.startswith(text.lower())]
        return matches[index] if index < len(matches) else None
    return complete


def ask_line(stdin: Any, stderr: Any, question: str,
             words: Sequence[str] | None = None) -> str | None:
    """One line typed by the user (stripped); None at end of input. Interrupted on Ctrl-C."""
    state.prompting = True
    try:
        if state.interrupted:
            raise KeyboardInterrupt
        if _real_terminal(stdin, stderr):
            return _readline(question, words)
        if is_terminal(stdin):
            stderr.write(question)
            stderr.flush()
        line = stdin.readline(MAX_ANSWER)
        return line.strip() if line else None
    except KeyboardInterrupt:
        stderr.write("\n")
        raise Interrupted("interrupted") from None
    finally:
        state.prompting = False


def _readline(question: str, words: Sequence[str] | None) -> str | None:
    try:
        import readline
    except ImportError:  # no readline on this platform: a plain line
        readline = None
    if readline is not None:
        readline.set_completer(_completer(words) if words else None)
        readline.set_completer_delims(" -\t\n")
        readline.parse_and_bind("tab: complete")
    with _stdout_on_terminal():
        try:
            return input(question).strip()[:MAX_ANSWER]
        except EOFError:
            return None
        finally:
            if readline is not None:
                readline.set_completer(None)
                readline.clear_history()


def ask_yes_no(stdin: Any, stderr: Any, question: str) -> bool:
    """y/N on the terminal; False when nobody can answer."""
    if not is_terminal(stdin):
        return False
    answer = ask_line(stdin, stderr, f"{question} [y/N] ")
    return (answer or "").lower() in ("y", "yes")
