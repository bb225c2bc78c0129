"""Hinted handoff's store: the replica writes a peer did not acknowledge, kept per peer
until they are replayed to it (Cassandra's hints).

This module owns the hints: appending a record, finding a peer's oldest pending ones,
forgetting them once replayed, getting them to the disk in batches, and finding them
again after a restart. It never sends anything, never looks into a payload (opaque
bytes: RESP to this module is just bytes), never decides when to replay (the
coordinator adds, the replay task reads and acknowledges when gossip says the peer is
up), never waits on the disk in the event loop (``fsync`` runs in a worker thread) and,
on disk, never loads a peer's hints into memory: ``read`` streams them from the files.

Layout. ``<directory>/<target>/<sequence>.hints``: a directory per peer (its name
escaped, ``escape_target``), numbered segments (16 digits) of records written back to
back, a new segment once the current one passes ``segment_bytes``. A record is a
header ``<II`` (body length, CRC32 of the body), then the body, msgpack
``[created_ms, flags, count, payload]``. ``<target>/acked`` says how far replay got,
``"<sequence> <offset>\\n"``, replaced atomically (``os.replace``): the segments below
``sequence`` are done, segment ``sequence`` is done up to byte ``offset``. A segment
that is fully acknowledged is deleted, after ``acked`` was written (a crash between the
two deletes it again at the next open): an acknowledged segment never comes back.
``<directory>/.lock`` (``flock``) keeps a second process out of the directory.

Durability. ``add`` is one ``os.write`` to an ``O_APPEND`` descriptor: in the page
cache at once, so the hint survives a crash of the process. ``flusher`` fsyncs, every
``interval``, the files and directories changed since its last round; a power loss
costs at most that much. ``flush_now`` does the same at once (shutdown, tests). After a
crash between a replay and its ``acknowledge`` the same records are replayed again:
harmless, a replay only applies what is newer (dyno.versions).

Recovery. Opening reads every segment once, checking each record's length and
checksum: a record cut by a crash or with a bad checksum ends its segment (the file is
truncated before it, one log line per segment). What is kept in memory is a few
counters per segment.

Without a directory the same store lives in memory (segments are bytearrays): the same
limits and the same answers, lost on restart.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import NamedTuple

import msgpack
import trio

from dyno.wakeup import Idle

__all__ = [
    "HEADER_BYTES", "Cursor", "Hint", "HintStore", "HintStoreError", "escape_target", "unescape_target",
]

log = logging.getLogger("dyno.hints")

_HEADER = struct.Struct("<II")
#: Bytes of a record's header (body length, CRC32 of the body).
HEADER_BYTES = _HEADER.size
_SEGMENT_NAME = re.compile(r"(\d{16})\.hints\Z")
_ACKED = "acked"
_ACKED_TMP = "acked.tmp"
_LOCK = ".lock"
_PROBE = ".probe"
# Big enough that a read of a batch of small records costs one pread.
_READ_CHUNK = 64 << 10
# I/O errors on the write path can come at the rate of writes: one log line per interval.
_COMPLAIN_INTERVAL = 10.0
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")


class HintStoreError(Exception):
    """The hints directory cannot be used; the message is one line a person can act on."""


class Hint(NamedTuple):
    created_ms: int
    flags: int
    count: int
    payload: bytes


class Cursor:
    """Where a ``read`` ended, to ``acknowledge`` once its records were replayed.
    Opaque to the caller; ``records`` is how many hints the read returned."""

    __slots__ = ("owner", "start", "end", "seq", "offset")

    def __init__(self, owner: _Target | None, start: int, end: int, seq: int, offset: int):
        self.owner = owner  # the target's state when read: a cursor outlives neither drop nor reopen
        self.start = start  # ordinals (per target, since open) of the first and past the last record
        self.end = end
        self.seq = seq  # the segment and byte offset just past the last record
        self.offset = offset

    @property
    def records(self) -> int:
        return self.end - self.start

    def __repr__(self) -> str:
        return f"Cursor(records={self.records}, segment={self.seq}, offset={self.offset})"


#: With ``workers: N``, worker K > 0 keeps its hints in hints_dir/.worker-K (worker 0
#: in hints_dir itself, as a node of one process does): no file is shared.
WORKER_DIR_PREFIX = ".worker-"


def escape_target(target: str) -> str:
    """A file name for a target's directory: letters, digits, ``_ - .`` kept, every other
    byte of its UTF-8 as ``%XX`` (a leading dot too: no ``.``, ``..`` or hidden names);
    the empty name is ``%``. One name, one escape, and back (``unescape_target``)."""
    raw = target.encode("utf-8", "surrogatepass")
    escaped = "".join(
        chr(byte) if byte in _SAFE and (index or byte != 0x2E) else f"%{byte:02X}"
        for index, byte in enumerate(raw)
    )
    return escaped or "%"


def unescape_target(name: str) -> str | None:
    """The target whose directory is ``name``, or None if ``escape_target`` would not
    have made that name (a file that is not ours)."""
    if name == "%":
        return ""
    try:
        raw = re.sub(rb"%([0-9A-F]{2})", lambda match: bytes.fromhex(match[1].decode()), name.encode("ascii"))
        target = raw.decode("utf-8", "surrogatepass")
    except (UnicodeError, ValueError):
        return None
    return target if escape_target(target) == name else None


class _Segment:
    """One segment: its place in the target's records and bytes, and where it is."""

    __slots__ = ("seq", "path", "first", "start", "records", "size", "fd", "buffer", "sealed", "live")

    def __init__(self, seq: int, path: str | None, first: int, start: int):
        self.seq = seq
        self.path = path  # None in memory
        self.first = first  # ordinal of its first record
        self.start = start  # the target's byte position of its first byte
        self.records = 0
        self.size = 0  # bytes of whole records (a torn tail is not counted)
        self.fd: int | None = None  # O_APPEND descriptor while records are added to it
        self.buffer = bytearray() if path is None else None
        self.sealed = False  # no more records go in
        self.live = True  # False once deleted (a late fsync failure of it is no news)


