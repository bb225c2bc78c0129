"""Node configuration: Dynomite's YAML in, a validated frozen ``Config`` out.

This module owns what every configuration key means: its type, its range, its
default, and whether dyno honours it, accepts and ignores it (with a warning),
or rejects it. It must never do I/O beyond reading the file in ``load_config``,
keep global state, or half-accept a file: ``parse_config`` returns a complete
``Config`` or raises one ``ConfigError`` listing every problem found, each
naming the file, the key and what was expected.

Theory of operation: the YAML is loaded with a strict loader (below), the single
root key names the pool, and each key under it is looked up in ``_SETTINGS``
(honoured), ``_ALIASES`` (old names), ``_IGNORED`` (accepted, warned about) or
else reported as unknown with a did-you-mean hint. Defaults live on the
``Config`` fields; ``_check_together`` then checks rules that span keys.

Compatibility with Dynomite (src/dyn_conf.c, conf_commands[] and
conf_validate_pool()): the same keys and value formats, and the defaults that
Dynomite's code applies (its "unset" sentinels, such as 0 for numbers, are
replaced by the value conf_validate_pool() substitutes). Deliberate
differences, each documented in configs/README.md:
- booleans mean what they say (Dynomite stores ``false`` as 0, its "unset"
  sentinel, and then applies the default ``true``);
- ``gos_interval`` defaults to 1000 ms and ``enable_gossip`` to true, so that
  failures are noticed in seconds;
- scalars are read strictly: only true/false are booleans and numbers are
  decimal (YAML 1.1 would read ``yes`` as a boolean and ``0100`` as 64);
- values Dynomite logs and then ignores (a bad ``secure_server_option``) or
  mishandles (a second ``servers`` entry) are errors.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

__all__ = [
    "CONSISTENCY_LEVELS",
    "HASH_NAMES",
    "SECURE_SERVER_OPTIONS",
    "Address",
    "Config",
    "ConfigError",
    "Seed",
    "MAX_TOKEN",
    "Server",
    "load_config",
    "parse_config",
]

CONSISTENCY_LEVELS = ("DC_ONE", "DC_QUORUM", "DC_SAFE_QUORUM", "DC_EACH_SAFE_QUORUM")

# Dynomite's HASH_CODEC (src/hashkit/dyn_hashkit.h), in its order.
HASH_NAMES = (
    "one_at_a_time", "md5", "crc16", "crc32", "crc32a", "fnv1_64", "fnv1a_64",
    "fnv1_32", "fnv1a_32", "hsieh", "murmur", "jenkins", "murmur3",
)
# dyno's own: Redis Cluster's key slots (dyno.ring._slot), for cluster-mode clients.
DYNO_HASH_NAMES = ("slot",)

SECURE_SERVER_OPTIONS = ("none", "rack", "datacenter", "all")

MAX_TOKEN = 2**32 - 1
_MAX_INT = 2**31 - 1  # Dynomite stores these settings in a C int


class ConfigError(Exception):
    """A configuration that cannot be used.

    ``str(e)`` is the whole human message: one problem per line, each shaped
    ``<file>: <pool>.<key>: <what was wrong and what was expected>``.
    ``problems`` holds the lines.
    """

    def __init__(self, problems: str | Sequence[str]) -> None:
        if isinstance(problems, str):
            problems = (problems,)
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:  # IPv6
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Server:
    """The node's own datastore, from ``servers: ['host:port:weight']``.

    Dynomite parses the weight and never uses it; it is kept for round trips.
    """

    host: str
    port: int
    weight: int

    @property
    def address(self) -> Address:
        return Address(self.host, self.port)

    def __str__(self) -> str:
        return f"{self.address}:{self.weight}"


@dataclass(frozen=True)
class Seed:
    """A peer from ``dyn_seeds: ['host:port:rack:dc:tokens']``."""

    host: str
    port: int
    rack: str
    dc: str
    tokens: tuple[int, ...]

    @property
    def address(self) -> Address:
        return Address(self.host, self.port)

    def __str__(self) -> str:
        tokens = ",".join(str(token) for token in self.tokens)
        return f"{self.address}:{self.rack}:{self.dc}:{tokens}"


@dataclass(frozen=True, kw_only=True)
class Config:
    """One node's validated settings. Field defaults are the defaults.

    Unless noted, a default is Dynomite's, from src/dyn_conf.c.
    """

    path: str = "<string>"         # the file it came from
    pool: str = "dyn_o_mite"       # the root key
    datacenter: str = "localdc"    # CONF_DEFAULT_DC
    rack: str = "localrack"        # CONF_DEFAULT_RACK
    listen: Address                # required, as in Dynomite
    dyn_listen: Address = Address("0.0.0.0", 8101)    # Dynomite's usual peer port
    dyn_seeds: tuple[Seed, ...] = ()
    tokens: tuple[int, ...] = (0,)  # dyno: one token owning the whole ring
    servers: tuple[Server, ...]    # required, exactly one
    # Dynomite's port (CONF_DEFAULT_STATS_PNAME), on loopback: it can change the node.
    stats_listen: Address = Address("127.0.0.1", 22222)
    data_store: int = 0            # CONF_DEFAULT_DATASTORE, DATA_REDIS
    read_consistency: str = "DC_ONE"
    write_consistency: str = "DC_ONE"
    hash: str = "murmur"           # CONF_DEFAULT_HASH
    hash_tag: str | None = None
    timeout: int = 5000            # ms, CONF_DEFAULT_TIMEOUT
    gos_interval: int = 1000       # ms; dyno's (Dynomite: 30000)
    enable_gossip: bool = True     # dyno's (Dynomite: false)
    phi_convict_threshold: float = 8.0  # dyno's: failure detector (Cassandra's name)
    secure_server_option: str = "none"  # which peer links are TLS (dyno.peer_tls)
    pem_key_file: str = "conf/dynomite.pem"   # PEM_KEY_FILE
    # dyno's peer TLS: this node's certificate and key, and the cluster CA that signed
    # every node's (required when secure_server_option is not none)
    peer_tls_cert: str | None = None
    peer_tls_key: str | None = None
    peer_tls_ca: str | None = None
    preconnect: bool = True
    auto_eject_hosts: bool = True
    server_retry_timeout: int = 10000  # ms
    server_failure_limit: int = 3
    datastore_connections: int = 1    # CONF_DEFAULT_CONNECTIONS
    local_peer_connections: int = 1
    remote_peer_connections: int = 1
    stats_interval: int = 30000    # ms, CONF_DEFAULT_STATS_INTERVAL_MS
    mbuf_size: int = 16384         # bytes, MBUF_SIZE (src/dyn_mbuf.h)
    max_msgs: int = 200000         # ALLOC_MSGS (src/dyn_message.h)
    # dyno's own settings (requirepass is also Dynomite 0.7's)
    requirepass: str | None = None
    datastore_password: str | None = None  # what the node AUTHs to its own Redis with
    admin_token: str | None = None  # bearer token the admin port's POSTs must carry
    cluster_secret: str | None = None  # peers prove they know it in their handshake
    maxclients: int = 10000        # Redis's default: client connections at once
    proto_max_bulk_len: int = 512 * 1024 * 1024  # bytes, Redis's default
    client_query_buffer_limit: int = 1024 * 1024 * 1024  # bytes, Redis's default
    client_output_buffer_limit: int = 256 * 1024 * 1024  # bytes (0: none), dyno's
    maxmemory_clients: int = 1024 * 1024 * 1024  # every client's unread replies (0: none), Redis 7's name
    # TLS on the client port (PEM files; with a CA, clients must show a certificate it signed)
    client_tls_cert: str | None = None
    client_tls_key: str | None = None
    client_tls_ca: str | None = None
    hints_dir: str | None = None
    max_hint_window: int = 3 * 3600 * 1000  # ms (Cassandra's max_hint_window_in_ms)
    max_hints_size: int = 1 << 30  # bytes of hints kept per peer
    versions_db: int = 15          # the Redis database that holds the keys' versions
    read_repair_chance: float = 0.0  # DC_ONE reads also checked and repaired (Cassandra's)
    repair_rate: int = 0           # keys per second a repair compares (0: unthrottled)
    repair_interval: int = 0       # seconds between the node's own scheduled repairs (0: none)
    tombstone_grace: int = 864000  # seconds a deleted key's version is kept (Cassandra's gc_grace_seconds)
    flush_enabled: bool = True     # FLUSHDB/FLUSHALL allowed
    # Range movements (dyno.streaming): join by streaming the new ranges in, take a
    # dead node's place, and how fast keys are copied.
    auto_bootstrap: bool = False
    replace_node: str | None = None  # the name (dyn_listen host:port) of the dead node replaced
    stream_rate: int = 0           # keys per second a move copies (0: unthrottled)
    workers: int = 1               # processes serving clients (dyno.workers); `auto`: the cores available
    warnings: tuple[str, ...] = ()  # accepted-but-ignored keys, one message each

    @property
    def name(self) -> str:
        """This node's name among its peers."""
        return f"{self.dyn_listen}"


