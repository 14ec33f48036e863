"""The session handshake: /start_session, /verify_session, /prove (see docs/protocol.md)."""

from __future__ import annotations

import json
import os

import attrs
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from twisted.internet.interfaces import IReactorTime

from relay.config import MailboxConfig
from relay.crypto import (
    KEY_LEN,
    NONCE_LEN,
    TOKEN_LEN,
    EncodingError,
    b64decode,
    b64encode,
    h2,
    meets_difficulty,
)
from relay.mailbox.claims import Seen, SessionsSeen
from relay.mailbox.difficulty import AdaptiveDifficulty, ClientRates
from relay.mailbox.nonces import NonceGuard
from relay.mailbox.wire import decode_field, split_lines
from relay.store import Store
from relay.store.interfaces.sessions import Claim, Handshake, Session
from relay.web.errors import HTTPError, bad_request, unauthorized

# /prove carries exactly these line lengths: hash, key, nonce, and the box of the
# 176-byte JSON signature (176 + 16 bytes of MAC = 192 bytes = 256 base64 characters).
PROVE_LINE_LENGTHS = (44, 44, 32, 256)
_PROVE_JSON_KEYS = {"pub_key", "nonce", "ctext"}


class SessionHandshake:
    def __init__(self, config: MailboxConfig, store: Store, clock: IReactorTime) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.nonces = NonceGuard(config, store, clock)
        # The difficulty moves with this node's handshake rate; `difficulty.current()` reads it.
        self.difficulty = AdaptiveDifficulty(config, clock.seconds)
        self.client_handshakes: ClientRates | None = None
        # Where /prove leaves the new session for /command's one-round-trip path.
        self.sessions_seen: SessionsSeen | None = None
        # Handshakes started or verified here: with one, /verify_session and /prove make one
        # store call (that checks it is still the stored one) instead of two.
        self.handshakes_seen: Seen[Handshake] = Seen()
        if config.handshake_rate_per_client > 0:
            self.client_handshakes = ClientRates(config.difficulty_window,
                                                 config.difficulty_client_slots)

    async def start_session(self, body: bytes, client: str = "") -> tuple[bytes, list[str]]:
        """Returns (handshake key for logging, response lines)."""
        lines = split_lines(body, 8)
        if not lines:
            raise bad_request("empty body")
        # Zax answers any unusable token line with 401, and clients expect that.
        try:
            if len(lines) != 1:
                raise EncodingError("expected one line")
            client_token = b64decode(lines[0], TOKEN_LEN)
        except EncodingError:
            raise unauthorized("expected one line: the 32-byte client token") from None
        self._check_client_rate(client)
        relay_token = os.urandom(TOKEN_LEN)
        key = h2(client_token)
        difficulty = self.difficulty.for_handshake(client)
        # The handshake keeps the difficulty it was given, so /verify_session (here or on
        # another node) checks that one, however the difficulty moved meanwhile. At the floor
        # nothing is kept: the record stays readable by relays that keep no difficulty.
        kept = None if difficulty == self.config.difficulty else difficulty
        handshake = Handshake(client_token, relay_token, difficulty=kept)
        await self.store.sessions.put_handshake(key, handshake, self.config.token_timeout)
        self.handshakes_seen.remember(key, handshake)
        return key, [b64encode(relay_token), str(difficulty)]

    def _check_client_rate(self, client: str) -> None:
        """429 for a client over its handshake rate: nothing is stored, and the refused
        handshakes do not raise everyone else's difficulty."""
        if self.client_handshakes is None:
            return
        rate = self.client_handshakes.add(client, self.clock.seconds())
        if rate > self.config.handshake_rate_per_client:
            raise HTTPError(429, "too many handshakes from this network; slow down")

    async def verify_session(self, body: bytes, client: str = "") -> tuple[bytes, list[str]]:
        lines = split_lines(body, 2)
        if len(lines) != 2 or len(lines[0]) != 44 or len(lines[1]) != 44:
            raise bad_request("expected two lines: h2(client token) and the proof")
        key = decode_field(lines[0], 32, "handshake id")
        proof = decode_field(lines[1], 32, "proof")
        remembered = self.handshakes_seen.get(key)
        if remembered is not None and remembered.session_sk is None \
                and self._proof_is_valid(remembered, proof):
            handshake = attrs.evolve(remembered, session_sk=bytes(PrivateKey.generate()))
            if await self.store.sessions.replace_handshake(key, remembered, handshake,
                                                           self.config.session_timeout):
                return key, [self._verified(key, handshake)]
        handshake = await self.store.sessions.get_handshake(key)
        if handshake is None:
            raise unauthorized("unknown or expired handshake")
        if not self._proof_is_valid(handshake, proof):
            raise unauthorized("wrong proof")
        if handshake.session_sk is None:
            # A retried /verify_session gets the same key: the first answer may have been lost.
            handshake = attrs.evolve(handshake, session_sk=bytes(PrivateKey.generate()))
            await self.store.sessions.put_handshake(key, handshake, self.config.session_timeout)
        return key, [self._verified(key, handshake)]

    def _verified(self, key: bytes, handshake: Handshake) -> str:
        """The session public key to answer with; the handshake is remembered for /prove."""
        self.handshakes_seen.remember(key, handshake)
        assert handshake.session_sk is not None
        return b64encode(bytes(PrivateKey(handshake.session_sk).public_key))

    def _proof_is_valid(self, handshake: Handshake, proof: bytes) -> bool:
        tokens = handshake.client_token + handshake.relay_token
        difficulty = handshake.difficulty
        if difficulty is None:
            difficulty = self.config.difficulty
        if difficulty == 0:
            return proof == h2(tokens)
        return meets_difficulty(h2(tokens + proof), difficulty)

    async def prove(self, body: bytes, client: str = "") -> tuple[bytes, list[str]]:
        lines = split_lines(body, 4)
        if len(lines) != 4 or tuple(len(line) for line in lines) != PROVE_LINE_LENGTHS:
            raise bad_request("expected four lines of 44, 44, 32 and 256 characters")
        key = decode_field(lines[0], 32, "handshake id")
        client_pk = decode_field(lines[1], KEY_LEN, "client session key")
        outer_nonce = decode_field(lines[2], NONCE_LEN, "nonce")
        outer_box = decode_field(lines[3], 192, "signature box")

        # The handshake this node verified, if it did: the store confirms it in the same
        # call that finishes it. Else, or if anything fails with it (another node may have
        # verified the handshake again), the store's decides, as if none was remembered.
        remembered = self.handshakes_seen.get(key)
        if remembered is not None and remembered.session_sk is not None:
            try:
                return await self._prove(key, client_pk, outer_nonce, outer_box, remembered)
            except (HTTPError, _NotRemembered):
                pass
        self.handshakes_seen.forget(key)
        return await self._prove(key, client_pk, outer_nonce, outer_box, None)

    async def _prove(self, key: bytes, client_pk: bytes, outer_nonce: bytes,
                     outer_box: bytes, remembered: Handshake | None
                     ) -> tuple[bytes, list[str]]:
        handshake = remembered or await self.store.sessions.get_handshake(key)
        if handshake is None or handshake.session_sk is None:
            raise unauthorized("unknown, expired or unverified handshake")
        session_sk = PrivateKey(handshake.session_sk)
        try:
            # Box() itself raises for a low-order public key (all zeros, say).
            signature = Box(session_sk, PublicKey(client_pk)).decrypt(outer_box, outer_nonce)
        except CryptoError:
            raise bad_request("the signature box does not open") from None
        identity_pk, inner_nonce, inner_box = _parse_signature(signature)
        expected = h2(client_pk + handshake.relay_token + handshake.client_token)
        try:
            inner = Box(session_sk, PublicKey(identity_pk)).decrypt(inner_box, inner_nonce)
        except CryptoError:
            raise bad_request("the identity proof does not open") from None
        if inner != expected:
            raise bad_request("the identity proof signs the wrong session")
        # Nonces are checked last, so a malformed request does not burn them; claiming them,
        # finishing the handshake and counting the mailbox are one store call.
        self.nonces.check_time(outer_nonce)
        self.nonces.check_time(inner_nonce)
        hpk = h2(identity_pk)
        session = Session(bytes(session_sk), client_pk)
        outcome, count = await self.store.sessions.finish_handshake_claiming_nonces(
            key, hpk, session, self.config.session_timeout, [outer_nonce, inner_nonce],
            self.nonces.remember_for, expected=remembered)
        if outcome is Claim.GONE and remembered is not None:
            raise _NotRemembered()  # nothing was done
        self.handshakes_seen.forget(key)
        if outcome is Claim.REPLAYED:
            raise bad_request("nonce replayed")  # 400 as in Zax, like a stale nonce
        if outcome is not Claim.DONE:
            raise unauthorized("handshake already used")
        if self.sessions_seen is not None:
            self.sessions_seen.remember(hpk, session)
        return hpk, [str(count)]


class _NotRemembered(Exception):
    """The stored handshake is not the one this node remembers."""


def _parse_signature(signature: bytes) -> tuple[bytes, bytes, bytes]:
    try:
        fields = json.loads(signature)
    except ValueError:
        raise bad_request("the signature is not JSON") from None
    if not isinstance(fields, dict) or set(fields) != _PROVE_JSON_KEYS:
        raise bad_request("the signature must have pub_key, nonce and ctext")
    if not all(isinstance(v, str) for v in fields.values()):
        raise bad_request("signature fields must be strings")
    return (decode_field(fields["pub_key"], KEY_LEN, "pub_key"),
            decode_field(fields["nonce"], NONCE_LEN, "inner nonce"),
            decode_field(fields["ctext"], 48, "inner ctext"))
