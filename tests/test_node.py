"""One dyno node with real processes around it: real clients, real faults.

Every test here starts a real redis-server and a real dyno node (`python -m dyno start`)
through the harness in support.py, and talks to them the way users do: redis-cli, redis-py,
raw sockets (for what a well-behaved client library never sends), many concurrent clients.
Faults are real too: a client vanishing mid-pipeline, Redis SIGKILLed or frozen under load,
SIGTERM to the node, a client that stops reading. Nothing waits on a sleep: every wait is a
condition with a deadline (`support.wait_for`, socket time-outs, `trio.fail_after`).

Where the node must behave exactly like Redis (redis-cli output, protocol errors), the same
input goes to a plain redis-server and the bytes are compared, so the expectation is Redis's
own behaviour rather than a copy of it written here.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import uuid
import subprocess
import sys
import threading
import time
from pathlib import Path

import hiredis
import pytest
import redis
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

import dyno
import support
from dyno import localcluster
from support import HOST, wait_for

pytestmark = pytest.mark.integration

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]
# The node processes import the same dyno package as this test process.
PACKAGE_ROOT = str(Path(dyno.__file__).resolve().parents[1])


# --------------------------------------------------------------------------- helpers


def command(*args: object) -> bytes:
    """One request in canonical RESP (what every client library sends)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def error_line(message: str) -> bytes:
    return b"-" + message.encode() + b"\r\n"


def unavailable(node: support.NodeHandle) -> str:
    return f"ERR dyno: datastore {node.host}:{node.redis_port} is unavailable"


class Raw:
    """A client on a bare socket: sends any bytes, reads replies with a deadline."""

    def __init__(self, addr: tuple[str, int], timeout: float = 10.0):
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.timeout = timeout

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def replies(self, count: int) -> tuple[list[object], bytes]:
        """Read until `count` complete replies arrived: (parsed replies, raw bytes)."""
        reader = hiredis.Reader()
        parsed: list[object] = []
        raw = bytearray()
        deadline = time.monotonic() + self.timeout
        while len(parsed) < count:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                raise AssertionError(
                    f"only {len(parsed)} of {count} replies within {self.timeout:g} s: {bytes(raw[:300])!r}"
                ) from None
            if not data:
                raise AssertionError(f"connection closed after {len(parsed)} of {count} replies: {bytes(raw[:300])!r}")
            raw += data
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                parsed.append(reply)
        return parsed, bytes(raw)

    def call(self, *args: object) -> object:
        self.send(command(*args))
        return self.replies(1)[0][0]

    def until_closed(self) -> bytes:
        """Everything the server sends until it closes the connection (within the deadline)."""
        return read_until_closed(self.sock, self.timeout)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    out = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"connection still open after {timeout:g} s; got {bytes(out[:300])!r}")
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return bytes(out)
        if not data:
            return bytes(out)
        out += data


def info_field(client: redis.Redis, section: str, field: str) -> object:
    return client.info(section)[field]


def no_retry_client(node: support.NodeHandle, **kw) -> redis.Redis:
    return node.client(retry=Retry(NoBackoff(), 0), **kw)


def dyno_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "dyno", *args]


def dyno_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return env


# --------------------------------------------------------------------------- 1. redis-cli


def run_redis_cli(port: int, stdin: bytes, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["redis-cli", "-h", HOST, "-p", str(port), *args], input=stdin, capture_output=True, timeout=60
    )


def test_redis_cli_with_a_file_of_commands_prints_what_redis_prints(redis_server, dyno_node):
    commands = (DATA / "commands.txt").read_bytes()
    expected = run_redis_cli(redis_server.port, commands)
    got = run_redis_cli(dyno_node.port, commands)
    assert expected.returncode == 0 and b"hello WORLD" in expected.stdout, expected  # the file is meaningful
    assert b"WRONGTYPE" in expected.stdout and b"unknown command" in expected.stdout
    assert got.stderr == expected.stderr
    assert got.stdout.splitlines() == expected.stdout.splitlines()
    assert got.returncode == expected.returncode


def pipe_payload(count: int) -> tuple[bytes, int]:
    """RESP for `redis-cli --pipe`: writes over every type, and some that fail (WRONGTYPE)."""
    rng = random.Random(7)
    parts = []
    errors = 0
    for i in range(count):
        kind = i % 8
        if kind == 0:
            parts.append(command("SET", f"pipe:s:{i % 997}", f"v{i}"))
        elif kind == 1:
            parts.append(command("INCRBY", f"pipe:n:{i % 13}", rng.randint(-5, 5)))
        elif kind == 2:
            parts.append(command("HSET", f"pipe:h:{i % 17}", f"f{i % 50}", i))
        elif kind == 3:
            parts.append(command("RPUSH", f"pipe:l:{i % 11}", i))
        elif kind == 4:
            parts.append(command("SADD", f"pipe:set:{i % 7}", i % 300))
        elif kind == 5:
            parts.append(command("ZADD", f"pipe:z:{i % 5}", rng.random(), f"m{i % 400}"))
        elif kind == 6:
            parts.append(command("PFADD", "pipe:hll", i))
        elif i % 80 == 7:
            parts.append(command("LPUSH", "pipe:s:0", "x"))  # a string: WRONGTYPE
            errors += 1
        else:
            parts.append(command("SETBIT", "pipe:bits", i, 1))
    return b"".join(parts), errors