# ---------------------------------------------------------------------------
# Value parsers. Each takes the YAML value and returns the parsed value or
# raises _Invalid saying what was wrong and what was expected.


class _Invalid(Exception):
    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.where = where  # extends the key path, like "[2]"


def _describe(value: object) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _quote(text: str) -> str:
    shown = repr(text)
    return shown if len(shown) <= 60 else shown[:56] + "...'"


def _expected(what: str, value: object) -> _Invalid:
    return _Invalid(f"expected {what}, got {_describe(value)}")


def _text(value: object) -> str:
    if not isinstance(value, str):
        hint = "" if value is None or isinstance(value, (list, dict)) else "; put it in quotes"
        raise _Invalid(f"expected a string, got {_describe(value)}{hint}")
    if not value:
        raise _Invalid("is empty; expected a non-empty string")
    return value


def _name(value: object) -> str:
    """A datacenter or rack name; it must fit in a seed's ':' fields."""
    text = _text(value)
    if ":" in text or any(ch.isspace() for ch in text):
        raise _Invalid(f"{_quote(text)} contains ':' or a space; names must fit in "
                       "dyn_seeds entries (host:port:rack:dc:tokens)")
    return text


def _optional(parse: Callable[[object], Any]) -> Callable[[object], Any]:
    def parse_optional(value: object) -> Any:
        return None if value is None else parse(value)
    return parse_optional


