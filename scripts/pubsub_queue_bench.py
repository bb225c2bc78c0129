#!/usr/bin/env python3
"""Issue 16's figures: PUBLISH fan-out, and a BLPOP job queue, through dyno and plain Redis.

pubsub: --subscribers raw connections spread over the nodes of a 3-rack cluster (all
        on the one redis-server for plain Redis) SUBSCRIBE to one channel; a publisher
        on node1 sends --messages PUBLISHes, pipelined --pipeline at a time. Prints
        messages/s (published until every subscriber had every message) and
        deliveries/s (messages x subscribers).
queue:  --workers BLPOP workers spread over the nodes pop --jobs jobs that a producer
        RPUSHes (pipelined) through node2; prints jobs/s until the last was popped,
        and checks each job was popped once.

The two targets run one after the other on a fresh cluster / server each.

    .venv/bin/python scripts/pubsub_queue_bench.py pubsub --subscribers 100 --messages 20000
    .venv/bin/python scripts/pubsub_queue_bench.py queue --workers 12 --jobs 20000
"""

from __future__ import annotations

import argparse
import selectors
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from dyno import localcluster  # noqa: E402


def command(*argv: bytes) -> bytes:
    return b"*%d\r\n" % len(argv) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in argv)


def pubsub(addresses: list[tuple[str, int]], subscribers: int, messages: int, pipeline: int) -> tuple[float, int]:
    channel, body = b"bench", b"x" * 64
    message = b"*3\r\n$7\r\nmessage\r\n$5\r\nbench\r\n$64\r\n" + body + b"\r\n"
    confirm = b"*3\r\n$9\r\nsubscribe\r\n$5\r\nbench\r\n:1\r\n"
    socks = []
    for i in range(subscribers):
        sock = socket.create_connection(addresses[i % len(addresses)])
        sock.sendall(command(b"SUBSCRIBE", channel))
        socks.append(sock)
    for sock in socks:  # each confirmed before anything is published
        got = b""
        while len(got) < len(confirm):
            got += sock.recv(len(confirm) - len(got))
    publisher = redis.Redis(*addresses[0])
    deadline = time.monotonic() + 10
    while publisher.execute_command("PUBSUB", "NUMSUB", channel)[1] < subscribers:
        if time.monotonic() > deadline:
            sys.exit("the subscriptions never showed")
        time.sleep(0.01)
    expected = len(message) * messages
    received = dict.fromkeys(socks, 0)
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    started = time.monotonic()

    def publish() -> None:
        pipe = publisher.pipeline(transaction=False)
        for i in range(messages):
            pipe.publish(channel, body)
            if len(pipe) == pipeline:
                pipe.execute()
        if len(pipe):
            pipe.execute()

    thread = threading.Thread(target=publish)
    thread.start()
    left = len(socks)
    while left:
        for key, _ in selector.select(timeout=30):
            data = key.fileobj.recv(1 << 20)
            received[key.fileobj] += len(data)
            if received[key.fileobj] >= expected:
                selector.unregister(key.fileobj)
                left -= 1
    elapsed = time.monotonic() - started
    thread.join()
    for sock in socks:
        sock.close()
    return elapsed, messages * subscribers


def queue(addresses: list[tuple[str, int]], workers: int, jobs: int) -> float:
    popped: list[bytes] = []
    lock = threading.Lock()
    done = threading.Event()

    def worker(address) -> None:
        client = redis.Redis(*address, socket_timeout=30)
        while not done.is_set():
            item = client.blpop("{q}jobs", timeout=1)
            if item is not None:
                with lock:
                    popped.append(item[1])
                    if len(popped) == jobs:
                        done.set()

    threads = [threading.Thread(target=worker, args=(addresses[i % len(addresses)],)) for i in range(workers)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # the workers are blocked in BLPOP before the first job
    producer = redis.Redis(*addresses[1 % len(addresses)])
    started = time.monotonic()
    pipe = producer.pipeline(transaction=False)
    for i in range(jobs):
        pipe.rpush("{q}jobs", b"job%d" % i)
        if len(pipe) == 100:
            pipe.execute()
    if len(pipe):
        pipe.execute()
    if not done.wait(120):
        sys.exit(f"only {len(popped)} of {jobs} jobs popped")
    elapsed = time.monotonic() - started
    for thread in threads:
        thread.join()
    if len(set(popped)) != jobs:
        sys.exit(f"{jobs - len(set(popped))} jobs popped twice")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["pubsub", "queue"])
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--pipeline", type=int, default=100)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--jobs", type=int, default=20_000)
    args = parser.parse_args()
    for target in ("redis", "dyno"):
        with tempfile.TemporaryDirectory(prefix="dyno-bench16-") as tmp:
            if target == "redis":
                # a one-node cluster's own redis-server, talked to directly (its dyno idles)
                cluster = localcluster.up(Path(tmp) / "c", 1, 1, 1)
                addresses = [(cluster.nodes[0].host, cluster.nodes[0].redis_port)]
            else:
                cluster = localcluster.up(Path(tmp) / "c", 1, 3, 1, hash_tag="{}")
                addresses = [(node.host, node.port) for node in cluster.nodes]
            try:
                if args.what == "pubsub":
                    elapsed, deliveries = pubsub(addresses, args.subscribers, args.messages, args.pipeline)
                    print(f"{target:5}  {args.subscribers} subscribers on {len(addresses)} node(s): "
                          f"{args.messages / elapsed:,.0f} messages/s, {deliveries / elapsed:,.0f} deliveries/s "
                          f"({elapsed:.2f} s)")
                else:
                    elapsed = queue(addresses, args.workers, args.jobs)
                    print(f"{target:5}  {args.workers} BLPOP workers on {len(addresses)} node(s): "
                          f"{args.jobs / elapsed:,.0f} jobs/s ({elapsed:.2f} s, every job popped once)")
            finally:
                cluster.stop()


if __name__ == "__main__":
    main()