def dataset_dump(client: redis.Redis) -> dict:
    """Everything the --pipe payload wrote, read back the same way from either server."""
    out: dict = {"dbsize": client.dbsize()}
    with client.pipeline(transaction=False) as p:
        p.mget([f"pipe:s:{i}" for i in range(997)])
        p.mget([f"pipe:n:{i}" for i in range(13)])
        for i in range(17):
            p.hgetall(f"pipe:h:{i}")
        for i in range(11):
            p.lrange(f"pipe:l:{i}", 0, -1)
        for i in range(7):
            p.smembers(f"pipe:set:{i}")
        for i in range(5):
            p.zrange(f"pipe:z:{i}", 0, -1, withscores=True)
        p.pfcount("pipe:hll")
        p.get("pipe:bits")
        out["values"] = p.execute()
    return out


def test_redis_cli_pipe_mode_gets_every_reply_and_writes_what_redis_writes(redis_server, dyno_node):
    payload, errors = pipe_payload(20_000)
    expected = run_redis_cli(redis_server.port, payload, "--pipe")
    got = run_redis_cli(dyno_node.port, payload, "--pipe")
    assert f"errors: {errors}, replies: 20000".encode() in expected.stdout, expected
    assert (got.stdout, got.stderr, got.returncode) == (expected.stdout, expected.stderr, expected.returncode)
    assert dataset_dump(dyno_node.client()) == dataset_dump(redis_server.client())


# --------------------------------------------------------------------------- 2. redis-py


def test_redis_py_strings_and_keyspace(dyno_node):
    r = dyno_node.client()
    assert r.ping() is True
    assert r.set("s:a", "hello") is True
    assert r.get("s:a") == b"hello"
    assert r.append("s:a", " world") == 11
    assert r.strlen("s:a") == 11
    assert r.getrange("s:a", 0, 4) == b"hello"
    assert r.setrange("s:a", 6, "WORLD") == 11
    assert r.get("s:a") == b"hello WORLD"
    assert r.set("s:a", "x", nx=True) is None
    assert r.set("s:new", "x", xx=True) is None
    assert r.set("s:a", "v2", get=True) == b"hello WORLD"
    assert r.getdel("s:a") == b"v2" and r.get("s:a") is None
    assert r.incr("s:n") == 1 and r.incrby("s:n", 41) == 42 and r.decr("s:n") == 41
    assert r.incrbyfloat("s:n", 0.5) == 41.5
    assert r.mset({"{m}a": "1", "{m}b": "2"}) is True
    assert r.mget(["{m}a", "{m}missing", "{m}b"]) == [b"1", None, b"2"]
    assert r.msetnx({"{m}a": "9", "{m}c": "9"}) is False
    assert r.set("s:ex", "v", ex=100) is True and 99 <= r.ttl("s:ex") <= 100
    assert r.getex("s:ex", persist=True) == b"v" and r.ttl("s:ex") == -1
    with pytest.raises(redis.ResponseError, match="not an integer"):
        r.incr("s:ex")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        r.lpush("s:ex", "x")

    # keyspace
    r.set("k:1", "one")
    r.rpush("k:2", "a", "b")
    assert r.exists("k:1", "k:2", "k:missing", "k:1") == 3
    assert [r.type(k) for k in ("k:1", "k:2", "k:missing")] == [b"string", b"list", b"none"]
    assert r.touch("k:1", "k:2", "k:missing") == 2
    assert r.ttl("k:1") == -1 and r.pttl("k:1") == -1 and r.ttl("k:missing") == -2
    assert r.expire("k:1", 1000) is True and 999 <= r.ttl("k:1") <= 1000
    assert r.persist("k:1") is True and r.ttl("k:1") == -1 and r.persist("k:1") is False
    assert r.pexpire("k:2", 500_000) is True and 499_000 <= r.pttl("k:2") <= 500_000
    assert r.expire("k:missing", 10) is False
    dumped = r.dump("k:2")
    assert dumped is not None and r.dump("k:missing") is None
    assert r.restore("k:copy", 0, dumped) == b"OK"
    assert r.lrange("k:copy", 0, -1) == [b"a", b"b"] and r.ttl("k:copy") == -1
    with pytest.raises(redis.ResponseError, match="BUSYKEY"):
        r.restore("k:copy", 0, dumped)
    assert r.restore("k:copy", 5000, r.dump("k:1"), replace=True) == b"OK"
    assert r.get("k:copy") == b"one" and 0 < r.pttl("k:copy") <= 5000
    with pytest.raises(redis.ResponseError, match="DUMP payload"):
        r.restore("k:bad", 0, b"garbage")
    assert r.delete("k:1", "k:missing") == 1
    assert r.unlink("k:2", "k:copy", "k:missing") == 2
    assert r.exists("k:1", "k:2", "k:copy") == 0