def _boolean(value: object) -> bool:
    # Dynomite compares the scalar's text, so a quoted "true" works there too.
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise _expected("true or false", value)


def _integer(minimum: int, maximum: int = _MAX_INT, *, unit: str = "",
             multiple_of: int = 1) -> Callable[[object], int]:
    what = f"a whole number of {unit}" if unit else "a whole number"
    bounds = (f"at least {minimum}" if maximum == _MAX_INT
              else f"from {minimum} to {maximum}")
    if multiple_of > 1:
        bounds += f", a multiple of {multiple_of}"

    def parse_integer(value: object) -> int:
        # Dynomite reads the scalar's text, so a quoted "5000" works there too.
        if isinstance(value, str) and re.fullmatch(r"[0-9]+", value):
            if len(value) > 20:
                raise _Invalid(f"{_quote(value)} is out of range; expected {what}, {bounds}")
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _expected(what, value)
        if not minimum <= value <= maximum or value % multiple_of:
            raise _Invalid(f"{value} is out of range; expected {what}, {bounds}")
        return value

    return parse_integer


_MEMORY_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2,
                 "g": 1000**3, "gb": 1024**3}


def _memory(minimum: int) -> Callable[[object], int]:
    """Bytes, as Redis's config takes them: 1048576, '1mb' (1024*1024), '1m'
    (1000*1000), '1gb', any case."""
    what = "a number of bytes like 1048576 or '512mb'"

    def parse_memory(value: object) -> int:
        if isinstance(value, str):
            match = re.fullmatch(r"([0-9]{1,19})([a-z]{0,2})", value.strip().lower())
            if match is None or match[2] not in _MEMORY_UNITS:
                raise _expected(what, value)
            value = int(match[1]) * _MEMORY_UNITS[match[2]]
        if isinstance(value, bool) or not isinstance(value, int):
            raise _expected(what, value)
        if not minimum <= value < 2**63:
            raise _Invalid(f"{value} is out of range; expected {what}, at least {minimum}")
        return value

    return parse_memory


def _chance(value: object) -> float:
    """A probability, 0 to 1 (read_repair_chance: 0.1)."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]+(\.[0-9]+)?", value):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise _expected("a number from 0 to 1", value)
    return float(value)


def _positive_number(value: object) -> float:
    """A number above zero, whole or not (phi_convict_threshold: 8, 12.5)."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]+(\.[0-9]+)?", value):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _expected("a number above 0", value)
    if not 0 < value < 1e9:
        raise _Invalid(f"{value} is out of range; expected a number above 0")
    return float(value)


def _one_of(choices: Sequence[str]) -> Callable[[object], str]:
    listing = ", ".join(choices)

    def parse_choice(value: object) -> str:
        if not isinstance(value, str):
            raise _expected(f"one of {listing}", value)
        if value not in choices:
            raise _Invalid(f"{_quote(value)} is not one of {listing}"
                           + _did_you_mean(value, choices))
        return value

    return parse_choice


def _consistency(value: object) -> str:
    if not isinstance(value, str):
        raise _expected(f"one of {', '.join(CONSISTENCY_LEVELS)}", value)
    level = value.upper()
    if level not in CONSISTENCY_LEVELS:
        raise _Invalid(f"{_quote(value)} is not one of {', '.join(CONSISTENCY_LEVELS)}")
    return level


def _hash_tag(value: object) -> str:
    if isinstance(value, (dict, list)):
        raise _Invalid(f"got {_describe(value)}; write the tag in quotes, like hash_tag: \"{{}}\"")
    tag = _text(value)
    if len(tag) != 2:
        raise _Invalid(f"{_quote(tag)} has {len(tag)} characters; expected 2, the opening "
                       "and closing characters, like \"{}\"")
    return tag


def _data_store(value: object) -> int:
    number = _integer(0)(value)
    if number == 1:
        raise _Invalid("1 (memcache) is not supported; dyno supports Redis only (data_store: 0)")
    if number != 0:
        raise _Invalid(f"{number} is not a data store; expected 0 (Redis)")
    return number


_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")


def _host_and_fields(text: str, form: str) -> tuple[str, list[str]]:
    """Split 'host:a:b' into ('host', ['a', 'b']); IPv6 hosts are in brackets."""
    if text.startswith("/"):
        raise _Invalid(f"{_quote(text)} is a unix socket path, which dyno does not support; "
                       f"expected {form}")
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise _Invalid(f"{_quote(text)} is not {form}; an IPv6 host goes in brackets, "
                           "like [::1]:8102")
        host = text[1:end]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Invalid(f"{_quote(host)} in brackets is not an IPv6 address") from None
        return host, text[end + 2:].split(":")
    host, *fields = text.split(":")
    if not host:
        raise _Invalid(f"{_quote(text)} has no host; expected {form} "
                       "(an IPv6 host goes in brackets, like [::1]:8102)")
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise _Invalid(f"{_quote(host)} is not a valid IPv4 address") from None
    elif not _HOSTNAME.fullmatch(host):
        raise _Invalid(f"{_quote(host)} is not a host name or IP address")
    return host, fields


