"""Relay settings: defaults, the TOML file, command-line overrides, validation.

Every limit and timeout of the relay lives here with a safe default. `load_config` merges the
file (if any) with overrides and validates the lot, raising ConfigError with a one-line
message that twistd prints instead of a traceback.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import attrs

from relay.web.clients import client_key

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
MINUTE = 60
HOUR = 60 * MINUTE
DAY = 24 * HOUR


class ConfigError(ValueError):
    """A setting is unknown or out of range; the message is one line for the operator."""


def _positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{attribute.name} must be a positive number, not {value!r}")


def _non_negative(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{attribute.name} must be zero or a positive number, not {value!r}")


def _positive_int(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{attribute.name} must be a positive whole number, not {value!r}")


def _non_negative_int(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{attribute.name} must be zero or a positive whole number, "
                          f"not {value!r}")


def _fraction(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ConfigError(f"{attribute.name} must be a number above 0 and at most 1, "
                          f"not {value!r}")


def _difficulty(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 64:
        raise ConfigError(f"difficulty must be a whole number from 0 to 64, not {value!r}")


def _max_difficulty(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 64:
        raise ConfigError(f"{attribute.name} must be a whole number from 0 to 64, not {value!r}")


def _prefix(bits: int) -> Any:
    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= bits:
            raise ConfigError(f"{attribute.name} must be a whole number from 1 to {bits}, "
                              f"not {value!r}")
    return check


def _chunk_store(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value not in ("disk", "store"):
        raise ConfigError(f"chunk_store must be 'disk' or 'store', not {value!r}")


def _data_path(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value not in ("splice", "copy"):
        raise ConfigError(f"data_path must be 'splice' or 'copy', not {value!r}")


def _string(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{attribute.name} must be a non-empty string, not {value!r}")


def _text(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{attribute.name} must be a string, not {value!r}")


def _boolean(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{attribute.name} must be true or false, not {value!r}")


@attrs.frozen
class HTTPConfig:
    endpoint: str = attrs.field(default="tcp:8080:backlog=1024", validator=_string)
    # The cap for /command (a 500 KiB file chunk in base64 fits); other paths take 4 KiB.
    max_command_body: int = attrs.field(default=1 * MIB, validator=_positive_int)
    max_small_body: int = attrs.field(default=4 * KIB, validator=_positive_int)
    # A connection that sends nothing for this long (before or within a request) is closed.
    request_timeout: float = attrs.field(default=30.0, validator=_positive)
    # Between requests a kept-alive connection may idle this long: shorter, since an idle
    # connection costs a descriptor and holds one of its client's connection slots.
    keepalive_timeout: float = attrs.field(default=15.0, validator=_positive)
    # A whole request (headers and body) must arrive within this long of its first byte, so
    # a client dripping a header line now and then cannot hold a connection (408).
    request_deadline: float = attrs.field(default=30.0, validator=_positive)
    # A body must average at least this many bytes a second once body_rate_grace has passed
    # (408): a dripped body is cut after seconds, not at the deadline.
    min_body_rate: int = attrs.field(default=4 * KIB, validator=_non_negative)
    body_rate_grace: float = attrs.field(default=5.0, validator=_non_negative)
    # An answer the client does not read: the connection is aborted when its unsent output
    # has not drained for this long (no further pipelined request is read meanwhile).
    send_timeout: float = attrs.field(default=60.0, validator=_positive)
    # Concurrent HTTP connections in all (503 beyond) and per client (429 beyond; a client
    # is a network, see ipv4_prefix: a NAT'd office shares one budget, so not too low).
    max_connections: int = attrs.field(default=10000, validator=_positive_int)
    max_connections_per_client: int = attrs.field(default=128, validator=_positive_int)
    # File descriptors kept free for the store, the staple listener, files and logs: new
    # HTTP connections are refused (503) once the next one would eat into this reserve.
    descriptor_reserve: int = attrs.field(default=256, validator=_non_negative)
    # Request bodies held in memory at once, all connections together (503 beyond): each
    # connection's body is capped, this caps their sum, whatever max_connections allows.
    max_buffered_bodies: int = attrs.field(default=256 * MIB, validator=_positive_int)
    # Limits count clients by network, not by address: an IPv4 address, an IPv6 /64 (one
    # host's share under SLAAC) by default.
    ipv4_prefix: int = attrs.field(default=32, validator=_prefix(32))
    ipv6_prefix: int = attrs.field(default=64, validator=_prefix(128))

    def __attrs_post_init__(self) -> None:
        if self.max_buffered_bodies < self.max_command_body:
            raise ConfigError("max_buffered_bodies must be at least max_command_body")

    def client_key(self, host: str) -> str:
        """The key every per-client limit counts `host` under (see relay.web.clients)."""
        return client_key(host, self.ipv4_prefix, self.ipv6_prefix)


@attrs.frozen
class StoreConfig:
    url: str = attrs.field(default="memory", validator=_string)
    # Every Redis operation fails (HTTP 500) after this many seconds instead of hanging.
    operation_timeout: float = attrs.field(default=2.0, validator=_positive)
    pool_size: int = attrs.field(default=8, validator=_positive_int)
    # Redis calls in flight or waiting for a connection at once; more fail at once (HTTP 500)
    # instead of queueing without bound behind a slow or unreachable Redis.
    max_pending_operations: int = attrs.field(default=4096, validator=_positive_int)
    # Memory store: the most bytes of messages (and file metadata) held in all mailboxes.
    memory_max_bytes: int = attrs.field(default=256 * MIB, validator=_positive_int)
    # Memory store: handshakes in progress at once (each lives token_timeout; 507 beyond).
    # A bound on their memory (~0.5 KiB each) whatever the number of clients.
    memory_max_handshakes: int = attrs.field(default=200_000, validator=_positive_int)
    # How often one line of usage (bytes held, reservations, difficulty, waits, pairs,
    # connections) is logged; 0: never.
    usage_log_interval: float = attrs.field(default=300.0, validator=_non_negative)
    # How often the memory store sweeps out expired entries.
    sweep_interval: float = attrs.field(default=30.0, validator=_positive)
    # Redis: uploads are refused (507) once Redis's used_memory reaches this share of its
    # maxmemory, so the rest stays free for what must not fail (nonce claims, sessions,
    # handshakes, the bookkeeping of deletes). INFO memory is read every
    # redis_memory_poll_interval seconds; bytes written since are counted on top.
    redis_memory_ratio: float = attrs.field(default=0.85, validator=_fraction)
    # Redis: a byte cap of our own on used_memory (0: only the maxmemory share above).
    redis_max_bytes: int = attrs.field(default=0, validator=_non_negative_int)
    redis_memory_poll_interval: float = attrs.field(default=1.0, validator=_positive)
    # An evicting maxmemory-policy silently drops claimed nonces (replays get through) and
    # acknowledged messages: the relay refuses to start on one unless this is true.
    allow_evicting_redis: bool = attrs.field(default=False, validator=_boolean)
    # Redis: after each write that acknowledges client data (a message, a file record, part
    # or chunk, a new session) wait until this many replicas have it (WAIT), else answer 500
    # and the client retries: a failover then loses nothing acknowledged. 0: no waiting
    # (Redis replication is asynchronous; a failover may lose the last writes).
    redis_wait_replicas: int = attrs.field(default=0, validator=_non_negative_int)
    # How long one WAIT may take (below operation_timeout, which bounds the write and WAIT).
    redis_wait_timeout: float = attrs.field(default=0.5, validator=_positive)
    # redis+sentinel:// URLs: the sentinels' own password (requirepass on the sentinels), if
    # they have one; the master's password is in the URL.
    redis_sentinel_password: str = attrs.field(default="", validator=_text, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.url != "memory" and not self.url.startswith(
                ("redis://", "unix://", "redis+sentinel://")):
            raise ConfigError("store url must be 'memory', a redis://, unix:// or "
                              f"redis+sentinel:// URL, not {self.url!r}")
        if self.redis_wait_replicas and self.redis_wait_timeout >= self.operation_timeout:
            raise ConfigError("redis_wait_timeout must be below operation_timeout "
                              f"({self.redis_wait_timeout} >= {self.operation_timeout})")


@attrs.frozen
class MailboxConfig:
    difficulty: int = attrs.field(default=0, validator=_difficulty)
    # Adaptive proof of work (relay/mailbox/difficulty.py): `difficulty` is the floor; above
    # difficulty_target_rate handshakes/s on this node one more bit per doubling of the rate,
    # up to max_difficulty (at or below `difficulty`: fixed). glow.ts hashes about 10^4 times
    # a second, so 14 bits cost it about 1.5 s: a flood slows real clients, never locks them out.
    max_difficulty: int = attrs.field(default=14, validator=_max_difficulty)
    difficulty_target_rate: float = attrs.field(default=20.0, validator=_positive)
    # A client network above this many handshakes/s of its own pays extra bits by the same
    # rule (0: no per-client extra); counted in difficulty_client_slots cells per sketch row.
    difficulty_client_rate: float = attrs.field(default=2.0, validator=_non_negative)
    difficulty_client_slots: int = attrs.field(default=4096, validator=_positive_int)
    # The rate is measured over this many seconds; it must stay low for difficulty_cooldown
    # seconds before the difficulty falls (hysteresis, so it does not flap).
    difficulty_window: float = attrs.field(default=10.0, validator=_positive)
    difficulty_cooldown: float = attrs.field(default=60.0, validator=_non_negative)
    # /start_session per second one client network may average over difficulty_window (429
    # beyond; 0: no limit). Proof of work is asked for only after the handshake is stored, so
    # without this one client could fill the store with handshakes at no cost. An honest
    # client handshakes once per session; 5/s still serves a busy NAT.
    handshake_rate_per_client: float = attrs.field(default=5.0, validator=_non_negative)
    token_timeout: float = attrs.field(default=5 * MINUTE, validator=_positive)
    session_timeout: float = attrs.field(default=20 * MINUTE, validator=_positive)
    max_nonce_diff: float = attrs.field(default=60.0, validator=_positive)
    nonce_timeout: float = attrs.field(default=10 * MINUTE, validator=_positive)
    message_ttl: float = attrs.field(default=5 * DAY, validator=_positive)
    max_messages: int = attrs.field(default=1000, validator=_positive_int)
    # Storage quotas of messages (507 beyond), so no mailbox, identity or network holds more
    # than a small share of the store (memory_max_bytes, or Redis's memory): a mailbox 1/16,
    # an identity (over every mailbox it writes to) 1/32, a network (over every identity)
    # 1/16 of the default 256 MiB. Charges end when messages are deleted or expire.
    mailbox_max_bytes: int = attrs.field(default=16 * MIB, validator=_positive_int)
    sender_max_messages: int = attrs.field(default=2000, validator=_positive_int)
    sender_max_bytes: int = attrs.field(default=8 * MIB, validator=_positive_int)
    client_max_messages: int = attrs.field(default=5000, validator=_positive_int)
    client_max_bytes: int = attrs.field(default=16 * MIB, validator=_positive_int)
    # Message bytes one network may upload per client_upload_window seconds (429 beyond):
    # bounds upload/delete churn, which the storage quotas alone do not.
    client_upload_bytes: int = attrs.field(default=8 * MIB, validator=_positive_int)
    client_upload_window: float = attrs.field(default=60.0, validator=_positive)
    max_message_size: int = attrs.field(default=256 * KIB, validator=_positive_int)
    download_page: int = attrs.field(default=100, validator=_positive_int)
    max_delete_ids: int = attrs.field(default=100, validator=_positive_int)
    max_entropy: int = attrs.field(default=512000, validator=_positive_int)


@attrs.frozen
class FilesConfig:
    enabled: bool = attrs.field(default=True, validator=_boolean)
    # "disk" keeps chunks under `directory`; "store" keeps them in the configured store.
    chunk_store: str = attrs.field(default="disk", validator=_chunk_store)
    directory: str = attrs.field(default="relay-files", validator=_string)
    max_chunk_size: int = attrs.field(default=500 * KIB, validator=_positive_int)
    max_file_size: int = attrs.field(default=1 * GIB, validator=_positive_int)
    # Bytes charged (stored plus reserved) per sender identity, per client network (identities
    # are free: the client cap is what bounds one attacker) and for the whole relay.
    mailbox_max_bytes: int = attrs.field(default=4 * GIB, validator=_positive_int)
    client_max_bytes: int = attrs.field(default=4 * GIB, validator=_positive_int)
    total_max_bytes: int = attrs.field(default=32 * GIB, validator=_positive_int)
    # An upload reserves what it may still write, at most this much at a time: a start costs
    # a window, not the declared size; stored parts are charged as they come.
    reservation_window: int = attrs.field(default=64 * MIB, validator=_positive_int)
    # Caps on the sum of open reservations, so that free identities cannot reserve the relay's
    # quota without writing: small shares of total_max_bytes.
    max_open_reservation_per_sender: int = attrs.field(default=256 * MIB,
                                                       validator=_positive_int)
    max_open_reservation_per_client: int = attrs.field(default=1 * GIB, validator=_positive_int)
    max_open_reservation_total: int = attrs.field(default=8 * GIB, validator=_positive_int)
    # Each part is charged its size rounded up to whole blocks of this size (a tiny chunk
    # still takes a disk block and a record), and a file has at most max_parts_per_file parts.
    charge_block_size: int = attrs.field(default=4 * KIB, validator=_positive_int)
    max_parts_per_file: int = attrs.field(default=16384, validator=_positive_int)
    file_ttl: float = attrs.field(default=7 * DAY, validator=_positive)
    # An incomplete upload that stores no new part for this long loses its reservation (what
    # it stored stays charged); the next new part reserves again, if the caps allow. One that
    # stored no part by then is dropped.
    stalled_upload_ttl: float = attrs.field(default=10 * MINUTE, validator=_positive)
    # An incomplete upload that gets no chunk for this long is dropped with its chunks, so an
    # abandoned upload does not hold its stored bytes for the whole file_ttl.
    incomplete_upload_ttl: float = attrs.field(default=1 * DAY, validator=_positive)
    cleanup_interval: float = attrs.field(default=10 * MINUTE, validator=_positive)
    # Kept secret: binds upload ids to this relay. Empty: a file beside the chunk directory.
    secret_seed_file: str = attrs.field(default="", validator=attrs.validators.instance_of(str))


@attrs.frozen
class RendezvousConfig:
    enabled: bool = attrs.field(default=True, validator=_boolean)
    staple_endpoint: str = attrs.field(default="tcp:9009:backlog=1024", validator=_string)
    # host:port that clients are told to staple to; empty: the local address the HTTP
    # connection arrived on, staple port (never a request header).
    staple_address: str = attrs.field(default="", validator=attrs.validators.instance_of(str))
    channel_ttl: float = attrs.field(default=5 * MINUTE, validator=_positive)
    max_wait: float = attrs.field(default=30.0, validator=_positive)
    # Long-polls outstanding at once (each holds an HTTP connection and a little memory):
    # per client (429 beyond; one wait per role per channel anyway) and on this node (503).
    max_waits_per_client: int = attrs.field(default=32, validator=_positive_int)
    max_waits: int = attrs.field(default=4096, validator=_positive_int)
    ident_timeout: float = attrs.field(default=10.0, validator=_positive)
    # A stapled pair that moves no byte either way for this long is closed (0: never). Honest
    # clients send a keepalive every 30 s and give up themselves after 120 s of silence.
    idle_timeout: float = attrs.field(default=10 * MINUTE, validator=_non_negative)
    # The longest a stapled pair may live, however busy (0: no limit).
    max_pair_lifetime: float = attrs.field(default=0.0, validator=_non_negative)
    # Live stapled pairs per client on this node (a stuck pair can pin ~8 MiB of buffers).
    max_pairs_per_client: int = attrs.field(default=16, validator=_positive_int)
    # Open channels at once (stapled pairs included: they keep their channel open), and the
    # share one client may hold (1% by default, so one network cannot fill the relay).
    max_channels: int = attrs.field(default=10000, validator=_positive_int)
    max_channels_per_client: int = attrs.field(default=100, validator=_positive_int)
    # Per client: joins, and /channel requests for channels it has not joined (name probes),
    # per minute (429 beyond).
    joins_per_ip_per_minute: int = attrs.field(default=60, validator=_positive_int)
    # Stapled pairs: "splice" moves bytes socket->pipe->socket in the kernel (Linux; falls
    # back to "copy" elsewhere), "copy" through Twisted.
    data_path: str = attrs.field(default="splice", validator=_data_path)


def _endpoint_or_off(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{attribute.name} must be a Twisted endpoint string or \"\" (off), "
                          f"not {value!r}")


@attrs.frozen
class AdminConfig:
    # Metrics (/metrics) and health (/healthz, /readyz) on an endpoint of their own, never on
    # the public API's. Off ("") by default: a fixed port on by default would collide with
    # Prometheus's own 9090, with a second relay on the same host, and would be one more
    # listener an operator did not ask for; turn it on bound to loopback or a private address
    # (e.g. "tcp:9109:interface=127.0.0.1") and let Prometheus scrape it from there.
    endpoint: str = attrs.field(default="", validator=_endpoint_or_off)


@attrs.frozen
class RelayConfig:
    http: HTTPConfig = attrs.field(factory=HTTPConfig)
    store: StoreConfig = attrs.field(factory=StoreConfig)
    mailbox: MailboxConfig = attrs.field(factory=MailboxConfig)
    files: FilesConfig = attrs.field(factory=FilesConfig)
    rendezvous: RendezvousConfig = attrs.field(factory=RendezvousConfig)
    admin: AdminConfig = attrs.field(factory=AdminConfig)


SECTIONS: dict[str, type] = {
    "http": HTTPConfig,
    "store": StoreConfig,
    "mailbox": MailboxConfig,
    "files": FilesConfig,
    "rendezvous": RendezvousConfig,
    "admin": AdminConfig,
}


def _build_section(name: str, values: dict[str, Any]) -> Any:
    cls = SECTIONS[name]
    known = {a.name for a in attrs.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown setting [{name}] {unknown[0]}")
    coerced = {}
    for field in attrs.fields(cls):
        if field.name in values:
            value = values[field.name]
            # TOML and the command line give ints where floats are meant; accept them.
            if field.type in ("float",) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            coerced[field.name] = value
    try:
        return cls(**coerced)
    except ConfigError as e:
        raise ConfigError(f"[{name}] {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[{name}] {e}") from None


def load_config(path: str | Path | None = None,
                overrides: dict[str, dict[str, Any]] | None = None) -> RelayConfig:
    """The file's settings (if a path is given) with overrides on top, validated."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}] in {path}")
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    built = {}
    for name in SECTIONS:
        values = data.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table")
        built[name] = _build_section(name, values)
    config = RelayConfig(**built)
    if config.files.max_chunk_size > config.http.max_command_body // 2:
        raise ConfigError("[files] max_chunk_size must be under half of [http] max_command_body "
                          "(chunks travel base64-encoded)")
    return config
