"""Consumer groups: XREADGROUP, XCLAIM and XAUTOCLAIM, run on one replica, their effect on the others.

These commands change a group's state by what the replica running them has and by its
clock: which entries are new (the group's last-delivered id), which pending entries
are idle long enough to claim. Sent to every replica, as a plain write is, two replicas
could deliver different entries or keep different pending entries lists (PELs). So they
run as blocking pops do (dyno.blocking): on a session on the keys' watch replica, the
same whichever node the client is on (two consumers of one group through different
nodes meet on one Redis, and an entry is delivered to the group once), XREADGROUP BLOCK
waiting there. The command is followed on the session by ``followups`` (XINFO GROUPS of
each stream, for XREADGROUP; XPENDING of each id, for XCLAIM; then TIME), and what it did goes to the other replicas in
the deterministic form Redis itself propagates to its replicas (t_stream.c
streamPropagateXCLAIM, streamPropagateGroupID, streamPropagateConsumerCreation):

    XREADGROUP ... >         -> XGROUP CREATECONSUMER key group consumer
                                XCLAIM key group consumer 0 <ids> TIME <t> RETRYCOUNT 1 FORCE JUSTID
                                XGROUP SETID key group <last-delivered-id> ENTRIESREAD <entries-read>
                                  (as a script, SETID_FORWARD, that never moves the group back)
    (NOACK: no XCLAIM)
    XREADGROUP ... <id>      -> XGROUP CREATECONSUMER key group consumer
       (history)                XCLAIM key group consumer 0 <ids> TIME <t>       (delivery count + 1)
    XCLAIM ... min-idle ids  -> XACK key group <ids it dropped from the PEL (deleted entries)>
                                XCLAIM key group consumer 0 <claimed ids> TIME <t> [RETRYCOUNT n]
                                       [FORCE] [JUSTID] [LASTID id]
    XAUTOCLAIM ...           -> XCLAIM key group consumer 0 <claimed ids> TIME <t> [JUSTID]
                                XACK key group <ids it deleted from the PEL>
    XGROUP CREATE|SETID key group $ ...
                             -> the same with the group's last-delivered id and entries-read

``t`` is the delivery time on the running replica (its TIME right after the command,
less IDLE where given); the minimum idle time becomes 0, so no other replica decides by
its own clock. Two things Redis 7.0's own replication leaves out are carried: a history
read's delivery-count increment, and the entries-read counter (XINFO GROUPS shows it
and the lag). Redis 7.0 creates a consumer for a stream it serves (``>`` with entries,
or a history read), not for a ``>`` read that found nothing; the effect does the same.

Pure: what to send after the command, and what its replies say it did. No I/O.
"""

from __future__ import annotations

__all__ = ["ON_WATCH_REPLICA", "blocks", "effect", "followups", "on_watch_replica", "written_keys"]

#: Run on the keys' watch replica, their effect replicated (the coordinator's ``block``).
ON_WATCH_REPLICA = frozenset({b"xreadgroup", b"xclaim", b"xautoclaim"})
#: ... and these when their ID is ``$`` (the stream's last ID on the replica that runs it).
_AT_LAST_ID = frozenset({b"xgroup|create", b"xgroup|setid"})


def on_watch_replica(name: bytes, argv: list[bytes]) -> bool:
    """Whether the command (its spec's name) runs on the watch replica (module docstring)."""
    return name in ON_WATCH_REPLICA or name in _AT_LAST_ID and len(argv) > 4 and argv[4] == b"$"

_TIME = [b"TIME"]
_XREAD_OPTION_ARGS = {b"block": 1, b"count": 1, b"group": 2, b"noack": 0}
_XCLAIM_OPTION_ARGS = {b"idle": 1, b"time": 1, b"retrycount": 1, b"force": 0, b"justid": 0, b"lastid": 1}


class _Read:
    """What an XREADGROUP asks: group, consumer, NOACK, BLOCK, its streams and ids."""

    __slots__ = ("group", "consumer", "noack", "block", "streams")

    def __init__(self, argv: list[bytes]):
        self.group = self.consumer = None
        self.noack = self.block = False
        self.streams: list[tuple[bytes, bytes]] = []
        i = 1
        while i < len(argv):
            word = argv[i].lower()
            if word == b"streams":
                rest = argv[i + 1:]
                half = len(rest) // 2
                self.streams = list(zip(rest[:half], rest[half:]))
                return
            if word == b"group" and i + 2 < len(argv):
                self.group, self.consumer = argv[i + 1], argv[i + 2]
            elif word == b"noack":
                self.noack = True
            elif word == b"block":
                self.block = True
            skip = _XREAD_OPTION_ARGS.get(word)
            if skip is None:
                return
            i += skip + 1