def test_redis_py_hashes_lists_sets_and_sorted_sets(dyno_node):
    r = dyno_node.client()
    fields = {f"f{i}": str(i * i) for i in range(50)}
    assert r.hset("h", mapping=fields) == 50
    assert r.hgetall("h") == {k.encode(): v.encode() for k, v in fields.items()}
    assert r.hget("h", "f7") == b"49" and r.hget("h", "nope") is None
    assert r.hmget("h", ["f1", "nope", "f2"]) == [b"1", None, b"4"]
    assert r.hincrby("h", "f3", 10) == 19
    assert r.hincrbyfloat("h", "f3", 0.5) == 19.5
    assert r.hexists("h", "f4") is True and r.hdel("h", "f4", "nope") == 1 and r.hexists("h", "f4") is False
    assert r.hlen("h") == 49 and r.hsetnx("h", "f1", "x") == 0 and r.hstrlen("h", "f9") == 2
    assert sorted(r.hkeys("h")) == sorted(k.encode() for k in fields if k != "f4")

    model = list("abcde")
    assert r.rpush("l", *model) == 5
    assert r.lpush("l", "z") == 6
    model.insert(0, "z")
    assert r.lrange("l", 0, -1) == [x.encode() for x in model]
    assert r.lindex("l", 2) == b"b" and r.llen("l") == 6
    assert r.lset("l", 0, "Z") is True
    assert r.linsert("l", "BEFORE", "c", "bb") == 7
    assert r.lpos("l", "c") == 4
    assert r.lpop("l") == b"Z" and r.rpop("l", 2) == [b"e", b"d"]
    assert r.ltrim("l", 0, 1) is True and r.lrange("l", 0, -1) == [b"a", b"b"]
    assert r.lmove("l", "l2", "LEFT", "RIGHT") == b"a" and r.lrange("l2", 0, -1) == [b"a"]

    assert r.sadd("s", *range(10)) == 10 and r.sadd("s", 3) == 0
    assert r.scard("s") == 10 and r.sismember("s", 4) == 1
    assert r.smismember("s", [1, 11]) == [1, 0]
    assert r.srem("s", 0, 1, 99) == 2
    assert r.smembers("s") == {str(i).encode() for i in range(2, 10)}
    r.sadd("{s}x", 1, 2, 3, 4)
    r.sadd("{s}y", 3, 4, 5)
    assert r.sinter("{s}x", "{s}y") == {b"3", b"4"}
    assert r.sunion("{s}x", "{s}y") == {b"1", b"2", b"3", b"4", b"5"}
    assert r.sdiff("{s}x", "{s}y") == {b"1", b"2"}
    assert r.sinterstore("{s}dst", ["{s}x", "{s}y"]) == 2

    scores = {f"m{i}": (i * 7) % 23 + 0.5 for i in range(30)}
    assert r.zadd("z", scores) == 30
    by_score = sorted(scores.items(), key=lambda kv: (kv[1], kv[0]))
    assert r.zrange("z", 0, -1, withscores=True) == [(k.encode(), v) for k, v in by_score]
    assert r.zrevrange("z", 0, 2) == [k.encode() for k, _ in reversed(by_score)][:3]
    assert r.zscore("z", "m3") == scores["m3"] and r.zscore("z", "nope") is None
    assert r.zrank("z", by_score[5][0]) == 5
    assert r.zcount("z", 5, 10) == sum(5 <= v <= 10 for v in scores.values())
    assert r.zincrby("z", 100, "m0") == scores["m0"] + 100
    assert r.zrem("z", "m1", "nope") == 1 and r.zcard("z") == 29
    assert r.zpopmax("z") == [(b"m0", scores["m0"] + 100)]
    assert r.zrangebyscore("z", 22, "+inf") == sorted(k.encode() for k, v in scores.items() if v >= 22)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        r.zadd("h", {"a": 1})


def test_redis_py_hyperloglog_geo_and_bitmaps(dyno_node):
    r = dyno_node.client()
    assert r.pfadd("hll", *range(1000)) == 1 and r.pfadd("hll", 5) == 0
    assert abs(r.pfcount("hll") - 1000) < 30
    r.pfadd("{hll}a", "x", "y")
    r.pfadd("{hll}b", "y", "z")
    assert r.pfmerge("{hll}m", "{hll}a", "{hll}b") is True and r.pfcount("{hll}m") == 3

    assert r.geoadd("geo", [13.361389, 38.115556, "Palermo", 15.087269, 37.502669, "Catania"]) == 2
    assert abs(r.geodist("geo", "Palermo", "Catania", "km") - 166.2742) < 0.01
    (lon, lat), missing = r.geopos("geo", "Palermo", "nowhere")
    assert abs(lon - 13.361389) < 1e-5 and abs(lat - 38.115556) < 1e-5 and missing is None
    assert r.geohash("geo", "Palermo") == ["sqc8b49rny0"]
    assert r.geosearch("geo", longitude=15, latitude=37, radius=100, unit="km") == [b"Catania"]
    assert r.geosearch("geo", longitude=15, latitude=37, radius=200, unit="km", sort="ASC") == [b"Catania", b"Palermo"]

    bits = [1, 7, 100, 1000, 1001]
    for b in bits:
        assert r.setbit("bm", b, 1) == 0
    assert r.setbit("bm", 7, 1) == 1
    assert [r.getbit("bm", b) for b in (0, 1, 7, 8, 1001)] == [0, 1, 1, 0, 1]
    assert r.bitcount("bm") == len(bits)
    assert r.bitpos("bm", 1) == 1
    assert r.bitfield("bm").get("u8", 0).execute() == [0b01000001]
    r.set("{b}x", "abc")
    r.set("{b}y", "abd")
    assert r.bitop("XOR", "{b}r", "{b}x", "{b}y") == 3 and r.get("{b}r") == b"\x00\x00\x07"
    with pytest.raises(redis.ResponseError, match="bit offset"):
        r.setbit("bm", -1, 1)


def test_redis_py_pipelines_of_1000_commands(dyno_node):
    r = dyno_node.client()
    rng = random.Random(42)
    model: dict[str, int] = {}
    for round_ in range(5):
        expected = []
        with r.pipeline(transaction=False) as p:
            for i in range(1000):
                key = f"p:{rng.randrange(200)}"
                op = rng.randrange(4)
                if op == 0:
                    value = rng.randrange(10**6)
                    p.set(key, value)
                    model[key] = value
                    expected.append(True)
                elif op == 1:
                    p.get(key)
                    expected.append(None if key not in model else str(model[key]).encode())
                elif op == 2:
                    p.incr(key)
                    model[key] = model.get(key, 0) + 1
                    expected.append(model[key])
                else:
                    p.exists(key)
                    expected.append(int(key in model))
            assert p.execute() == expected, f"round {round_}"
    # error replies keep their place among the others
    r.set("p:str", "x")
    with r.pipeline(transaction=False) as p:
        for i in range(1000):
            if i % 100 == 0:
                p.lpush("p:str", "x")
            else:
                p.echo(f"e{i}")
        results = p.execute(raise_on_error=False)
    for i, result in enumerate(results):
        if i % 100 == 0:
            assert isinstance(result, redis.ResponseError) and "WRONGTYPE" in str(result), (i, result)
        else:
            assert result == f"e{i}".encode(), (i, result)


