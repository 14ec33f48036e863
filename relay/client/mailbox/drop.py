"""Dead drops: files left in a recipient's mailbox through the file API, collected later.

Sending (`send_drop`), as the seed paper's section 3.4 describes and glow.ts does: for each
non-empty file, a fresh secretbox key `skey`; the metadata {name, orig_size, skey, md5,
created, modified, attrs} (plus our sha256 and drop id) boxed sender -> recipient in
startFileUpload; then the file in chunks of max_chunk_size - 16 bytes, each in secretbox
under skey with a random nonce. Last, a boxed `relay-drop` manifest message lists every
entry (folders and empty files too, which the file API cannot carry) with the uploadIDs;
it goes last so that a receiver that sees the manifest knows every file is complete.

Chunks go up and come down with up to CHUNKS_IN_FLIGHT requests at a time (the relay takes
the parts of an upload in any order; a download is written in order as the parts arrive),
so a transfer is not one round trip per chunk.

Collecting (`Collector`): a drop is taken only once its manifest is complete; every name is
checked (relay/client/safe_paths.py) and every target cleared against the overwrite policy
before anything is written; each file is written to a hidden partial file, its chunks opened
with skey, its size, SHA-256 (and MD5 when given) verified, and only then renamed into
place. A file notice with no drop id (glow.ts sends those) is collected on its own, checked
the same way. Only what was written and verified is deleted from the relay.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.secret import SecretBox
from twisted.internet.defer import Deferred

from relay.client.errors import (
    FileNotFoundOnRelay,
    RelayError,
    TransferError,
    VerificationError,
)
from relay.client.live.protocol import Progress, SourceEntry, partial_path
from relay.client.mailbox.client import MAX_DELETE_IDS, MailboxClient
from relay.client.mailbox.inbox import DROP_TYPE, FORMAT_VERSION, Item, send_json
from relay.client.safe_paths import (
    DEFAULT_LIMITS,
    Overwrite,
    ReceiveLimits,
    check_offer_names,
    may_write,
    printable_name,
    target_path,
)
from relay.crypto import EncodingError, b64decode, b64encode, h2, make_nonce

SECRETBOX_OVERHEAD = SecretBox.MACBYTES
# Manifest entries per message: a message is capped at 256 KiB by default and an entry is
# about 200 bytes of JSON (boxed and base64'd: x1.4).
ENTRIES_PER_MANIFEST = 400
MAX_MANIFEST_PARTS = 1000
DEFAULT_FILE_MODE = 0o644
_READ = 1024 * 1024
# Chunk requests in flight per file, each way: enough to hide a round trip, few enough to
# keep memory (about this many chunks, 500 KiB each) and the relay's load small.
CHUNKS_IN_FLIGHT = 4
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_DROP_ID = re.compile(r"[A-Za-z0-9+/=]{1,64}")


# ---- sending -------------------------------------------------------------------------------

@attrs.frozen
class DropSent:
    drop_id: str
    files: int
    bytes: int


def _hash_file(path: Path) -> tuple[int, str, str]:
    """(size, md5 hex, sha256 hex) of the file as it is now."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_READ):
            md5.update(block)
            sha.update(block)
            size += len(block)
    return size, md5.hexdigest(), sha.hexdigest()


