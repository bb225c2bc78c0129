"""Peer TLS (issue 15): peer links authenticate each other with the cluster CA.

Unit tests drive dyno.tlsstream over a socket pair (the session, its Receiver and its
writer loop, through dyno's own poller) and dyno.peer_tls's table. Integration tests
start real nodes: a 3-rack cluster with secure_server_option all replicates; a node
whose certificate another CA signed is refused by the others (and they by it); a
plaintext peer (a hand-made HELLO) to a TLS node is refused and logged; with
secure_server_option datacenter only the links between DCs are TLS; bad files stop
a node with one line; `dyno cluster up --tls` gives a working cluster.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import support
from dyno import certs, localcluster, tls
from dyno.peer import HELLO, PROTOCOL_VERSION, REFUSED, REPLY, REQUEST
from dyno.peer_tls import KEYS, needs_tls
from dyno.stream import ConnectionLost
from dyno.tlsstream import TLSHandshakeError, TLSReceiver, TLSSession, write_loop
from dyno.wakeup import Wakeup

POOL = "dyn_o_mite"


# --------------------------------------------------------------------------- which links


PLACES = st.tuples(st.sampled_from(["dc1", "dc2"]), st.sampled_from(["rack1", "rack2"]))


@given(PLACES, PLACES)
def test_which_links_are_tls_is_dynomites_table(ours, theirs):
    same_dc, same_rack = ours[0] == theirs[0], ours == theirs
    assert needs_tls("none", *ours, *theirs) is False
    assert needs_tls("all", *ours, *theirs) is True
    assert needs_tls("datacenter", *ours, *theirs) is (not same_dc)
    # rack: a rack of the same name in another DC is another rack (Dynomite's is_conn_secured)
    assert needs_tls("rack", *ours, *theirs) is (not same_rack)
    # What a HELLO claims may be anything: a place that is not a string is another place.
    assert needs_tls("rack", *ours, None, ours[1]) and needs_tls("datacenter", *ours, 1, "rack1")


# --------------------------------------------------------------------------- the session


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Two CAs, each with two node certificates: the cluster's and a stranger's."""
    base = tmp_path_factory.mktemp("certs")
    certs.write_bundle(base / "ours", 2)
    certs.write_bundle(base / "theirs", 2)
    return base


def contexts(directory: Path, node: int, ca: Path | None = None) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """What a node with ``directory``'s node<node> certificate uses (trusting ``ca``)."""
    cert, key = str(directory / f"node{node}.pem"), str(directory / f"node{node}-key.pem")
    ca = str(ca or directory / "ca.pem")
    return (tls.server_context(cert, key, ca, names=KEYS),
            tls.client_context(ca, cert, key, check_hostname=False, names=KEYS))


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    for s in (a, b):
        s.setblocking(False)
    return a, b


async def shake(server: ssl.SSLContext, client: ssl.SSLContext):
    a, b = pair()
    sessions = [TLSSession(a, server, server_side=True), TLSSession(b, client, server_side=False)]
    errors = []

    async def run(session):
        try:
            await session.handshake(5)
        except TLSHandshakeError as exc:
            errors.append(str(exc))

    async with trio.open_nursery() as nursery:
        for session in sessions:
            nursery.start_soon(run, session)
    return sessions, errors


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 3 << 20), min_size=1, max_size=6), st.sampled_from([4096, 256 * 1024]))
def test_whatever_is_written_arrives_whole_and_in_order(bundles, sizes, receive_size):
    """Messages up to 3 MB (TLS records are 16 KB: many per read, partial ones at the
    ends) go through the writer loop and come out of the Receiver in order, with
    the poller's edge-triggered waits: nothing is left inside a session unread."""

    async def main():
        (server, client), errors = await shake(contexts(bundles / "ours", 1)[0], contexts(bundles / "ours", 2)[1])
        assert errors == []
        out, wakeup = [], Wakeup()
        receiver = TLSReceiver(server, receive_size, b"-ERR broken\r\n")
        messages = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
        expected = b"".join(messages)
        got = bytearray()
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_loop, client, out, wakeup, b"-ERR broken\r\n")
                for message in messages:
                    out.append(message)
                    wakeup.set()
                    await trio.sleep(0)
                while len(got) < len(expected):
                    got += await receiver.receive()
                nursery.cancel_scope.cancel()
        receiver.close()
        assert bytes(got) == expected
        client.sock.close()
        server.sock.close()

    trio.run(main)


