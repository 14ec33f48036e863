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


def _difficulty(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 64:
        raise ConfigError(f"difficulty must be a whole number from 0 to 64, not {value!r}")


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
    # How often the memory store sweeps out expired entries.
    sweep_interval: float = attrs.field(default=30.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.url != "memory" and not self.url.startswith(("redis://", "unix://")):
            raise ConfigError(f"store url must be 'memory' or a redis:// URL, not {self.url!r}")


@attrs.frozen
class MailboxConfig:
    difficulty: int = attrs.field(default=0, validator=_difficulty)
    token_timeout: float = attrs.field(default=5 * MINUTE, validator=_positive)
    session_timeout: float = attrs.field(default=20 * MINUTE, validator=_positive)
    max_nonce_diff: float = attrs.field(default=60.0, validator=_positive)
    nonce_timeout: float = attrs.field(default=10 * MINUTE, validator=_positive)
    message_ttl: float = attrs.field(default=5 * DAY, validator=_positive)
    max_messages: int = attrs.field(default=1000, validator=_positive_int)
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
    mailbox_max_bytes: int = attrs.field(default=4 * GIB, validator=_positive_int)
    total_max_bytes: int = attrs.field(default=32 * GIB, validator=_positive_int)
    file_ttl: float = attrs.field(default=7 * DAY, validator=_positive)
    # An upload that gets no chunk for this long (and is not complete) is dropped early, so
    # an abandoned upload does not hold its quota for the whole file_ttl.
    stalled_upload_ttl: float = attrs.field(default=1 * DAY, validator=_positive)
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
    ident_timeout: float = attrs.field(default=10.0, validator=_positive)
    # 0 disables the idle timeout on stapled pairs.
    idle_timeout: float = attrs.field(default=0.0, validator=_non_negative)
    max_channels: int = attrs.field(default=10000, validator=_positive_int)
    joins_per_ip_per_minute: int = attrs.field(default=60, validator=_positive_int)
    # Stapled pairs: "splice" moves bytes socket->pipe->socket in the kernel (Linux; falls
    # back to "copy" elsewhere and when idle_timeout is set), "copy" through Twisted.
    data_path: str = attrs.field(default="splice", validator=_data_path)


@attrs.frozen
class RelayConfig:
    http: HTTPConfig = attrs.field(factory=HTTPConfig)
    store: StoreConfig = attrs.field(factory=StoreConfig)
    mailbox: MailboxConfig = attrs.field(factory=MailboxConfig)
    files: FilesConfig = attrs.field(factory=FilesConfig)
    rendezvous: RendezvousConfig = attrs.field(factory=RendezvousConfig)


SECTIONS: dict[str, type] = {
    "http": HTTPConfig,
    "store": StoreConfig,
    "mailbox": MailboxConfig,
    "files": FilesConfig,
    "rendezvous": RendezvousConfig,
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
