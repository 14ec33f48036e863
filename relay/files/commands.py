"""The file commands: startFileUpload, uploadFileChunk, fileStatus, downloadFileChunk,
deleteFile, on the wire exactly as Zax answers them (see docs zax-wire.md).

Sender and recipient may both ask for a file's status, download and delete it; only the
sender uploads. To anyone else a file does not exist (NOT_FOUND), as in Zax.
"""

from __future__ import annotations

import json
import os

from twisted.logger import Logger

from relay.config import RelayConfig
from relay.crypto import b64encode
from relay.files.codec import ChunkEncodingError, decode_chunk, encode_chunk
from relay.files.ids import UploadIds, file_id
from relay.files.limits import (
    PART_OVERHEAD,
    initial_reservation,
    max_charge,
    max_parts,
    part_charge,
)
from relay.mailbox.commands import CommandContext, CommandProcessor
from relay.mailbox.fields import b64_field, b64_value, bool_field, int_field
from relay.mailbox.messages import MAX_ID_BYTES, message_record, storage_token
from relay.mailbox.resource import log_id
from relay.store import Store
from relay.store.errors import StoreFull
from relay.store.interfaces.files import (
    ChunkStore,
    FileCaps,
    FileRecord,
    PartInfo,
    PutOutcome,
    PutRequest,
)
from relay.store.quota import MessageQuota
from relay.web.errors import HTTPError, bad_request

log = Logger(namespace="relay.files")

# Part numbers on the wire; the real bound is per file (limits.max_parts).
MAX_PART_NUMBER = 2**31 - 1
# The chunk's secretbox nonce is 24 bytes for every known client; allow some slack.
MAX_CHUNK_NONCE_BYTES = 64
BLOB_ID_BYTES = 8
# metadata.nonce in base64 characters, at least (Zax: a 24-byte nonce is 32).
MIN_METADATA_NONCE_CHARS = 32
_NOT_FOUND = {"status": "NOT_FOUND"}
# Bytes secretbox adds to a chunk (its MAC).
SECRETBOX_OVERHEAD = 16