def blocks(argv: list[bytes]) -> bool:
    """Whether the command may wait in Redis (XREADGROUP with BLOCK)."""
    return argv[0].lower() == b"xreadgroup" and _Read(argv).block


def followups(argv: list[bytes]) -> list[list[bytes]]:
    """The commands sent on the session right after ``argv``, whose replies ``effect``
    reads: XINFO GROUPS of each stream (XREADGROUP), then TIME."""
    name = argv[0].lower()
    if name == b"xreadgroup":
        return [[b"XINFO", b"GROUPS", key] for key, _ in _Read(argv).streams] + [_TIME]
    if name == b"xgroup":
        return [[b"XINFO", b"GROUPS", argv[2]], _TIME]
    if name == b"xclaim" and len(argv) > 5:  # which ids are still pending there after it
        return [[b"XPENDING", argv[1], argv[2], id_, id_, b"1"] for id_ in _xclaim_ids(argv)] + [_TIME]
    return [_TIME]


def _xclaim_ids(argv: list[bytes]) -> list[bytes]:
    """The ids of an XCLAIM (from argv[5] to the first option)."""
    i = 5
    while i < len(argv) and argv[i].lower() not in _XCLAIM_OPTION_ARGS:
        i += 1
    return argv[5:i]


def effect(argv: list[bytes], replies: list) -> list[list[bytes]]:
    """The commands that do to another replica what ``argv`` did on the watch replica,
    given the parsed replies (hiredis: lists, dicts, bytes, numbers, errors) of it and
    of its ``followups``, in order; [] if it changed nothing."""
    reply = replies[0]
    if reply is None or isinstance(reply, Exception):
        return []
    now = _time_ms(replies[-1])
    if now is None:
        return []
    name = argv[0].lower()
    if name == b"xreadgroup":
        return _xreadgroup(argv, reply, replies[1:-1], now)
    if name == b"xclaim":
        return _xclaim(argv, reply, replies[1:-1], now)
    if name == b"xautoclaim":
        return _xautoclaim(argv, reply, now)
    if name == b"xgroup":
        return _xgroup_at_last_id(argv, replies[1])
    return []


def written_keys(commands: list[list[bytes]]) -> list[bytes]:
    """The keys an ``effect`` writes (their versions are stamped), each once."""
    keys: dict[bytes, None] = {}
    for command in commands:
        keys[command[_KEY_AT.get(command[0], 1)]] = None
    return list(keys)


_KEY_AT = {b"XGROUP": 2, b"EVAL": 3}

#: XGROUP SETID key group id [ENTRIESREAD n], unless the group's last-delivered id is
#: already past ``id``: two reads' effects sent by different nodes may reach a replica
#: in either order, and the group's position must only move on, as on the replica that
#: ran them. KEYS[1] the stream; ARGV: group, id, entries-read ('' for none). IDs are
#: compared as Redis writes them (decimal, no leading zeros): by length, then bytes.
SETID_FORWARD = b"""
local function before(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if #am ~= #bm then return #am < #bm end
  if am ~= bm then return am < bm end
  if #as ~= #bs then return #as < #bs end
  return as < bs
end
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  if f['name'] == ARGV[1] then
    if before(ARGV[2], f['last-delivered-id']) then return 0 end
    if ARGV[3] == '' then
      redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], ARGV[2])
    else
      redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], ARGV[2], 'ENTRIESREAD', ARGV[3])
    end
    return 1
  end
end
return 0
"""


def _xreadgroup(argv: list[bytes], reply, infos: list, now: int) -> list[list[bytes]]:
    read = _Read(argv)
    if read.group is None:
        return []
    asked = dict(read.streams)
    served = reply.items() if isinstance(reply, dict) else reply
    out: list[list[bytes]] = []
    group, consumer = read.group, read.consumer
    for key, entries in served:
        start = asked.get(key)
        if start is None or entries is None:
            continue
        ids = [entry[0] for entry in entries if entry[1] is not None]  # (a deleted entry: [id, nil])
        if start == b">":
            if not ids:
                continue
            out.append([b"XGROUP", b"CREATECONSUMER", key, group, consumer])
            if not read.noack:
                # (An entry whose XADD, sent through another node, has not reached a
                # replica yet is ignored there by XCLAIM FORCE: docs/design-notes.md. Adding
                # it here would be worse: the entries before it, arriving later, would be
                # refused there as smaller IDs.)
                out.append([b"XCLAIM", key, group, consumer, b"0", *ids, b"TIME", b"%d" % now,
                            b"RETRYCOUNT", b"1", b"FORCE", b"JUSTID"])
            position = [stream for stream, _ in read.streams].index(key)
            state = _group_state(infos[position] if position < len(infos) else None, group)
            if state is not None:
                last, entries_read = state
                out.append([b"EVAL", SETID_FORWARD, b"1", key, group, last,
                            b"" if entries_read is None else b"%d" % entries_read])
        else:  # a history read: the consumer's own pending entries, delivered once more
            out.append([b"XGROUP", b"CREATECONSUMER", key, group, consumer])
            if ids:
                out.append([b"XCLAIM", key, group, consumer, b"0", *ids, b"TIME", b"%d" % now])
    return out


