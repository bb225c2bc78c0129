"""A transaction dyno refuses runs nothing: what a client sends after MULTI is not
run until EXEC (EXECABORT) or DISCARD, so a client told "failed" finds nothing applied
(issue 16's first finding; transactions themselves are not built yet)."""

from __future__ import annotations

import socket

import pytest
import redis

import support

integration = pytest.mark.integration


def cmd(*argv: str) -> bytes:
    return b"*%d\r\n" % len(argv) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a.encode()) for a in argv)


def lines(sock: socket.socket, count: int) -> list[bytes]:
    data = b""
    while data.count(b"\r\n") < count:
        chunk = sock.recv(65536)
        assert chunk, "closed"
        data += chunk
    return data.split(b"\r\n")[:count]


@integration
@pytest.mark.parametrize("pipelined", [False, True])
def test_nothing_after_a_refused_multi_runs(cluster_factory, pipelined):
    node = cluster_factory(racks=3)[0]
    sock = socket.create_connection((node.host, node.port), timeout=5)
    sent = [cmd("MULTI"), cmd("SET", "txk2", "5"), cmd("INCR", "txk2"), cmd("MULTI"), cmd("EXEC"),
            cmd("GET", "txk2"), cmd("MULTI"), cmd("SET", "txk3", "1"), cmd("DISCARD"), cmd("EXISTS", "txk3")]
    if pipelined:
        sock.sendall(b"".join(sent))
        replies = lines(sock, 10)
    else:
        replies = []
        for command in sent:
            sock.sendall(command)
            replies += lines(sock, 1)
    assert replies[0].startswith(b"-ERR 'MULTI' is not supported")
    assert replies[1].startswith(b"-ERR dyno: not run") and replies[2].startswith(b"-ERR dyno: not run")
    assert replies[3] == b"-ERR MULTI calls can not be nested"
    assert replies[4] == b"-EXECABORT Transaction discarded because of previous errors."
    assert replies[5] == b"$-1"  # GET txk2 after EXEC: nothing was applied, the connection works again
    assert replies[6].startswith(b"-ERR 'MULTI'") and replies[7].startswith(b"-ERR dyno: not run")
    assert replies[8] == b"+OK" and replies[9] == b":0"
    sock.close()
    assert all(n.redis_client().exists("txk2", "txk3") == 0 for n in [node])


@integration
def test_a_redis_py_transaction_pipeline_fails_and_applies_nothing(cluster_factory):
    node = cluster_factory(racks=3)[0]
    client = node.client()
    pipe = client.pipeline()  # transaction=True: MULTI ... EXEC
    pipe.set("txk2", 5)
    pipe.incr("txk2")
    with pytest.raises(redis.ResponseError):
        pipe.execute()
    assert client.get("txk2") is None
    assert client.set("after", 1) and client.get("after") == b"1"
