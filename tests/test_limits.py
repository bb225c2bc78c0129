"""Limits that keep one client's behaviour from costing the others: maxclients,
1,000 idle connections, a client that sends a command a byte at a time."""

from __future__ import annotations

import socket

import pytest

import support

integration = pytest.mark.integration
PING = b"*1\r\n$4\r\nPING\r\n"


def raw(node: support.NodeHandle) -> socket.socket:
    return socket.create_connection((node.host, node.port), timeout=5)


def reply(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    return data


@integration
def test_maxclients_refuses_one_more_with_redis_error_and_serves_the_others(cluster_factory):
    node = cluster_factory(racks=1, maxclients=3)[0]
    first = raw(node)
    open_ = [first]
    try:
        # the start-up probe's connection is closed, but the node may not have seen it go yet
        def alone() -> bool:
            first.sendall(b"*2\r\n$4\r\nINFO\r\n$7\r\nclients\r\n")
            data = b""
            while b"connected_clients:" not in data or not data.endswith(b"\r\n\r\n"):
                chunk = first.recv(4096)
                assert chunk, "the node closed the first client"
                data += chunk
            return b"connected_clients:1\r\n" in data
        support.wait_for(alone, 10, "the first client to be the node's only one")
        open_ += [raw(node) for _ in range(2)]
        for sock in open_:
            sock.sendall(PING)
            assert reply(sock) == b"+PONG\r\n"
        extra = raw(node)
        assert reply(extra) == b"-ERR max number of clients reached\r\n"
        assert extra.recv(10) == b""  # and closed
        extra.close()
        open_.pop().close()
        def accepted() -> bool:
            sock = raw(node)
            sock.sendall(PING)
            ok = reply(sock) == b"+PONG\r\n"
            if ok:
                open_.append(sock)
            else:
                sock.close()
            return ok
        support.wait_for(accepted, 10, "a slot to free up once a client left")
    finally:
        for sock in open_:
            sock.close()


@integration
def test_a_thousand_idle_connections_and_a_slow_client_do_not_stop_the_others(cluster_factory):
    node = cluster_factory(racks=1)[0]
    idle = []
    slow = raw(node)
    try:
        for _ in range(1000):
            idle.append(raw(node))
        client = node.client()
        command = b"*3\r\n$3\r\nSET\r\n$4\r\nslow\r\n$5\r\nvalue\r\n"
        for index, byte in enumerate(command[:-1]):
            slow.sendall(bytes([byte]))
            if index % 10 == 0:  # meanwhile another client is served at once
                assert client.set(f"other:{index}", index) and client.get(f"other:{index}") == str(index).encode()
        slow.sendall(command[-1:])
        assert reply(slow) == b"+OK\r\n"
        assert client.get("slow") == b"value"
    finally:
        slow.close()
        for sock in idle:
            sock.close()
