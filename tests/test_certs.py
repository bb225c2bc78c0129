"""dyno certs: a CA whose node and client certificates complete a mutual TLS
handshake with the stdlib's ssl, and are refused by a node of another CA."""

from __future__ import annotations

import socket
import ssl
import stat
import threading

import pytest
from click.testing import CliRunner

from dyno import certs
from dyno.cli import main


def _contexts(server_dir, client_dir):
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(server_dir / "node1.pem", server_dir / "node1-key.pem")
    server.load_verify_locations(server_dir / "ca.pem")
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_cert_chain(client_dir / "client.pem", client_dir / "client-key.pem")
    client.load_verify_locations(client_dir / "ca.pem")
    return server, client


def _handshake(server_ctx, client_ctx, server_hostname="localhost"):
    """Both sides' outcome: None, or the error each side saw."""
    left, right = socket.socketpair()
    outcome = {}

    def serve():
        try:
            with server_ctx.wrap_socket(left, server_side=True) as tls:
                outcome["server"] = tls.getpeercert()["subject"]
                tls.sendall(tls.recv(1))
        except (ssl.SSLError, OSError) as exc:
            outcome["server"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(right, server_hostname=server_hostname) as tls:
            outcome["client"] = tls.getpeercert()["subject"]
            tls.sendall(b"x")  # TLS 1.3: the server's verdict on our certificate comes after
            tls.recv(1)
    except (ssl.SSLError, OSError) as exc:
        outcome["client"] = exc
    finally:
        right.close()
        thread.join(10)
    return outcome


def test_a_bundle_makes_a_mutual_tls_handshake(tmp_path):
    paths = certs.write_bundle(tmp_path, 2)
    assert [p.name for p in paths] == certs.bundle_files(2)
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if path.name.endswith("-key.pem") else 0o644), path
    server, client = _contexts(tmp_path, tmp_path)
    outcome = _handshake(server, client)
    assert ((("commonName", "node1"),) in outcome["client"]), outcome
    assert ((("commonName", "client"),) in outcome["server"]), outcome
    # the node certificates name the addresses they were made for
    outcome = _handshake(server, client, server_hostname="127.0.0.1")
    assert not isinstance(outcome["client"], Exception), outcome


def test_a_certificate_of_another_ca_is_refused_both_ways(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    certs.write_bundle(ours, 1)
    certs.write_bundle(theirs, 1)
    server, _ = _contexts(ours, ours)
    _, stranger = _contexts(theirs, theirs)
    outcome = _handshake(server, stranger)  # the client does not trust the server's CA
    assert isinstance(outcome["client"], ssl.SSLCertVerificationError), outcome
    # a client that trusts the server but shows a certificate of another CA
    stranger.load_verify_locations(ours / "ca.pem")
    outcome = _handshake(server, stranger)
    assert isinstance(outcome["server"], ssl.SSLError), outcome


def test_a_host_not_named_is_refused(tmp_path):
    certs.write_bundle(tmp_path, 1, hosts=["db1.example"])
    server, client = _contexts(tmp_path, tmp_path)
    assert not isinstance(_handshake(server, client, "db1.example")["client"], Exception)
    assert isinstance(_handshake(server, client, "localhost")["client"], ssl.SSLCertVerificationError)


def test_cli_writes_refuses_to_overwrite_and_forces(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["certs", "--out", str(tmp_path / "tls"), "--nodes", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tls" / "node3-key.pem").exists()
    ca = (tmp_path / "tls" / "ca.pem").read_bytes()
    result = runner.invoke(main, ["certs", "--out", str(tmp_path / "tls"), "--nodes", "3"])
    assert result.exit_code == 1
    assert "exists (use --force" in result.output and "Traceback" not in result.output
    assert (tmp_path / "tls" / "ca.pem").read_bytes() == ca
    result = runner.invoke(main, ["certs", "--out", str(tmp_path / "tls"), "--nodes", "1", "--force"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tls" / "ca.pem").read_bytes() != ca


@pytest.mark.parametrize("nodes", ["0", "x"])
def test_cli_bad_node_count_is_one_line(tmp_path, nodes):
    result = CliRunner().invoke(main, ["certs", "--out", str(tmp_path), "--nodes", nodes])
    assert result.exit_code == 2 and "Traceback" not in result.output
