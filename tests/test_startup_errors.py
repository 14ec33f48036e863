"""Every start-up error of a real `twistd relay` stops it with one line and exit status 1: no
traceback, no usage text. Bad option values, bad config values, an unknown endpoint type, a
port that is taken (HTTP, staple, admin). Redis down at start is not an error (the relay
retries; see test_admin_health). The cases run as parallel processes to keep this quick;
tests/test_config.py checks each message of a bad setting in process."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.relay_process import free_port, twistd_command

TIMEOUT = 90


def launch(workdir: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(twistd_command() + ["-n", "--pidfile=", "relay", *args],
                            cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"the relay did not stop:\n{output}")
    return process.returncode, output


def local(port: int | str) -> str:
    return f"tcp:{port}:interface=127.0.0.1"


def files(tmp_path: Path) -> dict[str, str]:
    configs = {
        "negative.toml": "[http]\nmax_connections = -1\n",
        "admin.toml": "[admin]\nendpoint = 5\n",
    }
    for name, text in configs.items():
        (tmp_path / name).write_text(text)
    return {name: str(tmp_path / name) for name in configs}


def test_bad_options_and_config_values_are_one_line_and_status_1(tmp_path):
    config = files(tmp_path)
    cases = [
        (["--difficulty", "lots"], "--difficulty must be a whole number, not 'lots'"),
        (["--bogus"], "option --bogus not recognized"),
        (["--config", str(tmp_path / "missing.toml")], "cannot read config file"),
        (["--config", config["negative.toml"]], "[http] max_connections must be a positive"),
        (["--config", config["admin.toml"]], "[admin] endpoint must be a Twisted endpoint"),
        (["--store", "redis://127.0.0.1:port/0"], "the store url is malformed"),
        (["--files-dir", config["admin.toml"] + "/chunks"], "admin.toml is not a directory"),
    ]
    processes = [launch(tmp_path, args) for args, _ in cases]
    for (args, message), process in zip(cases, processes, strict=True):
        code, output = finish(process)
        lines = output.strip().splitlines()
        assert code == 1, (args, output)
        assert len(lines) == 1 and lines[0].startswith("relay: "), (args, output)
        assert message in lines[0], (args, output)


def test_unknown_endpoints_and_taken_ports_are_one_line_and_status_1(tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        busy = blocker.getsockname()[1]

        def ports(http: int | str = 0, staple: int | str = 0,
                  admin: int | str = 0) -> list[str]:
            return ["--port", local(http) if isinstance(http, int) else http,
                    "--staple", local(staple) if isinstance(staple, int) else staple,
                    "--admin", local(admin) if isinstance(admin, int) else admin]

        cases = [
            (ports(http="nonsense"), "cannot listen for HTTP on nonsense: Unknown endpoint "
                                     "type: 'nonsense'"),
            (ports(admin="nonsense"), "cannot listen for metrics and health on nonsense"),
            (ports(http=busy), f"cannot listen for HTTP on {local(busy)}: Address already in "
                               "use"),
            (ports(http=free_port(), staple=busy),
             f"cannot listen for staple connections on {local(busy)}: Address already in use"),
            (ports(http=free_port(), admin=busy),
             f"cannot listen for metrics and health on {local(busy)}: Address already in use"),
        ]
        processes = [launch(tmp_path, ["--no-files", *args]) for args, _ in cases]
        results = [finish(process) for process in processes]
    for (args, message), (code, output) in zip(cases, results, strict=True):
        assert code == 1, (args, output)
        errors = [line for line in output.splitlines() if "relay: " in line]
        assert len(errors) == 1 and message in errors[0], (args, output)
        assert "Traceback" not in output and "Options:" not in output, (args, output)
        assert "Usage:" not in output, (args, output)
