"""Peer links under abuse (issue 3, DESIGN.md §6), against real dyno processes.

A test here plays a bad peer over a raw socket on a node's dyn_listen port: garbage before
or after the HELLO, a HELLO of another cluster or protocol version; or starts a real node of
another cluster; or hangs a real peer (SIGSTOP). Every time the node must close that one
connection (or fail that one replica), say so in its log, and keep serving its clients and
its real peers.

Frames (dyno/peer.py): msgpack arrays [kind, id, ...]; HELLO [0, 0, {...}], REQUEST
[1, id, flags, payload, n], REPLY [2, id, replies], REFUSED [3, 0, reason], FAILED [5, id, error].
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import weakref
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import support
from dyno import localcluster
from dyno import peer as peer_protocol
from dyno.peer import COORDINATE, FAILED, GOSSIP, HELLO, PROTOCOL_VERSION, QUIET, REFUSED, REPLY, REQUEST

pytestmark = pytest.mark.integration

POOL = "dyn_o_mite"  # the root key localcluster writes: the cluster's name
TIMEOUT_MS = 1000  # the shared cluster's `timeout`


# --------------------------------------------------------------------------- helpers


_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def client_of(node: support.NodeHandle) -> redis.Redis:
    """One reused client per node for polling; no retries, so a dead node shows at once."""
    if node not in _clients:
        _clients[node] = node.client(socket_timeout=5, retry=Retry(NoBackoff(), 0))
    return _clients[node]


def info_dyno(node: support.NodeHandle) -> dict:
    return client_of(node).info("dyno")


def impatient(node: support.NodeHandle, level: str | None = None) -> redis.Redis:
    """One connection, no retries, short timeout: a broken node shows up as an error at once."""
    c = node.client(single_connection_client=True, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    if level:
        assert c.execute_command("DYNO_CONFIG:CONN_CONSISTENCY", level) in (b"OK", True)
    return c


def hello(cluster: str = POOL, version: object = PROTOCOL_VERSION, node: str = "127.0.0.1:1",
          dc: str = "dc1", rack: str = "rack9") -> bytes:  # fmt: skip
    return msgpack.packb([HELLO, 0, {"cluster": cluster, "node": node, "version": version, "dc": dc, "rack": rack}])


def connect(node: support.NodeHandle) -> socket.socket:
    return socket.create_connection((node.host, node.dyn_port), timeout=5)


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> list:
    """Every frame the node sends until it closes the connection; fails if it does not
    close it within `timeout`."""
    unpacker = msgpack.Unpacker(raw=False)
    deadline = time.monotonic() + timeout
    frames = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"the node did not close the connection within {timeout:g} s; it sent {frames!r:.300}")
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            data = b""
        if not data:
            return frames
        unpacker.feed(data)
        frames.extend(unpacker)


def send_until_closed(sock: socket.socket, data: bytes) -> tuple[int, list]:
    """Send ``data`` on ``sock`` and read until the node closes it; our local port
    (the node's log names it) and the frames the node sent. Closes ``sock``."""
    try:
        port = sock.getsockname()[1]
        sock.sendall(data)
        return port, read_until_closed(sock)
    finally:
        sock.close()


def handshake(node: support.NodeHandle) -> socket.socket:
    """A raw peer connection past a valid HELLO (the node's HELLO read back)."""
    sock = connect(node)
    sock.sendall(hello())
    unpacker = msgpack.Unpacker(raw=False)
    sock.settimeout(5)
    while True:
        data = sock.recv(65536)
        assert data, "the node closed a connection with a valid HELLO"
        unpacker.feed(data)
        frames = list(unpacker)
        if frames:
            break
    assert frames[0][0] == HELLO and frames[0][2]["cluster"] == POOL, frames
    return sock


def exchange(node: support.NodeHandle, requests: list) -> list:
    """Send frames through a raw peer connection; the node's answers, one per frame."""
    sock = handshake(node)
    try:
        for frame in requests:
            sock.sendall(msgpack.packb(frame))
        unpacker = msgpack.Unpacker(raw=False)
        frames: list = []
        while len(frames) < len(requests):
            data = sock.recv(65536)
            assert data, "connection closed"
            unpacker.feed(data)
            frames.extend(unpacker)
        return frames
    finally:
        sock.close()


def log_size(node_log: os.PathLike) -> int:
    return Path(node_log).stat().st_size


def log_has(node_log: os.PathLike, *needles: str, after: int = 0, timeout: float = 5.0) -> str:
    """Wait for a line of the log (past byte `after`) containing every needle; return it."""

    def line():
        with open(node_log, "rb") as f:
            f.seek(after)
            new = f.read().decode(errors="replace")
        for text in new.splitlines():
            if all(n in text for n in needles):
                return text
        return None

    return support.wait_for(line, timeout, f"a line with {needles} in {node_log}")


def still_serving(cluster: support.Cluster) -> None:
    """Clients and real peers work: a write through each node reads back through the
    others, and every node has all its peer links up."""

    def all_up() -> bool:
        for n in cluster.nodes:
            assert n.alive, f"{n.name} died:\n{n.log_tail(15)}"
            info = info_dyno(n)
            if info["peers_up"] != info["peers"]:
                return False
        return True

    support.wait_for(all_up, 10, "every peer link up", ignore=(redis.ConnectionError,))
    for i, writer in enumerate(cluster.nodes):
        key = f"serving:{time.monotonic_ns()}:{i}"
        assert impatient(writer).set(key, i)
        for reader in cluster.nodes:
            assert impatient(reader).get(key) == str(i).encode()


# --------------------------------------------------------------------------- clusters


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """3 racks x 1 node, timeout 1000 ms."""
    if support.dyno_missing():
        pytest.skip(support.dyno_missing())
    with support.running_cluster(
        tmp_path_factory.mktemp("peer"), racks=3, nodes_per_rack=1, timeout=TIMEOUT_MS
    ) as cluster:
        yield cluster


# --------------------------------------------------------------------------- 8. garbage


BEFORE_HELLO = {
    "undecodable bytes": b"\xc1" + bytes(range(256)) * 4,
    "http request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "resp command": b"*1\r\n$4\r\nPING\r\n",
    "msgpack map, not a frame": msgpack.packb({"hello": "world"}),
    "msgpack int": msgpack.packb(12345),
    "request before hello": msgpack.packb([REQUEST, 1, 0, b"*1\r\n$4\r\nPING\r\n", 1]),
    "reply before hello": msgpack.packb([REPLY, 1, b"+OK\r\n"]),
    "hello with a list body": msgpack.packb([HELLO, 0, ["cluster", POOL]]),
    "hello without fields": msgpack.packb([HELLO, 0, {}]),
    "array too long": msgpack.packb(list(range(1000))),
    "nesting too deep": b"\x91" * 5000,
    # the start of a 500 MB frame: closed after 64 KB, not buffered for 5 s
    "a huge frame before hello": (b"\x93\x00\x00\x81\xa3pad\xc6" + (500 << 20).to_bytes(4, "big")
                                  + b"x" * (200 << 10)),
}


@pytest.mark.parametrize("garbage", BEFORE_HELLO.values(), ids=BEFORE_HELLO.keys())
def test_garbage_before_hello_closes_that_connection_only(shared, garbage):
    node = shared.nodes[0]
    offset = log_size(node.log)
    port, frames = send_until_closed(connect(node), garbage)
    # At most a REFUSED frame, never a HELLO: the node did not accept us as a peer.
    assert all(f[0] == REFUSED for f in frames if isinstance(f, list)), frames
    line = log_has(node.log, f"127.0.0.1:{port}", after=offset)
    assert "refusing" in line or "disconnecting" in line, line
    still_serving(shared)


AFTER_HELLO = {
    "undecodable bytes": b"\xc1\xc1\xc1",
    "unknown kind": msgpack.packb([9, 9]),
    "request with a string id": msgpack.packb([REQUEST, "one", 0, b"*1\r\n$4\r\nPING\r\n", 1]),
    "request with a text payload": msgpack.packb([REQUEST, 1, 0, "*1\r\n$4\r\nPING\r\n", 1]),
    "reply sent to the server side": msgpack.packb([REPLY, 1, b"+OK\r\n"]),
    "second hello": hello(),
    "not an array": msgpack.packb("hello"),
    "count beyond the payload": msgpack.packb(
        [REQUEST, 1, COORDINATE, b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n", 3]
    ),
}


@pytest.mark.parametrize("garbage", AFTER_HELLO.values(), ids=AFTER_HELLO.keys())
def test_garbage_after_hello_disconnects_that_peer_only(shared, garbage):
    node = shared.nodes[1]
    offset = log_size(node.log)
    port, frames = send_until_closed(handshake(node), garbage)
    assert frames == []
    line = log_has(node.log, f"127.0.0.1:{port}", "disconnecting", after=offset)
    assert "ERROR" in line
    still_serving(shared)


def test_a_well_formed_request_from_a_raw_peer_is_answered(shared):
    """The raw-socket peer speaks the protocol right: so the refusals above are about the
    garbage, not about the test's peer."""
    node = shared.nodes[2]
    node.redis_client().set("raw-peer", "seen")
    frames = exchange(node, [
        [REQUEST, 41, 0, b"*2\r\n$3\r\nGET\r\n$8\r\nraw-peer\r\n", 1],
        [REQUEST, 42, 0, b"*2\r\n$6\r\nEXISTS\r\n$8\r\nraw-peer\r\n", 1],
    ])
    assert frames == [[REPLY, 41, b"$4\r\nseen\r\n"], [REPLY, 42, b":1\r\n"]]


@pytest.mark.parametrize("command", [
    [b"CONFIG", b"SET", b"maxmemory", b"1"], [b"SHUTDOWN", b"NOSAVE"], [b"MODULE", b"LOAD", b"/x.so"],
    [b"DEBUG", b"SLEEP", b"0"], [b"PING"],
])
def test_a_peer_may_run_only_what_replication_sends(shared, command):
    """REQUEST frames carry data commands (and the stamps' SELECT, repair's Lua):
    anything else is refused with a FAILED frame and a log line, and never reaches
    the node's Redis; the connection and the node go on."""
    node = shared.nodes[2]
    node.redis_client().set("guarded", "1")
    before = log_size(node.log)
    payload = b"*%d\r\n" % len(command) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in command)
    frames = exchange(node, [[REQUEST, 61, 0, payload, 1],
                             [REQUEST, 62, 0, b"*2\r\n$3\r\nGET\r\n$7\r\nguarded\r\n", 1]])
    assert frames[0][0] == FAILED and b"peers may not run" in frames[0][2], frames
    assert frames[1] == [REPLY, 62, b"$1\r\n1\r\n"]
    log_has(node.log, "refused a request to run", command[0].decode(), after=before)
    assert node.redis_client().get("guarded") == b"1" and node.redis_client().ping()


def test_batch_and_quiet_requests_from_a_raw_peer_are_answered_as_the_protocol_says(shared):
    """n > 1 requests: a list of the n replies; QUIET: an empty REPLY once all ran."""
    sets = b"*3\r\n$3\r\nSET\r\n$5\r\nquiet\r\n$1\r\n1\r\n*3\r\n$3\r\nSET\r\n$6\r\nquiet2\r\n$1\r\n2\r\n"
    gets = b"*2\r\n$3\r\nGET\r\n$5\r\nquiet\r\n*2\r\n$3\r\nGET\r\n$6\r\nquiet2\r\n"
    frames = exchange(shared.nodes[2], [[REQUEST, 51, QUIET, sets, 2], [REQUEST, 52, 0, gets, 2]])
    assert frames == [[REPLY, 51, b""], [REPLY, 52, [b"$1\r\n1\r\n", b"$1\r\n2\r\n"]]]


def test_a_quiet_frame_whose_replies_are_not_all_ok_is_answered_with_them_joined(shared):
    """The sender keeps a QUIET frame's answer as its writes' echo (a DC_ONE write
    whose answering replica failed is answered from it): b"" stands for all +OK
    only; any other reply makes the answer the replies themselves."""
    incrs = b"*2\r\n$4\r\nINCR\r\n$5\r\necho1\r\n*3\r\n$3\r\nSET\r\n$5\r\necho2\r\n$1\r\nx\r\n"
    frames = exchange(shared.nodes[2], [[REQUEST, 53, QUIET, incrs, 2]])
    assert frames == [[REPLY, 53, b":1\r\n+OK\r\n"]]


def test_a_quiet_coordinate_batch_from_a_raw_peer_reaches_every_rack(shared):
    """Writes a node of another datacenter sends in one frame (COORDINATE, QUIET):
    an empty REPLY once all ran, and every rack of this datacenter holds them."""
    keys = [f"coordinated:{i}".encode() for i in range(40)]
    payload = b"".join(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1\r\n%d\r\n" % (len(k), k, i % 10)
                       for i, k in enumerate(keys))
    frames = exchange(shared.nodes[1], [[REQUEST, 61, COORDINATE | QUIET, payload, len(keys)]])
    assert frames == [[REPLY, 61, b""]]
    support.wait_for(lambda: all(info_dyno(n)["peer_requests_in_flight"] == 0 for n in shared.nodes), 10,
                     "replica writes in flight")
    for n in shared.nodes:
        values = n.redis_client().mget(keys)
        assert values == [str(i % 10).encode() for i in range(len(keys))], n.name


def test_a_coordinate_batch_with_a_read_among_its_writes_refuses_the_read_only(shared):
    """A frame no dyno sends (a GET among the writes, a multi-key write): only
    writes may be coordinated for another datacenter, so the frame is answered
    FAILED for the GET; each command's outcome is still counted once (one
    answer for the frame), and the writes land in every rack."""
    payload = (b"*2\r\n$3\r\nGET\r\n$3\r\ncb0\r\n"
               b"*5\r\n$4\r\nMSET\r\n$3\r\ncb1\r\n$1\r\n1\r\n$3\r\ncb2\r\n$1\r\n2\r\n"
               b"*3\r\n$3\r\nSET\r\n$3\r\ncb3\r\n$1\r\n3\r\n")
    assert exchange(shared.nodes[2], [[REQUEST, 63, COORDINATE | QUIET, payload, 3]]) == [
        [FAILED, 63, b"-ERR dyno: only writes may be coordinated for another datacenter\r\n"]]
    support.wait_for(lambda: all(info_dyno(n)["peer_requests_in_flight"] == 0 for n in shared.nodes), 10,
                     "replica writes in flight")
    for n in shared.nodes:
        assert n.redis_client().mget(["cb1", "cb2", "cb3"]) == [b"1", b"2", b"3"], n.name


# --------------------------------------------------------------------------- 9. refusals


@pytest.mark.parametrize(
    "frame, reason",
    [
        (hello(cluster="other"), f"cluster 'other', this node belongs to '{POOL}'"),
        (hello(version=PROTOCOL_VERSION + 1),
         f"protocol version {PROTOCOL_VERSION + 1}, this node speaks {PROTOCOL_VERSION}"),
        (hello(version="1"), f"protocol version '1', this node speaks {PROTOCOL_VERSION}"),
    ],
    ids=["other cluster", "other protocol version", "version as text"],
)
def test_hello_of_another_cluster_or_version_is_refused(shared, frame, reason):
    node = shared.nodes[0]
    offset = log_size(node.log)
    sock = connect(node)
    port = sock.getsockname()[1]
    try:
        sock.sendall(frame)
        frames = read_until_closed(sock)
    finally:
        sock.close()
    assert frames == [[REFUSED, 0, reason]]
    log_has(node.log, "refusing peer connection", f"127.0.0.1:{port}", reason, after=offset)
    still_serving(shared)


@contextlib.contextmanager
def foreign_node(tmp_path: Path, seed: support.NodeHandle, pool: str) -> Iterator[tuple[Path, int]]:
    """One dyno node (with its own Redis) whose config's root key is `pool` and whose only
    seed is `seed`: a node of another cluster pointed at ours. Yields (its log, its port)."""
    port, dyn_port, stats_port = localcluster.free_ports(3)
    config = tmp_path / "foreign.yml"
    log = tmp_path / "foreign.log"
    tokens = ",".join(map(str, seed.tokens))
    env = dict(os.environ)
    package_root = str(Path(localcluster.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with support.RedisServer(tmp_path / "foreign-redis") as redis_server:
        config.write_text(
            f"{pool}:\n"
            f"  datacenter: dc1\n"
            f"  rack: rack9\n"
            f"  listen: 127.0.0.1:{port}\n"
            f"  dyn_listen: 127.0.0.1:{dyn_port}\n"
            f"  stats_listen: 127.0.0.1:{stats_port}\n"
            f"  servers:\n  - 127.0.0.1:{redis_server.port}:1\n"
            f"  tokens: '0'\n"
            f"  dyn_seeds:\n  - {seed.host}:{seed.dyn_port}:{seed.rack}:{seed.dc}:{tokens}\n"
        )
        argv = [sys.executable, "-m", "dyno", "start", "--config", str(config), "--log-file", str(log)]
        with open(tmp_path / "foreign.err", "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env,
                                    start_new_session=True)  # fmt: skip
        support.TRACKER.track(proc.pid, "foreign dyno node")

        def started() -> bool:
            assert proc.poll() is None, f"the foreign node exited: {(tmp_path / 'foreign.err').read_text()}"
            return support.ping("127.0.0.1", port)

        try:
            support.wait_for(started, 15, "the foreign node to answer PING")
            yield log, port
        finally:
            localcluster.stop_pids([(proc.pid, None)], 10)
            proc.wait()


def test_a_real_node_of_another_cluster_is_refused_and_both_sides_log_it(shared, tmp_path):
    ours = shared.nodes[0]
    offset = log_size(ours.log)
    with foreign_node(tmp_path, ours, "other_pool") as (foreign_log, foreign_port):
        line = log_has(ours.log, "refusing peer connection", "cluster 'other_pool'", f"belongs to '{POOL}'",
                       after=offset)  # fmt: skip
        assert "ERROR" in line
        theirs = log_has(foreign_log, "refused our HELLO", "cluster 'other_pool'", f"belongs to '{POOL}'")
        assert f"{ours.host}:{ours.dyn_port}" in theirs
        foreign = redis.Redis("127.0.0.1", foreign_port, protocol=2, socket_timeout=5)
        try:
            assert foreign.info("dyno")["peers_up"] == 0
        finally:
            foreign.close()
        still_serving(shared)


# --------------------------------------------------------------------------- 10. time-outs


def test_quorum_reads_with_a_hung_peer_ask_the_third_replica_instead_of_waiting(shared):
    """A quorum read goes to this node's Redis and the peer of the next rack; when
    that peer hangs (not yet known to be down) the read is widened to the third
    replica after a few tens of ms, long before the hung one would time out."""
    a, b, c = shared.nodes
    quorum = impatient(a, "DC_QUORUM")
    for i in range(10):
        assert quorum.set(f"hedge:{i}", i)
    widened = client_of(a).info("stats")["quorum_reads_widened"]
    b.pause()  # node1 (rack1) reads from rack2 first
    try:
        for i in range(10):
            start = time.monotonic()
            assert quorum.get(f"hedge:{i}") == str(i).encode()
            assert time.monotonic() - start < TIMEOUT_MS / 1000 / 2, "a quorum read waited for the hung peer"
        assert client_of(a).info("stats")["quorum_reads_widened"] > widened
    finally:
        b.resume()
    support.wait_for(lambda: client_of(a).info("dyno")["peer_requests_in_flight"] == 0, 10,
                     "node1's requests to node2 to be answered or failed")  # fmt: skip


def test_a_hung_peer_fails_its_replica_within_timeout_not_the_node(shared):
    a, b, c = shared.nodes
    offset = log_size(a.log)
    quorum = impatient(a, "DC_QUORUM")
    failures = client_of(a).info("stats")["replica_failures"]
    c.pause()
    try:
        # 2 of 3 racks answer: every write succeeds, without waiting for the hung one.
        for i in range(10):
            start = time.monotonic()
            assert quorum.set(f"hung:{i}", i)
            assert time.monotonic() - start < TIMEOUT_MS / 1000, "a quorum write waited for the hung peer"
        assert impatient(b, "DC_QUORUM").get("hung:3") == b"3"
        # The hung replica's requests fail at their deadline, counted and logged.
        support.wait_for(lambda: client_of(a).info("stats")["replica_failures"] >= failures + 10, 5,
                         "node1 to count the hung replica's time-outs")  # fmt: skip
        log_has(a.log, "timed out", after=offset)
        # Two racks hung: no quorum, a clear error after about `timeout`, not a hang.
        b.pause()
        try:
            start = time.monotonic()
            with pytest.raises(redis.ResponseError) as error:
                quorum.set("lonely", "x")
            elapsed = time.monotonic() - start
            assert "quorum not achieved" in str(error.value) and "timed out" in str(error.value)
            assert TIMEOUT_MS / 1000 * 0.9 <= elapsed < TIMEOUT_MS / 1000 * 3, elapsed
            # The node itself answers at once what it can answer alone.
            start = time.monotonic()
            assert impatient(a, "DC_ONE").get("hung:1") == b"1"
            assert time.monotonic() - start < 0.5
        finally:
            b.resume()
    finally:
        c.resume()
    # Back to normal: the paused nodes applied what was queued for them.
    support.wait_for(lambda: all(info_dyno(n)["peer_requests_in_flight"] == 0 for n in shared.nodes), 10,
                     "no replica request in flight")  # fmt: skip
    for n in (b, c):
        assert n.redis_client().get("hung:9") == b"9"
    assert impatient(c, "DC_SAFE_QUORUM").get("lonely") == b"x"
    still_serving(shared)


# --------------------------------------------------------------------------- peers that break the protocol


def test_request_with_non_integer_flags_disconnects_the_peer_only(cluster_factory):
    cluster = cluster_factory(racks=3, nodes_per_rack=1)
    node = cluster.nodes[0]
    sock = handshake(node)
    try:
        sock.sendall(msgpack.packb([REQUEST, 7, None, b"*1\r\n$4\r\nPING\r\n", 1]))
        read_until_closed(sock)
    finally:
        sock.close()
    assert node.alive, f"the node died:\n{node.log_tail(15)}"
    still_serving(cluster)


def test_coordinate_request_with_unparseable_payload_fails_that_request_only(cluster_factory):
    cluster = cluster_factory(racks=3, nodes_per_rack=1)
    node = cluster.nodes[0]
    sock = handshake(node)
    try:
        sock.sendall(msgpack.packb([REQUEST, 7, 1, b"garbage\r\n", 1]))
        # A FAILED frame for request 7, or a disconnect: either is fine.
        unpacker = msgpack.Unpacker(raw=False)
        sock.settimeout(3)
        try:
            unpacker.feed(sock.recv(65536))
        except (TimeoutError, ConnectionResetError):
            pass
        frames = list(unpacker)
    finally:
        sock.close()
    assert node.alive, f"the node died:\n{node.log_tail(15)}"
    assert all(f[0] == FAILED for f in frames), frames
    still_serving(cluster)


@pytest.mark.parametrize("payload", [b"", b"*2\r\n$3\r\nGET\r\n$1\r\n"], ids=["empty", "incomplete"])
def test_request_payload_that_is_not_one_command_does_not_disturb_clients(cluster_factory, payload):
    cluster = cluster_factory(racks=1, nodes_per_rack=1)
    node = cluster.nodes[0]
    node.redis_client().mset({"a": "1", "b": "2", "c": "3"})
    sock = handshake(node)
    try:
        sock.sendall(msgpack.packb([REQUEST, 7, 0, payload, 1]))
        client = node.client(single_connection_client=True, socket_timeout=1, retry=Retry(NoBackoff(), 0))
        got = []
        for key in "abc":
            try:
                got.append(client.get(key))
            except (redis.TimeoutError, redis.ResponseError) as e:
                got.append(repr(e))
                break
        # Whatever the node does with the bad request (refuse it, disconnect), no client
        # reply may go to the peer, and every client gets its own reply.
        sock.settimeout(0.5)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            data = b""
    finally:
        sock.close()
    assert got == [b"1", b"2", b"3"]
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    assert not [f for f in unpacker if f[0] == REPLY], "a client's reply went to the peer"


def test_reply_with_unhashable_id_disconnects_that_peer_only(cluster_factory):
    """A node's outgoing link meets a bad peer: node3 is killed and the test listens on its
    dyn port, answers the HELLO of whichever node connects, lets it send one request,
    then answers with a REPLY whose id is a map."""
    if support.WORKERS:
        pytest.skip("the fake peer answers one connection; a node of several workers opens one per process")
    cluster = cluster_factory(racks=3, nodes_per_rack=1)
    a, b, c = cluster.nodes
    c.kill()
    by_name = {f"{n.host}:{n.dyn_port}": n for n in (a, b)}
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((c.host, c.dyn_port))
    server.listen()
    server.settimeout(10)
    try:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            unpacker = msgpack.Unpacker(raw=False)
            unpacker.feed(conn.recv(65536))
            (their_hello,) = list(unpacker)
            victim = by_name[their_hello[2]["node"]]
            conn.sendall(hello(node=f"{c.host}:{c.dyn_port}", rack=c.rack))
            support.wait_for(lambda: info_dyno(victim)["peers_up"] == 2, 5, "the link to the fake peer up")
            assert impatient(victim).set("k", "v")  # DC_ONE: one request now pending on the link
            unpacker.feed(conn.recv(65536))
            request = next(unpacker)
            assert request[0] == REQUEST
            conn.sendall(msgpack.packb([REPLY, {"id": request[1]}, b"+OK\r\n"]))
            read_until_closed(conn)
    finally:
        server.close()
    assert victim.alive, f"the node died:\n{victim.log_tail(15)}"
    assert impatient(victim).get("k") == b"v"


# --------------------------------------------------------------------------- cluster_secret


def admin_get(node: support.NodeHandle, path: str) -> str:
    with urllib.request.urlopen(f"http://{node.host}:{node.stats_port}{path}", timeout=5) as reply:
        return reply.read().decode()


@pytest.fixture(scope="module")
def secret_cluster(tmp_path_factory):
    """3 racks x 1 node whose peers prove they know cluster_secret."""
    if support.dyno_missing():
        pytest.skip(support.dyno_missing())
    with support.running_cluster(tmp_path_factory.mktemp("secret"), racks=3, nodes_per_rack=1,
                                 cluster_secret="s3cret") as cluster:
        yield cluster


def _frames(sock: socket.socket, unpacker: msgpack.Unpacker, count: int) -> list:
    frames: list = []
    while len(frames) < count:
        data = sock.recv(65536)
        if not data:
            break
        unpacker.feed(data)
        frames.extend(unpacker)
    return frames



def test_nodes_with_a_cluster_secret_replicate(secret_cluster):
    secret_cluster[0].client().set("with-secret", "1")
    support.wait_for(lambda: all(n.redis_client().get("with-secret") == b"1" for n in secret_cluster.nodes),
                     10, "every rack to get the write")



def test_a_peer_proves_the_secret_and_a_replayed_or_forged_handshake_is_refused(secret_cluster):
    node = secret_cluster[1]
    nonce = b"n" * 16
    # A peer that knows the secret: accepted, its requests answered.
    sock = connect(node)
    sock.sendall(hello() + msgpack.packb([peer_protocol.AUTH, 0, {"nonce": nonce}]))
    unpacker = msgpack.Unpacker(raw=False)
    answer = _frames(sock, unpacker, 2)
    assert answer[0][0] == HELLO and answer[1][0] == peer_protocol.AUTH
    theirs = answer[1][2]["nonce"]
    assert answer[1][2]["proof"] == peer_protocol.proof(b"s3cret", b"server", nonce, theirs)
    recorded = msgpack.packb([peer_protocol.AUTH, 0, {"proof": peer_protocol.proof(b"s3cret", b"client", theirs, nonce)}])
    sock.sendall(recorded + msgpack.packb([REQUEST, 7, 0, b"*2\r\n$3\r\nGET\r\n$3\r\nnil\r\n", 1]))
    assert _frames(sock, unpacker, 1) == [[REPLY, 7, b"$-1\r\n"]]
    sock.close()
    members = len(json.loads(admin_get(node, "/cluster_describe"))["dcs"][0]["racks"])
    # The same handshake replayed (a recorded proof; the node's nonce is new): refused, logged.
    before = log_size(node.log)
    forged_gossip = msgpack.packb([GOSSIP, 0, {"made": "up"}])
    port, frames = send_until_closed(connect(node), hello() + msgpack.packb(
        [peer_protocol.AUTH, 0, {"nonce": nonce}]) + recorded + forged_gossip)
    assert log_has(node.log, "wrong proof of the cluster_secret", after=before)
    # A wrong secret: refused.
    sock = connect(node)
    sock.sendall(hello() + msgpack.packb([peer_protocol.AUTH, 0, {"nonce": nonce}]))
    theirs = _frames(sock, msgpack.Unpacker(raw=False), 2)[1][2]["nonce"]
    before = log_size(node.log)
    send_until_closed(sock, msgpack.packb(
        [peer_protocol.AUTH, 0, {"proof": peer_protocol.proof(b"guess", b"client", theirs, nonce)}]))
    assert log_has(node.log, "wrong proof of the cluster_secret", after=before)
    # No proof at all (a node without cluster_secret): REFUSED, saying why.
    port, frames = send_until_closed(connect(node), hello())
    assert frames[-1][0] == REFUSED and "cluster_secret" in frames[-1][2]
    assert len(json.loads(admin_get(node, "/cluster_describe"))["dcs"][0]["racks"]) == members
    assert node.client().ping()


def test_a_connection_that_has_not_said_hello_cannot_make_the_node_buffer_much(shared):
    """Before its HELLO is whole, a connection may send 64 KB, not a frame's worth."""
    node = shared.nodes[0]
    offset = log_size(node.log)
    start_of_a_huge_hello = b"\x93\x00\x00\x81\xa3pad\xc6" + (500 << 20).to_bytes(4, "big")
    send_until_closed(connect(node), start_of_a_huge_hello + b"x" * (200 << 10))
    assert log_has(node.log, "no complete HELLO frame", after=offset)
    assert node.client().ping()
