"""The `relay` command on a terminal, driven through a pseudo-terminal (pexpect): the code
prompt with Tab completion, the consent prompt, and Ctrl-C at each stage on both ends:
130 and one line on the interrupted side, the peer told (exit 6, "cancelled")."""

from __future__ import annotations

import time
from pathlib import Path

import pexpect
import pytest

from relay.client.codes import WORDS
from tests.e2e.cli_harness import CODE_LINE, User, relay_command, write_random

EXIT_WRONG_CODE, EXIT_PEER_CANCELLED, EXIT_INTERRUPTED = 5, 6, 130
TIMEOUT = 30


def spawn(user: User, *args: str, env: dict[str, str] | None = None) -> pexpect.spawn:
    command = relay_command() + list(args)
    child = pexpect.spawn(command[0], command[1:], env=user.env(env), cwd=str(user.cwd),
                          timeout=TIMEOUT, encoding="utf-8", dimensions=(40, 200))
    return child


def finish(child: pexpect.spawn) -> tuple[int, str]:
    """(exit code, everything it printed after the last expect)."""
    rest = child.read() if child.isalive() else (child.before or "")
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, rest


def interrupted_cleanly(child: pexpect.spawn) -> None:
    """Ctrl-C, then exit 130 with the one line and no traceback."""
    # A person cannot press Ctrl-C within the microseconds between a prompt's text and
    # readline's wait for a key (a signal there waits for the next key): nor should a test.
    time.sleep(0.2)
    child.sendintr()
    child.expect("relay: interrupted")
    tail = child.read()
    child.close()
    assert child.exitstatus == EXIT_INTERRUPTED, tail
    assert "Traceback" not in (child.before or "") + tail and "error" not in tail


def unique_prefix(word: str) -> str:
    for length in range(2, len(word)):
        if sum(w.startswith(word[:length]) for w in WORDS) == 1:
            return word[:length]
    return word


def wait_until(check, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def pair(users, tmp_path: Path):
    alice, bob = users("alice"), users("bob")
    source = tmp_path / "report.txt"
    source.write_text("the report\n")
    return alice, bob, source


def test_code_prompt_completes_words_then_consent_names_the_files(pair, tmp_path) -> None:
    alice, bob, source = pair
    sender = alice.start("send", str(source), "--text", "see attached")
    code = sender.wait_for(CODE_LINE).group(1)
    out = tmp_path / "in"
    receiver = spawn(bob, "receive", "--no-mailbox", "-o", str(out))
    receiver.expect("Code")
    *head, last = code.split("-")
    receiver.send("-".join(head) + "-" + unique_prefix(last) + "\t")
    receiver.expect(last)  # Tab completed the word
    receiver.sendline("")
    receiver.expect(r"report\.txt \(11 B\)")
    receiver.expect("see attached")
    receiver.expect(r"Accept\? \[y/N\]")
    receiver.sendline("y")
    status, _ = finish(receiver)
    assert status == 0
    assert (out / "report.txt").read_text() == "the report\n"
    assert sender.wait().code == 0


def test_ctrl_c_at_the_code_prompt(pair) -> None:
    _, bob, _ = pair
    receiver = spawn(bob, "receive", "--no-mailbox")
    receiver.expect("Code")
    interrupted_cleanly(receiver)


def test_ctrl_c_at_the_accept_prompt_tells_the_sender(pair, tmp_path) -> None:
    alice, bob, source = pair
    sender = alice.start("send", str(source))
    code = sender.wait_for(CODE_LINE).group(1)
    receiver = spawn(bob, "receive", "--no-mailbox", "-o", str(tmp_path / "in"),
                     env={"RELAY_CODE": code})
    receiver.expect(r"Accept\?")
    interrupted_cleanly(receiver)
    sent = sender.wait()
    assert sent.code == EXIT_PEER_CANCELLED and "the receiver cancelled" in sent.stderr


def test_declining_tells_the_sender_why(pair, tmp_path) -> None:
    alice, bob, source = pair
    sender = alice.start("send", str(source))
    code = sender.wait_for(CODE_LINE).group(1)
    receiver = spawn(bob, "receive", "--no-mailbox", "-o", str(tmp_path / "in"),
                     env={"RELAY_CODE": code})
    receiver.expect(r"Accept\?")
    receiver.sendline("n")
    status, _ = finish(receiver)
    assert status == 1
    sent = sender.wait()
    assert sent.code == 1 and "the receiver refused the transfer: declined" in sent.stderr


def test_ctrl_c_of_a_waiting_sender_ends_its_code(pair) -> None:
    alice, bob, source = pair
    sender = spawn(alice, "send", str(source))
    sender.expect(r"Code phrase: ")
    sender.expect(r"(\S+-\S+-\S+-\S+)")
    code = sender.match.group(1)
    sender.expect("type the code")
    interrupted_cleanly(sender)
    late = bob.run("receive", "-y", "--no-mailbox", env={"RELAY_CODE": code})
    assert late.code == EXIT_WRONG_CODE and "cancelled" in late.stderr


def test_ctrl_c_of_the_sender_mid_transfer_tells_the_receiver(pair, tmp_path) -> None:
    alice, bob, _ = pair
    big = tmp_path / "big.bin"
    write_random(big, 4_000_000)
    sender = spawn(alice, "send", "--limit-rate", "1M", str(big))
    sender.expect(r"Code phrase: ")
    sender.expect(r"(\S+-\S+-\S+-\S+)")
    code = sender.match.group(1)
    out = tmp_path / "in"
    receiver = bob.start("receive", "-y", "--no-mailbox", "-o", str(out),
                         env={"RELAY_CODE": code})
    sender.expect("Connected")
    wait_until(lambda: any(p.stat().st_size > 0 for p in out.glob(".*relay-partial")))
    interrupted_cleanly(sender)
    received = receiver.wait()
    assert received.code == EXIT_PEER_CANCELLED, received.stderr
    assert "the sender cancelled" in received.stderr and "truncated" not in received.stderr


def test_ctrl_c_of_the_receiver_mid_transfer_tells_the_sender(pair, tmp_path) -> None:
    alice, bob, _ = pair
    big = tmp_path / "big.bin"
    write_random(big, 4_000_000)
    sender = alice.start("send", "--limit-rate", "1M", str(big))
    code = sender.wait_for(CODE_LINE).group(1)
    out = tmp_path / "in"
    receiver = spawn(bob, "receive", "-y", "--no-mailbox", "-o", str(out),
                     env={"RELAY_CODE": code})
    wait_until(lambda: any(p.stat().st_size > 0 for p in out.glob(".*relay-partial")))
    interrupted_cleanly(receiver)
    sent = sender.wait()
    assert sent.code == EXIT_PEER_CANCELLED, sent.stderr
    assert "the receiver cancelled" in sent.stderr
    assert list(out.glob(".*relay-partial")), "the partial is kept for a resume"


def test_ctrl_c_while_polling_the_mailbox(pair) -> None:
    alice, bob, _ = pair
    bob.add_contact(alice)
    receiver = spawn(bob, "receive", "--mailbox", "--wait", "60")
    time.sleep(1.0)  # polling by now (or still connecting: either is a stage to cut)
    interrupted_cleanly(receiver)