# --------------------------------------------------------------------------- 3. many clients


async def test_200_concurrent_clients_get_their_own_replies_in_order(dyno_node):
    clients = 200
    connected = 0
    all_connected = trio.Event()
    done = []

    async def session(index: int) -> None:
        nonlocal connected
        stream = await trio.open_tcp_stream(dyno_node.host, dyno_node.port)
        reader = hiredis.Reader()

        async def exchange(payload: bytes, count: int) -> list:
            await stream.send_all(payload)
            replies: list = []
            while len(replies) < count:
                data = await stream.receive_some(65536)
                assert data, f"client {index}: connection closed"
                reader.feed(data)
                while (reply := reader.gets()) is not False:
                    replies.append(reply)
            assert len(replies) == count, f"client {index}: {len(replies) - count} extra replies"
            return replies

        async with stream:
            connected += 1
            if connected == clients:
                all_connected.set()
            await all_connected.wait()
            for j in range(100):  # one request at a time
                key = f"c{index}:k{j % 10}"
                value = f"v{index}:{j}"
                assert await exchange(command("SET", key, value), 1) == [b"OK"]
                assert await exchange(command("GET", key), 1) == [value.encode()]
            for batch in range(2):  # pipelined: replies in request order
                payload = []
                expected = []
                for j in range(50):
                    key = f"c{index}:p{j}"
                    value = f"{index}:{batch}:{j}"
                    payload += [command("SET", key, value), command("GET", key), command("INCR", f"c{index}:n")]
                    expected += [b"OK", value.encode(), batch * 50 + j + 1]
                assert await exchange(b"".join(payload), len(expected)) == expected
        done.append(index)

    with trio.fail_after(45):
        async with trio.open_nursery() as nursery:
            for i in range(clients):
                nursery.start_soon(session, i)
            await all_connected.wait()
            info = await trio.to_thread.run_sync(lambda: dyno_node.client().info("clients"))
            assert info["connected_clients"] >= clients
    assert sorted(done) == list(range(clients))
    r = dyno_node.client()
    assert r.mget([f"c{i}:n" for i in range(clients)]) == [b"100"] * clients


# --------------------------------------------------------------------------- 4. vanishing client


class PipelineLoad:
    """A well-behaved client pipelining SET/GET/INCR in a thread and checking each reply."""

    def __init__(self, client: redis.Redis, name: str):
        self.client = client
        self.name = name
        self.batches = 0
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            count = 0
            while not self._stop.is_set():
                with self.client.pipeline(transaction=False) as p:
                    expected = []
                    for j in range(100):
                        count += 1
                        p.set(f"{self.name}:{j}", count)
                        p.get(f"{self.name}:{j}")
                        p.incr(f"{self.name}:n")
                        expected += [True, str(count).encode(), count]
                    assert p.execute() == expected
                self.batches += 1
        except BaseException as e:
            self.failure = e

    def __enter__(self) -> PipelineLoad:
        self._thread.start()
        wait_for(lambda: self.batches >= 2 or self.failure, 10, f"{self.name} to get going")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), f"{self.name} is stuck"

    def check(self, more_batches: int = 3) -> None:
        """The load is still being served correctly: `more_batches` more batches complete."""
        target = self.batches + more_batches
        wait_for(lambda: self.batches >= target or self.failure, 15, f"{self.name} to progress")
        if self.failure is not None:
            raise self.failure


def vanish(addr: tuple[str, int], payload: bytes, reset: bool) -> None:
    """Send what the node takes of `payload` without blocking, read nothing, and go:
    with a FIN, or with a RST when `reset`."""
    sock = socket.create_connection(addr, timeout=10)
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.setblocking(False)
    sent = 0
    try:
        while sent < len(payload):
            sent += sock.send(payload[sent : sent + 65536])
    except BlockingIOError:
        pass
    sock.close()


def test_client_that_disconnects_mid_pipeline_does_not_disturb_the_node(dyno_node):
    r = dyno_node.client()
    r.set("big", b"x" * 100_000)
    pid = dyno_node.state.pid
    writes = b"".join(command("SET", f"mid:{i}", f"value{i}") for i in range(10_000))
    big_reads = command("GET", "big") * 10_000  # ~1 GB of replies that will never be read

    with PipelineLoad(dyno_node.client(), "steady") as load:
        for payload, reset in ((writes, False), (writes, True), (big_reads, False), (big_reads, True)):
            vanish(dyno_node.addr, payload, reset)
            load.check()
            assert dyno_node.alive, dyno_node.log_tail()

    assert localcluster.pid_alive(pid) and dyno_node.state.pid == pid
    fresh = dyno_node.client()
    assert fresh.ping() is True
    values = fresh.mget([f"mid:{i}" for i in range(10_000)])
    for i, value in enumerate(values):  # each write applied or not, never mangled
        assert value in (None, f"value{i}".encode()), (i, value)
    assert fresh.get("big") == b"x" * 100_000


