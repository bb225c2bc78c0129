#!/usr/bin/env python3
"""Memory of a dyno node while many clients pipeline requests and never read a reply
(issue 15: "RSS stays bounded when 1,000 clients pipeline without reading").

Starts one node with its own redis-server (dyno.localcluster, in a temp dir), or
attaches to a running node (--host/--port/--pid). Opens N client connections; each
sends pipelined requests as fast as the node takes them (non-blocking sends until
the kernel refuses more) and reads nothing. Meanwhile one normal client sends a
PING now and then. Every second it prints the node's RSS (VmRSS from /proc) against
its idle RSS, the bytes the clients got the node to take, how many of them the node
still has open, and the normal client's slowest PING in that second.

Workloads (--workload):
  setget  each client sends SET key:<i> <value> and GET key:<i>, alternately
  get     each client sends GET of one preloaded key: replies far larger than requests

    .venv/bin/python scripts/pipeline_rss.py [--clients 1000] [--value-size 4096]
        [--workload setget|get] [--seconds 20] [--config-key value ...]
"""

from __future__ import annotations

import argparse
import resource
import selectors
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dyno import localcluster  # noqa: E402
from idle_memory import rss_bytes  # noqa: E402  (scripts/, beside this one)


def command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def pipeline(workload: str, index: int, value: bytes, repeat: int) -> bytes:
    """The bytes one client sends over and over: ``repeat`` requests' worth."""
    if workload == "get":
        return command(b"GET", b"big") * repeat
    key = b"key:%d" % index
    return (command(b"SET", key, value) + command(b"GET", key)) * (repeat // 2 or 1)


def ping_time(sock: socket.socket) -> float:
    start = time.perf_counter()
    sock.sendall(b"*1\r\n$4\r\nPING\r\n")
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(64)
        if not chunk:
            raise RuntimeError("the node closed the normal client")
        data += chunk
    if data != b"+PONG\r\n":
        raise RuntimeError(f"the normal client got {data!r}")
    return time.perf_counter() - start


def run(host: str, port: int, pid: int, args) -> None:
    value = b"v" * args.value_size
    normal = socket.create_connection((host, port), timeout=10)
    normal.sendall(command(b"SET", b"big", value))
    assert normal.recv(16) == b"+OK\r\n"
    for _ in range(20):  # allocator and task machinery warm
        ping_time(normal)
    idle = rss_bytes(pid)
    selector = selectors.DefaultSelector()
    sent = 0
    opened = 0
    for index in range(args.clients):
        sock = socket.create_connection((host, port), timeout=10)
        sock.setblocking(False)
        data = pipeline(args.workload, index, value, 64)
        selector.register(sock, selectors.EVENT_WRITE, [memoryview(data), 0, data])
        opened += 1
    print(f"node pid {pid}; {args.clients} clients, workload {args.workload}, values of "
          f"{args.value_size} bytes; idle RSS {idle / 2**20:.1f} MiB")
    print(f"{'s':>4} {'RSS MiB':>9} {'over idle':>10} {'taken MiB':>10} {'open':>6} {'PING ms':>8}")
    peak = idle
    start = time.monotonic()
    next_report = start + 1.0
    slowest = 0.0
    next_ping = start
    closed = 0
    while time.monotonic() - start < args.seconds:
        for key, _ in selector.select(timeout=0.05):
            state = key.data
            view, offset, data = state
            try:
                n = key.fileobj.send(view[offset:])
            except BlockingIOError:
                continue
            except OSError:  # the node closed it (an output limit)
                selector.unregister(key.fileobj)
                key.fileobj.close()
                closed += 1
                continue
            sent += n
            state[1] = (offset + n) % len(data)
        now = time.monotonic()
        if now >= next_ping:
            slowest = max(slowest, ping_time(normal))
            next_ping = now + 0.1
        if now >= next_report:
            rss = rss_bytes(pid)
            peak = max(peak, rss)
            print(f"{now - start:4.0f} {rss / 2**20:9.1f} {(rss - idle) / 2**20:10.1f} "
                  f"{sent / 2**20:10.1f} {opened - closed:6d} {slowest * 1000:8.1f}", flush=True)
            slowest = 0.0
            next_report += 1.0
    print(f"peak RSS {peak / 2**20:.1f} MiB, {(peak - idle) / 2**20:.1f} MiB over idle "
          f"({(peak - idle) / args.clients / 1024:.0f} KiB per client); the clients got the node "
          f"to take {sent / 2**20:.1f} MiB; {closed} of them closed by the node")
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    normal.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--value-size", type=int, default=4096)
    parser.add_argument("--workload", choices=("setget", "get"), default="setget")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--host", help="attach to this running node (with --port and --pid)")
    parser.add_argument("--port", type=int)
    parser.add_argument("--pid", type=int, help="the running node's process id")
    parser.add_argument("--config", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="a config key for the node this script starts (repeatable)")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.clients + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.clients + 100), hard))
    if args.host:
        if args.port is None or args.pid is None:
            parser.error("--host needs --port and --pid")
        run(args.host, args.port, args.pid, args)
        return 0
    with tempfile.TemporaryDirectory(prefix="dyno-pipeline-") as directory:
        state = localcluster.up(directory, racks=1, **dict(args.config))
        try:
            node = state.nodes[0]
            run(node.host, node.port, node.pid, args)
        finally:
            localcluster.down(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
