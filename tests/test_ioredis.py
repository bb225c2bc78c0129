"""ioredis (Node.js), in cluster mode and plain, runs the differential command set
through dyno with the same replies as through a plain Redis.

tests/ioredis_runner.js runs sequences from tests/differential.py (``sequences``)
through an ioredis ``Cluster`` started from the nodes of a 3-rack cluster (it finds its
way by CLUSTER SLOTS), through a plain ioredis ``Redis`` on one node, and through a
plain ``Redis`` on a plain redis-server; the replies are compared as differential.py
compares bytes (unordered sets sorted, TTLs within their tick, DUMPs of sets by their
members). ioredis comes from ``make install`` (.node/); the test skips, saying why,
when node or ioredis is missing."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

import support
from differential import CLOCK_REPLIES, UNORDERED_REPLIES, dump_set_members, format_command, sequences

integration = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
RUNNER = Path(__file__).resolve().parent / "ioredis_runner.js"
IOREDIS = ROOT / ".node" / "node_modules" / "ioredis"


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (apt-get install nodejs)"
    if not IOREDIS.is_dir():
        return f"ioredis is not installed in {IOREDIS.parent} (make install runs npm install ioredis@5 there)"
    return None


class Runner:
    """One ioredis_runner.js process: a sequence in, its replies out."""

    def __init__(self, mode: str, addrs: list[tuple[str, int]]):
        self.what = f"ioredis {mode} on {addrs[0][0]}:{addrs[0][1]}"
        self.process = subprocess.Popen(["node", str(RUNNER), mode, *(f"{h}:{p}" for h, p in addrs)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)

    def run(self, sequence: list[tuple[bytes, ...]]) -> list:
        line = json.dumps([[base64.b64encode(arg).decode() for arg in command] for command in sequence])
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise AssertionError(f"{self.what} ended: {self.process.stderr.read()[-2000:]}")
        return json.loads(answer)

    def close(self) -> None:
        try:
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
            self.process.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


def _bytes(reply) -> bytes | None:
    return base64.b64decode(reply["b"]) if isinstance(reply, dict) and "b" in reply else None


def equivalent(command: tuple[bytes, ...], reference, target) -> bool:
    """As differential.replies_equal, on ioredis's replies."""
    if reference == target:
        return True
    name = command[0].upper()
    if name in UNORDERED_REPLIES and isinstance(reference, list) and isinstance(target, list):
        return sorted(map(json.dumps, reference)) == sorted(map(json.dumps, target))
    if name in CLOCK_REPLIES and isinstance(reference, int) and isinstance(target, int):
        return reference == target if min(reference, target) < 0 else abs(reference - target) <= CLOCK_REPLIES[name]
    if name == b"DUMP":
        a, b = _bytes(reference), _bytes(target)
        return a is not None and b is not None and dump_set_members(a) is not None and \
            dump_set_members(a) == dump_set_members(b)
    return False


@pytest.fixture
def ioredis_cluster(cluster_factory, redis_server):
    """Runners for an ioredis Cluster and a plain ioredis on dyno, and one on plain Redis."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    cluster = cluster_factory(racks=3, hash_tag="{}")
    support.wait_for(lambda: len(cluster[0].client().execute_command("CLUSTER", "SLOTS")[0]) == 5, 15,
                     "gossip to see the other two nodes up")
    runners = {"Cluster": Runner("cluster", cluster.addrs), "Redis": Runner("single", [cluster.addrs[1]]),
               "reference": Runner("single", [redis_server.addr])}
    try:
        yield cluster, redis_server, runners
    finally:
        for runner in runners.values():
            runner.close()


def _reset(cluster, redis_server) -> None:
    support.wait_for(lambda: all(n.client().info("dyno")["peer_requests_in_flight"] == 0 for n in cluster.nodes),
                     10, "replica writes in flight")
    for node in cluster.nodes:
        node.redis_client().flushall()
    redis_server.client().flushall()


@integration
def test_ioredis_cluster_and_plain_run_the_differential_command_set(ioredis_cluster):
    cluster, redis_server, runners = ioredis_cluster
    answered = {"Cluster": 0, "Redis": 0}  # replies that are not errors (ioredis did reach dyno)

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(sequences(max_size=25))
    def check(sequence):
        for client in ("Cluster", "Redis"):
            _reset(cluster, redis_server)
            expected = runners["reference"].run(sequence)
            got = runners[client].run(sequence)
            answered[client] += sum(1 for reply in got if not (isinstance(reply, dict) and "err" in reply))
            for index, command in enumerate(sequence):
                if isinstance(got[index], dict) and "client" in got[index]:
                    continue  # the Cluster client cannot route it (a key is missing): no server saw it
                assert equivalent(command, expected[index], got[index]), (
                    f"ioredis {client} through dyno, command {index} {format_command(command)}: "
                    f"{got[index]!r}, plain Redis: {expected[index]!r}")

    check()
    assert answered["Cluster"] > 100 and answered["Redis"] > 100, answered


@integration
def test_ioredis_cluster_client_sees_every_node_serving_every_slot(ioredis_cluster):
    cluster, redis_server, runners = ioredis_cluster
    sequence = [(b"SET", b"{u}a", b"1"), (b"INCR", b"{u}a"), (b"MSET", b"{u}x", b"1", b"{u}y", b"2"),
                (b"MGET", b"{u}x", b"{u}y", b"{u}a"), (b"CLUSTER", b"KEYSLOT", b"foo")]
    assert runners["Cluster"].run(sequence) == [{"b": "T0s="}, 2, {"b": "T0s="},
                                                [{"b": "MQ=="}, {"b": "Mg=="}, {"b": "Mg=="}], 12182]
    for node in cluster.nodes:  # replicated as any write through dyno
        support.wait_for(lambda node=node: node.redis_client().get("{u}a") == b"2", 10, "every replica")
