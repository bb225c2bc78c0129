"""dyno.hints: the hinted-handoff store against a model, on disk and in memory.

The state machine drives a store (segments of a few records, a small max_bytes, a
window of a second, a fake clock) with adds, reads, acknowledgements, drops and, on
disk, reopens (close, then a new store on the same directory), and checks after every
step that it holds exactly the records a list per target says, in order: none lost,
none back after they were acknowledged, the old ones dropped and counted, a full
target refused and counted. Record sizes in the model come from the framing the
module docstring promises (an 8-byte header, then msgpack of the four fields).

Then what the model cannot see: a torn or corrupted segment at open, an
acknowledgement cut by a crash, the flusher (fsyncs in a worker thread, batched,
survives its directory being removed), and the errors a person gets for a directory
that cannot be used.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import threading

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dyno import hints as hints_module
from dyno.hints import HEADER_BYTES, Hint, HintStore, HintStoreError, escape_target, unescape_target

WINDOW_MS = 1_000
MAX_BYTES = 600
SEGMENT_BYTES = 150
# Few peers, so that reads and acknowledgements of one peer's cursors interleave;
# names a file system would trip on are tested on their own below.
PEERS = ["node1", "a/b", ".."]
ODD_NAMES = ["", ".", "..", "a/b", "ü 🙂", "%41", "-x", "127.0.0.1:8101", "x" * 80]
COUNTERS = ("stored", "replayed", "dropped_window", "dropped_full")


def record_size(created_ms: int, flags: int, count: int, payload: bytes) -> int:
    return 8 + len(msgpack.packb([created_ms, flags, count, payload], use_bin_type=True))


def segment_files(directory, peer: str) -> list[str]:
    folder = os.path.join(directory, escape_target(peer))
    return sorted(name for name in os.listdir(folder) if name.endswith(".hints")) if os.path.isdir(folder) else []


async def wait_until(condition, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.005)


# ---------------------------------------------------------------------------
# The model.


class HintsOnDisk(RuleBasedStateMachine):
    persistent = True

    @initialize()
    def open_store(self):
        self.now = 50_000
        self.directory = tempfile.mkdtemp(prefix="dyno-hints-") if self.persistent else None
        self.store = self.open()
        self.pending: dict[str, list[tuple[int, Hint, int]]] = {peer: [] for peer in PEERS}
        self.next_key = 0
        # (peer, cursor, key of its last record, generation of the peer when read)
        self.cursors: list[tuple[str, object, int, int]] = []
        self.generation = dict.fromkeys(PEERS, 0)
        self.counters = {name: dict.fromkeys(PEERS, 0) for name in COUNTERS}

    def open(self) -> HintStore:
        return HintStore(self.directory, window_ms=WINDOW_MS, max_bytes=MAX_BYTES,
                         clock_ms=lambda: self.now, segment_bytes=SEGMENT_BYTES)

    def teardown(self):
        store = getattr(self, "store", None)
        if store is not None:
            store.close()
        if getattr(self, "directory", None):
            shutil.rmtree(self.directory, ignore_errors=True)

    @rule(peer=st.sampled_from(PEERS), flags=st.integers(0, 255), count=st.integers(1, 70000),
          payload=st.binary(max_size=120))
    def add(self, peer, flags, count, payload):
        size = record_size(self.now, flags, count, payload)
        fits = sum(size for _, _, size in self.pending[peer]) + size <= MAX_BYTES
        assert self.store.add(peer, flags, payload, count) is fits
        if fits:
            self.pending[peer].append((self.next_key, Hint(self.now, flags, count, payload), size))
            self.next_key += 1
            self.counters["stored"][peer] += 1
        else:
            self.counters["dropped_full"][peer] += 1

    @rule(ms=st.integers(1, 700))
    def tick(self, ms):
        self.now += ms

    @rule(peer=st.sampled_from(PEERS), max_records=st.integers(0, 6), max_bytes=st.integers(0, 400))
    def read(self, peer, max_records, max_bytes):
        cutoff = self.now - WINDOW_MS
        pending = self.pending[peer]
        # The clock never goes back here, so what is too old is a prefix.
        expired = 0
        while expired < len(pending) and pending[expired][1].created_ms < cutoff:
            expired += 1
        del pending[:expired]
        self.counters["dropped_window"][peer] += expired
        batch, used = [], 0
        for entry in pending:
            if batch and (len(batch) >= max_records or used + entry[2] > max_bytes):
                break
            batch.append(entry)
            used += entry[2]
        hints, cursor = self.store.read(peer, max_records, max_bytes)
        assert hints == [hint for _, hint, _ in batch]
        assert cursor.records == len(batch)
        if batch:
            self.cursors.append((peer, cursor, batch[-1][0], self.generation[peer]))

    @precondition(lambda self: self.cursors)
    @rule(data=st.data())
    def acknowledge(self, data):
        peer, cursor, last, generation = data.draw(st.sampled_from(self.cursors))
        if generation == self.generation[peer]:
            done = [entry for entry in self.pending[peer] if entry[0] <= last]
            self.pending[peer] = [entry for entry in self.pending[peer] if entry[0] > last]
            self.counters["replayed"][peer] += len(done)
        self.store.acknowledge(peer, cursor)

    @rule(peer=st.sampled_from(PEERS))
    def drop(self, peer):
        assert self.store.drop(peer) == len(self.pending[peer])
        self.pending[peer] = []
        self.generation[peer] += 1

    @precondition(lambda self: self.persistent)
    @rule()
    def reopen(self):
        self.store.close()
        self.store = self.open()
        # Counters and cursors belong to the store that is gone.
        self.generation = {peer: generation + 1 for peer, generation in self.generation.items()}
        self.counters = {name: dict.fromkeys(PEERS, 0) for name in COUNTERS}

    @invariant()
    def agrees_with_the_model(self):
        store = self.store
        for peer, pending in self.pending.items():
            assert store.pending(peer) == len(pending)
            assert store.pending_bytes(peer) == sum(size for _, _, size in pending)
            if self.persistent and not pending:  # a fully acknowledged segment is deleted
                assert segment_files(self.directory, peer) == []
        assert sorted(store.targets()) == sorted(peer for peer, pending in self.pending.items() if pending)
        for name, expected in self.counters.items():
            counted = getattr(store, name)
            assert {peer: counted.get(peer, 0) for peer in PEERS} == expected, name
            assert getattr(store, f"{name}_total") == sum(expected.values()), name


class HintsInMemory(HintsOnDisk):
    persistent = False


SETTINGS = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestHintsOnDisk = HintsOnDisk.TestCase
TestHintsOnDisk.settings = SETTINGS
TestHintsInMemory = HintsInMemory.TestCase
TestHintsInMemory.settings = SETTINGS


# ---------------------------------------------------------------------------
# Target names on the file system.


@given(st.text())
def test_escaped_names_are_plain_file_names_and_come_back(name):
    escaped = escape_target(name)
    assert unescape_target(escaped) == name
    assert escaped.isascii() and "/" not in escaped and "\0" not in escaped
    assert escaped and not escaped.startswith(".")
    assert len(escaped) <= 12 * max(len(name), 1)


@pytest.mark.parametrize("name", ["%2f", "a%2", "%41", "%2", "a b", ".x", "", "%C3"])
def test_names_escape_target_does_not_make_are_not_targets(name):
    assert unescape_target(name) is None


def test_odd_names_are_found_again_after_a_restart(tmp_path):
    store = _store(tmp_path)
    for index, name in enumerate(ODD_NAMES):
        assert store.add(name, 0, name.encode(), index)
    store.close()
    store = _store(tmp_path)
    try:
        assert sorted(store.targets()) == sorted(ODD_NAMES)
        for index, name in enumerate(ODD_NAMES):
            assert store.read(name, 10, 1 << 20)[0] == [Hint(1_000, 0, index, name.encode())]
    finally:
        store.close()


def test_open_ignores_what_is_not_a_peers_hints(tmp_path, caplog):
    (tmp_path / "lost+found").mkdir()
    (tmp_path / "README").write_text("notes")
    with caplog.at_level(logging.WARNING, logger="dyno.hints"):
        store = HintStore(tmp_path, window_ms=WINDOW_MS, max_bytes=MAX_BYTES)
    try:
        assert store.targets() == []
        assert "ignoring lost+found" in caplog.text and "ignoring README" in caplog.text
    finally:
        store.close()


# ---------------------------------------------------------------------------
# Recovery at open.


def _store(directory, **overrides) -> HintStore:
    options = {"window_ms": 10**9, "max_bytes": 1 << 20, "clock_ms": lambda: 1_000, "segment_bytes": 200}
    options.update(overrides)
    return HintStore(directory, **options)


def _fill(directory, payloads) -> None:
    store = _store(directory)
    for index, payload in enumerate(payloads):
        assert store.add("peer", 0, payload, index)
    store.close()


@pytest.mark.parametrize("damage", ["checksum", "length"])
def test_reopen_cuts_a_torn_tail_and_a_corrupt_record_and_keeps_the_good_prefix(tmp_path, caplog, damage):
    payloads = [bytes([index]) * 30 for index in range(12)]
    _fill(tmp_path, payloads)
    folder = tmp_path / "peer"
    segments = [folder / name for name in segment_files(tmp_path, "peer")]
    record = record_size(1_000, 0, 0, payloads[0])
    per_segment = [path.stat().st_size // record for path in segments]
    assert len(segments) >= 3 and sum(per_segment) == 12
    first = bytearray(segments[0].read_bytes())
    if damage == "checksum":  # a flipped byte in the body of the second record
        first[record + HEADER_BYTES + 5] ^= 0x40
    else:  # its length now points past the end of the file
        first[record:record + 4] = (10**6).to_bytes(4, "little")
    segments[0].write_bytes(bytes(first))
    last = segments[-1]
    os.truncate(last, last.stat().st_size - 7)  # the last record cut by a crash

    with caplog.at_level(logging.WARNING, logger="dyno.hints"):
        store = _store(tmp_path)
    try:
        expected = payloads[:1] + payloads[per_segment[0]:-1]
        hints, _ = store.read("peer", 100, 1 << 20)
        assert [hint.payload for hint in hints] == expected
        assert [hint.count for hint in hints] == [payloads.index(payload) for payload in expected]
        assert store.pending("peer") == len(expected)
        assert segments[0].stat().st_size == record
        assert last.stat().st_size == (per_segment[-1] - 1) * record
        lines = [r.getMessage() for r in caplog.records if r.name == "dyno.hints" and r.levelno == logging.WARNING]
        assert len(lines) == 2, lines
        reason = "bad checksum" if damage == "checksum" else "cut"
        assert "peer" in lines[0] and f"{reason} at byte {record}" in lines[0]
        assert f"{(per_segment[0] - 1) * record} bytes dropped, 1 records kept" in lines[0]
        assert "peer" in lines[1] and f"cut at byte {(per_segment[-1] - 1) * record}" in lines[1]
        assert f"{record - 7} bytes dropped, {per_segment[-1] - 1} records kept" in lines[1]
        # The store goes on: a new record comes after the recovered ones.
        assert store.add("peer", 1, b"after", 99)
        hints, _ = store.read("peer", 100, 1 << 20)
        assert hints[-1] == Hint(1_000, 1, 99, b"after") and len(hints) == len(expected) + 1
    finally:
        store.close()


def test_a_segment_left_by_a_crash_after_its_acknowledgement_is_deleted_at_open(tmp_path):
    payloads = [bytes([index]) * 30 for index in range(12)]
    _fill(tmp_path, payloads)
    folder = tmp_path / "peer"
    first = folder / segment_files(tmp_path, "peer")[0]
    saved = first.read_bytes()
    store = _store(tmp_path)
    hints, cursor = store.read("peer", 7, 1 << 20)  # past the first segment
    store.acknowledge("peer", cursor)
    assert not first.exists()
    assert store.replayed["peer"] == 7
    store.close()
    first.write_bytes(saved)  # as if the crash came between writing `acked` and the unlink
    store = _store(tmp_path)
    try:
        assert not first.exists()
        hints, _ = store.read("peer", 100, 1 << 20)
        assert [hint.payload for hint in hints] == payloads[7:]
    finally:
        store.close()


def test_progress_inside_a_segment_survives_a_restart(tmp_path, caplog):
    payloads = [bytes([index]) * 30 for index in range(3)]
    _fill(tmp_path, payloads)
    store = _store(tmp_path)
    _, cursor = store.read("peer", 1, 1 << 20)
    store.acknowledge("peer", cursor)
    store.close()
    store = _store(tmp_path)
    _, cursor = store.read("peer", 1, 1 << 20)
    store.close()  # read, not acknowledged: read again after the restart (a replay may repeat)
    store = _store(tmp_path)
    try:
        hints, _ = store.read("peer", 100, 1 << 20)
        assert [hint.payload for hint in hints] == payloads[1:]
    finally:
        store.close()
    # An offset that is not on a record boundary (not ours) replays the record it falls in.
    record = record_size(1_000, 0, 0, payloads[0])
    (tmp_path / "peer" / "acked").write_text(f"1 {record + 3}\n")
    store = _store(tmp_path)
    try:
        assert [hint.payload for hint in store.read("peer", 100, 1 << 20)[0]] == payloads[1:]
    finally:
        store.close()
    (tmp_path / "peer" / "acked").write_text("garbage")
    with caplog.at_level(logging.WARNING, logger="dyno.hints"):
        store = _store(tmp_path)
    try:
        assert [hint.payload for hint in store.read("peer", 100, 1 << 20)[0]] == payloads
        assert "replayed from the start" in caplog.text
    finally:
        store.close()


def test_a_segment_that_cannot_be_read_back_is_dropped_and_counted(tmp_path, caplog):
    store = _store(tmp_path)
    try:
        for index in range(12):
            assert store.add("peer", 0, bytes([index]) * 30, index)
        record = record_size(1_000, 0, 0, b"x" * 30)
        first, second, _ = (tmp_path / "peer" / name for name in segment_files(tmp_path, "peer"))
        in_first, in_second = first.stat().st_size // record, second.stat().st_size // record
        second.unlink()  # gone under the running store
        with caplog.at_level(logging.WARNING, logger="dyno.hints"):
            # The batch ends before the segment it cannot read...
            hints, cursor = store.read("peer", 100, 1 << 20)
            assert [hint.count for hint in hints] == list(range(in_first))
            assert store.dropped_unreadable["peer"] == 0
            store.acknowledge("peer", cursor)
            # ... which goes, counted, when it comes first.
            hints, _ = store.read("peer", 100, 1 << 20)
        assert [hint.count for hint in hints] == list(range(in_first + in_second, 12))
        assert store.dropped_unreadable["peer"] == in_second
        assert f"{in_second} hints lost" in caplog.text
        assert store.pending("peer") == 12 - in_first - in_second
    finally:
        store.close()


def test_an_old_record_after_a_young_one_ends_the_batch(tmp_path):
    # A wall clock can step back: the window is then not a prefix of the records.
    now = [5_000]
    store = _store(tmp_path, window_ms=1_000, clock_ms=lambda: now[0])
    try:
        assert store.add("peer", 0, b"young", 1)
        now[0] = 3_000
        assert store.add("peer", 0, b"old", 2)
        now[0] = 5_100
        assert store.add("peer", 0, b"young again", 3)
        now[0] = 5_500
        hints, cursor = store.read("peer", 100, 1 << 20)
        assert [hint.payload for hint in hints] == [b"young"]
        assert store.dropped_window["peer"] == 0 and store.pending("peer") == 3
        store.acknowledge("peer", cursor)
        hints, cursor = store.read("peer", 100, 1 << 20)
        assert [hint.payload for hint in hints] == [b"young again"]
        assert store.dropped_window["peer"] == 1 and store.replayed["peer"] == 1
        store.acknowledge("peer", cursor)
        assert store.pending("peer") == 0 and store.replayed["peer"] == 2
    finally:
        store.close()


def test_drop_forgets_a_peer_on_disk(tmp_path):
    _fill(tmp_path, [b"x" * 30] * 9)
    store = _store(tmp_path)
    try:
        _, cursor = store.read("peer", 2, 1 << 20)
        assert store.drop("peer") == 9
        assert not (tmp_path / "peer").exists()
        store.acknowledge("peer", cursor)  # a cursor from before the drop: nothing
        assert store.pending("peer") == 0 and store.replayed["peer"] == 0
        assert store.drop("peer") == 0
    finally:
        store.close()
    store = _store(tmp_path)
    try:
        assert store.targets() == []
    finally:
        store.close()


class _FailingOS:
    """The os module as dyno.hints sees it, with a disk that fails the next write:
    half of it written (``short``), or none (``full``); ``stuck``: ftruncate fails too."""

    def __init__(self, failure: str):
        self.failure = failure
        self.armed = False

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        if not self.armed:
            return os.write(fd, data)
        self.armed = False
        if self.failure == "full":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data[:len(data) // 2])

    def ftruncate(self, fd, size):
        if self.failure == "stuck":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return os.ftruncate(fd, size)


@pytest.mark.parametrize("failure", ["short", "full", "stuck"])
def test_a_failed_write_refuses_that_hint_and_loses_no_other(tmp_path, monkeypatch, caplog, failure):
    failing = _FailingOS(failure)
    monkeypatch.setattr(hints_module, "os", failing)
    store = _store(tmp_path, segment_bytes=1 << 20)
    with caplog.at_level(logging.WARNING, logger="dyno.hints"):
        assert store.add("peer", 0, b"one", 1)
        failing.armed = True
        assert not store.add("peer", 0, b"two", 2)
        assert store.add("peer", 0, b"three", 3)
        assert store.dropped_error["peer"] == 1 and store.stored["peer"] == 2 and store.pending("peer") == 2
        assert [hint.payload for hint in store.read("peer", 10, 1 << 20)[0]] == [b"one", b"three"]
        store.close()
        reason = "No space left on device" if failure == "full" else "short write"
        assert f"hints for peer: hint not stored: {reason}" in caplog.text
        # "stuck": the half record stays; "three" went to a new segment; open cuts it.
        assert len(segment_files(tmp_path, "peer")) == (2 if failure == "stuck" else 1)
        caplog.clear()
        store = _store(tmp_path)
    try:
        assert [hint.payload for hint in store.read("peer", 10, 1 << 20)[0]] == [b"one", b"three"]
        assert ("cut at byte" in caplog.text) is (failure == "stuck")
    finally:
        store.close()


# ---------------------------------------------------------------------------
# The flusher.


async def test_the_flusher_fsyncs_in_a_worker_thread_once_per_round(tmp_path, monkeypatch):
    synced: list[tuple[int, int]] = []  # (inode, thread)
    real_fsync = os.fsync

    def counting_fsync(fd):
        synced.append((os.fstat(fd).st_ino, threading.get_ident()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    store = _store(tmp_path / "hints", segment_bytes=1 << 20)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.flusher, 0.01)
            for index in range(50):  # no checkpoint in between: one round sees all 50
                assert store.add("peer", 0, b"payload", index)
            segment = tmp_path / "hints" / "peer" / "0000000000000001.hints"
            inodes = {segment.stat().st_ino, (tmp_path / "hints" / "peer").stat().st_ino,
                      (tmp_path / "hints").stat().st_ino}
            # (the store counts a round once its worker thread is back: wait for that)
            await wait_until(lambda: inodes <= {inode for inode, _ in synced} and store.synced == 3)
            assert [inode for inode, _ in synced].count(segment.stat().st_ino) == 1
            assert threading.get_ident() not in {thread for _, thread in synced}
            assert store.sync_failures == 0
            # Acknowledging changes the directory (the segment goes): synced too.
            _, cursor = store.read("peer", 100, 1 << 20)
            store.acknowledge("peer", cursor)
            assert not segment.exists()
            await wait_until(lambda: store.synced == 4)
            # With nothing left to sync it waits with no timer; the next hint wakes it.
            await wait_until(lambda: store._flusher_idle.parked)
            assert store.add("peer", 0, b"later", 1)
            later = tmp_path / "hints" / "peer" / "0000000000000002.hints"
            await wait_until(lambda: later.stat().st_ino in {inode for inode, _ in synced})
            nursery.cancel_scope.cancel()
    finally:
        store.close()


async def test_the_flusher_survives_its_directory_disappearing(tmp_path, caplog):
    directory = tmp_path / "hints"
    store = _store(directory)
    try:
        with caplog.at_level(logging.INFO, logger="dyno.hints"):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.flusher, 0.01)
                assert store.add("peer", 0, b"one", 1)
                await wait_until(lambda: store.synced == 3)
                shutil.rmtree(directory)
                assert store.add("peer", 0, b"two", 1)  # into the open segment, now unlinked
                await wait_until(lambda: store.sync_failures == 1)
                assert "could not fsync 1 file(s)" in caplog.text and "power loss" in caplog.text
                assert not store.add("other", 0, b"three", 1)  # no directory to put it in
                assert store.dropped_error == {"peer": 0, "other": 1}
                # Still running: with the directory back, new hints are synced again.
                directory.mkdir()
                assert store.add("other", 0, b"four", 1)
                await wait_until(lambda: store.synced >= 6)
                assert "fsync works again" in caplog.text
                nursery.cancel_scope.cancel()
    finally:
        store.close()


def test_flush_now_and_close_fsync_what_is_dirty(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd)))
    store = _store(tmp_path)
    assert store.add("peer", 0, b"x", 1)
    store.flush_now()
    assert len(synced) == 3
    store.flush_now()  # nothing new
    assert len(synced) == 3
    assert store.add("peer", 0, b"y", 1)
    store.close()
    assert len(synced) == 4
    with pytest.raises(HintStoreError, match="closed"):
        store.add("peer", 0, b"z", 1)


# ---------------------------------------------------------------------------
# Memory mode.


async def test_in_memory_nothing_touches_the_disk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    now = [5_000]
    store = HintStore(None, window_ms=100, max_bytes=200, clock_ms=lambda: now[0], segment_bytes=50)
    for index in range(5):
        assert store.add("peer", 0, b"x" * 20, index)
    assert not store.add("peer", 0, b"x" * 100, 5)
    hints, cursor = store.read("peer", 2, 1 << 20)
    assert [hint.count for hint in hints] == [0, 1]
    store.acknowledge("peer", cursor)
    now[0] += 101
    hints, cursor = store.read("peer", 10, 1 << 20)
    assert hints == [] and store.dropped_window["peer"] == 3 and store.pending("peer") == 0
    store.flush_now()
    with trio.move_on_after(0.05):  # nothing to flush: it just waits
        await store.flusher(0.001)
    store.close()
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------
# A directory that cannot be used: one clear line.


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_file_where_the_directory_should_be(tmp_path):
    path = tmp_path / "hints"
    path.write_text("")
    with pytest.raises(HintStoreError) as error:
        HintStore(path, window_ms=1, max_bytes=1)
    assert _one_line(error) == f"hints directory {path} is not a directory"


def test_a_directory_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "hints"
    with pytest.raises(HintStoreError) as error:
        HintStore(path, window_ms=1, max_bytes=1)
    assert _one_line(error) == f"hints directory {path} cannot be created: Not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to a read-only directory")
def test_a_directory_that_is_not_writable(tmp_path):
    path = tmp_path / "hints"
    path.mkdir(mode=0o500)
    try:
        with pytest.raises(HintStoreError) as error:
            HintStore(path, window_ms=1, max_bytes=1)
        assert _one_line(error) == f"hints directory {path} is not writable: Permission denied"
    finally:
        path.chmod(0o700)


def test_a_directory_another_store_holds(tmp_path):
    first = HintStore(tmp_path, window_ms=1, max_bytes=1)
    try:
        with pytest.raises(HintStoreError) as error:
            HintStore(tmp_path, window_ms=1, max_bytes=1)
        assert "is in use by another process" in _one_line(error)
    finally:
        first.close()
    HintStore(tmp_path, window_ms=1, max_bytes=1).close()
