"""dyno.poller: edge-triggered readability through one private epoll, and
stream.Receiver on top of it (try first, wait only once the socket is drained)."""

from __future__ import annotations

import contextlib

import socket

import pytest
import trio
import trio.testing

from dyno import poller
from dyno.stream import ConnectionLost, Receiver


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


@contextlib.asynccontextmanager
async def watched():
    """A socket pair whose first end is watched, past the first (immediate) wait;
    the watch and both sockets are closed on the way out."""
    a, b = pair()
    with a, b:
        watch = poller.watch(a)
        try:
            await watch.wait()  # returns at once: data may predate the watch
            yield a, b, watch
        finally:
            watch.close()


async def test_a_parked_wait_returns_when_data_arrives():
    async with watched() as (a, b, watch):
        woke = []

        async def waiter():
            await watch.wait()
            woke.append(a.recv(100))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert woke == []  # nothing to read: it stays parked
            b.send(b"hello")
        assert woke == [b"hello"]


async def test_data_arriving_while_busy_is_not_lost():
    """An edge reported while no task waits is kept, so the next wait returns."""
    async with watched() as (a, b, watch):
        b.send(b"x")
        await trio.testing.wait_all_tasks_blocked()  # the poller sees the edge now
        with trio.fail_after(5):
            await watch.wait()
        assert a.recv(10) == b"x"


async def test_a_parked_wait_can_be_cancelled_and_the_watch_reused():
    async with watched() as (a, b, watch):
        with trio.move_on_after(0.05) as scope:
            await watch.wait()
        assert scope.cancelled_caught
        b.send(b"y")
        with trio.fail_after(5):
            await watch.wait()
        assert a.recv(10) == b"y"


async def test_close_wakes_the_waiter_and_a_new_socket_can_take_the_fd():
    a, b = pair()
    watch = poller.watch(a)
    await watch.wait()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.wait)
        await trio.testing.wait_all_tasks_blocked()
        watch.close()
    a.close()
    b.close()
    async with watched() as (c, d, watch):  # very likely the same fd numbers
        d.send(b"z")
        with trio.fail_after(5):
            await watch.wait()
        assert c.recv(10) == b"z"


async def test_receiver_reads_everything_in_chunks_and_reports_the_end():
    a, b = pair()
    with a, b:
        receiver = Receiver(a, 1000, b"-ERR lost\r\n", "closed by the test")
        payload = bytes(range(256)) * 40  # 10240 bytes: full reads, then a short one
        got = bytearray()

        async def reader():
            try:
                while True:
                    got.extend(await receiver.receive())
            except ConnectionLost as exc:
                assert str(exc) == "closed by the test"
                assert exc.reply == b"-ERR lost\r\n"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            b.sendall(payload)
            await trio.testing.wait_all_tasks_blocked()
            b.send(b"tail")
            await trio.testing.wait_all_tasks_blocked()
            b.shutdown(socket.SHUT_WR)
        assert bytes(got) == payload + b"tail"
        receiver.close()


@pytest.mark.parametrize("sockets", [1, 40])
async def test_many_sockets_each_wake_their_own_task(sockets):
    pairs = [pair() for _ in range(sockets)]
    try:
        received = {}

        async def echo(index, sock):
            watch = poller.watch(sock)
            await watch.wait()
            data = b""
            while not data.endswith(b"."):
                try:
                    chunk = sock.recv(100)
                except BlockingIOError:
                    await watch.wait()
                    continue
                data += chunk
            received[index] = data
            watch.close()

        async with trio.open_nursery() as nursery:
            for index, (a, _) in enumerate(pairs):
                nursery.start_soon(echo, index, a)
            await trio.testing.wait_all_tasks_blocked()
            for round_ in range(3):
                for index, (_, b) in enumerate(reversed(pairs)):
                    b.send(b"%d," % round_)
                await trio.testing.wait_all_tasks_blocked()
            for _, b in pairs:
                b.send(b".")
        assert received == {i: b"0,1,2,." for i in range(sockets)}
    finally:
        for a, b in pairs:
            a.close()
            b.close()


async def test_inline_handler_runs_in_the_pollers_task_while_the_waiter_stays_parked():
    async with watched() as (a, b, watch):
        handled = []
        verdicts = [True, True, False]  # handle two reads inline, then wake the task

        def inline() -> bool:
            handled.append((trio.lowlevel.current_task() is not waiter_task, a.recv(100)))
            return verdicts[len(handled) - 1]

        woke = []

        async def waiter():
            await watch.wait(inline)
            woke.append(True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            waiter_task = watch.task
            for n, message in enumerate([b"one", b"two", b"three"]):
                b.send(message)
                await trio.testing.wait_all_tasks_blocked()
                assert len(handled) == n + 1
                assert woke == ([True] if n == 2 else [])
        assert handled == [(True, b"one"), (True, b"two"), (True, b"three")]
        assert watch.inline is None  # a woken task's next wait starts clean


async def test_receiver_serve_hands_every_chunk_over_and_raises_what_the_pollers_read_met():
    a, b = pair()
    with a, b:
        receiver = Receiver(a, 1000, b"-ERR lost\r\n", "closed by the test")
        got = bytearray()

        class Stop(Exception):
            pass

        def handle(data: bytes) -> None:
            got.extend(data)
            if got.endswith(b"!"):
                raise Stop

        payload = bytes(range(256)) * 40  # full reads, then short ones
        with pytest.RaisesGroup(Stop):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receiver.serve, handle)
                await trio.testing.wait_all_tasks_blocked()
                b.sendall(payload)
                await trio.testing.wait_all_tasks_blocked()
                b.send(b"tail")
                await trio.testing.wait_all_tasks_blocked()
                assert bytes(got) == payload + b"tail"
                b.send(b"!")  # the handler raises, in the poller's read or the task's
        receiver.close()

        receiver = Receiver(a, 1000, b"-ERR lost\r\n", "closed by the test")
        with pytest.RaisesGroup(pytest.RaisesExc(ConnectionLost, match="closed by the test")):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receiver.serve, handle)
                await trio.testing.wait_all_tasks_blocked()
                b.shutdown(socket.SHUT_WR)
        receiver.close()


