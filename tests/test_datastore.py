"""dyno.datastore against a real redis-server: replies reach their sinks in order,
a sink standing for a run of requests gets them joined (deliver_run), whether a run
arrives in one read or is cut across many, and a lost connection fails what waits."""

from __future__ import annotations

import contextlib

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dyno import resp
from dyno.datastore import Datastore, Sink


class One(Sink):
    def __init__(self):
        self.replies: list[bytes] = []

    def deliver(self, reply: bytes) -> None:
        self.replies.append(reply)


class Run(Sink):
    runs = True

    def __init__(self):
        self.chunks: list[tuple[bytes, int]] = []

    def deliver(self, reply: bytes) -> None:
        self.chunks.append((reply, 1))

    def deliver_run(self, replies: bytes, n: int) -> None:
        self.chunks.append((replies, n))

    @property
    def joined(self) -> bytes:
        return b"".join(chunk for chunk, _ in self.chunks)

    @property
    def count(self) -> int:
        return sum(n for _, n in self.chunks)


@contextlib.asynccontextmanager
async def running(redis_server):
    """A Datastore connected to ``redis_server``, stopped on the way out."""
    store = Datastore(redis_server.host, redis_server.port, timeout=10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.run)
        await wait_until(lambda: store.up)
        yield store
        nursery.cancel_scope.cancel()


async def wait_until(predicate, seconds=10):
    with trio.fail_after(seconds):
        while not predicate():
            await trio.sleep(0.001)


def command(*argv) -> bytes:
    return resp.encode_command([a if isinstance(a, bytes) else str(a).encode() for a in argv])


# Batches of (how they are queued, what their requests are): GETs of values of a size
# (big values cut runs across reads), SETs ('+OK', the one-comparison path of a run),
# and a command that fails (an error among the '+OK's).
SIZES = (0, 1, 100, 70_000)
requests_of_a_batch = st.lists(st.sampled_from([*SIZES, "set", "error"]), min_size=1, max_size=40)
batches = st.lists(
    st.tuples(st.sampled_from(["singles", "repeated", "run"]), requests_of_a_batch), min_size=1, max_size=6
)


def store_values(store) -> None:
    """The values _request's GETs read."""
    for size in SIZES:
        store.send(command("SET", f"v{size}", "x" * size), One())


def _request(value) -> tuple[bytes, bytes]:
    """A request and Redis's reply to it."""
    if value == "set":
        return command("SET", "w", "x"), b"+OK\r\n"
    if value == "error":
        return command("INCR", "v0"), b"-ERR value is not an integer or out of range\r\n"
    return command("GET", f"v{value}"), b"$%d\r\n%s\r\n" % (value, b"x" * value)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=batches)
def test_runs_and_single_replies_reach_their_sinks_in_order(redis_server, batches):
    async def main():
        async with running(redis_server) as store:
            store_values(store)
            expected = []
            for how, batch in batches:
                requests, replies = zip(*map(_request, batch))
                payload = b"".join(requests)
                if how == "singles":
                    singles = [One() for _ in batch]
                    store.send_many(payload, singles)
                    expected.extend((one, reply, 1) for one, reply in zip(singles, replies))
                    continue
                sink = Run()
                if how == "run":  # one FIFO entry for all of them
                    store.send_run(payload, sink, len(batch))
                else:  # the same sink n times
                    store.send_many(payload, [sink] * len(batch))
                expected.append((sink, b"".join(replies), len(batch)))
            await wait_until(lambda: all(
                (s.count if isinstance(s, Run) else len(s.replies)) == n for s, _, n in expected
            ))
            for sink, data, n in expected:
                if isinstance(sink, Run):
                    assert sink.joined == data and sink.count == n
                else:
                    assert sink.replies == [data]

    trio.run(main)


@pytest.mark.parametrize("queued", ["repeated", "run"])
def test_a_run_waiting_when_redis_goes_away_gets_one_failure_per_request(redis_server, queued):
    async def main():
        async with running(redis_server) as store:
            run = Run()
            # BLPOP never answers; the run's three requests wait behind it.
            store.send(command("BLPOP", "nothing", 0), One())
            if queued == "run":
                store.send_run(command("PING") * 3, run, 3)
            else:
                store.send_many(command("PING") * 3, [run] * 3)
            observer = redis_server.client()
            await wait_until(lambda: observer.info("clients")["blocked_clients"] == 1)
            redis_server.stop()
            await wait_until(lambda: run.count == 3)
            assert run.joined == store.broken * 3 or run.joined == store.unavailable * 3

    trio.run(main)


def test_a_run_read_at_once_is_delivered_in_one_call(redis_server):
    async def main():
        async with running(redis_server) as store:
            run = Run()
            store.send_many(command("PING") * 10, [run] * 10)
            await wait_until(lambda: run.count == 10)
            assert run.joined == b"+PONG\r\n" * 10
            assert max(n for _, n in run.chunks) > 1  # not one call per reply

    trio.run(main)


class Raising(Sink):
    def deliver(self, reply: bytes) -> None:
        raise RuntimeError("a bug in a sink")


def test_a_sink_that_raises_costs_its_connection_a_reconnect_not_the_node(redis_server, caplog):
    async def main():
        async with running(redis_server) as store:
            after = One()
            store.send(command("PING"), Raising())
            store.send(command("PING"), after)  # failed with the connection, not lost
            await wait_until(lambda: after.replies)
            assert after.replies == [store.broken]
            await wait_until(lambda: store.up)  # reconnected
            again = One()
            store.send(command("PING"), again)
            await wait_until(lambda: again.replies)
            assert again.replies == [b"+PONG\r\n"]
        assert "unexpected error; reconnecting" in caplog.text

    trio.run(main)


def test_runs_of_ok_replies_back_to_back_each_get_their_own(redis_server):
    """Runs of writes whose '+OK's arrive in one read: each run takes only its own."""
    async def main():
        async with running(redis_server) as store:
            runs = [Run() for _ in range(3)]
            for run, n in zip(runs, (2, 3, 4)):
                store.send_run(command("SET", "k", "v") * n, run, n)
            last = One()
            store.send(command("SET", "k", "v"), last)
            await wait_until(lambda: last.replies)
            assert [run.count for run in runs] == [2, 3, 4]
            assert [run.joined for run in runs] == [b"+OK\r\n" * n for n in (2, 3, 4)]
            assert last.replies == [b"+OK\r\n"]

    trio.run(main)


class Parts(Sink):
    runs = True
    split = True

    def __init__(self):
        self.parts: list[bytes] = []

    def deliver(self, reply: bytes) -> None:
        self.parts.append(reply)

    def deliver_parts(self, replies: list[bytes]) -> None:
        self.parts.extend(replies)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=st.lists(requests_of_a_batch, min_size=1, max_size=4))
def test_a_run_that_wants_its_replies_apart_gets_each_one(redis_server, runs):
    async def main():
        async with running(redis_server) as store:
            store_values(store)
            expected = []
            for batch in runs:
                requests, replies = zip(*map(_request, batch))
                sink = Parts()
                store.send_run(b"".join(requests), sink, len(batch))
                expected.append((sink, list(replies)))
            await wait_until(lambda: all(len(s.parts) == len(r) for s, r in expected))
            for sink, replies in expected:
                assert sink.parts == replies

    trio.run(main)