def _fields(value: object, form: str, count: int) -> tuple[str, list[str]]:
    if not isinstance(value, str):
        raise _expected(f"a string {form}", value)
    if any(ch.isspace() for ch in value):
        name = " (dyno does not take Dynomite's optional trailing name)" if count > 1 else ""
        raise _Invalid(f"{_quote(value)} contains whitespace; expected {form}{name}")
    host, fields = _host_and_fields(value, form)
    if len(fields) != count:
        raise _Invalid(f"{_quote(value)} has {len(fields) + 1} ':'-separated fields; "
                       f"expected {count + 1}: {form}")
    return host, fields


def _port(text: str) -> int:
    port = int(text) if re.fullmatch(r"[0-9]{1,5}", text) else -1
    if not 0 <= port <= 65535:
        raise _Invalid(f"port {_quote(text)} is not a number from 1 to 65535")
    if port == 0:
        raise _Invalid("port 0 is not allowed; expected 1 to 65535 (dyno does not pick "
                       "a random port: clients and peers must be told the port)")
    return port


def _listen_address(value: object) -> Address:
    host, (port,) = _fields(value, "host:port", 1)
    return Address(host, _port(port))


def _server(value: object) -> Server:
    host, (port, weight) = _fields(value, "host:port:weight", 2)
    if not re.fullmatch(r"[0-9]{1,9}", weight):
        raise _Invalid(f"weight {_quote(weight)} is not a whole number (Dynomite ignores "
                       "the weight; 1 is usual)")
    return Server(host, _port(port), int(weight))


def _token_list(value: object) -> tuple[int, ...]:
    """'100,2000000000', 437425602 or a list of those, as Dynomite's derive_tokens."""
    if isinstance(value, str):
        items: list[object] = [item.strip() for item in value.split(",")]
    elif isinstance(value, list):
        items = value
    else:
        items = [value]
    tokens: list[int] = []
    for item in items:
        if isinstance(item, str) and re.fullmatch(r"[0-9]+", item):
            if len(item) > 20:
                raise _Invalid(f"token {_quote(item)} is out of range; expected 0 to {MAX_TOKEN}")
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, int):
            raise _expected("tokens: whole numbers separated by commas, like '100,2000000000'",
                            item)
        if not 0 <= item <= MAX_TOKEN:
            raise _Invalid(f"token {item} is out of range; expected 0 to {MAX_TOKEN}")
        if item in tokens:
            raise _Invalid(f"token {item} is listed twice")
        tokens.append(item)
    if not tokens:
        raise _Invalid("lists no tokens; expected at least one, like '0'")
    return tuple(tokens)


def _seed(value: object) -> Seed:
    host, (port, rack, dc, tokens) = _fields(value, "host:port:rack:dc:tokens", 4)
    return Seed(host, _port(port), _name(rack), _name(dc), _token_list(tokens))


