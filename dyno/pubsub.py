"""Pub/sub across the cluster: subscriptions kept by each node, messages relayed by peers.

Redis keeps a server's subscribers and delivers a PUBLISH to them; Redis Cluster relays
every PUBLISH to every node. dyno does the same without its Redis: each node keeps
the channels and patterns its own clients subscribed to (``PubSub``), answers
(P|S)SUBSCRIBE and (P|S)UNSUBSCRIBE itself in Redis's words, and a PUBLISH is delivered
to this node's subscribers and sent to every peer of every datacenter (a PUBLISH
frame on the peer link, ``PeerLink.send_publish``), which delivers it to its own.
Each link is FIFO, so the messages of one publisher reach every subscriber in the
order published, once. PUBLISH answers, as in Redis Cluster, with the number of this
node's clients that received it. SSUBSCRIBE/SPUBLISH (Redis 7's sharded channels) are a
namespace of their own, relayed the same way (any dyno node serves every shard).

Messages go to a client as Redis sends them: in RESP2 an array (``message``,
``pmessage``, ``smessage``), in RESP3 a push (``>``). A RESP2 client with a
subscription may only send what Redis allows then (``ALLOWED_SUBSCRIBED``).

This module owns the subscription tables and the RESP of pub/sub; no I/O. ``send``
(given: relays a message to every peer) and ``ReplySlot`` delivery are how messages
leave it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from dyno import resp
from dyno.client import NO_SUBSCRIPTIONS

__all__ = ["ALLOWED_SUBSCRIBED", "KINDS", "NONE", "Glob", "PubSub", "combine_counts", "glob_regex", "merge_counts", "not_allowed"]

MESSAGE, SHARD = b"message", b"smessage"
KINDS = (MESSAGE, SHARD)
ALLOWED_SUBSCRIBED = frozenset({b"subscribe", b"psubscribe", b"ssubscribe", b"unsubscribe", b"punsubscribe",
                                b"sunsubscribe", b"ping", b"quit", b"reset"})


def not_allowed(name: bytes) -> bytes:
    return resp.error(f"ERR Can't execute '{name.decode(errors='replace').lower()}': only (P|S)SUBSCRIBE / "
                      "(P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context")


def glob_regex(pattern: bytes) -> "Glob":
    """Redis's glob as Redis matches it (``Glob``)."""
    return Glob(pattern)


class Glob:
    """A pattern matched exactly as Redis's ``stringmatchlen`` does (PSUBSCRIBE,
    PUBSUB CHANNELS, KEYS): ``*``, ``?``, ``[abc]``, ``[^a-z]``, ``\\x``, with its
    quirks (an unclosed class closes at the end; ``[a-]`` is the range a..])."""

    __slots__ = ("pattern",)

    def __init__(self, pattern: bytes):
        self.pattern = pattern

    def match(self, string: bytes) -> bool:
        return _match(self.pattern, 0, string, 0, [False])


def _at(data: bytes, index: int) -> int:
    return data[index] if index < len(data) else 0  # C reads the terminating NUL


def _match(p: bytes, i: int, s: bytes, j: int, skip: list) -> bool:
    """redis/src/util.c stringmatchlen_impl, index for index."""
    plen, slen = len(p) - i, len(s) - j
    while plen and slen:
        c = p[i]
        if c == 0x2A:  # '*'
            while plen and _at(p, i + 1) == 0x2A:
                i += 1
                plen -= 1
            if plen == 1:
                return True
            while slen:
                if _match(p[: i + plen], i + 1, s[: j + slen], j, skip):
                    return True
                if skip[0]:
                    return False
                j += 1
                slen -= 1
            skip[0] = True
            return False
        if c == 0x3F:  # '?'
            j += 1
            slen -= 1
        elif c == 0x5B:  # '['
            i += 1
            plen -= 1
            negate = _at(p, i) == 0x5E
            if negate:
                i += 1
                plen -= 1
            matched = False
            while True:
                if _at(p, i) == 0x5C and plen >= 2:
                    i += 1
                    plen -= 1
                    if _at(p, i) == s[j]:
                        matched = True
                elif _at(p, i) == 0x5D:
                    break
                elif plen == 0:
                    i -= 1
                    plen += 1
                    break
                elif plen >= 3 and _at(p, i + 1) == 0x2D:
                    start, end = _at(p, i), _at(p, i + 2)
                    if start > end:
                        start, end = end, start
                    i += 2
                    plen -= 2
                    if start <= s[j] <= end:
                        matched = True
                elif _at(p, i) == s[j]:
                    matched = True
                i += 1
                plen -= 1
            if negate:
                matched = not matched
            if not matched:
                return False
            j += 1
            slen -= 1
        else:
            if c == 0x5C and plen >= 2:  # '\\': the next character literally
                i += 1
                plen -= 1
            if _at(p, i) != s[j]:
                return False
            j += 1
            slen -= 1
        i += 1
        plen -= 1
        if slen == 0:
            while _at(p, i) == 0x2A and plen > 0:
                i += 1
                plen -= 1
            break
    return plen == 0 and slen == 0


