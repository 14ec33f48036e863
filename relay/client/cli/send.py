"""`relay send` and `relay message`.

send PATH...            live, by code phrase; with --drop, a dead drop under a drop code
                        when nobody comes within --wait
send --to NAME PATH...  a live offer in the contact's mailbox, then (after --wait) a dead
                        drop in it; --wait 0 goes straight to the drop
message --to NAME TEXT  a short text, boxed to the contact, through the plain mailbox

stdin ("-") is sent live as a stream: read as the receiver takes it, in records, with no
temporary file and no size known up front. Only a dead drop needs the whole of it first
(the file API states each file's size and MD5 before the first chunk): if the transfer
falls back to a drop, stdin, not yet read, is then spooled to a private temporary file,
up to STDIN_DROP_MAX bytes.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from relay.client import codes
from relay.client.cli.context import Context
from relay.client.cli.progress import human_bytes
from relay.client.cli.prompt import is_terminal
from relay.client.errors import (
    ClientError,
    NobodyCame,
    RecordError,
    RelayError,
    TransferError,
    UsageError,
)
from relay.client.live.protocol import MAX_TEXT, SourceEntry, collect_sources
from relay.client.live.session import LiveStart, effective_wait, run_live_send, start_live_send
from relay.client.local.contacts import Contact
from relay.client.mailbox.drop import send_drop
from relay.client.mailbox.inbox import FORMAT_VERSION, OFFER_TYPE, box_text, send_json
from relay.client.safe_paths import check_relative_name, printable_name
from relay.crypto import h2

STDIN = "-"
DEFAULT_STDIN_NAME = "stdin"
# The most of stdin spooled to disk for a dead drop (a relay's own per-file cap, 1 GiB by
# default, may refuse less); a live transfer has no such cap on the sender's side.
STDIN_DROP_MAX = 4 * 1024 ** 3
_SPOOL_BLOCK = 1024 * 1024
# What a relay without the live rendezvous (--no-rendezvous) answers to /join: 503 with
# no details, as Zax answers any path it does not serve (a busy relay's canned 503 looks
# the same to this client, and a dead drop is a fine answer to that too).
NO_RENDEZVOUS = (404, 405, 501, 503)


def _sources(ctx: Context) -> list[SourceEntry]:
    """The entries to send; stdin ("-") is a stream entry, read only while it is sent."""
    args = ctx.args
    paths = list(args.paths)
    if paths.count(STDIN) > 1:
        raise UsageError("stdin (-) can be sent only once")
    if not paths and args.text is None:
        raise UsageError("nothing to send: give paths, - for stdin, or --text")
    entries: list[SourceEntry] = []
    for path in paths:
        if path == STDIN:
            entries.append(SourceEntry.of_stream(_stdin_name(ctx), _stdin_bytes(ctx)))
        else:
            try:
                entries += collect_sources([Path(path)])
            except TransferError as e:
                raise UsageError(str(e)) from None
    seen = set()
    for entry in entries:
        if entry.name in seen:
            raise UsageError(f"two paths would arrive as {printable_name(entry.name)}")
        seen.add(entry.name)
    return entries


def _stdin_name(ctx: Context) -> str:
    name = ctx.args.name or DEFAULT_STDIN_NAME
    try:
        check_relative_name(name)
    except ClientError as e:
        raise UsageError(f"--name: {e}") from None
    if "/" in name:
        raise UsageError("--name is a file name, not a path")
    return name


def _stdin_bytes(ctx: Context) -> Any:
    reader = getattr(ctx.stdin, "buffer", None)
    if reader is None:
        raise UsageError("stdin is not a byte stream here")
    return reader


@contextmanager
def _spooled(entries: list[SourceEntry]) -> Iterator[list[SourceEntry]]:
    """The entries with a stream replaced by a private temporary copy of it (a dead drop
    must know sizes and digests before it uploads); the copy is removed afterwards."""
    if not any(e.is_stream for e in entries):
        yield entries
        return
    spool = Path(tempfile.mkdtemp(prefix="relay-stdin-"))
    try:
        spooled = []
        for entry in entries:
            if entry.is_stream:
                target = spool / entry.name
                _copy_capped(entry.stream, target, STDIN_DROP_MAX)
                spooled += collect_sources([target])
            else:
                spooled.append(entry)
        yield spooled
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def _copy_capped(reader: Any, target: Path, cap: int) -> None:
    copied = 0
    with open(target, "wb") as out:
        while block := reader.read(_SPOOL_BLOCK):
            copied += len(block)
            if copied > cap:
                raise TransferError(f"stdin is over {human_bytes(cap)}: too big to leave as "
                                    f"a dead drop (send it live)")
            out.write(block)


def _check_text(text: str | None) -> str | None:
    if text is not None and len(text.encode("utf-8")) > MAX_TEXT:
        raise UsageError(f"--text is over {MAX_TEXT} bytes; send it as a file")
    return text


def _summary(entries: list[SourceEntry], text: str | None) -> str:
    files = sum(1 for e in entries if not e.is_dir)
    folders = sum(1 for e in entries if e.is_dir)
    parts = []
    if files:
        size = human_bytes(sum(e.size or 0 for e in entries))
        if any(e.is_stream for e in entries):
            size = "stdin, size unknown" if files == 1 else f"{size} and stdin"
        parts.append(f"{files} file{'s' if files != 1 else ''} ({size})")
    if folders:
        parts.append(f"{folders} folder{'s' if folders != 1 else ''}")
    if text is not None:
        parts.append("a text")
    return ", ".join(parts) or "nothing"


async def cmd_send(ctx: Context) -> int:
    args = ctx.args
    text = _check_text(args.text)
    if args.to is not None:
        contact = ctx.contacts().get(args.to)  # before reading stdin: fail fast
    entries = _sources(ctx)
    if args.to is not None:
        return await _send_to_contact(ctx, contact, entries, text)
    return await _send_by_code(ctx, entries, text)


def show_code(ctx: Context, label: str, code: str) -> None:
    """The code on stdout (alone, so that `CODE=$(relay send ...)` gets it; with -q it is
    all that is printed); on a terminal it follows its label on stderr."""
    if not ctx.args.quiet:
        same_terminal = is_terminal(ctx.stdout) and is_terminal(ctx.stderr)
        ctx.stderr.write(f"{label}: " if same_terminal else f"{label}: {code}\n")
        ctx.stderr.flush()
    print(code, file=ctx.stdout, flush=True)


async def _start_live(ctx: Context, fallback: bool) -> LiveStart | None:
    """A joined channel; None when the relay offers no live rendezvous (run with
    --no-rendezvous) and the caller can fall back to a dead drop."""
    try:
        return await start_live_send(ctx.reactor, ctx.relay_url)
    except RelayError as e:
        if e.status not in NO_RENDEZVOUS or e.details:
            raise
        if fallback:
            ctx.say("The relay offers no live rendezvous (or is busy): leaving a dead drop "
                    "instead.")
            return None
        raise RelayError("the relay offers no live rendezvous (or is busy): send with "
                         "--drop, or --to a contact, to leave a dead drop", e.status) \
            from None


async def _send_by_code(ctx: Context, entries: list[SourceEntry], text: str | None) -> int:
    args = ctx.args
    asked = args.wait if args.wait is not None else ctx.settings.code_wait
    if args.drop and asked <= 0:
        return await _send_drop_code(ctx, entries, text)
    start = await _start_live(ctx, fallback=args.drop)
    if start is None:
        return await _send_drop_code(ctx, entries, text)
    # Never longer than the relay keeps the channel: a code is useless after that.
    wait = effective_wait(ctx.reactor, start, asked)
    ctx.say(f"Sending {_summary(entries, text)}.")
    show_code(ctx, "Code phrase", start.code)
    ctx.say(f"On the other machine run `relay receive` and type the code; it works once, "
            f"{_wait_note(asked, wait)}.")
    bar = ctx.progress_bar("send")
    try:
        await run_live_send(ctx.reactor, start, entries, text=text, wait=wait, progress=bar,
                            limit_rate=args.limit_rate, interruption=ctx.interruption,
                            on_connected=lambda: ctx.say("Connected; sending..."))
    except RecordError as e:
        raise TransferError(f"the transfer was cut ({e}); send the same paths again (a new "
                            f"code) to resume where it stopped") from None
    except NobodyCame:
        if not args.drop:
            raise NobodyCame(f"nobody came within {_duration(wait)}; send again for a new "
                             f"code (or add --drop to leave it on the relay)") from None
        ctx.say(f"Nobody came within {_duration(wait)}: leaving it as a dead drop instead.")
        return await _send_drop_code(ctx, entries, text)
    finally:
        bar.finish()
    ctx.say("Sent and verified by the receiver.")
    return 0


def _duration(seconds: float) -> str:
    return f"{round(seconds) if seconds >= 10 else round(seconds, 1):g} s"


def _wait_note(asked: float, wait: float) -> str:
    """For how long the code works, and why not as long as asked, if it is shorter."""
    if wait < asked - 0.5:
        return (f"for {_duration(wait)} (the relay keeps a code that long; "
                f"--wait {asked:g} cannot make it longer)")
    return f"for {_duration(wait)}"


async def _send_drop_code(ctx: Context, entries: list[SourceEntry], text: str | None) -> int:
    drop_code = codes.make_drop_code()
    drop_sender, drop_recipient = codes.drop_identities(drop_code)
    client = ctx.mailbox(drop_sender)
    bar = ctx.progress_bar("drop")
    try:
        with _spooled(entries) as files:
            await send_drop(client, drop_sender, bytes(drop_recipient.public_key), files,
                            text=text, progress=bar)
    finally:
        bar.finish()
    ctx.say(f"Left {_summary(entries, text)} on the relay.")
    show_code(ctx, "Drop code", drop_code)
    ctx.say("Give the recipient this drop code; `relay receive` and the code collect it "
            "(once).")
    return 0


async def _send_to_contact(ctx: Context, contact: Contact, entries: list[SourceEntry],
                           text: str | None) -> int:
    args = ctx.args
    identity = ctx.identity()
    asked = args.wait if args.wait is not None else ctx.settings.offer_wait
    client = ctx.mailbox(identity.private_key)
    start = await _start_live(ctx, fallback=True) if asked > 0 else None
    if start is not None:
        wait = effective_wait(ctx.reactor, start, asked)
        offer = {"type": OFFER_TYPE, "version": FORMAT_VERSION, "code": start.code,
                 "expires": time.time() + wait, "summary": _summary(entries, text)}
        await send_json(client, identity.private_key, contact.public_key, offer, time.time())
        ctx.say(f"Offered {_summary(entries, text)} to {contact.name}; waiting "
                f"{_wait_note(asked, wait)} for their client to take it live...")
        bar = ctx.progress_bar("send")
        try:
            await run_live_send(ctx.reactor, start, entries, text=text, wait=wait,
                                progress=bar, limit_rate=args.limit_rate,
                                interruption=ctx.interruption,
                                on_connected=lambda: ctx.say("Connected; sending..."))
            ctx.say(f"Sent live to {contact.name} and verified.")
            return 0
        except NobodyCame:
            ctx.say(f"{contact.name} did not take it within {_duration(wait)}: leaving it as "
                    f"a dead drop.")
        finally:
            bar.finish()
    bar = ctx.progress_bar("drop")
    try:
        with _spooled(entries) as files:
            await send_drop(client, identity.private_key, contact.public_key, files,
                            text=text, progress=bar)
    finally:
        bar.finish()
    ctx.say(f"Left {_summary(entries, text)} in {contact.name}'s mailbox; "
            f"`relay receive` on their side collects it.")
    return 0


async def cmd_message(ctx: Context) -> int:
    args = ctx.args
    contact = ctx.contacts().get(args.to)
    text = " ".join(args.text)
    if text == STDIN:
        text = ctx.stdin.read(MAX_TEXT + 1)
    if not text:
        raise UsageError("the message is empty")
    _check_text(text)
    identity = ctx.identity()
    client = ctx.mailbox(identity.private_key)
    payload = box_text(identity.private_key, contact.public_key, text, time.time())
    await client.upload(h2(contact.public_key), payload)
    ctx.say(f"Message left for {contact.name}.")
    return 0

