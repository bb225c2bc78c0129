"""TLS on the client port (client_tls_cert, client_tls_key, client_tls_ca), with real
processes: redis-py and redis-cli speak TLS to dyno nodes, everything else is refused,
and the node goes on serving."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys

import pytest
import redis

import support
from dyno import certs

integration = pytest.mark.integration
SECRET = "s3cret"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """dyno certs: ca.pem, node1..3.pem, client.pem (and their keys)."""
    directory = tmp_path_factory.mktemp("certs")
    certs.write_bundle(directory, 3)
    return directory


@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory):
    """Another CA's certificates: look right, are not ours."""
    directory = tmp_path_factory.mktemp("other-certs")
    certs.write_bundle(directory, 1, cluster="intruder")
    return directory


def tls_client(node: support.NodeHandle, bundle, **kw) -> redis.Redis:
    return node.client(ssl=True, ssl_ca_certs=str(bundle / "ca.pem"), **kw)


def redis_cli(node: support.NodeHandle, *args: str, tls: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(["redis-cli", "-h", node.host, "-p", str(node.port), *tls, *args],
                          capture_output=True, text=True, timeout=30)


def wait_for_log(node: support.NodeHandle, text: str) -> None:
    support.wait_for(lambda: text in node.log_tail(200), timeout=10,
                     what=f"{text!r} in {node.name}'s log")


@integration
def test_redis_py_over_tls_in_a_3_rack_cluster_replicates(cluster_factory, bundle):
    cluster = cluster_factory(racks=3, client_tls=bundle)
    first, *others = cluster.nodes
    assert tls_client(first, bundle).set("tls:k", "v1") is True
    for node in cluster.nodes:  # every node serves TLS, and every rack got the write
        assert tls_client(node, bundle).get("tls:k") == b"v1"
        support.wait_for(lambda node=node: node.redis_client().get("tls:k") == b"v1", timeout=10,
                         what=f"the write on {node.name}'s Redis")
    # Plain connections to the nodes' client ports get nowhere
    with pytest.raises(redis.ConnectionError):
        first.client(socket_timeout=3).ping()


@integration
def test_redis_cli_tls(cluster_factory, bundle):
    node = cluster_factory(racks=1, client_tls=bundle)[0]
    tls = ("--tls", "--cacert", str(bundle / "ca.pem"))
    done = redis_cli(node, "SET", "cli:k", "hello", tls=tls)
    assert (done.returncode, done.stdout.strip()) == (0, "OK"), done.stderr
    done = redis_cli(node, "GET", "cli:k", tls=tls)
    assert done.stdout.strip() == "hello", done.stderr
    # Without --tls redis-cli gets no answer (the node closes the connection)
    done = redis_cli(node, "PING")
    assert "PONG" not in done.stdout
    assert tls_client(node, bundle).get("cli:k") == b"hello"


@integration
def test_a_plaintext_client_is_closed_and_the_node_keeps_serving(cluster_factory, bundle):
    node = cluster_factory(racks=1, client_tls=bundle)[0]
    with socket.create_connection(node.addr, timeout=5) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        try:
            reply = sock.recv(100)
        except ConnectionResetError:
            reply = b""
    assert reply == b""  # closed, not answered
    wait_for_log(node, "not TLS: a plaintext client?")
    assert tls_client(node, bundle).ping() is True
    assert "Traceback" not in node.log_tail(200)


@integration
def test_mutual_tls_wants_a_certificate_of_the_clients_ca(cluster_factory, bundle, other_bundle):
    node = cluster_factory(racks=1, client_tls=bundle, client_tls_ca=str(bundle / "ca.pem"))[0]
    no_certificate = tls_client(node, bundle, socket_timeout=5)
    with pytest.raises(redis.ConnectionError):
        no_certificate.ping()
    wrong_ca = tls_client(node, bundle, socket_timeout=5, ssl_certfile=str(other_bundle / "client.pem"),
                          ssl_keyfile=str(other_bundle / "client-key.pem"))
    with pytest.raises(redis.ConnectionError):
        wrong_ca.ping()
    wait_for_log(node, "PEER_DID_NOT_RETURN_A_CERTIFICATE")
    wait_for_log(node, "CERTIFICATE_VERIFY_FAILED")
    ours = tls_client(node, bundle, ssl_certfile=str(bundle / "client.pem"),
                      ssl_keyfile=str(bundle / "client-key.pem"))
    assert ours.set("mtls:k", "v") is True and ours.get("mtls:k") == b"v"
    done = redis_cli(node, "GET", "mtls:k", tls=("--tls", "--cacert", str(bundle / "ca.pem"),
                                                 "--cert", str(bundle / "client.pem"),
                                                 "--key", str(bundle / "client-key.pem")))
    assert done.stdout.strip() == "v", done.stderr
    done = redis_cli(node, "GET", "mtls:k", tls=("--tls", "--cacert", str(bundle / "ca.pem")))
    assert done.stdout.strip() != "v"


@integration
def test_a_big_pipelined_transfer_through_tls_comes_back_whole(cluster_factory, bundle):
    # 2,000 SETs of 10 KB in one pipeline: many TLS records per read, so decrypted bytes
    # wait inside the SSL object while the socket is empty. A reader that took one short
    # read for "drained" would stall here (the client times out).
    node = cluster_factory(racks=1, client_tls=bundle)[0]
    client = tls_client(node, bundle, socket_timeout=30)
    values = {f"big:{i}": (b"%05d" % i) * 2000 for i in range(2000)}
    pipe = client.pipeline(transaction=False)
    for key, value in values.items():
        pipe.set(key, value)
    assert pipe.execute() == [True] * len(values)
    pipe = client.pipeline(transaction=False)
    for key in values:
        pipe.get(key)
    assert pipe.execute() == list(values.values())
    assert node.redis_client().dbsize() == len(values)


@integration
def test_requirepass_and_tls_together(cluster_factory, bundle):
    node = cluster_factory(racks=1, client_tls=bundle, requirepass=SECRET)[0]
    with pytest.raises(redis.AuthenticationError):
        tls_client(node, bundle).set("auth:k", "v")
    with pytest.raises(redis.AuthenticationError):
        tls_client(node, bundle, password="wrong").set("auth:k", "v")
    client = tls_client(node, bundle, password=SECRET)
    assert client.set("auth:k", "v") is True and client.get("auth:k") == b"v"
    done = redis_cli(node, "GET", "auth:k", tls=("--tls", "--cacert", str(bundle / "ca.pem"),
                                                 "--no-auth-warning", "-a", SECRET))
    assert done.stdout.strip() == "v", done.stderr


# ---------------------------------------------------------------------------- bad files


def node_config(tmp_path, **tls: str) -> str:
    lines = [f"  listen: 127.0.0.1:{support.free_port()}", f"  dyn_listen: 127.0.0.1:{support.free_port()}",
             f"  stats_listen: 127.0.0.1:{support.free_port()}", f"  servers: ['127.0.0.1:{support.free_port()}:1']"]
    lines += [f"  {key}: {value}" for key, value in tls.items()]
    path = tmp_path / "node.yml"
    path.write_text("dyn_o_mite:\n" + "\n".join(lines) + "\n")
    return str(path)


def dyno(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dyno", *args], capture_output=True, text=True, timeout=60)


BAD_FILES = [
    ("missing key", "client_tls_key: no such file"),
    ("key of another certificate", "client_tls_cert/client_tls_key: cannot use"),
    ("CA not PEM", "client_tls_ca: cannot use"),
]


@pytest.mark.parametrize(("case", "expected"), BAD_FILES, ids=[case for case, _ in BAD_FILES])
def test_bad_files_are_one_line_from_check_config_and_start(tmp_path, bundle, case, expected):
    files = {"client_tls_cert": str(bundle / "node1.pem"), "client_tls_key": str(bundle / "node1-key.pem")}
    if case == "missing key":
        files["client_tls_key"] = str(tmp_path / "nope-key.pem")
    elif case == "key of another certificate":
        files["client_tls_key"] = str(bundle / "node2-key.pem")
    else:
        junk = tmp_path / "junk.pem"
        junk.write_text("not a certificate\n")
        files["client_tls_ca"] = str(junk)
    path = node_config(tmp_path, **files)
    for args, prefix in ((("check-config", path), f"Error: {path}: dyn_o_mite."),
                         (("start", "--config", path), f"Error: {path}: cannot start: dyn_o_mite.")):
        done = dyno(*args)
        assert done.returncode == 1, done
        assert done.stderr.startswith(prefix + expected), done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr


def test_check_config_says_the_client_port_speaks_tls(tmp_path, bundle):
    files = {"client_tls_cert": str(bundle / "node1.pem"), "client_tls_key": str(bundle / "node1-key.pem")}
    done = dyno("check-config", node_config(tmp_path, **files))
    assert done.returncode == 0 and "(TLS)" in done.stdout, done
    done = dyno("check-config", node_config(tmp_path, **files, client_tls_ca=str(bundle / "ca.pem")))
    assert done.returncode == 0 and "(TLS, client certificates required)" in done.stdout, done


def test_local_cluster_probes_speak_tls_to_tls_nodes_only(bundle):
    """localcluster's readiness probes: TLS (any certificate) where client_tls_cert is set."""
    from dyno import localcluster

    context = localcluster.probe_tls({"client_tls_cert": str(bundle / "node1.pem")})
    assert context is not None and context.verify_mode == ssl.CERT_NONE
    assert localcluster.probe_tls({}) is None


@integration
def test_maxclients_counts_tls_clients_and_handshakes(cluster_factory, bundle):
    node = cluster_factory(racks=1, client_tls=bundle, maxclients=2)[0]
    context = ssl.create_default_context(cafile=str(bundle / "ca.pem"))

    def connect() -> ssl.SSLSocket:
        sock = socket.create_connection(node.addr, timeout=5)
        return context.wrap_socket(sock, server_hostname=node.host)

    def call(sock: ssl.SSLSocket, payload: bytes) -> bytes:
        sock.sendall(payload)
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data

    first = connect()
    open_ = [first]
    try:
        # the start-up probe's connection is closed, but the node may not have seen it go yet
        support.wait_for(lambda: b"connected_clients:1\r\n" in call(first, b"*2\r\n$4\r\nINFO\r\n$7\r\nclients\r\n"),
                         10, "the first client to be the node's only one")
        open_.append(connect())
        assert call(open_[1], b"*1\r\n$4\r\nPING\r\n") == b"+PONG\r\n"
        with pytest.raises((ssl.SSLError, OSError)):  # closed before its handshake
            extra = connect()
            open_.append(extra)
            if not call(extra, b"*1\r\n$4\r\nPING\r\n"):
                raise ConnectionResetError("closed")
        # (with workers each logs its own share of the node's maxclients)
        wait_for_log(node, "maxclients (2) reached" if support.WORKERS is None else ") reached: refusing clients")
        open_.pop(1).close()

        def accepted() -> bool:
            sock = connect()
            open_.append(sock)
            return call(sock, b"*1\r\n$4\r\nPING\r\n") == b"+PONG\r\n"

        support.wait_for(accepted, 10, "a slot to free up once a client left", ignore=(ssl.SSLError, OSError))
    finally:
        for sock in open_:
            sock.close()
