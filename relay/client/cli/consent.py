"""One rule for everything that arrives (a live offer, a drop code's drop, a contact's drop
or file): say what it brings, then ask, unless -y. Without a terminal to ask on and without
-y, it is refused, with a hint. Names are shown escaped (relay/client/safe_paths.py), never
as the sender wrote them.
"""

from __future__ import annotations

from collections.abc import Sequence

from relay.client.cli.context import Context
from relay.client.cli.progress import human_bytes
from relay.client.errors import Refused
from relay.client.safe_paths import printable_name

SHOWN_NAMES = 5  # names listed before "and N more"
_TEXT_PREVIEW = 200
_NAME_CHARS = 120

# (name as sent, is folder, size or None for a stream)
Entry = tuple[str, bool, int | None]


def describe(who: str, entries: Sequence[Entry], text: str | None) -> str:
    """`who offers 3 files, 1.2 MB in all: a.txt (1 KB), ...` and the text, for the user."""
    files = [e for e in entries if not e[1]]
    folders = [e for e in entries if e[1]]
    lines = []
    if files:
        sizes = [size for _, _, size in files]
        total = human_bytes(sum(s or 0 for s in sizes))
        if any(s is None for s in sizes):
            total = "size unknown (a stream)" if len(files) == 1 else f"{total} and a stream"
        count = f"{len(files)} file{'s' if len(files) != 1 else ''}"
        extra = f" in {len(folders)} folder{'s' if len(folders) != 1 else ''}" if folders \
            else ""
        lines.append(f"{who} offers {count}{extra}, {total}" + (" in all:" if len(files) > 1
                                                                else ":"))
        for name, _, size in files[:SHOWN_NAMES]:
            shown = printable_name(name[:_NAME_CHARS]) + ("..." if len(name) > _NAME_CHARS
                                                          else "")
            lines.append(f"  {shown} ({'stream' if size is None else human_bytes(size)})")
        if len(files) > SHOWN_NAMES:
            lines.append(f"  and {len(files) - SHOWN_NAMES} more")
    elif folders:
        lines.append(f"{who} offers {len(folders)} empty folder"
                     f"{'s' if len(folders) != 1 else ''}")
    if text is not None:
        preview = printable_name(text[:_TEXT_PREVIEW].replace("\n", " "))
        more = "..." if len(text) > _TEXT_PREVIEW else ""
        lines.append(f"{who} sends a text: {preview}{more}" if files or folders
                     else f"{who} sends a text ({len(text)} characters): {preview}{more}")
    return "\n".join(lines) or f"{who} offers nothing"


def consent(ctx: Context, who: str, entries: Sequence[Entry], text: str | None) -> None:
    """Show the offer; return if it is accepted, else Refused (the sender is told)."""
    if ctx.args.yes or not ctx.interactive():
        ctx.say(describe(who, entries, text))
    else:  # even with -q: nobody is asked to accept what they were not shown
        print(describe(who, entries, text), file=ctx.stderr, flush=True)
    if ctx.args.yes:
        return
    if not ctx.interactive():
        raise Refused("no terminal to ask on; `relay receive -y` accepts without asking")
    if not ctx.ask_yes_no("Accept?"):
        raise Refused("declined")
