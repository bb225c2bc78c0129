"""A cluster on real hosts: each node and its Redis in a network namespace of its own.

Issue 18. Every other integration test runs all nodes on 127.0.0.1, where a node that
advertises the wrong address, or a config that names hosts instead of addresses, goes
unnoticed. Here (tests/netns.py) each node has its own address and host name; the configs
name hosts only (node1.dyno.test:8101 ..., resolved through /etc/netns/<ns>/hosts), every
node uses the same ports (Dynomite's defaults) as it would on its own machine, and each
rack sits behind an uplink the test cuts and plugs back.

What it checks, across those links: gossip finds every peer; routing puts each key on its
owner in every rack; `dyno status` run on a host reaches every node's admin port through the
address the node advertised; a rack cut off is judged down by the others (and sees them
down), and is up again after the heal; writes made at DC_ONE during the partition reach the
cut-off rack by hinted handoff; a replica that lost its data is refilled by `dyno repair`
from the other racks.

Needs root (network namespaces), as CI has; skipped otherwise, saying why.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest
import redis
import yaml

import netns
import support
from dyno import localcluster

pytestmark = pytest.mark.integration

RACKS, PER_RACK = 3, 2
DOMAIN = "dyno.test"
# Dynomite's default ports, the same on every host: nothing may rely on ports being distinct.
PORT, DYN_PORT, STATS_PORT, REDIS_PORT = 8102, 8101, 22222, 6379
GOS_INTERVAL_MS = 500
DETECTION_BOUND = 15.0  # s: a cut rack judged down on both sides
HEAL_BOUND = 20.0       # s: links up again after the heal
KEYS = 300              # written before the partition
PARTITION_KEYS = 300    # written at DC_ONE while rack3 is cut off


# --------------------------------------------------------------------------- the lab


def node_plans(extra: dict | None = None) -> list[localcluster.NodePlan]:
    """3 racks x 2 nodes, named node1..node6; hosts by name, seeds by name; `extra`
    config keys for every node (they override the generated ones)."""
    tokens = localcluster.rack_tokens(PER_RACK)
    skeleton = []
    for r in range(RACKS):
        for i in range(PER_RACK):
            n = r * PER_RACK + i + 1
            skeleton.append(localcluster.NodePlan(
                name=f"node{n}", dc="dc1", rack=f"rack{r + 1}", host=f"node{n}.{DOMAIN}",
                port=PORT, dyn_port=DYN_PORT, stats_port=STATS_PORT, redis_port=REDIS_PORT,
                tokens=(tokens[i],), seeds=(),
                config=tuple({"read_consistency": "DC_ONE", "write_consistency": "DC_ONE",
                              "gos_interval": GOS_INTERVAL_MS, "timeout": 2000, **(extra or {})}.items()),
            ))
    return [
        localcluster.NodePlan(**{**vars_of(p), "seeds": tuple(o.seed for o in skeleton if o is not p)})
        for p in skeleton
    ]


def vars_of(plan: localcluster.NodePlan) -> dict:
    return {f: getattr(plan, f) for f in plan.__dataclass_fields__}


class HostCluster:
    """The lab, the cluster's processes in it (a localcluster.ClusterState: pids in
    DIR/cluster.json, stopped by the safety net too), and ways to reach them."""

    def __init__(self, lab: netns.Lab, dir, extra: dict | None = None):
        self.lab = lab
        self.dir = dir
        self.plans = node_plans(extra)
        for r in range(RACKS):
            lab.add_rack(f"rack{r + 1}")
        for plan in self.plans:
            lab.add_host(plan.host, plan.rack)
        lab.add_host(f"client.{DOMAIN}")  # on the core bridge: on the majority side of any cut
        lab.write_hosts_files()
        lab.use_client(f"client.{DOMAIN}")
        configs = localcluster.write_configs(self.plans, dir)
        self.state = localcluster.ClusterState(dir, [])
        for plan, config in zip(self.plans, configs):
            node = localcluster.NodeState(plan=plan, config=config, log=dir / f"{plan.name}.log",
                                          redis_log=dir / f"{plan.name}-redis.log", redis_dir=dir / plan.name)
            address = lab.hosts[plan.host].address
            # Redis binds the host's address; the node's config names it by host name.
            redis_argv = localcluster.redis_command(node)
            redis_argv[redis_argv.index("--bind") + 1] = address
            redis_argv += ["--protected-mode", "no"]  # it is reached from other hosts' addresses
            node.redis_argv = lab.wrap(plan.host, redis_argv)
            node.argv = lab.wrap(plan.host, localcluster.dyno_command(node))
            self.state.nodes.append(node)
        self.state.save()
        support.TRACKER.track_cluster(dir)

    def address(self, name: str) -> str:
        return self.lab.hosts[self.state.node(name).host].address

    def names(self) -> list[str]:
        return [n.name for n in self.state.nodes]

    def rack_of(self, name: str) -> str:
        return self.state.node(name).rack

    # --- processes ---

    def start(self, timeout: float = 30.0) -> None:
        for node in self.state.nodes:
            self.state.start_redis(node.name, wait=False)
        self._wait(lambda n: localcluster.ping(self.address(n.name), REDIS_PORT), "redis-server", timeout)
        for node in self.state.nodes:
            self.state.start_node(node.name, wait=False)
        self._wait(lambda n: localcluster.ping(self.address(n.name), PORT), "dyno", timeout)

    def _wait(self, ready, what: str, timeout: float) -> None:
        def all_ready() -> bool:
            for node in self.state.nodes:
                alive = node.redis_alive if what == "redis-server" else node.node_alive
                if not alive:
                    log = node.redis_log if what == "redis-server" else node.log
                    raise AssertionError(f"{node.name}: {what} exited\n{localcluster.log_tail(log)}")
            return all(self.lab.call(ready, node) for node in self.state.nodes)
        support.wait_for(all_ready, timeout, f"every {what} to answer PING", interval=0.05)

    def stop(self) -> None:
        self.state.stop(timeout=5.0)

    def logs(self, lines: int = 40) -> str:
        return "\n".join(f"--- {n.log} ---\n{localcluster.log_tail(n.log, lines)}" for n in self.state.nodes)

    # --- talking to nodes (from the client host) ---

    def client(self, name: str, **kw) -> redis.Redis:
        """A client of `name`'s dyno port; use it only inside self.lab.call."""
        return redis.Redis(self.address(name), PORT, **{**support.CLIENT_DEFAULTS, **kw})

    def redis(self, name: str, **kw) -> redis.Redis:
        """A client of `name`'s own Redis (behind dyno's back); only inside self.lab.call."""
        return redis.Redis(self.address(name), REDIS_PORT, **{**support.CLIENT_DEFAULTS, **kw})

    def info_dyno(self, name: str) -> dict:
        def fetch() -> dict:
            with self.client(name, socket_timeout=2) as c:
                return {k: str(v) for k, v in c.info("dyno").items()}
        return self.lab.call(fetch)

    def peers_up(self, name: str) -> int:
        return int(self.info_dyno(name)["peers_up"])

    def admin_json(self, name: str, path: str) -> dict:
        """GET `path` from `name`'s admin port, from the client host."""
        def fetch() -> dict:
            with urllib.request.urlopen(f"http://{self.address(name)}:{STATS_PORT}{path}", timeout=3) as reply:
                return json.loads(reply.read())
        return self.lab.call(fetch)

    def hints(self, name: str) -> dict[str, dict]:
        body = self.admin_json(name, "/info")
        return next(v["hints"] for v in body.values() if isinstance(v, dict) and "hints" in v)

    def dyno(self, on: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """`dyno ARGS` run on the host of node `on` (its namespace, its /etc/hosts)."""
        env = localcluster._dyno_env()
        return self.lab.run(self.state.node(on).host, [sys.executable, "-m", "dyno", *args], timeout=timeout, env=env)


# --------------------------------------------------------------------------- fixture


@pytest.fixture
def hosts(tmp_path, request):
    """A HostCluster (not started); parametrized indirectly, a dict of config keys to add."""
    extra = getattr(request, "param", {})
    reason = netns.why_unavailable()
    if reason:
        pytest.skip(f"real-hosts test: {reason}")
    netns.remove_stale()
    try:
        lab = netns.Lab()
    except netns.LabUnavailable as e:
        pytest.skip(f"real-hosts test: this machine does not allow network namespaces: {e}")
    cluster = None
    try:
        cluster = HostCluster(lab, tmp_path, extra)
        yield cluster
    finally:
        try:
            if cluster is not None:
                report = getattr(request.node, "rep_call", None)
                if report is None or report.failed:
                    print(cluster.logs())
                cluster.stop()
        finally:
            problems = lab.close()
            assert not problems, problems


# --------------------------------------------------------------------------- helpers


def write(cluster: HostCluster, via: str, prefix: str, count: int) -> dict[bytes, bytes]:
    def run() -> dict[bytes, bytes]:
        written = {}
        with cluster.client(via) as c:
            pipe = c.pipeline(transaction=False)
            for i in range(count):
                key, value = f"{prefix}:{i}".encode(), f"{prefix}-value-{i}".encode()
                pipe.set(key, value)
                written[key] = value
            assert all(pipe.execute())
        return written
    return cluster.lab.call(run)


def keys_of(cluster: HostCluster, name: str) -> dict[bytes, bytes]:
    """Every key in node `name`'s own Redis (database 0), with its value."""
    def run() -> dict[bytes, bytes]:
        with cluster.redis(name) as r:
            keys = list(r.scan_iter(count=1000))
            return dict(zip(keys, r.mget(keys))) if keys else {}
    return cluster.lab.call(run)


def owners(cluster: HostCluster, written: dict[bytes, bytes]) -> dict[str, dict[bytes, bytes]]:
    """What each node's Redis holds of `written`."""
    return {name: {k: v for k, v in keys_of(cluster, name).items() if k in written} for name in cluster.names()}


def rack_copies(cluster: HostCluster, held: dict[str, dict[bytes, bytes]], written: dict[bytes, bytes]) -> dict:
    """For each rack: keys held by no node of it, and keys held by more than one."""
    out = {}
    for r in range(1, RACKS + 1):
        rack = f"rack{r}"
        count: dict[bytes, int] = {}
        for name in cluster.names():
            if cluster.rack_of(name) == rack:
                for key, value in held[name].items():
                    if value == written[key]:
                        count[key] = count.get(key, 0) + 1
        out[rack] = {"missing": [k for k in written if k not in count],
                     "twice": [k for k, c in count.items() if c > 1]}
    return out


def each_rack_holds_one_copy(cluster: HostCluster, written: dict[bytes, bytes]) -> bool:
    copies = rack_copies(cluster, owners(cluster, written), written)
    return all(not c["missing"] and not c["twice"] for c in copies.values())


def status_json(cluster: HostCluster, on: str) -> dict:
    result = cluster.dyno(on, "status", "--node", f"{cluster.state.node(on).host}:{STATS_PORT}", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- the test


def test_nodes_on_their_own_hosts_survive_a_rack_partition(hosts: HostCluster):
    cluster = hosts
    started = time.monotonic()
    cluster.start()
    names = cluster.names()
    others = len(names) - 1
    cut_off = [n for n in names if cluster.rack_of(n) == "rack3"]
    majority = [n for n in names if n not in cut_off]

    # Gossip and peer links across hosts, found by the names in the configs.
    support.wait_for(lambda: all(cluster.peers_up(n) == others for n in names), 20,
                     "every node to reach its 5 peers", ignore=(redis.RedisError, OSError), interval=0.1)
    # `dyno status` on a host: the ring by name, every node's /info through the admin
    # address it advertised in its HELLO (a wrong one would leave its row without keys).
    status = status_json(cluster, "node1")
    assert not status["warnings"], status["warnings"]
    rows = {row["node"]: row for row in status["nodes"]}
    assert set(rows) == {f"{cluster.state.node(n).host}:{DYN_PORT}" for n in names}
    assert all(row["up"] and row["state"] == "NORMAL" and row["keys"] is not None for row in rows.values()), rows
    assert {row["admin"] for row in rows.values()} == {f"{cluster.state.node(n).host}:{STATS_PORT}" for n in names}

    # Routing: keys written through one node land on their owner in every rack, and a
    # node of another rack reads them all (forwarding to its rack-mate where it owns none).
    before = write(cluster, "node1", "before", KEYS)
    support.wait_for(lambda: each_rack_holds_one_copy(cluster, before), 10, "one copy of each key per rack")
    held = owners(cluster, before)
    assert all(held[n] for n in names), "every node owns some keys"

    def read_all(via: str, written: dict[bytes, bytes]) -> bool:
        def run() -> bool:
            with cluster.client(via) as c:
                return c.mget(list(written)) == list(written.values())
        return cluster.lab.call(run)

    assert read_all("node6", before)

    # Partition: rack3's uplink goes down. Both sides judge the other down.
    cluster.lab.cut("rack3")
    cut_at = time.monotonic()

    # The client host cannot reach rack3 now: the cut-off side is asked by `dyno status`
    # run on its own hosts.
    def partition_seen_both_sides() -> bool:
        if not all(cluster.peers_up(n) == others - len(cut_off) for n in majority):
            return False
        for name in cut_off:
            view = status_json(cluster, name)
            up = {row["node"] for row in view["nodes"] if row["up"]}
            if up != {f"{cluster.state.node(n).host}:{DYN_PORT}" for n in cut_off}:
                return False
        return True

    support.wait_for(partition_seen_both_sides, DETECTION_BOUND, "the cut rack judged down on both sides",
                     ignore=(redis.RedisError, OSError), interval=0.2)
    detected_after = time.monotonic() - cut_at
    view = status_json(cluster, "node3")
    down = {row["node"] for row in view["nodes"] if not row["up"]}
    assert down == {f"{cluster.state.node(n).host}:{DYN_PORT}" for n in cut_off}

    # Writes at DC_ONE during the partition succeed and are kept as hints for rack3.
    during = write(cluster, "node1", "during", PARTITION_KEYS)
    during.update(write(cluster, "node3", "during-b", PARTITION_KEYS // 3))
    cut_off_peers = {f"{cluster.state.node(n).host}:{DYN_PORT}" for n in cut_off}
    hinted = {(name, peer): counts["stored"] for name in majority for peer, counts in cluster.hints(name).items()}
    assert {peer for (_, peer), stored in hinted.items() if stored} == cut_off_peers, hinted
    for name in cut_off:  # ... and did not reach it (asked on its own host)
        result = cluster.lab.run(cluster.state.node(name).host,
                                 ["redis-cli", "-h", cluster.address(name), "-p", str(REDIS_PORT), "DBSIZE"])
        assert result.stdout.strip() == str(len(held[name])), (name, result.stdout, result.stderr)

    # Heal: links come back, rack3 is routed to again, and the hints reach it.
    cluster.lab.heal("rack3")
    healed_at = time.monotonic()
    support.wait_for(lambda: all(cluster.peers_up(n) == others for n in names), HEAL_BOUND,
                     "every node to reach every peer after the heal",
                     ignore=(redis.RedisError, OSError), interval=0.2)
    rejoined_after = time.monotonic() - healed_at
    support.wait_for(lambda: sum(c["pending"] for n in names for c in cluster.hints(n).values()) == 0, 30,
                     "every hint replayed", ignore=(OSError,), interval=0.2)
    replayed = {(name, peer): counts["replayed"] for name in majority for peer, counts in cluster.hints(name).items()}
    assert replayed == hinted
    copies = rack_copies(cluster, owners(cluster, during), during)
    assert copies["rack3"] == {"missing": [], "twice": []}, {k: (len(v["missing"]), len(v["twice"]))
                                                             for k, v in copies.items()}
    assert each_rack_holds_one_copy(cluster, during)
    assert read_all("node5", {**before, **during})

    # Repair across hosts: node5 loses its data; `dyno repair` run on its host refills it
    # from the other racks, with exactly what its rack-mates in racks 1 and 2 hold.
    cluster.lab.call(lambda: cluster.redis("node5").flushall())
    assert keys_of(cluster, "node5") == {}
    result = cluster.dyno("node5", "repair", "--node", f"{cluster.state.node('node5').host}:{STATS_PORT}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert keys_of(cluster, "node5") == keys_of(cluster, "node1") == keys_of(cluster, "node3")

    print(f"\nreal hosts: partition detected after {detected_after:.1f} s, links back {rejoined_after:.1f} s "
          f"after the heal, {sum(hinted.values())} hinted batches replayed; whole test {time.monotonic() - started:.1f} s")


@pytest.mark.parametrize("hosts", [{"listen": f"0.0.0.0:{PORT}", "stats_listen": f"0.0.0.0:{STATS_PORT}"}],
                         indirect=True, ids=["wildcard-listeners"])
def test_status_on_hosts_whose_admin_port_listens_on_every_address(hosts: HostCluster):
    """A common real-host config: the client and admin ports on 0.0.0.0, dyn_listen by
    name. A node then advertises its admin port as 0.0.0.0:22222; `dyno status` must
    reach each node's own admin port (on that node's host), not the one it asked first."""
    cluster = hosts
    cluster.start()
    names = cluster.names()
    support.wait_for(lambda: all(cluster.peers_up(n) == len(names) - 1 for n in names), 20,
                     "every node to reach its 5 peers", ignore=(redis.RedisError, OSError), interval=0.1)
    write(cluster, "node1", "k", KEYS)
    status = status_json(cluster, "node1")
    assert not status["warnings"], status["warnings"]
    rows = {row["node"]: row for row in status["nodes"]}
    for name in names:
        host = cluster.state.node(name).host
        row = rows[f"{host}:{DYN_PORT}"]
        assert row["admin"] == f"{host}:{STATS_PORT}", row
        assert row["up"] and row["state"] == "NORMAL", row


@pytest.mark.parametrize("hosts", [{"stats_listen": f"127.0.0.1:{STATS_PORT}"}], indirect=True,
                         ids=["loopback-admin"])
def test_status_says_which_admin_ports_other_hosts_cannot_reach(hosts: HostCluster):
    """Admin ports on 127.0.0.1 (dyno's default): each node advertises 127.0.0.1:22222,
    which on another host is that host's own admin port. `dyno status` must not show the
    figures of the node it asked as another node's; it names the ones it could not reach."""
    cluster = hosts
    cluster.start()
    names = cluster.names()
    support.wait_for(lambda: all(cluster.peers_up(n) == len(names) - 1 for n in names), 20,
                     "every node to reach its 5 peers", ignore=(redis.RedisError, OSError), interval=0.1)
    result = cluster.dyno("node1", "status", "--node", f"127.0.0.1:{STATS_PORT}", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    status = json.loads(result.stdout)
    rows = {row["node"]: row for row in status["nodes"]}
    me = f"{cluster.state.node('node1').host}:{DYN_PORT}"
    assert rows[me]["keys"] is not None and rows[me]["admin"] == f"127.0.0.1:{STATS_PORT}"
    others = [name for name in rows if name != me]
    assert all(rows[name]["keys"] is None and rows[name]["up"] for name in others), rows
    assert sorted(w.split(" ")[0] for w in status["warnings"]) == sorted(others), status["warnings"]
    assert all("not an address other hosts can reach" in w for w in status["warnings"])


def test_a_seed_whose_name_never_resolves_does_not_stall_the_node(hosts: HostCluster):
    """node1's dyn_seeds also name ghost.dyno.test, which the DNS server never answers for
    (a host gone from DNS, a DNS server down: here an address where nothing listens). The
    node looks names up off its event loop, so while its link to the ghost retries, it
    still answers every client at once."""
    cluster = hosts
    cluster.lab.write_hosts_files(resolver=f"{cluster.lab.subnet}.250")
    config = cluster.state.node("node1").config
    document = yaml.safe_load(config.read_text())
    document["dyn_o_mite"]["dyn_seeds"].append(f"ghost.{DOMAIN}:{DYN_PORT}:rack3:dc1:1")
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    cluster.start()
    names = cluster.names()
    support.wait_for(lambda: cluster.info_dyno("node1")["peers_up"] == str(len(names) - 1), 20,
                     "node1 to reach its 5 live peers", ignore=(redis.RedisError, OSError), interval=0.1)
    assert cluster.info_dyno("node1")["peers"] == str(len(names))  # the ghost is one of them

    def slowest_ping(seconds: float) -> float:
        slowest = 0.0
        with cluster.client("node1", socket_timeout=30) as client:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                sent = time.monotonic()
                client.ping()
                slowest = max(slowest, time.monotonic() - sent)
                time.sleep(0.005)  # pacing, so that the loop also runs between PINGs
        return slowest

    # Each lookup of the ghost takes the resolver's 2 s; the link retries every 2 s at most.
    slowest = cluster.lab.call(slowest_ping, 6.0)
    log = cluster.state.node("node1").log.read_text()
    assert f"peer ghost.{DOMAIN}:{DYN_PORT} unreachable" in log
    assert slowest < 0.5, f"node1 took {slowest:.2f} s to answer a PING while looking up the ghost"
