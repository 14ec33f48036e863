#!/usr/bin/env python3
"""End-to-end client benchmark: `relay send` -> `relay receive` of a big file through a local
relay, and magic-wormhole through its own local servers as the anchor, in one run.

    bash bench/install_anchors.sh            # once: magic-wormhole in bench/.anchors/venv
    .venv/bin/python bench/e2e_client.py [--size 1G] [--runs 3] [--out DIR]

Both tools move the same file on the same loopback, their runs interleaved (relay, wormhole,
relay, wormhole...) so that both see the same load:
1. the `relay` command through one `twistd relay` (memory store) on free loopback ports: the
   sender reads the file (the kernel reading ahead) and seals AES-256-GCM records; the
   receiver opens them into page-aligned buffers that a disk thread writes with O_DIRECT,
   fsyncs, and renames the file into place (a whole-file SHA-256 only for a resumed file);
2. magic-wormhole (PyPI, its venv from bench/install_anchors.sh, or --anchors BIN): a local
   mailbox server and transit relay, `wormhole send --no-listen` and `wormhole receive`
   with the code on the command line, so the bytes go through the transit relay as ours go
   through the staple (no direct connection).
For each run: MB/s (10^6 bytes per second over the receiver's whole run: process start, key
exchange, transfer, fsync), CPU seconds (user + sys, from wait4) of each end, per GiB too,
their peak RSS, and the CPU of the relay in between. Each run is followed by a 1 MiB
transfer of the same tool: each end's fixed cost (start-up, key exchange), and from it the
CPU per GiB beyond that fixed cost. CPU seconds, not wall time, are what a
shared machine measures fairly. Prints a markdown table, each end's range against the goal
and the ratios to magic-wormhole, and appends JSON lines to OUT/e2e.jsonl. --no-anchor
skips magic-wormhole.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
GIB = 2**30
RELAY_CODE_LINE = re.compile(r"Code phrase: (\S+)")
WORMHOLE_APPID = "lothar.com/wormhole/text-or-file-xfer"
UNITS = {"k": 2**10, "m": 2**20, "g": 2**30}
SMALL = 2**20  # the transfer that measures each end's fixed cost
GOAL_CPU_S_PER_GIB = 1.5  # per end, start-up included (docs/performance.md)


def parse_size(text: str) -> int:
    text = text.strip().lower()
    return int(text[:-1]) * UNITS[text[-1]] if text[-1] in UNITS else int(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"a server exited early ({process.args[:3]})")
        try:
            socket.create_connection((HOST, port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def venv_tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def compile_client() -> None:
    """Compile the relay package's bytecode, as `pip install` does: an editable checkout run
    with PYTHONDONTWRITEBYTECODE set (as some machines are) would otherwise compile every
    module of the client at each start, about 0.07 CPU-s per end that no installed copy
    pays. magic-wormhole, installed by pip, has its bytecode already."""
    subprocess.run([venv_tool("python"), "-m", "compileall", "-q", str(HERE.parent / "relay")],
                   check=True, stdout=subprocess.DEVNULL)


def write_file(path: Path, size: int) -> str:
    """size incompressible bytes (a fresh SHA-256 head per MiB); their SHA-256."""
    block = os.urandom(2**20)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        written, counter = 0, 0
        while written < size:
            head = hashlib.sha256(counter.to_bytes(8, "big")).digest()
            piece = (head + block[32:])[:size - written]
            f.write(piece)
            digest.update(piece)
            written += len(piece)
            counter += 1
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(2**20):
            digest.update(block)
    return digest.hexdigest()


class Server:
    """A twistd server on a free loopback port, logging into the work folder."""

    def __init__(self, twistd: str, plugin_args: list[str], port: int, log: Path,
                 cwd: Path) -> None:
        self.port = port
        self.process = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "--logfile", str(log), *plugin_args], cwd=cwd,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, self.process)
        except RuntimeError:
            self.stop()
            raise

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_relay(workdir: Path) -> tuple[Server, str]:
    http, staple = free_port(), free_port()
    server = Server(venv_tool("twistd"),
                    ["relay", "--port", f"tcp:{http}:interface={HOST}",
                     "--staple", f"tcp:{staple}:interface={HOST}",
                     "--files-dir", str(workdir / "files")], http, workdir / "relay.log",
                    workdir)
    return server, f"http://{HOST}:{http}"


def start_wormhole_servers(bin_dir: Path, workdir: Path) -> tuple[Server, Server]:
    """magic-wormhole's mailbox server and transit relay, on free loopback ports."""
    twistd = str(bin_dir / "twistd")
    mailbox_port, transit_port = free_port(), free_port()
    mailbox = Server(twistd, ["wormhole-mailbox", "--port",
                              f"tcp:{mailbox_port}:interface={HOST}",
                              "--channel-db", str(workdir / "mailbox-channel.sqlite"),
                              "--usage-db", str(workdir / "mailbox-usage.sqlite")],
                     mailbox_port, workdir / "mailbox.log", workdir)
    try:
        transit = Server(twistd, ["transitrelay", "--port",
                                  f"tcp:{transit_port}:interface={HOST}"],
                         transit_port, workdir / "transit.log", workdir)
    except Exception:
        mailbox.stop()
        raise
    return mailbox, transit


