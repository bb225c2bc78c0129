"""Commands the node answers itself: connection commands and introspection.

A handler gets the node, the client, the argv and the reply slot. It returns the
reply bytes, or None when it has arranged for the slot to be filled later (INFO asks
the datastore for its keyspace first). Arity and unknown subcommands were already
checked against the command table; what is left here is argument meaning.
Wording follows Redis 7.0 wherever Redis has the same situation.
"""

from __future__ import annotations

import binascii
import hashlib
import os
import time
from typing import TYPE_CHECKING, Callable

import hiredis

from dyno import __version__, auth, blocking, commands, groups, pubsub, resp
from dyno.commands import arity_error
from dyno.config import CONSISTENCY_LEVELS
from dyno.datastore import Sink
from dyno.ring import RingError
from dyno.states import NORMAL

if TYPE_CHECKING:
    from dyno.client import ClientConnection, ReplySlot
    from dyno.node import Node

# The Redis version dyno speaks; clients use it to pick features (HELLO, INFO).
REDIS_VERSION = "7.0.15"

_SYNTAX = resp.error("ERR syntax error")
_NOT_INTEGER = resp.error("ERR value is not an integer or out of range")
_BAD_NAME = resp.error("ERR Client names cannot contain spaces, newlines or special characters.")


def _ping(node, client, argv, slot):
    if len(argv) > 2:  # COMMAND says arity -1; pingCommand itself refuses more
        return arity_error(b"ping")
    return resp.PONG if len(argv) == 1 else resp.bulk(argv[1])


def _echo(node, client, argv, slot):
    return resp.bulk(argv[1])


def _quit(node, client, argv, slot):
    client.closing = True
    return resp.OK


def _select(node, client, argv, slot):
    try:
        index = int(argv[1])
    except ValueError:
        return _NOT_INTEGER
    if index == 0:
        return resp.OK
    return resp.error("ERR dyno: only database 0 exists in a dyno cluster (SELECT is limited to 0)")


_NO_PASSWORD = auth.NO_PASSWORD


def _auth(node, client, argv, slot):
    if len(argv) > 3:
        return _SYNTAX
    if len(argv) == 2:
        if node.password.secret is None:
            return _NO_PASSWORD
        return _authenticate(node, client, b"default", argv[1])
    return _authenticate(node, client, argv[1], argv[2])


def _authenticate(node, client, username: bytes, password: bytes) -> bytes:
    """AUTH [username] password (dyno.auth): with no requirepass, as Redis with no
    password answers it (the default user takes any password)."""
    reply = node.password.check(username, password)
    if reply is resp.OK:
        client.authenticated = True
    return reply


