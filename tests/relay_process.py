"""A real `twistd relay` process on free loopback ports, for tests about processes and the
network (kill -9, Redis outages, real clients). Always stopped by the fixture that made it."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

_START_TIMEOUT = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def twistd_command() -> list[str]:
    """twistd of the interpreter running the tests (the venv's, with relay installed)."""
    twistd = Path(sys.executable).with_name("twistd")
    return [str(twistd)] if twistd.exists() else [sys.executable, "-m", "twisted"]


class RelayProcess:
    """`twistd -n relay ARGS` with --port (and --staple) chosen here; restartable."""

    def __init__(self, workdir: Path, args: list[str], *, staple: bool = False) -> None:
        self.workdir = workdir
        self.args = args
        self.staple = staple
        self.port: int | None = None
        self.staple_port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log_path = workdir / "relay.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start on free ports (the same ports again after a stop); retry if one was taken."""
        for _ in range(5):
            fixed = self.port is not None
            if not fixed:
                self.port = free_port()
                self.staple_port = free_port() if self.staple else None
            if self._launch():
                return
            if fixed:
                break
            self.port = None
        raise RuntimeError(f"the relay did not start; log:\n{self.log()[-3000:]}")

    def _launch(self) -> bool:
        command = twistd_command() + ["-n", "--pidfile=", "--logfile", str(self.log_path),
                                      "relay", "--port", f"tcp:{self.port}:interface=127.0.0.1"]
        if self.staple:
            command += ["--staple", f"tcp:{self.staple_port}:interface=127.0.0.1"]
        else:
            command += ["--no-rendezvous"]
        # Errors before logging starts (bad options, import errors) go to stdout.
        with open(self.workdir / "relay.out", "ab") as out:
            self.process = subprocess.Popen(command + self.args, cwd=self.workdir,
                                            stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, env=os.environ.copy())
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                time.sleep(0.05)
        self.kill()
        return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def log(self) -> str:
        """What the relay wrote: its early output, then its log file, oldest first; twistd
        rotates the log file at 1 MB (relay.log.1 is the newest of the older ones), which a
        busy test reaches."""
        rotated = sorted(self.log_path.parent.glob(self.log_path.name + ".*"),
                         key=lambda path: -_rotation_number(path))
        text = ""
        for path in (self.workdir / "relay.out", *rotated, self.log_path):
            try:
                text += path.read_text(errors="replace")
            except OSError:
                pass
        return text

    def post(self, path: str, body: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
        """A blocking POST, for tests that drive the process from plain Python."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("POST", "/" + path, body, {"Content-Type": "text/plain"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


def _rotation_number(path: Path) -> int:
    suffix = path.name.rsplit(".", 1)[1]
    return int(suffix) if suffix.isdigit() else 0