def half_close_exchange(addr: tuple[str, int], payload: bytes) -> bytes:
    """Send `payload`, shut the sending side (FIN), and read until the server closes."""
    with socket.create_connection(addr, timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return read_until_closed(sock, timeout=10)


@pytest.mark.parametrize("count", [1, 3, 2000])
def test_a_client_that_shuts_its_sending_side_gets_every_reply_like_from_redis(
    redis_server, dyno_node, count
):
    """`printf 'SET a 1\\r\\n' | nc -N host port` and the like: Redis answers what it
    read, then closes. The FIN often comes in the same read as the requests."""
    prefix = f"half:{uuid.uuid4().hex}"
    payload = b"".join(
        command("SET", f"{prefix}:{i}", i) + command("INCR", f"{prefix}:{i}") + command("GET", f"{prefix}:{i}")
        for i in range(count)
    )
    expected = half_close_exchange(redis_server.addr, payload)
    assert expected.count(b"\r\n") == 4 * count  # +OK, :n, $len and the value
    assert half_close_exchange(dyno_node.addr, payload) == expected


def test_node_forgets_clients_that_vanish_with_replies_pending(dyno_node):
    r = dyno_node.client()
    r.set("big", b"x" * 100_000)
    baseline = info_field(r, "clients", "connected_clients")
    for reset in (False, True):
        vanish(dyno_node.addr, command("GET", "big") * 10_000, reset)
    wait_for(
        lambda: info_field(r, "clients", "connected_clients") == baseline,
        30,  # each asked for 1 GB of replies: on a loaded box Redis alone takes seconds
        "the node to forget the vanished clients",
    )


# --------------------------------------------------------------------------- 5. Redis faults


class Workers:
    """Threads doing SET/GET (one of them pipelined) and recording every outcome with its
    duration, so a test can see which errors clients got and that nothing hung."""

    def __init__(self, node: support.NodeHandle, count: int = 6):
        self.node = node
        self.stop = threading.Event()
        self.lock = threading.Lock()
        # (start, end, worker, outcome): outcome is "ok" or the error message
        self.log: list[tuple[float, float, int, str]] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(count)]
        self.unexpected: list[BaseException] = []

    def _run(self, index: int) -> None:
        client = no_retry_client(self.node, socket_timeout=30)
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                start = time.monotonic()
                try:
                    if index == 0:
                        with client.pipeline(transaction=False) as p:
                            for j in range(20):
                                p.set(f"w{index}:{j}", n)
                            results = p.execute(raise_on_error=False)
                        assert all(x is True or isinstance(x, redis.ResponseError) for x in results), results
                        errors = ["ERR " + str(x) for x in results if x is not True]
                        outcome = errors[0] if errors else "ok"
                    else:
                        key = f"w{index}"
                        assert client.set(key, n) is True
                        got = client.get(key)
                        assert got == str(n).encode(), (got, n)
                        outcome = "ok"
                except redis.ResponseError as e:
                    outcome = "ERR " + str(e)  # redis-py dropped the prefix
                with self.lock:
                    self.log.append((start, time.monotonic(), index, outcome))
        except BaseException as e:
            self.unexpected.append(e)
        finally:
            client.close()

    def since(self, t: float) -> list[tuple[float, float, int, str]]:
        with self.lock:
            return [entry for entry in self.log if entry[0] >= t]

    def each_worker(self, t: float, predicate, count: int = 1) -> bool:
        """Every worker has `count` outcomes started after `t` that satisfy `predicate`."""
        self.check_no_crash()
        entries = self.since(t)
        return all(sum(1 for e in entries if e[2] == w and predicate(e[3])) >= count for w in range(len(self.threads)))

    def healthy_since(self, t: float, count: int) -> bool:
        """Every worker's last `count` outcomes (all started after `t`) succeeded."""
        self.check_no_crash()
        entries = self.since(t)
        for w in range(len(self.threads)):
            mine = [e[3] for e in entries if e[2] == w]
            if len(mine) < count or any(o != "ok" for o in mine[-count:]):
                return False
        return True

    def __enter__(self) -> Workers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        assert not any(t.is_alive() for t in self.threads), "a worker is stuck in a request"

    def check_no_crash(self) -> None:
        """Fail at once (not at a deadline) if the node died or a client saw the unexpected."""
        assert self.node.alive, f"the dyno node died:\n{self.node.log_tail(60)}"
        if self.unexpected:
            raise self.unexpected[0]


TIMEOUT_MS = 1000


def node_with_timeout(cluster_factory, timeout_ms: int) -> support.NodeHandle:
    """A node whose config sets `timeout` (ms)."""
    return cluster_factory(racks=1, timeout=timeout_ms)[0]




def test_redis_killed_and_restarted_under_load(cluster_factory):
    node = node_with_timeout(cluster_factory, TIMEOUT_MS)
    pid = node.state.pid
    down_error = unavailable(node)
    allowed_errors = {
        down_error,
        f"ERR dyno: datastore {node.host}:{node.redis_port} connection lost; "
        "the request may or may not have been applied",
        f"ERR dyno: datastore {node.host}:{node.redis_port} timed out; "
        "the request may or may not have been applied",
    }
    with Workers(node) as workers:
        start = time.monotonic()
        wait_for(lambda: workers.healthy_since(start, 20), 10, "the load to run")

        node.kill_redis()
        killed = time.monotonic()
        wait_for(
            lambda: workers.each_worker(killed, lambda o: o == down_error, 5),
            TIMEOUT_MS / 1000 + 5,
            "every worker to see the datastore reported unavailable",
        )
        # A pipeline sent while Redis is down: one error per request, promptly, in order.
        with Raw(node.addr) as raw:
            began = time.monotonic()
            raw.send(command("GET", "w1") * 100)
            _, data = raw.replies(100)
            assert data == error_line(down_error) * 100
            assert time.monotonic() - began < TIMEOUT_MS / 1000
            assert raw.call("PING") == b"PONG"  # node-local commands still work

        node.start_redis()  # an empty Redis on the same port; dyno is not restarted
        restarted = time.monotonic()
        wait_for(lambda: workers.healthy_since(restarted, 20), 15, "full service after Redis restarted")
        workers.check_no_crash()

    errors = {outcome for _, _, _, outcome in workers.log if outcome != "ok"}
    assert errors and errors <= allowed_errors, errors - allowed_errors
    slowest = max(end - begin for begin, end, _, _ in workers.log)
    assert slowest < TIMEOUT_MS / 1000 + 0.5, f"a request took {slowest:.2f} s (timeout {TIMEOUT_MS} ms)"
    assert node.state.pid == pid and localcluster.pid_alive(pid)
    r = node.client()
    assert r.set("after", "restart") is True and r.get("after") == b"restart"


