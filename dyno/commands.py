"""The Redis command table: what every command is, where its keys are, how dyno routes it.

This module owns one declarative table (``_TABLE`` below, one row per Redis 7.0 command and
subcommand) and the pure functions the proxy asks of it on every request:

- ``resolve(argv)``: the spec to run, or the exact RESP error line Redis itself would send
  (unknown command, unknown subcommand, wrong number of arguments), or dyno's refusal of a
  command that cannot work in a cluster;
- ``key_positions(spec, argv)`` / ``keys(spec, argv)``: where the keys are -- exactly what
  Redis's ``COMMAND GETKEYS`` answers for that argv, quirks included (see the finders below);
- ``is_write(spec, argv)``: the read/write class, refined for SORT/GEORADIUS ... STORE.

Rules:
1. No I/O, no ``await``, no clock. The proxy, the peer server and the tests all share this.
2. The hot path is a dict lookup and a few integer comparisons; anything argv-dependent that
   is not a plain key range lives in a small finder attached to the few rows that need it.
3. Arity, key ranges and write flags are Redis's own (``COMMAND INFO`` of redis-server
   7.0.15; tests/test_commands.py checks every row against a live server). The few places
   where dyno deliberately differs are listed there, each with its reason.

Theory of operation: ``Route`` says *where* a command runs (DESIGN.md §5), ``write`` says which
consistency level applies (§4), ``Merge`` says how a command split across owners is put back
together. A row with keys and route ``KEY`` runs on the owner of its keys; when it has several
keys (RENAME, SINTERSTORE, EVAL ...) they must all have that one owner (hash tags), which the
proxy checks with ``colocated``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from types import MappingProxyType

__all__ = [
    "COMMANDS",
    "CommandSpec",
    "Merge",
    "Route",
    "arity_error",
    "colocated",
    "display_name",
    "is_write",
    "key_positions",
    "keys",
    "lookup",
    "resolve",
    "unknown_command_error",
    "unknown_subcommand_error",
    "unsupported_error",
]


class Route(enum.Enum):
    """Where a command runs."""

    #: On the owner of its keys. Several keys must share one owner (see ``colocated``).
    #: A KEY command whose ``key_positions`` is empty -- EVAL/FCALL with numkeys 0, or an
    #: argv so malformed that Redis finds no keys in it -- may run on any one node: its
    #: Redis then runs the script or replies with its own precise syntax error.
    KEY = "key"
    #: Split by key owner and merged back (``CommandSpec.merge`` says how).
    MULTI_KEY = "multi_key"
    #: Answered by this node without the ring: by dyno itself (PING, ECHO, HELLO, AUTH,
    #: SELECT, COMMAND, CLIENT SETNAME, INFO ...) or, for answers that are the same
    #: everywhere (TIME, LOLWUT, OBJECT HELP and the other *HELP subcommands), by its Redis.
    LOCAL = "local"
    #: Fanned out over one full replica: every node of one rack (DBSIZE, KEYS, SCAN, RANDOMKEY).
    ONE_REPLICA = "one_replica"
    #: Sent to every node of every rack and DC (FLUSHDB, FLUSHALL, SCRIPT LOAD/FLUSH); all
    #: nodes give the same reply (+OK, the script's SHA1) unless one of them fails.
    ALL_REPLICAS = "all_replicas"
    #: Refused with ``CommandSpec.reason``; the connection stays open.
    UNSUPPORTED = "unsupported"


class Merge(enum.Enum):
    """How a command split by key owner is split and its replies merged."""

    #: One key per argument, each part gets its keys in order; replies are arrays put back
    #: in the order of the request's keys (MGET).
    MGET = "mget"
    #: Key/value pairs; each part gets its pairs; every part answers +OK, and so does the whole.
    MSET = "mset"
    #: Integer replies are added up (DEL, UNLINK, EXISTS, TOUCH; DBSIZE over one replica).
    SUM = "sum"


#: Finds the argv indexes of the keys for rows whose keys are not a plain range.
KeyFinder = Callable[[Sequence[bytes]], list[int]]
#: Extra argv validation for a few rows: returns a RESP error line, or None if argv is fine.
Check = Callable[["CommandSpec", Sequence[bytes]], "bytes | None"]


@dataclass(frozen=True, slots=True, eq=False)
class CommandSpec:
    """One row of the table: a Redis command (or subcommand) and how dyno treats it."""

    #: Redis's full name, lower case: b"get"; subcommands b"object|encoding".
    name: bytes
    #: Redis convention: > 0 exact argc (the name included), < 0 at least -arity.
    arity: int
    #: Redis's legacy key range: argv indexes; last_key < 0 counts from the end; 0, 0, 0 = none.
    first_key: int
    last_key: int
    step: int
    #: May modify data: the write consistency level applies, replicas get it too.
    write: bool
    route: Route
    merge: Merge | None = None
    #: For UNSUPPORTED: why, in words shown to the client.
    reason: str = ""
    #: Container commands (OBJECT, CLIENT, XINFO ...): argv[1].lower() -> subcommand spec.
    #: A container's own route only matters when it runs bare, which only COMMAND can.
    subcommands: dict[bytes, CommandSpec] | None = None
    #: Rows whose keys depend on argv (numkeys, STORE, STREAMS ...); None = plain range.
    find_keys: KeyFinder | None = None
    #: Extra validation run by ``resolve`` (MSET pairs, SELECT n).
    check: Check | None = None
    #: Redis's COMMAND INFO "movablekeys": the keys are found by ``find_keys``.
    movable_keys: bool = field(init=False)
    #: Precomputed replies, so that refusing a request allocates nothing.
    arity_error_line: bytes = field(init=False, repr=False)
    unsupported_error_line: bytes | None = field(init=False, repr=False)
    #: Key positions when they do not depend on argc (GET: (1,); RENAME: (1, 2)), else None.
    fixed_keys: tuple[int, ...] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "movable_keys", self.find_keys is not None)
        set_(self, "arity_error_line", arity_error(self.name))
        refusal = None
        if self.route is Route.UNSUPPORTED:
            refusal = unsupported_error(display_name(self.name), self.reason)
        set_(self, "unsupported_error_line", refusal)
        fixed = None
        if not self.first_key and self.find_keys is None:
            fixed = ()
        elif self.find_keys is None and self.last_key >= 0:  # then arity fixes the positions
            fixed = tuple(range(self.first_key, self.last_key + 1, self.step))
        set_(self, "fixed_keys", fixed)


def display_name(name: bytes) -> str:
    """How a command is named to a person: b"config|set" -> "CONFIG SET"."""
    return name.decode("ascii").replace("|", " ").upper()


# --- error lines, worded as Redis 7.0 words them (server.c, commandCheckExistence/Arity) -----

def _c_string(arg: bytes) -> bytes:
    """What C's "%s" prints of an argument: everything up to its first NUL byte."""
    nul = arg.find(b"\0")
    return arg if nul < 0 else arg[:nul]


def _word(arg: bytes) -> bytes:
    """An argument as Redis's strcasecmp() sees it when matching an option name."""
    return _c_string(arg).lower()


def _one_line(text: bytes) -> bytes:
    """Redis turns CR and LF inside error text into spaces, so that the reply stays one line."""
    return text.replace(b"\r", b" ").replace(b"\n", b" ")


def unknown_command_error(argv: Sequence[bytes]) -> bytes:
    """``-ERR unknown command 'foo', with args beginning with: 'a' 'b' `` as Redis 7.0 sends it."""
    name = _c_string(argv[0] if argv else b"")[:128]
    args = b""
    for arg in argv[1:]:
        if len(args) >= 128:
            break
        args += b"'" + _c_string(arg)[: 128 - len(args)] + b"' "
    text = b"unknown command '" + name + b"', with args beginning with: " + args
    return b"-ERR " + _one_line(text) + b"\r\n"


