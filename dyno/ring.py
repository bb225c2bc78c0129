"""The token ring: a key's token, and which node owns that token in each rack.

This module owns placement (DESIGN.md §3). It is pure: no I/O, no clock, no
randomness, and a ``Ring`` never changes after it is built - a membership change
builds a new one. The coordinator asks it two questions per request, so those two
are fast: ``token_of(key)`` and ``replicas(token)``.

Rule 1 - a key's token is what Dynomite computes, bit for bit. ``murmur`` is
    Dynomite's default; the other names of Dynomite's hashkit are implemented as its
    C code behaves on x86-64 Linux (src/hashkit/dyn_*.c), including its quirks, so a
    cluster migrated with the same tokens and hash finds every key where it was.
    A hash dyno cannot reproduce is refused by name, never replaced by another.
Rule 2 - within a rack, token ``t`` belongs to the node with the smallest token
    ``>= t``; above the largest token it wraps to the smallest. (Dynomite's
    vnode_dispatch: a token in ``(a, b]`` belongs to ``b``.)
Rule 3 - every rack holds a full copy: the replicas of a token are its owner in each
    rack of each datacenter, the local datacenter first and in it the local rack first.

Theory of operation: per rack, a sorted token list and a parallel owner list answer
``owner`` with one bisect. For ``replicas`` the token lists of all racks are merged:
between two consecutive tokens of the merged list every rack's owner is the same, so
one bisect over the merged list picks a precomputed tuple of replicas (shared by all
the tokens of that stretch, and interned, since neighbouring stretches often agree).

Deliberate differences from Dynomite:
- a key with an empty hash tag (``{}``) is hashed whole, as twemproxy and Dynomite
  before 0.7 do; Dynomite 0.7 hashes an empty string there (or, for a single-key
  command, sends the request to whichever node received it);
- an empty key is hashed like any other key; Dynomite sends it to the node that
  received it, so different nodes disagree about where it lives.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from binascii import crc32 as _zlib_crc32, crc_hqx as _crc_hqx
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dyno.config import Config

__all__ = [
    "MAX_TOKEN",
    "SLOTS",
    "SUPPORTED_HASHES",
    "Moving",
    "Ring",
    "RingError",
    "RingNode",
    "evenly_spaced_tokens",
    "hash_function",
    "key_for_hash",
    "murmur",
    "murmur_many",
    "topology_from_config",
]

MAX_TOKEN = 2**32 - 1
_M32 = 0xFFFFFFFF


class RingError(ValueError):
    """A ring that cannot be built, or a hash dyno cannot compute; the message says
    what is wrong and with which nodes."""


# ---------------------------------------------------------------------------
# Hashes. Each takes the key's bytes and returns its token, an int in 0..2**32-1,
# exactly as Dynomite's hash_<name>() leaves it in the token (set_int_dyn_token).
# C's unsigned 32-bit wrap-around is written as ``& _M32``.

_MURMUR_M = 0x5BD1E995
_murmur_blocks: dict[int, Callable[[bytes], tuple[int, ...]]] = {}


def murmur(key: bytes, _blocks=_murmur_blocks, _m=_MURMUR_M, _mask=_M32,
           _from_bytes=int.from_bytes) -> int:
    """Dynomite's ``murmur`` (dyn_murmur.c): MurmurHash2 with seed ``0xdeadbeef * len``.

    Hot path: the little-endian 4-byte blocks are unpacked in one C call (a
    ``struct`` unpacker per block count, cached) and mixed with local variables.
    """
    n = len(key)
    h = ((0xDEADBEEF * n) ^ n) & _mask
    if n >= 4:
        unpack = _blocks.get(n >> 2)
        if unpack is None:
            unpack = _blocks[n >> 2] = struct.Struct("<%dI" % (n >> 2)).unpack_from
        for k in unpack(key):
            k = (k * _m) & _mask
            h = ((h * _m) ^ ((k ^ (k >> 24)) * _m)) & _mask
    tail = n & 3
    if tail:
        h = ((h ^ _from_bytes(key[n - tail:], "little")) * _m) & _mask
    h ^= h >> 13
    h = (h * _m) & _mask
    return h ^ (h >> 15)


# Below this many keys of one length, murmur_many hashes them one by one.
_LANES_FROM = 4


def murmur_many(keys: list[bytes]) -> list[int]:
    """``[murmur(key) for key in keys]``, faster for many keys (a batch's keys).

    Keys of one length are hashed together: each is given a 64-bit lane of one big
    integer, and every step of MurmurHash2 - 32-bit multiplies, shifts, XORs - is
    done once for all lanes, the lanes kept apart by masking each step back to
    their low 32 bits (a product of two 32-bit numbers fits in its lane; a shift
    right moves the next lane's low bits into the top of this one, which the mask
    drops). CPython multiplies a big integer by a small one in one pass, so 16
    keys of 16 bytes cost a third of 16 calls to ``murmur``, 160 keys a fifth."""
    tokens = [0] * len(keys)
    by_length: dict[int, list[int]] = {}
    for index, key in enumerate(keys):
        by_length.setdefault(len(key), []).append(index)
    for length, indexes in by_length.items():
        if len(indexes) < _LANES_FROM:
            for index in indexes:
                tokens[index] = murmur(keys[index])
            continue
        for index, token in zip(indexes, _murmur_lanes([keys[i] for i in indexes], length)):
            tokens[index] = token
    return tokens


def _murmur_lanes(keys: list[bytes], length: int, _m=_MURMUR_M) -> list[int]:
    """murmur of ``keys``, all ``length`` bytes long, in 64-bit lanes (murmur_many)."""
    n = len(keys)
    lanes = struct.Struct("<%dQ" % n)
    mask = int.from_bytes(b"\xff\xff\xff\xff\0\0\0\0" * n, "little")
    seed = ((0xDEADBEEF * length) ^ length) & _M32
    h = int.from_bytes(lanes.pack(*([seed] * n)), "little")
    blocks = length >> 2
    if blocks:
        joined = b"".join(keys) if not length & 3 else b"".join([key[: blocks << 2] for key in keys])
        flat = struct.unpack("<%dI" % (n * blocks), joined)
        for block in range(blocks):
            k = (int.from_bytes(lanes.pack(*flat[block::blocks]), "little") * _m) & mask
            k = ((k ^ ((k >> 24) & mask)) * _m) & mask
            h = ((h * _m) & mask) ^ k
    tail = length & 3
    if tail:
        ends = lanes.pack(*[int.from_bytes(key[length - tail:], "little") for key in keys])
        h = ((h ^ int.from_bytes(ends, "little")) * _m) & mask
    h ^= (h >> 13) & mask
    h = (h * _m) & mask
    h ^= (h >> 15) & mask
    return list(lanes.unpack(h.to_bytes(8 * n, "little")))


def _one_at_a_time(key: bytes) -> int:
    """dyn_one_at_a_time.c. It reads the key through a ``const char *``, so on x86 a
    byte >= 0x80 is sign-extended (0xff counts as 0xffffffff)."""
    h = 0
    for byte in key:
        if byte & 0x80:
            byte |= 0xFFFFFF00
        h = (h + byte) & _M32
        h = (h + (h << 10)) & _M32
        h ^= h >> 6
    h = (h + (h << 3)) & _M32
    h ^= h >> 11
    return (h + (h << 15)) & _M32


def _md5(key: bytes) -> int:
    """dyn_md5.c: the first four bytes of the MD5 digest, little-endian."""
    return int.from_bytes(hashlib.md5(key).digest()[:4], "little")


def _crc16(key: bytes) -> int:
    """dyn_crc16.c: CRC-16/XMODEM, except that the running value is a ``uint32_t``
    never masked to 16 bits, so the token keeps the bits shifted out: bits 16-23
    are bits 8-15 of the CRC of the key without its last byte, bits 24-31 those of
    the CRC without its last two bytes. (twemproxy's crc16 has the same quirk.)"""
    n = len(key)
    if n == 0:
        return 0
    before_last_two = _crc_hqx(key[:n - 2], 0) if n >= 2 else 0
    before_last = _crc_hqx(key[n - 2:n - 1], before_last_two) if n >= 2 else 0
    crc = _crc_hqx(key[n - 1:], before_last)
    return crc | (before_last & 0xFF00) << 8 | (before_last_two & 0xFF00) << 16


def _crc32(key: bytes) -> int:
    """dyn_crc32.c ``crc32`` (libmemcached's): bits 16-30 of the standard CRC-32,
    so tokens run from 0 to 32767 only."""
    return (_zlib_crc32(key) >> 16) & 0x7FFF


def _crc32a(key: bytes) -> int:
    """dyn_crc32.c ``crc32a``: the standard CRC-32 (as zlib's)."""
    return _zlib_crc32(key)


def _fnv1_64(key: bytes) -> int:
    """dyn_fnv.c ``fnv1_64``: 64-bit FNV-1 cast to 32 bits. The low 32 bits of the
    product depend only on the low 32 bits of its factors, so 32-bit arithmetic
    with the low halves of the 64-bit offset basis and prime gives the same."""
    h = 0x84222325
    for byte in key:
        h = ((h * 0x1B3) & _M32) ^ byte
    return h


def _fnv1a_64(key: bytes) -> int:
    """dyn_fnv.c ``fnv1a_64``: FNV-1a computed in 32 bits with the low halves of the
    64-bit offset basis and prime (= the low 32 bits of the real 64-bit FNV-1a)."""
    h = 0x84222325
    for byte in key:
        h = ((h ^ byte) * 0x1B3) & _M32
    return h


def _fnv1_32(key: bytes) -> int:
    """dyn_fnv.c ``fnv1_32``: 32-bit FNV-1."""
    h = 0x811C9DC5
    for byte in key:
        h = ((h * 0x01000193) & _M32) ^ byte
    return h


def _fnv1a_32(key: bytes) -> int:
    """dyn_fnv.c ``fnv1a_32``: 32-bit FNV-1a."""
    h = 0x811C9DC5
    for byte in key:
        h = ((h ^ byte) * 0x01000193) & _M32
    return h


def _hsieh(key: bytes) -> int:
    """dyn_hsieh.c: Paul Hsieh's SuperFastHash, bytes read unsigned (Dynomite 0.7;
    earlier releases sign-extended the last byte of a key whose length is 3 mod 4).
    An empty key hashes to 0."""
    n = len(key)
    if n == 0:
        return 0
    h = 0
    rem = n & 3
    for low, high in struct.iter_unpack("<HH", key[:n - rem]):
        h = (h + low) & _M32
        h = ((h << 16) ^ (high << 11) ^ h) & _M32
        h = (h + (h >> 11)) & _M32
    if rem == 3:
        h = (h + key[n - 3] + (key[n - 2] << 8)) & _M32
        h ^= (h << 16) & _M32
        h ^= (key[n - 1] << 18) & _M32
        h = (h + (h >> 11)) & _M32
    elif rem == 2:
        h = (h + key[n - 2] + (key[n - 1] << 8)) & _M32
        h ^= (h << 11) & _M32
        h = (h + (h >> 17)) & _M32
    elif rem == 1:
        h = (h + key[n - 1]) & _M32
        h ^= (h << 10) & _M32
        h = (h + (h >> 1)) & _M32
    h ^= (h << 3) & _M32
    h = (h + (h >> 5)) & _M32
    h ^= (h << 4) & _M32
    h = (h + (h >> 17)) & _M32
    h ^= (h << 25) & _M32
    return (h + (h >> 6)) & _M32


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def _lookup3(key: bytes, initval: int) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``: the final value of ``c``."""
    n = len(key)
    a = b = c = (0xDEADBEEF + n + initval) & _M32
    if n == 0:
        return c
    # The last block (1 to 12 bytes) is added zero-padded, which is what the C
    # code's masked reads and fall-through byte additions amount to.
    padded = bytes(key) + bytes(-n % 12)
    words = struct.unpack("<%dI" % (len(padded) // 4), padded)
    for i in range(0, len(words) - 3, 3):
        a = (a + words[i]) & _M32
        b = (b + words[i + 1]) & _M32
        c = (c + words[i + 2]) & _M32
        a, b, c = _mix(a, b, c)
    a = (a + words[-3]) & _M32
    b = (b + words[-2]) & _M32
    c = (c + words[-1]) & _M32
    return _final(a, b, c)


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = ((a - c) & _M32) ^ _rot(c, 4)
    c = (c + b) & _M32
    b = ((b - a) & _M32) ^ _rot(a, 6)
    a = (a + c) & _M32
    c = ((c - b) & _M32) ^ _rot(b, 8)
    b = (b + a) & _M32
    a = ((a - c) & _M32) ^ _rot(c, 16)
    c = (c + b) & _M32
    b = ((b - a) & _M32) ^ _rot(a, 19)
    a = (a + c) & _M32
    c = ((c - b) & _M32) ^ _rot(b, 4)
    b = (b + a) & _M32
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c = ((c ^ b) - _rot(b, 14)) & _M32
    a = ((a ^ c) - _rot(c, 11)) & _M32
    b = ((b ^ a) - _rot(a, 25)) & _M32
    c = ((c ^ b) - _rot(b, 16)) & _M32
    a = ((a ^ c) - _rot(c, 4)) & _M32
    b = ((b ^ a) - _rot(a, 14)) & _M32
    return ((c ^ b) - _rot(b, 24)) & _M32


def _jenkins(key: bytes) -> int:
    """dyn_jenkins.c: lookup3 ``hashlittle`` with initval 13 (libmemcached's).
    For an empty key Dynomite leaves the token unset; dyno gives libhashkit's
    value, 0xdeadbefc."""
    return _lookup3(key, 13)


#: Redis Cluster's key slots, and how dyno's hash ``slot`` spreads them over the tokens.
SLOTS = 16384
_SLOT_MASK = SLOTS - 1
_SLOT_SHIFT = 18  # 16384 slots x 2**18 = 2**32 tokens


def _slot(key: bytes) -> int:
    """dyno's own hash ``slot`` (not one of Dynomite's): Redis Cluster's key slot,
    CRC-16/XMODEM mod 16384, spread over the token space (``slot << 18``). A rack's
    nodes then own whole slots, so CLUSTER SLOTS can tell cluster-mode clients which
    node serves each key, and they send it there: no hop inside the rack."""
    return (_crc_hqx(key, 0) & _SLOT_MASK) << _SLOT_SHIFT


# Dynomite's hash names (HASH_CODEC in dyn_hashkit.h) that dyno computes exactly, and slot.
_HASHES: dict[str, Callable[[bytes], int]] = {
    "one_at_a_time": _one_at_a_time,
    "md5": _md5,
    "crc16": _crc16,
    "crc32": _crc32,
    "crc32a": _crc32a,
    "fnv1_64": _fnv1_64,
    "fnv1a_64": _fnv1a_64,
    "fnv1_32": _fnv1_32,
    "fnv1a_32": _fnv1a_32,
    "hsieh": _hsieh,
    "murmur": murmur,
    "jenkins": _jenkins,
    "slot": _slot,
}
SUPPORTED_HASHES = tuple(_HASHES)

# Dynomite's names dyno refuses, and why.
_REFUSED = {
    "murmur3": "Dynomite's murmur3 is a stub that computes nothing (every key gets the "
               "same empty token and lands on the first node of each rack), so there is "
               "no placement to be compatible with; use murmur",
}


def hash_function(name: str) -> Callable[[bytes], int]:
    """The function computing Dynomite's hash ``name``: key bytes -> token."""
    function = _HASHES.get(name)
    if function is not None:
        return function
    supported = ", ".join(SUPPORTED_HASHES)
    if name in _REFUSED:
        raise RingError(f"hash {name!r} is not supported by dyno yet ({_REFUSED[name]}); "
                        f"supported: {supported}")
    raise RingError(f"hash {name!r} is not one of Dynomite's hashes; supported: {supported}")


def key_for_hash(key: bytes, hash_tag: bytes | None) -> bytes:
    """The part of ``key`` that is hashed: with ``hash_tag`` (two bytes, like
    ``b"{}"``) the bytes between the first opening byte and the next closing byte
    after it, if there are any; otherwise (no tag, no opening byte, no closing byte
    after it, or nothing between them) the whole key."""
    if not hash_tag:
        return key
    start = key.find(hash_tag[0:1])
    if start < 0:
        return key
    end = key.find(hash_tag[1:2], start + 1)
    if end <= start + 1:  # no closing byte (-1), or an empty tag
        return key
    return key[start + 1:end]


# ---------------------------------------------------------------------------
# Nodes and the ring.


@dataclass(frozen=True, slots=True)
class RingNode:
    """A node as the ring sees it. Racks are named within their datacenter."""

    name: str               # "host:dyn_port", the node's name among its peers
    host: str               # peer (dyn_listen) address
    port: int
    dc: str
    rack: str
    tokens: tuple[int, ...]
    local: bool = False     # this node itself

    def __str__(self) -> str:
        return self.name


class Moving(tuple):
    """A replica set (one owner per rack, as a plain tuple is) while a range moves:
    ``pending`` are the nodes that get its writes too but serve no reads yet. A
    subclass so that the request path, which only ever asks ``ring.replicas``,
    pays nothing for it when nothing moves."""

    def __new__(cls, replicas: tuple, pending: tuple):
        group = super().__new__(cls, replicas)
        group.pending = pending
        return group


class Ring:
    """The nodes of every rack of every datacenter, and who owns what.

    ``replicas`` and ``local_replicas`` return shared, immutable tuples: compare
    and iterate them freely, copy them before changing anything.
    """

    def __init__(self, nodes: Iterable[RingNode], local: RingNode,
                 hash_name: str = "murmur", hash_tag: bytes | None = None,
                 futures: Iterable[Iterable[RingNode]] = (), local_outside: bool = False) -> None:
        self._hash = hash_function(hash_name)
        self.hash_name = hash_name
        if hash_tag is not None and (not isinstance(hash_tag, bytes) or len(hash_tag) != 2):
            raise RingError(f"hash_tag {hash_tag!r} must be two bytes, the opening and "
                            "closing characters, like b'{}'")
        self.hash_tag = hash_tag
        self._tag_open = hash_tag[0:1] if hash_tag else None

        self.local = local = _as_local(local)
        futures = [list(future) for future in futures]
        #: What the ring was built from besides its nodes (a worker's copy is rebuilt
        #: from them: dyno.workers.view_of).
        self.futures: tuple[tuple[RingNode, ...], ...] = tuple(tuple(future) for future in futures)
        self.local_outside = local_outside
        # ``local_outside``: this node owns nothing now (it is joining or replacing
        # a node: pending, if a future lists it; or it was replaced, or left).
        self.local_pending = local_outside and any(
            node.name == local.name for future in futures for node in future)
        by_name = _check_nodes(nodes, local, include_local=not local_outside)

        racks_of: dict[str, set[str]] = {}
        members: dict[tuple[str, str], list[RingNode]] = {}
        for node in by_name.values():
            racks_of.setdefault(node.dc, set()).add(node.rack)
            members.setdefault((node.dc, node.rack), []).append(node)

        self.dcs: tuple[str, ...] = ((local.dc, *sorted(racks_of.keys() - {local.dc}))
                                     if local.dc in racks_of else tuple(sorted(racks_of)))
        self._racks: dict[str, tuple[str, ...]] = {
            dc: ((local.rack, *sorted(racks - {local.rack})) if dc == local.dc and local.rack in racks
                 else tuple(sorted(racks)))
            for dc, racks in racks_of.items()
        }
        self._rack_nodes: dict[tuple[str, str], tuple[RingNode, ...]] = {}
        # Per rack: sorted tokens and, at the same index, the node owning each.
        self._continuum: dict[tuple[str, str], tuple[list[int], list[RingNode]]] = {}
        for place, rack_members in members.items():
            rack_members.sort(key=lambda node: (min(node.tokens), node.name))
            self._rack_nodes[place] = tuple(rack_members)
            self._continuum[place] = _continuum(place, rack_members)

        order = [(dc, rack) for dc in self.dcs for rack in self._racks[dc]]
        self.nodes: tuple[RingNode, ...] = tuple(
            node for place in order for node in self._rack_nodes[place])
        self._by_name = {node.name: node for node in self.nodes}
        self._slot_ranges: list | None = None  # slot_ranges(), made on first use
        # The rings once each range movement in flight is done (dyno.ownership):
        # their owners that are not owners now get a key's writes too (pending).
        future_continua = []
        pending: dict[str, RingNode] = {}
        for future in futures:
            places: dict[tuple[str, str], list[RingNode]] = {}
            for node in future:
                if node.name == local.name:
                    node = local
                else:
                    node = self._by_name.get(node.name, node)
                    if node.name not in self._by_name:
                        _check_node(node)
                        pending.setdefault(node.name, node)
                places.setdefault((node.dc, node.rack), []).append(node)
            future_continua.append([_continuum(place, sorted(group, key=lambda n: (min(n.tokens), n.name)))
                                    for place, group in sorted(places.items())])
        if self.local_pending:
            pending.setdefault(local.name, local)
        #: Nodes that get writes but own nothing yet (joining, replacing), by name.
        self.pending_nodes: tuple[RingNode, ...] = tuple(pending[name] for name in sorted(pending))
        for node in self.pending_nodes:
            self._by_name.setdefault(node.name, node)
        #: Whether a range is moving: some keys have pending owners.
        self.moving = False
        self._build_replica_table(order, len(self._racks.get(local.dc, ())), future_continua)
        #: With hash ``slot``: each slot's replica set, the very tuple ``replicas(slot << 18)``
        #: returns, so a key's is one CRC16 and one index (``slots_of``), no bisect.
        self.slot_table: list[tuple[RingNode, ...]] | None = None
        if hash_name == "slot":
            boundaries, replicas = self._boundaries, self._replicas
            self.slot_table = [replicas[bisect_left(boundaries, slot << _SLOT_SHIFT)] for slot in range(SLOTS)]

    def _build_replica_table(self, order: list[tuple[str, str]], local_racks: int,
                             future_continua: list | None = None) -> None:
        """Merge every rack's tokens into one sorted list of boundaries; for each
        stretch ``(previous boundary, boundary]`` record the owner in every rack.
        The entry past the last boundary repeats the first (the wrap-around).
        With range movements in flight (``future_continua``: per future ring, its
        racks' continua) the futures' tokens are boundaries too, and a stretch whose
        owner in some future is not an owner now gets a ``Moving`` replica set: the
        same owners, and that node in ``pending``."""
        continua = [self._continuum[place] for place in order]
        future_continua = future_continua or []
        boundaries = sorted({token for tokens, _ in continua for token in tokens}
                            | {token for future in future_continua for tokens, _ in future
                               for token in tokens})
        interned: dict[tuple[RingNode, ...], tuple[RingNode, ...]] = {}
        moving: dict[tuple, Moving] = {}
        everywhere: list[tuple[RingNode, ...]] = []
        nearby: list[tuple[RingNode, ...]] = []
        for boundary in boundaries:
            replicas = tuple(_owner_in(tokens, nodes, boundary) for tokens, nodes in continua)
            extra: list[RingNode] = []
            for future in future_continua:
                for tokens, nodes in future:
                    owner = _owner_in(tokens, nodes, boundary)
                    if owner not in replicas and owner not in extra:
                        extra.append(owner)
            if extra:
                key = (replicas, tuple(extra))
                group = moving.get(key)
                if group is None:
                    group = moving[key] = Moving(replicas, key[1])
                everywhere.append(group)
                self.moving = True
            else:
                everywhere.append(interned.setdefault(replicas, replicas))
            local = replicas[:local_racks]
            nearby.append(interned.setdefault(local, local))
        everywhere.append(everywhere[0])
        nearby.append(nearby[0])
        self._boundaries = boundaries
        self._replicas = everywhere
        self._local_replicas = nearby

    # -- queries -------------------------------------------------------------------

    def token_of(self, key: bytes) -> int:
        """The token of ``key``, its hash tag applied."""
        opening = self._tag_open
        if opening is not None and opening in key:
            key = key_for_hash(key, self.hash_tag)
        return self._hash(key)

    def tokens_of(self, keys: list[bytes]) -> list[int]:
        """``[token_of(key) for key in keys]``: with murmur, many keys at once
        (``murmur_many``)."""
        opening = self._tag_open
        if opening is not None:
            tag = self.hash_tag
            keys = [key_for_hash(key, tag) if opening in key else key for key in keys]
        if self._hash is murmur and len(keys) >= _LANES_FROM:
            return murmur_many(keys)
        return list(map(self._hash, keys))

    def slot_of(self, key: bytes) -> int:
        """With hash ``slot``: ``key``'s Redis Cluster slot, its hash tag applied."""
        opening = self._tag_open
        if opening is not None and opening in key:
            key = key_for_hash(key, self.hash_tag)
        return _crc_hqx(key, 0) & _SLOT_MASK

    def slots_of(self, keys: list[bytes]) -> list[int]:
        """With hash ``slot``: each key's Redis Cluster slot, its hash tag applied
        (``slot_table[slot]`` is its replica set)."""
        opening = self._tag_open
        if opening is not None:
            tag = self.hash_tag
            keys = [key_for_hash(key, tag) if opening in key else key for key in keys]
        return [_crc_hqx(key, 0) & _SLOT_MASK for key in keys]

    def owner(self, token: int, dc: str, rack: str) -> RingNode:
        """The node of ``rack`` in ``dc`` owning ``token``."""
        try:
            tokens, nodes = self._continuum[dc, rack]
        except KeyError:
            raise RingError(f"no rack {rack!r} in datacenter {dc!r}; the ring has "
                            f"{self._describe_racks()}") from None
        return _owner_in(tokens, nodes, token)

    def replicas(self, token: int) -> tuple[RingNode, ...]:
        """The owner of ``token`` in every rack of every datacenter: the local
        datacenter first (its local rack first), then the remote ones in ``dcs`` order."""
        return self._replicas[bisect_left(self._boundaries, token)]

    def pending(self, token: int) -> tuple[RingNode, ...]:
        """The nodes that get ``token``'s writes besides its replicas while a range
        moves (a joining node, a decommissioned node's successor, a replacement);
        usually none."""
        return getattr(self._replicas[bisect_left(self._boundaries, token)], "pending", ())

    def stretches(self) -> list[tuple[int, int, tuple[RingNode, ...]]]:
        """Every stretch of tokens ``(start, end]`` with its replica set, in token
        order; the first wraps around (its start is the last boundary)."""
        bounds = self._boundaries
        return [(bounds[index - 1], bound, self._replicas[index])
                for index, bound in enumerate(bounds)]

    def local_replicas(self, token: int) -> tuple[RingNode, ...]:
        """The owner of ``token`` in each rack of the local datacenter, local rack first."""
        return self._local_replicas[bisect_left(self._boundaries, token)]

    def racks(self, dc: str) -> tuple[str, ...]:
        """The racks of ``dc``: the local rack first if ``dc`` is local, then sorted."""
        try:
            return self._racks[dc]
        except KeyError:
            raise RingError(f"no datacenter {dc!r}; the ring has "
                            f"{self._describe_racks()}") from None

    def rack_nodes(self, dc: str, rack: str) -> tuple[RingNode, ...]:
        """The nodes of ``rack`` in ``dc``, by their smallest token."""
        try:
            return self._rack_nodes[dc, rack]
        except KeyError:
            raise RingError(f"no rack {rack!r} in datacenter {dc!r}; the ring has "
                            f"{self._describe_racks()}") from None

    def remote_dcs(self) -> tuple[str, ...]:
        """The datacenters other than the local one, sorted."""
        return self.dcs[1:]

    def node(self, name: str) -> RingNode:
        """The node called ``name`` ("host:port"), pending nodes included."""
        try:
            return self._by_name[name]
        except KeyError:
            raise RingError(f"no node {name!r} in the ring") from None

    def shares(self, dc: str, rack: str) -> dict[str, float]:
        """For each node of the rack (by name), the fraction of all 2**32 tokens it owns."""
        members = self.rack_nodes(dc, rack)
        tokens, nodes = self._continuum[dc, rack]
        owned = {node.name: 0 for node in members}
        previous = tokens[-1] - (MAX_TOKEN + 1)  # the wrap-around: (largest, 2**32 + smallest]
        for token, node in zip(tokens, nodes):
            owned[node.name] += token - previous
            previous = token
        return {name: count / (MAX_TOKEN + 1) for name, count in owned.items()}

    def slot_ranges(self) -> list[tuple[int, int, tuple[RingNode, ...]]]:
        """With hash ``slot``: Redis Cluster's slots as ``(first, last, owners)`` runs
        in slot order, ``owners`` the owner in each rack of the local datacenter,
        local rack first (``local_replicas``): what CLUSTER SLOTS answers."""
        ranges = self._slot_ranges
        if ranges is None:
            ranges = self._slot_ranges = []
            for slot in range(SLOTS):
                owners = self.local_replicas(slot << _SLOT_SHIFT)
                if ranges and ranges[-1][2] is owners:  # interned: one tuple per replica set
                    ranges[-1] = (ranges[-1][0], slot, owners)
                else:
                    ranges.append((slot, slot, owners))
        return ranges

    def _describe_racks(self) -> str:
        return "; ".join(f"{dc}: {', '.join(self._racks[dc])}" for dc in self.dcs)

    def __repr__(self) -> str:
        return (f"<Ring {len(self.nodes)} nodes, {self._describe_racks()}; "
                f"local {self.local.name}, hash {self.hash_name}>")


def _owner_in(tokens: list[int], nodes: list[RingNode], token: int) -> RingNode:
    index = bisect_left(tokens, token)
    return nodes[index] if index < len(nodes) else nodes[0]


def _as_local(local: RingNode) -> RingNode:
    if not isinstance(local, RingNode):
        raise RingError(f"the local node must be a RingNode, got {local!r}")
    return local if local.local else dataclasses.replace(local, local=True)


def _check_node(node: RingNode) -> None:
    if not isinstance(node, RingNode):
        raise RingError(f"expected a RingNode, got {node!r}")
    for field in ("name", "host", "dc", "rack"):
        value = getattr(node, field)
        if not isinstance(value, str) or not value:
            raise RingError(f"node {node.name!r}: {field} must be a non-empty string, "
                            f"got {value!r}")
    if isinstance(node.port, bool) or not isinstance(node.port, int) or not 0 < node.port < 65536:
        raise RingError(f"node {node.name}: port {node.port!r} is not a number from 1 to 65535")
    if not isinstance(node.tokens, tuple) or not node.tokens:
        raise RingError(f"node {node.name} (rack {node.rack} of {node.dc}) has no tokens; "
                        "every node needs at least one")
    seen = set()
    for token in node.tokens:
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token <= MAX_TOKEN:
            raise RingError(f"node {node.name} (rack {node.rack} of {node.dc}): token "
                            f"{token!r} is not a whole number from 0 to {MAX_TOKEN}")
        if token in seen:
            raise RingError(f"node {node.name} (rack {node.rack} of {node.dc}) lists "
                            f"token {token} twice")
        seen.add(token)


def _check_nodes(nodes: Iterable[RingNode], local: RingNode,
                 include_local: bool = True) -> dict[str, RingNode]:
    """Validate every node; return them by name, the local one included once
    (unless ``include_local`` is false: it is pending, in no rack yet)."""
    _check_node(local)
    by_name = {local.name: local}
    for node in nodes:
        _check_node(node)
        if node.name == local.name:
            if dataclasses.replace(node, local=True) != local:
                raise RingError(f"two nodes are named {node.name}: this node "
                                f"({_where(local)}) and another ({_where(node)})")
            continue
        if node.local:
            raise RingError(f"node {node.name} is marked local, but the local node is "
                            f"{local.name}")
        other = by_name.get(node.name)
        if other is not None:
            if other == node:
                raise RingError(f"node {node.name} is listed twice")
            raise RingError(f"two nodes are named {node.name}: {_where(other)} and "
                            f"{_where(node)}")
        by_name[node.name] = node
    if not include_local:
        del by_name[local.name]
    return by_name


def _where(node: RingNode) -> str:
    return f"rack {node.rack} of {node.dc}, tokens {','.join(map(str, node.tokens))}"


def _continuum(place: tuple[str, str], members: list[RingNode]) -> tuple[list[int], list[RingNode]]:
    owner_of: dict[int, RingNode] = {}
    for node in members:
        for token in node.tokens:
            other = owner_of.setdefault(token, node)
            if other is not node:
                dc, rack = place
                first, second = sorted((other.name, node.name))
                raise RingError(f"duplicate token {token} in rack {rack} of {dc}: nodes "
                                f"{first} and {second} both list it; a token belongs "
                                "to one node per rack")
    tokens = sorted(owner_of)
    return tokens, [owner_of[token] for token in tokens]


def evenly_spaced_tokens(count: int) -> list[int]:
    """Tokens for the ``count`` nodes of a rack, one each, spread evenly:
    ``i * (2**32 // count)``."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_TOKEN + 1:
        raise RingError(f"a rack needs from 1 to {MAX_TOKEN + 1} nodes, got {count!r}")
    step = (MAX_TOKEN + 1) // count
    return [index * step for index in range(count)]


def topology_from_config(config: "Config") -> Ring:
    """The ring of ``config``: this node from its own settings (dyn_listen, rack,
    datacenter, tokens), every other node from dyn_seeds; hash and hash_tag as set.
    Problems are raised as a RingError naming the config file."""
    own, peers, hash_tag = nodes_from_config(config)
    try:
        return Ring(peers, own, config.hash, hash_tag)
    except RingError as error:
        raise RingError(f"{config.path}: {error}") from None


def nodes_from_config(config: "Config") -> tuple[RingNode, list[RingNode], bytes | None]:
    """This node, the nodes of dyn_seeds, and the hash tag of ``config``, checked
    (a RingError naming the config file)."""
    where = config.path
    try:
        own = RingNode(
            name=config.name, host=config.dyn_listen.host, port=config.dyn_listen.port,
            dc=config.datacenter, rack=config.rack, tokens=tuple(config.tokens), local=True,
        )
        peers = []
        for index, seed in enumerate(config.dyn_seeds):
            entry = f"dyn_seeds[{index}] ({seed})"
            if seed.address == config.dyn_listen:
                raise RingError(f"{entry} is this node itself: its host:port is dyn_listen; "
                                "list only the other nodes")
            if (seed.rack, seed.dc, tuple(seed.tokens)) == (own.rack, own.dc, own.tokens) and (
                    getattr(config, "replace_node", None) != str(seed.address)):
                raise RingError(f"{entry} has this node's rack ({own.rack}), datacenter "
                                f"({own.dc}) and tokens; is it this node under another "
                                "address? List only the other nodes, and give each node of "
                                "a rack its own tokens")
            peers.append(RingNode(name=str(seed.address), host=seed.host, port=seed.port,
                                  dc=seed.dc, rack=seed.rack, tokens=tuple(seed.tokens)))
        hash_tag = None
        if config.hash_tag is not None:
            hash_tag = config.hash_tag.encode()
            if len(hash_tag) != 2:
                raise RingError(f"hash_tag {config.hash_tag!r} must be two one-byte "
                                "characters, like '{}'")
        hash_function(config.hash)
        return own, peers, hash_tag
    except RingError as error:
        raise RingError(f"{where}: {error}") from None