def _xclaim(argv: list[bytes], reply, pending: list, now: int) -> list[list[bytes]]:
    if len(argv) < 6 or not isinstance(reply, list):
        return []
    asked = _xclaim_ids(argv)
    i = 5 + len(asked)
    options: dict[bytes, bytes | None] = {}
    while i < len(argv):
        word = argv[i].lower()
        skip = _XCLAIM_OPTION_ARGS.get(word)
        if skip is None or i + skip >= len(argv):
            return []
        options[word] = argv[i + 1] if skip else None
        i += skip + 1
    claimed = [item if isinstance(item, bytes) else item[0] for item in reply]
    # An id asked for, not claimed and not pending afterwards: XCLAIM dropped it from
    # the PEL (its entry was deleted), or it was not pending (XACK changes nothing then).
    dropped = [id_ for id_, after in zip(asked, pending) if id_ not in claimed and after == []]
    out: list[list[bytes]] = [[b"XACK", argv[1], argv[2], *dropped]] if dropped else []
    if not claimed and b"lastid" not in options:
        return out
    if not claimed:  # LASTID alone still moves the group's last id on
        claimed = [b"0-0"]
    when = options.get(b"time")
    if when is None:
        idle = options.get(b"idle")
        when = b"%d" % (now - int(idle)) if idle is not None else b"%d" % now
    claim = [b"XCLAIM", argv[1], argv[2], argv[3], b"0", *claimed, b"TIME", when]
    if b"retrycount" in options:
        claim += [b"RETRYCOUNT", options[b"retrycount"]]
    if b"force" in options:
        claim.append(b"FORCE")
    if b"justid" in options:
        claim.append(b"JUSTID")
    if b"lastid" in options:
        claim += [b"LASTID", options[b"lastid"]]
    return out + [claim]


def _xautoclaim(argv: list[bytes], reply, now: int) -> list[list[bytes]]:
    if len(argv) < 6 or not isinstance(reply, list) or len(reply) < 2:
        return []
    justid = any(word.lower() == b"justid" for word in argv[6:])
    claimed = [item if isinstance(item, bytes) else item[0] for item in reply[1]]
    deleted = list(reply[2]) if len(reply) > 2 and reply[2] else []
    out: list[list[bytes]] = []
    if claimed:
        out.append([b"XCLAIM", argv[1], argv[2], argv[3], b"0", *claimed, b"TIME", b"%d" % now]
                   + ([b"JUSTID"] if justid else []))
    if deleted:
        out.append([b"XACK", argv[1], argv[2], *deleted])
    return out


def _xgroup_at_last_id(argv: list[bytes], info) -> list[list[bytes]]:
    """XGROUP CREATE|SETID key group $ ...: the same with the ID and entries-read the
    group got (``$`` would be each replica's own last ID)."""
    state = _group_state(info, argv[3])
    if state is None:
        return []
    last, entries_read = state
    out = [b"XGROUP", argv[1].upper(), argv[2], argv[3], last]
    if argv[1].lower() == b"create" and any(word.lower() == b"mkstream" for word in argv[5:]):
        out.append(b"MKSTREAM")
    if entries_read is not None:
        out += [b"ENTRIESREAD", b"%d" % entries_read]
    return [out]


def _time_ms(reply) -> int | None:
    """TIME's reply ([seconds, microseconds]) in milliseconds."""
    try:
        seconds, micros = reply
        return int(seconds) * 1000 + int(micros) // 1000
    except (TypeError, ValueError):
        return None


def _group_state(info, group: bytes) -> tuple[bytes, int | None] | None:
    """(last-delivered-id, entries-read) of ``group`` in an XINFO GROUPS reply
    (RESP2: flat field/value lists; RESP3: maps), or None."""
    if not isinstance(info, list):
        return None
    for item in info:
        fields = item if isinstance(item, dict) else dict(zip(item[0::2], item[1::2]))
        if fields.get(b"name") == group:
            last = fields.get(b"last-delivered-id")
            if last is None:
                return None
            entries_read = fields.get(b"entries-read")
            return last, None if entries_read is None else int(entries_read)
    return None
