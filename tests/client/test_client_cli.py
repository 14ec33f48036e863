"""The `relay` command in-process: parsing, settings, exit codes, the small commands."""

from __future__ import annotations

import io

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor

from relay.client.cli import app as cli
from relay.client.cli.consent import consent, describe
from relay.client.cli.context import Context, Settings, UsageError, load_settings
from relay.client.codes import BadCode
from relay.client.errors import (
    ContactError,
    IdentityError,
    Interrupted,
    NobodyCame,
    PeerCancelled,
    Refused,
    RelayError,
    RelayTimeout,
    TransferError,
    VerificationError,
    WrongCodeError,
)
from relay.client.live.pake import WrongCode


def parse(*argv: str):
    return cli.build_parser().parse_args(list(argv))


@pytest.mark.parametrize("argv", [
    ["send", "--wait", "-1", "x"], ["send", "--limit-rate", "fast", "x"],
    ["receive", "--code", "abcd-apple-zebra-oak"],  # codes never come from the command line
    ["receive", "--mailbox", "--no-mailbox"], ["receive", "--max-files", "0"],
    ["contacts"], ["message", "hi"], [],
])
def test_bad_command_lines_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        parse(*argv)
    assert exited.value.code == cli.EXIT_USAGE
    assert "relay: error:" in capsys.readouterr().err


def test_rates_and_sizes_parse():
    assert parse("send", "--limit-rate", "10M", "x").limit_rate == 10_000_000
    assert parse("send", "--limit-rate", "1.5kB/s", "x").limit_rate == 1500
    assert parse("receive", "--max-size", "2G").max_size == 2_000_000_000


@pytest.mark.parametrize("error,code", [
    (UsageError("x"), 2), (BadCode("x"), 2), (ContactError("x"), 2),
    (RelayError("x", 500), 3), (RelayTimeout("x"), 3), (VerificationError("x"), 4),
    (TransferError("x"), 1), (WrongCode("x"), 5),
])
def test_exit_codes(error, code):
    assert cli.exit_code_for(error) == code


def test_settings_file(tmp_path):
    assert load_settings(tmp_path) == Settings()
    (tmp_path / "config.toml").write_text('relay_url = "https://r.example"\noffer_wait = 5\n')
    assert load_settings(tmp_path) == Settings(relay_url="https://r.example", offer_wait=5)
    for bad in ["offer_wait = -1", "colour = 1", "relay_url = 3", "= nonsense"]:
        (tmp_path / "config.toml").write_text(bad)
        with pytest.raises(UsageError):
            load_settings(tmp_path)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_settings_file_loads_or_is_a_usage_error(tmp_path, data):
    (tmp_path / "config.toml").write_bytes(data)
    try:
        result = load_settings(tmp_path)
    except UsageError:
        return
    assert isinstance(result, Settings)


def make_context(tmp_path, *argv, environ=None):
    out, err = io.StringIO(), io.StringIO()
    env = {"RELAY_HOME": str(tmp_path / "home"), **(environ or {})}
    ctx = Context(args=parse(*argv), reactor=reactor, stdin=io.StringIO(), stdout=out,
                  stderr=err, environ=env)
    return ctx, out, err


@pytest_twisted.ensureDeferred
async def test_identity_and_contacts_in_process(tmp_path):
    ctx, out, err = make_context(tmp_path, "identity")
    assert await cli.run(ctx) == 0
    key = out.getvalue().split()[2]
    assert "Created your identity" in err.getvalue()
    ctx, out, err = make_context(tmp_path, "contacts", "add", "me", key)
    assert await cli.run(ctx) == 0
    ctx, out, err = make_context(tmp_path, "contacts", "add", "\x1bbad", key)
    assert await cli.run(ctx) == cli.EXIT_USAGE
    assert err.getvalue().startswith("relay: error:") and "\x1b" not in err.getvalue()
    ctx, out, err = make_context(tmp_path, "contacts", "remove", "nobody")
    assert await cli.run(ctx) == cli.EXIT_USAGE and "Traceback" not in err.getvalue()


