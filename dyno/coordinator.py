"""The coordinator: for each client request, decide who answers it and how.

Every batch of requests a client sent in one read goes through ``execute_batch``:
the command table says what each command is (its route and keys); node-local
commands are answered here, everything else goes to a *target*. A target is
anything with ``send(payload, sink, affinity)`` - so far the node's own datastore;
the cluster adds peers and quorum trackers behind the same call. When a whole read
goes to one target and was canonically encoded, its bytes are forwarded as they
came (DESIGN.md §10 rule 4). This module never touches a socket.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dyno import commands, node_commands, resp
from dyno.client import ReplySlot
from dyno.commands import Route

if TYPE_CHECKING:
    from dyno.client import ClientConnection
    from dyno.node import Node

_KEY, _MULTI_KEY, _ONE_REPLICA, _ALL_REPLICAS, _LOCAL = (
    Route.KEY, Route.MULTI_KEY, Route.ONE_REPLICA, Route.ALL_REPLICAS, Route.LOCAL,
)


class Coordinator:
    def __init__(self, node: "Node"):
        self.node = node
        self.datastore = node.datastore
        self.stats = node.stats

    def execute_batch(
        self, client: "ClientConnection", requests: list[list[bytes]], raw: bytes | None
    ) -> None:
        """Run ``requests`` for ``client``; each gets a reply slot in the client's
        FIFO, in order. ``raw``, if not None, is their canonical encoding as read."""
        self.stats.commands += len(requests)
        replies = client.replies
        resolve = commands.resolve
        forwarded: list[list[bytes]] = []
        slots: list[ReplySlot] = []
        for argv in requests:
            slot = ReplySlot(client)
            replies.append(slot)
            spec = resolve(argv)
            if spec.__class__ is bytes:
                raw = None
                slot.data = self._refused(client, argv, spec)
                continue
            route = spec.route
            if route is _KEY or route is _MULTI_KEY or route is _ONE_REPLICA or route is _ALL_REPLICAS:
                forwarded.append(argv)
                slots.append(slot)
                continue
            raw = None
            if route is _LOCAL:
                reply = node_commands.run(self.node, client, spec, argv, slot)
                if reply is not None:
                    slot.data = reply
                if client.closing:  # QUIT: what follows it is not run
                    break
            else:
                slot.data = resp.error(f"ERR dyno: '{spec.name.decode()}' cannot be routed")
        if not slots:
            return
        send = self.datastore.send
        if raw is not None:
            self.datastore.send_many(raw, slots, client.id)
        else:
            encode = resp.encode_command
            for argv, slot in zip(forwarded, slots):
                send(encode(argv), slot, client.id)

    def _refused(self, client: "ClientConnection", argv: list[bytes], error: bytes) -> bytes:
        if argv[0][:12].upper() == b"DYNO_CONFIG:":
            return node_commands.dyno_config(client, argv)
        self.stats.errors += 1
        return error
