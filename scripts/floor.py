#!/usr/bin/env python3
"""The floor: what the least a Python proxy can do costs per request at -P 1.

A measurement, never a test. It puts three things in front of one redis-server, in turn,
rounds interleaved, and drives each with the same `redis-benchmark -c 50 -r 100000 -P 1`:

- ``epoll``: a pass-through in plain Python, no trio: one `select.epoll` loop, each client
  connection paired with a Redis connection of its own, bytes copied both ways as they come
  (no parsing, no routing, no replication; a reply's bytes go back as Redis sent them);
- ``mux``: the least a multiplexing proxy does, in plain Python: every client's requests
  counted (hiredis) and sent together on one Redis connection, one send per loop turn, the
  replies cut apart (`dyno.resp.scan_reply`) and sent back, one send per client per turn;
- ``trio``: the pass-through written the plain trio way (a task per direction,
  `receive_some` / `send_all` on SocketStreams);
- ``dyno``: a one-node dyno (`dyno cluster up` with one rack of one node).

and prints each one's CPU µs per request (its process's schedstat over the run, divided by
the requests) and ops/s, medians of the rounds. The pass-throughs do less than any proxy can
(one Redis connection per client, so no request is parsed to match its reply); the gap
between them and dyno is what dyno's work costs, and the `epoll` figure bounds from below
what any proxy in Python pays for the syscalls and the interpreter alone.

    .venv/bin/python scripts/floor.py                 # 3 rounds, about 1 min
    .venv/bin/python scripts/floor.py --rounds 5 --requests 200000
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dyno import localcluster  # noqa: E402

TESTS = ("SET", "GET")


# --------------------------------------------------------------------------- the forwarders


def _listening(port: int) -> tuple[socket.socket, select.epoll]:
    """A non-blocking listening socket on ``port``, and an epoll that watches it."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(512)
    server.setblocking(False)
    epoll = select.epoll()
    epoll.register(server.fileno(), select.EPOLLIN)
    return server, epoll


def _accepted(server: socket.socket):
    """The connections waiting on ``server``, non-blocking, TCP_NODELAY."""
    while True:
        try:
            client, _ = server.accept()
        except BlockingIOError:
            return
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.setblocking(False)
        yield client


def serve_epoll(listen_port: int, redis_port: int) -> None:
    """The plain-Python pass-through (runs until killed)."""
    server, epoll = _listening(listen_port)
    other: dict[int, socket.socket] = {}  # fd -> the socket its bytes go to
    sockets: dict[int, socket.socket] = {}
    while True:
        for fd, _events in epoll.poll():
            if fd == server.fileno():
                for client in _accepted(server):
                    backend = socket.create_connection(("127.0.0.1", redis_port))
                    backend.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    backend.setblocking(False)
                    for sock in (client, backend):
                        sockets[sock.fileno()] = sock
                        epoll.register(sock.fileno(), select.EPOLLIN)
                    other[client.fileno()], other[backend.fileno()] = backend, client
                continue
            sock = sockets[fd]
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                peer = other.pop(fd)
                other.pop(peer.fileno(), None)
                for s in (sock, peer):
                    epoll.unregister(s.fileno())
                    sockets.pop(s.fileno(), None)
                    s.close()
                continue
            target = other[fd]
            target.setblocking(True)  # a -P 1 request or reply: never more than the buffer takes
            target.sendall(data)
            target.setblocking(False)


def serve_mux(listen_port: int, redis_port: int) -> None:
    """The least a multiplexing proxy does, in plain Python (runs until killed): every
    client's requests counted (hiredis) and sent on one Redis connection, a send per loop
    turn; the replies cut apart (dyno.resp.scan_reply) and each client's sent back with
    one send per turn."""
    from collections import deque

    import hiredis

    from dyno.resp import scan_reply

    server, epoll = _listening(listen_port)
    backend = socket.create_connection(("127.0.0.1", redis_port))
    backend.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    epoll.register(backend.fileno(), select.EPOLLIN)
    clients: dict[int, tuple[socket.socket, object]] = {}
    waiting: deque = deque()  # the client of each reply to come, in order
    replies = bytearray()
    while True:
        out: list[bytes] = []
        answers: dict[socket.socket, list[bytes]] = {}
        for fd, _events in epoll.poll():
            if fd == server.fileno():
                for client in _accepted(server):
                    clients[client.fileno()] = (client, hiredis.Reader())
                    epoll.register(client.fileno(), select.EPOLLIN)
            elif fd == backend.fileno():
                replies += backend.recv(1 << 20)
                pos = 0
                while pos < len(replies) and (end := scan_reply(replies, pos)) > 0:
                    client = waiting.popleft()
                    answers.setdefault(client, []).append(bytes(replies[pos:end]))
                    pos = end
                del replies[:pos]
            else:
                client, reader = clients[fd]
                try:
                    data = client.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    epoll.unregister(fd)
                    del clients[fd]
                    client.close()
                    continue
                reader.feed(data)
                while reader.gets() is not False:
                    waiting.append(client)
                out.append(data)
        if out:
            backend.sendall(b"".join(out))
        for client, parts in answers.items():
            if client.fileno() != -1:
                data = b"".join(parts)
                sent = client.send(data)
                if sent < len(data):  # (a socket buffer full: not at -P 1) the rest, blocking
                    client.setblocking(True)
                    client.sendall(data[sent:])
                    client.setblocking(False)