class _Target:
    """A target's segments and how far it was acknowledged. Records and bytes are counted
    from the open of the store on (ordinals): pending = records - acked."""

    __slots__ = ("name", "path", "segments", "records", "bytes", "acked", "acked_bytes", "acked_offset",
                 "next_seq", "reader", "reader_seq")

    def __init__(self, name: str, path: str | None):
        self.name = name
        self.path = path
        self.segments: deque[_Segment] = deque()
        self.records = 0  # ordinal past the last record added
        self.bytes = 0  # byte position past the last record added
        self.acked = 0  # ordinal past the last record acknowledged
        self.acked_bytes = 0
        self.acked_offset = 0  # in segments[0]
        self.next_seq = 1
        self.reader: int | None = None  # a read descriptor of segment reader_seq
        self.reader_seq = 0


class _Torn(Exception):
    def __init__(self, offset: int, reason: str):
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _scan(read: Callable[[int, int], bytes], offset: int, end: int) -> Iterator[tuple[int, int, memoryview]]:
    """(start, stop, body) of each record from ``offset`` to ``end``, in order; raises
    _Torn at the first one that is cut or fails its checksum. ``read(offset, size)``
    returns up to ``size`` bytes; it is called once per chunk, not once per record."""
    buffer = memoryview(b"")
    base = offset
    while offset < end:
        at = offset - base
        if len(buffer) - at < HEADER_BYTES:
            buffer = memoryview(read(offset, min(_READ_CHUNK, end - offset)))
            base, at = offset, 0
            if len(buffer) < HEADER_BYTES:
                raise _Torn(offset, "cut in its header")
        length, checksum = _HEADER.unpack_from(buffer, at)
        stop = offset + HEADER_BYTES + length
        if stop > end:
            raise _Torn(offset, "cut")
        if len(buffer) - at < stop - offset:
            buffer = memoryview(read(offset, min(max(_READ_CHUNK, stop - offset), end - offset)))
            base, at = offset, 0
            if len(buffer) < stop - offset:
                raise _Torn(offset, "cut")
        body = buffer[at + HEADER_BYTES:at + stop - offset]
        if zlib.crc32(body) != checksum:
            raise _Torn(offset, "bad checksum")
        yield offset, stop, body
        offset = stop


def _decode(body: memoryview) -> Hint | None:
    try:
        fields = msgpack.unpackb(body)
    except Exception:  # any malformed msgpack: the record is unreadable, whatever the reason
        return None
    if (type(fields) is list and len(fields) == 4 and type(fields[0]) is int and type(fields[1]) is int
            and type(fields[2]) is int and type(fields[3]) is bytes):
        return Hint(*fields)
    return None