def test_requests_never_hang_past_timeout_when_redis_freezes(cluster_factory):
    node = node_with_timeout(cluster_factory, TIMEOUT_MS)
    timed_out = (
        f"ERR dyno: datastore {node.host}:{node.redis_port} timed out; "
        "the request may or may not have been applied"
    )
    allowed_errors = {timed_out, unavailable(node)}
    with Workers(node, count=4) as workers:
        start = time.monotonic()
        wait_for(lambda: workers.healthy_since(start, 20), 10, "the load to run")
        node.pause_redis()  # SIGSTOP: connections stay open, nothing is answered
        try:
            frozen = time.monotonic()
            wait_for(
                lambda: workers.each_worker(frozen, lambda o: o == timed_out, 2),
                10 * TIMEOUT_MS / 1000,
                "every worker to get a time-out error",
            )
        finally:
            node.resume_redis()
        thawed = time.monotonic()
        wait_for(lambda: workers.healthy_since(thawed, 20), 15, "full service after Redis resumed")
        workers.check_no_crash()

    errors = {outcome for _, _, _, outcome in workers.log if outcome != "ok"}
    assert errors and errors <= allowed_errors, errors - allowed_errors
    # The watchdog looks every timeout/4, so a request may wait up to 1.25 x timeout.
    slowest = max(end - begin for begin, end, _, _ in workers.log)
    assert slowest < 1.25 * TIMEOUT_MS / 1000 + 0.5, f"a request took {slowest:.2f} s (timeout {TIMEOUT_MS} ms)"


def test_a_request_to_an_idle_node_whose_redis_froze_times_out(cluster_factory):
    """The connection's watchdog waits with no timer while nothing is unanswered: the
    first request after a quiet spell must still get its time-out, not hang."""
    node = node_with_timeout(cluster_factory, TIMEOUT_MS)
    r = no_retry_client(node)
    assert r.set("k", "v") is True
    node.pause_redis()
    try:
        began = time.monotonic()
        with pytest.raises(redis.ResponseError, match="timed out"):
            r.get("k")
        elapsed = time.monotonic() - began
    finally:
        node.resume_redis()
    assert TIMEOUT_MS / 1000 * 0.9 <= elapsed < 1.25 * TIMEOUT_MS / 1000 + 0.5, elapsed
    assert r.get("k") == b"v"


def test_redis_down_at_start_then_up(cluster_factory):
    """The node starts while its Redis is down: every request fails at once with a clear
    error, node-local commands work, and service comes once Redis is up (no dyno restart)."""
    node = node_with_timeout(cluster_factory, TIMEOUT_MS)
    node.stop()
    node.stop_redis()
    node.start()
    pid = node.state.pid
    with Raw(node.addr) as raw:
        for _ in range(3):
            began = time.monotonic()
            raw.send(command("SET", "k", "v") + command("GET", "k") * 99)
            _, data = raw.replies(100)
            assert data == error_line(unavailable(node)) * 100
            assert time.monotonic() - began < TIMEOUT_MS / 1000
        assert raw.call("PING") == b"PONG"
        r = no_retry_client(node)
        with pytest.raises(redis.ResponseError, match="is unavailable"):
            r.get("k")

        node.start_redis()
        wait_for(lambda: r.set("k", "v") is True, 10, "service once Redis is up", ignore=(redis.ResponseError,))
        # (with workers, raw's worker may reconnect to its Redis a moment after r's)
        wait_for(lambda: raw.call("GET", "k") == b"v", 10, "service on the other connection too")
        with r.pipeline(transaction=False) as p:
            for i in range(1000):
                p.set(f"after:{i}", i)
                p.get(f"after:{i}")
            assert p.execute() == [x for i in range(1000) for x in (True, str(i).encode())]
    assert node.state.pid == pid and node.alive


# --------------------------------------------------------------------------- 6. malformed frames


# Sent whole to a fresh connection; Redis answers -ERR Protocol error: ... and closes.
MALFORMED = [
    b"*abc\r\n",
    b"*1\r\n:1\r\n",
    b"*1\r\n$600000000\r\n",
    b'SET a "b c\r\n',
    b"SET a 'b c\r\n",
    b'PING "a"b\r\n',
    b"*+1\r\n",
    b"*01\r\n$4\r\nPING\r\n",
    b"*1\r\n$-1\r\n",
    b"*1\r\n$abc\r\n",
    b"*1\r\n$536870913\r\n",
    b"*" + b"1" * 70_000,
    b"A" * 70_000,
    # requests before the bad frame are answered first
    command("SET", "mal", "v") + command("GET", "mal") + b"*1\r\n$-5\r\n",
    command("PING") + b"*x\r\n",
    b"PING\r\n*2\r\n$3\r\nGET\r\n:1\r\n",
    # hiredis reads '=' and '+' elements as bytes; this pair is exactly as long as
    # the canonical encoding of [SET, a, abcdefghij], but Redis refuses it and drops
    # the connection: it must never be forwarded to the shared one
    b"*3\r\n$3\r\nSET\r\n=5\r\ntxt:a\r\n+abcdefghij\r\n",
]

# Frames Redis reads in its own way without closing (QUIT ends the exchange).
ODD_FRAMES = [
    # hiredis reads a '~' set like a '*' request of the same length; Redis reads
    # three inline commands: forwarded as received it would put the shared
    # connection three replies out of step
    command("PING") + b"~1\r\n$4\r\nPING\r\n" + command("QUIT"),
    b"|1\r\n+a\r\n+b\r\n" + command("QUIT"),
]


