"""Requests and replies rewritten between a client and the replicas, so that every
replica ends up with the same data.

Pure functions, no I/O, no clock (the time is passed in):

* relative expiries made absolute (``absolute_expiry``, below);
* the deterministic form of a write whose effect the replica chose (SPOP's popped
  members, XADD's ID), to replicate what it did rather than what was asked;
* cursors of SSCAN/HSCAN/ZSCAN that name the replica they belong to;
* the canonical (sorted) form of a reply whose order Redis does not define.

Relative expiries made absolute, so that every replica holds the same deadline.

A write goes to one Redis per rack. ``EXPIRE k 100`` sent verbatim makes each Redis add 100 s
to *its own* clock at the moment the command reaches it, so the replicas end up with
deadlines a few milliseconds (or, after a retry or a slow link, seconds) apart. Redis has the
same problem with its own replicas and its AOF and solves it by propagating the absolute form
(expire.c expireGenericCommand, t_string.c setGenericCommand/getexCommand, cluster.c
restoreCommand). This module does that for the coordinator: ``absolute_expiry(argv, now_ms)``
returns the command with ``now_ms + relative`` written in, or None when the request must go
unchanged.

What it owns: the rules of Redis 7.0.15 that decide whether a command with a relative expiry
is valid, and the rewrite of the valid ones:

    EXPIRE k s [NX|XX|GT|LT ...]   -> PEXPIREAT k now+s*1000 [same flags]
    PEXPIRE k ms [NX|XX|GT|LT ...] -> PEXPIREAT k now+ms [same flags]
    SETEX k s v / PSETEX k ms v    -> SET k v PXAT now+...
    SET k v [NX|XX|GET ...] EX s   -> SET k v [NX|XX|GET ...] PXAT now+s*1000 (PX likewise)
    GETEX k EX s / PX ms           -> GETEX k PXAT now+...
    RESTORE k ttl payload [...]    -> RESTORE k now+ttl payload [...] ABSTTL   (ttl > 0)

Rules:
1. Pure: no I/O, no clock. ``now_ms`` is the caller's wall clock in Unix milliseconds
   (``time.time_ns() // 1_000_000``, not a monotonic clock), read once per request.
2. The golden rule: the rewritten command gives the client exactly the reply the original
   would have given on a Redis at ``now_ms`` (same success reply, same error text), leaves
   the same data, and the deadline ``now_ms + relative``. So whenever the original would be
   an error -- wrong arity, syntax, not an integer, an expire time Redis refuses, conflicting
   options, overflow -- the answer is None: the request goes verbatim and Redis words its own
   error. None is always safe; a rewrite of a command Redis would refuse never is. Anything
   this module does not recognise exactly as Redis does (an option with a NUL byte in it,
   say) therefore goes verbatim too.
3. Never mutate ``argv``; a rewrite is a new list.
4. Cheap on the hot path, which every write takes: one dict lookup (the table holds every
   upper/lower-case spelling of the seven names, so ``SeT`` costs no ``lower()``) and one
   length check return None for any other command and for ``SET k v``.

Deadlines within ``_HEADROOM_MS`` (a year) of the largest signed 64-bit integer are left to
Redis: there the original may overflow on a Redis whose clock is a little ahead of
``now_ms`` while the rewrite would not, and a deadline 292 million years away is the same
deadline on every replica whether or not it is rewritten.

Where the rewrite and the original can still differ, by design: a deadline that lands
between ``now_ms`` and the moment a replica runs the command. ``PEXPIRE k 5`` reaching a
Redis 7 ms later deletes the key there (PEXPIREAT in the past) where the original would have
given it 5 ms more; ``GETEX k PX 5`` and ``RESTORE k 5 ...`` likewise, and ``SET k v PX 5``
stores a key that has already expired. The reply is the same, the key is gone either way a
moment later, and that is the point: every replica agrees on when. (The deadline is on the
caller's clock, as a Redis master's is on its own; replicas' clocks still need NTP.)

Cost per call, measured with timeit (CPython 3.11.7 on the shared 2-core dev machine, best of
7 x 1,000,000 calls, three runs; an empty function call costs 0.03 us there):
``GET k`` 0.06-0.10 us, ``SET k v`` 0.08-0.12 us (both None), ``EXPIRE k 100`` 0.84-0.94 us,
``SET k v EX 100`` 0.87-1.1 us, ``SET k v NX EX 100`` 1.2 us (rewritten).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import product

from dyno import merge, resp

__all__ = [
    "EXPIRY_COMMANDS", "absolute_expiry", "canonical", "cursor_reply", "cursor_target",
    "spop_effect", "xadd_effect",
]

#: The commands ``absolute_expiry`` may rewrite (lower case, as the command table names them).
EXPIRY_COMMANDS = frozenset({b"expire", b"pexpire", b"setex", b"psetex", b"set", b"getex", b"restore"})

LLONG_MAX = 2**63 - 1
LLONG_MIN = -(2**63)
# C's LLONG_MAX / 1000 and LLONG_MIN / 1000 (C division truncates toward zero): the seconds
# Redis accepts before multiplying by 1000.
_SECONDS_MAX = LLONG_MAX // 1000
_SECONDS_MIN = -(LLONG_MAX // 1000)
# See the module docstring: deadlines this close to overflow go verbatim.
_HEADROOM_MS = 365 * 24 * 3600 * 1000
_LATEST_DEADLINE = LLONG_MAX - _HEADROOM_MS
# Redis's LONG_STR_SIZE: string2ll refuses any argument this long or longer.
_LONG_STR_SIZE = 21


def _long_long(arg: bytes) -> int | None:
    """The integer Redis's string2ll() reads from arg, or None where it refuses it.

    Stricter than int(): no sign but '-', no spaces, no leading zeros, no "-0", no '_',
    ASCII digits only, 20 characters at most, within a signed 64-bit integer.
    """
    if not arg or len(arg) >= _LONG_STR_SIZE:
        return None
    if arg.isdigit():  # bytes.isdigit() is ASCII-only
        if arg[0] == 0x30 and len(arg) > 1:  # "0" alone, never "007"
            return None
    elif not (arg[0] == 0x2D and arg[1:].isdigit() and arg[1] != 0x30):  # "-" then 1-9
        return None
    value = int(arg)
    if value > LLONG_MAX or value < LLONG_MIN:
        return None
    return value


def _relative_ms(arg: bytes, seconds: bool) -> int | None:
    """A SET/SETEX/GETEX/PSETEX relative expiry in ms, or None where Redis 7.0 answers
    "invalid expire time" or "not an integer" (getExpireMillisecondsOrReply: <= 0 refused,
    seconds that overflow when multiplied by 1000 refused)."""
    value = _long_long(arg)
    if value is None or value <= 0:
        return None
    if seconds:
        if value > _SECONDS_MAX:
            return None
        return value * 1000
    return value


def _deadline(now_ms: int, relative_ms: int) -> bytes | None:
    """now_ms + relative_ms as an argument for PXAT/ABSTTL; None near overflow (see top),
    or if it is not positive (PXAT refuses that; only a bogus now_ms could make it so)."""
    deadline = now_ms + relative_ms
    if deadline > _LATEST_DEADLINE or deadline <= 0:
        return None
    return b"%d" % deadline


# --- EXPIRE / PEXPIRE ----------------------------------------------------------------------

# parseExtendedExpireArgumentsOrReply (expire.c): every argument after the time is a flag.
_EXPIRE_NX, _EXPIRE_XX, _EXPIRE_GT, _EXPIRE_LT = 1, 2, 4, 8
_EXPIRE_FLAGS = {b"nx": _EXPIRE_NX, b"xx": _EXPIRE_XX, b"gt": _EXPIRE_GT, b"lt": _EXPIRE_LT}
_EXPIRE_NX_WITH_OTHERS = _EXPIRE_XX | _EXPIRE_GT | _EXPIRE_LT
_EXPIRE_GT_LT = _EXPIRE_GT | _EXPIRE_LT


def _expire(argv: list[bytes], now_ms: int, seconds: bool) -> list[bytes] | None:
    flags = 0
    for arg in argv[3:]:
        flag = _EXPIRE_FLAGS.get(arg.lower())
        if flag is None:
            return None  # "Unsupported option ..."
        flags |= flag
    if (flags & _EXPIRE_NX and flags & _EXPIRE_NX_WITH_OTHERS) or flags & _EXPIRE_GT_LT == _EXPIRE_GT_LT:
        return None  # "... options at the same time are not compatible"
    # Unlike SET, EXPIRE takes any value: one <= 0 deletes the key, and so does PEXPIREAT
    # with a deadline in the past (same reply, 1). Only overflow is an error.
    value = _long_long(argv[2])
    if value is None:
        return None
    if seconds:
        if value > _SECONDS_MAX or value < _SECONDS_MIN:
            return None
        value *= 1000
    deadline = now_ms + value
    if deadline > _LATEST_DEADLINE:
        return None
    return [b"PEXPIREAT", argv[1], b"%d" % deadline, *argv[3:]]


def _expire_seconds(argv: list[bytes], now_ms: int) -> list[bytes] | None:
    return _expire(argv, now_ms, True)


def _expire_ms(argv: list[bytes], now_ms: int) -> list[bytes] | None:
    return _expire(argv, now_ms, False)


# --- SETEX / PSETEX ------------------------------------------------------------------------


def _setex(argv: list[bytes], now_ms: int, seconds: bool) -> list[bytes] | None:
    if len(argv) != 4:
        return None  # wrong number of arguments
    relative = _relative_ms(argv[2], seconds)
    if relative is None:
        return None
    deadline = _deadline(now_ms, relative)
    if deadline is None:
        return None
    return [b"SET", argv[1], argv[3], b"PXAT", deadline]


def _setex_seconds(argv: list[bytes], now_ms: int) -> list[bytes] | None:
    return _setex(argv, now_ms, True)


def _setex_ms(argv: list[bytes], now_ms: int) -> list[bytes] | None:
    return _setex(argv, now_ms, False)


# --- SET / GETEX options -------------------------------------------------------------------

# parseExtendedStringArgumentsOrReply (t_string.c) as data. Each option: the flag it sets,
# the flags that must not be set before it (else "syntax error"), whether it takes the next
# argument as its value, and which of SET/GETEX accepts it. An expiry option may repeat
# (SET k v EX 1 EX 2): the last value wins and the earlier ones are never even parsed.
_NX, _XX, _GET, _KEEPTTL, _PERSIST, _EX, _PX, _EXAT, _PXAT = (1 << i for i in range(9))
_FOR_SET, _FOR_GETEX = 1, 2
_STRING_OPTIONS: dict[bytes, tuple[int, int, bool, int]] = {
    b"nx": (_NX, _XX, False, _FOR_SET),
    b"xx": (_XX, _NX, False, _FOR_SET),
    b"get": (_GET, 0, False, _FOR_SET),
    b"keepttl": (_KEEPTTL, _PERSIST | _EX | _EXAT | _PX | _PXAT, False, _FOR_SET),
    b"persist": (_PERSIST, _EX | _EXAT | _PX | _PXAT | _KEEPTTL, False, _FOR_GETEX),
    b"ex": (_EX, _KEEPTTL | _PERSIST | _EXAT | _PX | _PXAT, True, _FOR_SET | _FOR_GETEX),
    b"px": (_PX, _KEEPTTL | _PERSIST | _EX | _EXAT | _PXAT, True, _FOR_SET | _FOR_GETEX),
    b"exat": (_EXAT, _KEEPTTL | _PERSIST | _EX | _PX | _PXAT, True, _FOR_SET | _FOR_GETEX),
    b"pxat": (_PXAT, _KEEPTTL | _PERSIST | _EX | _EXAT | _PX, True, _FOR_SET | _FOR_GETEX),
}


def _relative_string_expiry(
    argv: list[bytes], start: int, command: int, now_ms: int
) -> tuple[list[bytes], bytes] | None:
    """For a SET (options from argv[3]) or GETEX (from argv[2]) with a valid EX or PX: the
    options to keep (NX, XX, GET, in their order) and the absolute deadline. None for a
    syntax error, an invalid expire time, or no relative expiry at all."""
    flags = 0
    value = None
    kept = []
    j = start
    argc = len(argv)
    while j < argc:
        arg = argv[j]
        option = _STRING_OPTIONS.get(arg.lower())
        if option is None:
            return None
        flag, excluded, takes_value, commands = option
        if flags & excluded or not commands & command:
            return None
        flags |= flag
        if takes_value:
            if j + 1 == argc:
                return None  # an expiry option without its value
            value = argv[j + 1]
            j += 2
        else:
            kept.append(arg)
            j += 1
    if flags & _EX:
        relative = _relative_ms(value, True)  # type: ignore[arg-type]
    elif flags & _PX:
        relative = _relative_ms(value, False)  # type: ignore[arg-type]
    else:
        return None  # EXAT, PXAT, KEEPTTL, PERSIST or no expiry: nothing relative
    if relative is None:
        return None
    deadline = _deadline(now_ms, relative)
    if deadline is None:
        return None
    return kept, deadline


def _set(argv: list[bytes], now_ms: int) -> list[bytes] | None:
    found = _relative_string_expiry(argv, 3, _FOR_SET, now_ms)
    if found is None:
        return None
    kept, deadline = found
    return [b"SET", argv[1], argv[2], *kept, b"PXAT", deadline]


def _getex(argv: list[bytes], now_ms: int) -> list[bytes] | None:
    # GETEX accepts no option but expiries and PERSIST, which excludes them: nothing to keep.
    found = _relative_string_expiry(argv, 2, _FOR_GETEX, now_ms)
    if found is None:
        return None
    return [b"GETEX", argv[1], b"PXAT", found[1]]


# --- RESTORE -------------------------------------------------------------------------------


def _restore(argv: list[bytes], now_ms: int) -> list[bytes] | None:
    # restoreCommand (cluster.c): options are checked first, in this order, each error a reply.
    idletime = freq = False
    argc = len(argv)
    j = 4
    while j < argc:
        word = argv[j].lower()
        has_value = j + 1 < argc
        if word == b"replace":
            pass
        elif word == b"absttl":
            return None  # already absolute
        elif word == b"idletime" and has_value and not freq:
            idle = _long_long(argv[j + 1])
            if idle is None or idle < 0:
                return None
            idletime = True
            j += 1
        elif word == b"freq" and has_value and not idletime:
            count = _long_long(argv[j + 1])
            if count is None or not 0 <= count <= 255:
                return None
            freq = True
            j += 1
        else:
            return None  # syntax error
        j += 1
    # ttl 0 means no expiry; < 0 and non-integers are errors. Redis adds its clock to a ttl
    # without checking for overflow; _deadline leaves such ttls to it.
    ttl = _long_long(argv[2])
    if ttl is None or ttl <= 0:
        return None
    deadline = _deadline(now_ms, ttl)
    if deadline is None:
        return None
    return [b"RESTORE", argv[1], deadline, *argv[3:], b"ABSTTL"]


# --- the table -----------------------------------------------------------------------------

Rewriter = Callable[[list[bytes], int], "list[bytes] | None"]

# name, the fewest arguments (name included) a rewritable call has, its rewriter.
# EXPIREAT, PEXPIREAT and SET/GETEX with EXAT/PXAT are absolute already and absent.
_ROWS: tuple[tuple[bytes, int, Rewriter], ...] = (
    (b"set", 5, _set),  # SET k v EX s
    (b"expire", 3, _expire_seconds),
    (b"pexpire", 3, _expire_ms),
    (b"setex", 4, _setex_seconds),
    (b"psetex", 4, _setex_ms),
    (b"getex", 4, _getex),  # GETEX k EX s
    (b"restore", 4, _restore),
)


def _spellings(name: bytes) -> list[bytes]:
    """Every upper/lower-case spelling of name (b"set" -> b"set", b"seT", ..., b"SET")."""
    letters = [(bytes([c]).lower(), bytes([c]).upper()) for c in name]
    return [b"".join(chars) for chars in product(*letters)]


# Every spelling of every name (456 entries), so that any case is found in one lookup.
_BY_SPELLING: dict[bytes, tuple[int, Rewriter]] = {
    spelling: (min_argc, rewriter) for name, min_argc, rewriter in _ROWS for spelling in _spellings(name)
}


def absolute_expiry(argv: list[bytes], now_ms: int) -> list[bytes] | None:
    """argv with its relative expiry made absolute (deadline now_ms + relative), or None
    when the request must go unchanged: no relative expiry in it, or Redis would refuse it
    (then Redis must word the error itself). argv[0] may be in any case."""
    row = _BY_SPELLING.get(argv[0]) if argv else None
    if row is None or len(argv) < row[0]:
        return None
    return row[1](argv, now_ms)


# -- effects ---------------------------------------------------------------------------


def spop_effect(argv: list[bytes], reply: bytes) -> list[bytes] | None:
    """SPOP key [count] -> SREM key <the members it popped>."""
    if reply[:1] == b"$":
        if reply == resp.NULL_BULK:
            return None
        members = [reply[reply.index(b"\r\n") + 2 : -2]]
    elif reply[:1] in (b"*", b"~"):
        members = [item[item.index(b"\r\n") + 2 : -2] for item in merge.array_items(reply)]
    else:
        return None
    return [b"SREM", argv[1], *members] if members else None


def xadd_effect(argv: list[bytes], reply: bytes) -> list[bytes] | None:
    """XADD key ... * field value ... -> the same with the ID the first replica chose."""
    if reply[:1] != b"$" or reply == resp.NULL_BULK:
        return None
    chosen = reply[reply.index(b"\r\n") + 2 : -2]
    position = _xadd_id_position(argv)
    if position is None:
        return None
    return [*argv[:position], chosen, *argv[position + 1 :]]


def _xadd_id_position(argv: list[bytes]) -> int | None:
    """Index of XADD's ID argument (after NOMKSTREAM, MAXLEN/MINID [=|~] n [LIMIT n])."""
    i = 2
    while i < len(argv):
        word = argv[i].upper()
        if word == b"NOMKSTREAM":
            i += 1
        elif word in (b"MAXLEN", b"MINID"):
            i += 2 if i + 1 < len(argv) and argv[i + 1] not in (b"=", b"~") else 3
        elif word == b"LIMIT":
            i += 2
        else:
            return i
    return None