def unknown_subcommand_error(argv: Sequence[bytes]) -> bytes:
    """``-ERR unknown subcommand 'foo'. Try OBJECT HELP.`` as Redis 7.0 sends it."""
    text = (b"unknown subcommand '" + _c_string(argv[1])[:128] + b"'. Try "
            + _c_string(argv[0]).upper() + b" HELP.")
    return b"-ERR " + _one_line(text) + b"\r\n"


def arity_error(spec_or_name: CommandSpec | bytes | str) -> bytes:
    """``-ERR wrong number of arguments for 'get' command``; subcommands by their full name
    ('object|encoding'), as Redis 7.0 does. EXEC is the odd one: Redis rejects any EXEC as
    an aborted transaction (server.c rejectCommand -> execCommandAbort)."""
    if isinstance(spec_or_name, CommandSpec):
        return spec_or_name.arity_error_line
    name = spec_or_name.encode() if isinstance(spec_or_name, str) else spec_or_name
    text = b"wrong number of arguments for '" + name.lower() + b"' command\r\n"
    if name.lower() == b"exec":
        return b"-EXECABORT Transaction discarded because of: " + text
    return b"-ERR " + text


def unsupported_error(what: str, reason: str) -> bytes:
    """dyno's refusal: ``-ERR 'MULTI' is not supported in a dyno cluster: <reason>``."""
    text = f"'{what}' is not supported in a dyno cluster: {reason}".encode()
    return b"-ERR " + _one_line(text) + b"\r\n"


# --- number parsing exactly as Redis does it (util.c string2ll, libc atoi) ------------------

_LLONG_MIN, _LLONG_MAX = -(1 << 63), (1 << 63) - 1


def _string2ll(s: bytes) -> int | None:
    """Redis's strict integer parser: no sign but '-', no leading zeros, no spaces."""
    if not s or len(s) >= 21:
        return None
    if s == b"0":
        return 0
    digits = s[1:] if s[0] == 0x2D else s  # '-'
    if not digits.isdigit() or digits[0] == 0x30:  # bytes.isdigit is ASCII only
        return None
    value = -int(digits) if digits is not s else int(digits)
    return value if _LLONG_MIN <= value <= _LLONG_MAX else None


def _atoi(s: bytes) -> int:
    """glibc atoi: (int) strtol(s, NULL, 10) -- leading space, a sign, digits, then anything."""
    s = _c_string(s).lstrip(b" \t\n\v\f\r")
    sign = 1
    if s[:1] in (b"+", b"-"):
        sign = -1 if s[:1] == b"-" else 1
        s = s[1:]
    end = 0
    while end < len(s) and 0x30 <= s[end] <= 0x39:
        end += 1
    value = sign * int(s[:end]) if end else 0
    return _int32(max(_LLONG_MIN, min(_LLONG_MAX, value)))  # strtol saturates, (int) wraps


