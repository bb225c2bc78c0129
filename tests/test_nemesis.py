"""Nemesis: real processes crash, hang and lose their data while clients write and read (issue 14).

A cluster of 3 racks x 1 node at DC_QUORUM for reads and writes. Client threads, two per
node, write and read a small key space through every node and record each operation in a
`history.History` (ok, fail: an error reply or a refused connection, unknown: a time-out or
a connection lost with the request sent). Meanwhile a seeded nemesis disturbs one rack at a
time (`FAULTS`): kill -9 the dyno node and restart it; SIGSTOP it and SIGCONT it; SIGSTOP
its Redis for less and for more than the nodes' `timeout`; kill -9 its Redis and start an
empty one (no persistence), which only repair can refill. After each fault the rack is
healed, and the next fault waits until the rack is whole again: every node has its Redis and
every peer link up, and no hint is pending. A rack that lost its data is not whole until
repair, which runs only at the end, so after the first empty restart the nemesis disturbs
that rack alone. Then, once hints are delivered, every acknowledged write is on two racks of
three whenever a fault begins, and a quorum read must find it.

At the end: heal everything, stop the clients, wait until no node has a hint pending
(/metrics `dyno_hints_pending`), run `dyno repair` once through one node, and then look
behind dyno's back: every rack's Redis must hold the same keys in db 0 with the same DUMP
and PTTL, and the history checker must find no read older than a write acknowledged before
it began and no rack's final value older than an acknowledged write.

Knobs, for longer runs by hand (the default fits `make test`: about 25 s on 2 cores):
  DYNO_NEMESIS_SEED=<n>     replay one run's faults and the clients' choices, not their timing
  DYNO_NEMESIS_SECONDS=<s>  how long faults are injected (default 20)
  DYNO_NEMESIS_ROUNDS=<n>   stop after n faults instead (whichever comes first)
  DYNO_NEMESIS_KEYS=<n>     size of the key space (default 200)
  DYNO_NEMESIS_RATE=<n>     operations per second of each of the 6 clients (default 50)
Run with `-s` to see the report (operations, outcomes, faults by kind, keys compared).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable

import hiredis
import history
import pytest
import redis
import support
from history import READ, WRITE, History
from prometheus_client.parser import text_string_to_metric_families

integration = pytest.mark.integration

# The nodes' `timeout` (ms): how long a node waits for its Redis or a peer before failing a
# request. Short, so that faults turn into errors quickly; Redis pauses straddle it.
NODE_TIMEOUT_MS = 1000
# How long a client waits for a reply before its outcome is unknown: longer than a node's
# timeout, so a node that is up answers with an error before the client gives up.
NODE_TIMEOUT = NODE_TIMEOUT_MS / 1000
CLIENT_TIMEOUT = 2.5 * NODE_TIMEOUT
CLIENTS_PER_NODE = 2
# Keys are drawn as keys[int(len(keys) * random() ** SKEW)]: a few hot keys, where clients
# race, and a cold tail written a few times a run, where a replica that missed a write or
# lost its data shows until hints or repair bring it back.
SKEW = 2.0
HEAL_TIMEOUT = 30.0  # a disturbed rack back to normal (every node: Redis up, every peer up)
DRAIN_TIMEOUT = 30.0  # hints delivered, replica requests answered
REPAIR_TIMEOUT = 120.0
PTTL_TOLERANCE_MS = 100
HINTS_GAUGE = "dyno_hints_pending"


def knob(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        pytest.fail(f"{name}={value!r}: expected an integer")


# --------------------------------------------------------------------------- the faults


@dataclasses.dataclass(frozen=True)
class Fault:
    """One kind of disturbance of one rack: `inject`, hold for a time drawn from `hold`
    (seconds), then `heal`. A fault that `loses_data` leaves the rack without what it
    held before, which only repair brings back."""

    inject: Callable[[support.NodeHandle], None]
    heal: Callable[[support.NodeHandle], None]
    hold: tuple[float, float]
    loses_data: bool = False


FAULTS: dict[str, Fault] = {
    "kill -9 node, restart": Fault(lambda n: n.kill(), lambda n: n.start(), (0.3, 2.0)),
    # Around the clients' time-out: their requests to the node end as late replies or unknown.
    "SIGSTOP node": Fault(lambda n: n.pause(), lambda n: n.resume(), (0.3, 1.6 * CLIENT_TIMEOUT)),
    "SIGSTOP redis < timeout": Fault(lambda n: n.pause_redis(), lambda n: n.resume_redis(),
                                     (0.1, 0.6 * NODE_TIMEOUT)),
    "SIGSTOP redis > timeout": Fault(lambda n: n.pause_redis(), lambda n: n.resume_redis(),
                                     (1.5 * NODE_TIMEOUT, 2.5 * NODE_TIMEOUT)),
    "kill -9 redis, restart empty": Fault(lambda n: n.kill_redis(), lambda n: n.start_redis(), (0.3, 1.5),
                                          loses_data=True),
}  # fmt: skip


def heal_everything(cluster: support.Cluster) -> None:
    """Whatever state the nemesis left: every Redis and every node running and not paused."""
    for node in cluster.nodes:
        node.resume_redis()
        if not node.redis_alive:
            node.start_redis()
    for node in cluster.nodes:
        node.resume()
        if not node.alive:
            node.start()


# --------------------------------------------------------------------------- clients


def encode(*args: str) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Connection:
    """One RESP connection to a node, answering each call with the outcome the history
    needs: (OK, reply), (FAIL, why) when nothing can have been applied by this call or the
    node said no, (UNKNOWN, why) when the request may have been applied."""

    def __init__(self, addr: tuple[str, int], timeout: float):
        self.addr = addr
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.reader: hiredis.Reader | None = None

    def call(self, *args: str) -> tuple[str, object]:
        if self.sock is None:
            try:
                self.sock = socket.create_connection(self.addr, timeout=self.timeout)
            except OSError as e:
                return history.FAIL, f"connect: {e}"
            self.reader = hiredis.Reader(encoding="utf-8")
        try:
            self.sock.sendall(encode(*args))
            while True:
                reply = self.reader.gets()
                if reply is not False:
                    break
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("connection closed by the node")
                self.reader.feed(data)
        except (OSError, ConnectionError) as e:  # socket.timeout is an OSError
            self.close()
            return history.UNKNOWN, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        if isinstance(reply, hiredis.ReplyError):
            return history.FAIL, str(reply)
        return history.OK, reply

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = self.reader = None


class Client(threading.Thread):
    """Writes (SET key c<id>-<seq>) and reads (GET key) random keys through one node until
    told to stop; every operation goes into the history. An unexpected exception is kept
    in `crash` and stops the test."""

    def __init__(self, id: int, node: support.NodeHandle, keys: list[str], record: History,
                 seed: int, stop: threading.Event, rate: float):  # fmt: skip
        super().__init__(name=f"nemesis-client-{id}", daemon=True)
        self.id = id
        self.rate = rate
        self.node = node
        self.keys = keys
        self.record = record
        self.rng = random.Random(seed)
        self.stop = stop
        self.crash: BaseException | None = None

    def run(self) -> None:
        conn = Connection(self.node.addr, CLIENT_TIMEOUT)
        seq = 0
        try:
            # Paced, not flat out: a key written many times a second is overwritten on every
            # replica right after any fault, which would hide a replica that missed writes.
            while not self.stop.wait(self.rng.expovariate(self.rate)):
                key = self.keys[int(len(self.keys) * self.rng.random() ** SKEW)]
                if self.rng.random() < 0.5:
                    seq += 1
                    self.record.perform(self.id, conn.call, WRITE, key, history.write_value(self.id, seq))
                else:
                    self.record.perform(self.id, conn.call, READ, key)
        except BaseException as e:
            self.crash = e
        finally:
            conn.close()


# --------------------------------------------------------------------------- the cluster's state


def info_dyno(client: redis.Redis) -> dict:
    return client.info("dyno")


def wait_whole(cluster: support.Cluster, admins: list[redis.Redis], timeout: float = HEAL_TIMEOUT) -> None:
    """The disturbed rack is whole again: every node up with its Redis and every peer link,
    and no hint waiting (what the rack missed while down has reached it)."""
    wait_healthy(cluster, admins, timeout)
    wait_hints_drained(cluster, timeout)


def wait_healthy(cluster: support.Cluster, admins: list[redis.Redis], timeout: float = HEAL_TIMEOUT) -> None:
    """Every node answers, with its Redis connected and every peer link up."""

    def healthy() -> bool:
        for info in map(info_dyno, admins):
            if info["datastore_up"] != 1 or info["peers_up"] != info["peers"]:
                return False
        return True

    support.wait_for(healthy, timeout, "every node to have its Redis and every peer up",
                     interval=0.05, ignore=(redis.RedisError,))  # fmt: skip


def settle(admins: list[redis.Redis], timeout: float = DRAIN_TIMEOUT) -> None:
    """No node has a replica request in flight."""
    support.wait_for(lambda: all(info_dyno(a)["peer_requests_in_flight"] == 0 for a in admins), timeout,
                     "every node to have 0 peer_requests_in_flight", interval=0.05)  # fmt: skip


def hints_pending(node: support.NodeHandle) -> dict[str, float]:
    """The node's hints waiting per peer (/metrics `dyno_hints_pending{peer=...}`)."""
    url = f"http://{node.host}:{node.stats_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == HINTS_GAUGE:
            return {s.labels.get("peer", "?"): s.value for s in family.samples}
    raise AssertionError(f"{node.name} exposes no {HINTS_GAUGE} in /metrics")


