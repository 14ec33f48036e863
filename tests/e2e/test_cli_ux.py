"""The rough edges of everyday use, end to end: the code alone on stdout (and nothing else
with -q), what the sender learns when the receiver refuses, resume by content, long names,
a folder in the way, drops at once, and a relay without the live rendezvous."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cli_harness import CODE_LINE, DROP_LINE, User
from tests.relay_process import RelayProcess

EXIT_FAILED, EXIT_RELAY = 1, 3


def code_from_stdout(job) -> str:
    job.wait_for(CODE_LINE)
    return job.out.read_text().strip()


def test_the_code_alone_on_stdout_and_a_text_is_no_file(users, tmp_path: Path) -> None:
    alice, bob = users("alice"), users("bob")
    sender = alice.start("send", "--text", "hi there", "-q")
    # With -q nothing goes to stderr: the code is all there is, on stdout.
    deadline = time.monotonic() + 30
    while not sender.out.read_text().strip():
        assert time.monotonic() < deadline and sender.process.poll() is None
        time.sleep(0.05)
    code = sender.out.read_text().strip()
    received = bob.run("receive", "-y", "--no-mailbox", env={"RELAY_CODE": code})
    sent = sender.wait()
    assert received.code == 0 and sent.code == 0, received.stderr + sent.stderr
    assert sent.stdout.decode() == code + "\n" and sent.stderr == ""
    assert b"hi there" in received.stdout and "Received 0" not in received.stderr


def test_the_sender_learns_why_the_receiver_refused(users, tmp_path: Path) -> None:
    alice, bob = users("alice"), users("bob")
    (tmp_path / "a.txt").write_text("new")
    out = tmp_path / "in"
    out.mkdir()
    (out / "a.txt").write_text("old")
    sender = alice.start("send", str(tmp_path / "a.txt"))
    code = code_from_stdout(sender)
    received = bob.run("receive", "-y", "--no-mailbox", "-o", str(out),
                       env={"RELAY_CODE": code})
    sent = sender.wait()
    assert received.code == EXIT_FAILED and "a.txt exists here" in received.stderr
    assert sent.code == EXIT_FAILED
    assert "the receiver refused the transfer: a.txt exists here" in sent.stderr
    assert "--overwrite" in sent.stderr and str(out) not in sent.stderr  # no path of theirs
    assert (out / "a.txt").read_text() == "old"


def test_a_folder_in_the_way_is_named_and_leaves_nothing(users, tmp_path: Path) -> None:
    alice, bob = users("alice"), users("bob")
    (tmp_path / "thing").write_text("a file")
    out = tmp_path / "in"
    (out / "thing").mkdir(parents=True)
    sender = alice.start("send", str(tmp_path / "thing"))
    code = code_from_stdout(sender)
    received = bob.run("receive", "-y", "--no-mailbox", "--overwrite", "always", "-o",
                       str(out), env={"RELAY_CODE": code})
    assert received.code == EXIT_FAILED and "thing is a folder here" in received.stderr
    assert "thing is a folder here" in sender.wait().stderr
    assert sorted(p.name for p in out.iterdir()) == ["thing"] and (out / "thing").is_dir()


def test_a_partial_of_another_file_is_not_resumed_and_long_names(users,
                                                                  tmp_path: Path) -> None:
    alice, bob = users("alice"), users("bob")
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(200_000))
    long_name = "n" * 250  # ".NAME.relay-partial" would be 265 bytes
    (tmp_path / long_name).write_text("long")
    out = tmp_path / "in"
    out.mkdir()
    (out / ".data.bin.relay-partial").write_bytes(os.urandom(50_000))  # another file's
    sender = alice.start("send", str(source), str(tmp_path / long_name))
    code = code_from_stdout(sender)
    received = bob.run("receive", "-y", "--no-mailbox", "-o", str(out),
                       env={"RELAY_CODE": code})
    assert received.code == 0 and sender.wait().code == 0, received.stderr
    assert (out / "data.bin").read_bytes() == source.read_bytes()
    assert (out / long_name).read_text() == "long" and len(list(out.iterdir())) == 2
    assert "resumed" not in received.stderr


def test_drop_at_once_then_consent_without_a_terminal(users, tmp_path: Path) -> None:
    alice, bob = users("alice"), users("bob")
    (tmp_path / "a.txt").write_text("dropped")
    sent = alice.run("send", "--drop", "--wait", "0", str(tmp_path / "a.txt"))
    assert sent.code == 0 and "Code phrase" not in sent.stderr, sent.stderr
    drop_code = sent.stdout.decode().strip()
    assert DROP_LINE.search(sent.stderr).group(1) == drop_code
    refused = bob.run("receive", "-o", str(tmp_path / "in"), env={"RELAY_CODE": drop_code})
    assert refused.code == EXIT_FAILED and "-y" in refused.stderr
    # Said once, plainly: why it was left, and how to take it.
    assert refused.stderr.count("no terminal to ask on") == 1, refused.stderr
    assert "nothing taken; it stays on the relay" in refused.stderr
    quiet = bob.run("receive", "-q", "-o", str(tmp_path / "in"), env={"RELAY_CODE": drop_code})
    # -q silences the status lines, so the error itself says why and what to do.
    assert quiet.code == EXIT_FAILED and "no terminal to ask on" in quiet.stderr, quiet.stderr
    assert "relay receive -y" in quiet.stderr
    assert "a.txt (7 B)" in refused.stderr and not (tmp_path / "in" / "a.txt").exists()
    taken = bob.run("receive", "-y", "-o", str(tmp_path / "in"), env={"RELAY_CODE": drop_code})
    assert taken.code == 0  # refused means left on the relay, not lost
    assert (tmp_path / "in" / "a.txt").read_text() == "dropped"


@pytest.fixture(scope="module")
def plain_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """A relay run with --no-rendezvous: mailbox and file drops only."""
    workdir = tmp_path_factory.mktemp("plain-relay")
    process = RelayProcess(workdir, ["--files-dir", str(workdir / "files")], staple=False)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_without_rendezvous_drops_instead_of_failing(plain_relay, tmp_path: Path,
                                                     background) -> None:
    alice = User("alice", tmp_path, plain_relay, background)
    bob = User("bob", tmp_path, plain_relay, background)
    alice.add_contact(bob)
    bob.add_contact(alice)
    (tmp_path / "a.txt").write_text("no live")
    to_contact = alice.run("send", "--to", "bob", str(tmp_path / "a.txt"))
    assert to_contact.code == 0 and "no live rendezvous" in to_contact.stderr, to_contact.stderr
    by_code = alice.run("send", "--drop", str(tmp_path / "a.txt"))
    assert by_code.code == 0 and DROP_LINE.search(by_code.stderr)
    plain = alice.run("send", str(tmp_path / "a.txt"))
    assert plain.code == EXIT_RELAY and "--drop" in plain.stderr
    received = bob.run("receive", "-y", "--mailbox", "-o", str(tmp_path / "in"))
    assert received.code == 0 and (tmp_path / "in" / "a.txt").read_text() == "no live"


def test_a_mailbox_receive_that_leaves_a_drop_behind_exits_1(users, tmp_path: Path) -> None:
    alice, bob = users("alice"), users("bob")
    alice.add_contact(bob)
    bob.add_contact(alice)
    (tmp_path / "a.txt").write_text("dropped")
    assert alice.run("message", "--to", "bob", "hello").code == 0
    dropped = alice.run("send", "--to", "bob", "--drop", "--wait", "0", str(tmp_path / "a.txt"))
    assert dropped.code == 0, dropped.stderr
    # No terminal, no -y: the message is shown, the drop is left on the relay, and the exit
    # status says that not everything was taken.
    partly = bob.run("receive", "--mailbox", "-o", str(tmp_path / "in"))
    assert partly.code == EXIT_FAILED, partly.stderr
    assert b"hello" in partly.stdout and "relay receive -y" in partly.stderr
    assert not (tmp_path / "in" / "a.txt").exists()
    taken = bob.run("receive", "--mailbox", "-y", "-o", str(tmp_path / "in"))
    assert taken.code == 0, taken.stderr
    assert (tmp_path / "in" / "a.txt").read_text() == "dropped"
