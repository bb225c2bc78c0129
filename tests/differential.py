"""Differential testing: the same commands to a plain Redis and to the system under test.

Every reply of the system under test must be *byte-identical* to the reply of a plain
redis-server that received the same commands in the same order: status vs bulk string,
error text, integer vs string all count.  The engine works against any host:port, so the
same test runs against one dyno node, a 3-rack cluster, a 2-DC cluster, or Dynomite.

Parts, top to bottom:
* RESP on raw sockets: `encode_command`, `reply_end` (a reply-boundary scanner: hiredis
  parses replies but cannot say where one ends in the byte stream), `RespConnection`;
* `EQUIVALENT_REPLIES`: the ONE place that says when two different byte strings are still
  the same answer (unordered set replies, TTLs that tick, DUMPs of hash-ordered sets);
* `Differential` / `run_differential`: the engine, reporting the first mismatch with the
  command history;
* hypothesis strategies (`command()`, `sequences()`) generating command sequences over a
  small key pool, so that keys collide, types clash and errors happen on purpose.

Run it by hand against anything:
    .venv/bin/python tests/differential.py --reference 127.0.0.1:6379 --target 127.0.0.1:8102 \
        [--target HOST:PORT ...] [--reset HOST:PORT ...] [--examples 200]
"""

from __future__ import annotations

import dataclasses
import socket
import struct
from collections.abc import Callable, Sequence

import hiredis
from hypothesis import strategies as st

Address = tuple[str, int]
Command = tuple[bytes, ...]


# =========================================================================== RESP


