"""Blocking pops: BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BZPOPMIN, BZPOPMAX, BLMPOP, BZMPOP.

A blocking pop waits in Redis, which a node's shared Redis connections cannot do for
one client. So it runs as a WATCH does (dyno.watch): on a connection of the client's
own (a session) on the keys' watch replica, the same whichever node the client is on.
Two workers blocked on one queue through different nodes therefore wait on the same
Redis, and a job is popped once; a push through any node reaches that replica and
wakes one of them. Redis honours the timeout. When the pop returns what it took, the
deterministic form of what it did (``effect``: LPOP/RPOP of as many, LMOVE, ZREM of
the members) goes to the other replicas with its version, as SPOP's does, so replicas
stay identical; a timeout (nil) changes nothing anywhere.

Limits: a blocked client holds its session's Redis connection while it waits, and keeps
it for its next pop (a worker pops in a loop; a new connection per pop would cost more
than the pop); at most ``dyno.watch.MAX_SESSIONS`` sessions of a node (WATCH and
blocking pops together): at the limit the pop session idle longest is closed to make
room, and when none is idle one more client gets an error and should retry. Inside MULTI a blocking pop is
queued like any command (dyno.transactions): Redis runs it without blocking there. XREAD BLOCK is served the same
way (a read: nothing to do to the other replicas); so is XREADGROUP, BLOCK or not,
with its effect on the consumer group replicated (dyno.groups).

Pure: which commands block, and what their reply says they did. No I/O.
"""

from __future__ import annotations

__all__ = ["BLOCKING", "effect"]

BLOCKING = frozenset({b"blpop", b"brpop", b"blmove", b"brpoplpush", b"bzpopmin", b"bzpopmax", b"blmpop",
                      b"bzmpop"})


def effect(argv: list[bytes], reply) -> list[bytes] | None:
    """The command that does to another replica what ``argv`` did on the watch
    replica, given its parsed ``reply`` (hiredis: lists, bytes, numbers); None if it
    did nothing (timed out)."""
    if reply is None or reply == [] or isinstance(reply, Exception):
        return None
    name = argv[0].lower()
    if name in (b"blpop", b"brpop"):
        key = reply[0]
        return [b"LPOP" if name == b"blpop" else b"RPOP", key]
    if name == b"blmove":
        return [b"LMOVE", argv[1], argv[2], argv[3], argv[4]]
    if name == b"brpoplpush":
        return [b"RPOPLPUSH", argv[1], argv[2]]
    if name in (b"bzpopmin", b"bzpopmax"):
        return [b"ZREM", reply[0], reply[1]]
    if name == b"blmpop":
        key, elements = reply
        direction = argv[3 + int(argv[2])].upper()
        return [b"LPOP" if direction == b"LEFT" else b"RPOP", key, b"%d" % len(elements)]
    if name == b"bzmpop":
        key, pairs = reply
        return [b"ZREM", key, *(pair[0] for pair in pairs)]
    return None


def written_keys(command: list[bytes]) -> list[bytes]:
    """The keys an ``effect`` writes (their versions are stamped)."""
    name = command[0].upper()
    if name in (b"LMOVE", b"RPOPLPUSH"):
        return [command[1], command[2]]
    return [command[1]]