def serve_trio(listen_port: int, redis_port: int) -> None:
    """The plain-trio pass-through (runs until killed)."""
    import trio

    async def pump(source, sink, done) -> None:
        try:
            while data := await source.receive_some(65536):
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()  # either side's end ends both directions

    async def handle(client) -> None:
        backend = await trio.open_tcp_stream("127.0.0.1", redis_port)
        async with client, backend:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, backend, nursery.cancel_scope)
                nursery.start_soon(pump, backend, client, nursery.cancel_scope)

    async def main() -> None:
        await trio.serve_tcp(handle, listen_port, host="127.0.0.1")

    trio.run(main)


# --------------------------------------------------------------------------- the harness


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ns(pid: int) -> int:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answers PING on port {port}")
        time.sleep(0.05)  # polling a starting process, with a deadline


def benchmark(port: int, test: str, requests: int) -> float:
    """redis-benchmark's requests per second."""
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", test.lower(), "-n", str(requests), "-c", "50",
                          "-r", "100000", "-P", "1", "-q"], capture_output=True, text=True, timeout=120).stdout
    line = next((line for line in out.replace("\r", "\n").splitlines() if "requests per second" in line), None)
    if line is None:
        raise RuntimeError(f"redis-benchmark printed no rate: {out[-300:]}")
    return float(line.split(":")[1].split()[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100_000)
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":  # a forwarder process
        kind, listen_port, redis_port = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        {"epoll": serve_epoll, "mux": serve_mux, "trio": serve_trio}[kind](listen_port, redis_port)
        return 0
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="dyno-floor-"))
    started: list[subprocess.Popen] = []
    cluster_dir = root / "dyno"
    try:
        # dyno: a one-node cluster beside its own Redis; the forwarders share that Redis
        state = localcluster.up(cluster_dir, 1, 1, 1, start_timeout=60)
        node = state.nodes[0]
        targets = {"dyno": (node.port, node.pid)}
        for kind in ("epoll", "mux", "trio"):
            port = free_port()
            proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, str(port), str(node.redis_port)],
                                    start_new_session=True)
            started.append(proc)
            wait_for_port(port)
            targets[kind] = (port, proc.pid)
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        names = list(targets)
        for round_no in range(args.rounds):
            order = names[round_no % len(names):] + names[:round_no % len(names)]
            for name in order:
                port, pid = targets[name]
                for test in TESTS:
                    before = cpu_ns(pid)
                    rate = benchmark(port, test, args.requests)
                    used = cpu_ns(pid) - before
                    results.setdefault((name, test), []).append((rate, used / args.requests / 1000))
                    print(f"round {round_no + 1}: {name} {test}: {rate:,.0f} ops/s, "
                          f"{used / args.requests / 1000:.2f} µs/req", file=sys.stderr, flush=True)
        print(f"`scripts/floor.py {' '.join(sys.argv[1:])}`".replace(" `", "`"))
        print()
        print("| target | SET ops/s | SET CPU µs/req | GET ops/s | GET CPU µs/req |")
        print("|---|---:|---:|---:|---:|")
        for name in names:
            cells = []
            for test in TESTS:
                runs = results[name, test]
                cells += [f"{statistics.median(r for r, _ in runs):,.0f}", f"{statistics.median(c for _, c in runs):.2f}"]
            print(f"| {name} | {' | '.join(cells)} |")
        return 0
    except (RuntimeError, OSError, localcluster.ClusterError) as e:
        print(f"floor.py: {e}", file=sys.stderr)
        return 1
    finally:
        for proc in started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        localcluster.down(cluster_dir)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
