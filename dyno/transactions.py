"""MULTI ... EXEC: what a client queues, and what may be queued.

Redis runs a transaction's commands as one step on one server. dyno runs it as one
step on each replica of its keys: the node queues the commands (answering
``+QUEUED`` as Redis does), and at EXEC sends the whole block, ``MULTI`` ... ``EXEC``,
to every replica of those keys under the client's consistency level
(``Planner.transaction``); the client gets the EXEC reply that level decides (a
replica's, or the one a quorum of replicas gave). So every key of a transaction must
have the same replicas (hash tags make that easy): a command whose keys have other
owners than the commands before it is refused with ``-CROSSSLOT`` and the
transaction is aborted, as Redis Cluster does.

A command refused while queued (unknown, wrong arity, not allowed in a transaction,
CROSSSLOT) gets its error at once and makes EXEC answer ``-EXECABORT``, as Redis
does: nothing of an aborted or discarded transaction runs anywhere.

Not queued (each replica would do something else, or the node answers it itself):
commands without keys, commands over every key (KEYS, SCAN, FLUSHALL ...), and
SPOP, XADD, SRANDMEMBER, HRANDFIELD, ZRANDMEMBER, SSCAN, HSCAN, ZSCAN. Blocking pops
are queued: inside MULTI Redis runs them without blocking, the same on every replica.

This module is pure: ``Transaction.add`` decides, given a function that names a
key's replica set; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable

from dyno import commands, resp
from dyno.blocking import BLOCKING
from dyno.commands import Route

__all__ = ["EXECABORT", "NOT_DETERMINISTIC", "Transaction"]

EXECABORT = resp.error("EXECABORT Transaction discarded because of previous errors.")
NESTED = resp.error("ERR MULTI calls can not be nested")
WATCH_INSIDE = resp.error("ERR WATCH inside MULTI is not allowed")
QUEUED = b"+QUEUED\r\n"

#: Commands whose effect or reply each replica would choose for itself.
NOT_DETERMINISTIC = frozenset({
    b"spop", b"xadd", b"srandmember", b"hrandfield", b"zrandmember", b"sscan", b"hscan", b"zscan",
    b"xreadgroup", b"xclaim", b"xautoclaim",
})


class Transaction:
    """A client's transaction between MULTI and EXEC (module docstring).

    ``replicas_of(key)`` is a key's replica set (the ring interns them, so sets
    compare by identity); ``crossslot`` the error line for keys of other owners."""

    __slots__ = ("queued", "group", "aborted", "crossslot", "replicas_of")

    def __init__(self, replicas_of: Callable[[bytes], tuple], crossslot: bytes):
        self.queued: list[list[bytes]] = []
        self.group: tuple | None = None  # the replica set of the keys queued so far
        self.aborted = False
        self.crossslot = crossslot
        self.replicas_of = replicas_of

    def add(self, argv: list[bytes]) -> bytes:
        """Queue a request: ``+QUEUED``, or the error it gets (the transaction is then
        aborted)."""
        spec = commands.resolve(argv)
        if spec.__class__ is bytes:  # unknown, wrong arity, refused by dyno
            return self._abort(spec)
        refusal = self._refusal(spec, argv)
        if refusal is not None:
            return self._abort(refusal)
        self.queued.append(argv)
        return QUEUED

    def _refusal(self, spec, argv: list[bytes]) -> bytes | None:
        name = spec.name
        # (a blocking pop inside MULTI runs as its non-blocking form on every replica, as in Redis)
        if spec.route not in (Route.KEY, Route.MULTI_KEY) and name not in BLOCKING:
            return resp.error(f"ERR dyno: '{_shown(argv)}' cannot be queued in a transaction: only commands "
                              "on keys run inside one")
        if name in NOT_DETERMINISTIC:
            return resp.error(f"ERR dyno: '{_shown(argv)}' cannot be queued in a transaction: each replica "
                              "would choose its own result")
        keys = commands.keys(spec, argv)
        if not keys:
            return resp.error(f"ERR dyno: '{_shown(argv)}' cannot be queued in a transaction without keys "
                              "(they say which replicas run it)")
        replicas_of = self.replicas_of
        group = self.group
        for key in keys:
            owners = replicas_of(key)
            if group is None:
                group = owners
            elif owners is not group:
                return self.crossslot
        self.group = group
        return None

    def _abort(self, error: bytes) -> bytes:
        self.aborted = True
        return error


def _shown(argv: list[bytes]) -> str:
    return argv[0].decode(errors="replace").upper()