async def test_a_certificate_of_another_ca_fails_the_handshake_saying_why(bundles):
    ours_server, _ = contexts(bundles / "ours", 1)
    _, stranger = contexts(bundles / "theirs", 1, ca=bundles / "ours" / "ca.pem")
    (server, client), errors = await shake(ours_server, stranger)
    # TLS 1.3: the client is done before the server has checked its certificate; the
    # server refuses it, and the client learns it from the alert on its first read.
    assert errors == ["certificate verify failed: unable to get local issuer certificate"]
    receiver = TLSReceiver(client, 65536, b"")
    with pytest.raises(ConnectionLost, match="TLS: .*unknown ca"):
        with trio.fail_after(5):
            await receiver.receive()
    receiver.close()
    # The other way round: our client refuses the stranger's server certificate.
    stranger_server, _ = contexts(bundles / "theirs", 1, ca=bundles / "ours" / "ca.pem")
    _, ours_client = contexts(bundles / "ours", 2)
    _, errors = await shake(stranger_server, ours_client)
    assert "certificate verify failed: unable to get local issuer certificate" in errors


async def test_a_handshake_that_does_not_come_times_out(bundles):
    a, b = pair()
    session = TLSSession(a, contexts(bundles / "ours", 1)[0], server_side=True)
    with pytest.raises(TLSHandshakeError, match="no TLS handshake within 0.2 s"):
        await session.handshake(0.2)
    a.close()
    b.close()


async def test_a_plaintext_peer_closing_during_the_handshake_is_said_in_one_line(bundles):
    a, b = pair()
    session = TLSSession(a, contexts(bundles / "ours", 1)[1], server_side=False)
    b.close()
    with pytest.raises(TLSHandshakeError, match="closed the connection during the TLS handshake|"
                                                "connection failed during the TLS handshake"):
        await session.handshake(5)
    a.close()


# --------------------------------------------------------------------------- helpers (real nodes)


def hello(dc: str = "dc1", rack: str = "rack9", node: str = "127.0.0.1:1") -> bytes:
    return msgpack.packb([HELLO, 0, {"cluster": POOL, "node": node, "version": PROTOCOL_VERSION,
                                     "dc": dc, "rack": rack}])


def frames_until_closed(sock, timeout: float = 5.0) -> list:
    """Every frame the node sends until it closes the connection (fails if it does not)."""
    unpacker = msgpack.Unpacker(raw=False)
    frames: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except (ConnectionResetError, ssl.SSLError):
            return frames
        if not data:
            return frames
        unpacker.feed(data)
        frames.extend(unpacker)
    raise AssertionError(f"the node did not close the connection within {timeout:g} s; it sent {frames!r:.300}")


def first_frames(sock, count: int) -> list:
    unpacker = msgpack.Unpacker(raw=False)
    frames: list = []
    sock.settimeout(5)
    while len(frames) < count:
        data = sock.recv(65536)
        assert data, f"closed after {frames!r}"
        unpacker.feed(data)
        frames.extend(unpacker)
    return frames


def log_size(path) -> int:
    return Path(path).stat().st_size


def log_has(path, *needles: str, after: int = 0, timeout: float = 10.0) -> str:
    def line():
        with open(path, "rb") as f:
            f.seek(after)
            text = f.read().decode(errors="replace")
        return next((t for t in text.splitlines() if all(n in t for n in needles)), None)

    return support.wait_for(line, timeout, f"a line with {needles} in {path}")