async def send_drop(client: MailboxClient, sender: PrivateKey, recipient_pk: bytes,
                    entries: list[SourceEntry], *, text: str | None = None,
                    progress: Progress | None = None,
                    now: Callable[[], float] = time.time) -> DropSent:
    """Leave entries (and an optional text) in recipient_pk's mailbox."""
    box = Box(sender, PublicKey(recipient_pk))
    to_hpk = h2(recipient_pk)
    drop_id = b64encode(os.urandom(16))
    total = sum(e.size for e in entries)
    done = 0
    manifest: list[dict[str, Any]] = []
    uploaded: list[str] = []
    try:
        for entry in entries:
            item: dict[str, Any] = {"name": entry.name, "dir": entry.is_dir,
                                    "size": entry.size, "mode": entry.mode}
            if not entry.is_dir:
                assert entry.path is not None
                try:
                    size, md5, sha = _hash_file(entry.path)
                    info = os.stat(entry.path)
                except OSError as e:
                    raise TransferError(f"cannot read {printable_name(str(entry.path))}: "
                                        f"{e.strerror}") from None
                if size != entry.size:
                    raise TransferError(f"{printable_name(entry.name)} changed while sending")
                item["sha256"] = sha
                if size:
                    metadata = {"name": entry.name, "orig_size": size, "md5": md5,
                                "created": int(info.st_ctime), "modified": int(info.st_mtime),
                                "attrs": f"{entry.mode:o}", "sha256": sha, "drop": drop_id}

                    def report(sent: int, base: int = done, name: str = entry.name) -> None:
                        if progress is not None:
                            progress(name, base + sent, total)

                    upload_id = await _upload_file(client, box, to_hpk, entry.path, metadata,
                                                   uploaded, now, report)
                    done += size
                    item["upload"] = upload_id
            manifest.append(item)
        parts = [manifest[i:i + ENTRIES_PER_MANIFEST]
                 for i in range(0, len(manifest), ENTRIES_PER_MANIFEST)] or [[]]
        for number, part in enumerate(parts):
            value: dict[str, Any] = {"type": DROP_TYPE, "version": FORMAT_VERSION,
                                     "drop": drop_id, "part": number, "parts": len(parts),
                                     "entries": part}
            if number == 0 and text is not None:
                value["text"] = text
            await send_json(client, sender, recipient_pk, value, now())
    except BaseException:
        # Without its manifest the drop is never collected: give back the relay's space.
        for upload_id in uploaded:
            try:
                await client.delete_file(upload_id)
            except Exception:  # noqa: BLE001 - best effort; the relay expires it anyway
                pass
        raise
    return DropSent(drop_id, sum(1 for e in entries if not e.is_dir), total)


async def _upload_file(client: MailboxClient, box: Box, to_hpk: bytes, path: Path,
                       metadata: dict[str, Any], uploaded: list[str],
                       now: Callable[[], float], progress: Callable[[int], Any]) -> str:
    skey = os.urandom(SecretBox.KEY_SIZE)
    metadata = {**metadata, "skey": b64encode(skey)}
    nonce = make_nonce(now())
    ctext = box.encrypt(json.dumps(metadata, separators=(",", ":")).encode("utf-8"),
                        nonce).ciphertext
    size = metadata["orig_size"]
    started = await client.start_file_upload(
        to_hpk, size, {"ctext": b64encode(ctext), "nonce": b64encode(nonce)})
    uploaded.append(started.upload_id)
    chunk_size = started.max_chunk_size - SECRETBOX_OVERHEAD
    if chunk_size <= 0:
        raise RelayError("startFileUpload: the relay's max_chunk_size is too small")
    secretbox = SecretBox(skey)
    sent = 0
    part = 0
    in_flight: deque[tuple[Deferred[None], int]] = deque()  # (upload, bytes sent with it)
    try:
        with open(path, "rb") as f:
            while sent < size:
                block = f.read(min(chunk_size, size - sent))
                if not block:
                    raise TransferError(f"{printable_name(str(path))} shrank while sending")
                sealed = secretbox.encrypt(block)
                sent += len(block)
                in_flight.append((Deferred.fromCoroutine(client.upload_file_chunk(
                    started.upload_id, part, sealed.nonce, sealed.ciphertext,
                    last_chunk=sent >= size)), sent))
                part += 1
                if len(in_flight) >= CHUNKS_IN_FLIGHT:
                    await _oldest_done(in_flight, progress)
            while in_flight:
                await _oldest_done(in_flight, progress)
    except OSError as e:
        raise TransferError(f"cannot read {printable_name(str(path))}: {e.strerror}") from None
    finally:
        _abandon(request for request, _ in in_flight)
    return started.upload_id


async def _oldest_done(in_flight: deque[tuple[Deferred[None], int]],
                       progress: Callable[[int], Any]) -> None:
    request, sent = in_flight.popleft()
    await request
    progress(sent)


def _abandon(requests: Any) -> None:
    """Cancel requests nobody will wait for, and keep their failures out of the log."""
    for request in list(requests):
        request.addErrback(lambda _failure: None)
        request.cancel()


