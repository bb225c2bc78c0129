"""Limits that keep one client's behaviour from costing the others: maxclients,
1,000 idle connections, a client that sends a command a byte at a time, the request
size limits (proto_max_bulk_len, client_query_buffer_limit) and a client that
pipelines without reading its replies (client_output_buffer_limit)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import redis

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


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def closed_by_node(sock: socket.socket, deadline: float) -> bytes:
    """Everything the node sends until it closes ``sock`` (within ``deadline`` s)."""
    sock.settimeout(deadline)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


@integration
def test_request_size_limits_close_only_the_client_that_passes_them(cluster_factory):
    node = cluster_factory(racks=1, proto_max_bulk_len="2mb", client_query_buffer_limit="1mb")[0]
    other = node.client()
    assert other.set("before", "v")
    # an argument longer than proto_max_bulk_len: refused at its header, as Redis does
    big = raw(node)
    big.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % (2 * 1024 * 1024 + 1))
    assert closed_by_node(big, 10) == b"-ERR Protocol error: invalid bulk length\r\n"
    big.close()
    assert other.get("before") == b"v"
    # an argument within it, but more of an unfinished request than the query buffer takes
    long = raw(node)
    long.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % (2 * 1024 * 1024))
    sent = 0
    try:
        while sent <= 1024 * 1024 + 65536:
            long.sendall(b"x" * 65536)
            sent += 65536
            assert other.set("during", sent) and other.get("during") == str(sent).encode()
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed as soon as the buffer passed the limit, before all this was sent
    assert closed_by_node(long, 10) == b"-ERR Protocol error: client query buffer limit reached\r\n"
    long.close()
    assert other.get("k") is None  # nothing of either ran
    # a request as large as the limits allow still works
    value = b"y" * (1024 * 1024 - 100)
    assert other.set("large", value) and other.get("large") == value


@integration
def test_a_client_that_pipelines_without_reading_is_closed_and_costs_a_bounded_rss(cluster_factory):
    node = cluster_factory(racks=1, client_output_buffer_limit="8mb")[0]
    other = node.client()
    value = b"v" * 100_000
    assert other.set("big", value)
    idle = rss_bytes(node.state.pid)
    # GETs of a 100 KB value: every 64 KB read of requests is ~2,000 replies, 200 MB
    hog = raw(node)
    hog.setblocking(False)
    gets = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n" * 10_000
    peak = idle
    closed = False
    deadline = time.monotonic() + 30
    while not closed:
        assert time.monotonic() < deadline, "the node never closed the client that does not read"
        try:
            hog.send(gets)
        except BlockingIOError:
            pass  # the node stopped reading it (or is still busy with what it read)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        peak = max(peak, rss_bytes(node.state.pid))
        assert other.get("big") == value  # the others are served all along
        if not closed:  # the node may close it while we are not sending
            closed = other.info("clients")["connected_clients"] == 1
    hog.close()
    # what it cost at most: the limit, and the replies to one read of requests in flight
    assert peak - idle < 400 * 1024 * 1024, f"RSS grew by {(peak - idle) >> 20} MiB"
    assert "bytes of replies it has not read (client_output_buffer_limit)" in Path(node.log).read_text()
    assert other.info("stats")["client_output_buffer_limit_disconnections"] == 1
    # what it held is given back: the node's count of unread replies is zero again
    assert other.set("after", 1) and other.get("after") == b"1"


@integration
def test_maxmemory_clients_closes_the_clients_holding_the_most(cluster_factory):
    """Several clients that do not read, each under client_output_buffer_limit, together
    past maxmemory_clients: the biggest are closed until the rest is under it."""
    node = cluster_factory(racks=1, client_output_buffer_limit="64mb", maxmemory_clients="20mb")[0]
    other = node.client()
    value = b"v" * 100_000
    assert other.set("big", value)
    hogs = [raw(node) for _ in range(4)]
    for hog in hogs:
        hog.setblocking(False)
    gets = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n" * 500
    deadline = time.monotonic() + 30
    open_ = set(range(4))
    while other.info("stats")["client_output_buffer_limit_disconnections"] == 0:
        assert time.monotonic() < deadline, "maxmemory_clients never closed anyone"
        for index in list(open_):
            try:
                hogs[index].send(gets)
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                open_.discard(index)
        assert other.get("big") == value
    for hog in hogs:
        hog.close()
    assert "(maxmemory_clients)" in Path(node.log).read_text()
    assert other.ping()


@integration
@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_redis_py_pipeline_that_writes_everything_before_reading_completes(cluster_factory, redis_server,
                                                                              asynchronous):
    """redis-py sends a whole pipeline before it reads a reply: dyno reads on (it used
    to stop at 1 MB of unsent replies, and both sides waited forever)."""
    import asyncio

    import redis.asyncio

    node = cluster_factory(racks=3)[0]
    big = b"b" * 200_000

    def fill(pipe):
        for i in range(300_000):
            pipe.get(f"k{i % 100}")
        for i in range(100):
            pipe.set(f"big{i}", big).get(f"big{i}")
        return pipe

    def run_sync(host, port):
        client = redis.Redis(host, port, socket_timeout=60)
        client.mset({f"k{i}": i for i in range(100)})
        return fill(client.pipeline(transaction=False)).execute()

    async def run_async(host, port):
        client = redis.asyncio.Redis(host=host, port=port, socket_timeout=60)
        try:
            await client.mset({f"k{i}": i for i in range(100)})
            return await fill(client.pipeline(transaction=False)).execute()
        finally:
            await client.aclose()

    def run(host, port):
        return asyncio.run(run_async(host, port)) if asynchronous else run_sync(host, port)

    expected = run(*redis_server.addr)
    assert run(node.host, node.port) == expected
    assert node.client().info("stats")["client_output_buffer_limit_disconnections"] == 0