async def raw_exchange(addr: tuple[str, int], data: bytes, timeout: float = 10.0) -> bytes:
    """Send `data` on a fresh connection, return all it gets until the server closes it."""
    out = bytearray()
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(*addr)
        async with stream:
            await stream.send_all(data)
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:  # RST after the server closed
                    break
                if not chunk:
                    break
                out += chunk
    return bytes(out)


async def test_malformed_frames_close_only_their_connection(redis_server, dyno_node):
    steady_ok = 0
    steady_failure: list[BaseException] = []

    async def steady() -> None:
        nonlocal steady_ok
        stream = await trio.open_tcp_stream(dyno_node.host, dyno_node.port)
        reader = hiredis.Reader()
        n = 0
        async with stream:
            while True:
                payload = []
                expected = []
                for j in range(100):
                    n += 1
                    key = f"steady:{j}"
                    payload += [command("SET", key, n), command("GET", key), command("INCR", "steady:n")]
                    expected += [b"OK", str(n).encode(), n]
                await stream.send_all(b"".join(payload))
                got: list = []
                while len(got) < len(expected):
                    data = await stream.receive_some(65536)
                    if not data:
                        steady_failure.append(AssertionError("steady client's connection closed"))
                        return
                    reader.feed(data)
                    while (reply := reader.gets()) is not False:
                        got.append(reply)
                if got != expected:
                    steady_failure.append(AssertionError(f"steady client got wrong replies: {got[:6]}"))
                    return
                steady_ok += 1

    async def wait_steady(more: int) -> None:
        target = steady_ok + more
        with trio.fail_after(15):
            while steady_ok < target and not steady_failure:
                await trio.sleep(0.01)
        assert not steady_failure, steady_failure

    async with trio.open_nursery() as nursery:
        nursery.start_soon(steady)
        await wait_steady(2)
        for frame in MALFORMED:
            expected = await raw_exchange(redis_server.addr, frame)
            got = await raw_exchange(dyno_node.addr, frame)
            assert b"-ERR Protocol error: " in expected, (frame[:40], expected)
            assert got == expected, frame[:40]
            await wait_steady(1)
        for frame in ODD_FRAMES:
            expected = await raw_exchange(redis_server.addr, frame)
            assert expected.endswith(b"+OK\r\n"), expected
            assert await raw_exchange(dyno_node.addr, frame) == expected, frame[:40]
            await wait_steady(1)
        # Redis 7 accepts an array header up to INT_MAX elements; dyno refuses over 1M.
        for frame in (b"*2000000000\r\n", b"*1048577\r\n"):
            got = await raw_exchange(dyno_node.addr, frame)
            assert got == b"-ERR Protocol error: invalid multibulk length\r\n"
        # hiredis would allocate these aggregates' lists up front (a MemoryError
        # once took the node down); Redis refuses them as arguments.
        for header in b"~>|%":
            frame = b"*1\r\n" + bytes([header]) + b"2000000000\r\n"
            expected = await raw_exchange(redis_server.addr, frame)
            assert expected == b"-ERR Protocol error: expected '$', got '%c'\r\n" % header
            assert await raw_exchange(dyno_node.addr, frame) == expected
        await wait_steady(2)
        nursery.cancel_scope.cancel()
    assert not steady_failure


async def test_overlong_bulk_count_line_is_reported_like_redis(redis_server, dyno_node):
    frame = b"*1\r\n" + b"x" * 70_000
    expected = await raw_exchange(redis_server.addr, frame)
    assert expected == b"-ERR Protocol error: too big bulk count string\r\n"
    assert await raw_exchange(dyno_node.addr, frame) == expected


# --------------------------------------------------------------------------- 7. node-local