# ---- collecting ----------------------------------------------------------------------------

@attrs.frozen
class DropGroup:
    """The messages of one drop: its manifest parts (maybe not all yet) and file notices."""

    drop_id: str
    sender_hpk: bytes
    manifests: list[Item]
    notices: dict[str, Item]

    @property
    def complete(self) -> bool:
        parts = {m.value["part"] for m in self.manifests}  # type: ignore[index]
        wanted = self.manifests[0].value["parts"] if self.manifests else None  # type: ignore[index]
        return isinstance(wanted, int) and parts == set(range(wanted))

    @property
    def text(self) -> str | None:
        for item in self.manifests:
            assert item.value is not None
            if isinstance(item.value.get("text"), str):
                return item.value["text"]
        return None

    def entries(self) -> list[dict[str, Any]]:
        ordered = sorted(self.manifests, key=lambda m: m.value["part"])  # type: ignore[index]
        result: list[dict[str, Any]] = []
        for item in ordered:
            assert item.value is not None
            result += item.value["entries"]
        return result

    @property
    def message_ids(self) -> list[bytes]:
        return [m.msg_id for m in self.manifests] + [n.msg_id for n in self.notices.values()]


def group_drops(items: list[Item]) -> tuple[list[DropGroup], list[Item]]:
    """(drops, standalone file notices) among the items; malformed manifests are left out."""
    groups: dict[tuple[bytes, str], DropGroup] = {}
    standalone = []

    def group(sender: bytes, drop_id: str) -> DropGroup:
        key = (sender, drop_id)
        if key not in groups:
            groups[key] = DropGroup(drop_id, sender, [], {})
        return groups[key]

    for item in items:
        if item.kind == "drop" and _manifest_ok(item.value):
            assert item.value is not None
            group(item.sender_hpk, item.value["drop"]).manifests.append(item)
        elif item.kind == "file" and item.value is not None:
            drop_id = item.value.get("drop")
            if isinstance(drop_id, str) and _DROP_ID.fullmatch(drop_id):
                assert item.upload_id is not None
                group(item.sender_hpk, drop_id).notices[item.upload_id] = item
            else:
                standalone.append(item)
    return list(groups.values()), standalone


def _manifest_ok(value: dict[str, Any] | None) -> bool:
    if value is None:
        return False
    parts, part = value.get("parts"), value.get("part")
    return (isinstance(value.get("drop"), str) and bool(_DROP_ID.fullmatch(value["drop"]))
            and _small_int(parts, 1, MAX_MANIFEST_PARTS) and _small_int(part, 0, parts - 1)
            and isinstance(value.get("entries"), list)
            and all(isinstance(e, dict) for e in value["entries"]))


def _small_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


@attrs.frozen
class Collected:
    files: list[Path]
    folders: list[Path]
    text: str | None
    bytes: int


@attrs.define
class _Planned:
    parts: tuple[str, ...]
    is_dir: bool
    size: int
    mode: int
    target: Path
    sha256: str | None = None
    md5: str | None = None
    upload_id: str | None = None
    skey: bytes | None = None
    modified: float | None = None


