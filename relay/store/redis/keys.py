"""Where every key lives: one place that names them, with the hash tags that keep each
owner's keys in one Redis Cluster slot.

A script may only touch keys of one slot (Redis Cluster runs nothing else; one Redis runs it
all the same). So every key carries its owner in a `{hash tag}`:

    relay:{i.<hpk>}:...      an identity: its session, the nonces of its commands, its
                             mailbox, its sender account (messages) and file ledger
    relay:{c.<client>}:...   a client network: its account, upload rate, file ledger and
                             the channels it holds
    relay:{f.<file_id>}:...  a file: its record and, with chunk_store = "store", its chunks
    relay:{all}:...          the relay-wide file ledger and channel index
and single keys that need no tag: handshakes (by token hash), token pointers (messageStatus),
channels and their hit counters.

Owners are base64url-encoded without padding (tags never hold "{", "}" or ":").
Work that charges several owners (an upload charges the sender's and the client's accounts
and fills the recipient's mailbox) is one script per owner, in order, each undone if a later
one refuses (relay.store.redis.mailbox); charges carry deadlines, so one left behind by a
crash lapses with the message it was for.
"""

from __future__ import annotations

from base64 import urlsafe_b64encode

PREFIX = "relay"

# Prefixes remembered per owner (building one costs microseconds and a command names
# several); forgotten all at once when this many are kept.
REMEMBERED = 16_384


def b64(data: bytes) -> str:
    return urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class KeyNames:
    def __init__(self) -> None:
        self._owners: dict[tuple[str, bytes | str], str] = {}

    def _owner(self, kind: str, owner: bytes | str) -> str:
        prefix = self._owners.get((kind, owner))
        if prefix is None:
            if len(self._owners) >= REMEMBERED:
                self._owners.clear()
            raw = owner.encode() if isinstance(owner, str) else owner
            prefix = self._owners[(kind, owner)] = f"{PREFIX}:{{{kind}.{b64(raw)}}}"
        return prefix

    # -- owners -----------------------------------------------------------------------------

    def identity(self, hpk: bytes) -> str:
        """The prefix of every key an identity owns."""
        return self._owner("i", hpk)

    def client(self, client: str) -> str:
        """The prefix of every key a client network owns."""
        return self._owner("c", client)

    def file(self, file_id: bytes) -> str:
        return self._owner("f", file_id)

    everyone = f"{PREFIX}:{{all}}"

    # -- identities -------------------------------------------------------------------------

    def session(self, hpk: bytes) -> str:
        return self.identity(hpk) + ":session"

    def nonce(self, hpk: bytes, nonce: bytes) -> str:
        """A nonce of hpk's commands (or /prove): replays are only possible within one
        identity's session, so its nonces live in its slot."""
        return f"{self.identity(hpk)}:nonce:{b64(nonce)}"

    def mailbox(self, hpk: bytes) -> list[str]:
        """order, expiry, records, tokens, size (relay.store.redis.mailbox)."""
        prefix = self.identity(hpk)
        return [prefix + ":mbox:order", prefix + ":mbox:expiry", prefix + ":mbox:records",
                prefix + ":mbox:tokens", prefix + ":mbox:size"]

    def sender_account(self, hpk: bytes) -> list[str]:
        prefix = self.identity(hpk)
        return [prefix + ":acct:expiry", prefix + ":acct:sizes"]

    def sender_ledger(self, hpk: bytes) -> str:
        """A file ledger's prefix (relay.store.redis.files names its four keys)."""
        return self.identity(hpk) + ":fl"

    # -- clients ----------------------------------------------------------------------------

    def client_account(self, client: str) -> list[str]:
        prefix = self.client(client)
        return [prefix + ":acct:expiry", prefix + ":acct:sizes"]

    def client_rate(self, client: str) -> str:
        return self.client(client) + ":rate"

    def client_ledger(self, client: str) -> str:
        return self.client(client) + ":fl"

    def client_channels(self, client: str) -> str:
        return self.client(client) + ":channels"

    # -- relay-wide -------------------------------------------------------------------------

    everyone_ledger = everyone + ":fl"
    channel_index = everyone + ":channels"

    # -- files ------------------------------------------------------------------------------

    def file_record(self, file_id: bytes) -> str:
        return self.file(file_id) + ":file"

    def chunk(self, file_id: bytes, part: int, blob: bytes) -> str:
        return f"{self.file(file_id)}:chunk:{part}:{b64(blob)}"

    # -- single keys ------------------------------------------------------------------------

    @staticmethod
    def handshake(key: bytes) -> str:
        return f"{PREFIX}:handshake:{b64(key)}"

    @staticmethod
    def token(token: bytes) -> str:
        """messageStatus's pointer: token -> the mailbox and message id it names."""
        return f"{PREFIX}:token:{b64(token)}"

    @staticmethod
    def channel(name: str) -> str:
        return f"{PREFIX}:channel:{b64(name.encode())}"

    @staticmethod
    def channel_hits(key: str, window_index: int) -> str:
        return f"{PREFIX}:channel-hits:{b64(key.encode())}:{window_index}"