def test_node_local_commands_over_a_raw_socket(redis_server, dyno_node):
    with Raw(dyno_node.addr) as c, Raw(redis_server.addr) as plain:
        assert c.call("PING") == b"PONG"
        assert c.call("PING", "hi there") == b"hi there"
        assert c.call("ECHO", "\x00bin\r\n") == b"\x00bin\r\n"

        c.send(command("HELLO", "4"))
        assert c.replies(1)[1] == b"-NOPROTO unsupported protocol version\r\n"
        c.send(command("HELLO", "3"))
        assert c.replies(1)[1].startswith(b"%7\r\n")  # RESP3 from here on (tests/test_resp3.py)
        hello = c.call("HELLO", "2")
        fields = dict(zip(hello[::2], hello[1::2]))
        assert fields[b"proto"] == 2 and fields[b"server"] == b"redis"

        assert c.call("SELECT", "0") == b"OK"
        c.send(command("SELECT", "1"))
        (reply,), raw = c.replies(1)
        assert raw.startswith(b"-ERR ") and isinstance(reply, hiredis.ReplyError)

        assert c.call("CLIENT", "GETNAME") is None
        assert c.call("CLIENT", "SETNAME", "tester") == b"OK"
        assert c.call("CLIENT", "GETNAME") == b"tester"
        client_id = c.call("CLIENT", "ID")
        assert isinstance(client_id, int) and client_id > 0
        with Raw(dyno_node.addr) as other:
            assert other.call("CLIENT", "ID") != client_id

        for args in (("COMMAND", "COUNT"), ("COMMAND", "INFO", "get")):
            c.send(command(*args))
            plain.send(command(*args))
            assert c.replies(1)[1] == plain.replies(1)[1], args

        assert c.call("SET", "local:k", "v") == b"OK"
        info = c.call("INFO").decode()
        assert "# Keyspace" in info and "db0:keys=" in info
        assert "# Server" in info and "redis_version:" in info

        # Redis's exact wording for unknown commands and wrong arity
        for args in (("foo", "a"), ("foo", "a", "b", "c"), ("GET",), ("SET", "a"), ("HSET", "h", "f"), ("PING", "a", "b")):
            c.send(command(*args))
            plain.send(command(*args))
            assert c.replies(1)[1] == plain.replies(1)[1], args
        c.send(command("foo", "a"))
        assert c.replies(1)[1] == b"-ERR unknown command 'foo', with args beginning with: 'a' \r\n"

        # AUTH as a Redis with no password answers it, and answers that are the same
        # on every Redis (the node's own Redis gives them)
        for args in (
            ("AUTH", "pw"), ("AUTH", "default", "pw"), ("AUTH", "other", "pw"), ("AUTH", "a", "b", "c"),
            ("HELLO", "2", "AUTH", "other", "pw"), ("OBJECT", "HELP"), ("XINFO", "HELP"),
            ("XGROUP", "HELP"), ("MEMORY", "HELP"), ("SCRIPT", "HELP"), ("LOLWUT",),
        ):
            c.send(command(*args))
            plain.send(command(*args))
            assert c.replies(1)[1] == plain.replies(1)[1], args
        seconds, micros = c.call("TIME")
        assert abs(int(seconds) - time.time()) < 60 and 0 <= int(micros) < 1_000_000
        hello = c.call("HELLO", "2", "AUTH", "default", "any", "SETNAME", "authed")
        assert dict(zip(hello[::2], hello[1::2]))[b"proto"] == 2
        assert c.call("CLIENT", "GETNAME") == b"authed"

        # RESET: this connection's state only (the shared Redis connection keeps its own)
        c.send(command("HELLO", "3") + command("DYNO_CONFIG:CONN_CONSISTENCY", "DC_QUORUM"))
        c.replies(2)
        c.send(command("RESET") + command("CLIENT", "GETNAME") + command("HGETALL", "nothing"))
        assert c.replies(3)[1] == b"+RESET\r\n$-1\r\n*0\r\n"  # RESP2 again

        # commands a cluster cannot support: an error, and the connection stays usable
        for args in (("EXEC",), ("SWAPDB", "0", "1"), ("SELECT", "3")):
            c.send(command(*args) + command("PING"))
            replies, raw = c.replies(2)
            assert raw.startswith(b"-ERR ") and raw.endswith(b"+PONG\r\n"), (args, raw)
            assert isinstance(replies[0], hiredis.ReplyError)
        # ... and in a transaction, what cannot be queued aborts it; DISCARD ends it
        c.send(command("MULTI") + command("PING") + command("DISCARD") + command("PING"))
        replies, raw = c.replies(4)
        assert raw.startswith(b"+OK\r\n-ERR dyno: 'PING' cannot be queued") and raw.endswith(b"+OK\r\n+PONG\r\n"), raw

        # inline commands, as typed over telnet
        c.send(b"PING\r\n")
        assert c.replies(1)[1] == b"+PONG\r\n"
        c.send(b'SET inline "b c"\r\nGET inline\r\nEXISTS inline nope\r\n')
        assert c.replies(3)[1] == b"+OK\r\n$3\r\nb c\r\n:1\r\n"

        # QUIT: +OK, then the connection is closed; what follows is not executed
        c.send(command("QUIT") + command("SET", "after-quit", "x"))
        assert c.until_closed() == b"+OK\r\n"
    assert dyno_node.client().exists("after-quit") == 0


# --------------------------------------------------------------------------- 8. CLI lifecycle


def test_sigterm_stops_the_node_cleanly(tmp_path):
    (node_plan,) = localcluster.plan(1, 1, 1)
    (config,) = localcluster.write_configs([node_plan], tmp_path)
    log = tmp_path / "node.log"
    with support.RedisServer(tmp_path / "redis", port=node_plan.redis_port):
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                dyno_argv("start", "--config", str(config)), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=dyno_env(), start_new_session=True,
            )  # fmt: skip
        support.TRACKER.track(proc.pid, "dyno node (SIGTERM test)")
        try:
            addr = (node_plan.host, node_plan.port)
            wait_for(lambda: proc.poll() is not None or support.ping(*addr), 15, "the node to answer PING")
            assert proc.poll() is None, log.read_text()
            idle = Raw(addr)
            busy = Raw(addr)
            assert idle.call("PING") == b"PONG"
            busy.send(command("SET", "k", "v") * 1000)
            busy.replies(1000)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0, log.read_text()
            assert idle.until_closed() == b""
            assert busy.until_closed() == b""
            idle.close()
            busy.close()
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(addr, timeout=5).close()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_bad_config_is_refused_naming_file_and_key(tmp_path):
    cases = {
        "read_consistency": "  read_consistency: dc_twice\n",
        "lisen": "  lisen: 127.0.0.1:8102\n",
        "timeout": "  timeout: soon\n",
    }
    for key, line in cases.items():
        bad = tmp_path / "bad.yml"
        bad.write_text(
            "dyn_o_mite:\n"
            "  listen: 127.0.0.1:0\n"
            "  servers:\n  - 127.0.0.1:22122:1\n"
            "  tokens: '0'\n" + line
        )
        for argv in (dyno_argv("start", "--config", str(bad)), dyno_argv("check-config", str(bad))):
            result = subprocess.run(argv, capture_output=True, text=True, env=dyno_env(), timeout=30)
            assert result.returncode != 0, (argv, result)
            assert "bad.yml" in result.stderr and key in result.stderr, (argv, result.stderr)


def test_check_config_accepts_the_shipped_example():
    result = subprocess.run(
        dyno_argv("check-config", str(REPO / "configs" / "single.yml")),
        capture_output=True, text=True, env=dyno_env(), timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result
    assert "single.yml" in result.stdout

