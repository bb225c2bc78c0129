#!/usr/bin/env python3
"""Memory per idle client connection of a dyno node (issue 6: under 20 KB).

Starts one node with its own redis-server (dyno.localcluster, in a temp dir), opens
N client connections that each send one PING (so the node has a task and a parser
for every one), and reports the node's RSS growth per connection. Stops everything.

    .venv/bin/python scripts/idle_memory.py [--connections 2000]
"""

from __future__ import annotations

import argparse
import resource
import socket
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dyno import localcluster  # noqa: E402


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_idle(host: str, port: int, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((host, port), timeout=10)
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        sockets.append(sock)
    for sock in sockets:  # every connection answered: the node holds all of them
        assert sock.recv(16) == b"+PONG\r\n"
    return sockets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.connections + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.connections + 100), hard))
    with tempfile.TemporaryDirectory(prefix="dyno-idle-") as directory:
        state = localcluster.up(directory, racks=1)
        try:
            node = state.nodes[0]
            warm = open_idle(node.host, node.port, 50)  # allocator and task machinery warm
            before = rss_bytes(node.pid)
            sockets = open_idle(node.host, node.port, args.connections)
            after = rss_bytes(node.pid)
            per = (after - before) / args.connections
            print(f"{args.connections} idle connections: RSS {before / 2**20:.1f} -> "
                  f"{after / 2**20:.1f} MiB, {per / 1024:.1f} KiB per connection (target < 20 KB)")
            for sock in warm + sockets:
                sock.close()
        finally:
            localcluster.down(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