class FileCommands:
    def __init__(self, config: RelayConfig, store: Store, chunks: ChunkStore) -> None:
        self.config = config
        self.files_config = config.files
        self.store = store
        self.chunks = chunks
        self.ids = UploadIds(config.files)
        # The file's offer message is a message like any other: the sender's and the
        # client's message quotas pay for it too.
        self.offer_quota = MessageQuota.from_config(config.mailbox)
        f = config.files
        self.caps = FileCaps(
            sender_bytes=f.mailbox_max_bytes, client_bytes=f.client_max_bytes,
            total_bytes=f.total_max_bytes, sender_reserved=f.max_open_reservation_per_sender,
            client_reserved=f.max_open_reservation_per_client,
            total_reserved=f.max_open_reservation_total, window=f.reservation_window)

    def register(self, processor: CommandProcessor) -> None:
        processor.register("startFileUpload", self.start_file_upload)
        processor.register("uploadFileChunk", self.upload_file_chunk, extra_line=True)
        processor.register("fileStatus", self.file_status)
        processor.register("downloadFileChunk", self.download_file_chunk)
        processor.register("deleteFile", self.delete_file)

    # -- helpers ----------------------------------------------------------------------------

    async def _find(self, ctx: CommandContext, part: int | None = None,
                    all_parts: bool = False) -> tuple[bytes, FileRecord | None]:
        """(file_id, the record if ctx's identity is its sender or recipient)."""
        upload_id = b64_field(ctx.data, "uploadID", 32)
        fid = file_id(upload_id)
        record = await self.store.files.get(fid, part=part, all_parts=all_parts)
        if record is None or ctx.hpk not in (record.sender, record.recipient):
            return fid, None
        return fid, record

    def _lifetimes(self, now: float, expires_at: float) -> tuple[float, float]:
        """(ttl while incomplete, ttl once complete) from now. A file lives file_ttl from
        its start, but an abandoned upload (no chunk for incomplete_upload_ttl) is dropped
        sooner, so it does not hold what it stored for days. (Its reservation lapses much
        sooner still: stalled_upload_ttl, applied by the store.)"""
        complete = expires_at - now
        return min(complete, self.files_config.incomplete_upload_ttl), complete

    # -- commands ---------------------------------------------------------------------------

    async def start_file_upload(self, ctx: CommandContext) -> list[str]:
        recipient = b64_field(ctx.data, "to", 32)
        file_size = int_field(ctx.data, "file_size", minimum=1,
                              maximum=self.files_config.max_file_size)
        metadata = ctx.data.get("metadata")
        if not isinstance(metadata, dict):
            raise bad_request("metadata must be an object with ctext and nonce")
        nonce_text = metadata.get("nonce")
        if not isinstance(nonce_text, str) or len(nonce_text) < MIN_METADATA_NONCE_CHARS:
            # Zax's check: the id of the file's message is a nonce, not a short label.
            raise bad_request(f"metadata.nonce must be {MIN_METADATA_NONCE_CHARS} or more "
                              "base64 characters")
        msg_id = b64_field(metadata, "nonce", max_length=MAX_ID_BYTES)
        ctext = metadata.get("ctext")
        # Any size here: the record size check below answers 413 for one too large.
        b64_value(ctext, "metadata.ctext", max_length=self.config.http.max_command_body)
        upload_id = self.ids.upload_id(ctx.hpk, recipient, msg_id)
        upload_b64 = b64encode(upload_id)
        # What glow.ts reads: data is the JSON *string* of {ctext, nonce, uploadID}.
        data = json.dumps({"ctext": ctext, "nonce": metadata["nonce"], "uploadID": upload_b64},
                          separators=(",", ":"))
        now = ctx.clock.seconds()
        record_bytes = message_record(data, now, ctx.hpk, msg_id, kind="file")
        if len(record_bytes) > self.config.mailbox.max_message_size:
            raise HTTPError(413, "file metadata too large")
        fid = file_id(upload_id)
        expires_at = now + self.files_config.file_ttl
        incomplete_ttl, _ = self._lifetimes(now, expires_at)
        block = self.files_config.charge_block_size
        new = FileRecord(file_id=fid, sender=ctx.hpk, recipient=recipient,
                         file_size=file_size, expires_at=expires_at, client=ctx.client,
                         max_charge=max_charge(file_size, block),
                         reserved=initial_reservation(file_size, block,
                                                      self.files_config.reservation_window))
        # Until its first part, a file holds nothing but its reservation: it goes when that
        # lapses, so records that cost nothing cannot pile up.
        stall = self.files_config.stalled_upload_ttl
        record, created = await self.store.files.create(new, min(incomplete_ttl, stall), stall,
                                                        self.caps)
        if not created and record.file_size != file_size:
            raise bad_request("a file with this metadata nonce exists with another size")
        token = storage_token(b64encode(recipient), msg_id)
        try:
            await self.store.mailbox.store_message(
                recipient, msg_id, record_bytes, token, self.files_config.file_ttl,
                self.offer_quota, sender=ctx.hpk, client=ctx.client)
        except BaseException:
            if created:  # a file its recipient can never learn of must not hold quota
                await self.store.files.delete(fid)
            raise
        log.info("file {file} started: {size} bytes", file=log_id(fid), size=file_size)
        return ctx.encrypted({"uploadID": upload_b64,
                              "max_chunk_size": self.files_config.max_chunk_size,
                              "storage_token": b64encode(token)})

    async def upload_file_chunk(self, ctx: CommandContext) -> list[str]:
        part = int_field(ctx.data, "part", minimum=0, maximum=MAX_PART_NUMBER)
        nonce = b64_field(ctx.data, "nonce", max_length=MAX_CHUNK_NONCE_BYTES)
        last = bool_field(ctx.data, "last_chunk")
        chunk = self._chunk_line(ctx)
        fid, record = await self._find(ctx)
        if record is None:
            return ctx.encrypted(_NOT_FOUND)
        if ctx.hpk != record.sender:
            raise bad_request("only the sender uploads chunks")
        # The client numbers the parts and cuts them as it likes (Zax): only their count
        # (and so the part numbers) and their bytes in all are bounded by the file's size.
        limit = max_parts(record.file_size, self.files_config.max_parts_per_file)
        if part >= limit:
            raise bad_request(f"part must be below {limit} for this file")
        incomplete_ttl, complete_ttl = self._lifetimes(ctx.clock.seconds(), record.expires_at)
        if complete_ttl <= 0:
            return ctx.encrypted(_NOT_FOUND)
        blob = os.urandom(BLOB_ID_BYTES)
        # The chunk goes in first, under a new name; the record then points at it in one
        # atomic step. A failure in between leaves an orphan chunk, never a bad record.
        await self.chunks.write(fid, part, blob, chunk, complete_ttl)
        request = PutRequest(
            part=part, info=PartInfo(len(chunk), nonce, blob),
            charge=part_charge(len(chunk), self.files_config.charge_block_size), last=last,
            max_parts=limit, max_bytes=record.file_size,
            ttl=incomplete_ttl, complete_ttl=complete_ttl,
            stall_ttl=self.files_config.stalled_upload_ttl, caps=self.caps,
            part_overhead=PART_OVERHEAD)
        try:
            outcome, replaced = await self.store.files.put_part(fid, request)
        except BaseException:
            await self.chunks.remove(fid, part, blob)
            raise
        if outcome != PutOutcome.OK:
            await self.chunks.remove(fid, part, blob)
            if outcome == PutOutcome.NOT_FOUND:  # deleted or expired meanwhile
                return ctx.encrypted(_NOT_FOUND)
            if outcome == PutOutcome.TOO_MANY_BYTES:
                raise bad_request(f"the chunks would exceed the declared file_size plus "
                                  f"{PART_OVERHEAD} bytes a part")
            if outcome == PutOutcome.FULL:  # 507: the sender may retry once there is room
                raise StoreFull("file storage quota used up")
            raise bad_request("part is beyond the file's last part or the part limit")
        if replaced is not None:
            await self.chunks.remove(fid, part, replaced.blob)
        return ctx.encrypted({"status": "OK"})

    def _chunk_line(self, ctx: CommandContext) -> bytes:
        line = ctx.extra_line
        if not line:
            raise bad_request("uploadFileChunk needs the chunk as a 4th line")
        # A client that cuts its plaintext at max_chunk_size (as glow.ts's callers may) sends
        # chunks larger by secretbox's 16-byte MAC: accept those rather than fail them.
        max_size = self.files_config.max_chunk_size + SECRETBOX_OVERHEAD
        # Refuse by length first: no decoding of something that cannot fit.
        if len(line) > 4 * ((max_size + 2) // 3):
            raise HTTPError(413, f"chunk larger than max_chunk_size {max_size}")
        try:
            chunk = decode_chunk(line)
        except ChunkEncodingError as e:
            raise bad_request(f"chunk: {e}") from None
        if not 0 < len(chunk) <= max_size:
            raise HTTPError(413, f"chunk must be 1 to {max_size} bytes")
        return chunk

    async def file_status(self, ctx: CommandContext) -> list[str]:
        _, record = await self._find(ctx)
        if record is None:
            return ctx.encrypted({"status": "NOT_FOUND", "file_size": 0, "bytes_stored": 0,
                                  "total_chunks": 0})
        return ctx.encrypted({"status": record.status, "file_size": record.file_size,
                              "bytes_stored": record.bytes_stored,
                              "total_chunks": record.part_count,
                              "hpk_from": b64encode(record.sender),
                              "hpk_to": b64encode(record.recipient)})

    async def download_file_chunk(self, ctx: CommandContext) -> list[str]:
        part = int_field(ctx.data, "part", minimum=0, maximum=MAX_PART_NUMBER)
        fid, record = await self._find(ctx, part=part)
        if record is None:
            return ctx.encrypted(_NOT_FOUND)
        info = record.parts.get(part)
        if info is None:
            raise bad_request(f"part {part} is not stored")
        chunk = await self.chunks.read(fid, part, info.blob)
        if chunk is None:
            # Recorded but gone (deleted or re-sent meanwhile, or lost on disk).
            return ctx.encrypted(_NOT_FOUND)
        # The chunk line stays bytes: join_lines takes them as they are, no str round trip.
        return ctx.encrypted({"nonce": b64encode(info.nonce)}, encode_chunk(chunk))  # type: ignore[arg-type]

    async def delete_file(self, ctx: CommandContext) -> list[str]:
        fid, record = await self._find(ctx)
        if record is None:
            return ctx.encrypted(_NOT_FOUND)
        removed = await self.store.files.delete(fid)
        if removed is None:
            return ctx.encrypted(_NOT_FOUND)
        await self.chunks.remove_file(fid, removed)
        log.info("file {file} deleted", file=log_id(fid))
        return ctx.encrypted({"status": "OK"})

