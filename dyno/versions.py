"""Versions: which write to a key is the newest, and how each Redis records it.

Every replicated write gets a *version* from the node that coordinates it: a hybrid
logical clock reading (``HLC``) and that node's id, so that concurrent writes to
one key through different nodes are ordered the same way everywhere and the last
writer wins. A version is 24 lowercase hex digits, ``MMMMMMMMMMMMLLLLNNNNNNNN``:
48 bits of wall-clock milliseconds, a 16-bit logical field, a 32-bit node id.
Compared as bytes, versions compare as the triples they encode (fixed width), in
Python and in Redis's Lua (which compares strings bytewise under the C locale).

The logical field carries the wall clock's microsecond within the millisecond
(times 65, so a node can make 65 versions in one microsecond before it borrows the
next). A write acknowledged to a client before another write begins through another
node of the same host therefore always has the smaller version: a millisecond clock
would order two such writes by node id when both fall in one millisecond, and a
quorum read after both could return the first. Across hosts the order is as good
as the clocks' agreement (as in Cassandra): ``HLC.observe`` only orders a node's
writes after the versions it has seen.

Where versions live. The data in each Redis stays plain Redis data, in database 0,
exactly as clients wrote it. A key's version is a plain string with the same name
in another database of the same Redis (``versions_db``, 15 by default): readable
with ``redis-cli -n 15 GET key``, ignored by DBSIZE, SCAN, KEYS and RANDOMKEY on
database 0. A deleted key keeps its version there: the version is then a
tombstone, which tells repair that the key was deleted rather than never written,
until it is older than ``tombstone_grace`` and dyno.tombstones drops it.

The write path stamps each batch of writes: after a part's commands, the same
connection runs ``SELECT versions_db; MSET k1 V k2 V ...; SELECT 0`` (``stamp``),
three commands whose replies are three ``+OK`` that the transport swallows
(``STAMP_REPLIES``). A write replayed later (a hint) or copied by repair is applied
only where it is newer than what the replica has (``APPLY_SEGMENT_IF_NEWER``,
``RESTORE_IF_NEWER``), so a retry or a replay never applies a command twice and
never puts an older value over a newer one.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence

import hiredis

from dyno.resp import encoded_length

_pack_command = hiredis.pack_command

__all__ = [
    "APPLY_SEGMENT_IF_NEWER", "DEFAULT_DB", "DIGEST", "FETCH", "HLC", "RESTORE_IF_NEWER", "STAMP_REPLIES",
    "VERSION_LENGTH", "make_version", "node_id", "parse_version", "segments", "stamp", "stamp_version",
]

DEFAULT_DB = 15
VERSION_LENGTH = 24
#: Replies of a stamp (SELECT, MSET, SELECT): the transport reads and drops them.
STAMP_REPLIES = 3
#: The logical field's values per microsecond of the wall clock (1000 x 65 < 65,536).
_TICKS_PER_MICROSECOND = 65


def node_id(name: str) -> int:
    """A node's 32-bit id in versions: a stable hash of its name (ties between two
    nodes' writes in the same millisecond and counter are broken by it)."""
    return zlib.crc32(name.encode())


def make_version(millis: int, logical: int, node: int) -> bytes:
    return b"%012x%04x%08x" % (millis, logical, node)


def parse_version(version: bytes) -> tuple[int, int, int]:
    """(milliseconds, logical, node id) of a version; ValueError if it is not one."""
    if len(version) != VERSION_LENGTH:
        raise ValueError(f"not a version: {version!r}")
    return int(version[:12], 16), int(version[12:16], 16), int(version[16:], 16)