@pytest_twisted.ensureDeferred
async def test_the_relay_url_comes_from_option_environment_config_default(tmp_path):
    ctx, _, _ = make_context(tmp_path, "inbox")
    assert ctx.relay_url == cli.DEFAULT_RELAY_URL
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "config.toml").write_text('relay_url = "http://config:1/"\n')
    ctx, _, _ = make_context(tmp_path, "inbox")
    assert ctx.relay_url == "http://config:1"
    ctx, _, _ = make_context(tmp_path, "inbox", environ={"RELAY_URL": "http://env:2"})
    assert ctx.relay_url == "http://env:2"
    ctx, _, _ = make_context(tmp_path, "--relay", "http://option:3", "inbox",
                             environ={"RELAY_URL": "http://env:2"})
    assert ctx.relay_url == "http://option:3"
    ctx, _, err = make_context(tmp_path, "--relay", "ftp://x", "inbox")
    assert await cli.run(ctx) == cli.EXIT_USAGE and "http://" in err.getvalue()


def test_global_options_go_before_or_after_the_command():
    args = parse("send", "--relay", "http://after:1", "-q", "--no-progress", "f")
    assert (args.relay, args.quiet, args.progress, args.paths) == \
        ("http://after:1", True, False, ["f"])
    before = parse("--relay", "http://before:1", "-q", "send", "f")
    assert (before.relay, before.quiet, before.progress) == ("http://before:1", True, None)
    assert parse("contacts", "list", "--home", "/h").home == "/h"
    assert parse("receive", "--quiet").quiet and not parse("receive").quiet


@pytest.mark.parametrize("error,code", [
    (PeerCancelled("x"), 6), (Interrupted("x"), 130), (Refused("x"), 1),
    (NobodyCame("x"), 1), (WrongCodeError("x"), 5), (IdentityError("x"), 2),
])
def test_exit_codes_of_the_new_errors(error, code):
    assert cli.exit_code_for(error) == code


@pytest_twisted.ensureDeferred
async def test_a_code_on_the_command_line_is_refused_with_the_reason_and_the_way(tmp_path):
    ctx, out, err = make_context(tmp_path, "receive", "abcd-apple-zebra-oak")
    assert await cli.run(ctx) == cli.EXIT_USAGE
    message = err.getvalue()
    assert message.count("\n") == 1 and "process list" in message
    assert "RELAY_CODE" in message and "relay receive" in message and not out.getvalue()


class ClosedPipe(io.StringIO):
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self):
        raise io.UnsupportedOperation


@pytest_twisted.ensureDeferred
async def test_a_closed_stdout_ends_quietly(tmp_path):
    """`relay -q identity | head -1`: the reader took what it wanted; no "Broken pipe"."""
    ctx, _, err = make_context(tmp_path, "-q", "identity")
    ctx.stdout = ClosedPipe()
    assert await cli.run(ctx) == 0
    assert err.getvalue() == ""


@pytest_twisted.ensureDeferred
async def test_an_interruption_is_one_line_whatever_the_command_raised(tmp_path):
    ctx, _, err = make_context(tmp_path, "identity")
    ctx.interruption.fire()
    assert cli._ending(ctx, RelayTimeout("no answer from the relay to /channel")) == 130
    assert err.getvalue() == "relay: interrupted\n"


def test_no_terminal_and_no_yes_refuses_with_a_hint(tmp_path):
    ctx, _, err = make_context(tmp_path, "receive")
    with pytest.raises(Refused, match="-y"):
        consent(ctx, "alice", [("a.txt", False, 3)], None)
    assert "alice offers 1 file, 3 B:\n  a.txt (3 B)" in err.getvalue()
    ctx, _, err = make_context(tmp_path, "receive", "-y")
    consent(ctx, "alice", [("a.txt", False, 3)], "hi")
    assert "alice sends a text: hi" in err.getvalue()


def test_the_offer_is_described_with_escaped_names():
    entries = [(f"f{i}\x1b[2J.txt", False, 1000 * i) for i in range(7)] + [("dir", True, 0)]
    text = describe("bob", entries, "line one\nline two \u202e")
    assert "\x1b" not in text and "\u202e" not in text and "\\x1b" in text
    assert text.startswith("bob offers 7 files in 1 folder, 21.0 kB in all:")
    assert "and 2 more" in text and "line one line two" in text
    assert "a stream" in describe("bob", [("stdin", False, None)], None)
