"""INFO carries every section of the node's Redis with dyno's own values and
section; CONFIG GET reads the node's Redis's settings (never its secrets)."""

from __future__ import annotations

import pytest
import redis

from dyno.node_commands import info_text, parse_info

integration = pytest.mark.integration

REDIS_INFO = (
    "# Server\r\nredis_version:7.0.15\r\nprocess_id:11\r\ntcp_port:6379\r\narch_bits:64\r\n\r\n"
    "# Clients\r\nconnected_clients:4\r\nblocked_clients:0\r\n\r\n"
    "# Memory\r\nused_memory:1000\r\n\r\n"
    "# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0\r\ndb15:keys=9,expires=0,avg_ttl=0"
)


def test_dyno_values_replace_redis_values_and_its_sections_go_before_keyspace():
    blocks = {"server": {"process_id": 22, "tcp_port": 7000, "dyno_version": "1"},
              "clients": {"connected_clients": 1}, "dyno": {"rack": "r1"}}
    text = info_text(REDIS_INFO, blocks, versions_db=15)
    sections = parse_info(text)
    assert [title for title, _ in sections] == ["Server", "Clients", "Memory", "Dyno", "Keyspace"]
    fields = {title: dict(items) for title, items in sections}
    assert fields["Server"] == {"redis_version": "7.0.15", "process_id": "22", "tcp_port": "7000",
                                "arch_bits": "64", "dyno_version": "1"}
    assert fields["Clients"] == {"connected_clients": "1"}  # dyno's clients, not its Redis's
    assert fields["Keyspace"] == {"db0": "keys=3,expires=0,avg_ttl=0"}  # the versions db is dyno's
    assert text.endswith("avg_ttl=0\r\n") and "\r\n\r\n# Dyno\r\nrack:r1\r\n\r\n# Keyspace" in text


def test_without_redis_info_dyno_sections_alone():
    text = info_text("", {"dyno": {"rack": "r1"}, "stats": {"x": 1}}, versions_db=15)
    assert [title for title, _ in parse_info(text)] == ["Dyno", "Stats"]


@integration
def test_info_has_every_redis_section_with_dyno_values(cluster_factory):
    node = cluster_factory(racks=1)[0]
    client = node.client()
    client.set("k", "v")
    info = client.info()
    plain = node.redis_client().info("everything")
    assert info["used_memory"] > 0 and "rdb_changes_since_last_save" in info  # memory, persistence
    assert info["tcp_port"] == node.port and info["tcp_port"] != plain["tcp_port"]
    assert info["connected_clients"] == 1 and info["node_name"]
    assert info["db0"]["keys"] == 1 and not any(name.startswith("db1") for name in info)
    everything = client.info("everything")
    assert set(plain) - set(everything) == set(), "a Redis field is missing"
    assert any(name.startswith("cmdstat_") for name in everything)
    assert set(client.info("memory")) == set(node.redis_client().info("memory"))
    assert set(client.info("dyno")) >= {"node_name", "rack", "peers_up"}
    assert client.info("nosuchsection") == {}
    resp3 = node.client(protocol=3)
    assert resp3.info("memory")["used_memory"] > 0


@integration
def test_info_without_redis_answers_dyno_sections(cluster_factory):
    node = cluster_factory(racks=1)[0]
    client = node.client()
    node.stop_redis()
    info = client.info()
    assert info["node_name"] and info["datastore_up"] == 0 and "used_memory" not in info


@integration
def test_config_get_reads_the_redis_settings_and_set_stays_refused(cluster_factory):
    node = cluster_factory(racks=1)[0]
    client, plain = node.client(), node.redis_client()
    got, expected = client.config_get("*"), plain.config_get("*")
    assert got["port"] == str(node.port) and got["databases"] == "1"
    secrets = {"requirepass", "masterauth", "masteruser", "tls-key-file-pass", "tls-client-key-file-pass"}
    assert not secrets & set(got) and secrets <= set(expected)
    own = {"port", "databases", "maxclients"}
    assert {k: v for k, v in got.items() if k not in own} == \
        {k: v for k, v in expected.items() if k not in own | secrets}
    assert client.config_get("maxmemory-policy") == plain.config_get("maxmemory-policy")
    assert node.client(protocol=3).config_get("save") == plain.config_get("save")
    with pytest.raises(redis.ResponseError, match="not supported in a dyno cluster"):
        client.config_set("maxmemory", "1")
    assert plain.config_get("maxmemory") == {"maxmemory": "0"}


@integration
def test_info_keyspace_counts_the_rack_when_a_rack_has_several_nodes(cluster_factory):
    cluster = cluster_factory(racks=1, nodes_per_rack=3)
    client = cluster[0].client()
    client.mset({f"k{i}": i for i in range(300)})
    for i in range(30):
        client.expire(f"k{i}", 1000)
    keyspace = client.info("keyspace")["db0"]
    assert keyspace["keys"] == 300 and keyspace["expires"] == 30
    assert sum(n.redis_client().dbsize() for n in cluster.nodes) == 300
    assert cluster[0].redis_client().dbsize() < 300  # this node's Redis holds a share only
    assert client.info()["db0"]["keys"] == 300  # the default sections too
