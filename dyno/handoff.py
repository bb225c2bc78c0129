"""Hinted handoff: writes a replica did not acknowledge, kept and replayed.

When a replica write fails, or may have (the replica is down, unreachable, timed
out), the coordinator reports it in one place (``Coordinator.write_failed``) with
its target and payload; ``Handoff.failed`` keeps it as a *hint* in the node's
``HintStore`` (``hints_dir``: on disk, fsynced in batches, bounded by
``max_hint_window`` and ``max_hints_size``). ``Handoff.run`` replays each target's
hints, oldest first, as soon as the target can be sent to again (gossip sees it UP
and its link is connected; for the node's own Redis, a connection is up).

A replayed write must not be applied twice (INCR, APPEND, LPUSH ...) nor put an
older value over a newer one: every hinted write carries its version (the stamp
that followed it, dyno.versions), and replay sends each stamped part wrapped in
``APPLY_SEGMENT_IF_NEWER``, which runs a write only where every key it writes had a
recorded version older than the part's. A hint is acknowledged (and gone from the store) only once its target
answered the replay; a replay that fails is tried again later, from the same
hint, which is harmless for the same reason.

Hints for a node of another datacenter (COORDINATE writes whose representative
there was down) are replayed the same way, as writes that node coordinates for
its datacenter. Writes without a stamp (none today but those sent while a node
has a single replica per key, which are never hinted) would be replayed as they
are.

What this module never does: decide consistency (a hint is kept whether or not
the client's write succeeded elsewhere; the level was decided by the coordinator)
or touch a socket (``send`` does).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import hiredis
import trio

from dyno import commands, resp, versions
from dyno.peer import COORDINATE

if TYPE_CHECKING:
    from dyno.hints import HintStore
    from dyno.ring import Ring, RingNode

log = logging.getLogger("dyno.handoff")

#: How often the replay loop looks for targets that came back (it is also woken
#: when gossip sees a peer UP).
REPLAY_TICK = 0.5
#: Hints read and replayed per round trip to the target.
REPLAY_RECORDS = 256
REPLAY_BYTES = 4 << 20
_APPLY = versions.APPLY_SEGMENT_IF_NEWER.strip()
_EVAL = b"EVAL"
# A transaction's brackets: the script that replays its block is atomic already, and
# Redis refuses them inside a script.
_BRACKETS = frozenset({b"multi", b"exec"})


def replay_payload(payload: bytes, db: int, routed: bool = False) -> tuple[bytes, int]:
    """The commands that replay ``payload`` (a hint: writes, each part followed by
    its stamp) where they are newer than what the target has: ``(payload,
    count)``. A stamped part goes as one ``APPLY_SEGMENT_IF_NEWER`` script (so a
    part that wrote a key twice replays both writes, and a transaction's block
    replays atomically), its keys declared. ``routed``: the target coordinates
    what it gets (a COORDINATE hint for another datacenter), whose ring may split
    the part's keys; then a script per group of writes that share keys (which is
    all the two-writes-of-one-key case needs). Unstamped writes go as they are."""
    requests = resp.RequestParser().feed(payload)
    out: list[bytes] = []
    count = 0
    database = b"%d" % db
    for writes, raw, version in versions.segments(requests, payload):
        if version is None:
            out.append(raw)
            count += len(writes)
            continue
        keyed = []
        for argv in writes:
            if argv[0].lower() in _BRACKETS:
                continue
            spec = commands.resolve(argv)
            keyed.append((commands.keys(spec, argv) if spec.__class__ is not bytes else [], argv))
        for group in (_sharing_keys(keyed) if routed else [keyed] if keyed else []):
            keys = list(dict.fromkeys(key for write_keys, _ in group for key in write_keys))
            args: list[bytes] = []
            for write_keys, argv in group:
                args += [b"%d" % len(write_keys), *write_keys, b"%d" % len(argv), *argv]
            out.append(hiredis.pack_command((_EVAL, _APPLY, len(keys), *keys, version, database, *args)))
            count += 1
    return b"".join(out), count


def _sharing_keys(keyed: list[tuple[list[bytes], list[bytes]]]) -> list[list]:
    """The writes grouped so that writes sharing a key (directly or through others)
    are in one group, each group in the writes' order."""
    parent = list(range(len(keyed)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[bytes, int] = {}
    for index, (keys, _) in enumerate(keyed):
        for key in keys:
            if key in owner:
                parent[root(index)] = root(owner[key])
            else:
                owner[key] = index
    groups: dict[int, list] = {}
    for index, write in enumerate(keyed):
        groups.setdefault(root(index), []).append(write)
    return list(groups.values())


class Handoff:
    """Keeps failed replica writes as hints and replays them (module docstring).

    Given by the node: the store; ``ring()``, the ring as the node sees it now;
    ``available(node)``, whether a node can be sent to; ``send(node, payload,
    count, flags)``, an awaitable that sends requests to a node (its Redis, or a
    peer link) and returns the replies joined, raising ``ReplayFailed`` when the
    target did not answer; and the versions database."""

    def __init__(self, store: "HintStore", *, ring: Callable[[], "Ring"],
                 available: Callable[["RingNode"], bool],
                 send: Callable[["RingNode", bytes, int, int], Awaitable[bytes]], versions_db: int):
        self.store = store
        self.ring = ring
        self.available = available
        self.send = send
        self.versions_db = versions_db
        self.replay_failures = 0
        self.full_logged: dict[str, float] = {}
        self._wake = trio.Event()

    def failed(self, node: "RingNode", payload: bytes, count: int, flags: int) -> None:
        """``count`` writes (``payload``) to ``node`` were not acknowledged: keep them."""
        if not self.store.add(node.name, flags, payload, count):
            now = time.monotonic()
            if now - self.full_logged.get(node.name, 0.0) >= 10.0:
                self.full_logged[node.name] = now
                log.warning("hints for %s: max_hints_size reached; further writes to it are not "
                            "hinted (run dyno repair once it is back)", node.name)

    def wake(self) -> None:
        """A peer was seen UP: look for hints to replay now."""
        self._wake.set()

    def describe(self) -> dict[str, dict[str, int]]:
        """Per peer with hints now or since the start: pending (records and bytes),
        stored, replayed, dropped past the window, dropped for want of room
        (/info, /metrics, dyno status)."""
        store = self.store
        names = set(store.targets()) | set(store.stored) | set(store.replayed) | set(store.dropped_window) \
            | set(store.dropped_full)
        return {
            name: {
                "pending": store.pending(name),
                "pending_bytes": store.pending_bytes(name),
                "stored": store.stored.get(name, 0),
                "replayed": store.replayed.get(name, 0),
                "dropped_window": store.dropped_window.get(name, 0),
                "dropped_full": store.dropped_full.get(name, 0),
            }
            for name in sorted(names)
        }

    async def run(self) -> None:
        """Replay the hints of every target that can be sent to, forever."""
        while True:
            with trio.move_on_after(REPLAY_TICK):
                await self._wake.wait()
            self._wake = trio.Event()
            ring = self.ring()  # (pending owners too: a joining node gets its hints before it owns)
            nodes = {node.name: node for node in (*ring.nodes, *ring.pending_nodes)}
            for target in self.store.targets():
                node = nodes.get(target)
                if node is None or not self.available(node):
                    continue
                try:
                    await self.replay(target, node)
                except ReplayFailed as exc:
                    self.replay_failures += 1
                    log.warning("replaying hints to %s failed (%s); will retry", target, exc)
                except Exception:  # a bug must cost this round, not the node
                    self.replay_failures += 1
                    log.exception("replaying hints to %s failed", target)

    async def replay(self, target: str, node: "RingNode") -> int:
        """Replay ``target``'s hints, oldest first, until none is left or it fails.
        Returns how many were replayed."""
        store = self.store
        done = 0
        started = time.monotonic()
        while store.pending(target):
            if not self.available(node):
                break
            hints, cursor = store.read(target, REPLAY_RECORDS, REPLAY_BYTES)
            if not hints:
                break
            # One round trip per flags (COORDINATE hints go as writes the target
            # coordinates, the others straight to its Redis), in the order kept.
            group: list[bytes] = []
            group_flags = hints[0].flags
            for hint in hints:
                if hint.flags != group_flags:
                    await self._send_replay(node, group, group_flags)
                    group, group_flags = [], hint.flags
                group.append(hint.payload)
            await self._send_replay(node, group, group_flags)
            store.acknowledge(target, cursor)  # (the store counts them replayed)
            done += len(hints)
        if done:
            log.info("replayed %d hint(s) to %s in %.1f s", done, target, time.monotonic() - started)
        return done

    async def _send_replay(self, node: "RingNode", payloads: list[bytes], flags: int) -> None:
        if not payloads:
            return
        payload, count = replay_payload(b"".join(payloads), self.versions_db, bool(flags & COORDINATE))
        if not count:
            return
        replies = await self.send(node, payload, count, flags)
        if replies.find(b"-ERR dyno: ") >= 0:
            raise ReplayFailed(_first_error(replies))


class ReplayFailed(Exception):
    """The target did not take a replay (down again, timed out, refused)."""


def _first_error(replies: bytes) -> str:
    start = replies.find(b"-ERR dyno: ")
    end = replies.find(b"\r\n", start)
    return replies[start + 1 : end].decode(errors="replace")
