"""`dyno status`, `dyno ring` and `dyno tokens` (issue 5): the operator's CLI.

What these tests check:
* `dyno tokens --nodes-per-rack N` prints dyno.ring's evenly spaced tokens, as a table and
  as JSON;
* `dyno ring` computes each node's share of its rack (even racks pass; an uneven rack is
  warned about, from a described ring whose tokens are skewed);
* `dyno status` against a real 3-rack cluster shows every node UP with its keys, and after
  one node is killed shows it DOWN, in the table and in --json, and says so when no admin
  port answers;
* every line of every table fits 80 columns.
The CLI runs as a real process (`python -m dyno`), as an operator would run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import support
from dyno import status
from dyno.ring import MAX_TOKEN, evenly_spaced_tokens

integration = pytest.mark.integration


def dyno(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """Run the CLI with a 200-column terminal: the output must still fit 80."""
    done = subprocess.run([sys.executable, "-m", "dyno", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "200"})
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def fits_80(text: str) -> bool:
    return all(len(line) <= 80 for line in text.splitlines())


def admin_of(node: support.NodeHandle) -> str:
    return f"{node.host}:{node.stats_port}"


def name_of(node: support.NodeHandle) -> str:
    return f"{node.host}:{node.dyn_port}"


# --------------------------------------------------------------------------- tokens


def test_tokens_prints_evenly_spaced_tokens():
    done = dyno("tokens", "--nodes-per-rack", "4")
    assert fits_80(done.stdout)
    for index, token in enumerate(evenly_spaced_tokens(4), 1):
        assert any(line.split()[:2] == [str(index), str(token)] for line in done.stdout.splitlines())
    assert "25.00%" in done.stdout
    plan = json.loads(dyno("tokens", "--nodes-per-rack", "3", "--json").stdout)
    assert plan["tokens"] == [0, 1431655765, 2863311530] == evenly_spaced_tokens(3)
    refused = dyno("tokens", "--nodes-per-rack", "0", ok=False)
    assert refused.returncode == 2 and "nodes-per-rack" in refused.stderr


# --------------------------------------------------------------------------- ring


def _describe(racks: dict[str, list[list[int]]]) -> dict:
    """A /cluster_describe of one DC with the given tokens per node per rack."""
    port = iter(range(9000, 9100))
    return {"dcs": [{"name": "dc1", "racks": [
        {"name": rack, "servers": [
            {"name": f"10.0.0.1:{p}", "host": "10.0.0.1", "port": p, "token": tokens[0], "tokens": tokens}
            for tokens in nodes for p in [next(port)]
        ]} for rack, nodes in racks.items()
    ]}]}


def test_ring_shares_and_the_uneven_warning():
    even = status.ring_shares(_describe({"rack1": [[0], [2**31]], "rack2": [[5], [2**31 + 5]]}))
    assert not even["warnings"]
    assert [n["share"] for n in even["racks"][0]["nodes"]] == [0.5, 0.5]

    skewed = status.ring_shares(_describe({"rack1": [[0], [2**31]], "rack2": [[0], [MAX_TOKEN // 4]]}))
    rack2 = skewed["racks"][1]
    assert rack2["uneven"] and rack2["imbalance"] == pytest.approx(3.0, rel=1e-6)
    assert sorted(n["share"] for n in rack2["nodes"]) == pytest.approx([0.25, 0.75], abs=1e-6)
    (warning,) = skewed["warnings"]
    assert "rack rack2 of dc1 is uneven" in warning and "dyno tokens --nodes-per-rack 2" in warning

    out = status.console(width=80)
    with out.capture() as captured:
        status.render_ring(skewed, out)
    text = captured.get()
    assert fits_80(text) and "75.0%" in text and "uneven" in text


@integration
def test_ring_against_a_cluster(cluster_factory):
    cluster = cluster_factory(racks=2, nodes_per_rack=2)
    done = dyno("ring", "--node", admin_of(cluster[0]))
    assert fits_80(done.stdout)
    assert "every rack is even" in done.stdout
    assert done.stdout.count("50.0%") == 4
    shares = json.loads(dyno("ring", "--node", admin_of(cluster[0]), "--json").stdout)
    assert {(r["dc"], r["rack"]) for r in shares["racks"]} == {("dc1", "rack1"), ("dc1", "rack2")}
    assert all(n["share"] == 0.5 for r in shares["racks"] for n in r["nodes"])


# --------------------------------------------------------------------------- status


def _row(text: str, node: support.NodeHandle) -> list[str]:
    lines = [line for line in text.splitlines() if name_of(node) in line and "sees it" not in line]
    assert len(lines) == 1, text
    return lines[0].split()


@integration
def test_status_of_a_three_rack_cluster_shows_a_killed_node_down(cluster_factory):
    cluster = cluster_factory(racks=3)
    client = cluster[0].client()
    for i in range(20):
        client.set(f"status:{i}", i)
    support.wait_for(lambda: all(n.redis_client().dbsize() == 20 for n in cluster.nodes), 10,
                     "every rack to hold the 20 keys")
    everyone = [arg for n in cluster.nodes for arg in ("--node", admin_of(n))]

    result = json.loads(dyno("status", *everyone, "--json").stdout)
    assert result["viewpoint"] == name_of(cluster[0])
    rows = {row["node"]: row for row in result["nodes"]}
    assert sorted(rows) == sorted(name_of(n) for n in cluster.nodes)
    for node in cluster.nodes:
        row = rows[name_of(node)]
        assert (row["dc"], row["rack"], row["tokens"]) == (node.dc, node.rack, list(node.tokens))
        assert (row["up"], row["state"], row["keys"]) == (True, "NORMAL", 20)
        assert row["p99_ms"] is not None and row["ops_per_sec"] is not None
    table = dyno("status", *everyone).stdout
    assert fits_80(table)
    for node in cluster.nodes:
        row = _row(table, node)
        assert row[0] == f"{node.dc}/{node.rack}" and "UP" in row and "20" in row
    # One node is enough: the others' admin addresses came with their peer-link HELLOs.
    alone = json.loads(dyno("status", "--node", admin_of(cluster[0]), "--json").stdout)
    assert [row["keys"] for row in alone["nodes"]] == [20, 20, 20]
    assert all(row["ops_per_sec"] is not None for row in alone["nodes"])

    victim = cluster[2]
    victim.kill()
    support.wait_for(
        lambda: not json.loads(dyno("status", "--node", admin_of(cluster[0]), "--json").stdout)["nodes"][2]["up"],
        10, "the killed node to be seen down")
    result = json.loads(dyno("status", *everyone, "--json").stdout)
    rows = {row["node"]: row for row in result["nodes"]}
    assert rows[name_of(victim)]["up"] is False and rows[name_of(victim)]["state"] == "DOWN"
    assert rows[name_of(victim)]["keys"] is None
    assert all(rows[name_of(n)]["up"] and rows[name_of(n)]["keys"] == 20 for n in cluster.nodes[:2])
    assert any(admin_of(victim) in warning for warning in result["warnings"])
    table = dyno("status", *everyone).stdout
    assert fits_80(table)
    assert "DOWN" in _row(table, victim)
    assert all("UP" in _row(table, n) for n in cluster.nodes[:2])

    # Writes the dead node misses are held as hints by the node that took them.
    for i in range(5):
        client.set(f"missed:{i}", i)
    result = json.loads(dyno("status", *everyone, "--json").stdout)
    rows = {row["node"]: row for row in result["nodes"]}
    assert rows[name_of(cluster[0])]["hints"] == {name_of(victim): 5}
    table = dyno("status", *everyone).stdout
    assert fits_80(table)
    assert f"hints: {name_of(cluster[0])} holds 5 write(s) for {name_of(victim)}" in table

    # asked only the dead node, then a live one: the live one answers
    result = json.loads(dyno("status", "--node", admin_of(victim), "--node", admin_of(cluster[1]), "--json").stdout)
    assert result["source"] == admin_of(cluster[1])


@integration
def test_status_without_any_reachable_node_says_so():
    port = support.free_port()
    done = dyno("status", "--node", f"127.0.0.1:{port}", ok=False)
    assert done.returncode == 1
    assert f"127.0.0.1:{port}" in done.stderr and "--node HOST:PORT" in done.stderr


# --------------------------------------------------------------------------- moves (issue 18)


def test_ring_shows_the_shares_after_moves_in_flight_and_planned():
    joining = _describe({"rack1": [[0], [2**31]], "rack2": [[0]]})
    joining["dcs"][0]["racks"][0]["servers"][1]["state"] = "JOINING"
    result = status.ring_shares(joining)
    # now: the joining node owns nothing yet; after: half of rack1
    assert [n["share"] for n in result["racks"][0]["nodes"]] == [1.0]
    assert sorted(n["share"] for n in result["after"]["racks"][0]["nodes"]) == [0.5, 0.5]
    planned = status.ring_shares(_describe({"rack1": [[0]], "rack2": [[0], [2**31]]}),
                                 add=["rack1"], remove=["10.0.0.1:9002"])
    after = {rack["rack"]: sorted(n["share"] for n in rack["nodes"]) for rack in planned["after"]["racks"]}
    assert after == {"rack1": [0.5, 0.5], "rack2": [1.0]}
    assert "after" not in status.ring_shares(_describe({"rack1": [[0]]}))
    with pytest.raises(status.StatusError, match="no node 10.9.9.9:1"):
        status.ring_shares(_describe({"rack1": [[0]]}), remove=["10.9.9.9:1"])
    out = status.console(width=80)
    with out.capture() as captured:
        status.render_ring(planned, out)
    text = captured.get()
    assert fits_80(text) and "after the moves" in text and "new-1 (dc1/rack1)" in text


def test_a_moves_progress_line():
    streaming = {"kind": "join", "state": "streaming",
                 "transfer": {"total": 1000, "scanned": 250, "copied": 120, "bytes": 2_500_000,
                              "keys_per_second": 600.0}}
    line = status.movement_line(streaming, width=80)
    assert len(line) <= 80 and " 25%" in line and "120 keys copied" in line and "2.5 MB" in line
    done = status.movement_line({**streaming, "state": "done"}, width=80)
    assert "100%" in done