class Collector:
    """Writes drops and standalone files from a mailbox into root, verified, then deletes
    them from the relay."""

    def __init__(self, client: MailboxClient, root: Path, *,
                 limits: ReceiveLimits = DEFAULT_LIMITS, overwrite: Overwrite = Overwrite.NEVER,
                 ask: Callable[[str], bool] | None = None,
                 progress: Progress | None = None) -> None:
        self.client = client
        self.root = root
        self.limits = limits
        self.overwrite = overwrite
        self.ask = ask
        self.progress = progress

    async def collect_drop(self, group: DropGroup) -> Collected:
        if not group.complete:
            raise TransferError("the drop is still arriving (its manifest is incomplete)")
        raw = group.entries()
        triples = []
        for entry in raw:
            is_dir = entry.get("dir")
            size = entry.get("size", 0)
            mode = entry.get("mode")
            if not isinstance(is_dir, bool) or not _small_int(mode, 0, 0o7777):
                raise TransferError("the drop's manifest has a malformed entry")
            triples.append((entry.get("name"), is_dir, 0 if is_dir else size))
        all_parts = check_offer_names(triples, self.limits)
        planned = []
        for parts, (name, is_dir, size), entry in zip(all_parts, triples, raw, strict=True):
            item = _Planned(parts, is_dir, size, entry["mode"] & 0o777,
                            target_path(self.root, parts, create_parents=False))
            if not is_dir:
                item.sha256 = entry.get("sha256")
                if not isinstance(item.sha256, str) or not _HEX64.fullmatch(item.sha256):
                    raise TransferError(f"{printable_name(name)}: no SHA-256 in the manifest")
                if size:
                    self._attach_notice(item, name, entry.get("upload"), group)
            planned.append(item)
        await self._write_all(planned)
        await self._delete(planned, group.message_ids)
        return Collected([p.target for p in planned if not p.is_dir],
                         [p.target for p in planned if p.is_dir], group.text,
                         sum(p.size for p in planned))

    def _attach_notice(self, item: _Planned, name: str, upload_id: Any,
                       group: DropGroup) -> None:
        notice = group.notices.get(upload_id) if isinstance(upload_id, str) else None
        if notice is None or notice.value is None:
            raise TransferError(f"{printable_name(name)}: its file notice is missing")
        metadata = notice.value
        if metadata.get("name") != name or metadata.get("orig_size") != item.size \
                or metadata.get("sha256") != item.sha256:
            raise VerificationError(f"{printable_name(name)}: the file notice does not match "
                                    f"the drop's manifest")
        self._fill_from_metadata(item, upload_id, metadata)

    @staticmethod
    def _fill_from_metadata(item: _Planned, upload_id: str, metadata: dict[str, Any]) -> None:
        item.upload_id = upload_id
        try:
            item.skey = b64decode(metadata.get("skey", ""), SecretBox.KEY_SIZE)
        except (EncodingError, TypeError):
            raise VerificationError("a file notice has no valid skey") from None
        md5 = metadata.get("md5")
        if isinstance(md5, str) and _HEX32.fullmatch(md5.lower()):
            item.md5 = md5.lower()
        modified = metadata.get("modified")
        if isinstance(modified, int | float) and not isinstance(modified, bool) and modified > 0:
            # JavaScript clients may give milliseconds.
            item.modified = modified / 1000 if modified > 1e11 else float(modified)

    async def collect_file(self, notice: Item) -> Collected:
        """A file notice that is not part of a drop (as glow.ts sends them)."""
        metadata = notice.value or {}
        name, size = metadata.get("name"), metadata.get("orig_size")
        (parts,) = check_offer_names([(name, False, size)], self.limits)
        mode = _mode_from_attrs(metadata.get("attrs"))
        item = _Planned(parts, False, size, mode,
                        target_path(self.root, parts, create_parents=False))
        assert notice.upload_id is not None
        self._fill_from_metadata(item, notice.upload_id, metadata)
        await self._write_all([item])
        await self._delete([item], [notice.msg_id])
        return Collected([item.target], [], None, size)

    async def _write_all(self, planned: list[_Planned]) -> None:
        for item in planned:  # every refusal before anything is written
            if item.is_dir:
                if os.path.lexists(item.target) and not os.path.isdir(item.target):
                    raise TransferError(f"{printable_name(str(item.target))} exists and is "
                                        f"not a folder")
            elif not may_write(item.target, self.overwrite, self.ask):
                raise TransferError(f"{printable_name(str(item.target))} exists; not "
                                    f"overwriting (see --overwrite)")
        created = []
        for item in planned:
            if item.is_dir:
                target_path(self.root, item.parts, create_parents=True)
                if not os.path.isdir(item.target):
                    os.mkdir(item.target, 0o700)
                    created.append(item)
        total = sum(p.size for p in planned)
        done = 0
        new_files = []
        try:
            for item in planned:
                if not item.is_dir:
                    existed = os.path.lexists(item.target)
                    await self._write_file(item, done, total)
                    if not existed:
                        new_files.append(item.target)
                    done += item.size
        except BaseException:
            # All or nothing: the drop stays on the relay, so a retry must not trip over
            # the half of it written this time.
            for path in new_files:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            raise
        for item in sorted(created, key=lambda p: -len(p.parts)):
            os.chmod(item.target, item.mode)

    async def _write_file(self, item: _Planned, done: int, total: int) -> None:
        target_path(self.root, item.parts, create_parents=True)
        partial = partial_path(item.target)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(partial, flags, 0o600)
        sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        written = 0
        name = printable_name("/".join(item.parts))
        try:
            with os.fdopen(fd, "wb") as f:
                if item.size:
                    written = await self._download_into(f, item, sha, md5, done, total)
                f.flush()
                os.fsync(f.fileno())
                os.fchmod(f.fileno(), item.mode)
            if written != item.size:
                raise VerificationError(f"{name}: {written} bytes, {item.size} declared")
            if item.sha256 is not None and sha.hexdigest() != item.sha256:
                raise VerificationError(f"{name}: SHA-256 mismatch")
            if item.md5 is not None and md5.hexdigest() != item.md5:
                raise VerificationError(f"{name}: MD5 mismatch")
            if item.modified is not None:
                os.utime(partial, (item.modified, item.modified))
            target_path(self.root, item.parts, create_parents=False)  # a symlink raced in?
            os.replace(partial, item.target)
        except BaseException:
            try:
                os.unlink(partial)
            except FileNotFoundError:
                pass
            raise

    async def _download_into(self, f: Any, item: _Planned, sha: Any, md5: Any, done: int,
                             total: int) -> int:
        assert item.upload_id is not None and item.skey is not None
        name = printable_name("/".join(item.parts))
        status = await self.client.file_status(item.upload_id)
        if status.get("status") != "COMPLETE":
            raise TransferError(f"{name}: not on the relay completely "
                                f"({printable_name(str(status.get('status')))[:20]})")
        chunks = status.get("total_chunks")
        # Each chunk holds at least one byte: more chunks than bytes is a lie.
        if not _small_int(chunks, 1, item.size):
            raise VerificationError(f"{name}: the relay reports a bad number of chunks")
        secretbox = SecretBox(item.skey)
        written = 0
        in_flight: deque[Deferred[tuple[bytes, bytes]]] = deque()
        next_part = 0
        try:
            for part in range(chunks):
                while next_part < chunks and len(in_flight) < CHUNKS_IN_FLIGHT:
                    in_flight.append(Deferred.fromCoroutine(
                        self.client.download_file_chunk(item.upload_id, next_part)))
                    next_part += 1
                nonce, ciphertext = await in_flight.popleft()
                try:
                    block = secretbox.decrypt(ciphertext, nonce)
                except (CryptoError, ValueError):
                    raise VerificationError(f"{name}: chunk {part} does not decrypt") from None
                if written + len(block) > item.size:
                    raise VerificationError(f"{name}: more data than its declared "
                                            f"{item.size} bytes")
                f.write(block)
                sha.update(block)
                md5.update(block)
                written += len(block)
                if self.progress is not None:
                    self.progress("/".join(item.parts), done + written, total)
        finally:
            _abandon(in_flight)
        return written

    async def _delete(self, planned: list[_Planned], message_ids: list[bytes]) -> None:
        for item in planned:
            if item.upload_id is not None:
                try:
                    await self.client.delete_file(item.upload_id)
                except FileNotFoundOnRelay:
                    pass
        await delete_messages(self.client, message_ids)


async def delete_messages(client: MailboxClient, message_ids: list[bytes]) -> None:
    ids = [i for i in message_ids if len(i) == 24]
    for start in range(0, len(ids), MAX_DELETE_IDS):
        await client.delete(ids[start:start + MAX_DELETE_IDS])


def _mode_from_attrs(attrs_value: Any) -> int:
    """The paper's "chmod-compatible file mode": an octal string ("644") or a number."""
    if isinstance(attrs_value, str) and re.fullmatch(r"0?o?[0-7]{3,4}", attrs_value):
        return int(attrs_value.lstrip("0o") or "0", 8) & 0o777 or DEFAULT_FILE_MODE
    if _small_int(attrs_value, 1, 0o7777):
        return attrs_value & 0o777
    return DEFAULT_FILE_MODE