def replicated(cluster: support.Cluster, key: str, value: bytes, nodes=None) -> None:
    support.wait_for(lambda: all(n.redis_client().get(key) == value for n in (nodes or cluster.nodes)),
                     10, f"every replica to hold {key}")


def describe(node: support.NodeHandle) -> dict:
    with urllib.request.urlopen(f"http://{node.host}:{node.stats_port}/cluster_describe", timeout=5) as reply:
        return {s["name"]: s for dc in json.loads(reply.read())["dcs"] for rack in dc["racks"]
                for s in rack["servers"]}


def dyn_name(node: support.NodeHandle) -> str:
    return f"{node.host}:{node.dyn_port}"


def tls_socket(node: support.NodeHandle, cert_dir: Path, which: str = "node1") -> ssl.SSLSocket:
    """A raw TLS peer connection with ``cert_dir``'s certificate, trusting the node's CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(str(Path(node.config).parent / "tls" / "ca.pem"))
    context.load_cert_chain(str(cert_dir / f"{which}.pem"), str(cert_dir / f"{which}-key.pem"))
    raw = socket.create_connection((node.host, node.dyn_port), timeout=5)
    return context.wrap_socket(raw)


# --------------------------------------------------------------------------- secure_server_option all


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """3 racks x 1 node, every peer link TLS (localcluster's tls=True: a test CA in DIR/tls)."""
    if support.dyno_missing():
        pytest.skip(support.dyno_missing())
    with support.running_cluster(tmp_path_factory.mktemp("tls"), racks=3, tls="peers") as cluster:
        yield cluster


@pytest.mark.integration
def test_a_tls_cluster_replicates_a_write_to_every_rack(tls_cluster):
    for node in tls_cluster.nodes:
        assert "secure_server_option: all" in Path(node.config).read_text()
        for other in tls_cluster.nodes:
            if other is not node:
                log_has(node.log, f"peer {dyn_name(other)} connected (TLS)")
    assert tls_cluster[0].client().set("tls:key", "v1")
    replicated(tls_cluster, "tls:key", b"v1")
    big = b"x" * (3 << 20)  # many TLS records per frame
    assert tls_cluster[1].client().set("tls:big", big)
    replicated(tls_cluster, "tls:big", big)


@pytest.mark.integration
def test_a_plaintext_peer_to_a_tls_node_is_refused_and_logged(tls_cluster):
    node = tls_cluster[0]
    before = log_size(node.log)
    sock = socket.create_connection((node.host, node.dyn_port), timeout=5)
    port = sock.getsockname()[1]
    try:
        sock.sendall(hello(dc=node.dc, rack=node.rack))  # even claiming the node's own rack
        frames = frames_until_closed(sock)
    finally:
        sock.close()
    reason = (f"plaintext from a peer in {node.dc}/{node.rack}; secure_server_option all requires TLS "
              f"between it and this node ({node.dc}/{node.rack})")
    assert frames == [[REFUSED, 0, reason]]
    line = log_has(node.log, "refusing peer connection from", f"127.0.0.1:{port}", reason, after=before)
    assert "ERROR" in line
    assert node.client().ping()


@pytest.mark.integration
def test_a_tls_peer_needs_a_certificate_the_cluster_ca_signed(tls_cluster, bundles):
    node = tls_cluster[1]
    cluster_certs = Path(node.config).parent / "tls"
    # A certificate the cluster CA signed: a peer (here one that speaks the protocol by hand).
    sock = tls_socket(node, cluster_certs, "node3")
    try:
        sock.sendall(hello() + msgpack.packb([REQUEST, 7, 0, b"*2\r\n$3\r\nGET\r\n$7\r\ntls:key\r\n", 1]))
        frames = first_frames(sock, 2)
        assert frames[0][0] == HELLO and frames[1] == [REPLY, 7, b"$2\r\nv1\r\n"]
    finally:
        sock.close()
    # Another CA's: refused during the handshake, and logged.
    before = log_size(node.log)
    try:
        sock = tls_socket(node, bundles / "theirs", "node1")
        sock.sendall(hello())
        assert frames_until_closed(sock) == []
        sock.close()
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        pass  # the alert may arrive during the handshake already
    log_has(node.log, "refusing peer connection from", "TLS handshake failed: certificate verify failed: "
            "unable to get local issuer certificate", after=before)
    # No certificate at all: refused too.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(str(cluster_certs / "ca.pem"))
    before = log_size(node.log)
    try:
        with context.wrap_socket(socket.create_connection((node.host, node.dyn_port), timeout=5)) as anonymous:
            anonymous.sendall(hello())
            assert frames_until_closed(anonymous) == []
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        pass
    log_has(node.log, "refusing peer connection from", "TLS handshake failed", "certificate", after=before)
    assert node.client().ping()


@pytest.mark.integration
def test_a_node_whose_certificate_another_ca_signed_is_cut_off_both_ways(cluster_factory, bundles):
    cluster = cluster_factory(racks=3, tls="peers")
    bad = cluster[2]
    bad.stop()
    cluster_certs = Path(bad.config).parent / "tls"
    # node3 keeps trusting the cluster CA, but shows a certificate the stranger CA signed.
    shutil.copy(bundles / "theirs" / "node1.pem", cluster_certs / "node3.pem")
    shutil.copy(bundles / "theirs" / "node1-key.pem", cluster_certs / "node3-key.pem")
    sizes = [log_size(n.log) for n in cluster.nodes]
    bad.start()
    good = cluster[0]
    # It connects to us: refused (we check its certificate) ...
    log_has(good.log, "refusing peer connection from", "TLS handshake failed: certificate verify failed",
            after=sizes[0])
    # ... we connect to it: we refuse its server certificate ...
    log_has(good.log, f"peer {dyn_name(bad)}: TLS handshake failed: certificate verify failed", after=sizes[0])
    # ... and it learns why it cannot reach anyone.
    log_has(bad.log, "TLS", "unknown ca", after=sizes[2])
    view = describe(good)
    assert view[dyn_name(bad)]["up"] is False
    assert view[dyn_name(cluster[1])]["up"] is True
    assert bad.client().info("dyno")["peers_up"] == 0
    assert good.client().info("dyno")["peers_up"] == 1
    # The good nodes go on replicating to each other.
    assert good.client().set("tls:cut-off", "1")
    replicated(cluster, "tls:cut-off", b"1", nodes=cluster.nodes[:2])
    assert bad.redis_client().get("tls:cut-off") is None


# --------------------------------------------------------------------------- rack / datacenter


@pytest.mark.integration
def test_datacenter_option_makes_links_between_dcs_tls_and_refuses_a_plaintext_peer_from_another_dc(
        cluster_factory):
    cluster = cluster_factory(dcs=2, racks=2, tls="peers", secure_server_option="datacenter")
    node1 = cluster[0]  # dc1/rack1; node2 dc1/rack2; node3, node4 in dc2
    assert [(n.dc, n.rack) for n in cluster.nodes] == [("dc1", "rack1"), ("dc1", "rack2"),
                                                       ("dc2", "rack1"), ("dc2", "rack2")]
    log_has(node1.log, f"peer {dyn_name(cluster[1])} connected")
    assert "(TLS)" not in log_has(node1.log, f"peer {dyn_name(cluster[1])} connected")
    for remote in cluster.nodes[2:]:
        log_has(node1.log, f"peer {dyn_name(remote)} connected (TLS)")
    assert node1.client().set("dc:key", "1")
    replicated(cluster, "dc:key", b"1")
    # A plaintext peer claiming node1's own DC is taken; one claiming the other DC is not.
    with socket.create_connection((node1.host, node1.dyn_port), timeout=5) as sock:
        sock.sendall(hello(dc="dc1", rack="rack7"))
        assert first_frames(sock, 1)[0][0] == HELLO
    before = log_size(node1.log)
    with socket.create_connection((node1.host, node1.dyn_port), timeout=5) as sock:
        sock.sendall(hello(dc="dc2", rack="rack1"))
        frames = frames_until_closed(sock)
    reason = ("plaintext from a peer in dc2/rack1; secure_server_option datacenter requires TLS between it "
              "and this node (dc1/rack1)")
    assert frames == [[REFUSED, 0, reason]]
    log_has(node1.log, "refusing peer connection from", reason, after=before)


# --------------------------------------------------------------------------- bad files, the CLI


def node_config(tmp_path: Path, redis_port: int, **extra: str) -> Path:
    ports = localcluster.free_ports(3)
    lines = [f"{POOL}:", f"  listen: 127.0.0.1:{ports[0]}", f"  dyn_listen: 127.0.0.1:{ports[1]}",
             f"  stats_listen: 127.0.0.1:{ports[2]}", f"  servers: ['127.0.0.1:{redis_port}:1']"]
    lines += [f"  {key}: {value}" for key, value in extra.items()]
    path = tmp_path / "node.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def dyno(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dyno", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.integration
@pytest.mark.parametrize("problem", ["missing cert", "key of another certificate", "ca not PEM"])
def test_bad_peer_tls_files_stop_the_node_with_one_line(tmp_path, redis_server, bundles, problem):
    ours = bundles / "ours"
    files = {"peer_tls_cert": ours / "node1.pem", "peer_tls_key": ours / "node1-key.pem",
             "peer_tls_ca": ours / "ca.pem"}
    if problem == "missing cert":
        files["peer_tls_cert"] = tmp_path / "nowhere.pem"
        expected = f"peer_tls_cert: no such file ({tmp_path / 'nowhere.pem'})"
    elif problem == "key of another certificate":
        files["peer_tls_key"] = ours / "node2-key.pem"
        expected = "peer_tls_cert/peer_tls_key: cannot use"
    else:
        (tmp_path / "notes.txt").write_text("not a certificate\n")
        files["peer_tls_ca"] = tmp_path / "notes.txt"
        expected = "peer_tls_ca: cannot use"
    config = node_config(tmp_path, redis_server.port, secure_server_option="all",
                         **{key: str(path) for key, path in files.items()})
    for result in (dyno("check-config", str(config)), dyno("start", "--config", str(config))):
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_dyno_cluster_up_tls_gives_a_working_cluster(tmp_path):
    directory = tmp_path / "c"
    support.TRACKER.track_cluster(directory.resolve())
    up = dyno("cluster", "up", "--dir", str(directory), "--racks", "2", "--tls")
    try:
        assert up.returncode == 0, up.stderr
        assert {p.name for p in (directory / "tls").iterdir()} >= {"ca.pem", "node1.pem", "node2-key.pem"}
        nodes = json.loads((directory / "cluster.json").read_text())["nodes"]
        import redis

        clients = []
        for node in nodes:
            assert "secure_server_option: all" in Path(node["config"]).read_text()
            host, port = node["redis"].rsplit(":", 1)
            clients.append(redis.Redis(host, int(port)))
        host, port = nodes[0]["listen"].rsplit(":", 1)
        # the client ports speak TLS too: a plaintext client is closed, one with the CA served
        with pytest.raises(redis.ConnectionError):
            redis.Redis(host, int(port), socket_timeout=5).set("up:tls", "0")
        tls_client = redis.Redis(host, int(port), ssl=True, ssl_ca_certs=str(directory / "tls" / "ca.pem"))
        assert tls_client.set("up:tls", "1")
        support.wait_for(lambda: all(c.get("up:tls") == b"1" for c in clients), 10, "both racks")
        assert "connected (TLS)" in Path(nodes[1]["log"]).read_text()
    finally:
        dyno("cluster", "down", "--dir", str(directory))