class HLC:
    """A hybrid logical clock (Kulkarni et al.): readings never go backwards, stay
    close to wall-clock time, and order a write after every write this node has
    seen (``observe``). ``clock()`` is wall-clock microseconds.

    A reading is one integer, ``ticks`` = milliseconds << 16 | logical, so a
    counter that runs past a millisecond's 65,536 values borrows the next one."""

    __slots__ = ("node", "clock", "ticks")

    def __init__(self, node: int, clock: Callable[[], int] | None = None):
        self.node = node & 0xFFFFFFFF
        self.clock = clock or _wall_us
        self.ticks = 0  # the last reading made or observed

    def now(self) -> bytes:
        """A new version, greater than every version this clock made or observed."""
        micros = self.clock()
        wall = (micros // 1000) << 16 | (micros % 1000) * _TICKS_PER_MICROSECOND
        ticks = self.ticks = wall if wall > self.ticks else self.ticks + 1
        return b"%016x%08x" % (ticks, self.node)

    def observe(self, version: bytes) -> None:
        """A version made elsewhere (a peer's write): later readings order after it."""
        try:
            millis, logical, _ = parse_version(version)
        except ValueError:
            return
        ticks = millis << 16 | logical
        if ticks > self.ticks:
            self.ticks = ticks


def _wall_us() -> int:
    return time.time_ns() // 1_000


def stamp(keys: Sequence[bytes], version: bytes, db: int = DEFAULT_DB) -> bytes:
    """The commands that record ``version`` for ``keys`` (the keys a part writes),
    sent after the part's commands on the same connection: three ``+OK`` replies."""
    if len(keys) == 1:  # the common case, a write of one key: no list of pairs to make
        return b"".join((_select(db), _pack_command((b"MSET", keys[0], version)), _SELECT0))
    pairs = [version] * (2 * len(keys))
    pairs[0::2] = keys
    return b"".join((_select(db), _pack_command((b"MSET", *pairs)), _SELECT0))


def stamp_version(argvs: Sequence[Sequence[bytes]]) -> tuple[bytes, list[bytes]] | None:
    """(version, keys) of a stamp, given the last three parsed commands of a payload
    (SELECT, MSET, SELECT), or None if they are not a stamp."""
    if len(argvs) != 3:
        return None
    select, mset, back = argvs
    if (len(select) != 2 or select[0].upper() != b"SELECT" or len(mset) < 3 or len(mset) % 2 != 1
            or mset[0].upper() != b"MSET" or back != [b"SELECT", b"0"]):
        return None
    version = mset[2]
    if len(version) != VERSION_LENGTH:
        return None
    return version, list(mset[1::2])


def segments(requests: list[list[bytes]], payload: bytes):
    """The writes of a payload that may hold stamped parts one after another (a
    frame of COORDINATE writes, a hint), cut at the stamps: ``(requests, raw,
    version)`` for each run of writes, ``raw`` their canonical bytes (``payload``
    must be canonical), ``version`` the stamp's after them (None: none followed).
    (A client cannot send SELECT through dyno: a SELECT here is a stamp's.)"""
    start = index = 0
    cut = offset = 0
    size = len(requests)
    while index < size:
        argv = requests[index]
        if argv[0] in _SELECT_NAMES and index + 2 < size:
            found = stamp_version(requests[index : index + 3])
            if found is not None:
                yield requests[start:index], payload[cut:offset], found[0]
                for command in requests[index : index + 3]:
                    offset += encoded_length(command)
                index = start = index + 3
                cut = offset
                continue
        offset += encoded_length(argv)
        index += 1
    if start < size:
        yield requests[start:], payload[cut:], None


_SELECT_NAMES = frozenset({b"SELECT", b"select", b"Select"})
_SELECTS: dict[int, bytes] = {}
_SELECT0 = hiredis.pack_command((b"SELECT", b"0"))


def _select(db: int) -> bytes:
    command = _SELECTS.get(db)
    if command is None:
        command = _SELECTS[db] = hiredis.pack_command((b"SELECT", str(db).encode()))
    return command


# -- Lua: what replay and repair run on a replica's Redis -------------------------------
#
# Each script SELECTs the versions database and database 0 itself (a script's SELECT
# does not outlive it). Versions compare as strings; a key without a version (written
# before versions existed, or behind dyno's back) is older than any version.

#: The writes of one stamped segment (all of one version), replayed at once. KEYS:
#: every key they write (declared for routing; the script reads its keys from ARGV).
#: ARGV[1]: the version; ARGV[2]: versions_db; then each write as ``nkeys key... nargs
#: arg...``.
#: Which keys are older than the version is decided once, before any write runs: a
#: segment that wrote one key twice (SET k then INCR k, a transaction's block) runs
#: both writes where k was stale and neither where it was not. A write runs only if
#: every one of its keys was stale; then those keys get the version. The script is
#: atomic, so a transaction's writes stay one step. Returns one reply per write (the
#: status SKIPPED for a write not run).
APPLY_SEGMENT_IF_NEWER = b"""
local v = ARGV[1]
redis.call('SELECT', ARGV[2])
local stale, writes = {}, {}
local i = 3
while i <= #ARGV do
  local keys, cmd = {}, {}
  for j = 1, tonumber(ARGV[i]) do keys[j] = ARGV[i + j] end
  i = i + #keys + 1
  for j = 1, tonumber(ARGV[i]) do cmd[j] = ARGV[i + j] end
  i = i + #cmd + 1
  writes[#writes + 1] = {keys, cmd}
  for _, k in ipairs(keys) do
    if stale[k] == nil then
      local cur = redis.call('GET', k)
      stale[k] = (not cur) or cur < v
    end
  end
end
redis.call('SELECT', 0)
local replies = {}
for n, w in ipairs(writes) do
  local run = true
  for _, k in ipairs(w[1]) do run = run and stale[k] end
  if run then replies[n] = redis.pcall(unpack(w[2])) else replies[n] = redis.status_reply('SKIPPED') end
end
redis.call('SELECT', ARGV[2])
for k, s in pairs(stale) do
  if s then redis.call('SET', k, v) end
end
return replies
"""

# What repair compares when two replicas hold the same version of a key with different
# DUMPs. A DUMP is not a function of the value alone: a set or hash in a hash table is
# dumped in the order of that table, which depends on each Redis's random hash seed,
# and a small collection that once was large keeps its large encoding until a copy
# (RESTORE) gives it the small one. So equal values often dump differently, and
# "the larger DUMP wins" would copy them again on every repair. The *content digest*
# depends on the value only: for a hash, set or sorted set, the XOR of one sha1 per
# field/member (order-free); for a list, the sha1 of its elements in order; for
# anything else (strings, streams) the sha1 of its DUMP, which is canonical for them.
# It is 40 hex digits ('' for no key), so Lua (strcoll) and Python (bytes) order
# digests alike. repair.decide ranks two states of one version by (digest, expiry).
_CONTENT_DIGEST = b"""
local function content_digest(key)
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then return '' end
  local acc = {0, 0, 0, 0, 0}
  local function mix(s)
    local h = redis.sha1hex(s)
    for i = 0, 4 do
      acc[i + 1] = bit.bxor(acc[i + 1], tonumber(string.sub(h, i * 8 + 1, i * 8 + 8), 16))
    end
  end
  if kind == 'hash' or kind == 'zset' then
    local flat
    if kind == 'hash' then flat = redis.call('HGETALL', key)
    else flat = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES') end
    for i = 1, #flat, 2 do mix(#flat[i] .. ':' .. flat[i] .. flat[i + 1]) end
  elseif kind == 'set' then
    local members = redis.call('SMEMBERS', key)
    for i = 1, #members do mix(members[i]) end
  elseif kind == 'list' then
    local parts = {}
    for _, item in ipairs(redis.call('LRANGE', key, 0, -1)) do
      parts[#parts + 1] = #item .. ':' .. item
    end
    return redis.sha1hex('list\\n' .. table.concat(parts))
  else
    return redis.sha1hex(kind .. '\\n' .. redis.call('DUMP', key))
  end
  local hex = {kind}
  for i = 1, 5 do hex[#hex + 1] = bit.tohex(acc[i], 8) end
  return redis.sha1hex(table.concat(hex, '\\n'))
end
"""

#: KEYS[1]: a key. ARGV[1]: the version to install ('' for none: the key was never
#: versioned); ARGV[2]: versions_db; ARGV[3]: absolute expiry in ms (0: none);
#: ARGV[4]: a DUMP payload, or empty for "deleted"; ARGV[5], optional: the content
#: digest of what is installed ('' for deleted).
#: Installs the value (or deletes the key) only if the replica's version is older,
#: or, given ARGV[5], if it is the same version and what is installed ranks higher:
#: a larger content digest, or the same digest and a later expiry (none is latest).
#: So a copy never makes a replica older, and repeated repairs of one version agree.
#: Records the version (unless it is ''). Returns 1 if it installed, 0 if not.
RESTORE_IF_NEWER = _CONTENT_DIGEST + b"""
local v = ARGV[1]
redis.call('SELECT', ARGV[2])
local cur = redis.call('GET', KEYS[1]) or ''
if cur > v then return 0 end
redis.call('SELECT', 0)
if cur == v then
  local theirs = ARGV[5]
  if theirs == nil then return 0 end
  local mine = content_digest(KEYS[1])
  if theirs < mine then return 0 end
  if theirs == mine then
    if mine == '' then return 0 end
    local at = redis.call('PEXPIRETIME', KEYS[1])
    local new = tonumber(ARGV[3])
    if at == -1 or (new ~= 0 and new <= at) then return 0 end
  end
end
if ARGV[4] == '' then
  redis.call('DEL', KEYS[1])
else
  local at = tonumber(ARGV[3])
  if at > 0 then
    redis.call('RESTORE', KEYS[1], at, ARGV[4], 'REPLACE', 'ABSTTL')
  else
    redis.call('RESTORE', KEYS[1], 0, ARGV[4], 'REPLACE')
  end
end
if v ~= '' then
  redis.call('SELECT', ARGV[2])
  redis.call('SET', KEYS[1], v)
end
return 1
"""

#: KEYS: keys. ARGV[1]: versions_db; ARGV[2], optional: 'sha1' to get each DUMP's
#: sha1 (hex) instead of the DUMP. For each key, {version or '', absolute expiry in
#: ms (-1: none, -2: no key), DUMP payload (or its sha1) or ''}: what read repair and
#: repair compare and copy.
FETCH = b"""
local hashed = ARGV[2] == 'sha1'
local versions = {}
redis.call('SELECT', ARGV[1])
for i = 1, #KEYS do versions[i] = redis.call('GET', KEYS[i]) or '' end
redis.call('SELECT', 0)
local out = {}
for i = 1, #KEYS do
  local d = redis.call('DUMP', KEYS[i]) or ''
  if hashed and d ~= '' then d = redis.sha1hex(d) end
  out[i] = {versions[i], redis.call('PEXPIRETIME', KEYS[i]), d}
end
return out
"""

#: KEYS: keys. For each key, its content digest in database 0 ('' for no key).
DIGEST = _CONTENT_DIGEST + b"""
redis.call('SELECT', 0)
local out = {}
for i = 1, #KEYS do out[i] = content_digest(KEYS[i]) end
return out
"""
