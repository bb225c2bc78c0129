"""dyno.localcluster: the plan (pure), the configs, and starting/stopping real processes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections import defaultdict

import pytest
import redis
import yaml
from hypothesis import given
from hypothesis import strategies as st

import support
from dyno import localcluster as lc

shapes = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4))


# --------------------------------------------------------------------------- plan (pure)


@given(shape=shapes, base=st.one_of(st.none(), st.integers(1024, 30000)))
def test_plan_properties(shape, base):
    dcs, racks, per_rack = shape
    nodes = lc.plan(dcs, racks, per_rack, base_port=base)
    assert len(nodes) == dcs * racks * per_rack
    assert len({n.name for n in nodes}) == len(nodes)

    ports = [p for n in nodes for p in (n.port, n.dyn_port, n.stats_port, n.redis_port)]
    assert len(set(ports)) == len(ports), "every port of every node is distinct"

    by_rack = defaultdict(list)
    for n in nodes:
        by_rack[n.dc, n.rack].append(n)
    assert {dc for dc, _ in by_rack} == {f"dc{i}" for i in range(1, dcs + 1)}
    assert {rack for _, rack in by_rack} == {f"rack{i}" for i in range(1, racks + 1)}
    step = 2**32 // per_rack
    for members in by_rack.values():
        tokens = sorted(t for n in members for t in n.tokens)
        assert tokens == [i * step for i in range(per_rack)], "evenly spaced, the same set in every rack"

    for n in nodes:
        others = {o.seed for o in nodes if o is not n}
        assert set(n.seeds) == others and len(n.seeds) == len(others), "seeds name every other node once"
        host, dyn_port, rack, dc, tokens = n.seed.split(":")
        assert (host, int(dyn_port), rack, dc, tokens) == (n.host, n.dyn_port, n.rack, n.dc, str(n.tokens[0]))


def test_plan_with_base_port_is_deterministic():
    nodes = lc.plan(racks=3, base_port=8102)
    assert [(n.name, n.rack, n.port, n.dyn_port, n.stats_port, n.redis_port) for n in nodes] == [
        ("node1", "rack1", 8102, 8103, 8104, 8105),
        ("node2", "rack2", 8112, 8113, 8114, 8115),
        ("node3", "rack3", 8122, 8123, 8124, 8125),
    ]
    assert lc.plan(racks=3, base_port=8102) == nodes


@pytest.mark.parametrize("kw", [dict(racks=0), dict(dcs=-1), dict(nodes_per_rack=0), dict(base_port=65530)])
def test_plan_refuses_impossible_shapes(kw):
    with pytest.raises(ValueError):
        lc.plan(**kw)


def test_write_configs_are_dynomite_yaml(tmp_path):
    nodes = lc.plan(dcs=2, racks=3, nodes_per_rack=2, read_consistency="DC_QUORUM", hash_tag="{}", timeout=2000)
    paths = lc.write_configs(nodes, tmp_path)
    assert [p.name for p in paths] == [f"node{i}.yml" for i in range(1, 13)]
    conf = yaml.safe_load(paths[4].read_text())["dyn_o_mite"]
    node = nodes[4]
    assert conf["datacenter"] == "dc1" and conf["rack"] == "rack3"
    assert conf["listen"] == f"127.0.0.1:{node.port}"
    assert conf["dyn_listen"] == f"127.0.0.1:{node.dyn_port}"
    assert conf["stats_listen"] == f"127.0.0.1:{node.stats_port}"
    assert conf["servers"] == [f"127.0.0.1:{node.redis_port}:1"]
    assert conf["tokens"] == "0" and conf["data_store"] == 0
    assert len(conf["dyn_seeds"]) == 11
    assert conf["read_consistency"] == "DC_QUORUM" and conf["write_consistency"] == "DC_ONE"
    assert conf["hash_tag"] == "{}" and conf["timeout"] == 2000


def test_configs_pass_dynos_own_validation(tmp_path):
    config = pytest.importorskip("dyno.config")
    nodes = lc.plan(dcs=2, racks=2, nodes_per_rack=2, hash_tag="{}")
    for node, path in zip(nodes, lc.write_configs(nodes, tmp_path)):
        loaded = config.load_config(path)
        assert (loaded.datacenter, loaded.rack, loaded.tokens) == (node.dc, node.rack, node.tokens)
        assert len(loaded.dyn_seeds) == len(nodes) - 1


def test_down_of_nothing_is_zero(tmp_path):
    assert lc.down(tmp_path) == 0
    assert lc.status(tmp_path) == []


# --------------------------------------------------------------------------- processes


def _all_pids(dir) -> list[tuple[int, int | None]]:
    data = json.loads((dir / "cluster.json").read_text())
    return [(n[k], n[f"{k}_start"]) for n in data["nodes"] for k in ("pid", "redis_pid")]


def _assert_all_gone(dir):
    left = [pid for pid, start in _all_pids(dir) if lc.pid_alive(pid, start)]
    assert not left, f"processes left behind: {left}"


@pytest.mark.integration
def test_harness_machinery_with_standin_nodes(tmp_path):
    """up/down/refusal/restarts, with plain redis-servers standing in for dyno nodes."""
    dir = tmp_path / "c"
    with support.start_cluster(dir, racks=3, node_command=support.standin_command) as cluster:
        assert len(cluster) == 3 and all(support.ping(*a) for a in cluster.addrs + cluster.redis_addrs)
        with pytest.raises(lc.ClusterError, match="already running.*make cluster-stop"):
            lc.up(dir, racks=3, node_command=support.standin_command)
        node = cluster[1]
        node.kill()
        assert not node.alive and not support.ping(*node.addr)
        node.start()
        assert node.alive and support.ping(*node.addr)
        node.pause()
        assert not support.ping(*node.addr, timeout=0.2), "a paused node answers nothing"
        node.resume()
        assert node.client().ping()
        node.client().set("k", "v")
        node.restart_redis()
        assert node.redis_client().dbsize() == 0
        assert [s["answers_ping"] for s in lc.status(dir)] == [True, True, True]
        cluster[2].pause()  # teardown must still stop a paused process promptly
    _assert_all_gone(dir)
    assert lc.down(dir) == 0


@pytest.mark.integration
def test_failed_start_stops_everything_and_shows_the_log(tmp_path):
    def crashing(node):
        return [sys.executable, "-c", "import sys; print('cannot start: bad config', file=sys.stderr); sys.exit(3)"]

    with pytest.raises(lc.ClusterError) as failure:
        support.start_cluster(tmp_path, racks=2, node_command=crashing)
    message = str(failure.value)
    assert "exited" in message and "exit code 3" in message and "cannot start: bad config" in message
    _assert_all_gone(tmp_path)


@pytest.mark.integration
def test_processes_outlive_the_process_that_started_them(tmp_path):
    """What `make cluster` relies on: the cluster keeps running after the command returns,
    and another process stops it from DIR/cluster.json alone."""
    support.TRACKER.track_cluster(tmp_path)
    script = (
        "import sys; sys.path[:0] = sys.argv[2:]\n"
        "import support\n"
        "from dyno import localcluster\n"
        "localcluster.up(sys.argv[1], racks=2, node_command=support.standin_command)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path), *sys.path], check=True, timeout=60)
    assert all(lc.pid_alive(pid, start) for pid, start in _all_pids(tmp_path))
    assert all(s["answers_ping"] for s in lc.status(tmp_path))
    assert lc.down(tmp_path) == 4
    _assert_all_gone(tmp_path)
    assert lc.down(tmp_path) == 0


@pytest.mark.integration
def test_one_dyno_node_up_and_down(tmp_path):
    if reason := support.dyno_missing():
        pytest.skip(reason)
    with support.start_cluster(tmp_path, racks=1) as cluster:
        node = cluster[0]
        client = node.client()
        assert client.ping()
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
        assert node.redis_client().get("greeting") == b"hello", "stored in the node's own Redis"
        node.restart()
        assert node.client().get("greeting") == b"hello"
    _assert_all_gone(tmp_path)


@pytest.mark.integration
def test_three_rack_cluster_up_and_down(tmp_path):
    if reason := support.dyno_missing():
        pytest.skip(reason)
    with support.start_cluster(tmp_path, racks=3) as cluster:
        assert [(n.dc, n.rack) for n in cluster.nodes] == [("dc1", "rack1"), ("dc1", "rack2"), ("dc1", "rack3")]
        assert all(n.client().ping() for n in cluster.nodes)
        state = json.loads((tmp_path / "cluster.json").read_text())
        assert [n["listen"] for n in state["nodes"]] == [f"{h}:{p}" for h, p in cluster.addrs]
        for entry in state["nodes"]:
            assert {"name", "dc", "rack", "listen", "dyn_listen", "stats_listen", "redis", "pid", "redis_pid",
                    "config", "log"} <= entry.keys()  # fmt: skip
        assert lc.down(tmp_path) == 6
        _assert_all_gone(tmp_path)


@pytest.mark.integration
def test_cluster_factory_and_dyno_node_fixtures(cluster_factory, dyno_node):
    assert dyno_node.client().ping()
    dyno_node.kill()
    assert not dyno_node.alive
    dyno_node.start()
    assert dyno_node.client().ping()
    two = cluster_factory(racks=2)
    assert len(two) == 2 and all(n.alive for n in two.nodes)


@pytest.mark.integration
def test_up_plans_again_when_a_probed_port_gets_taken(tmp_path, monkeypatch):
    """Between probing a free port and binding it, another process may take it."""
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        taken = squatter.getsockname()[1]
        real_free_ports = lc.free_ports
        calls = []

        def free_ports(count, host="127.0.0.1"):
            calls.append(count)
            ports = real_free_ports(count, host)
            if len(calls) == 1:
                ports[3] = taken  # node1's redis port
            return ports

        monkeypatch.setattr(lc, "free_ports", free_ports)
        with support.start_cluster(tmp_path, racks=1, node_command=support.standin_command) as cluster:
            assert len(calls) == 2 and cluster[0].redis_port != taken
            assert "Address already in use" not in cluster[0].state.redis_log.read_text()


@pytest.mark.integration
def test_dyno_cluster_up_gives_its_nodes_a_hash_tag_so_tagged_keys_live_together(tmp_path):
    """With several nodes per rack, the README's {user1}:a / {user1}:b example works on a
    cluster from `dyno cluster up` (and so `make cluster`); untagged keys still get
    CROSSSLOT with the hint that fits."""
    directory = tmp_path / "c"
    support.TRACKER.track_cluster(directory.resolve())
    up = subprocess.run([sys.executable, "-m", "dyno", "cluster", "up", "--dir", str(directory),
                         "--nodes-per-rack", "2"], capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        node = json.loads((directory / "cluster.json").read_text())["nodes"][0]
        host, port = node["listen"].rsplit(":", 1)
        client = redis.Redis(host, int(port))
        assert client.mset({"{user1}:a": 1, "{user1}:b": 2})
        assert client.rename("{user1}:a", "{user1}:z")
        crossslot = []
        for i in range(50):  # some pairs of untagged keys have different owners
            try:
                client.rename(f"plain{i}", f"other{i}")
            except redis.ResponseError as error:  # (redis-py drops the CROSSSLOT code)
                if "don't hash to the same slot" in str(error):
                    crossslot.append(str(error))
        assert crossslot and all("e.g. {user1}:a and {user1}:b" in e for e in crossslot)
    finally:
        subprocess.run([sys.executable, "-m", "dyno", "cluster", "down", "--dir", str(directory)],
                       capture_output=True, timeout=120)


# --------------------------------------------------------------------------- one node at a time, and down


@pytest.mark.parametrize("argv, cwd, expected", [
    (["/v/bin/python3", "/v/bin/dyno", "start", "--config", "node1.yml"], "/c", "/c/node1.yml"),
    (["/v/bin/dyno", "start", "-c", "/abs/node2.yml", "-v"], "/c", "/abs/node2.yml"),
    (["python", "-m", "dyno", "start", "--config=../d/node3.yml"], "/c/sub", "/c/d/node3.yml"),
    (["dyno", "start", "-cnode4.yml"], "/c", "/c/node4.yml"),
    (["dyno", "--version"], "/c", None),
    (["dyno", "check-config", "node1.yml"], "/c", None),
    (["python", "-c", "dyno start --config node1.yml"], "/c", None),
    (["vim", "dyno", "start", "--config", "node1.yml"], "/c", None),
    (["dyno", "start", "--config"], "/c", None),
])
def test_dyno_start_config_reads_what_a_command_line_starts(argv, cwd, expected):
    assert lc.dyno_start_config(argv, cwd) == (None if expected is None else lc.Path(expected))


@given(name=st.from_regex(r"[a-z][a-z0-9_-]{0,10}\.yml", fullmatch=True),
       cwd=st.lists(st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True), max_size=4),
       spelling=st.sampled_from([("--config", " "), ("-c", " "), ("--config=", ""), ("-c", "")]))
def test_dyno_start_config_resolves_every_spelling_alike(name, cwd, spelling):
    cwd = "/" + "/".join(cwd)
    option, space = spelling
    argv = ["dyno", "start", option, name] if space else ["dyno", "start", option + name]
    assert lc.dyno_start_config(argv, cwd) == lc.Path(cwd, name)
    assert lc.dyno_start_config(["dyno", "check-config", *argv[2:]], cwd) is None


def _dyno_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dyno", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.integration
def test_cluster_restart_and_stop_start_keep_a_nodes_data(tmp_path):
    """`dyno cluster restart|stop|start --node N` restart both processes of the node (new
    pids), and the node still serves what it held: its Redis saved it when stopped."""
    if reason := support.dyno_missing():
        pytest.skip(reason)
    with support.start_cluster(tmp_path, racks=2) as cluster:
        node = cluster.node("node1")
        node.client().mset({f"k{i}": i for i in range(50)})
        pids = (node.state.pid, node.state.redis_pid)

        restarted = _dyno_cli("cluster", "restart", "--dir", str(tmp_path), "--node", "node1")
        assert restarted.returncode == 0, restarted.stderr
        assert restarted.stdout.startswith("node1: stopped dyno (pid")
        assert "node1: started redis-server, dyno" in restarted.stdout
        cluster.state = lc.ClusterState.load(tmp_path)
        assert node.alive and node.redis_alive
        assert (node.state.pid, node.state.redis_pid) != pids and pids[0] not in pids[1:]
        assert not any(lc.pid_alive(pid) for pid in pids), "the old processes are gone"
        assert node.redis_client().dbsize() == 50, "its Redis loaded what it saved"
        values = support.wait_for(lambda: node.client().mget([f"k{i}" for i in range(50)]),
                                  what="node1 serving again", ignore=(redis.ConnectionError, redis.ResponseError))
        assert values == [str(i).encode() for i in range(50)]

        stopped = _dyno_cli("cluster", "stop", "--dir", str(tmp_path), "--node", "node1")
        assert stopped.returncode == 0, stopped.stderr
        assert "saved its data to" in stopped.stdout
        assert not support.ping(*node.addr) and not support.ping(*node.redis_addr)
        assert [p.node for p in lc.ClusterState.load(tmp_path).processes()] == ["node2", "node2"]
        again = _dyno_cli("cluster", "stop", "--dir", str(tmp_path), "--node", "node1")
        assert again.returncode == 0 and again.stdout.strip() == "node1: was not running"

        started = _dyno_cli("cluster", "start", "--dir", str(tmp_path), "--node", "node1")
        assert started.returncode == 0, started.stderr
        cluster.state = lc.ClusterState.load(tmp_path)
        assert node.redis_client().mget([f"k{i}" for i in range(50)]) == [str(i).encode() for i in range(50)]

        redis_pid = node.state.redis_pid
        kept = _dyno_cli("cluster", "restart", "--dir", str(tmp_path), "--node", "node1", "--keep-redis")
        assert kept.returncode == 0, kept.stderr
        assert "node1: started dyno;" in kept.stdout and "saved its data" not in kept.stdout
        cluster.state = lc.ClusterState.load(tmp_path)
        assert node.state.redis_pid == redis_pid and node.redis_alive, "--keep-redis: the same Redis"
        assert node.client().get("k7") == b"7"

        unknown = _dyno_cli("cluster", "restart", "--dir", str(tmp_path), "--node", "node7")
        assert unknown.returncode != 0 and unknown.stderr.strip() == (
            f"Error: no node 'node7' in {tmp_path} (nodes: node1, node2)")
    _assert_all_gone(tmp_path)


@pytest.mark.integration
def test_cluster_down_stops_a_node_restarted_by_hand(tmp_path):
    """A node restarted as its config's header says (`dyno start --config node1.yml` in the
    cluster's directory), and a Redis started by hand in a node's directory, are stopped by
    `dyno cluster down` with the rest: nothing of the cluster is left running."""
    if reason := support.dyno_missing():
        pytest.skip(reason)
    with support.start_cluster(tmp_path, racks=2) as cluster:
        node1, node2 = cluster.nodes
        assert "dyno start --config node1.yml" in node1.config.read_text()
        node1.stop()
        by_hand = subprocess.Popen([sys.executable, "-m", "dyno", "start", "--config", "node1.yml"],
                                   cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, env=lc._dyno_env(), start_new_session=True)
        support.TRACKER.track(by_hand.pid, "node1 dyno, started by hand")
        node2.stop_redis()
        redis_by_hand = subprocess.Popen(
            ["redis-server", "--port", str(node2.redis_port), "--bind", node2.host, "--save", "",
             "--dir", str(node2.state.redis_dir)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        support.TRACKER.track(redis_by_hand.pid, "node2 redis-server, started by hand")
        support.wait_for(lambda: support.ping(*node1.addr) and support.ping(*node2.redis_addr),
                         what="the processes started by hand to answer")

        found = {(p.node, p.kind, p.pid, p.recorded) for p in lc.ClusterState.load(tmp_path).processes()}
        assert ("node1", "dyno", by_hand.pid, False) in found
        assert ("node2", "redis-server", redis_by_hand.pid, False) in found

        down = _dyno_cli("cluster", "down", "--dir", str(tmp_path))
        assert down.returncode == 0, down.stderr
        assert down.stdout.startswith("stopped 4 process(es), among them ")
        assert f"node1 dyno (pid {by_hand.pid}, not started by dyno cluster)" in down.stdout
        assert f"node2 redis-server (pid {redis_by_hand.pid}, not started by dyno cluster)" in down.stdout
        assert by_hand.wait(timeout=10) is not None and redis_by_hand.wait(timeout=10) is not None
        assert lc.ClusterState.load(tmp_path).processes() == []
        assert not any(support.ping(*a) for a in cluster.addrs + cluster.redis_addrs)
    _assert_all_gone(tmp_path)
    assert lc.down(tmp_path) == 0
