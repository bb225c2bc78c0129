"""The admin port (issue 5): every path, with a real HTTP client, against real nodes.

What these tests check:
* every Dynomite path answers with Dynomite's reply shape (/info and /cluster_describe
  JSON, "OK", "Read Consistency: ...", "State: ..."), plus /metrics in the Prometheus
  text format, parsed by prometheus-client's own parser;
* the counters in /metrics and /info match the traffic the test sent;
* node states as a client sees them: STANDBY refuses reads and writes with -ERR,
  WRITES_ONLY refuses reads, RESUMING and NORMAL serve; PING and INFO work in every state;
* /set_consistency changes what a read returns (a replica changed behind dyno's back) and
  a late replica reply that disagrees is counted;
* /peer/down makes the node read from another rack;
* bad paths, parameters, methods and malformed HTTP get a 4xx with a reason, and the node
  keeps serving clients.
The pure parts (path table, histograms, percentiles) are tested first, without processes.

One 3-rack cluster is shared by the module; a test that changes a node's state, levels or
log level puts it back in `finally`.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

import support
from dyno import admin, metrics, versions

integration = pytest.mark.integration


# --------------------------------------------------------------------------- pure parts


def test_route_table():
    handler, params = admin.route("/info")
    assert handler is admin._info and params == ()
    assert admin.route("/info/")[0] is admin._info
    assert admin.route("/")[0] is admin._info
    handler, params = admin.route("/set_consistency/read/dc_quorum")
    assert handler is admin._set_consistency and params == ("read", "dc_quorum")
    assert admin.route("/peer/down/127.0.0.1:8101") == (admin._peer, ("down", "127.0.0.1:8101"))
    missing = admin.route("/set_consistency/read")
    assert isinstance(missing, admin.Reply) and missing.status == 400
    assert b"/set_consistency/<read|write>/<level>" in missing.body
    unknown = admin.route("/nope")
    assert unknown.status == 404
    for path, _ in admin.PATHS:
        assert path.encode() in unknown.body


def test_histogram_buckets_and_percentiles():
    histogram = metrics.Histogram()
    for _ in range(98):
        histogram.observe(0.0003)  # (0.00025, 0.0005]
    histogram.observe(0.02)
    histogram.observe(7.0)  # beyond the last bound: +Inf
    assert histogram.count == 100 and histogram.counts[-1] == 1
    assert histogram.max == 7.0
    assert 0.00025 < metrics.percentile(histogram.counts, 0.5) <= 0.0005
    assert 0.01 < metrics.percentile(histogram.counts, 0.99) <= 0.025
    assert metrics.percentile([0] * len(histogram.counts), 0.99) == 0.0


def test_window_rates_and_recent_counts():
    window = metrics.Window(seconds=60)
    histogram = metrics.Histogram()
    window.sample(100.0, 1000, histogram)
    histogram.observe(0.001)
    window.sample(110.0, 3000, histogram)
    assert window.ops_per_sec(110.0, 3000) == pytest.approx(200.0)
    histogram.observe(0.001)
    assert sum(window.recent_counts(histogram)) == 2
    window.sample(200.0, 3000, histogram)  # the first samples leave the window
    assert sum(window.recent_counts(histogram)) == 1


# --------------------------------------------------------------------------- helpers


def http(node: support.NodeHandle, path: str, method: str = "GET") -> tuple[int, str]:
    """(status, body) of one request to the node's admin port; 4xx/5xx are returned, not raised."""
    request = urllib.request.Request(f"http://{node.host}:{node.stats_port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def get(node: support.NodeHandle, path: str) -> str:
    status, body = http(node, path)
    assert status == 200, f"GET {path}: {status} {body}"
    return body


def post(node: support.NodeHandle, path: str) -> str:
    """A path that changes the node: POST only."""
    status, body = http(node, path, "POST")
    assert status == 200, f"POST {path}: {status} {body}"
    return body


def get_json(node: support.NodeHandle, path: str) -> dict:
    return json.loads(get(node, path))


def scrape(node: support.NodeHandle) -> dict[tuple[str, tuple], float]:
    """/metrics parsed by prometheus-client: {(sample name, sorted labels): value}."""
    samples = {}
    for family in text_string_to_metric_families(get(node, "/metrics")):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def node_name(node: support.NodeHandle) -> str:
    return f"{node.host}:{node.dyn_port}"


def settle(cluster: support.Cluster, clients: list[redis.Redis] | None = None) -> None:
    """Wait until no node has a replica request in flight."""
    clients = clients or [n.client() for n in cluster.nodes]

    def idle():
        return all(c.info("dyno")["peer_requests_in_flight"] == 0 for c in clients)

    support.wait_for(idle, 10, "replica requests to drain")


def still_serving(node: support.NodeHandle) -> None:
    client = node.client()
    assert client.ping()
    client.set("alive", "yes")
    assert client.get("alive") == b"yes"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """3 racks x 1 node, DC_ONE."""
    if support.dyno_missing():
        pytest.skip(support.dyno_missing())
    with support.running_cluster(tmp_path_factory.mktemp("admin"), racks=3) as running:
        support.wait_for(lambda: all(
            get_json(n, "/info")["dyn_o_mite"]["peers"]
            and all(p["up"] for p in get_json(n, "/info")["dyn_o_mite"]["peers"].values())
            for n in running.nodes), 10, "every peer link up")
        yield running


# --------------------------------------------------------------------------- the paths


@integration
def test_info_has_dynomites_fields_and_dynos(cluster):
    node = cluster[0]
    client = node.client()
    client.flushall()
    for i in range(5):
        client.set(f"info:{i}", i)
    settle(cluster)
    info = get_json(node, "/info")
    for field in ("service", "source", "version", "uptime", "timestamp", "rack", "dc",
                  "latency_max", "latency_999th", "latency_99th", "latency_95th", "latency_mean"):
        assert field in info, field
    assert info["service"] == "dyno"
    assert (info["dc"], info["rack"], info["node"]) == (node.dc, node.rack, node_name(node))
    assert info["state"] == "NORMAL"
    assert info["keys"] == node.redis_client().dbsize() == 5
    assert abs(info["timestamp"] - time.time()) < 5
    pool = info["dyn_o_mite"]
    assert pool["client_write_requests"] >= 5
    peers = pool["peers"]
    assert sorted(peers) == sorted(node_name(n) for n in cluster.nodes[1:])
    assert all(p["up"] == 1 and p["failed"] == 0 for p in peers.values())
    datastore = pool[f"{node.host}:{node.redis_port}"]
    assert datastore["up"] == 1
    assert get_json(node, "/") == {**get_json(node, "/"), "service": "dyno"}


@integration
def test_ping_help_and_get_consistency(cluster):
    node = cluster[0]
    assert get(node, "/ping") == "OK\r\n"
    help_text = get(node, "/help")
    for path, _ in admin.PATHS:
        assert path in help_text
    assert get(node, "/get_consistency") == "Read Consistency: DC_ONE\r\nWrite Consistency: DC_ONE\r\n"
    assert get(node, "/state/get_state") == "State: NORMAL\n"


@integration
def test_cluster_describe_has_dynomites_shape(cluster):
    describe = get_json(cluster[1], "/cluster_describe")
    assert [dc["name"] for dc in describe["dcs"]] == ["dc1"]
    racks = describe["dcs"][0]["racks"]
    assert [rack["name"] for rack in racks] == ["rack1", "rack2", "rack3"]
    for rack, node in zip(racks, cluster.nodes):
        (server,) = rack["servers"]
        assert {"name", "host", "port", "token"} <= server.keys()
        assert server["name"] == node_name(node)
        assert (server["host"], server["port"]) == (node.host, node.dyn_port)
        assert server["token"] == node.tokens[0]
        assert server["up"] is True and server["state"] == "NORMAL"
    # the describing node knows its own admin address
    assert racks[1]["servers"][0]["admin"] == f"{cluster[1].host}:{cluster[1].stats_port}"


@integration
def test_log_level_up_and_down(cluster):
    node = cluster[2]
    assert get_json(node, "/info")["log_level"] == "INFO"
    try:
        assert post(node, "/loglevelup") == "OK\r\n"
        assert get_json(node, "/info")["log_level"] == "DEBUG"
        post(node, "/logleveldown")
        post(node, "/logleveldown")
        assert get_json(node, "/info")["log_level"] == "WARNING"
    finally:
        while get_json(node, "/info")["log_level"] != "INFO":
            post(node, "/loglevelup")
    still_serving(node)


# --------------------------------------------------------------------------- /metrics


@integration
def test_metrics_count_the_traffic_sent(cluster):
    node = cluster[0]
    clients = [n.client() for n in cluster.nodes]
    settle(cluster, clients)  # connected (redis-py's handshake counts) before counting
    client = clients[0]
    before = scrape(node)
    started = time.monotonic()
    sets, gets, unknown = 300, 200, 7
    for i in range(sets):
        client.set(f"m:{i}", i)
    for i in range(gets):
        client.get(f"m:{i}")
    for _ in range(unknown):
        with pytest.raises(redis.ResponseError):
            client.execute_command("NOSUCHCOMMAND", "x")
    settle(cluster, clients)
    after = scrape(node)
    seconds = time.monotonic() - started

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("dyno_requests_total", command="set") == sets
    assert delta("dyno_requests_total", command="get") == gets
    assert delta("dyno_requests_by_class_total", **{"class": "write"}) == sets
    assert delta("dyno_requests_by_class_total", **{"class": "read"}) == gets
    assert delta("dyno_request_errors_total", command="unknown") == unknown
    assert delta("dyno_errors_total") == unknown
    # every request counted once (settle() sent the INFOs); the scrapes are not requests
    assert delta("dyno_commands_total") == sets + gets + unknown + delta("dyno_requests_total", command="info")
    assert delta("dyno_consistency_requests_total", level="DC_ONE") == sets + gets
    assert delta("dyno_consistency_requests_total", level="DC_QUORUM") == 0
    # each DC_ONE write went to both other racks, with its version stamp (3 commands)
    for peer in cluster.nodes[1:]:
        assert delta("dyno_peer_requests_total", peer=node_name(peer)) == sets * (1 + versions.STAMP_REPLIES)
        assert value(after, "dyno_peer_up", peer=node_name(peer)) == 1
        assert value(after, "dyno_peer_failures_total", peer=node_name(peer)) == 0
    assert delta("dyno_replica_failures_total") == 0
    # bytes: at least the requests sent and the replies they got (settle's INFOs add more)
    sent = sum(len(b"*3\r\n$3\r\nSET\r\n$%d\r\nm:%d\r\n$%d\r\n%d\r\n" % (len(b"m:%d" % i), i, len(b"%d" % i), i))
               for i in range(sets))
    assert delta("dyno_client_bytes_received_total") >= sent
    assert delta("dyno_client_bytes_sent_total") >= sets * len(b"+OK\r\n") + gets * len(b"$1\r\n0\r\n")
    # latency is sampled: one batch in SAMPLE_EVERY, and at least one a second (the admin
    # port's tick asks for one when none was timed); these were ~510 batches of one request
    samples = delta("dyno_request_latency_seconds_count")
    batches = sets + gets + unknown + delta("dyno_requests_total", command="info")
    assert samples == delta("dyno_latency_sampled_batches_total"), "a timed batch is one observation"
    assert (sets + gets) // metrics.SAMPLE_EVERY - 1 <= samples <= batches // metrics.SAMPLE_EVERY + seconds + 2
    assert value(after, "dyno_request_latency_seconds_bucket", le="+Inf") == value(
        after, "dyno_request_latency_seconds_count")
    datastore = f"{node.host}:{node.redis_port}"
    assert delta("dyno_datastore_latency_seconds_count", datastore=datastore) >= samples - 1
    assert value(after, "dyno_datastore_up", datastore=datastore) == 1
    for member in cluster.nodes:
        assert value(after, "dyno_view_node_up", node=node_name(member), dc=member.dc, rack=member.rack) == 1
    assert value(after, "dyno_node_state", state="NORMAL") == 1
    info = get_json(node, "/info")
    assert info["dyn_o_mite"]["requests_by_command"]["set"] == value(after, "dyno_requests_total", command="set")
    assert info["latency_99th"] > 0


@integration
def test_latency_figures_reflect_a_few_deep_pipelines_and_say_how_they_are_sampled(dyno_node):
    """Issue 18: /info showed every latency figure as 0 after 11,700 requests sent in
    deep pipelines (fewer batches than SAMPLE_EVERY). A batch of 100 requests every
    0.2 s: within a few such batches the figures are non-zero, far fewer than
    SAMPLE_EVERY batches, and /info and /metrics say how they are sampled."""
    client = dyno_node.client()
    client.set("lat", "x")
    sent = []

    def pipeline_then_figures():
        pipe = client.pipeline(transaction=False)
        for _ in range(100):
            pipe.get("lat")
        assert pipe.execute() == [b"x"] * 100
        sent.append(100)
        info = get_json(dyno_node, "/info")
        return info if info["latency_samples"] and info["99_server_latency"] else None

    info = support.wait_for(pipeline_then_figures, timeout=15, interval=0.2,
                            what="latency figures after pipelined traffic")
    assert len(sent) < metrics.SAMPLE_EVERY // 4, "sampled by time, not by the 1-in-N countdown"
    for figure in ("latency_max", "latency_999th", "latency_99th", "latency_95th", "latency_mean",
                   "99_server_latency", "average_server_latency"):
        assert info[figure] > 0, (figure, info)
    assert info["latency_sampling"] == metrics.SAMPLING and f"1 client batch in {metrics.SAMPLE_EVERY}" in info["latency_sampling"]
    assert info["latency_sampled_batches"] >= 1 and info["latency_window_seconds"] == 60
    scraped = get(dyno_node, "/metrics")
    assert f"# HELP dyno_request_latency_seconds Client-facing latency, from request to reply ready (sampled: {metrics.SAMPLING})." in scraped
    assert value(scrape(dyno_node), "dyno_latency_sampled_batches_total") >= info["latency_sampled_batches"]


# --------------------------------------------------------------------------- node states


@integration
def test_node_states_as_a_client_sees_them(cluster):
    node = cluster[0]
    client = node.client()
    client.set("state:k", "v")
    try:
        assert post(node, "/state/standby") == "OK\r\n"
        assert get(node, "/state/get_state") == "State: STANDBY\n"
        for command in (("GET", "state:k"), ("SET", "state:k", "w"), ("DBSIZE",), ("MGET", "a", "b")):
            with pytest.raises(redis.ResponseError, match="STANDBY"):
                client.execute_command(*command)
        assert client.ping()
        assert client.info("dyno")["state"] == "STANDBY"
        assert get_json(node, "/info")["state"] == "STANDBY"
        # a pipeline mixing what is served and what is refused keeps its order
        pipe = client.pipeline(transaction=False)
        pipe.ping().get("state:k").echo("x")
        replies = pipe.execute(raise_on_error=False)
        assert replies[0] is True and isinstance(replies[1], redis.ResponseError) and replies[2] == b"x"
        assert value(scrape(node), "dyno_state_refusals_total") >= 5
        assert value(scrape(node), "dyno_node_state", state="STANDBY") == 1

        assert post(node, "/state/writes_only") == "OK\r\n"
        assert client.set("state:k", "w")
        with pytest.raises(redis.ResponseError, match="WRITES_ONLY"):
            client.get("state:k")

        assert post(node, "/state/resuming") == "OK\r\n"
        assert client.get("state:k") == b"w"
        assert get(node, "/state/get_state") == "State: RESUMING\n"
    finally:
        assert post(node, "/state/normal") == "OK\r\n"
    assert client.get("state:k") == b"w"
    assert client.set("state:k", "x")
    assert get(node, "/state/get_state") == "State: NORMAL\n"


# --------------------------------------------------------------------------- consistency


@integration
def test_set_consistency_changes_what_a_read_returns(cluster):
    node = cluster[0]
    client = node.client()
    client.set("cons:k", "v")
    support.wait_for(lambda: all(n.redis_client().get("cons:k") == b"v" for n in cluster.nodes),
                     10, "the write to reach every rack")
    node.redis_client().set("cons:k", "stale")  # the local rack's copy, behind dyno's back
    assert client.get("cons:k") == b"stale"  # DC_ONE reads the local rack
    try:
        assert post(node, "/set_consistency/read/dc_quorum") == "OK\r\n"
        assert get(node, "/get_consistency") == "Read Consistency: DC_QUORUM\r\nWrite Consistency: DC_ONE\r\n"
        assert get_json(node, "/info")["read_consistency"] == "DC_QUORUM"
        assert client.info("dyno")["read_consistency"] == "DC_QUORUM"
        assert client.get("cons:k") == b"v"  # two racks of three agree

        # the stale replica answers last: its reply disagrees with the one the client got
        before = value(scrape(node), "dyno_replica_disagreements_total")
        node.pause_redis()
        try:
            assert client.get("cons:k") == b"v"
        finally:
            node.resume_redis()
        support.wait_for(lambda: value(scrape(node), "dyno_replica_disagreements_total") == before + 1,
                         5, "the late, stale reply to be counted")
        assert value(scrape(node), "dyno_consistency_requests_total", level="DC_QUORUM") >= 2
    finally:
        post(node, "/set_consistency/read/DC_ONE")
    assert get(node, "/get_consistency") == "Read Consistency: DC_ONE\r\nWrite Consistency: DC_ONE\r\n"
    assert client.get("cons:k") == b"stale"
    client.set("cons:k", "v")


# --------------------------------------------------------------------------- peers


@integration
def test_peer_marked_down_is_not_read_from(cluster):
    node, second, third = cluster.nodes
    client = node.client()
    client.set("peer:k", "v")
    settle(cluster)
    second.redis_client().set("peer:k", "from-rack2")
    third.redis_client().set("peer:k", "from-rack3")
    node.stop_redis()  # the local rack cannot answer: DC_ONE reads go to another rack
    try:
        support.wait_for(lambda: get_json(node, "/info")["dyn_o_mite"][f"{node.host}:{node.redis_port}"]["up"] == 0,
                         10, "the node to notice its Redis is gone")
        assert client.get("peer:k") == b"from-rack2"
        assert post(node, f"/peer/down/{node_name(second)}") == "OK\r\n"
        assert client.get("peer:k") == b"from-rack3"
        describe = get_json(node, "/cluster_describe")
        servers = {s["name"]: s for dc in describe["dcs"] for r in dc["racks"] for s in r["servers"]}
        assert servers[node_name(second)]["up"] is False
        assert value(scrape(node), "dyno_peer_admin_down", peer=node_name(second)) == 1
        assert post(node, f"/peer/up/{node_name(second)}") == "OK\r\n"
        assert client.get("peer:k") == b"from-rack2"
        assert post(node, "/peer/down/all") == "OK\r\n"
        assert post(node, "/peer/reset/all") == "OK\r\n"
        assert value(scrape(node), "dyno_peer_admin_down", peer=node_name(second)) == 0
    finally:
        post(node, "/peer/reset/all")
        node.start_redis()
    support.wait_for(lambda: get_json(node, "/info")["dyn_o_mite"][f"{node.host}:{node.redis_port}"]["up"] == 1,
                     10, "the node to reconnect to its Redis")
    client.set("peer:k", "v")
    settle(cluster)


# --------------------------------------------------------------------------- bad requests


@integration
@pytest.mark.parametrize("path, status, reason", [
    ("/nope", 404, "/cluster_describe"),
    ("/info/extra", 404, "/metrics"),
    ("/set_consistency/read/DC_TWO", 400, "DC_EACH_SAFE_QUORUM"),
    ("/set_consistency/sideways/DC_ONE", 400, "neither read nor write"),
    ("/set_consistency/read", 400, "/set_consistency/<read|write>/<level>"),
    ("/state/asleep", 400, "writes_only"),
    ("/state", 400, "/state/<get_state"),
    ("/peer/down/10.9.9.9:1", 400, "no peer named '10.9.9.9:1'"),
    ("/peer/sideways/all", 400, "down, up or reset"),
])
def test_bad_paths_and_parameters_get_4xx_with_a_reason(cluster, path, status, reason):
    node = cluster[1]
    got, body = http(node, path, "POST" if admin.changes_node(path) else "GET")
    assert (got, reason in body) == (status, True), body
    assert get(node, "/get_consistency") == "Read Consistency: DC_ONE\r\nWrite Consistency: DC_ONE\r\n"
    assert get(node, "/state/get_state") == "State: NORMAL\n"
    still_serving(node)


@integration
def test_other_methods_get_405(cluster):
    node = cluster[1]
    for method in ("POST", "PUT", "DELETE"):
        request = urllib.request.Request(f"http://{node.host}:{node.stats_port}/info",
                                         method=method, data=b"")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        assert caught.value.code == 405
        assert caught.value.headers["Allow"] == "GET, HEAD"
        assert "GET only" in caught.value.read().decode()
    still_serving(node)


@integration
@pytest.mark.parametrize("path", ["/state/standby", "/peer/down/all", "/set_consistency/write/DC_ONE",
                                  "/loglevelup"])
def test_a_get_cannot_change_the_node(cluster, path):
    """State-changing paths take POST: a link a browser follows (a GET) changes nothing."""
    node = cluster[1]
    status, body = http(node, path)
    assert status == 405 and "POST only" in body and "curl -X POST" in body
    assert get(node, "/state/get_state") == "State: NORMAL\n"
    assert get_json(node, "/info")["log_level"] == "INFO"
    still_serving(node)


@integration
def test_admin_token_guards_what_changes_the_node(cluster_factory):
    node = cluster_factory(racks=1, admin_token="t0ken")[0]
    url = f"http://{node.host}:{node.stats_port}/state/writes_only"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "t0ken"}):
        request = urllib.request.Request(url, method="POST", data=b"", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        assert caught.value.code == 401 and caught.value.headers["WWW-Authenticate"] == "Bearer"
    assert get(node, "/state/get_state") == "State: NORMAL\n"  # read-only paths need no token
    request = urllib.request.Request(url, method="POST", data=b"", headers={"Authorization": "Bearer t0ken"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200
    assert get(node, "/state/get_state") == "State: WRITES_ONLY\n"


@integration
def test_malformed_http_gets_400_and_the_node_keeps_serving(cluster):
    node = cluster[1]
    for garbage in (b"NOT HTTP AT ALL\r\n\r\n", b"GET /info HTTP/1.1\r\nBad Header Line\r\n\r\n"):
        with socket.create_connection((node.host, node.stats_port), timeout=10) as sock:
            sock.sendall(garbage)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 "), answer
    # a client that connects and says nothing does not block the others
    with socket.create_connection((node.host, node.stats_port), timeout=10):
        assert get(node, "/ping") == "OK\r\n"
        still_serving(node)