def encode_command(args: Sequence[bytes | str | int]) -> bytes:
    """A RESP multibulk request."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class ProtocolError(Exception):
    """The bytes received are not valid RESP (or the scanner and hiredis disagree)."""


_LINE_TYPES = b"+-:_,#("  # the reply is one line
_BULK_TYPES = b"$!="  # a length line, then that many bytes and CRLF
_AGGREGATE_TYPES = b"*~>"  # a count line, then that many replies
_MAP_TYPES = b"%|"  # a count line, then twice that many replies


def reply_end(buf: bytes | bytearray, pos: int = 0) -> int | None:
    """Offset just past the complete RESP2/RESP3 reply that starts at `pos`; None if the
    buffer does not hold all of it yet. Raises ProtocolError on bytes that are not RESP."""
    pending = 1
    size = len(buf)
    while pending:
        if pos >= size:
            return None
        kind = buf[pos]
        eol = buf.find(b"\r\n", pos + 1)
        if eol < 0:
            return None
        pending -= 1
        if kind in _LINE_TYPES:
            pos = eol + 2
            continue
        try:
            n = int(buf[pos + 1 : eol])
        except ValueError:
            raise ProtocolError(f"bad length line {bytes(buf[pos:eol])!r} at offset {pos}") from None
        if kind in _BULK_TYPES:
            if n < 0:
                pos = eol + 2  # $-1: null bulk
                continue
            end = eol + 2 + n + 2
            if end > size:
                return None
            if buf[end - 2 : end] != b"\r\n":
                raise ProtocolError(f"bulk of {n} bytes at offset {pos} not followed by CRLF")
            pos = end
        elif kind in _AGGREGATE_TYPES:
            pending += max(n, 0)  # *-1: null array
            pos = eol + 2
        elif kind in _MAP_TYPES:
            pending += 2 * max(n, 0) + (1 if kind == ord("|") else 0)  # an attribute precedes a reply
            pos = eol + 2
        else:
            raise ProtocolError(f"unknown reply type byte {bytes([kind])!r} at offset {pos}")
    return pos


def split_array(raw: bytes) -> list[bytes] | None:
    """The raw elements of an array reply, or None if `raw` is not a (non-null) array."""
    if not raw.startswith(b"*") or raw.startswith(b"*-"):
        return None
    eol = raw.index(b"\r\n")
    pos, items = eol + 2, []
    for _ in range(int(raw[1:eol])):
        end = reply_end(raw, pos)
        items.append(raw[pos:end])
        pos = end
    return items


def request(*argv: bytes | str | int) -> bytes:
    """One request, encoded: ``request("SET", "k", 1)``."""
    return encode_command(argv)


def read_replies(sock: socket.socket, count: int) -> list[bytes]:
    """The next ``count`` whole replies from a blocking socket, raw (AssertionError
    if it closes first)."""
    buf = bytearray()
    out: list[bytes] = []
    while len(out) < count:
        end = reply_end(buf)
        if end is None:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {len(out)} of {count} replies"
            buf += chunk
            continue
        out.append(bytes(buf[:end]))
        del buf[:end]
    return out


def peer_requests_in_flight(addr: Address) -> int:
    """A dyno node's replica requests still unanswered (INFO dyno): 0 on every node
    means every acknowledged write has reached every replica."""
    conn = RespConnection(addr)
    try:
        info = conn.call(b"INFO", b"dyno")
    finally:
        conn.close()
    for line in info.split(b"\r\n"):
        if line.startswith(b"peer_requests_in_flight:"):
            return int(line.split(b":")[1])
    raise AssertionError(f"{_fmt_addr(addr)}: INFO dyno has no peer_requests_in_flight")


class NoReply(Exception):
    """The server closed the connection or did not answer in time."""


class RespConnection:
    """A raw RESP connection: send requests, read replies as (raw bytes, hiredis value)."""

    def __init__(self, addr: Address, timeout: float = 10.0):
        self.addr = addr
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.reader = hiredis.Reader()

    def send(self, commands: Sequence[Command]) -> None:
        self.sock.sendall(b"".join(encode_command(c) for c in commands))

    def read_reply(self) -> tuple[bytes, object]:
        while (end := reply_end(self.buf)) is None:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise NoReply(f"no complete reply from {_fmt_addr(self.addr)} within the timeout "
                              f"(received so far: {bytes(self.buf[:200])!r})") from None  # fmt: skip
            except OSError as e:
                raise NoReply(f"{_fmt_addr(self.addr)}: {e}") from None
            if not chunk:
                raise NoReply(f"{_fmt_addr(self.addr)} closed the connection "
                              f"(received so far: {bytes(self.buf[:200])!r})")  # fmt: skip
            self.buf += chunk
        raw = bytes(self.buf[:end])
        del self.buf[:end]
        # Cross-check the scanner with hiredis: exactly one reply in exactly these bytes.
        try:
            self.reader.feed(raw)
            value = self.reader.gets()
            extra = self.reader.gets() if value is not False else False
        except hiredis.ProtocolError as e:
            raise ProtocolError(f"hiredis rejects reply {raw[:200]!r}: {e}") from None
        if value is False or extra is not False:
            raise ProtocolError(f"reply boundary disagreement on {raw[:200]!r}")
        return raw, value

    def call(self, *args: bytes | str | int) -> bytes:
        """Send one command, return its raw reply."""
        self.send([tuple(a if isinstance(a, bytes) else str(a).encode() for a in args)])
        return self.read_reply()[0]

    def unread(self) -> bytes:
        return bytes(self.buf)

    def close(self) -> None:
        self.sock.close()


def _fmt_addr(addr: Address) -> str:
    return f"{addr[0]}:{addr[1]}"


# =========================================================================== equivalence
#
# Where plain Redis itself is not deterministic between two processes, or between two
# moments, the comparison is relaxed here and nowhere else.  Everything else is compared
# byte for byte.

UNORDERED_REPLIES = {b"SMEMBERS", b"SINTER", b"SUNION", b"SDIFF", b"KEYS"}
"""Array replies whose order comes from a hash table (per-process random seed)."""

CLOCK_REPLIES = {b"TTL": 2, b"PTTL": 2000, b"EXPIRETIME": 2, b"PEXPIRETIME": 2000}
"""Integer replies that depend on when the expiry was set/read: positive values may differ
by this much (the sequences only set expiries far in the future, so keys never expire
during a test); negative ones (-1 no expiry, -2 no key) must be equal."""


def _unordered_equal(ref: bytes, tgt: bytes) -> bool:
    a, b = split_array(ref), split_array(tgt)
    return a is not None and b is not None and sorted(a) == sorted(b)


def _clock_equal(tolerance: int) -> Callable[[bytes, bytes], bool]:
    def equal(ref: bytes, tgt: bytes) -> bool:
        if not (ref.startswith(b":") and tgt.startswith(b":")):
            return False
        a, b = int(ref[1:-2]), int(tgt[1:-2])
        if a < 0 or b < 0:
            return a == b
        return abs(a - b) <= tolerance

    return equal


def _rdb_length(data: bytes, pos: int) -> tuple[int, bool, int]:
    """(length or integer value, is_encoded_integer, next offset) of an RDB length field."""
    first = data[pos]
    kind = first >> 6
    if kind == 0:
        return first & 0x3F, False, pos + 1
    if kind == 1:
        return ((first & 0x3F) << 8) | data[pos + 1], False, pos + 2
    if first == 0x80:
        return int.from_bytes(data[pos + 1 : pos + 5], "big"), False, pos + 5
    if first == 0x81:
        return int.from_bytes(data[pos + 1 : pos + 9], "big"), False, pos + 9
    width = {0xC0: 1, 0xC1: 2, 0xC2: 4}.get(first)
    if width is None:
        raise ValueError("LZF-compressed or unknown RDB string encoding")
    return int.from_bytes(data[pos + 1 : pos + 1 + width], "little", signed=True), True, pos + 1 + width


def _rdb_string(data: bytes, pos: int) -> tuple[bytes, int]:
    n, is_int, pos = _rdb_length(data, pos)
    if is_int:
        return str(n).encode(), pos
    return data[pos : pos + n], pos + n


def dump_set_members(payload: bytes) -> tuple[bytes, list[bytes]] | None:
    """(RDB version bytes, sorted members) of a DUMP payload of a hash-table set, else None."""
    if not payload or payload[0] != 2:  # RDB_TYPE_SET
        return None
    try:
        count, _, pos = _rdb_length(payload, 1)
        members = []
        for _ in range(count):
            member, pos = _rdb_string(payload, pos)
            members.append(member)
    except (ValueError, IndexError):
        return None
    if pos + 10 != len(payload):  # then 2 bytes RDB version and 8 bytes CRC64
        return None
    return payload[pos : pos + 2], sorted(members)


def _dump_equal(ref: bytes, tgt: bytes) -> bool:
    """DUMP of a set: the members are serialised in hash-table order; compare them sorted."""
    if not (ref.startswith(b"$") and tgt.startswith(b"$")):
        return False
    a = dump_set_members(ref[ref.index(b"\r\n") + 2 : -2])
    b = dump_set_members(tgt[tgt.index(b"\r\n") + 2 : -2])
    return a is not None and a == b


EQUIVALENT_REPLIES: dict[bytes, Callable[[bytes, bytes], bool]] = {
    **{name: _unordered_equal for name in UNORDERED_REPLIES},
    **{name: _clock_equal(tol) for name, tol in CLOCK_REPLIES.items()},
    b"DUMP": _dump_equal,
}


def replies_equal(command: Command, ref: bytes, tgt: bytes) -> bool:
    if ref == tgt:
        return True
    relaxed = EQUIVALENT_REPLIES.get(command[0].upper()) if command else None
    return relaxed is not None and relaxed(ref, tgt)


# =========================================================================== the engine


@dataclasses.dataclass
class Step:
    index: int
    command: Command
    target: Address
    reference_reply: bytes | None = None
    target_reply: bytes | None = None


def format_command(command: Command, limit: int = 200) -> str:
    words = []
    for arg in command:
        text = arg.decode("ascii", "replace")
        if arg and all(33 <= c < 127 for c in arg) and '"' not in text:
            words.append(text)
        else:
            words.append(repr(arg)[1:])  # b'x y' -> 'x y'
    line = " ".join(words)
    return line if len(line) <= limit else line[:limit] + "..."


def _fmt_reply(raw: bytes | None, limit: int = 300) -> str:
    if raw is None:
        return "(none)"
    text = repr(raw)
    return text if len(text) <= limit else text[:limit] + "..."


class Mismatch(AssertionError):
    """The system under test answered differently from plain Redis."""

    def __init__(self, problem: str, step: Step | None, history: list[Step], reference: Address, history_limit: int = 60):
        lines = [problem]
        if step is not None:
            lines += [
                f"  command #{step.index}: {format_command(step.command)}",
                f"  reference {_fmt_addr(reference)}: {_fmt_reply(step.reference_reply)}",
                f"  target    {_fmt_addr(step.target)}: {_fmt_reply(step.target_reply)}",
            ]
        shown = history[-history_limit:]
        lines.append(f"history ({len(history)} commands after FLUSHALL; reference reply; most recent last):")
        if len(shown) < len(history):
            lines.append(f"  ... {len(history) - len(shown)} earlier commands")
        for s in shown:
            lines.append(f"  #{s.index} -> {_fmt_addr(s.target)}: {format_command(s.command, 120)}  => {_fmt_reply(s.reference_reply, 120)}")
        super().__init__("\n".join(lines))
        self.step = step
        self.history = history


class Differential:
    """Send command sequences to a reference Redis and to targets; demand identical replies.

    reference: (host, port) of a plain redis-server.
    targets:   (host, port) of every node of the system under test.
    reset:     addresses that get FLUSHALL before each sequence, besides the reference
               (default: the targets themselves; pass the nodes' own Redis servers to empty
               them behind the system's back).
    Connections are kept between runs and reopened after a failure.
    """

    def __init__(self, reference: Address, targets: Sequence[Address], reset: Sequence[Address] | None = None,
                 timeout: float = 10.0):  # fmt: skip
        if not targets:
            raise ValueError("at least one target")
        self.reference = tuple(reference)
        self.targets = [tuple(t) for t in targets]
        self.reset_addrs = [tuple(a) for a in (reset if reset is not None else self.targets)]
        self.timeout = timeout
        self._conns: dict[Address, RespConnection] = {}

    def _conn(self, addr: Address) -> RespConnection:
        conn = self._conns.get(addr)
        if conn is None:
            conn = self._conns[addr] = RespConnection(addr, self.timeout)
        return conn

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def __enter__(self) -> Differential:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def reset(self) -> None:
        for addr in dict.fromkeys([self.reference, *self.reset_addrs]):
            reply = self._conn(addr).call(b"FLUSHALL")
            if reply != b"+OK\r\n":
                raise AssertionError(f"FLUSHALL on {_fmt_addr(addr)} answered {reply!r}")

    def run(self, sequence: Sequence[Command], pick: Callable[[int], int] | None = None, pipeline: bool = False,
            flush: bool = True, settle: Callable[[], object] | None = None) -> list[Step]:  # fmt: skip
        """Run `sequence`; command i goes to targets[pick(i)] (default: round robin).

        pipeline=True sends each run of consecutive commands for the same target in one
        write before reading the replies (the reference gets the same batches).
        settle() is called before the FLUSHALL and whenever the next command goes to
        another target than the last one: where the system only promises read-your-writes
        on one node (DC_ONE acknowledges a write once the local rack has it), it can wait
        there until replication is done.
        Returns the steps; raises Mismatch at the first difference.
        """
        sequence = [tuple(_as_bytes(a) for a in cmd) for cmd in sequence]
        pick = pick or (lambda i: i % len(self.targets))
        steps = [Step(i, cmd, self.targets[pick(i) % len(self.targets)]) for i, cmd in enumerate(sequence)]
        try:
            if flush:
                if settle is not None:
                    # The last sequence's replica writes (another rack, another DC) must
                    # not land after the FLUSHALL and show up in this one.
                    settle()
                self.reset()
            done: list[Step] = []
            for batch in _batches(steps, pipeline):
                if settle is not None and done and done[-1].target != batch[0].target:
                    settle()
                self._run_batch(batch, done)
            self._check_quiet(done)
            return done
        except BaseException:
            self.close()  # a connection may be mid-reply; start clean next time
            raise

    def _run_batch(self, batch: list[Step], done: list[Step]) -> None:
        ref, tgt = self._conn(self.reference), self._conn(batch[0].target)
        commands = [s.command for s in batch]
        ref.send(commands)
        try:
            tgt.send(commands)
        except OSError as e:
            raise Mismatch(f"cannot send to target: {e}", batch[0], done, self.reference) from None
        for step in batch:
            step.reference_reply = ref.read_reply()[0]
            try:
                step.target_reply = tgt.read_reply()[0]
            except (NoReply, ProtocolError) as e:
                done.append(step)
                raise Mismatch(f"target failed: {e}", step, done, self.reference) from None
            done.append(step)
            if not replies_equal(step.command, step.reference_reply, step.target_reply):
                raise Mismatch("replies differ", step, done, self.reference)

    def _check_quiet(self, done: list[Step]) -> None:
        """No target sent more replies than it was asked for: a PING must get exactly +PONG."""
        for addr in dict.fromkeys(s.target for s in done):
            conn = self._conn(addr)
            reply = conn.call(b"PING")
            if reply != b"+PONG\r\n" or conn.unread():
                raise Mismatch(f"{_fmt_addr(addr)} sent unrequested bytes: PING after the sequence got "
                               f"{reply!r} + {conn.unread()!r}", None, done, self.reference)  # fmt: skip


def _as_bytes(arg: bytes | str | int) -> bytes:
    return arg if isinstance(arg, bytes) else str(arg).encode()


def _batches(steps: list[Step], pipeline: bool) -> list[list[Step]]:
    if not pipeline:
        return [[s] for s in steps]
    batches: list[list[Step]] = []
    for s in steps:
        if batches and batches[-1][0].target == s.target:
            batches[-1].append(s)
        else:
            batches.append([s])
    return batches


def run_differential(sequence: Sequence[Command], reference: Address, targets: Sequence[Address],
                     pick: Callable[[int], int] | None = None, reset: Sequence[Address] | None = None,
                     pipeline: bool = False, timeout: float = 10.0,
                     settle: Callable[[], object] | None = None) -> list[Step]:  # fmt: skip
    """One-shot: FLUSHALL, run `sequence`, compare every reply (see Differential)."""
    with Differential(reference, targets, reset, timeout) as diff:
        return diff.run(sequence, pick, pipeline, settle=settle)


# =========================================================================== DUMP payloads


def _crc64_table() -> list[int]:
    poly = 0x95AC9329AC4BC9B5  # Jones polynomial (0xad93d23594c935a9), reflected, as Redis uses
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC64 = _crc64_table()


def crc64(data: bytes, crc: int = 0) -> int:
    for byte in data:
        crc = _CRC64[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def _rdb_str(s: bytes) -> bytes:
    assert len(s) < 64
    return bytes([len(s)]) + s


def dump_payload(rdb_type: int, body: bytes, rdb_version: int = 10) -> bytes:
    """A DUMP/RESTORE payload: type byte, value, RDB version (LE16), CRC64 (LE64)."""
    data = bytes([rdb_type]) + body + rdb_version.to_bytes(2, "little")
    return data + crc64(data).to_bytes(8, "little")


RESTORE_PAYLOADS = {
    "string": dump_payload(0, _rdb_str(b"restored")),
    "int-string": dump_payload(0, b"\xc1" + (12345).to_bytes(2, "little")),
    "list": dump_payload(1, b"\x02" + _rdb_str(b"m1") + _rdb_str(b"m2")),
    "set": dump_payload(2, b"\x02" + _rdb_str(b"m1") + _rdb_str(b"x")),
    "hash": dump_payload(4, b"\x01" + _rdb_str(b"f1") + _rdb_str(b"v")),
    "zset": dump_payload(5, b"\x01" + _rdb_str(b"m1") + struct.pack("<d", 1.5)),
    "bad-checksum": dump_payload(0, _rdb_str(b"x"))[:-1] + b"\x00",
    "garbage": b"not a payload",
}
"""Valid payloads of every type (Redis 7.0 format, RDB 10) plus two broken ones."""


# =========================================================================== strategies
#
# Commands are tuples of bytes.  A SMALL key pool makes keys collide, so types clash
# (WRONGTYPE) and commands see each other's data.  Keys of TAGGED share the hash tag {t}:
# a cluster with `hash_tag: "{}"` places them on one owner, so commands that need their
# keys together (RENAME, SMOVE, SINTERSTORE...) use only those, and only when
# `colocated=True`.  Left out on purpose, because plain Redis itself does not answer
# them deterministically: SRANDMEMBER, SPOP, HRANDFIELD, ZRANDMEMBER, RANDOMKEY, SCAN
# cursors, OBJECT, expiries that could elapse during a test (all TTLs are >= 1000 s, or
# <= 0 which deletes at once), and EXPIRE's GT/LT (ties depend on the millisecond).
# Not in the pool because a cluster refuses them by design: MULTI/EXEC, pub/sub, blocking
# pops, SELECT n, admin commands.

UNTAGGED = (b"a", b"b", b"c", b"k\x00 \xff")
TAGGED = (b"{t}x", b"{t}y", b"{t}z")
KEYS = UNTAGGED + TAGGED

MEMBERS = (b"m1", b"m2", b"m3", b"x", b"1", b"2", b"-3", b"", b"a b")
FIELDS = (b"f1", b"f2", b"f3", b"10", b"")
GARBAGE = (b"notanint", b"1.5", b"-1", b"", b"99999999999999999999")

key = st.sampled_from(KEYS)
tkey = st.sampled_from(TAGGED)
member = st.sampled_from(MEMBERS)
field = st.sampled_from(FIELDS)
value = st.one_of(
    st.sampled_from((b"", b"0", b"1", b"-1", b"10", b"3.5", b"abc", b"hello world", b"\x00\xff")),
    st.integers(-1000, 1000).map(lambda i: str(i).encode()),
    st.binary(max_size=8),
)


def _b(x: object) -> bytes:
    return str(x).encode()


def ints(lo: int, hi: int) -> st.SearchStrategy[bytes]:
    return st.integers(lo, hi).map(_b)


def lit(*words: bytes) -> st.SearchStrategy[bytes]:
    return st.sampled_from(words)


def opt(part) -> st.SearchStrategy:
    return st.one_of(st.none(), _strategy(part))


def some(part, lo: int = 1, hi: int = 3) -> st.SearchStrategy[tuple]:
    return st.lists(_strategy(part), min_size=lo, max_size=hi).map(tuple)


def counted(part, lo: int = 1, hi: int = 3) -> st.SearchStrategy[tuple]:
    """numkeys followed by that many items (ZUNIONSTORE, SINTERCARD, LMPOP...)."""
    return some(part, lo, hi).map(lambda items: (_b(len(items)), *items))


def _strategy(part) -> st.SearchStrategy:
    if isinstance(part, bytes):
        return st.just(part)
    if isinstance(part, str):
        return st.just(part.encode())
    return part


def _flatten(parts) -> Command:
    out: list[bytes] = []
    for p in parts:
        if p is None:
            continue
        if isinstance(p, (tuple, list)):
            out.extend(_flatten(p))
        else:
            out.append(p)
    return tuple(out)


def cmd(*parts) -> st.SearchStrategy[Command]:
    """A command from literal words and strategies (None results and nesting are flattened)."""
    return st.tuples(*map(_strategy, parts)).map(_flatten)


int_arg = st.one_of(ints(-5, 20), lit(b"abc", b"1.5", b"", b"9223372036854775807", b"-9223372036854775808"))
float_arg = lit(b"1.5", b"-0.25", b"1e2", b"3", b"0", b"abc", b"inf", b"nan", b"")
index = ints(-6, 6)
small_count = ints(0, 4)
ttl_s = st.one_of(lit(b"-1", b"0"), ints(1000, 10**6))
ttl_ms = st.one_of(lit(b"-5", b"0"), ints(10**6, 10**9))
at_s = st.one_of(lit(b"1"), ints(4_000_000_000, 4_100_000_000))  # past (deletes) or ~2100
at_ms = st.one_of(lit(b"1"), ints(4_000_000_000_000, 4_100_000_000_000))
expiry = st.one_of(
    cmd(b"EX", ttl_s), cmd(b"PX", ttl_ms), cmd(b"EXAT", at_s), cmd(b"PXAT", at_ms)
)
# SET in Redis 7.0 stores a key whose EXAT/PXAT is past instead of deleting it (GETEX and
# EXPIREAT delete it), and DBSIZE counts it until Redis's expiry cycle happens to reclaim
# it: two Redis servers answer a later DBSIZE differently. SET gets future times only.
set_expiry = st.one_of(
    cmd(b"EX", ttl_s), cmd(b"PX", ttl_ms),
    cmd(b"EXAT", ints(4_000_000_000, 4_100_000_000)),
    cmd(b"PXAT", ints(4_000_000_000_000, 4_100_000_000_000)),
)
score = st.one_of(lit(b"0", b"1", b"-1", b"2.5", b"+inf", b"-inf", b"1e3", b"abc"), ints(-10, 10))
score_range = lit(b"-inf", b"+inf", b"0", b"(1", b"1", b"2.5", b"(2", b"abc")
lex_range = lit(b"-", b"+", b"[m1", b"(m2", b"[a", b"[", b"m1")
bit_type = lit(b"u8", b"i8", b"u4", b"i16", b"u1", b"i64", b"u64", b"x8")
bit_offset = st.one_of(ints(0, 64), lit(b"#0", b"#1", b"#3"))
lonlat = st.sampled_from(
    [(b"13.361389", b"38.115556"), (b"15.087269", b"37.502669"), (b"13.5", b"38.0"), (b"14.0", b"37.8"),
     (b"0", b"0"), (b"200", b"0"), (b"0", b"86")]  # the last two are out of range: errors
)  # fmt: skip
geo_unit = lit(b"m", b"km", b"mi", b"ft", b"parsec")
radius = lit(b"10", b"100", b"200", b"-1")
geo_shape = st.one_of(cmd(b"BYRADIUS", radius, geo_unit), cmd(b"BYBOX", radius, radius, geo_unit))
geo_options = cmd(opt(lit(b"ASC", b"DESC")), opt(cmd(b"COUNT", ints(0, 3), opt(b"ANY"))),
                  opt(b"WITHCOORD"), opt(b"WITHDIST"), opt(b"WITHHASH"))  # fmt: skip
geo_from = st.one_of(cmd(b"FROMMEMBER", member), cmd(b"FROMLONLAT", lonlat))
restore_payload = st.sampled_from(sorted(RESTORE_PAYLOADS.values()))


STRINGS = [
    cmd(b"GET", key),
    cmd(b"SET", key, value, opt(lit(b"NX", b"XX")), opt(b"GET"), opt(st.one_of(set_expiry, st.just(b"KEEPTTL")))),
    cmd(b"SETNX", key, value),
    cmd(b"GETSET", key, value),
    cmd(b"GETDEL", key),
    cmd(b"GETEX", key, opt(st.one_of(expiry, st.just(b"PERSIST")))),
    cmd(b"MGET", some(key, 1, 4)),
    cmd(b"MSET", some(cmd(key, value), 1, 3)),
    cmd(b"APPEND", key, value),
    cmd(b"STRLEN", key),
    cmd(b"INCR", key),
    cmd(b"DECR", key),
    cmd(b"INCRBY", key, int_arg),
    cmd(b"DECRBY", key, int_arg),
    cmd(b"INCRBYFLOAT", key, float_arg),
    cmd(b"GETRANGE", key, index, index),
    cmd(b"SUBSTR", key, index, index),
    cmd(b"SETRANGE", key, ints(-1, 40), value),
    cmd(b"SETEX", key, ttl_s, value),
    cmd(b"PSETEX", key, ttl_ms, value),
]
STRINGS_COLOCATED = [
    cmd(b"MSETNX", some(cmd(tkey, value), 1, 3)),
    cmd(b"LCS", tkey, tkey, opt(lit(b"LEN", b"IDX"))),
]

BITMAPS = [
    cmd(b"SETBIT", key, ints(-1, 100), lit(b"0", b"1", b"2")),
    cmd(b"GETBIT", key, ints(0, 100)),
    cmd(b"BITCOUNT", key, opt(cmd(index, index, opt(lit(b"BYTE", b"BIT"))))),
    cmd(b"BITPOS", key, lit(b"0", b"1"), opt(cmd(index, opt(cmd(index, opt(lit(b"BYTE", b"BIT"))))))),
    cmd(b"BITFIELD", key, some(st.one_of(
        cmd(b"GET", bit_type, bit_offset),
        cmd(b"SET", bit_type, bit_offset, ints(-300, 300)),
        cmd(b"INCRBY", bit_type, bit_offset, ints(-300, 300)),
        cmd(b"OVERFLOW", lit(b"WRAP", b"SAT", b"FAIL")),
    ), 1, 3)),  # fmt: skip
    cmd(b"BITFIELD_RO", key, b"GET", bit_type, bit_offset),
]
BITMAPS_COLOCATED = [
    cmd(b"BITOP", lit(b"AND", b"OR", b"XOR"), tkey, some(tkey, 1, 3)),
    cmd(b"BITOP", b"NOT", tkey, tkey),
]

HASHES = [
    cmd(b"HSET", key, some(cmd(field, value), 1, 3)),
    cmd(b"HSETNX", key, field, value),
    cmd(b"HGET", key, field),
    cmd(b"HMGET", key, some(field)),
    cmd(b"HMSET", key, some(cmd(field, value), 1, 3)),
    cmd(b"HDEL", key, some(field)),
    cmd(b"HEXISTS", key, field),
    cmd(b"HLEN", key),
    cmd(b"HSTRLEN", key, field),
    cmd(b"HKEYS", key),
    cmd(b"HVALS", key),
    cmd(b"HGETALL", key),
    cmd(b"HINCRBY", key, field, int_arg),
    cmd(b"HINCRBYFLOAT", key, field, float_arg),
]

LISTS = [
    cmd(lit(b"LPUSH", b"RPUSH", b"LPUSHX", b"RPUSHX"), key, some(member)),
    cmd(lit(b"LPOP", b"RPOP"), key, opt(small_count)),
    cmd(b"LLEN", key),
    cmd(b"LRANGE", key, index, index),
    cmd(b"LINDEX", key, index),
    cmd(b"LSET", key, index, member),
    cmd(b"LINSERT", key, lit(b"BEFORE", b"AFTER"), member, member),
    cmd(b"LREM", key, ints(-2, 2), member),
    cmd(b"LTRIM", key, index, index),
    cmd(b"LPOS", key, member, opt(cmd(b"RANK", ints(-2, 2))), opt(cmd(b"COUNT", small_count)),
        opt(cmd(b"MAXLEN", small_count))),  # fmt: skip
]
LISTS_COLOCATED = [
    cmd(b"RPOPLPUSH", tkey, tkey),
    cmd(b"LMOVE", tkey, tkey, lit(b"LEFT", b"RIGHT"), lit(b"LEFT", b"RIGHT")),
    cmd(b"LMPOP", counted(tkey), lit(b"LEFT", b"RIGHT"), opt(cmd(b"COUNT", ints(0, 3)))),
]

SETS = [
    cmd(b"SADD", key, some(member)),
    cmd(b"SREM", key, some(member)),
    cmd(b"SCARD", key),
    cmd(b"SISMEMBER", key, member),
    cmd(b"SMISMEMBER", key, some(member)),
    cmd(b"SMEMBERS", key),
]
SETS_COLOCATED = [
    cmd(lit(b"SINTER", b"SUNION", b"SDIFF"), some(tkey)),
    cmd(lit(b"SINTERSTORE", b"SUNIONSTORE", b"SDIFFSTORE"), tkey, some(tkey)),
    cmd(b"SINTERCARD", counted(tkey), opt(cmd(b"LIMIT", small_count))),
    cmd(b"SMOVE", tkey, tkey, member),
]

ZSETS = [
    cmd(b"ZADD", key, opt(lit(b"NX", b"XX")), opt(lit(b"GT", b"LT")), opt(b"CH"), opt(b"INCR"),
        some(cmd(score, member), 1, 3)),  # fmt: skip
    cmd(b"ZREM", key, some(member)),
    cmd(b"ZCARD", key),
    cmd(b"ZSCORE", key, member),
    cmd(b"ZMSCORE", key, some(member)),
    cmd(b"ZINCRBY", key, score, member),
    cmd(lit(b"ZRANK", b"ZREVRANK"), key, member),
    cmd(b"ZRANGE", key, index, index, opt(b"REV"), opt(b"WITHSCORES")),
    cmd(b"ZRANGE", key, score_range, score_range, b"BYSCORE", opt(b"REV"),
        opt(cmd(b"LIMIT", ints(0, 2), ints(-1, 2))), opt(b"WITHSCORES")),  # fmt: skip
    cmd(b"ZRANGE", key, lex_range, lex_range, b"BYLEX", opt(b"REV"), opt(cmd(b"LIMIT", ints(0, 2), ints(-1, 2)))),
    cmd(lit(b"ZRANGEBYSCORE", b"ZREVRANGEBYSCORE"), key, score_range, score_range, opt(b"WITHSCORES"),
        opt(cmd(b"LIMIT", ints(0, 2), ints(-1, 2)))),  # fmt: skip
    cmd(b"ZREVRANGE", key, index, index, opt(b"WITHSCORES")),
    cmd(b"ZCOUNT", key, score_range, score_range),
    cmd(b"ZLEXCOUNT", key, lex_range, lex_range),
    cmd(lit(b"ZRANGEBYLEX", b"ZREVRANGEBYLEX"), key, lex_range, lex_range),
    cmd(b"ZREMRANGEBYRANK", key, index, index),
    cmd(b"ZREMRANGEBYSCORE", key, score_range, score_range),
    cmd(b"ZREMRANGEBYLEX", key, lex_range, lex_range),
    cmd(lit(b"ZPOPMIN", b"ZPOPMAX"), key, opt(small_count)),
]
ZSETS_COLOCATED = [
    cmd(lit(b"ZUNIONSTORE", b"ZINTERSTORE"), tkey, counted(tkey),
        opt(cmd(b"AGGREGATE", lit(b"SUM", b"MIN", b"MAX")))),  # fmt: skip
    cmd(b"ZDIFFSTORE", tkey, counted(tkey)),
    cmd(lit(b"ZUNION", b"ZINTER", b"ZDIFF"), counted(tkey), opt(b"WITHSCORES")),
    cmd(b"ZINTERCARD", counted(tkey), opt(cmd(b"LIMIT", small_count))),
    cmd(b"ZRANGESTORE", tkey, tkey, index, index),
    cmd(b"ZMPOP", counted(tkey), lit(b"MIN", b"MAX"), opt(cmd(b"COUNT", ints(0, 3)))),
]

HYPERLOGLOG = [
    cmd(b"PFADD", key, some(member, 0, 3)),
    cmd(b"PFCOUNT", key),
]
HYPERLOGLOG_COLOCATED = [
    cmd(b"PFCOUNT", some(tkey, 2, 3)),
    cmd(b"PFMERGE", tkey, some(tkey, 0, 2)),
]

GEO = [
    cmd(b"GEOADD", key, opt(lit(b"NX", b"XX")), opt(b"CH"), some(cmd(lonlat, member), 1, 3)),
    cmd(b"GEOPOS", key, some(member)),
    cmd(b"GEODIST", key, member, member, opt(geo_unit)),
    cmd(b"GEOHASH", key, some(member)),
    cmd(b"GEOSEARCH", key, geo_from, geo_shape, geo_options),
    cmd(b"GEORADIUS", key, lonlat, radius, geo_unit, opt(b"WITHDIST"), opt(lit(b"ASC", b"DESC"))),
    cmd(b"GEORADIUSBYMEMBER", key, member, radius, geo_unit, opt(b"WITHCOORD"), opt(lit(b"ASC", b"DESC"))),
]
GEO_COLOCATED = [
    cmd(b"GEOSEARCHSTORE", tkey, tkey, geo_from, geo_shape, opt(lit(b"ASC", b"DESC")), opt(b"STOREDIST")),
]

KEYSPACE = [
    cmd(lit(b"DEL", b"UNLINK", b"EXISTS", b"TOUCH"), some(key, 1, 4)),
    cmd(b"TYPE", key),
    cmd(b"EXPIRE", key, ttl_s, opt(lit(b"NX", b"XX"))),
    cmd(b"PEXPIRE", key, ttl_ms, opt(lit(b"NX", b"XX"))),
    cmd(b"EXPIREAT", key, at_s),
    cmd(b"PEXPIREAT", key, at_ms),
    cmd(lit(b"TTL", b"PTTL", b"EXPIRETIME", b"PEXPIRETIME"), key),
    cmd(b"PERSIST", key),
    cmd(b"DUMP", key),
    cmd(b"RESTORE", key, st.one_of(lit(b"0"), ints(10**7, 10**9)), restore_payload, opt(b"REPLACE")),
    cmd(b"DBSIZE"),
    cmd(b"KEYS", lit(b"*", b"{t}*", b"a*", b"?", b"nomatch*")),
    cmd(b"NOSUCHCOMMAND", some(key, 0, 2)),
]
KEYSPACE_COLOCATED = [
    cmd(lit(b"RENAME", b"RENAMENX"), tkey, tkey),
    cmd(b"COPY", tkey, tkey, opt(b"REPLACE")),
]

FAMILIES = {
    "strings": (STRINGS, STRINGS_COLOCATED),
    "bitmaps": (BITMAPS, BITMAPS_COLOCATED),
    "hashes": (HASHES, []),
    "lists": (LISTS, LISTS_COLOCATED),
    "sets": (SETS, SETS_COLOCATED),
    "zsets": (ZSETS, ZSETS_COLOCATED),
    "hyperloglog": (HYPERLOGLOG, HYPERLOGLOG_COLOCATED),
    "geo": (GEO, GEO_COLOCATED),
    "keyspace": (KEYSPACE, KEYSPACE_COLOCATED),
}


@st.composite
def mangled(draw, command: st.SearchStrategy[Command]) -> Command:
    """A command broken on purpose: cut short (wrong arity, missing option values) or with
    one argument replaced by garbage (non-integers, empty strings, out-of-range numbers)."""
    cmd_ = draw(command)
    if len(cmd_) > 1 and draw(st.booleans()):
        return cmd_[: draw(st.integers(1, len(cmd_) - 1))]
    if len(cmd_) > 1:
        i = draw(st.integers(1, len(cmd_) - 1))
        return cmd_[:i] + (draw(st.sampled_from(GARBAGE)),) + cmd_[i + 1 :]
    return cmd_ + (draw(st.sampled_from(GARBAGE)),)


@st.composite
def recased(draw, command: st.SearchStrategy[Command]) -> Command:
    """The command name in lower or mixed case (names are case-insensitive)."""
    cmd_ = draw(command)
    name = cmd_[0].decode()
    name = draw(st.sampled_from([name.lower(), name.capitalize(), name.swapcase()]))
    return (name.encode(),) + cmd_[1:]


def command(families: Sequence[str] | None = None, colocated: bool = True) -> st.SearchStrategy[Command]:
    """One command of the given families (default all), mostly well-formed, sometimes
    mangled or re-cased. colocated=False leaves out commands that need several keys on one
    owner (for a cluster without `hash_tag: "{}"`)."""
    chosen = []
    for name in families or FAMILIES:
        plain, together = FAMILIES[name]
        chosen += plain + (together if colocated else [])
    wellformed = st.one_of(chosen)
    return st.one_of(wellformed, wellformed, wellformed, wellformed, wellformed, wellformed,
                     mangled(wellformed), recased(wellformed))  # fmt: skip


def sequences(min_size: int = 1, max_size: int = 30, families: Sequence[str] | None = None,
              colocated: bool = True) -> st.SearchStrategy[list[Command]]:  # fmt: skip
    """Lists of commands. Half of them mix every family; the others mostly stick to one family
    (with a few others mixed in), so that a key builds up a real list, zset, geo set... before
    it gets overwritten by another type. Lengths are drawn uniformly (plain st.lists gives
    mostly a handful of commands, and data only builds up in longer sequences)."""
    names = list(families or FAMILIES)
    mixed = command(names, colocated)
    focused = {name: st.one_of(command([name], colocated), command([name], colocated), mixed) for name in names}

    def of(focus: str | None) -> st.SearchStrategy[list[Command]]:
        one = mixed if focus is None else focused[focus]
        return st.integers(min_size, max_size).flatmap(lambda n: st.lists(one, min_size=n, max_size=n))

    if len(names) == 1:
        return of(None)
    return st.sampled_from([None] * len(names) + names).flatmap(of)


# =========================================================================== command line


def _parse_addr(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return (host or "127.0.0.1", int(port))


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from hypothesis import HealthCheck, given, settings

    parser = argparse.ArgumentParser(description="Differential test: a plain Redis vs a system under test.")
    parser.add_argument("--reference", required=True, type=_parse_addr, help="HOST:PORT of a plain redis-server")
    parser.add_argument("--target", required=True, action="append", type=_parse_addr,
                        help="HOST:PORT of a node of the system under test (repeat for several)")  # fmt: skip
    parser.add_argument("--reset", action="append", type=_parse_addr,
                        help="HOST:PORT to FLUSHALL before each sequence (default: the targets)")  # fmt: skip
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--max-commands", type=int, default=30)
    parser.add_argument("--no-colocated", action="store_true", help="leave out commands needing co-located keys")
    parser.add_argument("--pipeline", action="store_true")
    args = parser.parse_args(argv)

    diff = Differential(args.reference, args.target, args.reset)

    @settings(max_examples=args.examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(seq=sequences(max_size=args.max_commands, colocated=not args.no_colocated), data=st.data())
    def check(seq, data):
        picks = data.draw(st.lists(st.integers(0, len(args.target) - 1), min_size=len(seq), max_size=len(seq)))
        diff.run(seq, pick=picks.__getitem__, pipeline=args.pipeline)

    try:
        check()
    finally:
        diff.close()
    print(f"{args.examples} sequences: every reply identical")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
