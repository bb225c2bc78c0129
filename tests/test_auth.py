"""Client AUTH (requirepass) and the node's own Redis password (datastore_password),
with real processes: the replies are Redis's own, on every node of a cluster."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request

import pytest
import redis
import yaml

import support
from dyno import localcluster

integration = pytest.mark.integration
SECRET = "s3cret"


class Raw:
    """A plain socket speaking RESP: the exact reply lines."""

    def __init__(self, node: support.NodeHandle):
        self.sock = socket.create_connection((node.host, node.port), timeout=5)
        self.buffer = b""

    def call(self, *argv: str, replies: int = 1) -> list[bytes]:
        self.sock.sendall(b"".join(b"*%d\r\n" % len(a) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in a)
                                   for a in ([arg.encode() for arg in argv],)))
        return self.read(replies)

    def send(self, payload: bytes, replies: int) -> list[bytes]:
        self.sock.sendall(payload)
        return self.read(replies)

    def read(self, count: int) -> list[bytes]:
        lines = []
        while len(lines) < count:
            while b"\r\n" not in self.buffer:
                self.buffer += self.sock.recv(65536)
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            if line.startswith(b"$") and line != b"$-1":
                while len(self.buffer) < int(line[1:]) + 2:
                    self.buffer += self.sock.recv(65536)
                line, self.buffer = self.buffer[: int(line[1:])], self.buffer[int(line[1:]) + 2:]
            lines.append(line)
        return lines


def cmd(*argv: str) -> bytes:
    return b"*%d\r\n" % len(argv) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a.encode()) for a in argv)


NOAUTH = b"-NOAUTH Authentication required."
WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled."


@integration
def test_requirepass_on_every_node_of_a_cluster(cluster_factory):
    cluster = cluster_factory(racks=3, requirepass=SECRET)
    for index, node in enumerate(cluster.nodes):
        raw = Raw(node)
        assert raw.call("PING") == [NOAUTH]
        assert raw.call("SET", "k", "v") == [NOAUTH]
        assert raw.call("GET", "k") == [NOAUTH]
        assert raw.call("HELLO", "3")[0].startswith(b"-NOAUTH HELLO must be called")
        assert raw.call("AUTH", "wrong") == [WRONGPASS]
        assert raw.call("AUTH", "default", "wrong") == [WRONGPASS]
        assert raw.call("AUTH", "bob", SECRET) == [WRONGPASS]
        # A pipeline: refused, then AUTH, then served (late AUTH)
        assert raw.send(cmd("GET", "k") + cmd("AUTH", SECRET) + cmd("SET", f"k{index}", "v")
                        + cmd("GET", f"k{index}"), 4) == [NOAUTH, b"+OK", b"+OK", b"v"]
        assert raw.call("AUTH", "wrong") == [WRONGPASS]  # a wrong AUTH later does not log it out
        assert raw.call("PING") == [b"+PONG"]
        assert raw.call("RESET") == [b"+RESET"]  # RESET logs it out, as in Redis
        assert raw.call("GET", f"k{index}") == [NOAUTH]
        assert raw.call("AUTH", "default", SECRET) == [b"+OK"]
        assert raw.call("QUIT") == [b"+OK"]
    # Clients as they are used: redis-py with a password, a username, RESP3's HELLO 3 AUTH.
    for node in cluster.nodes:
        with pytest.raises(redis.AuthenticationError):
            node.client().get("k0")
        with pytest.raises(redis.AuthenticationError):
            node.client(password="nope").get("k0")
        assert node.client(password=SECRET).get("k0") == b"v"
        assert node.client(username="default", password=SECRET).get("k1") == b"v"
        assert node.client(username="default", password=SECRET, protocol=3).get("k2") == b"v"
    metrics = "".join(_get(node, "/metrics") for node in cluster.nodes)
    counts = [float(line.split()[-1]) for line in metrics.splitlines()
              if line.startswith("dyno_auth_failures_total")]
    # the four wrong AUTHs sent by hand above, per node, and redis-py's (which it may retry)
    assert len(counts) == 3 and all(count >= 5 for count in counts)


def _get(node: support.NodeHandle, path: str) -> str:
    with urllib.request.urlopen(f"http://{node.host}:{node.stats_port}{path}", timeout=5) as reply:
        return reply.read().decode()


def _node_config(tmp_path, redis_port: int, **extra) -> str:
    (plan,) = localcluster.plan(1, 1, 1)
    conf = plan.config_dict()
    conf["servers"] = [f"127.0.0.1:{redis_port}:1"]
    conf.update(extra)
    path = tmp_path / "node.yml"
    path.write_text(yaml.safe_dump({"dyn_o_mite": conf}))
    return str(path), plan


@integration
@pytest.mark.parametrize("given", [None, "wrong"])
def test_a_wrong_or_missing_datastore_password_stops_the_start_with_one_line(tmp_path, given):
    with support.RedisServer(tmp_path / "redis", args=("--requirepass", SECRET)) as server:
        extra = {} if given is None else {"datastore_password": given}
        path, _ = _node_config(tmp_path, server.port, **extra)
        done = subprocess.run([sys.executable, "-m", "dyno", "start", "--config", path],
                              capture_output=True, text=True, timeout=60, env=None)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    hint = "set datastore_password" if given is None else "check datastore_password"
    assert "cannot start: datastore" in lines[0] and hint in lines[0]


@integration
def test_the_right_datastore_password_is_sent_on_every_connection(tmp_path):
    with support.RedisServer(tmp_path / "redis", args=("--requirepass", SECRET)) as server:
        path, plan = _node_config(tmp_path, server.port, datastore_password=SECRET)
        proc = subprocess.Popen([sys.executable, "-m", "dyno", "start", "--config", path],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=None, start_new_session=True)
        support.TRACKER.track(proc.pid, "dyno node (datastore password)")
        try:
            support.wait_for(lambda: support.ping(plan.host, plan.port), 15, "the node to answer PING")
            client = redis.Redis(plan.host, plan.port)
            assert client.set("pw", "ok") and client.get("pw") == b"ok"
            # CONFIG GET reads the Redis's settings, never its password
            assert client.config_get("requirepass") == {}
            assert "requirepass" not in client.config_get("*") and "save" in client.config_get("*")
            # Redis restarts (the pool reconnects): the password is sent again.
            server.restart()
            support.wait_for(lambda: _works(client), 15, "the node to serve again after Redis restarted",
                             ignore=(redis.RedisError,))
        finally:
            proc.kill()
            proc.wait()


def _works(client: redis.Redis) -> bool:
    return bool(client.set("again", "1")) and client.get("again") == b"1"