# -- cursors of one collection ---------------------------------------------------------
#
# A replica's SSCAN/HSCAN/ZSCAN cursor walks its own hashtable, whose order differs
# from replica to replica; so a client's cursor names the replica it belongs to:
# cursor = replica cursor * R + index, for the R replicas of the key in ring order.
# Cursor 0 starts on a replica the coordinator picks; a replica's cursor 0 (done)
# is the client's 0.


def cursor_target(cursor: bytes, replicas: int) -> tuple[int, int] | None:
    """(replica index, replica cursor) for a client's cursor, or None if it is not one."""
    if not cursor.isdigit():
        return None
    value = int(cursor)
    if value >= 2**64:
        return None
    return value % replicas, value // replicas


def cursor_reply(reply: bytes, index: int, replicas: int) -> bytes:
    """A replica's cursor reply, with the client's cursor in it."""
    if reply[:1] != b"*":
        return reply
    cursor_item, items = merge.array_items(reply)
    cursor = int(cursor_item[cursor_item.index(b"\r\n") + 2 : -2])
    client_cursor = cursor * replicas + index if cursor else 0
    return resp.array([resp.bulk(b"%d" % client_cursor), items])


# -- canonical forms -------------------------------------------------------------------


def canonical(reply: bytes) -> bytes:
    """An unordered collection reply with its elements (or a map's pairs) sorted."""
    kind = reply[:1]
    if kind in (b"*", b"~"):
        items = merge.array_items(reply)
        return reply[: reply.index(b"\r\n") + 2] + b"".join(sorted(items))
    if kind == b"%":
        newline = reply.index(b"\r\n")
        items = merge.array_items(b"*%d" % (2 * int(reply[1:newline])) + reply[newline:])
        pairs = sorted(zip(items[::2], items[1::2]))
        return reply[: reply.index(b"\r\n") + 2] + b"".join(k + v for k, v in pairs)
    return reply
