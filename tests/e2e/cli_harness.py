"""Running the real `relay` command against a real relay process, for the end-to-end tests.

`User` is one person: a relay home of their own and the relay's URL; `run` waits for a
command, `start` runs one in the background with its output in files (so a test can wait
for the code phrase a sender prints). Every background process is killed at teardown.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import attrs

from tests.relay_process import RelayProcess

CODE_LINE = re.compile(r"Code phrase: (\S+)")
DROP_LINE = re.compile(r"Drop code: (\S+)")
DEFAULT_TIMEOUT = 60.0


def relay_command() -> list[str]:
    script = Path(sys.executable).with_name("relay")
    return [str(script)] if script.exists() else [sys.executable, "-m", "relay.client.cli"]


@attrs.frozen
class Result:
    code: int
    stdout: bytes
    stderr: str


class Background:
    def __init__(self, process: subprocess.Popen, out: Path, err: Path) -> None:
        self.process = process
        self.out = out
        self.err = err

    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = pattern.search(self.stderr())
            if match:
                return match
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern.pattern!r} in the output:\n{self.stderr()}")

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> Result:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout} s:\n{self.stderr()}") \
                from None
        return Result(code, self.out.read_bytes(), self.stderr())

    def feed(self, data: bytes) -> None:
        """Write data to the process's stdin from a thread, then close it."""
        def write() -> None:
            assert self.process.stdin is not None
            try:
                self.process.stdin.write(data)
                self.process.stdin.close()
            except OSError:
                pass  # the process ended first: its exit code tells the test

        self._feeder = threading.Thread(target=write, daemon=True)
        self._feeder.start()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        if self.process.stdin is not None:
            try:
                self.process.stdin.close()
            except OSError:
                pass


class User:
    def __init__(self, name: str, workdir: Path, relay: RelayProcess,
                 background: list[Background]) -> None:
        self.name = name
        self.home = workdir / f"home-{name}"
        self.cwd = workdir / f"cwd-{name}"
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.relay = relay
        self._background = background
        self._count = 0

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env.update({"RELAY_HOME": str(self.home), "RELAY_URL": self.relay.url})
        env.update(extra or {})
        return env

    def run(self, *args: str, env: dict[str, str] | None = None, stdin: bytes = b"",
            timeout: float = DEFAULT_TIMEOUT) -> Result:
        try:
            done = subprocess.run(relay_command() + list(args), input=stdin,
                                  capture_output=True, env=self.env(env), cwd=self.cwd,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"relay {' '.join(args)} took over {timeout} s:\n"
                                 f"{(e.stderr or b'').decode(errors='replace')}") from None
        return Result(done.returncode, done.stdout, done.stderr.decode(errors="replace"))

    def start(self, *args: str, env: dict[str, str] | None = None,
              stdin: bytes | None = None, stdin_pipe: bool = False) -> Background:
        """Run the command in the background. stdin bytes are fed from a thread (a sender
        reads stdin only once its receiver is there); with stdin_pipe the caller writes to
        `job.process.stdin` itself and closes it."""
        self._count += 1
        out = self.cwd.parent / f"{self.name}-{self._count}.out"
        err = self.cwd.parent / f"{self.name}-{self._count}.err"
        piped = stdin is not None or stdin_pipe
        with open(out, "wb") as out_f, open(err, "wb") as err_f:
            process = subprocess.Popen(
                relay_command() + list(args), env=self.env(env), cwd=self.cwd,
                stdin=subprocess.PIPE if piped else subprocess.DEVNULL,
                stdout=out_f, stderr=err_f)
        job = Background(process, out, err)
        self._background.append(job)
        if stdin is not None:
            job.feed(stdin)
        return job

    def public_key(self) -> str:
        result = self.run("identity")
        assert result.code == 0, result.stderr
        return result.stdout.decode().split()[2]

    def add_contact(self, other: User) -> None:
        result = self.run("contacts", "add", other.name, other.public_key())
        assert result.code == 0, result.stderr


def tree(root: Path) -> dict[str, tuple[str, int, str | None]]:
    """Every entry below root: relative name -> (kind, permission bits, SHA-256 of contents)."""
    found = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        mode = path.lstat().st_mode & 0o777
        if path.is_symlink():
            found[name] = ("link", mode, None)
        elif path.is_dir():
            found[name] = ("dir", mode, None)
        else:
            found[name] = ("file", mode, sha256_of(path))
    return found


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def write_random(path: Path, size: int, seed: bytes = b"") -> None:
    """size bytes that do not compress (os.urandom per MiB would be slow for 100 MB: a
    SHA-256 counter stream is fast enough and still incompressible)."""
    block = os.urandom(1024 * 1024)
    with open(path, "wb") as f:
        written = 0
        counter = 0
        while written < size:
            # Vary every MiB so no two blocks repeat.
            head = hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
            piece = (head + block[32:])[:size - written]
            f.write(piece)
            written += len(piece)
            counter += 1