def wait4(process: subprocess.Popen, timeout: float) -> tuple[int, float, int]:
    """(exit code, CPU seconds, peak RSS bytes) of a child, reaped with its own rusage."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024
        time.sleep(0.01)
    process.kill()
    process.wait()
    raise RuntimeError("a client did not finish in time")


def measure(start_sender: Callable[[], subprocess.Popen],
            start_receiver: Callable[[subprocess.Popen], subprocess.Popen],
            servers: list[Server], size: int, received: Path, expected: str) -> dict:
    """Run one transfer; its figures. The receiver's run is the timed part."""
    sender = start_sender()
    try:
        servers_cpu = sum(s.cpu() for s in servers)
        started = time.monotonic()
        receiver = start_receiver(sender)
        code_r, cpu_r, rss_r = wait4(receiver, 900)
        elapsed = time.monotonic() - started
        code_s, cpu_s, rss_s = wait4(sender, 60)
    finally:
        if sender.returncode is None:
            sender.kill()
            sender.wait()
    servers_cpu = sum(s.cpu() for s in servers) - servers_cpu
    if code_r or code_s:
        raise RuntimeError(f"exit codes {code_s} (sender) / {code_r} (receiver)")
    if sha256_of(received) != expected:
        raise RuntimeError("the received file differs")
    return {"bytes": size, "seconds": round(elapsed, 3),
            "mb_per_s": round(size / elapsed / 1e6, 1),
            "sender_cpu_s": round(cpu_s, 2), "receiver_cpu_s": round(cpu_r, 2),
            "sender_cpu_s_per_gib": round(cpu_s * GIB / size, 2),
            "receiver_cpu_s_per_gib": round(cpu_r * GIB / size, 2),
            "sender_peak_rss_mb": round(rss_s / 1e6, 1),
            "receiver_peak_rss_mb": round(rss_r / 1e6, 1),
            "server_cpu_s": round(servers_cpu, 2)}


def with_fixed_cost(big: dict, small: dict) -> dict:
    """big's figures and what each end spent on the small transfer right after it (start-up,
    key exchange: the cost of any transfer), and per GiB beyond that."""
    moved = big["bytes"] - small["bytes"]
    figures = dict(big)
    for end in ("sender", "receiver"):
        fixed = small[f"{end}_cpu_s"]
        figures[f"{end}_fixed_cpu_s"] = fixed
        figures[f"{end}_cpu_s_per_gib_beyond_fixed"] = round(
            (big[f"{end}_cpu_s"] - fixed) * GIB / moved, 2)
    return figures