def _entries(value: object, parse: Callable[[object], Any], form: str) -> list[Any]:
    """A YAML list, or a single string (Dynomite takes a scalar there too)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise _expected(f"a list of {form} strings", value)
    parsed = []
    for index, item in enumerate(value):
        try:
            parsed.append(parse(item))
        except _Invalid as invalid:
            raise _Invalid(invalid.message, f"[{index}]") from None
    return parsed


def _servers(value: object) -> tuple[Server, ...]:
    servers = _entries(value, _server, "host:port:weight")
    if len(servers) != 1:
        raise _Invalid(f"lists {len(servers)} datastores; expected exactly one, like "
                       "- 127.0.0.1:6379:1 (dyno, like Dynomite, has one Redis per node)")
    return tuple(servers)


def _seeds(value: object) -> tuple[Seed, ...]:
    seeds = _entries(value, _seed, "host:port:rack:dc:tokens")
    addresses = [seed.address for seed in seeds]
    for index, address in enumerate(addresses):
        if address in addresses[:index]:
            raise _Invalid(f"lists {address} twice", f"[{index}]")
    return tuple(seeds)


MAX_WORKERS = 256


def cores_available() -> int:
    """The cores this process may run on (its CPU affinity, as `auto` counts them)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _workers(value: object) -> int:
    """``workers``: a whole number from 1, or ``auto`` (one per core available)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return min(cores_available(), MAX_WORKERS)
    try:
        return _integer(1, MAX_WORKERS, unit="processes")(value)
    except _Invalid as invalid:
        raise _Invalid(invalid.message.replace("expected ", "expected 'auto' or ", 1)) from None


# ---------------------------------------------------------------------------
# The key tables.

# Keys dyno honours: name -> parser. The Config field of the same name holds
# the default; a field without one is required.
_SETTINGS: dict[str, Callable[[object], Any]] = {
    "datacenter": _name,
    "rack": _name,
    "listen": _listen_address,
    "dyn_listen": _listen_address,
    "dyn_seeds": _seeds,
    "tokens": _token_list,
    "servers": _servers,
    "stats_listen": _listen_address,
    "data_store": _data_store,
    "read_consistency": _consistency,
    "write_consistency": _consistency,
    "hash": _one_of(HASH_NAMES + DYNO_HASH_NAMES),
    "hash_tag": _optional(_hash_tag),
    "timeout": _integer(1, unit="milliseconds"),
    "gos_interval": _integer(1, unit="milliseconds"),
    "enable_gossip": _boolean,
    "phi_convict_threshold": _positive_number,
    "secure_server_option": _one_of(SECURE_SERVER_OPTIONS),
    "pem_key_file": _text,
    "peer_tls_cert": _optional(_text),
    "peer_tls_key": _optional(_text),
    "peer_tls_ca": _optional(_text),
    "preconnect": _boolean,
    "auto_eject_hosts": _boolean,
    "server_retry_timeout": _integer(0, unit="milliseconds"),
    "server_failure_limit": _integer(1),
    "datastore_connections": _integer(1),
    "local_peer_connections": _integer(1),
    "remote_peer_connections": _integer(1),
    "stats_interval": _integer(1, unit="milliseconds"),
    # Dynomite's limits: MBUF_MIN_SIZE..MBUF_MAX_SIZE, MIN_ALLOC_MSGS..MAX_ALLOC_MSGS
    "mbuf_size": _integer(512, 65536, unit="bytes", multiple_of=16),
    "max_msgs": _integer(100_000, 1_000_000),
    "requirepass": _optional(_text),
    "datastore_password": _optional(_text),
    "admin_token": _optional(_text),
    "cluster_secret": _optional(_text),
    "maxclients": _integer(1, unit="connections"),
    # Redis's own minimums (1mb), which also keep a whole request in one 64 KB read
    # (that the fast parser takes without looking at lengths) within the limits.
    "proto_max_bulk_len": _memory(1024 * 1024),
    "client_query_buffer_limit": _memory(1024 * 1024),
    "client_output_buffer_limit": _memory(0),
    "maxmemory_clients": _memory(0),
    "client_tls_cert": _optional(_text),
    "client_tls_key": _optional(_text),
    "client_tls_ca": _optional(_text),
    "hints_dir": _optional(_text),
    "max_hint_window": _integer(0, unit="milliseconds"),
    "max_hints_size": _integer(0, unit="bytes"),
    "versions_db": _integer(1, 15),
    "read_repair_chance": _chance,
    "repair_rate": _integer(0, unit="keys per second"),
    "repair_interval": _integer(0, unit="seconds"),
    # At least 1: a version dropped the moment its key is deleted would let any
    # replica that missed the delete bring the key back (see _check_together).
    "tombstone_grace": _integer(1, unit="seconds"),
    "flush_enabled": _boolean,
    "auto_bootstrap": _boolean,
    "replace_node": _optional(_text),
    "stream_rate": _integer(0, unit="keys per second"),
    "workers": _workers,
}

# Old names: old -> current. Both given is an error.
_ALIASES = {"redis_requirepass": "requirepass"}


def _seed_provider(value: object) -> str | None:
    if _text(value) == "simple_provider":  # the static dyn_seeds list: what dyno does
        return None
    return "dyno reads only the static dyn_seeds list (Dynomite's simple_provider)"


def _redis_flag(value: object) -> str | None:
    if not _boolean(value):
        raise _Invalid("false (memcache) is not supported; dyno supports Redis only")
    return "obsolete Dynomite key; dyno always speaks Redis (data_store: 0)"


def _ignore(parse: Callable[[object], Any], why: str) -> Callable[[object], str | None]:
    def check(value: object) -> str:
        parse(value)  # still rejects what Dynomite would reject
        return why
    return check


# Keys Dynomite accepts that dyno does not use: name -> check returning the
# reason for the warning (or None for no warning), raising _Invalid on values
# Dynomite would reject (its numbers may be 0, which it reads as "unset").
_BOUNDED_BY_TIMEOUT = "not used by dyno; peer requests are bounded by timeout"
_IGNORED: dict[str, Callable[[object], str | None]] = {
    "distribution": _ignore(_text, "deprecated in Dynomite; keys are always placed by token"),
    "backlog": _ignore(_integer(0), "not used by dyno"),
    "client_connections": _ignore(_integer(0), "Dynomite ignores it too (clients are unlimited)"),
    "server_connections": _ignore(_integer(0), "deprecated in Dynomite; use datastore_connections"),
    "dyn_read_timeout": _ignore(_integer(0), _BOUNDED_BY_TIMEOUT),
    "dyn_write_timeout": _ignore(_integer(0), _BOUNDED_BY_TIMEOUT),
    "dyn_connections": _ignore(_integer(1), "not used by dyno; use local_peer_connections "
                                            "and remote_peer_connections"),
    "dyn_port": _ignore(_integer(0, 65535), "not used by Dynomite or dyno; the peer port is "
                                            "dyn_listen's"),
    "dyn_seed_provider": _seed_provider,
    "env": _ignore(_text, "not used by dyno"),
    "recon_key_file": _ignore(_text, "not used by dyno (Dynomite's reconciliation encryption)"),
    "recon_iv_file": _ignore(_text, "not used by dyno (Dynomite's reconciliation encryption)"),
    "conn_msg_rate": _ignore(_integer(0), "not used by dyno (no per-connection rate limit)"),
    "redis": _redis_flag,
}

# Dynomite keys dyno parses (so Dynomite's configs load, and bad values are still
# caught) but that change nothing here: a warning names each one given.
_NO_EFFECT = {
    "pem_key_file": "Dynomite's RSA+AES peer encryption is not reproduced; dyno's peer TLS uses "
                    "peer_tls_cert, peer_tls_key and peer_tls_ca",
    "preconnect": "dyno always connects to its Redis and its peers at start",
    "auto_eject_hosts": "dyno routes around a peer gossip judges down (phi_convict_threshold)",
    "server_retry_timeout": "dyno reconnects with its own back-off (50 ms to 2 s)",
    "server_failure_limit": "dyno routes around a peer gossip judges down (phi_convict_threshold)",
    "local_peer_connections": "dyno keeps one pipelined connection to each peer",
    "remote_peer_connections": "dyno keeps one pipelined connection to each peer",
    "stats_interval": "dyno's counters are live (/info, /metrics)",
    "mbuf_size": "dyno reads into buffers of its own size",
    "max_msgs": "dyno bounds what it holds per connection instead",
}
# Settings dyno refuses at anything but their default: what they ask for is not built.
# (None today; secure_server_option was one until peer TLS.)
_NOT_YET: dict[str, str] = {}
_PEER_TLS_FILES = ("peer_tls_cert", "peer_tls_key", "peer_tls_ca")

# twemproxy keys people bring along; still errors, with a pointer.
_FOREIGN = {
    "redis_auth": "twemproxy's key; dyno's is requirepass",
    "redis_db": "twemproxy's key; dyno always uses database 0",
    "tcpkeepalive": "twemproxy's key; dyno does not support it",
    "reuseport": "twemproxy's key; dyno does not support it",
}

_FIELDS = {field.name: field for field in dataclasses.fields(Config)}
_REQUIRED = [name for name, field in _FIELDS.items() if field.default is dataclasses.MISSING]
_EXAMPLES = {"listen": "listen: 127.0.0.1:8102", "servers": "servers: ['127.0.0.1:6379:1']"}


def _did_you_mean(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# ---------------------------------------------------------------------------
# Rules that span keys.


def _effective(values: dict[str, Any], key: str) -> Any:
    return values[key] if key in values else _FIELDS[key].default


def _is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::")


def _check_together(values: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Return (errors, warnings) as (key path, message) pairs.

    Called only when every key parsed, so the required keys are in ``values``.
    """
    errors: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []

    if values.get("dyn_seeds"):
        if "dyn_listen" not in values:
            errors.append(("dyn_listen", "missing; required when dyn_seeds lists peers, "
                                         "since it is the address they reach this node at"))
        if "tokens" not in values and not values.get("auto_bootstrap") and not values.get("replace_node"):
            errors.append(("tokens", "missing; required when dyn_seeds lists peers (nodes "
                                     "of one rack must not share the default token 0), unless "
                                     "auto_bootstrap or replace_node chooses them"))
        dyn_listen = _effective(values, "dyn_listen")
        if _is_wildcard(dyn_listen.host):
            warnings.append(("dyn_listen", f"{dyn_listen} is a wildcard address, so this node's "
                                           "name does not tell peers where it is; set "
                                           "dyn_listen to this node's own address"))

    if values.get("workers", 1) > 1:
        for key in ("auto_bootstrap", "replace_node"):
            if values.get(key):
                errors.append((key, "cannot be used with workers > 1 yet (a node that streams its "
                                    "ranges in runs as one process); start it with workers: 1, and once it "
                                    "is NORMAL drop this key and raise workers"))

    listeners = [(key, _effective(values, key)) for key in ("listen", "dyn_listen", "stats_listen")]
    for index, (key, address) in enumerate(listeners):
        for other_key, other in listeners[:index]:
            if address.port == other.port and (
                address.host == other.host or _is_wildcard(address.host) or _is_wildcard(other.host)
            ):
                which = "" if key in values else f"the default {key} "
                errors.append((key, f"{which}{address} clashes with {other_key} ({other}); "
                                    "each listener needs its own port"))
    # A hint is replayed up to max_hint_window after its write; if the tombstone of a
    # later delete were dropped by then, the replayed write would bring the key back.
    grace, window = _effective(values, "tombstone_grace"), _effective(values, "max_hint_window")
    if grace * 1000 < window:
        which = "tombstone_grace" if "tombstone_grace" in values else "max_hint_window"
        errors.append((which, f"tombstone_grace ({grace} s) is shorter than max_hint_window ({window} ms): "
                              "a hint replayed after its key's tombstone was dropped would bring a deleted "
                              f"key back; set tombstone_grace to at least {-(-window // 1000)}"))
    option = _effective(values, "secure_server_option")
    given = [key for key in _PEER_TLS_FILES if _effective(values, key) is not None]
    if option != "none" and len(given) < len(_PEER_TLS_FILES):
        missing = ", ".join(key for key in _PEER_TLS_FILES if key not in given)
        errors.append(("secure_server_option", f"{option!r} makes peer links TLS, which needs "
                                               "peer_tls_cert, peer_tls_key and peer_tls_ca (this node's "
                                               f"certificate, its key, the cluster CA); missing: {missing}"))
    elif option == "none":
        for key in given:
            warnings.append((key, "accepted but has no effect: secure_server_option is none, so no "
                                  "peer link uses TLS"))
    # The files themselves are checked where they are opened (dyno.tls, at check-config
    # and start): this module does no I/O but reading the config.
    cert, key = values.get("client_tls_cert"), values.get("client_tls_key")
    if (cert is None) != (key is None):
        given, missing = ("client_tls_cert", "client_tls_key") if key is None else (
            "client_tls_key", "client_tls_cert")
        errors.append((missing, f"missing; {given} is set, and TLS on the client port needs "
                                "both the certificate and its key"))
    if values.get("client_tls_ca") is not None and cert is None and key is None:
        errors.append(("client_tls_ca", "needs client_tls_cert and client_tls_key (the client "
                                        "port speaks TLS only when both are set)"))

    if values.get("hash") == "slot":  # slots are Redis Cluster's: its clients always apply {} tags
        tag = values.get("hash_tag")
        if tag is None:
            values["hash_tag"] = "{}"
        elif tag != "{}":
            errors.append(("hash_tag", f"{_quote(tag)} cannot be used with hash: slot, whose slots are Redis "
                                       "Cluster's: cluster-mode clients hash what is between { and }; "
                                       "drop hash_tag or set it to \"{}\""))
    _moving_in(values, errors)
    datastore = values["servers"][0].address
    for key, address in listeners:
        if datastore == address:
            errors.append(("servers[0]", f"{datastore} is this node's own {key} address; "
                                         "it must be the local Redis"))
    return errors, warnings


