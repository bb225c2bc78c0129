"""ClientConnection in this process, given scripted parts: a bug while handling one
client's read costs that client its connection, never the node."""

from __future__ import annotations

import socket

import trio

from dyno import client as client_module
from dyno.client import ClientConnection
from dyno.metrics import Stats
from dyno.peer import Congestion


def given(execute_batch, forgotten: list) -> dict:
    """What a node's listener gives each client connection."""
    return dict(
        execute_batch=execute_batch, congestion=Congestion(), ready=[],
        stats=Stats(), forget=forgotten.append,
    )


async def test_a_bug_in_a_read_the_task_makes_itself_closes_only_that_connection(caplog):
    """The poller's inline read was guarded; the read the client's own task makes
    (after a read that filled the buffer) was not, and its exception ended the node."""
    batches = []

    def execute_batch(client, requests, raw):
        batches.append(len(requests))
        if len(batches) == 2:  # the task's read, after the poller's full one
            raise RuntimeError("a bug")
        for _ in requests:
            slot = client_module.ReplySlot(client, b"+OK\r\n")
            client.replies.append(slot)

    forgotten = []
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    request = b"*1\r\n$4\r\nPING\r\n"
    # More than one read's worth, so the poller's read is full and the task reads on.
    theirs.sendall(request * (client_module.RECV_SIZE // len(request) + 2))
    connection = ClientConnection(ours, ("test", 0), **given(execute_batch, forgotten))
    with trio.fail_after(5):
        await connection.run()  # returns, rather than raising into the node
    assert len(batches) == 2
    assert forgotten == [connection]
    assert "unexpected error; closing the connection" in caplog.text
    assert ours.fileno() == -1
    theirs.close()