class PubSub:
    """This node's subscriptions (module docstring). ``relay(kind, channel, message)``
    sends a PUBLISH to every peer."""

    def __init__(self, relay: Callable[[bytes, bytes, bytes], None]):
        self.relay = relay
        self.channels: dict[bytes, set] = {}
        self.shard_channels: dict[bytes, set] = {}
        self.patterns: dict[bytes, tuple[Glob, set]] = {}
        self.published = 0  # messages published through this node
        self.delivered = 0  # messages delivered to this node's clients

    # -- subscribing ----------------------------------------------------------------------

    def subscribe(self, client, kind: bytes, names: Iterable[bytes]) -> bytes:
        """SUBSCRIBE / PSUBSCRIBE / SSUBSCRIBE: one confirmation per name."""
        out = []
        for name in names:
            if kind == b"psubscribe":
                mine = _own(client, "patterns")
                if name not in mine:
                    mine.add(name)
                    entry = self.patterns.get(name)
                    if entry is None:
                        entry = self.patterns[name] = (glob_regex(name), set())
                    entry[1].add(client)
            else:
                mine, table = (_own(client, "channels"), self.channels) if kind == b"subscribe" else (
                    _own(client, "shard_channels"), self.shard_channels)
                if name not in mine:
                    mine.add(name)
                    table.setdefault(name, set()).add(client)
            out.append(_confirm(client, kind, name, _count(client, kind)))
        self._mode(client)
        return b"".join(out)

    def unsubscribe(self, client, kind: bytes, names: list[bytes]) -> bytes:
        """UNSUBSCRIBE / PUNSUBSCRIBE / SUNSUBSCRIBE: the names given, or all; with none
        to leave, one confirmation with a null name (as Redis)."""
        mine = _own(client, {b"punsubscribe": "patterns", b"unsubscribe": "channels"}.get(kind, "shard_channels"))
        names = list(names) or sorted(mine)
        if not names:
            self._mode(client)
            return _confirm(client, kind, None, _count(client, kind))
        out = []
        for name in names:
            if name in mine:
                mine.discard(name)
                self._forget(kind, name, client)
            out.append(_confirm(client, kind, name, _count(client, kind)))
        self._mode(client)
        return b"".join(out)

    def forget(self, client) -> None:
        """A client left: it is in no table any more."""
        for kind, mine in ((b"unsubscribe", client.channels), (b"punsubscribe", client.patterns),
                           (b"sunsubscribe", client.shard_channels)):
            for name in mine:
                self._forget(kind, name, client)
        client.channels = client.patterns = client.shard_channels = NONE
        client.subscriber = False

    def _forget(self, kind: bytes, name: bytes, client) -> None:
        if kind == b"punsubscribe":
            entry = self.patterns.get(name)
            if entry is not None:
                entry[1].discard(client)
                if not entry[1]:
                    del self.patterns[name]
            return
        table = self.channels if kind == b"unsubscribe" else self.shard_channels
        clients = table.get(name)
        if clients is not None:
            clients.discard(client)
            if not clients:
                del table[name]

    @staticmethod
    def _mode(client) -> None:
        # RESP2 clients with a subscription may send only what Redis allows then
        client.subscriber = bool(client.channels or client.patterns or client.shard_channels)

    # -- publishing -----------------------------------------------------------------------

    def publish(self, kind: bytes, channel: bytes, message: bytes) -> int:
        """PUBLISH / SPUBLISH through this node: delivered here, relayed to every peer.
        Returns how many of this node's clients received it."""
        self.published += 1
        self.relay(kind, channel, message)
        return self.deliver(kind, channel, message)

    def deliver(self, kind: bytes, channel: bytes, message: bytes) -> int:
        """A message published here or relayed by a peer: to this node's subscribers
        (encoded once per form, RESP2 array and RESP3 push, for all of them)."""
        receivers = 0
        if kind == SHARD:
            receivers += _push_all(self.shard_channels.get(channel, ()), [SHARD, channel, message])
        else:
            receivers += _push_all(self.channels.get(channel, ()), [MESSAGE, channel, message])
            for pattern, (regex, clients) in self.patterns.items():
                if regex.match(channel):
                    receivers += _push_all(clients, [b"pmessage", pattern, channel, message])
        self.delivered += receivers
        return receivers

    # -- PUBSUB -----------------------------------------------------------------------------

    def local_counts(self, sub: bytes, args: list[bytes]):
        """This node's share of PUBSUB ``sub``: CHANNELS/SHARDCHANNELS -> [names],
        NUMSUB/SHARDNUMSUB -> {channel: subscribers}, NUMPAT -> patterns subscribed."""
        if sub in (b"channels", b"shardchannels"):
            table = self.channels if sub == b"channels" else self.shard_channels
            regex = glob_regex(args[0]) if args else None
            return [name for name in table if regex is None or regex.match(name)]
        if sub in (b"numsub", b"shardnumsub"):
            table = self.channels if sub == b"numsub" else self.shard_channels
            return {name: len(table.get(name, ())) for name in args}
        return len(self.patterns)