def _moving_in(values: dict[str, Any], errors: list[tuple[str, str]]) -> None:
    """auto_bootstrap and replace_node: the tokens they take (into ``values``), or errors.
    A replacement takes the replaced node's tokens from its dyn_seeds entry; a joining
    node without tokens splits the widest range of its rack as dyn_seeds describe it."""
    from dyno.ownership import split_range  # (ownership needs the ring, not the config)
    replace = values.get("replace_node")
    seeds = values.get("dyn_seeds") or ()
    if (replace or values.get("auto_bootstrap")) and not _effective(values, "enable_gossip"):
        errors.append(("replace_node" if replace else "auto_bootstrap",
                       "needs enable_gossip: a move is announced to the other nodes by gossip"))
        return
    if replace:
        if values.get("auto_bootstrap"):
            errors.append(("replace_node", "and auto_bootstrap both set; a replacement streams its data in "
                                           "already: set one"))
            return
        old = next((seed for seed in seeds if str(seed.address) == replace), None)
        if old is None:
            errors.append(("replace_node", f"{replace!r} is not in dyn_seeds; list the dead node there "
                                           "(host:port:rack:dc:tokens), so its tokens and rack are known"))
            return
        rack, dc = _effective(values, "rack"), _effective(values, "datacenter")
        if (old.rack, old.dc) != (rack, dc):
            errors.append(("replace_node", f"{replace} is in rack {old.rack} of {old.dc}; this node is in "
                                           f"rack {rack} of {dc}: a replacement takes the dead node's rack"))
        if "tokens" in values and set(values["tokens"]) != set(old.tokens):
            errors.append(("tokens", f"differ from those of {replace} ({','.join(map(str, old.tokens))}), "
                                     "which a replacement takes; leave tokens out"))
        values["tokens"] = tuple(old.tokens)
    elif values.get("auto_bootstrap") and "tokens" not in values:
        rack, dc = _effective(values, "rack"), _effective(values, "datacenter")
        taken = [token for seed in seeds if (seed.rack, seed.dc) == (rack, dc) for token in seed.tokens]
        if not taken:
            errors.append(("auto_bootstrap", f"no node of rack {rack} of {dc} in dyn_seeds: give tokens, "
                                             "or list the rack's nodes there"))
            return
        values["tokens"] = tuple(split_range(taken, 1))