def wait_hints_drained(cluster: support.Cluster, timeout: float = DRAIN_TIMEOUT) -> str:
    """Wait until no node has a hint pending for any peer; return a line for the report."""
    last: dict[str, dict[str, float]] = {}

    def drained() -> bool:
        last.update({n.name: hints_pending(n) for n in cluster.nodes})
        return not any(any(pending.values()) for pending in last.values())

    started = time.monotonic()
    try:
        support.wait_for(drained, timeout, f"every node's {HINTS_GAUGE} to reach 0", interval=0.1,
                         ignore=(OSError,))  # fmt: skip
    except AssertionError as e:
        raise AssertionError(f"{e}; last seen: {last}") from None
    return f"hints: drained in {time.monotonic() - started:.1f} s"


def run_repair(node: support.NodeHandle) -> str:
    """`dyno repair --node ADMIN` once; a line for the report."""
    argv = [sys.executable, "-m", "dyno", "repair", "--node", f"{node.host}:{node.stats_port}"]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=REPAIR_TIMEOUT)
    assert done.returncode == 0, (
        f"{' '.join(argv)} exited with {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    )
    return f"repair: through {node.name} in {time.monotonic() - started:.1f} s: {done.stdout.strip()[-200:]}"


def rack_content(node: support.NodeHandle) -> dict[str, tuple[bytes, int]]:
    """Every key of db 0 of the node's Redis, read directly: key -> (DUMP, PTTL)."""
    r = node.redis_client()
    out = {}
    for key in r.scan_iter(count=1000):
        out[key.decode()] = (r.dump(key), r.pttl(key))
    return out


def compare_racks(contents: dict[str, dict[str, tuple[bytes, int]]]) -> list[str]:
    """Where the racks' contents differ, one line each (empty: identical)."""
    problems = []
    names = list(contents)
    every_key = set().union(*map(set, contents.values()))
    for name in names:
        missing = sorted(every_key - set(contents[name]))
        if missing:
            problems.append(f"{name} lacks {len(missing)} of {len(every_key)} keys (e.g. {missing[:5]})")
    differing = []
    for key in sorted(every_key):
        held = [contents[name][key] for name in names if key in contents[name]]
        dumps = {dump for dump, _ in held}
        ttls = [ttl for _, ttl in held]
        if len(dumps) > 1 or max(ttls) - min(ttls) > PTTL_TOLERANCE_MS or (min(ttls) < 0 <= max(ttls)):
            differing.append(key)
    if differing:
        problems.append(f"{len(differing)} keys held with different values or expiries "
                        f"(e.g. {differing[:5]})")  # fmt: skip
    return problems


def final_values(node: support.NodeHandle, keys: list[str]) -> dict[str, str | None]:
    r = node.redis_client()
    names = sorted(set(keys) | {k.decode() for k in r.scan_iter(count=1000)})
    return {k: (v.decode() if v is not None else None) for k, v in zip(names, r.mget(names))}


def reasons(ops: list[history.Op]) -> collections.Counter:
    """The errors of the operations that were not ok, addresses and numbers left out."""
    return collections.Counter(re.sub(r"[\d.:]+\d", "N", op.error)[:60] for op in ops if op.error)


def summarize(violations: list[history.Violation], show: int = 5) -> list[str]:
    """Report lines: how many of each rule, and the first few in full."""
    by_rule = collections.Counter(v.rule for v in violations)
    return [f"    {count} x {rule}" for rule, count in by_rule.items()] + [f"    - {v}" for v in violations[:show]]


# --------------------------------------------------------------------------- the test


@dataclasses.dataclass
class Nemesis:
    """The fault schedule of one run, drawn from `rng`, and what it did."""

    rng: random.Random
    faults: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    schedule: list[str] = dataclasses.field(default_factory=list)
    # A rack whose Redis lost its data misses every key not written since, until repair.
    # Disturbing another rack then would leave some acknowledged writes on one replica of
    # three, below a quorum: the nemesis disturbs that rack only, from then on.
    emptied: support.NodeHandle | None = None

    def run(self, cluster: support.Cluster, admins: list[redis.Redis], record: History, seconds: float,
            rounds: int | None, check: Callable[[], None]) -> None:  # fmt: skip
        """Disturb one rack at a time for `seconds` (or `rounds` faults); `check()` between
        faults raises if the clients broke."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and (rounds is None or sum(self.faults.values()) < rounds):
            check()
            kind = self.rng.choice(sorted(FAULTS))
            fault = FAULTS[kind]
            node = self.emptied or self.rng.choice(cluster.nodes)
            self.emptied = node if fault.loses_data else self.emptied
            hold = self.rng.uniform(*fault.hold)
            at = time.monotonic() - record.started
            fault.inject(node)
            self.faults[kind] += 1
            time.sleep(hold)  # the fault's length, not a synchronisation
            fault.heal(node)
            healed = time.monotonic() - record.started
            wait_whole(cluster, admins)
            self.schedule.append(f"  {at:7.3f}-{healed:7.3f} s  {kind:<30} {node.name} (held {hold:.2f} s, "
                                 f"whole again at {time.monotonic() - record.started:.3f} s)")  # fmt: skip
            time.sleep(self.rng.uniform(0.2, 1.0))  # a quiet spell on a healthy cluster, clients busy


@integration
def test_nemesis_every_acknowledged_write_survives_and_racks_converge(cluster_factory):
    seed = knob("DYNO_NEMESIS_SEED", None)
    seed = random.randrange(2**32) if seed is None else seed
    seconds = knob("DYNO_NEMESIS_SECONDS", 20)
    rounds = knob("DYNO_NEMESIS_ROUNDS", None)
    key_count = knob("DYNO_NEMESIS_KEYS", 200)
    rate = knob("DYNO_NEMESIS_RATE", 50)
    print(f"nemesis: DYNO_NEMESIS_SEED={seed} DYNO_NEMESIS_SECONDS={seconds} DYNO_NEMESIS_ROUNDS={rounds or ''} "
          f"DYNO_NEMESIS_KEYS={key_count} DYNO_NEMESIS_RATE={rate}")  # fmt: skip
    rng = random.Random(seed)
    times = [("start", time.monotonic())]

    cluster = cluster_factory(racks=3, nodes_per_rack=1, read_consistency="DC_QUORUM",
                              write_consistency="DC_QUORUM", timeout=NODE_TIMEOUT_MS)  # fmt: skip
    times.append(("cluster up", time.monotonic()))
    admins = [n.client(socket_timeout=1.0) for n in cluster.nodes]
    keys = [f"k{i:04d}" for i in range(key_count)]
    record = History()
    stop = threading.Event()
    clients = [Client(i, cluster.nodes[i % len(cluster)], keys, record, rng.randrange(2**32), stop, rate)
               for i in range(CLIENTS_PER_NODE * len(cluster))]  # fmt: skip
    nemesis = Nemesis(random.Random(rng.randrange(2**32)))

    def clients_fine() -> None:
        crashed = [f"{c.name}: {c.crash!r}" for c in clients if c.crash is not None]
        assert not crashed, f"client threads crashed: {crashed}"

    def warm() -> bool:
        clients_fine()
        return sum(op.outcome == history.OK for op in record.ops) >= 100

    try:
        for c in clients:
            c.start()
        support.wait_for(warm, 20, "the clients' first 100 operations to succeed")
        times.append(("clients warm", time.monotonic()))
        nemesis.run(cluster, admins, record, seconds, rounds, clients_fine)
    finally:
        try:
            heal_everything(cluster)
        finally:
            stop.set()
            for c in clients:
                c.join(CLIENT_TIMEOUT + 10)
    clients_fine()
    assert not any(c.is_alive() for c in clients), "a client thread did not stop"
    times.append(("faults", time.monotonic()))

    wait_healthy(cluster, admins)
    hints = wait_hints_drained(cluster)
    settle(admins)
    repair = run_repair(cluster.nodes[0])
    settle(admins)
    contents = {f"{n.rack} ({n.name})": rack_content(n) for n in cluster.nodes}
    divergence = compare_racks(contents)
    finals = {f"{n.rack} ({n.name})": final_values(n, keys) for n in cluster.nodes}
    read_violations = history.check_reads(record.ops, record.started)
    final_violations = {where: history.check_final(record.ops, final, where, record.started)
                        for where, final in finals.items()}  # fmt: skip
    lost = sum(map(len, final_violations.values()))
    times.append(("hints, repair, checks", time.monotonic()))

    counts = record.counts()
    faults = nemesis.faults
    report = [
        f"nemesis: seed {seed}, {sum(faults.values())} faults of {len(faults)} kinds; "
        + ", ".join(f"{what} {(t - times[i][1]):.1f} s" for i, (what, t) in enumerate(times[1:]))
        + f"; whole test {times[-1][1] - times[0][1]:.1f} s",
        "faults: " + ", ".join(f"{kind} x{n}" for kind, n in sorted(faults.items()))
        + (f"; from {nemesis.emptied.name}'s empty restart on, only {nemesis.emptied.rack} was disturbed"
           if nemesis.emptied else ""),
        "operations: " + ", ".join(f"{kind} {outcome} {counts[kind, outcome]}" for kind in (WRITE, READ)
                                   for outcome in history.OUTCOMES)
        + f" (total {len(record.ops)})",
        "why not ok: " + ", ".join(f"{why!r} x{n}" for why, n in reasons(record.ops).most_common(6)),
        hints,
        repair,
        "keys per rack: " + ", ".join(f"{name} {len(c)}" for name, c in contents.items())
        + f"; key space {key_count}",
        f"racks identical: {'yes' if not divergence else 'NO'}",
        *[f"  {line}" for line in divergence],
        f"reads checked: {counts[READ, history.OK]}, stale or impossible: {len(read_violations)}",
        *summarize(read_violations),
        f"final values checked: {len(finals)} racks x {key_count} keys, violations: {lost}",
        *[line for where, found in final_violations.items() if found
          for line in [f"  {where}: {len(found)}", *summarize(found, 3)]],
        "fault schedule (s since the clients began):",
        *nemesis.schedule,
    ]  # fmt: skip
    print("\n".join(report))
    failed = []
    if read_violations:
        failed.append(f"{len(read_violations)} stale or impossible DC_QUORUM reads")
    if divergence:
        failed.append("racks differ after hints and repair")
    if lost:
        failed.append(f"{lost} final values older than an acknowledged write")
    assert not failed, "; ".join(failed) + f" (replay: DYNO_NEMESIS_SEED={seed})\n" + "\n".join(report)