def _fsync_paths(paths: list[str]) -> list[tuple[int, OSError]]:
    """fsync each path (files and directories; runs in a worker thread): the failures,
    by index. Opening by path shares no descriptor with the event loop's thread, and a
    file that vanished says so instead of being synced in its unlinked inode."""
    failures = []
    for index, path in enumerate(paths):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            failures.append((index, exc))
            continue
        try:
            os.fsync(fd)
        except OSError as exc:
            failures.append((index, exc))
        finally:
            os.close(fd)
    return failures


class HintStore:
    """Hints per target, on disk under ``directory`` or (``None``) in memory.

    Counters are plain integers: per target in dicts (``stored``, ``replayed``,
    ``dropped_window``, ``dropped_full``, ``dropped_error``: the write failed,
    ``dropped_unreadable``: lost to a segment that could not be read back) and their
    ``*_total``; ``synced`` and ``sync_failures`` count fsynced files and failures.
    """

    __slots__ = (
        "directory", "window_ms", "max_bytes", "segment_bytes", "_clock", "_targets", "_lock",
        "_dirty_segments", "_dirty_targets", "_dirty_root", "_flusher_idle",
        "_closed", "_quiet_until", "_quieted",
        "_sync_failing",
        "stored", "replayed", "dropped_window", "dropped_full", "dropped_error", "dropped_unreadable",
        "stored_total", "replayed_total", "dropped_window_total", "dropped_full_total",
        "dropped_error_total", "dropped_unreadable_total", "synced", "sync_failures",
    )

    def __init__(self, directory: str | None, *, window_ms: int, max_bytes: int,
                 clock_ms: Callable[[], int] = _wall_ms, segment_bytes: int = 8 << 20):
        self.directory = None if directory is None else os.fspath(directory)
        self.window_ms = window_ms
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._clock = clock_ms
        self._targets: dict[str, _Target] = {}
        self._lock: int | None = None
        self._dirty_segments: set[_Segment] = set()
        self._dirty_targets: set[_Target] = set()
        self._dirty_root = False
        self._flusher_idle = Idle()  # flusher() waits here for _dirtied()
        self._closed = False
        self._quiet_until = 0.0
        self._quieted = 0
        self._sync_failing = False
        self.stored: dict[str, int] = {}
        self.replayed: dict[str, int] = {}
        self.dropped_window: dict[str, int] = {}
        self.dropped_full: dict[str, int] = {}
        self.dropped_error: dict[str, int] = {}
        self.dropped_unreadable: dict[str, int] = {}
        self.stored_total = self.replayed_total = self.dropped_window_total = 0
        self.dropped_full_total = self.dropped_error_total = self.dropped_unreadable_total = 0
        self.synced = self.sync_failures = 0
        if self.directory is not None:
            self._open_directory(self.directory)

    # -- opening -------------------------------------------------------------------

    def _open_directory(self, directory: str) -> None:
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise HintStoreError(f"hints directory {directory} is not a directory")
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise HintStoreError(f"hints directory {directory} cannot be created: {exc.strerror or exc}") from None
        try:
            self._lock = os.open(os.path.join(directory, _LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            probe = os.open(os.path.join(directory, _PROBE),
                            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(probe, b"x")
            finally:
                os.close(probe)
            os.unlink(os.path.join(directory, _PROBE))
        except OSError as exc:
            self._release_lock()
            raise HintStoreError(f"hints directory {directory} is not writable: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._release_lock()
            raise HintStoreError(f"hints directory {directory} is in use by another process "
                                 "(each node needs its own hints_dir)") from None
        try:
            with os.scandir(directory) as entries:
                names = sorted(entry.name for entry in entries if entry.name not in (_LOCK, _PROBE))
            for name in names:
                path = os.path.join(directory, name)
                if name.startswith(WORKER_DIR_PREFIX):  # another worker's hints (dyno.workers)
                    continue
                target = unescape_target(name)
                if target is None or not os.path.isdir(path):
                    log.warning("hints directory %s: ignoring %s (not a peer's hints)", directory, name)
                    continue
                self._load_target(target, path)
        except OSError as exc:
            self._close_descriptors()
            self._release_lock()
            where = f" ({exc.filename})" if exc.filename else ""
            raise HintStoreError(f"hints directory {directory} cannot be read{where}: {exc.strerror or exc}") from None
        if self._targets:
            log.info("hints directory %s: %d hints pending for %s", directory,
                     sum(t.records - t.acked for t in self._targets.values()), ", ".join(sorted(self._targets)))

    def _load_target(self, name: str, path: str) -> None:
        """A target's segments as a previous run left them: acknowledged ones deleted,
        torn tails cut, the acknowledged offset put on a record boundary."""
        acked_seq, acked_offset = self._read_acked(path)
        seqs = []
        for file in os.listdir(path):
            match = _SEGMENT_NAME.match(file)
            if match:
                seqs.append(int(match[1]))
            elif file == _ACKED_TMP:  # an acknowledgement cut before its rename
                os.unlink(os.path.join(path, file))
        seqs.sort()
        target = _Target(name, path)
        target.next_seq = max(seqs[-1] if seqs else 0, acked_seq) + 1
        for seq in seqs:
            segment_path = os.path.join(path, f"{seq:016d}.hints")
            if seq < acked_seq:  # acknowledged, deleted by a crash too early
                os.unlink(segment_path)
                continue
            segment = _Segment(seq, segment_path, target.records, target.bytes)
            skip_records = skip_bytes = 0
            fd = os.open(segment_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                size = os.fstat(fd).st_size
                try:
                    for _start, stop, _body in _scan(lambda offset, n: os.pread(fd, n, offset), 0, size):
                        segment.records += 1
                        segment.size = stop
                        if seq == acked_seq and stop <= acked_offset:
                            skip_records, skip_bytes = segment.records, stop
                except _Torn as torn:
                    log.warning("hints for %s: segment %s %s at byte %d of %d: %d bytes dropped, %d records kept",
                                name, segment_path, torn.reason, torn.offset, size, size - torn.offset,
                                segment.records)
                    os.truncate(segment_path, segment.size)
            finally:
                os.close(fd)
            if segment.records == skip_records:  # empty or fully acknowledged
                os.unlink(segment_path)
                continue
            segment.sealed = True  # new records go to a new segment
            if not target.segments:
                target.acked, target.acked_offset = skip_records, skip_bytes
                target.acked_bytes = skip_bytes
            target.segments.append(segment)
            target.records += segment.records
            target.bytes += segment.size
        if not target.segments:  # nothing left: no directory either
            try:
                os.unlink(os.path.join(path, _ACKED))
            except FileNotFoundError:
                pass
            try:
                os.rmdir(path)
            except OSError:
                log.warning("hints directory %s: %s has files that are not hints; left alone", self.directory, path)
            return
        self._targets[name] = target
        self._count(name)

    def _read_acked(self, path: str) -> tuple[int, int]:
        try:
            with open(os.path.join(path, _ACKED), "rb") as file:
                text = file.read(100)
        except FileNotFoundError:
            return 0, 0
        fields = text.split()
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            return int(fields[0]), int(fields[1])
        log.warning("hints: %s is not '<segment> <offset>': its hints will be replayed from the start",
                    os.path.join(path, _ACKED))
        return 0, 0

    def _count(self, name: str) -> None:
        for counter in (self.stored, self.replayed, self.dropped_window, self.dropped_full, self.dropped_error,
                        self.dropped_unreadable):
            counter.setdefault(name, 0)

    # -- the caller's side ------------------------------------------------------------

    def add(self, target: str, flags: int, payload: bytes, count: int) -> bool:
        """Keep a write for ``target``; False if its pending bytes would pass max_bytes
        (or the write failed: logged, rate-limited)."""
        if self._closed:
            raise HintStoreError("the hint store is closed")
        hints = self._targets.get(target)
        if hints is None:
            hints = self._targets[target] = _Target(
                target, None if self.directory is None else os.path.join(self.directory, escape_target(target)))
            self._count(target)
        body = msgpack.packb([self._clock(), flags, count, payload])
        size = HEADER_BYTES + len(body)
        if hints.bytes - hints.acked_bytes + size > self.max_bytes:
            self.dropped_full[target] += 1
            self.dropped_full_total += 1
            return False
        record = _HEADER.pack(len(body), zlib.crc32(body)) + body
        segment = hints.segments[-1] if hints.segments and not hints.segments[-1].sealed else None
        if segment is None:
            try:
                segment = self._new_segment(hints)
            except OSError as exc:
                return self._write_failed(hints, None, f"cannot create a segment: {exc.strerror or exc}")
        if segment.buffer is not None:
            segment.buffer += record
        else:
            try:
                written = os.write(segment.fd, record)
            except OSError as exc:
                return self._write_failed(hints, segment, exc.strerror or str(exc))
            if written != size:
                return self._write_failed(hints, segment, f"short write ({written} of {size} bytes)")
            self._dirty_segments.add(segment)
            self._dirtied()
        segment.size += size
        segment.records += 1
        hints.records += 1
        hints.bytes += size
        self.stored[target] += 1
        self.stored_total += 1
        if segment.size >= self.segment_bytes:
            self._seal(segment)
        return True

    def pending(self, target: str) -> int:
        hints = self._targets.get(target)
        return 0 if hints is None else hints.records - hints.acked

    def pending_bytes(self, target: str) -> int:
        hints = self._targets.get(target)
        return 0 if hints is None else hints.bytes - hints.acked_bytes

    def targets(self) -> list[str]:
        return [name for name, hints in self._targets.items() if hints.records > hints.acked]

    def read(self, target: str, max_records: int, max_bytes: int) -> tuple[list[Hint], Cursor]:
        """The oldest pending hints of ``target`` in the order added: as many as fit in
        ``max_records`` and ``max_bytes`` (record bytes: header and body), at least one if
        any. Hints older than the window are dropped and acknowledged on the way (the
        batch ends before one that follows a returned hint), as is the rest of a segment
        that cannot be read back."""
        hints = self._targets.get(target)
        if hints is None or hints.records == hints.acked:
            return [], Cursor(None, 0, 0, 0, 0)
        cutoff = self._clock() - self.window_ms
        batch: list[Hint] = []
        used = 0
        ordinal = hints.acked
        end = (0, 0)  # segment and offset past the last record of the batch
        skip_to: tuple[int, int, int] | None = None  # the drops at the head end here
        expired = unreadable = 0
        full = False
        for segment in list(hints.segments):
            offset = hints.acked_offset if segment is hints.segments[0] else 0
            try:
                for start, stop, body in _scan(lambda at, n, s=segment: self._pread(hints, s, at, n),
                                               offset, segment.size):
                    hint = _decode(body)
                    if hint is None:
                        raise _Torn(start, "not a hint record")
                    if hint.created_ms < cutoff:
                        if batch:
                            full = True
                            break
                        expired += 1
                        ordinal += 1
                        skip_to = (segment.seq, stop, ordinal)
                        continue
                    if batch and (len(batch) >= max_records or used + stop - start > max_bytes):
                        full = True
                        break
                    batch.append(hint)
                    used += stop - start
                    ordinal += 1
                    end = (segment.seq, stop)
            except (_Torn, OSError) as exc:
                if batch:
                    break
                lost = segment.first + segment.records - ordinal
                reason = exc.reason if isinstance(exc, _Torn) else (exc.strerror or str(exc))
                log.warning("hints for %s: segment %d unreadable (%s): %d hints lost", target, segment.seq,
                            reason, lost)
                unreadable += lost
                ordinal = segment.first + segment.records
                skip_to = (segment.seq, segment.size, ordinal)
                continue
            if full:
                break
        start_ordinal = ordinal - len(batch)
        if skip_to is not None:
            self._advance(hints, *skip_to)
        if expired:
            self.dropped_window[target] += expired
            self.dropped_window_total += expired
            log.warning("hints for %s: %d older than the window (%d ms) dropped", target, expired, self.window_ms)
        if unreadable:
            self.dropped_unreadable[target] += unreadable
            self.dropped_unreadable_total += unreadable
        if not batch:
            return batch, Cursor(None, 0, 0, 0, 0)
        return batch, Cursor(hints, start_ordinal, ordinal, *end)

    def acknowledge(self, target: str, cursor: Cursor) -> None:
        """The hints of ``cursor``'s read were replayed: they are done. A cursor from
        before a ``drop`` or a reopen, or one already acknowledged, changes nothing."""
        hints = self._targets.get(target)
        if hints is None or cursor.owner is not hints or cursor.end <= hints.acked:
            return
        replayed = cursor.end - max(cursor.start, hints.acked)
        self.replayed[target] += replayed
        self.replayed_total += replayed
        self._advance(hints, cursor.seq, cursor.offset, cursor.end)

    def drop(self, target: str) -> int:
        """Forget every hint of ``target`` (a node removed from the ring): how many."""
        hints = self._targets.pop(target, None)
        if hints is None:
            return 0
        dropped = hints.records - hints.acked
        self._close_reader(hints)
        for segment in hints.segments:
            self._forget(segment)
        hints.segments.clear()
        self._dirty_targets.discard(hints)
        if hints.path is not None:
            try:
                for file in os.listdir(hints.path):
                    if _SEGMENT_NAME.match(file) or file in (_ACKED, _ACKED_TMP):
                        os.unlink(os.path.join(hints.path, file))
                os.rmdir(hints.path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("hints for %s: could not delete %s: %s", target, hints.path, exc.strerror or exc)
            self._dirty_root = True
            self._dirtied()
        if dropped:
            log.info("hints for %s: %d dropped", target, dropped)
        return dropped

    # -- acknowledging --------------------------------------------------------------

    def _advance(self, hints: _Target, seq: int, offset: int, ordinal: int) -> None:
        """Everything before byte ``offset`` of segment ``seq`` is done: record it, then
        delete the segments that are done (in that order: see the module docstring)."""
        segments = hints.segments
        done = []
        while segments and segments[0].seq < seq:
            done.append(segments.popleft())
        hints.acked = ordinal
        hints.acked_offset = offset
        if segments and offset >= segments[0].size:
            done.append(segments.popleft())
            hints.acked_offset = 0
        hints.acked_bytes = segments[0].start + hints.acked_offset if segments else hints.bytes
        if hints.path is not None and hints.acked_offset:
            self._write_acked(hints, segments[0].seq, hints.acked_offset)
        for segment in done:
            self._forget(segment)
            if segment.path is not None:
                try:
                    os.unlink(segment.path)
                except OSError as exc:
                    self._complain(f"hints for {hints.name}: could not delete {segment.path}: {exc.strerror or exc}")
                self._dirty_targets.add(hints)
                self._dirtied()
            if hints.reader_seq == segment.seq:
                self._close_reader(hints)

    def _write_acked(self, hints: _Target, seq: int, offset: int) -> None:
        # Not fsynced here (the flusher syncs the directory): a power loss may replay
        # what was acknowledged since, which is allowed; the rename is atomic.
        temporary = os.path.join(hints.path, _ACKED_TMP)
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, b"%d %d\n" % (seq, offset))
            finally:
                os.close(fd)
            os.replace(temporary, os.path.join(hints.path, _ACKED))
        except OSError as exc:
            self._complain(f"hints for {hints.name}: could not record replay progress: {exc.strerror or exc}")
            return
        self._dirty_targets.add(hints)
        self._dirtied()

    # -- segments -------------------------------------------------------------------

    def _new_segment(self, hints: _Target) -> _Segment:
        seq = hints.next_seq
        hints.next_seq += 1  # also after a failure: the next try takes a fresh name
        if hints.path is None:
            segment = _Segment(seq, None, hints.records, hints.bytes)
        else:
            path = os.path.join(hints.path, f"{seq:016d}.hints")
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
            try:
                fd = os.open(path, flags, 0o644)
            except FileNotFoundError:  # the target's first hints: its directory, once
                os.mkdir(hints.path)
                self._dirty_root = True
                self._dirtied()
                fd = os.open(path, flags, 0o644)
            self._dirty_targets.add(hints)
            self._dirtied()
            segment = _Segment(seq, path, hints.records, hints.bytes)
            segment.fd = fd
        if not hints.segments:
            hints.acked_offset = 0
            hints.acked_bytes = hints.bytes
        hints.segments.append(segment)
        return segment

    def _seal(self, segment: _Segment) -> None:
        # The descriptor can go: the flusher fsyncs by path.
        segment.sealed = True
        if segment.fd is not None:
            os.close(segment.fd)
            segment.fd = None

    def _forget(self, segment: _Segment) -> None:
        self._seal(segment)
        segment.live = False
        segment.buffer = None
        self._dirty_segments.discard(segment)

    def _write_failed(self, hints: _Target, segment: _Segment | None, reason: str) -> bool:
        if segment is not None:
            # What reached the file must not stay in front of the next record; if it
            # cannot be cut, the next record goes to a new segment (the next open cuts it).
            try:
                os.ftruncate(segment.fd, segment.size)
            except OSError:
                self._seal(segment)
        self.dropped_error[hints.name] += 1
        self.dropped_error_total += 1
        self._complain(f"hints for {hints.name}: hint not stored: {reason}")
        return False

    def _pread(self, hints: _Target, segment: _Segment, offset: int, size: int) -> bytes:
        if segment.buffer is not None:
            return segment.buffer[offset:offset + size]
        if hints.reader is None or hints.reader_seq != segment.seq:
            self._close_reader(hints)
            hints.reader = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
            hints.reader_seq = segment.seq
        return os.pread(hints.reader, size, offset)

    def _close_reader(self, hints: _Target) -> None:
        if hints.reader is not None:
            os.close(hints.reader)
            hints.reader = None

    # -- durability -----------------------------------------------------------------

    def _take_dirty(self) -> tuple[list[object], list[str]]:
        """What changed since the last flush (segments, target directories, the root),
        and their paths for the worker thread."""
        owners: list[object] = [*self._dirty_segments, *self._dirty_targets]
        paths = [owner.path for owner in owners]
        if self._dirty_root:
            owners.append(None)
            paths.append(self.directory)
        self._dirty_segments.clear()
        self._dirty_targets.clear()
        self._dirty_root = False
        return owners, paths

    def _flushed(self, owners: list[object], failures: list[tuple[int, OSError]]) -> None:
        failed = []
        for index, exc in failures:
            owner = owners[index]
            # A segment deleted or a target dropped while its fsync ran is no news.
            if isinstance(owner, _Segment) and not owner.live:
                continue
            if isinstance(owner, _Target) and self._targets.get(owner.name) is not owner:
                continue
            failed.append((owner.path if owner is not None else self.directory, exc))
        self.synced += len(owners) - len(failures)
        self.sync_failures += len(failed)
        if failed:
            path, exc = failed[0]
            self._sync_failing = True
            self._complain(f"hints: could not fsync {len(failed)} file(s) ({path}: {exc.strerror or exc}); "
                           "hints written since may not survive a power loss")
        elif self._sync_failing and owners:
            self._sync_failing = False
            log.info("hints: fsync works again in %s", self.directory)

    def flush_now(self) -> None:
        """fsync everything written since the last flush, in this thread."""
        if self.directory is None:
            return
        owners, paths = self._take_dirty()
        if paths:
            self._flushed(owners, _fsync_paths(paths))

    async def flusher(self, interval: float = 0.1) -> None:
        """The task that makes hints durable: ``interval`` after the first write since
        the last round, fsync what was written, in a worker thread (with nothing
        written it waits, no timer running). Failures are logged; it keeps going."""
        if self.directory is None:
            await trio.sleep_forever()
        while True:
            if not self._is_dirty():
                await self._flusher_idle.wait()
            await trio.sleep(interval)
            owners, paths = self._take_dirty()
            if paths:
                failures = await trio.to_thread.run_sync(_fsync_paths, paths)
                self._flushed(owners, failures)

    def _is_dirty(self) -> bool:
        return bool(self._dirty_segments or self._dirty_targets or self._dirty_root)

    def _dirtied(self) -> None:
        """Something was written that the flusher must fsync: wake it if it waits."""
        self._flusher_idle.wake()

    def close(self) -> None:
        """fsync what is dirty and let go of every descriptor and the directory's lock."""
        if self._closed:
            return
        self.flush_now()
        self._closed = True
        self._close_descriptors()
        self._release_lock()

    def _close_descriptors(self) -> None:
        for hints in self._targets.values():
            self._close_reader(hints)
            for segment in hints.segments:
                self._seal(segment)

    def _release_lock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _complain(self, message: str) -> None:
        """Log an I/O problem, at most once per _COMPLAIN_INTERVAL (they come in bursts)."""
        now = time.monotonic()
        if now < self._quiet_until:
            self._quieted += 1
            return
        if self._quieted:
            message += f" ({self._quieted} more such problems not logged)"
        log.warning("%s", message)
        self._quiet_until = now + _COMPLAIN_INTERVAL
        self._quieted = 0
