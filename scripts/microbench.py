#!/usr/bin/env python3
"""Microbenchmark of dyno's pure hot-path functions: a regression guard that is
reported, never asserted against wall-clock time (issue 6).

Prints microseconds per call for what every request goes through without I/O:
parsing (hiredis fast path), the command table, hashing and ownership on the ring,
quorum decisions, reply scanning and merging. Compare the figures before and after
a change on the same machine:

    .venv/bin/python scripts/microbench.py            # about 10 s
    .venv/bin/python scripts/microbench.py --quick    # about 1 s
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collections import deque  # noqa: E402

from dyno import commands, merge, resp, versions  # noqa: E402
from dyno.consistency import Quorum, QuorumTracker  # noqa: E402
from dyno.coordinator import Coordinator  # noqa: E402
from dyno.metrics import Metrics, Stats  # noqa: E402
from dyno.planner import Planner  # noqa: E402
from dyno.ring import Ring, RingNode, murmur, murmur_many  # noqa: E402

SET = resp.encode_command([b"SET", b"key:000000012345", b"xxx"])
GET = resp.encode_command([b"GET", b"key:000000012345"])
PIPELINE = SET * 16


def _ring(nodes_per_rack: int = 2, hash_name: str = "murmur") -> Ring:
    tokens = [i * (2**32 // nodes_per_rack) for i in range(nodes_per_rack)]
    nodes = [
        RingNode(f"127.0.0.1:{8101 + 10 * i}", "127.0.0.1", 8101 + 10 * i, "dc1", f"rack{r}", (t,))
        for i, (r, t) in enumerate((r, t) for r in (1, 2, 3) for t in tokens)
    ]
    return Ring(nodes, nodes[0], hash_name, b"{}")


def _planner(nodes_per_rack: int, hash_name: str = "murmur") -> Planner:
    return Planner(_ring(nodes_per_rack, hash_name), lambda node: True)


# -- a client's request through the coordinator, without I/O ----------------------------
#
# What a request costs between the parsed read and the bytes its reply is sent as, on
# top of parsing and the sockets: planning, the reply slot, the sinks the replies pass
# through, the replica writes handed to peer links. The targets answer at once, as a
# datastore reader or a peer link would hand the replies over.


class _Client:
    """The attributes of a ClientConnection the coordinator reads (tests/fakes.py's)."""

    def __init__(self) -> None:
        self.id = 1
        self.protocol = 2
        self.consistency_override: dict[str, str] = {}
        self.transaction = self.session = self.blocked = self.held = None
        self.subscriber = self.closing = self.dead = False
        self.replies: deque = deque()
        self.queued = False
        self.ready: list = []


_GET = b"*2\r\n$3\r\nGET\r\n"
_VALUE = resp.bulk(b"xxx")


class _Redis:
    """This node's datastore, answering every request at once (+OK or a value)."""

    up = True

    def send_run(self, payload, sink, count, affinity=0):
        reply = _VALUE if payload.startswith(_GET) else resp.OK
        if count == 1:  # as the datastore's reader hands one reply over
            sink.deliver(reply)
        else:  # (a stamped write's replies: one run)
            sink.deliver_run(reply * count, count)


class _Link:
    """A peer link that takes background writes (their echo is never asked for)."""

    usable = True

    def send_background(self, payload, count, flags=0):
        return None, 0


def _coordinator(racks: int) -> tuple[Coordinator, _Client]:
    nodes = [RingNode(f"127.0.0.1:{8101 + r}", "127.0.0.1", 8101 + r, "dc1", f"rack{r}", (0,))
             for r in range(racks)]
    ring = Ring(nodes, nodes[0], "murmur", b"{}")
    redis = _Redis()
    links = {node.name: _Link() for node in nodes[1:]}
    hlc = versions.HLC(1)
    coordinator = Coordinator(ring, datastore=redis, datastore3=redis, link_of=links.get, admin_down=set(),
                              stats=Stats(), metrics=Metrics(), run_local=None, read_consistency="DC_ONE",
                              write_consistency="DC_ONE", version=hlc.now)
    return coordinator, _Client()


def _executes(racks: int, argv: list[bytes]):
    """One request through execute_batch, its reply slot filled and taken."""
    coordinator, client = _coordinator(racks)
    requests = [argv]
    raw = resp.encode_command(argv)
    execute = coordinator.execute_batch
    replies, ready = client.replies, client.ready

    def run():
        execute(client, requests, raw)
        replies.popleft()
        ready.clear()
        client.queued = False

    return run


def cases() -> dict[str, tuple[callable, int]]:
    """name -> (function to time, requests it stands for)."""
    parser = resp.RequestParser()
    ring = _ring()
    argv = [b"GET", b"key:000000012345"]
    mget_parts = [resp.array([resp.bulk(b"v%d" % i) for i in range(4)]) for _ in range(2)]
    replies = b"+OK\r\n" * 16

    def quorum_general():
        tracker = QuorumTracker("DC_QUORUM", ["dc1"] * 3, "dc1")
        tracker.reply(0, b"+OK\r\n")
        tracker.reply(1, b"+OK\r\n")

    def quorum_part():
        quorum = Quorum("DC_QUORUM", 3, "dc1")
        quorum.reply(0, b"+OK\r\n")
        quorum.reply(1, b"+OK\r\n")

    def quorum_part16():
        quorum = Quorum("DC_QUORUM", 3, "dc1", count=16)
        quorum.reply(0, replies)
        quorum.reply(1, replies)

    three_racks, three_by_two = _planner(1), _planner(2)
    by_four_murmur, by_four_slot = _planner(4), _planner(4, "slot")
    gets16 = [[b"GET", b"key:%012d" % i] for i in range(16)]
    get_one = [argv]
    get_raw = resp.encode_command(argv)
    sets = [[b"SET", b"key:%012d" % i, b"xxx"] for i in range(16)]
    sets_raw = b"".join(map(resp.encode_command, sets))

    def now():
        return 0

    keys160 = [b"key:%012d" % (i * 7919 % 100000) for i in range(160)]
    keys16 = keys160[:16]

    def scan16():
        pos = 0
        while pos < len(replies):
            pos = resp.scan_reply(replies, pos)

    return {
        "parse SET (1 request)": (lambda: parser.feed(SET), 1),
        "parse pipeline of 16 SETs": (lambda: parser.feed(PIPELINE), 16),
        "resolve GET": (lambda: commands.resolve(argv), 1),
        "murmur 16-byte key": (lambda: murmur(b"key:000000012345"), 1),
        "murmur_many, 16 keys of 16 bytes": (lambda: murmur_many(keys16), 16),
        "murmur_many, 160 keys of 16 bytes": (lambda: murmur_many(keys160), 160),
        "token + replicas (2 nodes x 3 racks)": (lambda: ring.replicas(ring.token_of(b"key:000000012345")), 1),
        "QuorumTracker, 2 of 3 agree": (quorum_general, 1),
        "Quorum of one request, 2 of 3 agree": (quorum_part, 1),
        "Quorum of 16 requests, 2 of 3 agree": (quorum_part16, 16),
        "plan a GET, 3 racks": (lambda: three_racks.plan(get_one, get_raw, "DC_ONE", "DC_ONE", now), 1),
        "plan 16 SETs, 3 racks": (lambda: three_racks.plan(sets, sets_raw, "DC_ONE", "DC_ONE", now), 16),
        "plan 16 SETs, 3 racks x 2 nodes": (
            lambda: three_by_two.plan(sets, sets_raw, "DC_QUORUM", "DC_QUORUM", now), 16),
        "replica sets of 16 GETs, 3 racks x 4, murmur": (lambda: by_four_murmur._groups(gets16), 16),
        "replica sets of 16 GETs, 3 racks x 4, hash slot": (lambda: by_four_slot._groups(gets16), 16),
        "scan 16 replies": (scan16, 16),
        "execute a GET, one node (no I/O)": (_executes(1, [b"GET", b"key:000000012345"]), 1),
        "execute a GET, 3 racks DC_ONE (no I/O)": (_executes(3, [b"GET", b"key:000000012345"]), 1),
        "execute a SET, 3 racks DC_ONE (no I/O)": (_executes(3, [b"SET", b"key:000000012345", b"xxx"]), 1),
        "encode SET": (lambda: resp.encode_command([b"SET", b"key:000000012345", b"xxx"]), 1),
        "merge MGET of 2 parts x 4 keys": (
            lambda: merge.merge_mget(mget_parts, [[0, 2, 4, 6], [1, 3, 5, 7]], 8), 8),
    }


def measure(number: int, repeat: int) -> dict[str, float]:
    """Microseconds per request for every case (best of ``repeat``)."""
    results = {}
    for name, (function, requests) in cases().items():
        best = min(timeit.repeat(function, number=number, repeat=repeat))
        results[name] = best / number / requests * 1e6
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (about 1 s)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    number, repeat = (2_000, 3) if args.quick else (20_000, 5)
    results = measure(number, repeat)
    width = max(map(len, results))
    for name, micros in results.items():
        print(f"{name:<{width}}  {micros:8.3f} us/request")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