@pytest.mark.parametrize("parked", [True, False], ids=["parked", "busy"])
async def test_data_and_the_end_arriving_together_are_both_seen(parked):
    """The last data and the peer's FIN can come in one edge: a short read then
    does not mean the socket is drained, or the end would go unnoticed until some
    other event (a Redis that replies and closes looked alive until the next
    request was written to it)."""
    a, b = pair()
    with a, b:
        receiver = Receiver(a, 1000, b"-ERR lost\r\n", "closed by the test")
        got = bytearray()
        with pytest.RaisesGroup(pytest.RaisesExc(ConnectionLost, match="closed by the test")):
            with trio.fail_after(5):
                async with trio.open_nursery() as nursery:
                    if parked:
                        nursery.start_soon(receiver.serve, got.extend)
                        await trio.testing.wait_all_tasks_blocked()
                    b.send(b"last words")
                    b.shutdown(socket.SHUT_WR)
                    if not parked:
                        await trio.testing.wait_all_tasks_blocked()  # one edge, seen while no one waits
                        nursery.start_soon(receiver.serve, got.extend)
        receiver.close()
        assert bytes(got) == b"last words"


# -- writers flushed by the poller (dyno.wakeup) ---------------------------------------


async def test_a_read_that_gives_a_writer_work_gets_it_sent_without_waking_the_writer():
    """The writer's turn is made in the poller's task at the end of the dispatch:
    the data is on the wire and the writer task is still parked."""
    from dyno.stream import write_loop
    from dyno.wakeup import Wakeup

    async with watched() as (a, b, watch):
        out_a, out_b = pair()
        with out_a, out_b:
            out: list[bytes] = []
            wakeup = Wakeup()
            turns = []

            def inline() -> bool:  # a read that queues two writes
                data = a.recv(100)
                out.append(data.upper())
                wakeup.set()
                out.append(b"!")
                wakeup.set()
                return True

            async def reader():
                await watch.wait(inline)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_loop, out_a, out, wakeup, b"", lambda: turns.append(1))
                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                parked = wakeup._task
                assert parked is not None and turns == [1]  # the writer's own first turn
                b.send(b"ping")
                await trio.testing.wait_all_tasks_blocked()
                assert out_b.recv(100) == b"PING!"
                assert wakeup._task is parked  # never woken
                assert turns == [1, 1]  # one turn for both writes, made by the poller
                wakeup.set()  # outside a dispatch: wakes the writer as before
                await trio.testing.wait_all_tasks_blocked()
                assert turns == [1, 1, 1]
                nursery.cancel_scope.cancel()


async def test_a_writer_whose_socket_is_full_is_woken_and_sends_the_rest_in_order():
    from dyno.stream import write_loop
    from dyno.wakeup import Wakeup

    async with watched() as (a, b, watch):
        out_a, out_b = pair()
        with out_a, out_b:
            out: list[bytes] = []
            wakeup = Wakeup()
            chunk = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes at once
            chunks = 8

            def inline() -> bool:
                a.recv(100)
                out.extend([chunk] * chunks)
                wakeup.set()
                return True

            async def reader():
                await watch.wait(inline)

            received = bytearray()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_loop, out_a, out, wakeup, b"")
                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                b.send(b"go")
                with trio.fail_after(10):
                    while len(received) < len(chunk) * chunks:
                        await trio.lowlevel.wait_readable(out_b)
                        received += out_b.recv(1 << 20)
                nursery.cancel_scope.cancel()
            assert received == chunk * chunks


async def test_an_idle_task_parks_until_woken_and_a_wake_while_awake_is_not_kept():
    from dyno.wakeup import Idle

    idle = Idle()
    idle.wake()  # nobody parked: nothing kept for later
    rounds = []

    async def worker():
        while True:
            await idle.wait()
            rounds.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
        await trio.testing.wait_all_tasks_blocked()
        assert idle.parked and rounds == []  # the early wake() did not let it through
        idle.wake()
        assert not idle.parked
        idle.wake()  # a second call before it runs: one round, not two
        await trio.testing.wait_all_tasks_blocked()
        assert len(rounds) == 1 and idle.parked
        nursery.cancel_scope.cancel()