def _int32(value: int) -> int:
    """C's (int) cast of a wider integer: the low 32 bits, as a signed number."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


# --- key finders for the rows whose keys depend on argv (Redis's "movablekeys") -------------
# Redis 7.0 answers COMMAND GETKEYS from the command's key specs first and falls back to the
# command's getkeys_proc when a spec cannot be applied (db.c getKeysFromCommandWithSpecs).
# The two disagree in corners -- a numkeys of "+2" puts ZUNIONSTORE's destination last --
# and each finder below reproduces both paths, because the tests compare with the server.

def _numkeys(at: int, store: int = 0) -> KeyFinder:
    """numkeys at argv[at], the keys right after it; optionally a destination key at argv[store]
    (ZUNIONSTORE dst numkeys k...; EVAL script numkeys k...; LMPOP numkeys k... LEFT)."""
    first = at + 1

    def find_keys(argv: Sequence[bytes]) -> list[int]:
        argc = len(argv)
        count = _string2ll(argv[at])  # the key spec: a strict integer >= 0, cast to int
        if count is not None and count >= 0:
            last = _int32(first + _int32(count) - 1)
            if first <= last < argc:
                found = list(range(first, last + 1))
                return [store, *found] if store else found
        count = _atoi(argv[at])  # the getkeys_proc (genericGetKeys): atoi, destination last
        if count < 1 or count > argc - first:
            return []
        found = list(range(first, first + count))
        if store:
            found.append(store)
        return found

    return find_keys


_SORT_SKIP = {b"limit": 2, b"get": 1, b"by": 1}


def _sort_keys(argv: Sequence[bytes]) -> list[int]:
    """SORT key [BY p] [LIMIT o c] [GET p ...] [ASC|DESC] [ALPHA] [STORE dst] (db.c sortGetKeys:
    the last STORE wins; STORE's argument is itself scanned as an option)."""
    store = 0
    argc = len(argv)
    i = 2
    while i < argc:
        word = _word(argv[i])
        skip = _SORT_SKIP.get(word)
        if skip is not None:
            i += skip
        elif word == b"store" and i + 1 < argc:
            store = i + 1
        i += 1
    return [1, store] if store else [1]


def _sort_ro_keys(argv: Sequence[bytes]) -> list[int]:
    """SORT_RO has no STORE: its only key is the one it sorts."""
    return [1]


def _keyword_at(argv: Sequence[bytes], keyword: bytes, start: int) -> int:
    """Index of the first argv[i] equal to keyword (any case) for start <= i < argc - 1, else 0:
    the search of a "keyword" key spec (it never looks at the last argument)."""
    for i in range(max(start, 1), len(argv) - 1):
        if _word(argv[i]) == keyword:
            return i
    return 0


def _georadius_keys(options_from: int) -> KeyFinder:
    """GEORADIUS[BYMEMBER] key ... [STORE dst] [STOREDIST dst]: the first STORE and the first
    STOREDIST at or after options_from, in that order (two keyword key specs)."""

    def find_keys(argv: Sequence[bytes]) -> list[int]:
        found = [1]
        store = _keyword_at(argv, b"store", options_from)
        if store:
            found.append(store + 1)
        storedist = _keyword_at(argv, b"storedist", options_from)
        if storedist:
            found.append(storedist + 1)
        return found

    return find_keys


def _xread_keys(options_from: int) -> KeyFinder:
    """XREAD[GROUP] ... STREAMS k1 k2 ... id1 id2 ...: the first half of what follows the first
    STREAMS at or after options_from (key spec); when that leaves no key, stream.c
    xreadGetKeys decides (it skips option arguments and wants an even count)."""

    def find_keys(argv: Sequence[bytes]) -> list[int]:
        argc = len(argv)
        streams = _keyword_at(argv, b"streams", options_from)
        if not streams:
            return []
        first = streams + 1
        last = first + (argc - first) // 2 - 1
        if last >= first:
            return list(range(first, last + 1))
        streams = _xread_streams_option(argv)
        count = argc - streams - 1
        if streams < 0 or count == 0 or count % 2:
            return []
        return list(range(streams + 1, streams + 1 + count // 2))

    return find_keys


_XREAD_OPTION_ARGS = {b"block": 1, b"count": 1, b"group": 2, b"noack": 0}


def _xread_streams_option(argv: Sequence[bytes]) -> int:
    """Index of the STREAMS option of XREAD/XREADGROUP, skipping option arguments; -1 if none."""
    i = 1
    while i < len(argv):
        word = _word(argv[i])
        if word == b"streams":
            return i
        skip = _XREAD_OPTION_ARGS.get(word)
        if skip is None:
            return -1
        i += skip + 1
    return -1


_MIGRATE_OPTION_ARGS = {b"copy": 0, b"replace": 0, b"auth": 1, b"auth2": 2}


def _migrate_keys(argv: Sequence[bytes]) -> list[int]:
    """MIGRATE host port key|"" db timeout [COPY] [REPLACE] [AUTH pw | AUTH2 u pw] [KEYS k ...]
    (key spec: argv[3], unless a KEYS keyword appears; then cluster.c migrateGetKeys decides)."""
    argc = len(argv)
    if not any(_word(argv[i]) == b"keys" for i in range(1, argc - 1)):
        return [3]
    i = 6
    while i < argc:
        word = _word(argv[i])
        if word == b"keys":
            if argv[3]:
                return []  # KEYS needs an empty key argument
            return list(range(i + 1, argc))
        i += _MIGRATE_OPTION_ARGS.get(word, 0) + 1
    return [3]


# --- extra validation for a few rows (run by resolve after the arity check) -----------------

def _even_argc(spec: CommandSpec, argv: Sequence[bytes]) -> bytes | None:
    """MSET/MSETNX take key/value pairs; Redis answers an odd count with its arity error."""
    return spec.arity_error_line if len(argv) % 2 == 0 else None


def blocks(argv: Sequence[bytes]) -> bool:
    """Whether an XREAD/XREADGROUP has the BLOCK option (before STREAMS)."""
    i = 1
    while i < len(argv):
        word = _word(argv[i])
        if word == b"block" and i + 1 < len(argv):
            return True
        skip = _XREAD_OPTION_ARGS.get(word)
        if skip is None:
            return False
        i += skip + 1
    return False


_SELECT_OUT_OF_RANGE = (b"-ERR value is out of range, value must between -2147483648 and "
                        b"2147483647\r\n")
_NOT_AN_INTEGER = b"-ERR value is not an integer or out of range\r\n"


def _only_db0(spec: CommandSpec, argv: Sequence[bytes]) -> bytes | None:
    """SELECT 0 is fine; other databases do not exist in a dyno cluster."""
    index = _string2ll(argv[1])
    if index == 0:
        return None
    if index is None:
        return _NOT_AN_INTEGER
    if not -(1 << 31) <= index < 1 << 31:
        return _SELECT_OUT_OF_RANGE
    return unsupported_error("SELECT " + str(index), DATABASES)


# --- why a command is refused (shown to the client, one line each) --------------------------

REPLICATION = "dyno replicates between its nodes by itself; their Redis servers are not replicas"
ADMIN = "administer each node's Redis directly, not through dyno"
CLUSTER = "dyno is not a Redis Cluster; its ring is described on the admin port (/cluster_describe)"
DATABASES = "a dyno cluster has only database 0"
MIGRATE = "dyno's ring decides where keys live; MIGRATE would move them behind its back"
CLIENT_STATE = "dyno does not relay this per-connection Redis state"
SCRIPT_ADMIN = "a script runs on the node that owns its keys; ask that node's Redis directly"
FUNCTIONS = "load functions into each node's Redis directly; FCALL is then routed by its keys"


# --- the table --------------------------------------------------------------------------------

READ, WRITE = False, True
KEY, MULTI_KEY, LOCAL = Route.KEY, Route.MULTI_KEY, Route.LOCAL
ONE_REPLICA, ALL_REPLICAS, UNSUPPORTED = Route.ONE_REPLICA, Route.ALL_REPLICAS, Route.UNSUPPORTED


def _cmd(name: str, arity: int, key_range: tuple[int, int, int], write: bool, route: Route, *,
         merge: Merge | None = None, find_keys: KeyFinder | None = None, check: Check | None = None,
         reason: str = "", subcommands: tuple[CommandSpec, ...] = ()) -> CommandSpec:
    first, last, step = key_range
    subs = {spec.name.split(b"|", 1)[1]: spec for spec in subcommands} if subcommands else None
    return CommandSpec(name.encode(), arity, first, last, step, write, route, merge, reason, subs,
                       find_keys, check)


_TABLE: tuple[CommandSpec, ...] = (
    #    name                         arity  keys        write  route, extras
    # --- strings ---------------------------------------------------------------
    _cmd("append",                        3, (1,  1, 1), WRITE, KEY),
    _cmd("decr",                          2, (1,  1, 1), WRITE, KEY),
    _cmd("decrby",                        3, (1,  1, 1), WRITE, KEY),
    _cmd("get",                           2, (1,  1, 1), READ,  KEY),
    _cmd("getdel",                        2, (1,  1, 1), WRITE, KEY),
    _cmd("getex",                        -2, (1,  1, 1), WRITE, KEY),
    _cmd("getrange",                      4, (1,  1, 1), READ,  KEY),
    _cmd("getset",                        3, (1,  1, 1), WRITE, KEY),
    _cmd("incr",                          2, (1,  1, 1), WRITE, KEY),
    _cmd("incrby",                        3, (1,  1, 1), WRITE, KEY),
    _cmd("incrbyfloat",                   3, (1,  1, 1), WRITE, KEY),
    _cmd("lcs",                          -3, (1,  2, 1), READ,  KEY),
    _cmd("mget",                         -2, (1, -1, 1), READ,  MULTI_KEY, merge=Merge.MGET),
    _cmd("mset",                         -3, (1, -1, 2), WRITE, MULTI_KEY, merge=Merge.MSET, check=_even_argc),
    _cmd("msetnx",                       -3, (1, -1, 2), WRITE, KEY, check=_even_argc),
    _cmd("psetex",                        4, (1,  1, 1), WRITE, KEY),
    _cmd("set",                          -3, (1,  1, 1), WRITE, KEY),
    _cmd("setex",                         4, (1,  1, 1), WRITE, KEY),
    _cmd("setnx",                         3, (1,  1, 1), WRITE, KEY),
    _cmd("setrange",                      4, (1,  1, 1), WRITE, KEY),
    _cmd("strlen",                        2, (1,  1, 1), READ,  KEY),
    _cmd("substr",                        4, (1,  1, 1), READ,  KEY),
    # --- bitmaps ---------------------------------------------------------------
    _cmd("bitcount",                     -2, (1,  1, 1), READ,  KEY),
    _cmd("bitfield",                     -2, (1,  1, 1), WRITE, KEY),
    _cmd("bitfield_ro",                  -2, (1,  1, 1), READ,  KEY),
    _cmd("bitop",                        -4, (2, -1, 1), WRITE, KEY),
    _cmd("bitpos",                       -3, (1,  1, 1), READ,  KEY),
    _cmd("getbit",                        3, (1,  1, 1), READ,  KEY),
    _cmd("setbit",                        4, (1,  1, 1), WRITE, KEY),
    # --- hashes ----------------------------------------------------------------
    _cmd("hdel",                         -3, (1,  1, 1), WRITE, KEY),
    _cmd("hexists",                       3, (1,  1, 1), READ,  KEY),
    _cmd("hget",                          3, (1,  1, 1), READ,  KEY),
    _cmd("hgetall",                       2, (1,  1, 1), READ,  KEY),
    _cmd("hincrby",                       4, (1,  1, 1), WRITE, KEY),
    _cmd("hincrbyfloat",                  4, (1,  1, 1), WRITE, KEY),
    _cmd("hkeys",                         2, (1,  1, 1), READ,  KEY),
    _cmd("hlen",                          2, (1,  1, 1), READ,  KEY),
    _cmd("hmget",                        -3, (1,  1, 1), READ,  KEY),
    _cmd("hmset",                        -4, (1,  1, 1), WRITE, KEY),
    _cmd("hrandfield",                   -2, (1,  1, 1), READ,  KEY),
    _cmd("hscan",                        -3, (1,  1, 1), READ,  KEY),
    _cmd("hset",                         -4, (1,  1, 1), WRITE, KEY),
    _cmd("hsetnx",                        4, (1,  1, 1), WRITE, KEY),
    _cmd("hstrlen",                       3, (1,  1, 1), READ,  KEY),
    _cmd("hvals",                         2, (1,  1, 1), READ,  KEY),
    # --- lists -----------------------------------------------------------------
    # Blocking pops run on the keys' watch replica, on a connection of the client's own (dyno.blocking).
    _cmd("blmove",                        6, (1,  2, 1), WRITE, LOCAL),
    _cmd("blmpop",                       -5, (0,  0, 0), WRITE, LOCAL, find_keys=_numkeys(at=2)),
    _cmd("blpop",                        -3, (1, -2, 1), WRITE, LOCAL),
    _cmd("brpop",                        -3, (1, -2, 1), WRITE, LOCAL),
    _cmd("brpoplpush",                    4, (1,  2, 1), WRITE, LOCAL),
    _cmd("lindex",                        3, (1,  1, 1), READ,  KEY),
    _cmd("linsert",                       5, (1,  1, 1), WRITE, KEY),
    _cmd("llen",                          2, (1,  1, 1), READ,  KEY),
    _cmd("lmove",                         5, (1,  2, 1), WRITE, KEY),
    _cmd("lmpop",                        -4, (0,  0, 0), WRITE, KEY, find_keys=_numkeys(at=1)),
    _cmd("lpop",                         -2, (1,  1, 1), WRITE, KEY),
    _cmd("lpos",                         -3, (1,  1, 1), READ,  KEY),
    _cmd("lpush",                        -3, (1,  1, 1), WRITE, KEY),
    _cmd("lpushx",                       -3, (1,  1, 1), WRITE, KEY),
    _cmd("lrange",                        4, (1,  1, 1), READ,  KEY),
    _cmd("lrem",                          4, (1,  1, 1), WRITE, KEY),
    _cmd("lset",                          4, (1,  1, 1), WRITE, KEY),
    _cmd("ltrim",                         4, (1,  1, 1), WRITE, KEY),
    _cmd("rpop",                         -2, (1,  1, 1), WRITE, KEY),
    _cmd("rpoplpush",                     3, (1,  2, 1), WRITE, KEY),
    _cmd("rpush",                        -3, (1,  1, 1), WRITE, KEY),
    _cmd("rpushx",                       -3, (1,  1, 1), WRITE, KEY),
    # --- sets ------------------------------------------------------------------
    _cmd("sadd",                         -3, (1,  1, 1), WRITE, KEY),
    _cmd("scard",                         2, (1,  1, 1), READ,  KEY),
    _cmd("sdiff",                        -2, (1, -1, 1), READ,  KEY),
    _cmd("sdiffstore",                   -3, (1, -1, 1), WRITE, KEY),
    _cmd("sinter",                       -2, (1, -1, 1), READ,  KEY),
    _cmd("sintercard",                   -3, (0,  0, 0), READ,  KEY, find_keys=_numkeys(at=1)),
    _cmd("sinterstore",                  -3, (1, -1, 1), WRITE, KEY),
    _cmd("sismember",                     3, (1,  1, 1), READ,  KEY),
    _cmd("smembers",                      2, (1,  1, 1), READ,  KEY),
    _cmd("smismember",                   -3, (1,  1, 1), READ,  KEY),
    _cmd("smove",                         4, (1,  2, 1), WRITE, KEY),
    _cmd("spop",                         -2, (1,  1, 1), WRITE, KEY),
    _cmd("srandmember",                  -2, (1,  1, 1), READ,  KEY),
    _cmd("srem",                         -3, (1,  1, 1), WRITE, KEY),
    _cmd("sscan",                        -3, (1,  1, 1), READ,  KEY),
    _cmd("sunion",                       -2, (1, -1, 1), READ,  KEY),
    _cmd("sunionstore",                  -3, (1, -1, 1), WRITE, KEY),
    # --- sorted sets -----------------------------------------------------------
    _cmd("bzmpop",                       -5, (0,  0, 0), WRITE, LOCAL, find_keys=_numkeys(at=2)),
    _cmd("bzpopmax",                     -3, (1, -2, 1), WRITE, LOCAL),
    _cmd("bzpopmin",                     -3, (1, -2, 1), WRITE, LOCAL),
    _cmd("zadd",                         -4, (1,  1, 1), WRITE, KEY),
    _cmd("zcard",                         2, (1,  1, 1), READ,  KEY),
    _cmd("zcount",                        4, (1,  1, 1), READ,  KEY),
    _cmd("zdiff",                        -3, (0,  0, 0), READ,  KEY, find_keys=_numkeys(at=1)),
    _cmd("zdiffstore",                   -4, (1,  1, 1), WRITE, KEY, find_keys=_numkeys(at=2, store=1)),
    _cmd("zincrby",                       4, (1,  1, 1), WRITE, KEY),
    _cmd("zinter",                       -3, (0,  0, 0), READ,  KEY, find_keys=_numkeys(at=1)),
    _cmd("zintercard",                   -3, (0,  0, 0), READ,  KEY, find_keys=_numkeys(at=1)),
    _cmd("zinterstore",                  -4, (1,  1, 1), WRITE, KEY, find_keys=_numkeys(at=2, store=1)),
    _cmd("zlexcount",                     4, (1,  1, 1), READ,  KEY),
    _cmd("zmpop",                        -4, (0,  0, 0), WRITE, KEY, find_keys=_numkeys(at=1)),
    _cmd("zmscore",                      -3, (1,  1, 1), READ,  KEY),
    _cmd("zpopmax",                      -2, (1,  1, 1), WRITE, KEY),
    _cmd("zpopmin",                      -2, (1,  1, 1), WRITE, KEY),
    _cmd("zrandmember",                  -2, (1,  1, 1), READ,  KEY),
    _cmd("zrange",                       -4, (1,  1, 1), READ,  KEY),
    _cmd("zrangebylex",                  -4, (1,  1, 1), READ,  KEY),
    _cmd("zrangebyscore",                -4, (1,  1, 1), READ,  KEY),
    _cmd("zrangestore",                  -5, (1,  2, 1), WRITE, KEY),
    _cmd("zrank",                         3, (1,  1, 1), READ,  KEY),
    _cmd("zrem",                         -3, (1,  1, 1), WRITE, KEY),
    _cmd("zremrangebylex",                4, (1,  1, 1), WRITE, KEY),
    _cmd("zremrangebyrank",               4, (1,  1, 1), WRITE, KEY),
    _cmd("zremrangebyscore",              4, (1,  1, 1), WRITE, KEY),
    _cmd("zrevrange",                    -4, (1,  1, 1), READ,  KEY),
    _cmd("zrevrangebylex",               -4, (1,  1, 1), READ,  KEY),
    _cmd("zrevrangebyscore",             -4, (1,  1, 1), READ,  KEY),
    _cmd("zrevrank",                      3, (1,  1, 1), READ,  KEY),
    _cmd("zscan",                        -3, (1,  1, 1), READ,  KEY),
    _cmd("zscore",                        3, (1,  1, 1), READ,  KEY),
    _cmd("zunion",                       -3, (0,  0, 0), READ,  KEY, find_keys=_numkeys(at=1)),
    _cmd("zunionstore",                  -4, (1,  1, 1), WRITE, KEY, find_keys=_numkeys(at=2, store=1)),
    # --- HyperLogLog -----------------------------------------------------------
    _cmd("pfadd",                        -2, (1,  1, 1), WRITE, KEY),
    _cmd("pfcount",                      -2, (1, -1, 1), WRITE, KEY),  # one key: see is_write
    _cmd("pfdebug",                       3, (2,  2, 1), WRITE, UNSUPPORTED, reason=ADMIN),
    _cmd("pfmerge",                      -2, (1, -1, 1), WRITE, KEY),
    _cmd("pfselftest",                    1, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
    # --- geo -------------------------------------------------------------------
    _cmd("geoadd",                       -5, (1,  1, 1), WRITE, KEY),
    _cmd("geodist",                      -4, (1,  1, 1), READ,  KEY),
    _cmd("geohash",                      -2, (1,  1, 1), READ,  KEY),
    _cmd("geopos",                       -2, (1,  1, 1), READ,  KEY),
    _cmd("georadius",                    -6, (1,  1, 1), WRITE, KEY, find_keys=_georadius_keys(options_from=6)),
    _cmd("georadius_ro",                 -6, (1,  1, 1), READ,  KEY),
    _cmd("georadiusbymember",            -5, (1,  1, 1), WRITE, KEY, find_keys=_georadius_keys(options_from=5)),
    _cmd("georadiusbymember_ro",         -5, (1,  1, 1), READ,  KEY),
    _cmd("geosearch",                    -7, (1,  1, 1), READ,  KEY),
    _cmd("geosearchstore",               -8, (1,  2, 1), WRITE, KEY),
    # --- streams ---------------------------------------------------------------
    _cmd("xack",                         -4, (1,  1, 1), WRITE, KEY),
    _cmd("xadd",                         -5, (1,  1, 1), WRITE, KEY),
    _cmd("xautoclaim",                   -6, (1,  1, 1), WRITE, KEY),
    _cmd("xclaim",                       -6, (1,  1, 1), WRITE, KEY),
    _cmd("xdel",                         -3, (1,  1, 1), WRITE, KEY),
    _cmd("xgroup",                       -2, (0,  0, 0), READ,  KEY, subcommands=(
        _cmd("xgroup|create",            -5, (2,  2, 1), WRITE, KEY),
        _cmd("xgroup|createconsumer",     5, (2,  2, 1), WRITE, KEY),
        _cmd("xgroup|delconsumer",        5, (2,  2, 1), WRITE, KEY),
        _cmd("xgroup|destroy",            4, (2,  2, 1), WRITE, KEY),
        _cmd("xgroup|help",               2, (0,  0, 0), READ,  LOCAL),
        _cmd("xgroup|setid",             -5, (2,  2, 1), WRITE, KEY),
    )),
    _cmd("xinfo",                        -2, (0,  0, 0), READ,  KEY, subcommands=(
        _cmd("xinfo|consumers",           4, (2,  2, 1), READ,  KEY),
        _cmd("xinfo|groups",              3, (2,  2, 1), READ,  KEY),
        _cmd("xinfo|help",                2, (0,  0, 0), READ,  LOCAL),
        _cmd("xinfo|stream",             -3, (2,  2, 1), READ,  KEY),
    )),
    _cmd("xlen",                          2, (1,  1, 1), READ,  KEY),
    _cmd("xpending",                     -3, (1,  1, 1), READ,  KEY),
    _cmd("xrange",                       -4, (1,  1, 1), READ,  KEY),
    _cmd("xread",                        -4, (0,  0, 0), READ,  KEY, find_keys=_xread_keys(options_from=1)),
    _cmd("xreadgroup",                   -7, (0,  0, 0), WRITE, KEY, find_keys=_xread_keys(options_from=4)),
    _cmd("xrevrange",                    -4, (1,  1, 1), READ,  KEY),
    _cmd("xsetid",                       -3, (1,  1, 1), WRITE, KEY),
    _cmd("xtrim",                        -4, (1,  1, 1), WRITE, KEY),
    # --- keyspace --------------------------------------------------------------
    _cmd("copy",                         -3, (1,  2, 1), WRITE, KEY),
    _cmd("del",                          -2, (1, -1, 1), WRITE, MULTI_KEY, merge=Merge.SUM),
    _cmd("dump",                          2, (1,  1, 1), READ,  KEY),
    _cmd("exists",                       -2, (1, -1, 1), READ,  MULTI_KEY, merge=Merge.SUM),
    _cmd("expire",                       -3, (1,  1, 1), WRITE, KEY),
    _cmd("expireat",                     -3, (1,  1, 1), WRITE, KEY),
    _cmd("expiretime",                    2, (1,  1, 1), READ,  KEY),
    _cmd("keys",                          2, (0,  0, 0), READ,  ONE_REPLICA),
    _cmd("migrate",                      -6, (3,  3, 1), WRITE, UNSUPPORTED, find_keys=_migrate_keys, reason=MIGRATE),
    _cmd("move",                          3, (1,  1, 1), WRITE, UNSUPPORTED, reason=DATABASES),
    _cmd("object",                       -2, (0,  0, 0), READ,  KEY, subcommands=(
        _cmd("object|encoding",           3, (2,  2, 1), READ,  KEY),
        _cmd("object|freq",               3, (2,  2, 1), READ,  KEY),
        _cmd("object|help",               2, (0,  0, 0), READ,  LOCAL),
        _cmd("object|idletime",           3, (2,  2, 1), READ,  KEY),
        _cmd("object|refcount",           3, (2,  2, 1), READ,  KEY),
    )),
    _cmd("persist",                       2, (1,  1, 1), WRITE, KEY),
    _cmd("pexpire",                      -3, (1,  1, 1), WRITE, KEY),
    _cmd("pexpireat",                    -3, (1,  1, 1), WRITE, KEY),
    _cmd("pexpiretime",                   2, (1,  1, 1), READ,  KEY),
    _cmd("pttl",                          2, (1,  1, 1), READ,  KEY),
    _cmd("randomkey",                     1, (0,  0, 0), READ,  ONE_REPLICA),
    _cmd("rename",                        3, (1,  2, 1), WRITE, KEY),
    _cmd("renamenx",                      3, (1,  2, 1), WRITE, KEY),
    _cmd("restore",                      -4, (1,  1, 1), WRITE, KEY),
    _cmd("scan",                         -2, (0,  0, 0), READ,  ONE_REPLICA),
    _cmd("sort",                         -2, (1,  1, 1), WRITE, KEY, find_keys=_sort_keys),
    _cmd("sort_ro",                      -2, (1,  1, 1), READ,  KEY, find_keys=_sort_ro_keys),
    _cmd("touch",                        -2, (1, -1, 1), READ,  MULTI_KEY, merge=Merge.SUM),
    _cmd("ttl",                           2, (1,  1, 1), READ,  KEY),
    _cmd("type",                          2, (1,  1, 1), READ,  KEY),
    _cmd("unlink",                       -2, (1, -1, 1), WRITE, MULTI_KEY, merge=Merge.SUM),
    _cmd("wait",                          3, (0,  0, 0), READ,  LOCAL),  # the peers' acknowledgements (node)
    # --- connection ------------------------------------------------------------
    _cmd("auth",                         -2, (0,  0, 0), READ,  LOCAL),
    _cmd("client",                       -2, (0,  0, 0), READ,  LOCAL, subcommands=(
        _cmd("client|caching",            3, (0,  0, 0), READ,  UNSUPPORTED, reason=CLIENT_STATE),
        _cmd("client|getname",            2, (0,  0, 0), READ,  LOCAL),
        _cmd("client|getredir",           2, (0,  0, 0), READ,  UNSUPPORTED, reason=CLIENT_STATE),
        _cmd("client|help",               2, (0,  0, 0), READ,  LOCAL),
        _cmd("client|id",                 2, (0,  0, 0), READ,  LOCAL),
        _cmd("client|info",               2, (0,  0, 0), READ,  LOCAL),
        _cmd("client|kill",              -3, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("client|list",              -2, (0,  0, 0), READ,  LOCAL),
        _cmd("client|no-evict",           3, (0,  0, 0), READ,  UNSUPPORTED, reason=CLIENT_STATE),
        _cmd("client|pause",             -3, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("client|reply",              3, (0,  0, 0), READ,  UNSUPPORTED, reason=CLIENT_STATE),
        _cmd("client|setname",            3, (0,  0, 0), READ,  LOCAL),
        _cmd("client|tracking",          -3, (0,  0, 0), READ,  UNSUPPORTED, reason=CLIENT_STATE),
        _cmd("client|trackinginfo",       2, (0,  0, 0), READ,  UNSUPPORTED, reason=CLIENT_STATE),
        _cmd("client|unblock",           -3, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("client|unpause",            2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
    )),
    _cmd("echo",                          2, (0,  0, 0), READ,  LOCAL),
    _cmd("hello",                        -1, (0,  0, 0), READ,  LOCAL),
    _cmd("ping",                         -1, (0,  0, 0), READ,  LOCAL),
    _cmd("quit",                         -1, (0,  0, 0), READ,  LOCAL),
    _cmd("reset",                         1, (0,  0, 0), READ,  LOCAL),
    _cmd("select",                        2, (0,  0, 0), READ,  LOCAL, check=_only_db0),
    # --- server ----------------------------------------------------------------
    _cmd("acl",                          -2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN, subcommands=(
        _cmd("acl|cat",                  -2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("acl|deluser",              -3, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("acl|dryrun",               -4, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("acl|genpass",              -2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("acl|getuser",               3, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("acl|help",                  2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("acl|list",                  2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("acl|load",                  2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("acl|log",                  -2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("acl|save",                  2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("acl|setuser",              -3, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("acl|users",                 2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("acl|whoami",                2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
    )),
    _cmd("bgrewriteaof",                  1, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
    _cmd("bgsave",                       -1, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
    _cmd("command",                      -1, (0,  0, 0), READ,  LOCAL, subcommands=(
        _cmd("command|count",             2, (0,  0, 0), READ,  LOCAL),
        _cmd("command|docs",             -2, (0,  0, 0), READ,  LOCAL),
        _cmd("command|getkeys",          -4, (0,  0, 0), READ,  LOCAL),
        _cmd("command|getkeysandflags",  -4, (0,  0, 0), READ,  LOCAL),
        _cmd("command|help",              2, (0,  0, 0), READ,  LOCAL),
        _cmd("command|info",             -2, (0,  0, 0), READ,  LOCAL),
        _cmd("command|list",             -2, (0,  0, 0), READ,  LOCAL),
    )),
    _cmd("config",                       -2, (0,  0, 0), READ,  LOCAL, subcommands=(
        _cmd("config|get",               -3, (0,  0, 0), READ,  LOCAL),  # read-only, from the node's Redis
        _cmd("config|help",               2, (0,  0, 0), READ,  LOCAL),
        _cmd("config|resetstat",          2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("config|rewrite",            2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("config|set",               -4, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
    )),
    _cmd("dbsize",                        1, (0,  0, 0), READ,  ONE_REPLICA, merge=Merge.SUM),
    _cmd("debug",                        -2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
    _cmd("failover",                     -1, (0,  0, 0), READ,  UNSUPPORTED, reason=REPLICATION),
    _cmd("flushall",                     -1, (0,  0, 0), WRITE, ALL_REPLICAS),
    _cmd("flushdb",                      -1, (0,  0, 0), WRITE, ALL_REPLICAS),
    _cmd("info",                         -1, (0,  0, 0), READ,  LOCAL),
    _cmd("lastsave",                      1, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
    _cmd("latency",                      -2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN, subcommands=(
        _cmd("latency|doctor",            2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("latency|graph",             3, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("latency|help",              2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("latency|histogram",        -2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("latency|history",           3, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("latency|latest",            2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("latency|reset",            -2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
    )),
    _cmd("lolwut",                       -1, (0,  0, 0), READ,  LOCAL),
    _cmd("memory",                       -2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN, subcommands=(
        _cmd("memory|doctor",             2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("memory|help",               2, (0,  0, 0), READ,  LOCAL),
        _cmd("memory|malloc-stats",       2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("memory|purge",              2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("memory|stats",              2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("memory|usage",             -3, (2,  2, 1), READ,  KEY),
    )),
    _cmd("module",                       -2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN, subcommands=(
        _cmd("module|help",               2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("module|list",               2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("module|load",              -3, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("module|loadex",            -3, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("module|unload",             3, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
    )),
    _cmd("monitor",                       1, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
    _cmd("psync",                        -3, (0,  0, 0), READ,  UNSUPPORTED, reason=REPLICATION),
    _cmd("replconf",                     -1, (0,  0, 0), READ,  UNSUPPORTED, reason=REPLICATION),
    _cmd("replicaof",                     3, (0,  0, 0), READ,  UNSUPPORTED, reason=REPLICATION),
    _cmd("restore-asking",               -4, (1,  1, 1), WRITE, UNSUPPORTED, reason=CLUSTER),
    _cmd("role",                          1, (0,  0, 0), READ,  UNSUPPORTED, reason=REPLICATION),
    _cmd("save",                          1, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
    _cmd("shutdown",                     -1, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
    _cmd("slaveof",                       3, (0,  0, 0), READ,  UNSUPPORTED, reason=REPLICATION),
    _cmd("slowlog",                      -2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN, subcommands=(
        _cmd("slowlog|get",              -2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("slowlog|help",              2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("slowlog|len",               2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
        _cmd("slowlog|reset",             2, (0,  0, 0), READ,  UNSUPPORTED, reason=ADMIN),
    )),
    _cmd("swapdb",                        3, (0,  0, 0), WRITE, UNSUPPORTED, reason=DATABASES),
    _cmd("sync",                          1, (0,  0, 0), READ,  UNSUPPORTED, reason=REPLICATION),
    _cmd("time",                          1, (0,  0, 0), READ,  LOCAL),
    # --- scripting -------------------------------------------------------------
    _cmd("eval",                         -3, (0,  0, 0), WRITE, KEY, find_keys=_numkeys(at=2)),
    _cmd("eval_ro",                      -3, (0,  0, 0), READ,  KEY, find_keys=_numkeys(at=2)),
    _cmd("evalsha",                      -3, (0,  0, 0), WRITE, KEY, find_keys=_numkeys(at=2)),
    _cmd("evalsha_ro",                   -3, (0,  0, 0), READ,  KEY, find_keys=_numkeys(at=2)),
    _cmd("fcall",                        -3, (0,  0, 0), WRITE, KEY, find_keys=_numkeys(at=2)),
    _cmd("fcall_ro",                     -3, (0,  0, 0), READ,  KEY, find_keys=_numkeys(at=2)),
    _cmd("function",                     -2, (0,  0, 0), READ,  UNSUPPORTED, reason=FUNCTIONS, subcommands=(
        _cmd("function|delete",           3, (0,  0, 0), WRITE, UNSUPPORTED, reason=FUNCTIONS),
        _cmd("function|dump",             2, (0,  0, 0), READ,  UNSUPPORTED, reason=FUNCTIONS),
        _cmd("function|flush",           -2, (0,  0, 0), WRITE, UNSUPPORTED, reason=FUNCTIONS),
        _cmd("function|help",             2, (0,  0, 0), READ,  UNSUPPORTED, reason=FUNCTIONS),
        _cmd("function|kill",             2, (0,  0, 0), READ,  UNSUPPORTED, reason=FUNCTIONS),
        _cmd("function|list",            -2, (0,  0, 0), READ,  UNSUPPORTED, reason=FUNCTIONS),
        _cmd("function|load",            -3, (0,  0, 0), WRITE, UNSUPPORTED, reason=FUNCTIONS),
        _cmd("function|restore",         -3, (0,  0, 0), WRITE, UNSUPPORTED, reason=FUNCTIONS),
        _cmd("function|stats",            2, (0,  0, 0), READ,  UNSUPPORTED, reason=FUNCTIONS),
    )),
    _cmd("script",                       -2, (0,  0, 0), READ,  ALL_REPLICAS, subcommands=(
        _cmd("script|debug",              3, (0,  0, 0), READ,  UNSUPPORTED, reason=SCRIPT_ADMIN),
        _cmd("script|exists",            -3, (0,  0, 0), READ,  UNSUPPORTED, reason=SCRIPT_ADMIN),
        _cmd("script|flush",             -2, (0,  0, 0), READ,  ALL_REPLICAS),
        _cmd("script|help",               2, (0,  0, 0), READ,  LOCAL),
        _cmd("script|kill",               2, (0,  0, 0), READ,  UNSUPPORTED, reason=SCRIPT_ADMIN),
        _cmd("script|load",               3, (0,  0, 0), READ,  ALL_REPLICAS),
    )),
    # --- transactions ----------------------------------------------------------
    # The node queues a transaction and runs it at EXEC on its keys' replicas (dyno.transactions).
    _cmd("discard",                       1, (0,  0, 0), READ,  LOCAL),
    _cmd("exec",                          1, (0,  0, 0), READ,  LOCAL),
    _cmd("multi",                         1, (0,  0, 0), READ,  LOCAL),
    _cmd("unwatch",                       1, (0,  0, 0), READ,  LOCAL),
    _cmd("watch",                        -2, (1, -1, 1), READ,  LOCAL),  # on this node's replica (dyno.watch)
    # --- pub/sub ---------------------------------------------------------------
    _cmd("psubscribe",                   -2, (0,  0, 0), READ,  LOCAL),
    _cmd("publish",                       3, (0,  0, 0), READ,  LOCAL),
    # Pub/sub is the nodes' own (dyno.pubsub): subscriptions kept here, messages relayed by peers.
    _cmd("pubsub",                       -2, (0,  0, 0), READ,  LOCAL, subcommands=(
        _cmd("pubsub|channels",          -2, (0,  0, 0), READ,  LOCAL),
        _cmd("pubsub|help",               2, (0,  0, 0), READ,  LOCAL),
        _cmd("pubsub|numpat",             2, (0,  0, 0), READ,  LOCAL),
        _cmd("pubsub|numsub",            -2, (0,  0, 0), READ,  LOCAL),
        _cmd("pubsub|shardchannels",     -2, (0,  0, 0), READ,  LOCAL),
        _cmd("pubsub|shardnumsub",       -2, (0,  0, 0), READ,  LOCAL),
    )),
    _cmd("punsubscribe",                 -1, (0,  0, 0), READ,  LOCAL),
    _cmd("spublish",                      3, (1,  1, 1), READ,  LOCAL),
    _cmd("ssubscribe",                   -2, (1, -1, 1), READ,  LOCAL),
    _cmd("subscribe",                    -2, (0,  0, 0), READ,  LOCAL),
    _cmd("sunsubscribe",                 -1, (1, -1, 1), READ,  LOCAL),
    _cmd("unsubscribe",                  -1, (0,  0, 0), READ,  LOCAL),
    # --- Redis Cluster ---------------------------------------------------------
    _cmd("asking",                        1, (0,  0, 0), READ,  LOCAL),
    # Cluster-mode clients see every dyno node as serving every slot (node_commands).
    _cmd("cluster",                      -2, (0,  0, 0), READ,  LOCAL, subcommands=(
        _cmd("cluster|addslots",         -3, (0,  0, 0), READ,  UNSUPPORTED, reason=CLUSTER),
        _cmd("cluster|addslotsrange",    -4, (0,  0, 0), READ,  UNSUPPORTED, reason=CLUSTER),
        _cmd("cluster|bumpepoch",         2, (0,  0, 0), READ,  UNSUPPORTED, reason=CLUSTER),
        _cmd("cluster|count-failure-reports",  3, (0,  0, 0), READ,  UNSUPPORTED, reason=CLUSTER),
        _cmd("cluster|countkeysinslot",   3, (0,  0, 0), READ,  UNSUPPORTED, reason=CLUSTER),
        _cmd("cluster|delslots",         -3, (0,  0, 0), READ,  UNSUPPORTED, reason=CLUSTER),
        _cmd("cluster|delslotsrange",    -4, (0,  0, 0), READ,  UNSUPPORTED, reason=CLUSTER),
        _cmd("cluster|failover",         -2, (0,  0, 0), READ,  UNSUPPORTED, reason=CLUSTER),
        _cmd("cluster|flushslots",        2, (0,  0, 0), READ,  UNSUPPORTED, reason=CLUSTER),
        _cmd("cluster|forget",            3, (0,  0, 0), READ,  UNSUPPORTED, reason=CLUSTER),
        _cmd("cluster|getkeysinslot",     4, (0,  0, 0), READ,  UNSUPPORTED, reason=CLUSTER),
        _cmd("cluster|help",              2, (0,  0, 0), READ,  LOCAL),
        _cmd("cluster|info",              2, (0,  0, 0), READ,  LOCAL),
        _cmd("cluster|keyslot",           3, (0,  0, 0), READ,  LOCAL),
        _cmd("cluster|links",             2, (0,  0, 0), READ,  UNSUPPORTED, reason=CLUSTER),
        _cmd("cluster|meet",             -4, (0,  0, 0), READ,  UNSUPPORTED, reason=CLUSTER),
        _cmd("cluster|myid",              2, (0,  0, 0), READ,  LOCAL),
        _cmd("cluster|nodes",             2, (0,  0, 0), READ,  LOCAL),
        _cmd("cluster|replicas",          3, (0,  0, 0), READ,  UNSUPPORTED, reason=CLUSTER),
        _cmd("cluster|replicate",         3, (0,  0, 0), READ,  UNSUPPORTED, reason=CLUSTER),
        _cmd("cluster|reset",            -2, (0,  0, 0), READ,  UNSUPPORTED, reason=CLUSTER),
        _cmd("cluster|saveconfig",        2, (0,  0, 0), READ,  UNSUPPORTED, reason=CLUSTER),
        _cmd("cluster|set-config-epoch",  3, (0,  0, 0), READ,  UNSUPPORTED, reason=CLUSTER),
        _cmd("cluster|setslot",          -4, (0,  0, 0), READ,  UNSUPPORTED, reason=CLUSTER),
        _cmd("cluster|shards",            2, (0,  0, 0), READ,  LOCAL),
        _cmd("cluster|slaves",            3, (0,  0, 0), READ,  UNSUPPORTED, reason=CLUSTER),
        _cmd("cluster|slots",             2, (0,  0, 0), READ,  LOCAL),
    )),
    _cmd("readonly",                      1, (0,  0, 0), READ,  LOCAL),
    _cmd("readwrite",                     1, (0,  0, 0), READ,  LOCAL),
)

#: Every command by its lower-case name (subcommands hang off their container's row).
COMMANDS: Mapping[bytes, CommandSpec] = MappingProxyType({spec.name: spec for spec in _TABLE})

# Clients send names in upper or lower case; both are found with one dict lookup.
_BY_NAME: dict[bytes, CommandSpec] = {**COMMANDS, **{n.upper(): s for n, s in COMMANDS.items()}}

# Rows that are writes only when they store: their other keys are STORE destinations.
_WRITE_ONLY_WHEN_STORING = frozenset({b"sort", b"georadius", b"georadiusbymember"})


# What a peer may run on this node's Redis besides the data commands: the SELECT of
# a version stamp (dyno.versions), a transaction's brackets (whole: _brackets_whole).
_PEER_EXTRA = frozenset({b"select", b"multi", b"exec"})
_BRACKETS = frozenset({b"multi", b"exec"})


def peer_refusal(requests: Sequence[Sequence[bytes]], flush_enabled: bool) -> bytes | None:
    """The first command of a peer's REQUEST frame that a peer has no business
    running on this node's Redis (CONFIG, SHUTDOWN, MODULE, DEBUG ..., anything
    the client port refuses or answers itself, FLUSHALL where flush_enabled is
    false), or None. Replication, coordination, hint replay and repair send only
    data commands, their Lua (EVAL, EVALSHA, SCRIPT LOAD) and the stamps' SELECT.
    Each distinct name is looked up once (a C-level pass finds them); a set of
    names found allowed whole (none with subcommands, no MULTI/EXEC) is remembered,
    so the next frame of the same commands - a replica's frames of SET and its
    stamp's SELECT and MSET - costs one set lookup (1.2 -> 0.4 us a frame)."""
    names = frozenset(map(_first, requests))
    key = (names, flush_enabled)
    if key in _ALLOWED_NAME_SETS:
        return None
    for name in names:
        spec = lookup(name)
        if spec is None:
            return name
        if spec.subcommands is not None:  # CONFIG SET vs SCRIPT LOAD: per request
            for argv in requests:
                if argv[0] == name:
                    sub = spec.subcommands.get(argv[1].lower()) if len(argv) > 1 else None
                    if sub is None or not _peer_may_run(sub, flush_enabled):
                        return b" ".join(argv[:2])
        elif not _peer_may_run(spec, flush_enabled) and spec.name not in _PEER_EXTRA:
            return name
        elif spec.name in _BRACKETS and not _brackets_whole(requests):
            return b"MULTI without its EXEC"
    if len(_ALLOWED_NAME_SETS) < _ALLOWED_NAME_SETS_MAX and not any(
            spec.subcommands is not None or spec.name in _BRACKETS for spec in map(lookup, names)):
        _ALLOWED_NAME_SETS.add(key)  # (bounded: a peer sending odd mixes fills it once)
    return None


# (frozenset of names, flush_enabled) that peer_refusal found allowed, whatever the
# arguments: no subcommands to check per request, no brackets to match.
_ALLOWED_NAME_SETS: set[tuple[frozenset, bool]] = set()
_ALLOWED_NAME_SETS_MAX = 256


def _brackets_whole(requests: Sequence[Sequence[bytes]]) -> bool:
    """Every MULTI of a frame closed by an EXEC in it, none nested or stray: a
    MULTI left open would make the node's shared Redis connection queue every
    other client's commands."""
    open_ = False
    for argv in requests:
        name = argv[0].lower()
        if name == b"multi":
            if open_:
                return False
            open_ = True
        elif name == b"exec":
            if not open_:
                return False
            open_ = False
    return not open_


_first = itemgetter(0)


def _peer_may_run(spec: CommandSpec, flush_enabled: bool) -> bool:
    if spec.route is Route.LOCAL or spec.route is Route.UNSUPPORTED:
        return False
    return flush_enabled or spec.name not in (b"flushall", b"flushdb")


def lookup(name: bytes) -> CommandSpec | None:
    """The row of a command by name, in any case (b"GET", b"get", b"GeT"); None if unknown."""
    spec = _BY_NAME.get(name)
    if spec is None:
        spec = _BY_NAME.get(name.lower())
    return spec


def resolve(argv: Sequence[bytes]) -> CommandSpec | bytes:
    """The (sub)command spec to run for argv, or the complete RESP error line to reply with.

    Checks in Redis's order: the command exists (else Redis's "unknown command" line), its
    subcommand exists ("unknown subcommand"), argc fits the arity ("wrong number of
    arguments") -- each worded byte for byte as Redis 7.0 words it -- then dyno's refusal of
    UNSUPPORTED commands, then the few per-command checks (MSET pairs, SELECT n).
    Syntax errors inside the arguments are left to the Redis that runs the command.
    """
    if not argv:  # Redis ignores an empty request; callers should too
        return unknown_command_error([b""])
    name = argv[0]
    spec = _BY_NAME.get(name)
    if spec is None:
        spec = _BY_NAME.get(name.lower())
        if spec is None:
            return unknown_command_error(argv)
    argc = len(argv)
    subcommands = spec.subcommands
    if subcommands is not None and argc > 1:
        sub = subcommands.get(argv[1])
        if sub is None:
            sub = subcommands.get(argv[1].lower())
            if sub is None:
                return unknown_subcommand_error(argv)
        spec = sub
    arity = spec.arity
    if (argc != arity) if arity > 0 else (argc < -arity):
        return spec.arity_error_line
    if spec.route is Route.UNSUPPORTED:
        return spec.unsupported_error_line  # type: ignore[return-value]
    if spec.check is not None:
        error = spec.check(spec, argv)
        if error is not None:
            return error
    return spec


def key_positions(spec: CommandSpec, argv: Sequence[bytes]) -> list[int]:
    """argv indexes of the keys of a resolved command: what Redis's COMMAND GETKEYS names.

    argv must have passed ``resolve`` (its arity is right). Includes STORE destinations
    (SORT ... STORE, GEORADIUS ... STORE/STOREDIST, ZUNIONSTORE ...). Empty when the command
    has no keys, or when the arguments are so malformed that Redis finds none (for instance
    ZUNIONSTORE dst 0 k): such a request is a syntax error for whichever Redis gets it, or,
    for EVAL/FCALL with numkeys 0, a script without keys. One deliberate difference from
    Redis: PFMERGE dst (no source) has its one key [1]; Redis 7.0 finds none and fails.
    """
    fixed = spec.fixed_keys
    if fixed is not None:
        return list(fixed)
    if spec.find_keys is not None:
        return spec.find_keys(argv)
    return list(range(spec.first_key, spec.last_key + len(argv) + 1, spec.step))


def keys(spec: CommandSpec, argv: Sequence[bytes]) -> list[bytes]:
    """The keys of a resolved command, in the order of ``key_positions``."""
    return [argv[i] for i in key_positions(spec, argv)]


def is_write(spec: CommandSpec, argv: Sequence[bytes]) -> bool:
    """Whether this request may modify data. Like ``spec.write``, except that:
    * SORT and GEORADIUS[BYMEMBER] are reads unless they STORE (Redis flags them all
      writes);
    * PFCOUNT of one key is a write: it caches the count in the key's header, and
      Redis propagates it to its replicas so that their bytes stay identical. Of
      several keys it changes nothing, and is a read."""
    if spec.name in _WRITE_ONLY_WHEN_STORING:
        return len(key_positions(spec, argv)) > 1
    if spec.name == b"pfcount":
        return len(argv) == 2
    return spec.write


def colocated(key_list: Sequence[bytes], owner: Callable[[bytes], object]) -> bool:
    """Whether all keys have one owner, as a KEY command with several keys needs.

    ``owner`` maps a key to whatever identifies where it lives (the ring's token or node);
    the ring, not this module, knows hash tags and tokens.
    """
    if len(key_list) < 2:
        return True
    first = owner(key_list[0])
    return all(owner(key) == first for key in key_list[1:])