def wait_for_line(path: Path, pattern: re.Pattern, process: subprocess.Popen,
                  timeout: float = 60) -> re.Match:
    deadline = time.monotonic() + timeout
    while not (match := pattern.search(path.read_text(errors="replace"))):
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"no code from the sender: {path.read_text()[-2000:]}")
        time.sleep(0.01)
    return match


def run_relay(url: str, relay: Server, source: Path, expected: str, workdir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(RELAY_URL=url, RELAY_HOME=str(workdir / "home"))
    out_dir = workdir / "received-relay"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    err = workdir / "relay-send.err"

    def start_sender() -> subprocess.Popen:
        with open(err, "wb") as err_f:
            return subprocess.Popen([venv_tool("relay"), "send", str(source)], env=env,
                                    stdin=subprocess.DEVNULL, stdout=err_f, stderr=err_f)

    def start_receiver(sender: subprocess.Popen) -> subprocess.Popen:
        code = wait_for_line(err, RELAY_CODE_LINE, sender).group(1)
        return subprocess.Popen(
            [venv_tool("relay"), "receive", "--no-mailbox", "-y", "-o", str(out_dir)],
            env=dict(env, RELAY_CODE=code), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=open(workdir / "relay-receive.err", "wb"))

    return measure(start_sender, start_receiver, [relay], source.stat().st_size,
                   out_dir / source.name, expected)


def run_wormhole(bin_dir: Path, mailbox: Server, transit: Server, source: Path,
                 expected: str, workdir: Path, number: int) -> dict:
    out = workdir / "received-wormhole.bin"
    out.unlink(missing_ok=True)
    code = f"{number + 1}-bench-run"
    common = [str(bin_dir / "wormhole"), "--relay-url", f"ws://{HOST}:{mailbox.port}/v1",
              "--transit-helper", f"tcp:{HOST}:{transit.port}", "--appid", WORMHOLE_APPID]
    env = dict(os.environ, HOME=str(workdir / "home"))

    def start_sender() -> subprocess.Popen:
        with open(workdir / "wormhole-send.err", "wb") as err_f:
            return subprocess.Popen([*common, "send", "--no-listen", "--hide-progress",
                                     "--no-qr", "--code", code, str(source)], env=env,
                                    stdin=subprocess.DEVNULL, stdout=err_f, stderr=err_f)

    def start_receiver(_sender: subprocess.Popen) -> subprocess.Popen:
        with open(workdir / "wormhole-receive.err", "wb") as err_f:
            return subprocess.Popen([*common, "receive", "--no-listen", "--hide-progress",
                                     "--accept-file", "--output-file", str(out), code],
                                    env=env, stdin=subprocess.DEVNULL, stdout=err_f,
                                    stderr=err_f)

    return measure(start_sender, start_receiver, [mailbox, transit],
                   source.stat().st_size, out, expected)


def anchors_bin(given: Path | None) -> Path:
    if given is not None:
        return given.absolute()
    result = subprocess.run(["bash", str(HERE / "install_anchors.sh")], check=True,
                            stdout=subprocess.PIPE, text=True)
    return Path(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--anchors", type=Path, default=None,
                        help="magic-wormhole's bin folder (default: bench/install_anchors.sh)")
    parser.add_argument("--no-anchor", action="store_true", help="skip magic-wormhole")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir())
                        / f"bench-e2e-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    size = parse_size(args.size)
    bin_dir = None if args.no_anchor else anchors_bin(args.anchors)
    compile_client()
    results: dict[str, list[dict]] = {"relay": [], "magic-wormhole": []}
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="relay-e2e-bench-") as temp:
        workdir = Path(temp)
        (workdir / "home").mkdir()
        source = workdir / "big.bin"
        expected = write_file(source, size)
        small = workdir / "small.bin"  # its transfer is (nearly) all start-up
        expected_small = write_file(small, SMALL)
        servers: list[Server] = []
        try:
            relay, url = start_relay(workdir)
            servers.append(relay)
            if bin_dir is not None:
                servers.extend(start_wormhole_servers(bin_dir, workdir))
            for number in range(args.runs):
                result = with_fixed_cost(
                    run_relay(url, relay, source, expected, workdir),
                    run_relay(url, relay, small, expected_small, workdir))
                results["relay"].append(result)
                print(f"run {number + 1} relay: {result}", flush=True)
                if bin_dir is not None:
                    result = with_fixed_cost(
                        run_wormhole(bin_dir, servers[1], servers[2], source, expected,
                                     workdir, number),
                        run_wormhole(bin_dir, servers[1], servers[2], small, expected_small,
                                     workdir, args.runs + number))
                    results["magic-wormhole"].append(result)
                    print(f"run {number + 1} magic-wormhole: {result}", flush=True)
        finally:
            for server in servers:
                server.stop()
    load = tuple(max(a, b) for a, b in zip(load, os.getloadavg(), strict=True))
    with open(args.out / "e2e.jsonl", "a") as f:
        for kind, runs in results.items():
            for result in runs:
                f.write(json.dumps({"kind": kind, "size": args.size, **result}) + "\n")
    print(f"\nresults in {args.out}; load average {load[0]:.1f} / {load[1]:.1f} / "
          f"{load[2]:.1f} on {os.cpu_count()} CPUs\n")
    print(f"| {args.size} through local servers (median of {args.runs}) | MB/s | "
          f"sender CPU s/GiB | receiver CPU s/GiB | fixed CPU s send / receive | "
          f"beyond fixed, CPU s/GiB send / receive | sender peak RSS MB | "
          f"receiver peak RSS MB | server CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    labels = {"relay": "`relay send` -> `relay receive`, one relay",
              "magic-wormhole": "magic-wormhole, mailbox server + transit relay"}
    for kind, runs in results.items():
        if not runs:
            continue

        def median(key: str, runs: list[dict] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        print(f"| {labels[kind]} | {median('mb_per_s'):.1f} | "
              f"{median('sender_cpu_s_per_gib'):.2f} | "
              f"{median('receiver_cpu_s_per_gib'):.2f} | "
              f"{median('sender_fixed_cpu_s'):.2f} / {median('receiver_fixed_cpu_s'):.2f} | "
              f"{median('sender_cpu_s_per_gib_beyond_fixed'):.2f} / "
              f"{median('receiver_cpu_s_per_gib_beyond_fixed'):.2f} | "
              f"{median('sender_peak_rss_mb'):.1f} | {median('receiver_peak_rss_mb'):.1f} | "
              f"{median('server_cpu_s'):.2f} |")
    print_comparison(results, size)


def print_comparison(results: dict[str, list[dict]], size: int) -> None:
    """Each end's range over the runs against the goal (under GOAL_CPU_S_PER_GIB for a GiB
    or more, start-up included), and the ratios to magic-wormhole's medians of the same
    run."""
    ours = results["relay"]
    if not ours:
        return
    print()
    for end in ("sender", "receiver"):
        values = [r[f"{end}_cpu_s_per_gib"] for r in ours]
        under = sum(v < GOAL_CPU_S_PER_GIB for v in values)
        goal = (f", {under} of them under the goal of {GOAL_CPU_S_PER_GIB}"
                if size >= GIB else " (the goal is for a GiB or more: start-up dominates)")
        print(f"{end}: {min(values):.2f}-{max(values):.2f} CPU-s per GiB over "
              f"{len(values)} runs{goal}")
    anchor = results["magic-wormhole"]
    if not anchor:
        return

    def ratio(key: str) -> float:
        return (statistics.median(r[key] for r in anchor)
                / statistics.median(r[key] for r in ours))

    print(f"against magic-wormhole in the same run: {ratio('sender_cpu_s_per_gib'):.1f}x less "
          f"CPU at the sender, {ratio('receiver_cpu_s_per_gib'):.1f}x at the receiver, "
          f"{1 / ratio('mb_per_s'):.1f}x its throughput")


if __name__ == "__main__":
    main()