def merge_counts(sub: bytes, args: list[bytes], shares: list) -> bytes:
    """PUBSUB's reply from every node's ``local_counts``."""
    if sub in (b"channels", b"shardchannels"):
        names = sorted({name for share in shares for name in share})
        return resp.array([resp.bulk(name) for name in names])
    if sub in (b"numsub", b"shardnumsub"):
        items = []
        for name in args:
            items += [resp.bulk(name), resp.integer(sum(share.get(name, 0) for share in shares))]
        return resp.array(items)
    return resp.integer(sum(shares))


def combine_counts(sub: bytes, shares: list):
    """One node's share of PUBSUB ``sub`` from its workers' ``local_counts`` (dyno.workers)."""
    if sub in (b"channels", b"shardchannels"):
        return sorted({name for share in shares for name in share})
    if sub in (b"numsub", b"shardnumsub"):
        total: dict = {}
        for share in shares:
            for name, count in share.items():
                total[name] = total.get(name, 0) + count
        return total
    return sum(shares)


#: A client's subscriptions before it has any (sets are made at its first SUBSCRIBE).
NONE: frozenset = NO_SUBSCRIPTIONS


def _own(client, attribute: str) -> set:
    mine = getattr(client, attribute)
    if mine is NONE:
        mine = set()
        setattr(client, attribute, mine)
    return mine


def _count(client, kind: bytes) -> int:
    if kind in (b"ssubscribe", b"sunsubscribe"):
        return len(client.shard_channels)
    return len(client.channels) + len(client.patterns)


def _confirm(client, kind: bytes, name: bytes | None, count: int) -> bytes:
    if client.protocol == 3:
        return b">3\r\n" + resp.bulk(kind) + (b"_\r\n" if name is None else resp.bulk(name)) + resp.integer(count)
    return b"*3\r\n" + resp.bulk(kind) + resp.bulk(name) + resp.integer(count)


def _push_all(clients, items: list[bytes]) -> int:
    """A message to each of ``clients``, as an out-of-band reply after what each is
    owed already. Returns how many."""
    if not clients:
        return 0
    body = b"".join([resp.bulk(item) for item in items])
    forms = {2: b"*%d\r\n" % len(items) + body, 3: b">%d\r\n" % len(items) + body}
    count = 0
    for client in clients:
        if not client.dead:
            client.push(forms[3 if client.protocol == 3 else 2])
            count += 1
    return count
