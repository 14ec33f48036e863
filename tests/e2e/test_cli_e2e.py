"""The `relay` command end to end: real processes (the relay, a sender, a receiver) on
loopback. Live transfers by code phrase, dead drops to contacts and by drop code, resume
after a kill, text and stdin, wrong codes, and the readable errors and exit codes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.cli_harness import CODE_LINE, DROP_LINE, sha256_of, tree, write_random
from tests.e2e.conftest import files_left

MB = 1000 * 1000
EXIT_FAILED, EXIT_USAGE, EXIT_RELAY, EXIT_VERIFY, EXIT_WRONG_CODE = 1, 2, 3, 4, 5


def make_tree(root: Path) -> Path:
    """A folder with nesting, an empty folder, an empty file, odd names and modes."""
    top = root / "project"
    (top / "src" / "deep" / "deeper").mkdir(parents=True)
    (top / "empty folder").mkdir()
    (top / "README.md").write_text("# hello\n")
    (top / "src" / "main.py").write_text("print('hi')\n")
    (top / "src" / "deep" / "deeper" / "data.bin").write_bytes(os.urandom(300_000))
    (top / "src" / "zero").write_bytes(b"")
    (top / "ünïcödé ✓.txt").write_text("names survive\n")
    os.chmod(top / "src" / "main.py", 0o755)
    os.chmod(top / "README.md", 0o600)
    os.chmod(top / "src" / "deep", 0o750)
    return top


def no_partials(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".relay-partial")]


@pytest.mark.slow
def test_identity_contacts_and_messages(users) -> None:
    alice, bob = users("alice"), users("bob")
    first = alice.run("identity")
    assert first.code == 0 and "Created your identity" in first.stderr
    key_file = alice.home / "identity.json"
    assert key_file.stat().st_mode & 0o777 == 0o600
    again = alice.run("identity")
    assert again.stdout == first.stdout and "Created" not in again.stderr
    fingerprint = first.stdout.decode().splitlines()[1].split(":", 1)[1].strip()
    assert len(fingerprint.split()) == 6

    alice.add_contact(bob)
    bob.add_contact(alice)
    listed = alice.run("contacts", "list")
    assert listed.code == 0 and listed.stdout.decode().startswith("bob ")
    duplicate = alice.run("contacts", "add", "bob", bob.public_key())
    assert duplicate.code == EXIT_USAGE and "already a contact" in duplicate.stderr
    bad_key = alice.run("contacts", "add", "carol", "not-a-key")
    assert bad_key.code == EXIT_USAGE and "Traceback" not in bad_key.stderr
    unknown = alice.run("message", "--to", "carol", "hi")
    assert unknown.code == EXIT_USAGE and "no contact named carol" in unknown.stderr

    sent = alice.run("message", "--to", "bob", "hello", "bob")
    assert sent.code == 0, sent.stderr
    # A message whose text tries to drive the terminal is shown escaped.
    assert alice.run("message", "--to", "bob", "-", stdin=b"evil \x1b]0;pwned\x07").code == 0
    inbox = bob.run("inbox")
    assert inbox.code == 0 and b"alice: message: hello bob" in inbox.stdout
    received = bob.run("receive", "-y", "--mailbox")
    assert received.code == 0, received.stderr
    assert b"hello bob" in received.stdout
    assert "Received 0" not in received.stderr  # messages alone: they said it all
    assert b"\x1b" not in received.stdout and b"\\x1b]0;pwned\\x07" in received.stdout
    assert bob.run("inbox").stdout.strip() == b"Nothing waiting."

    removed = alice.run("contacts", "remove", "bob")
    assert removed.code == 0 and alice.run("contacts", "list").stdout == b""


@pytest.mark.slow
def test_live_100mb_file_and_folder_tree_with_text(users, tmp_path: Path) -> None:
    alice, bob = users("alice"), users("bob")
    big = alice.cwd / "big.bin"
    write_random(big, 100 * MB)
    top = make_tree(alice.cwd)
    sender = alice.start("send", "big.bin", "project", "--text", "here you go")
    code = sender.wait_for(CODE_LINE).group(1)
    out = tmp_path / "received"
    started = time.monotonic()
    receiver = bob.run("receive", "-y", "--no-mailbox", "-o", str(out), env={"RELAY_CODE": code})
    elapsed = time.monotonic() - started
    assert receiver.code == 0, receiver.stderr
    assert sender.wait().code == 0
    assert "Sent and verified" in sender.stderr()
    assert b"here you go" in receiver.stdout
    assert sha256_of(out / "big.bin") == sha256_of(big)
    assert tree(out / "project") == tree(top)  # contents, empty folder and file, modes
    assert no_partials(out)
    assert elapsed < 60


@pytest.mark.slow
def test_drop_to_an_offline_contact_then_received_later(users, relay, tmp_path: Path) -> None:
    alice, bob = users("alice"), users("bob")
    alice.add_contact(bob)
    bob.add_contact(alice)
    top = make_tree(alice.cwd)
    write_random(alice.cwd / "video.bin", 3 * MB + 12345)
    # bob's client is not running: the live offer is not taken within the wait.
    sent = alice.run("send", "--to", "bob", "--wait", "1", "project", "video.bin",
                     "--text", "for later")
    assert sent.code == 0, sent.stderr
    assert "did not take it within 1 s" in sent.stderr and "dead drop" in sent.stderr
    listing = bob.run("inbox")
    assert b"drop from alice: 6 files, 3.3 MB and a text" in listing.stdout, listing.stdout
    assert b"live offer" in listing.stdout and b"expired" in listing.stdout

    out = tmp_path / "later"
    received = bob.run("receive", "-y", "--mailbox", "-o", str(out))
    assert received.code == 0, received.stderr
    assert b"for later" in received.stdout
    assert tree(out / "project") == tree(top)
    assert sha256_of(out / "video.bin") == sha256_of(alice.cwd / "video.bin")
    # Collected means deleted: nothing left in the mailbox or in the relay's file store.
    assert bob.run("inbox").stdout.strip() == b"Nothing waiting."
    assert files_left(relay) < 1024


@pytest.mark.slow
def test_live_offer_taken_by_a_waiting_contact(users, tmp_path: Path) -> None:
    alice, bob = users("alice"), users("bob")
    alice.add_contact(bob)
    bob.add_contact(alice)
    write_random(alice.cwd / "doc.bin", 2 * MB)
    out = tmp_path / "bob-out"
    receiver = bob.start("receive", "-y", "--mailbox", "--wait", "30", "-o", str(out))
    time.sleep(1.0)  # bob is polling his mailbox
    sent = alice.run("send", "--to", "bob", "--wait", "30", "doc.bin")
    assert sent.code == 0, sent.stderr
    assert "Sent live to bob" in sent.stderr
    result = receiver.wait()
    assert result.code == 0, result.stderr
    assert sha256_of(out / "doc.bin") == sha256_of(alice.cwd / "doc.bin")
    assert bob.run("inbox").stdout.strip() == b"Nothing waiting."  # the offer is gone too


@pytest.mark.slow
def test_live_transfer_killed_halfway_then_resumed(users, tmp_path: Path) -> None:
    alice, bob = users("alice"), users("bob")
    source = alice.cwd / "movie.bin"
    write_random(source, 40 * MB)
    out = tmp_path / "resume"
    partial = out / ".movie.bin.relay-partial"

    sender = alice.start("send", "movie.bin", "--limit-rate", "10M")
    code = sender.wait_for(CODE_LINE).group(1)
    receiver = bob.start("receive", "-y", "--no-mailbox", "-o", str(out), env={"RELAY_CODE": code})
    deadline = time.monotonic() + 30
    while not (partial.exists() and partial.stat().st_size >= 8 * MB):
        assert time.monotonic() < deadline, receiver.stderr()
        time.sleep(0.05)
    os.kill(sender.process.pid, signal.SIGKILL)
    cut = receiver.wait()
    assert cut.code == EXIT_FAILED, cut.stderr
    assert "Traceback" not in cut.stderr
    assert not (out / "movie.bin").exists()
    kept = partial.stat().st_size
    assert 8 * MB <= kept < 40 * MB

    sender = alice.start("send", "movie.bin")
    code = sender.wait_for(CODE_LINE).group(1)
    resumed = bob.run("receive", "-y", "--no-mailbox", "-o", str(out), env={"RELAY_CODE": code})
    assert resumed.code == 0, resumed.stderr
    assert sender.wait().code == 0
    assert "resumed" in resumed.stderr
    assert sha256_of(out / "movie.bin") == sha256_of(source)
    assert not partial.exists()


@pytest.mark.slow
def test_text_only_and_stdin_to_stdout(users) -> None:
    alice, bob = users("alice"), users("bob")
    sender = alice.start("send", "--text", "just a note ✓")
    code = sender.wait_for(CODE_LINE).group(1)
    received = bob.run("receive", "-y", "--no-mailbox", env={"RELAY_CODE": code})
    assert received.code == 0 and "just a note ✓" in received.stdout.decode()
    assert sender.wait().code == 0

    data = os.urandom(700_000)
    sender = alice.start("send", "-", "--name", "piped.bin", stdin=data)
    code = sender.wait_for(CODE_LINE).group(1)
    # The code may also be typed in (here: piped) instead of the environment variable.
    received = bob.run("receive", "-y", "--no-mailbox", "--stdout", stdin=code.encode() + b"\n")
    assert received.code == 0, received.stderr
    assert received.stdout == data
    assert sender.wait().code == 0
    assert not list(bob.cwd.iterdir())  # --stdout wrote nothing to the folder


@pytest.mark.slow
def test_wrong_and_malformed_codes(users, tmp_path: Path) -> None:
    alice, bob = users("alice"), users("bob")
    (alice.cwd / "secret.txt").write_text("not for you")
    sender = alice.start("send", "secret.txt")
    code = sender.wait_for(CODE_LINE).group(1)
    channel = code.split("-")[0]
    words = code.split("-")[1:]
    wrong = "-".join([channel, *(["apple"] if words[0] != "apple" else ["zebra"]), *words[1:]])
    out = tmp_path / "wrong"
    guessed = bob.run("receive", "-y", "--no-mailbox", "-o", str(out), env={"RELAY_CODE": wrong})
    assert guessed.code == EXIT_WRONG_CODE, guessed.stderr
    assert "code" in guessed.stderr and "Traceback" not in guessed.stderr
    finished = sender.wait()
    assert finished.code == EXIT_WRONG_CODE and "wrong" in finished.stderr
    assert not out.exists() or not list(out.iterdir())
    # The channel is closed for good: the right code no longer works either.
    late = bob.run("receive", "-y", "--no-mailbox", "-o", str(out), env={"RELAY_CODE": code})
    assert late.code == EXIT_WRONG_CODE, late.stderr

    typo = bob.run("receive", "-y", "--no-mailbox", env={"RELAY_CODE": f"{channel}-appel-zebra-oak"})
    assert typo.code == EXIT_USAGE and "did you mean apple" in typo.stderr
    assert bob.run("receive", "-y", "--no-mailbox", env={"RELAY_CODE": "nonsense"}).code == EXIT_USAGE
    assert bob.run("receive", "-y", "--no-mailbox").code == EXIT_USAGE  # no code at all
    unknown_drop = bob.run("receive", "-y", env={"RELAY_CODE": "drop-" + "-".join(["abcde"] * 5)})
    assert unknown_drop.code == EXIT_WRONG_CODE, unknown_drop.stderr


@pytest.mark.slow
def test_code_transfer_left_as_a_drop_when_nobody_comes(users, tmp_path: Path) -> None:
    alice, bob = users("alice"), users("bob")
    top = make_tree(alice.cwd)
    sent = alice.run("send", "--drop", "--wait", "1", "project")
    assert sent.code == 0, sent.stderr
    assert "Nobody came" in sent.stderr
    drop_code = DROP_LINE.search(sent.stderr).group(1)
    out = tmp_path / "dropped"
    received = bob.run("receive", "-y", "-o", str(out), env={"RELAY_CODE": drop_code.upper()})
    assert received.code == 0, received.stderr
    assert tree(out / "project") == tree(top)
    again = bob.run("receive", "-y", "-o", str(out), env={"RELAY_CODE": drop_code})
    assert again.code == EXIT_WRONG_CODE  # collected means gone

    nobody = alice.run("send", "--wait", "1", "project")
    assert nobody.code == EXIT_FAILED and "nobody came" in nobody.stderr


@pytest.mark.slow
def test_readable_errors(users, tmp_path: Path) -> None:
    alice, bob = users("alice"), users("bob")
    missing = alice.run("send", "no-such-file")
    assert missing.code == EXIT_USAGE and "no-such-file" in missing.stderr
    unreachable = alice.run("inbox", env={"RELAY_URL": "http://127.0.0.1:9"})
    assert unreachable.code == EXIT_RELAY and "cannot reach the relay" in unreachable.stderr
    bad_url = alice.run("--relay", "ftp://x", "inbox")
    assert bad_url.code == EXIT_USAGE
    assert alice.run("send").code == EXIT_USAGE
    assert alice.run("bogus").code == EXIT_USAGE
    (alice.home / "config.toml").write_text("relay_url = 3\n")
    assert alice.run("inbox").code == EXIT_USAGE
    (alice.home / "config.toml").write_text(f'relay_url = "{alice.relay.url}"\n')
    assert alice.run("inbox", env={"RELAY_URL": ""}).code == 0
    for result in (missing, unreachable, bad_url):
        assert "Traceback" not in result.stderr

    # An existing file is not overwritten without consent; the drop then stays waiting.
    alice.add_contact(bob)
    bob.add_contact(alice)
    (alice.cwd / "notes.txt").write_text("new notes")
    assert alice.run("send", "--to", "bob", "--wait", "0", "notes.txt").code == 0
    out = tmp_path / "bob-existing"
    out.mkdir()
    (out / "notes.txt").write_text("old notes")
    refused = bob.run("receive", "-y", "--mailbox", "-o", str(out))
    assert refused.code == EXIT_FAILED and "not overwriting" in refused.stderr
    assert (out / "notes.txt").read_text() == "old notes"
    assert b"drop from alice" in bob.run("inbox").stdout
    forced = bob.run("receive", "-y", "--mailbox", "-o", str(out), "--overwrite", "always")
    assert forced.code == 0 and (out / "notes.txt").read_text() == "new notes"