# ---------------------------------------------------------------------------
# YAML.


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with fewer implicit booleans and integers, refusing duplicate keys.

    Under YAML 1.1 (PyYAML's default) ``rack: no`` is a boolean, ``tokens: 0100``
    is 64 and ``1:20`` is 80; here all three are strings (and numeric keys read
    "0100" as decimal 100). Every scalar this loader reads as a boolean or an
    integer PyYAML reads the same way, so files written by ``yaml.safe_dump``
    load unchanged.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_lines: dict[str, int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in first_lines:
                    raise _DuplicateKey(f"duplicate key {key_node.value!r} (first given on "
                                        f"line {first_lines[key_node.value] + 1}); each key "
                                        "may appear once", key_node.start_mark)
                first_lines[key_node.value] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


class _DuplicateKey(yaml.constructor.ConstructorError):
    def __init__(self, problem: str, mark: yaml.Mark) -> None:
        super().__init__(None, None, problem, mark)


_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL_TAG, _INT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
# No leading zeros: "0100" stays a string (numeric keys read it as decimal 100) and
# so does "08" (a rack or password), which PyYAML's dumper writes unquoted.
_StrictLoader.add_implicit_resolver(
    _INT_TAG, re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789"))


def _construct_decimal(loader: _StrictLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if not re.fullmatch(r"[-+]?[0-9]+", text):
        raise yaml.constructor.ConstructorError(None, None, f"{text!r} is not a decimal integer",
                                                node.start_mark)
    return int(text)


_StrictLoader.add_constructor(_INT_TAG, _construct_decimal)


def _load_yaml(text: str, path: str) -> object:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        if isinstance(error, _DuplicateKey):
            raise ConfigError(f"{path}: {where}{error.problem}") from None
        context = f"{error.context}, " if error.context else ""  # "while parsing ..., "
        raise ConfigError(f"{path}: {where}invalid YAML: {context}{error.problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None
    except Exception as error:  # noqa: BLE001 - PyYAML's constructors raise assorted
        # exceptions on malformed explicit tags (!!timestamp x, !!bool x, ...).
        raise ConfigError(f"{path}: invalid YAML: {type(error).__name__}: {error}") from None


def _root(document: object, path: str) -> tuple[str, dict[Any, Any]]:
    example = "such as dyn_o_mite: with the node's settings indented under it"
    if document is None or document == {}:
        raise ConfigError(f"{path}: is empty; expected one root key {example}")
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected one root key {example}, got {_describe(document)}")
    if len(document) != 1:
        names = ", ".join(_describe(key) for key in document)
        raise ConfigError(f"{path}: has {len(document)} root keys ({names}); expected exactly "
                          f"one root key {example} (dyno, like Dynomite, runs one pool per node)")
    ((pool, settings),) = document.items()
    if not isinstance(pool, str) or not pool:
        raise ConfigError(f"{path}: the root key {_describe(pool)} is not a name; "
                          f"expected a root key {example}")
    if not isinstance(settings, dict) or not settings:
        raise ConfigError(f"{path}: {pool}: expected the node's settings (listen:, servers:, ...) "
                          f"indented under the root key, got {_describe(settings)}")
    return pool, settings


# ---------------------------------------------------------------------------
# Entry points.


def parse_config(text: str, path: str = "<string>") -> Config:
    """Parse a Dynomite-format YAML config; ``path`` only names it in messages."""
    pool, settings = _root(_load_yaml(text, path), path)
    problems: list[str] = []
    warnings: list[str] = []
    values: dict[str, Any] = {}

    def at(key: str) -> str:
        return f"{path}: {pool}.{key}"

    for key, value in settings.items():
        if not isinstance(key, str):
            problems.append(f"{path}: {pool}: key {_describe(key)} is not a name; "
                            "expected keys like listen")
            continue
        try:
            if key in _SETTINGS:
                values[key] = _SETTINGS[key](value)
                refusal = _NOT_YET.get(key)
                if refusal is not None and values[key] != _FIELDS[key].default:
                    raise _Invalid(refusal)
                no_effect = _NO_EFFECT.get(key)
                if no_effect is not None:
                    warnings.append(f"{at(key)}: accepted but has no effect: {no_effect}")
            elif key in _ALIASES:
                current = _ALIASES[key]
                if current in settings:
                    raise _Invalid(f"old name of {current}, which is also given; "
                                   f"keep only {current}")
                values[current] = _SETTINGS[current](value)
                warnings.append(f"{at(key)}: old name of {current}; read as {current}")
            elif key in _IGNORED:
                reason = _IGNORED[key](value)
                if reason:
                    warnings.append(f"{at(key)}: accepted but ignored: {reason}")
            else:
                hint = (f" ({_FOREIGN[key]})" if key in _FOREIGN
                        else _did_you_mean(key, [*_SETTINGS, *_ALIASES, *_IGNORED]))
                problems.append(f"{at(key)}: unknown key"
                                + (hint or "; see configs/README.md for the keys dyno reads"))
        except _Invalid as invalid:
            problems.append(f"{at(key)}{invalid.where}: {invalid.message}")

    for key in _REQUIRED:
        if key not in settings:
            problems.append(f"{at(key)}: missing; every node needs it, like {_EXAMPLES[key]}")

    if not problems:
        errors, cross_warnings = _check_together(values)
        problems += [f"{at(key)}: {message}" for key, message in errors]
        warnings += [f"{at(key)}: {message}" for key, message in cross_warnings]
    if problems:
        raise ConfigError(problems)
    return Config(path=path, pool=pool, warnings=tuple(warnings), **values)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and parse the config file at ``path``."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as file:
            text = file.read()
    except OSError as error:
        reason = error.strerror or error
        raise ConfigError(f"{name}: cannot read the config file: {reason}") from None
    except UnicodeDecodeError as error:
        where = f"{error.reason} at byte {error.start}"
        raise ConfigError(f"{name}: is not UTF-8 text ({where})") from None
    return parse_config(text, name)