def _hello(node, client, argv, slot):
    args = argv[1:]
    if args:
        try:
            version = int(args[0])
        except ValueError:
            return resp.error("ERR Protocol version is not an integer or out of range")
        if version not in (2, 3):
            return resp.error("NOPROTO unsupported protocol version")
        rest = args[1:]
        while rest:
            option = rest[0].upper()
            if option == b"SETNAME" and len(rest) >= 2:
                error = _set_client_name(client, rest[1])
                if error:
                    return error
                rest = rest[2:]
            elif option == b"AUTH" and len(rest) >= 3:
                reply = _authenticate(node, client, rest[1], rest[2])
                if reply is not resp.OK:
                    return reply
                rest = rest[3:]
            else:
                return resp.error(f"ERR Syntax error in HELLO option '{rest[0].decode(errors='replace')}'")
        if not client.authenticated and node.password.secret is not None:
            return auth.NOAUTH_HELLO
        client.protocol = version
    elif not client.authenticated and node.password.secret is not None:
        return auth.NOAUTH_HELLO
    fields = [
        b"server", b"redis", b"version", REDIS_VERSION, b"proto", client.protocol, b"id", client.id,
        b"mode", b"standalone", b"role", b"master", b"modules", [],
    ]
    if client.protocol == 3:  # a map, as Redis answers a RESP3 client
        return b"%%%d\r\n" % (len(fields) // 2) + b"".join(resp.encode(f) for f in fields)
    return resp.encode(fields)


def _set_client_name(client, name: bytes) -> bytes | None:
    if any(c <= 32 or c >= 127 for c in name):
        return _BAD_NAME
    client.name = name
    return None


def _client(node, client, argv, slot):
    sub = argv[1].lower()
    if sub == b"setname":
        return _set_client_name(client, argv[2]) or resp.OK
    if sub == b"getname":
        if not client.name and client.protocol == 3:
            return resp.NULL3
        return resp.bulk(client.name or None)
    if sub == b"id":
        return resp.integer(client.id)
    if sub in (b"info", b"list"):
        clients = [client] if sub == b"info" else list(node.clients.values())
        lines = b"".join(_client_line(node, c) for c in clients)
        return resp.bulk(lines[:-1] if sub == b"info" else lines)
    if sub == b"setinfo":
        return resp.OK
    if sub == b"help":
        return resp.encode(
            [
                b"CLIENT <subcommand> [<arg> ...]. Subcommands are:",
                b"GETNAME", b"    Return the name of the current connection.",
                b"ID", b"    Return the ID of the current connection.",
                b"INFO", b"    Return information about the current client connection.",
                b"LIST", b"    Return information about client connections.",
                b"SETNAME <name>", b"    Assign the name <name> to the current connection.",
            ]
        )
    return resp.error(
        f"ERR dyno: CLIENT {argv[1].decode(errors='replace').upper()} is not supported by a dyno node"
    )


def _client_line(node, client) -> bytes:
    import trio

    age = int(trio.current_time() - client.created)
    return b"id=%d addr=%s name=%s age=%d db=0 cmd=client\n" % (
        client.id, client.address.encode(), client.name, age,
    )


def _from_redis(node, client, argv, slot):
    """Answers that are the same on every Redis: the local one's. COMMAND (Redis's
    own replies are the truth about arity, flags and key specs; clients use them for
    hints and key extraction), TIME, LOLWUT and the *HELP subcommands. Nothing here
    may change the connection's state: other clients share it.
    The client's pool answers (RESP2 or RESP3 connections)."""
    datastore = node.datastore3 if client.protocol == 3 else node.datastore
    datastore.send(resp.encode_command(argv), slot, client.id)
    return None


def _reset(node, client, argv, slot):
    # What RESET undoes that dyno keeps per client; never sent to the shared
    # connection, whose RESP3 state other clients rely on.
    client.protocol = 2
    client.name = b""
    client.consistency_override.clear()
    client.authenticated = node.password.secret is None  # Redis: RESET de-authenticates
    node.coordinator.unwatch(client)
    node.pubsub.forget(client)  # and unsubscribes
    return b"+RESET\r\n"


# INFO's section names that mean "several sections" (Redis 7): dyno's own sections
# come with them.
_INFO_GROUPS = frozenset({b"default", b"all", b"everything"})
# Sections that are dyno's alone: its clients are not its Redis's (whose clients are
# dyno's own connections).
_DYNO_ONLY = frozenset({b"clients", b"dyno"})


def _info(node, client, argv, slot):
    """INFO: the node's Redis's sections (memory, persistence, cpu, commandstats ...:
    what exporters and dashboards read), with dyno's own values where dyno is the
    server the client talks to (server, clients, stats) and its ``dyno`` section.
    If the Redis does not answer, dyno's sections alone."""
    sections = [s.lower() for s in argv[1:]] or [b"default"]
    everything = any(s in _INFO_GROUPS for s in sections)
    if node.control is not None and (everything or any(s in _NODE_WIDE for s in sections)):
        # a worker (dyno.workers): the node's clients and requests are all its workers'
        node.coordinator.spawn(_info_of_workers, node, client, sections, everything, slot)
        return None
    return _info_reply(node, client, sections, everything, slot, node.info_blocks(sections, everything))


# Sections whose figures are the node's, summed over its workers.
_NODE_WIDE = frozenset({b"clients", b"stats", b"dyno"})


def _info_reply(node, client, sections, everything, slot, blocks):
    if not everything and all(s in _DYNO_ONLY for s in sections):  # no need to wait for the Redis
        return resp.bulk(info_text("", blocks, node.config.versions_db))
    node.datastore.send(resp.encode_command([b"INFO", *sections]), _InfoSink(node, slot, blocks), client.id)
    return None


async def _info_of_workers(node, client, sections, everything, slot) -> None:
    siblings = await node.control.ask("snapshot", None, SIBLINGS_TIMEOUT) or []
    reply = _info_reply(node, client, sections, everything, slot, node.info_blocks(sections, everything, siblings))
    if reply is not None:
        slot.deliver(reply)
    # (also when the Redis's part was asked: a Redis that is down fails it at once, in
    # this task, where no read's end flushes the client)
    node.flush_ready()


SIBLINGS_TIMEOUT = 1.0  # seconds INFO waits for the other workers' counters


class _InfoSink(Sink):
    """Merges the Redis's INFO with the node's own sections (``info_text``); with
    several nodes in this rack, the keyspace becomes the rack's (the cluster's data:
    a rack holds one full copy), gathered first (``Node.rack_keyspace``)."""

    __slots__ = ("blocks", "node", "slot")

    def __init__(self, node, slot: "ReplySlot", blocks: dict[str, dict]):
        self.node = node
        self.slot = slot
        self.blocks = blocks

    def deliver(self, reply: bytes) -> None:
        text = ""
        if reply[:1] == b"$":
            text = reply[reply.index(b"\r\n") + 2 : -2].decode(errors="replace")
        node = self.node
        if "# Keyspace" in text and node.rack_size() > 1 and node.coordinator.spawn is not None:
            node.coordinator.spawn(self._with_rack_keyspace, text)
            return
        self.slot.deliver(resp.bulk(info_text(text, self.blocks, node.config.versions_db)))

    async def _with_rack_keyspace(self, text: str) -> None:
        node = self.node
        mine = next((fields for title, fields in parse_info(text) if title == "Keyspace"), [])
        totals = await node.rack_keyspace(dict(mine))
        start = text.index("# Keyspace")
        end = text.find("\r\n\r\n", start)
        rest = "" if end < 0 else text[end:]
        lines = "".join(f"\r\n{db}:{value}" for db, value in totals.items())
        text = text[:start] + "# Keyspace" + lines + rest
        self.slot.deliver(resp.bulk(info_text(text, self.blocks, node.config.versions_db)))
        node.flush_ready()


def parse_info(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """Redis's INFO text as (section title, [(field, value)]), in order; a line
    without ':' is kept whole as a field with value None."""
    sections: list[tuple[str, list]] = []
    for line in text.split("\r\n"):
        if line.startswith("# "):
            sections.append((line[2:], []))
        elif line and sections:
            field, sep, value = line.partition(":")
            sections[-1][1].append((field, value if sep else None))
    return sections


def info_text(redis_text: str, blocks: dict[str, dict], versions_db: int) -> str:
    """INFO's reply: Redis's sections in Redis's order, each field dyno also keeps
    (``blocks``: section name -> fields) given dyno's value and dyno's extra fields
    added; dyno's sections Redis has not got go before Keyspace. The versions
    database is dyno's bookkeeping, not the client's data: its keyspace line is left
    out (as DBSIZE and SCAN leave it out)."""
    hidden = f"db{versions_db}"
    own = {name.lower(): fields for name, fields in blocks.items()}
    out: list[str] = []

    def emit(title: str, fields) -> None:
        out.append(f"# {title}\r\n")
        out.extend(f"{k}\r\n" if v is None else f"{k}:{v}\r\n" for k, v in fields)
        out.append("\r\n")

    def emit_own() -> None:
        for name in list(own):
            emit(name.capitalize(), own.pop(name).items())

    for title, fields in parse_info(redis_text):
        name = title.lower()
        if name == "keyspace":
            emit_own()
            fields = [(k, v) for k, v in fields if k != hidden]
        mine = own.pop(name, None)
        if mine is not None and name.encode() in _DYNO_ONLY:
            fields = list(mine.items())
        elif mine is not None:
            fields = [(k, mine.get(k, v)) for k, v in fields]
            present = {k for k, _ in fields}
            fields += [(k, v) for k, v in mine.items() if k not in present]
        emit(title, fields)
    emit_own()
    return "".join(out)[:-2]  # Redis's INFO ends with the last field's CRLF


# CONFIG GET answers from the node's Redis, except: secrets (the Redis's password is
# dyno's datastore_password; never shown to a client) and what is dyno's own.
_CONFIG_HIDDEN = frozenset({b"requirepass", b"masterauth", b"masteruser", b"tls-key-file-pass",
                            b"tls-client-key-file-pass"})


def _config(node, client, argv, slot):
    """CONFIG GET (read-only, from the node's Redis: tools that read settings work)
    and CONFIG HELP; what changes a Redis stays refused by the command table."""
    if argv[1].lower() == b"help":
        return _from_redis(node, client, argv, slot)
    own = {b"port": str(node.listener.port).encode(), b"maxclients": str(node.config.maxclients).encode(),
           b"databases": b"1"}
    node.datastore.send(resp.encode_command(argv), _ConfigSink(slot, client.protocol, own), client.id)
    return None


class _ConfigSink(Sink):
    __slots__ = ("own", "protocol", "slot")

    def __init__(self, slot: ReplySlot, protocol: int, own: dict[bytes, bytes]):
        self.slot = slot
        self.protocol = protocol
        self.own = own

    def deliver(self, reply: bytes) -> None:
        if reply[:1] != b"*":  # an error (Redis down, ...): as it came
            self.slot.deliver(reply)
            return
        reader = hiredis.Reader()
        reader.feed(reply)
        flat = reader.gets()
        items = []
        for name, value in zip(flat[::2], flat[1::2], strict=True):
            if name not in _CONFIG_HIDDEN:
                items += [resp.bulk(name), resp.bulk(self.own.get(name, value))]
        if self.protocol == 3:
            self.slot.deliver(b"%%%d\r\n" % (len(items) // 2) + b"".join(items))
        else:
            self.slot.deliver(resp.array(items))


# -- cluster-mode clients ---------------------------------------------------------------
#
# redis-py's RedisCluster, ioredis's Cluster, redis-benchmark --cluster and the like ask
# CLUSTER SLOTS (or SHARDS, or NODES) which node serves which of Redis Cluster's 16384
# slots. Any dyno node serves any key (it routes by its own token ring), and dyno never
# redirects (no MOVED/ASK), so every answer is right; the question is only how many hops
# a request takes:
# - with ``hash: slot`` the ring places keys by Redis Cluster's own slots, so the answer is
#   the ring's: each slot's master is its owner in this node's rack (the node a client
#   should send the key to: no hop inside the rack), its replicas the owners in the other
#   racks of the datacenter;
# - with any other hash a key's slot says nothing of its owner: one shard holds all slots,
#   served by this node (as the client reached it) with the other nodes of its datacenter
#   as replicas, so a client whose node fails moves to another.
# Nodes judged down are left out; a range whose owner is down is served by this node.

_SLOTS = 16384


def key_slot(key: bytes) -> int:
    """Redis Cluster's slot of a key: CRC16 (XMODEM) of the key, or of its hash tag
    (what is between the first '{' and the next '}', when not empty), mod 16384."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key, 0) % _SLOTS


def _node_id(name: str) -> bytes:
    """A node's 40-hex-digit id for CLUSTER answers: stable across restarts."""
    return hashlib.sha1(name.encode()).hexdigest().encode()


def _cluster_members(node, client) -> dict[str, tuple[bytes, bytes, int, int]]:
    """name -> (id, host, client port, peer port): this node, first, as the client
    reached it, then the other nodes of its datacenter judged up whose client address
    gossip told."""
    host, port = client.sock.getsockname()[:2]
    members = {node.name: (_node_id(node.name), host.encode(), port, node.config.dyn_listen.port)}
    ring = node.ring
    for name, (peer_host, peer_port) in node.client_addresses().items():
        link = node.peer_links.get(name)
        if link is None or link.judged_down:
            continue
        try:
            peer = ring.node(name)
        except RingError:
            continue
        if peer.dc == node.config.datacenter:
            members[name] = (_node_id(name), peer_host.encode(), peer_port, peer.port)
    return members


def _shards(node, members) -> list[tuple[list[tuple[int, int]], list[tuple[bytes, bytes, int, int]]]]:
    """The slots as shards: (slot ranges, [master, *replicas]) in slot order."""
    me = members[node.name]
    if node.ring.hash_name != "slot":
        return [([(0, _SLOTS - 1)], list(members.values()))]
    shards: dict[tuple, list[tuple[int, int]]] = {}
    for first, last, owners in node.ring.slot_ranges():
        master = members.get(owners[0].name, me)
        serving = [master]
        for owner in owners[1:]:
            member = members.get(owner.name)
            if member is not None and member not in serving:
                serving.append(member)
        ranges = shards.setdefault(tuple(serving), [])
        if ranges and ranges[-1][1] == first - 1:
            ranges[-1] = (ranges[-1][0], last)
        else:
            ranges.append((first, last))
    return [(ranges, list(serving)) for serving, ranges in shards.items()]


def _cluster(node, client, argv, slot):
    sub = argv[1].lower()
    if sub == b"keyslot":
        return resp.integer(key_slot(argv[2]))
    if sub == b"myid":
        return resp.bulk(_node_id(node.name))
    if sub == b"help":
        return resp.array([resp.status(line) for line in _CLUSTER_HELP])
    members = _cluster_members(node, client)
    shards = _shards(node, members)
    resp3 = client.protocol == 3
    if sub == b"info":
        fields = {"cluster_enabled": 1, "cluster_state": "ok" if node.state == NORMAL else "fail",
                  "cluster_slots_assigned": _SLOTS, "cluster_slots_ok": _SLOTS, "cluster_slots_pfail": 0,
                  "cluster_slots_fail": 0, "cluster_known_nodes": len(members),
                  "cluster_size": len({serving[0] for _, serving in shards}),
                  "cluster_current_epoch": 1, "cluster_my_epoch": 1}
        return resp.bulk("".join(f"{k}:{v}\r\n" for k, v in fields.items()))
    if sub == b"slots":
        empty = b"%0\r\n" if resp3 else b"*0\r\n"
        return resp.array([
            resp.array([resp.integer(first), resp.integer(last),
                        *[resp.array([resp.bulk(host), resp.integer(port), resp.bulk(ident), empty])
                          for ident, host, port, _ in serving]])
            for ranges, serving in shards for first, last in ranges])
    if sub == b"shards":
        return resp.array([
            _map(resp3, [
                (b"slots", resp.array([resp.integer(n) for first, last in ranges for n in (first, last)])),
                (b"nodes", resp.array([
                    _map(resp3, [(b"id", resp.bulk(ident)), (b"port", resp.integer(port)),
                                 (b"ip", resp.bulk(host)), (b"endpoint", resp.bulk(host)),
                                 (b"role", resp.bulk(b"master" if i == 0 else b"replica")),
                                 (b"replication-offset", resp.integer(0)), (b"health", resp.bulk(b"online"))])
                    for i, (ident, host, port, _) in enumerate(serving)]))])
            for ranges, serving in shards])
    # nodes: each node once; the masters with their slots, every other node a replica of this one
    mine = members[node.name][0].decode()
    slots_of: dict[tuple, list[tuple[int, int]]] = {}
    for ranges, serving in shards:
        slots_of.setdefault(serving[0], []).extend(ranges)
    primary = mine if members[node.name] in slots_of else shards[0][1][0][0].decode()
    lines = []
    for member in sorted(members.values(), key=lambda m: (m[0].decode() != mine, m not in slots_of)):
        ident, host, port, peer_port = member
        flags = "myself," if ident.decode() == mine else ""
        if member in slots_of:
            slots = " ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in sorted(slots_of[member]))
            lines.append(f"{ident.decode()} {host.decode()}:{port}@{peer_port} {flags}master - 0 0 1 connected {slots}\n")
        else:
            lines.append(f"{ident.decode()} {host.decode()}:{port}@{peer_port} {flags}slave {primary} 0 0 1 connected\n")
    return resp.bulk("".join(lines))


def _map(resp3: bool, pairs: list[tuple[bytes, bytes]]) -> bytes:
    flat = b"".join(resp.bulk(k) + v for k, v in pairs)
    return (b"%%%d\r\n" if resp3 else b"*%d\r\n") % (len(pairs) if resp3 else 2 * len(pairs)) + flat


_CLUSTER_HELP = [
    "CLUSTER <subcommand> [<arg> [value] [opt] ...]. Subcommands are (dyno answers these; it is not a "
    "Redis Cluster: every node serves every slot, no MOVED; with hash: slot each slot's master is its "
    "owner in this node's rack):",
    "INFO", "    Return information about the cluster.",
    "KEYSLOT <key>", "    Return the hash slot for <key>.",
    "MYID", "    Return the node id.",
    "NODES", "    Return cluster configuration seen by node. Output format:",
    "    <id> <ip:port@cport> <flags> <master> <pings> <pongs> <epoch> <link> <slot> ...",
    "SHARDS", "    Return information about slot range mappings and the nodes associated with them.",
    "SLOTS", "    Return information about slots range mappings. Each range is made of:",
    "    start, end, master and replicas IP addresses, ports and ids",
    "HELP", "    Print this help.",
]


def _subscribe(node, client, argv, slot):
    return node.pubsub.subscribe(client, argv[0].lower(), argv[1:])


def _unsubscribe(node, client, argv, slot):
    return node.pubsub.unsubscribe(client, argv[0].lower(), argv[1:])


def _publish(node, client, argv, slot):
    kind = pubsub.SHARD if argv[0].lower() == b"spublish" else pubsub.MESSAGE
    receivers = node.pubsub.publish(kind, argv[1], argv[2])
    node.flush_ready()  # the subscribers here have a message to send
    return resp.integer(receivers)


_PUBSUB_HELP = [
    "PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are (dyno: every node of the cluster counted):",
    "CHANNELS [<pattern>]", "    Return the currently active channels matching a <pattern> (default: '*').",
    "NUMPAT", "    Return number of subscriptions to patterns.",
    "NUMSUB [<channel> ...]", "    Return the number of subscribers for the specified channels, excluding",
    "    pattern subscriptions(default: no channels).",
    "SHARDCHANNELS [<pattern>]", "    Return the currently active shard level channels matching a <pattern> (default: '*').",
    "SHARDNUMSUB [<shardchannel> ...]", "    Return the number of subscribers for the specified shard level channel(s)",
    "HELP", "    Print this help.",
]


def _pubsub(node, client, argv, slot):
    sub = argv[1].lower()
    if sub == b"help":
        return resp.array([resp.status(line) for line in _PUBSUB_HELP])
    if sub in (b"channels", b"shardchannels") and len(argv) > 3:
        return arity_error(b"pubsub|" + sub)
    node.pubsub_query(sub, argv[2:], slot)
    return None


def _ping_subscribed(node, client, argv, slot):
    if client.subscriber and client.protocol == 2:  # Redis: PING in subscriber mode
        return b"*2\r\n$4\r\npong\r\n" + resp.bulk(argv[1] if len(argv) > 1 else b"")
    return _ping(node, client, argv, slot)


def _block(node, client, argv, slot):
    return node.coordinator.block(client, commands.resolve(argv), argv, slot)


def _xgroup(node, client, argv, slot):
    """XGROUP CREATE|SETID with ``$`` (dyno.groups), or HELP."""
    spec = commands.resolve(argv)
    if spec.__class__ is not bytes and groups.on_watch_replica(spec.name, argv):
        return node.coordinator.block(client, spec, argv, slot)
    return _from_redis(node, client, argv, slot)


def _wait(node, client, argv, slot):
    """WAIT numreplicas timeout: how many other replicas (racks) acknowledged what
    this node sent them before the WAIT (the client's writes among it), waiting up to
    ``timeout`` ms (0: until numreplicas did)."""
    try:
        wanted, timeout = int(argv[1]), int(argv[2])
    except ValueError:
        return _NOT_INTEGER
    if timeout < 0:
        return resp.error("ERR timeout is negative")
    node.wait_replicas(wanted, timeout, slot)
    return None


def _watch(node, client, argv, slot):
    return node.coordinator.watch(client, argv, slot)


def _unwatch(node, client, argv, slot):
    node.coordinator.unwatch(client)
    return resp.OK


def _multi(node, client, argv, slot):
    # What the client sends next is queued (Coordinator._queue) until EXEC or DISCARD.
    client.transaction = node.coordinator.transaction()
    return resp.OK


_EXEC_WITHOUT = resp.error("ERR EXEC without MULTI")
_DISCARD_WITHOUT = resp.error("ERR DISCARD without MULTI")


def _ok(node, client, argv, slot):  # READONLY, READWRITE, ASKING: nothing to change in dyno
    return resp.OK


def dyno_config(client, argv) -> bytes:
    """Dynomite's per-connection override: ``DYNO_CONFIG:CONN_CONSISTENCY <level>``."""
    name = argv[0].upper()
    if name != b"DYNO_CONFIG:CONN_CONSISTENCY":
        return resp.error(f"ERR dyno: unknown setting '{argv[0].decode(errors='replace')}'")
    if len(argv) != 2:
        return resp.error("ERR wrong number of arguments for 'dyno_config:conn_consistency' command")
    level = argv[1].decode(errors="replace").upper()
    if level not in CONSISTENCY_LEVELS:
        return resp.error(f"ERR dyno: '{level}' is not one of {', '.join(CONSISTENCY_LEVELS)}")
    client.consistency_override = {"read": level, "write": level}
    return resp.OK


Handler = Callable[["Node", "ClientConnection", list, "ReplySlot"], "bytes | None"]

HANDLERS: dict[bytes, Handler] = {
    b"ping": _ping_subscribed,
    b"subscribe": _subscribe,
    b"psubscribe": _subscribe,
    b"ssubscribe": _subscribe,
    b"unsubscribe": _unsubscribe,
    b"punsubscribe": _unsubscribe,
    b"sunsubscribe": _unsubscribe,
    b"publish": _publish,
    b"spublish": _publish,
    b"pubsub": _pubsub,
    b"echo": _echo,
    b"quit": _quit,
    b"select": _select,
    b"auth": _auth,
    b"hello": _hello,
    b"client": _client,
    b"info": _info,
    b"config": _config,
    b"cluster": _cluster,
    b"multi": _multi,
    b"watch": _watch,
    b"wait": _wait,
    # (XREAD only with BLOCK comes here; a consumer group's reads and claims always: dyno.groups)
    **dict.fromkeys(blocking.BLOCKING | groups.ON_WATCH_REPLICA | {b"xread"}, _block),
    b"xgroup": _xgroup,
    b"unwatch": _unwatch,
    b"exec": lambda node, client, argv, slot: _EXEC_WITHOUT,
    b"discard": lambda node, client, argv, slot: _DISCARD_WITHOUT,
    b"readonly": _ok,
    b"readwrite": _ok,
    b"asking": _ok,
    b"reset": _reset,
}


def run(node, client, spec, argv, slot) -> bytes | None:
    return HANDLERS.get(argv[0].lower(), _from_redis)(node, client, argv, slot)


def server_info(node) -> dict[str, object]:
    """Fields of INFO's server section."""
    return {
        "redis_version": REDIS_VERSION,
        "dyno_version": __version__,
        "redis_mode": "standalone",
        "os": " ".join(os.uname()[::2]),
        "process_id": os.getpid(),
        "tcp_port": node.listener.port,
        "uptime_in_seconds": int(time.time() - node.started),
    }
