"""Requests and replies rewritten on their way between a client and the replicas.

Pure functions, no I/O, no clock (the time is passed in):

* relative expiries made absolute (``absolute_expiry``), as Redis does when it
  propagates them to its replicas, so that every replica holds the same deadline;
* the deterministic form of a write whose effect the replica chose (SPOP's popped
  members, XADD's ID), to replicate what it did rather than what was asked;
* cursors of SSCAN/HSCAN/ZSCAN that name the replica they belong to;
* the canonical (sorted) form of a reply whose order Redis does not define.
"""

from __future__ import annotations

from dyno import merge, resp

EXPIRY_COMMANDS = frozenset({b"expire", b"pexpire", b"setex", b"psetex", b"set", b"getex", b"restore"})


def absolute_expiry(argv: list[bytes], now_ms: int) -> list[bytes] | None:
    """The request with its relative expiry made absolute, or None to send it as it is."""
    return None


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
