"""dyno.config: every key, every default, every error path, and fuzzing.

Expected values are written out literally, not read back from the module, so a
changed default or message shows up here as a failure.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dyno import config as config_module
from dyno.config import (
    CONSISTENCY_LEVELS,
    HASH_NAMES,
    Address,
    Config,
    ConfigError,
    Seed,
    Server,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "data" / "config"

BASE = {"listen": "127.0.0.1:8102", "servers": ["127.0.0.1:22122:1"]}


def dump(settings: dict, root: str = "dyn_o_mite") -> str:
    return yaml.safe_dump({root: settings}, sort_keys=False)


def parse(**settings: object) -> Config:
    """BASE plus `settings` (a value of None removes a BASE key... no: sets null)."""
    return parse_config(dump({**BASE, **settings}), "node.yml")


def problems_of(text: str) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "node.yml")
    assert str(caught.value) == "\n".join(caught.value.problems)
    for problem in caught.value.problems:
        assert problem.startswith("node.yml: "), problem
    return caught.value.problems


def problem_of(text: str) -> str:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    return problems[0]


def key_problem(**settings: object) -> str:
    return problem_of(dump({**BASE, **settings}))


# ---------------------------------------------------------------------------
# Defaults and the shape of Config


DEFAULTS = {
    "pool": "dyn_o_mite",
    "datacenter": "localdc",
    "rack": "localrack",
    "dyn_listen": Address("0.0.0.0", 8101),
    "dyn_seeds": (),
    "tokens": (0,),
    "stats_listen": Address("127.0.0.1", 22222),
    "data_store": 0,
    "read_consistency": "DC_ONE",
    "write_consistency": "DC_ONE",
    "hash": "murmur",
    "hash_tag": None,
    "timeout": 5000,
    "gos_interval": 1000,
    "enable_gossip": True,
    "phi_convict_threshold": 8.0,
    "secure_server_option": "none",
    "pem_key_file": "conf/dynomite.pem",
    "peer_tls_cert": None,
    "peer_tls_key": None,
    "peer_tls_ca": None,
    "preconnect": True,
    "auto_eject_hosts": True,
    "server_retry_timeout": 10000,
    "server_failure_limit": 3,
    "datastore_connections": 1,
    "local_peer_connections": 1,
    "remote_peer_connections": 1,
    "stats_interval": 30000,
    "mbuf_size": 16384,
    "max_msgs": 200000,
    "requirepass": None,
    "datastore_password": None,
    "admin_token": None,
    "cluster_secret": None,
    "maxclients": 10000,
    "proto_max_bulk_len": 512 * 1024 * 1024,
    "client_query_buffer_limit": 1024 * 1024 * 1024,
    "client_output_buffer_limit": 256 * 1024 * 1024,
    "maxmemory_clients": 1024 * 1024 * 1024,
    "client_tls_cert": None,
    "client_tls_key": None,
    "client_tls_ca": None,
    "hints_dir": None,
    "max_hint_window": 10_800_000,
    "max_hints_size": 1 << 30,
    "versions_db": 15,
    "read_repair_chance": 0.0,
    "repair_rate": 0,
    "repair_interval": 0,
    "tombstone_grace": 864000,
    "flush_enabled": True,
    "auto_bootstrap": False,
    "replace_node": None,
    "stream_rate": 0,
    "workers": 1,
    "warnings": (),
}


def test_minimal_config_gets_every_default() -> None:
    config = parse()
    assert config.path == "node.yml"
    assert config.listen == Address("127.0.0.1", 8102)
    assert config.servers == (Server("127.0.0.1", 22122, 1),)
    for field, expected in DEFAULTS.items():
        assert getattr(config, field) == expected, field


def test_defaults_table_covers_every_field() -> None:
    fields = {field.name for field in dataclasses.fields(Config)}
    assert fields == set(DEFAULTS) | {"path", "listen", "servers"}


def test_every_config_field_has_a_parser_and_every_parser_a_field() -> None:
    fields = {field.name for field in dataclasses.fields(Config)}
    assert set(config_module._SETTINGS) == fields - {"path", "pool", "warnings"}


def test_parse_config_without_path_names_string() -> None:
    config = parse_config(dump(BASE))
    assert config.path == "<string>"
    with pytest.raises(ConfigError, match=r"^<string>: dyn_o_mite\.timeout: "):
        parse_config(dump({**BASE, "timeout": -1}))


def test_config_is_frozen_and_hashable() -> None:
    config = parse()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.timeout = 1  # type: ignore[misc]
    assert hash(config) == hash(parse())
    assert config == parse()


def test_name_is_dyn_listen() -> None:
    assert parse(dyn_listen="10.0.0.5:8101").name == "10.0.0.5:8101"
    assert parse(dyn_listen="[::1]:8101").name == "[::1]:8101"


def test_any_single_root_name_is_the_pool() -> None:
    config = parse_config(dump(BASE, root="cache_pool"), "node.yml")
    assert config.pool == "cache_pool"
    problem = problem_of(dump({**BASE, "timeout": 0}, root="cache_pool"))
    assert problem.startswith("node.yml: cache_pool.timeout: ")


# ---------------------------------------------------------------------------
# Every key: a valid value parses to the right field value.

EVERY_KEY = [
    ("datacenter", "us-east-1", "us-east-1"),
    ("rack", "rack_2", "rack_2"),
    ("listen", "0.0.0.0:8102", Address("0.0.0.0", 8102)),
    ("dyn_listen", "10.0.0.1:18101", Address("10.0.0.1", 18101)),
    ("stats_listen", "localhost:22223", Address("localhost", 22223)),
    ("servers", ["redis.internal:6379:0"], (Server("redis.internal", 6379, 0),)),
    ("tokens", "100,2000000000", (100, 2000000000)),
    ("data_store", 0, 0),
    ("read_consistency", "dc_safe_quorum", "DC_SAFE_QUORUM"),
    ("write_consistency", "DC_EACH_SAFE_QUORUM", "DC_EACH_SAFE_QUORUM"),
    ("hash", "crc32a", "crc32a"),
    ("hash_tag", "{}", "{}"),
    ("timeout", 250, 250),
    ("gos_interval", 30000, 30000),
    ("enable_gossip", False, False),
    ("secure_server_option", "datacenter", "datacenter"),
    ("pem_key_file", "/etc/dyno/node.pem", "/etc/dyno/node.pem"),
    ("peer_tls_cert", "/etc/dyno/node1.pem", "/etc/dyno/node1.pem"),
    ("peer_tls_key", "/etc/dyno/node1-key.pem", "/etc/dyno/node1-key.pem"),
    ("peer_tls_ca", "/etc/dyno/ca.pem", "/etc/dyno/ca.pem"),
    ("preconnect", False, False),
    ("auto_eject_hosts", False, False),
    ("server_retry_timeout", 0, 0),
    ("server_failure_limit", 7, 7),
    ("datastore_connections", 4, 4),
    ("local_peer_connections", 2, 2),
    ("remote_peer_connections", 3, 3),
    ("stats_interval", 1000, 1000),
    ("mbuf_size", 512, 512),
    ("max_msgs", 1000000, 1000000),
    ("requirepass", "s3cret", "s3cret"),
    ("hints_dir", "/var/lib/dyno/hints", "/var/lib/dyno/hints"),
    ("datastore_password", "pw", "pw"),
    ("admin_token", "t0ken", "t0ken"),
    ("cluster_secret", "s3cret", "s3cret"),
    ("maxclients", 500, 500),
    ("proto_max_bulk_len", "2mb", 2 * 1024 * 1024),
    ("client_query_buffer_limit", "3GB", 3 * 1024**3),
    ("client_output_buffer_limit", 0, 0),
    ("maxmemory_clients", "2gb", 2 * 1024**3),
    ("client_tls_cert", "/etc/dyno/node.pem", "/etc/dyno/node.pem"),
    ("client_tls_key", "node-key.pem", "node-key.pem"),
    ("client_tls_ca", "/etc/dyno/ca.pem", "/etc/dyno/ca.pem"),
    ("max_hint_window", 60000, 60000),
    ("max_hints_size", "1048576", 1048576),
    ("versions_db", 9, 9),
    ("read_repair_chance", 0.1, 0.1),
    ("repair_rate", 5000, 5000),
    ("repair_interval", 86400, 86400),
    ("tombstone_grace", 86400, 86400),
    ("flush_enabled", False, False),
    ("workers", 4, 4),
    ("workers", "3", 3),
    ("phi_convict_threshold", 12.5, 12.5),
    ("stream_rate", 20000, 20000),
    ("auto_bootstrap", True, True),
    ("replace_node", "127.0.0.1:9201", "127.0.0.1:9201"),
]


# Keys that work only with others: given alongside, so the key alone is what is tested.
PEER_TLS = {"secure_server_option": "all", "peer_tls_cert": "/etc/dyno/node1.pem",
            "peer_tls_key": "/etc/dyno/node1-key.pem", "peer_tls_ca": "/etc/dyno/ca.pem"}
COMPANIONS = {key: PEER_TLS for key in PEER_TLS}
COMPANIONS.update({
    "client_tls_cert": {"client_tls_key": "node-key.pem"},
    "client_tls_key": {"client_tls_cert": "node.pem"},
    "client_tls_ca": {"client_tls_cert": "node.pem", "client_tls_key": "node-key.pem"},
    "auto_bootstrap": {"tokens": "5"},
    "replace_node": {"dyn_seeds": ["127.0.0.1:9201:localrack:localdc:1000"], "dyn_listen": "127.0.0.1:8101"},
})


@pytest.mark.parametrize(("key", "value", "expected"), EVERY_KEY, ids=[k for k, _, _ in EVERY_KEY])
def test_every_key(key: str, value: object, expected: object) -> None:
    if key in config_module._NOT_YET:
        with pytest.raises(ConfigError, match=f"{key}: .*not"):
            parse(**{key: value})
        assert getattr(parse(), key) == config_module._FIELDS[key].default
        return
    config = parse(**{**COMPANIONS.get(key, {}), key: value})
    assert getattr(config, key) == expected
    if key in config_module._NO_EFFECT:
        assert config.warnings == (f"node.yml: dyn_o_mite.{key}: accepted but has no effect: "
                                   f"{config_module._NO_EFFECT[key]}",)
    else:
        assert config.warnings == ()


# Every setting dyno reads, and where (a module that reads ``config.<field>``):
# none is parsed and then forgotten. The others are refused past their default
# (_NOT_YET) or accepted with a warning that they change nothing (_NO_EFFECT).
NOT_FIELDS_OF_A_NODE = {"path", "pool", "warnings"}


def test_every_setting_is_read_refused_or_warned_about() -> None:
    import pathlib
    import re
    fields = {field.name for field in dataclasses.fields(Config)} - NOT_FIELDS_OF_A_NODE
    silent = set(config_module._NO_EFFECT) | set(config_module._NOT_YET)
    assert silent <= fields
    package = pathlib.Path(config_module.__file__).parent
    sources = "".join(path.read_text() for path in package.glob("*.py") if path.name != "config.py")
    for name in sorted(fields):
        read = re.search(rf"\bconfig\.{name}\b", sources) is not None
        if name in silent:
            assert not read, f"{name} is read by dyno but documented as having no effect"
        elif name not in ("data_store", "dyn_seeds", "listen", "servers"):
            # (data_store has one value, Redis, checked when parsed; the others are read
            # through the ring and listeners under other names)
            assert read, f"{name} is parsed but nothing in dyno reads config.{name}"


def test_every_key_is_covered_above() -> None:
    assert {key for key, _, _ in EVERY_KEY} | {"dyn_seeds"} == set(config_module._SETTINGS)


def test_dyn_seeds() -> None:
    config = parse(
        dyn_listen="10.0.0.1:8101",
        tokens="0",
        dyn_seeds=[
            "10.0.0.2:8101:rack2:dc1:1383429731",
            "node3.example.com:8101:rack3:dc2:5,4294967295",
            "[2001:db8::3]:8101:rack1:dc2:0",
        ],
    )
    assert config.dyn_seeds == (
        Seed("10.0.0.2", 8101, "rack2", "dc1", (1383429731,)),
        Seed("node3.example.com", 8101, "rack3", "dc2", (5, 4294967295)),
        Seed("2001:db8::3", 8101, "rack1", "dc2", (0,)),
    )
    assert [str(seed) for seed in config.dyn_seeds] == [
        "10.0.0.2:8101:rack2:dc1:1383429731",
        "node3.example.com:8101:rack3:dc2:5,4294967295",
        "[2001:db8::3]:8101:rack1:dc2:0",
    ]
    assert config.dyn_seeds[0].address == Address("10.0.0.2", 8101)


def test_single_string_is_a_one_entry_list() -> None:
    # Dynomite takes a scalar for these keys too.
    assert parse(servers="127.0.0.1:6379:1").servers == (Server("127.0.0.1", 6379, 1),)
    config = parse(dyn_listen="10.0.0.1:8101", tokens=1, dyn_seeds="10.0.0.2:8101:r:d:2")
    assert config.dyn_seeds == (Seed("10.0.0.2", 8101, "r", "d", (2,)),)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, (0,)),
        (437425602, (437425602,)),
        ("0", (0,)),
        ("4294967295", (4294967295,)),
        ("1, 1001", (1, 1001)),
        ([3, "4", 5], (3, 4, 5)),
    ],
)
def test_token_forms(value: object, expected: tuple[int, ...]) -> None:
    assert parse(tokens=value).tokens == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8102", Address("127.0.0.1", 8102)),
        ("0.0.0.0:1", Address("0.0.0.0", 1)),
        ("localhost:65535", Address("localhost", 65535)),
        ("redis-1.svc.cluster.local:8102", Address("redis-1.svc.cluster.local", 8102)),
        ("[::1]:8102", Address("::1", 8102)),
        ("[::]:8102", Address("::", 8102)),
        ("127.0.0.1:08102", Address("127.0.0.1", 8102)),
    ],
)
def test_listen_forms(text: str, expected: Address) -> None:
    assert parse(listen=text).listen == expected


def test_address_and_server_str() -> None:
    assert str(Address("127.0.0.1", 8102)) == "127.0.0.1:8102"
    assert str(Address("::1", 8102)) == "[::1]:8102"
    assert str(Server("::1", 6379, 1)) == "[::1]:6379:1"
    assert Server("h", 1, 2).address == Address("h", 1)


def test_consistency_is_case_insensitive() -> None:
    for level in CONSISTENCY_LEVELS:
        for spelling in (level, level.lower(), level.title()):
            assert parse(read_consistency=spelling).read_consistency == level


@pytest.mark.parametrize("name", HASH_NAMES)
def test_every_dynomite_hash_name(name: str) -> None:
    assert parse(hash=name).hash == name


def test_hash_names_are_dynomites() -> None:
    assert HASH_NAMES == (
        "one_at_a_time", "md5", "crc16", "crc32", "crc32a", "fnv1_64", "fnv1a_64",
        "fnv1_32", "fnv1a_32", "hsieh", "murmur", "jenkins", "murmur3",
    )


@pytest.mark.parametrize("option", ["rack", "datacenter", "all"])
def test_secure_server_options_other_than_none_need_the_three_peer_tls_files(option: str) -> None:
    config = parse(**{**PEER_TLS, "secure_server_option": option})
    assert (config.secure_server_option, config.peer_tls_ca) == (option, "/etc/dyno/ca.pem")
    assert config.warnings == ()
    assert key_problem(secure_server_option=option) == (
        f"node.yml: dyn_o_mite.secure_server_option: {option!r} makes peer links TLS, which needs "
        "peer_tls_cert, peer_tls_key and peer_tls_ca (this node's certificate, its key, the cluster "
        "CA); missing: peer_tls_cert, peer_tls_key, peer_tls_ca")
    without_ca = {**PEER_TLS, "secure_server_option": option, "peer_tls_ca": None}
    assert key_problem(**without_ca).endswith("missing: peer_tls_ca")


def test_peer_tls_files_without_secure_server_option_are_accepted_with_a_warning() -> None:
    config = parse(peer_tls_cert="/etc/dyno/node1.pem", peer_tls_ca="/etc/dyno/ca.pem")
    assert config.secure_server_option == "none"
    assert config.warnings == tuple(
        f"node.yml: dyn_o_mite.{key}: accepted but has no effect: secure_server_option is none, "
        "so no peer link uses TLS" for key in ("peer_tls_cert", "peer_tls_ca"))


@pytest.mark.parametrize("key", ["hash_tag", "requirepass", "hints_dir"])
def test_nullable_keys_accept_null(key: str) -> None:
    assert getattr(parse(**{key: None}), key) is None


# ---------------------------------------------------------------------------
# Booleans and strict scalars

BOOL_KEYS = ["enable_gossip", "preconnect", "auto_eject_hosts", "flush_enabled"]


@pytest.mark.parametrize("key", BOOL_KEYS)
@pytest.mark.parametrize(
    ("spelling", "expected"),
    [("false", False), ("true", True), ("False", False), ("TRUE", True),
     ("'false'", False), ("'true'", True)],
)
def test_booleans_mean_what_they_say(key: str, spelling: str, expected: bool) -> None:
    text = dump(BASE) + f"  {key}: {spelling}\n"
    assert getattr(parse_config(text, "node.yml"), key) is expected


@pytest.mark.parametrize("spelling", ["yes", "no", "on", "off", "1", "0", "'True '", "maybe"])
def test_only_true_and_false_are_booleans(spelling: str) -> None:
    text = dump(BASE) + f"  preconnect: {spelling}\n"
    problem = problem_of(text)
    assert problem.startswith("node.yml: dyn_o_mite.preconnect: expected true or false, got ")


def test_yaml_1_1_booleans_are_plain_strings() -> None:
    text = dump(BASE) + "  rack: no\n  datacenter: on\n"
    config = parse_config(text, "node.yml")
    assert (config.rack, config.datacenter) == ("no", "on")


def test_integers_are_decimal() -> None:
    text = dump(BASE) + "  tokens: 0100\n  timeout: 0750\n"
    config = parse_config(text, "node.yml")
    assert (config.tokens, config.timeout) == ((100,), 750)


def test_leading_zeros_keep_strings_intact() -> None:
    text = dump(BASE) + "  datacenter: 08\n  rack: '007'\n  requirepass: 0123456789\n"
    config = parse_config(text, "node.yml")
    assert (config.datacenter, config.rack, config.requirepass) == ("08", "007", "0123456789")


def test_quoted_numbers_are_read_as_dynomite_reads_them() -> None:
    config = parse(timeout="250", tokens="7", server_failure_limit="2")
    assert (config.timeout, config.tokens, config.server_failure_limit) == (250, (7,), 2)


def test_hex_and_sexagesimal_are_not_integers() -> None:
    problem = problem_of(dump(BASE) + "  timeout: 0x10\n")
    assert problem == ("node.yml: dyn_o_mite.timeout: expected a whole number of "
                       "milliseconds, got '0x10'")
    problem = problem_of(dump(BASE) + "  timeout: 1:30\n")
    assert "got '1:30'" in problem


def test_explicit_int_tag_must_be_decimal() -> None:
    problem = problem_of(dump(BASE) + "  timeout: !!int 0x10\n")
    assert problem.startswith("node.yml: line 5, column 12: invalid YAML: '0x10' is not a "
                              "decimal integer")


# ---------------------------------------------------------------------------
# Error paths: every message names the file, the key and the expectation.

KEY_ERRORS = [
    # addresses
    ("listen", ["a"], "expected a string host:port, got a list"),
    ("listen", True, "expected a string host:port, got true"),
    ("listen", 8102, "expected a string host:port, got 8102"),
    ("listen", "127.0.0.1", "'127.0.0.1' has 1 ':'-separated fields; expected 2: host:port"),
    ("listen", "127.0.0.1:8102:1", "has 3 ':'-separated fields; expected 2: host:port"),
    ("listen", "127.0.0.1:0", "port 0 is not allowed; expected 1 to 65535"),
    ("listen", "127.0.0.1:65536", "port '65536' is not a number from 1 to 65535"),
    ("listen", "127.0.0.1:http", "port 'http' is not a number from 1 to 65535"),
    ("listen", "127.0.0.1:", "port '' is not a number from 1 to 65535"),
    ("listen", "127.0.0.1:-1", "port '-1' is not a number from 1 to 65535"),
    ("listen", "/tmp/dyno.sock", "is a unix socket path, which dyno does not support"),
    ("listen", "::1:8102", "has no host; expected host:port (an IPv6 host goes in brackets"),
    ("listen", "[::1:8102", "is not host:port; an IPv6 host goes in brackets"),
    ("listen", "[::1]8102", "is not host:port; an IPv6 host goes in brackets"),
    ("listen", "[db8]:8102", "'db8' in brackets is not an IPv6 address"),
    ("listen", "999.1.1.1:8102", "'999.1.1.1' is not a valid IPv4 address"),
    ("listen", "bad!host:8102", "'bad!host' is not a host name or IP address"),
    ("listen", "", "'' has no host"),
    ("listen", "127.0.0.1: 8102", "contains whitespace; expected host:port"),
    ("dyn_listen", 5, "expected a string host:port, got 5"),
    ("stats_listen", None, "expected a string host:port, got an empty value"),
    # servers
    ("servers", [], "lists 0 datastores; expected exactly one"),
    ("servers", ["127.0.0.1:6379:1", "127.0.0.1:6380:1"],
     "lists 2 datastores; expected exactly one, like - 127.0.0.1:6379:1 "
     "(dyno, like Dynomite, has one Redis per node)"),
    ("servers", {"a": 1}, "expected a list of host:port:weight strings, got a mapping"),
    ("servers", None, "expected a list of host:port:weight strings, got an empty value"),
    ("servers", ["127.0.0.1:6379"], "has 2 ':'-separated fields; expected 3: host:port:weight"),
    ("servers", ["127.0.0.1:6379:x"], "weight 'x' is not a whole number"),
    ("servers", ["127.0.0.1:6379:-1"], "weight '-1' is not a whole number"),
    ("servers", ["127.0.0.1:6379:1 redis1"], "contains whitespace; expected host:port:weight"),
    ("servers", ["/tmp/redis.sock:1"], "is a unix socket path"),
    ("servers", [6379], "expected a string host:port:weight, got 6379"),
    # tokens
    ("tokens", 4294967296, "token 4294967296 is out of range; expected 0 to 4294967295"),
    ("tokens", "4294967296", "token 4294967296 is out of range; expected 0 to 4294967295"),
    ("tokens", "9" * 30, "is out of range; expected 0 to 4294967295"),
    ("tokens", -1, "token -1 is out of range; expected 0 to 4294967295"),
    ("tokens", "a",
     "expected tokens: whole numbers separated by commas, like '100,2000000000', got 'a'"),
    ("tokens", "-5", "got '-5'"),
    ("tokens", "1,,2", "got ''"),
    ("tokens", "", "got ''"),
    ("tokens", [], "lists no tokens; expected at least one, like '0'"),
    ("tokens", [1, 1], "token 1 is listed twice"),
    ("tokens", "5,5", "token 5 is listed twice"),
    ("tokens", 1.5, "got 1.5"),
    ("tokens", True, "got true"),
    ("tokens", None, "got an empty value"),
    ("tokens", {"a": 1}, "got a mapping"),
    # names
    ("datacenter", 1, "expected a string, got 1; put it in quotes"),
    ("datacenter", "dc:1", "'dc:1' contains ':' or a space; names must fit in dyn_seeds entries"),
    ("rack", "", "is empty; expected a non-empty string"),
    ("rack", ["a"], "expected a string, got a list"),
    ("rack", "rack one", "contains ':' or a space"),
    ("rack", None, "expected a string, got an empty value"),
    # data store
    ("data_store", 1, "1 (memcache) is not supported; dyno supports Redis only (data_store: 0)"),
    ("data_store", 2, "2 is not a data store; expected 0 (Redis)"),
    ("data_store", -1, "-1 is out of range; expected a whole number, at least 0"),
    ("data_store", "redis", "expected a whole number, got 'redis'"),
    # enumerations
    ("read_consistency", "dc_twice",
     "'dc_twice' is not one of DC_ONE, DC_QUORUM, DC_SAFE_QUORUM, DC_EACH_SAFE_QUORUM"),
    ("write_consistency", 5,
     "expected one of DC_ONE, DC_QUORUM, DC_SAFE_QUORUM, DC_EACH_SAFE_QUORUM, got 5"),
    ("hash", "murmur2", "'murmur2' is not one of one_at_a_time, md5, crc16, crc32, crc32a, "
                        "fnv1_64, fnv1a_64, fnv1_32, fnv1a_32, hsieh, murmur, jenkins, "
                        "murmur3, slot; did you mean 'murmur'?"),
    ("hash", "MURMUR", "'MURMUR' is not one of"),
    ("hash", 1, "expected one of one_at_a_time"),
    ("secure_server_option", "everything",
     "'everything' is not one of none, rack, datacenter, all"),
    ("secure_server_option", "dc", "'dc' is not one of none, rack, datacenter, all"),
    ("secure_server_option", False, "expected one of none, rack, datacenter, all, got false"),
    # hash tag
    ("hash_tag", "{", "'{' has 1 characters; expected 2, the opening and closing characters"),
    ("hash_tag", "{}}", "'{}}' has 3 characters; expected 2"),
    ("hash_tag", "", "is empty; expected a non-empty string"),
    ("hash_tag", {}, "got a mapping; write the tag in quotes, like hash_tag: \"{}\""),
    ("hash_tag", 12, "expected a string, got 12; put it in quotes"),
    # integers
    ("timeout", -5, "-5 is out of range; expected a whole number of milliseconds, at least 1"),
    ("timeout", 0, "0 is out of range; expected a whole number of milliseconds, at least 1"),
    ("timeout", 1.5, "expected a whole number of milliseconds, got 1.5"),
    ("timeout", True, "expected a whole number of milliseconds, got true"),
    ("timeout", "5s", "expected a whole number of milliseconds, got '5s'"),
    ("timeout", 2**31, "2147483648 is out of range"),
    ("timeout", "9" * 30, "is out of range; expected a whole number of milliseconds"),
    ("timeout", None, "expected a whole number of milliseconds, got an empty value"),
    ("gos_interval", 0, "0 is out of range; expected a whole number of milliseconds, at least 1"),
    ("server_retry_timeout", -1,
     "-1 is out of range; expected a whole number of milliseconds, at least 0"),
    ("server_failure_limit", 0, "0 is out of range; expected a whole number, at least 1"),
    ("datastore_connections", 0, "0 is out of range; expected a whole number, at least 1"),
    ("local_peer_connections", 0, "0 is out of range"),
    ("remote_peer_connections", "x", "expected a whole number, got 'x'"),
    ("stats_interval", 0, "0 is out of range"),
    ("mbuf_size", 100, "100 is out of range; expected a whole number of bytes, from 512 to 65536, "
                       "a multiple of 16"),
    ("mbuf_size", 16385, "16385 is out of range"),
    ("mbuf_size", 65552, "65552 is out of range"),
    ("max_msgs", 99999, "99999 is out of range; expected a whole number, from 100000 to 1000000"),
    ("max_msgs", 1000001, "1000001 is out of range"),
    # booleans
    ("enable_gossip", 1, "expected true or false, got 1"),
    ("preconnect", "maybe", "expected true or false, got 'maybe'"),
    ("auto_eject_hosts", None, "expected true or false, got an empty value"),
    ("flush_enabled", "no", "expected true or false, got 'no'"),
    ("workers", 0, "0 is out of range; expected 'auto' or a whole number of processes, from 1 to 256"),
    ("workers", "many", "expected 'auto' or a whole number of processes, got 'many'"),
    ("workers", 2.5, "expected 'auto' or a whole number of processes"),
    ("phi_convict_threshold", 0, "out of range; expected a number above 0"),
    ("phi_convict_threshold", "high", "expected a number above 0"),
    # strings
    ("pem_key_file", 5, "expected a string, got 5; put it in quotes"),
    ("pem_key_file", "", "is empty; expected a non-empty string"),
    ("peer_tls_cert", 5, "expected a string, got 5"),
    ("peer_tls_key", "", "is empty; expected a non-empty string"),
    ("peer_tls_ca", ["ca.pem"], "expected a string, got a list"),
    ("requirepass", 1234, "expected a string, got 1234; put it in quotes"),
    ("requirepass", "", "is empty; expected a non-empty string"),
    ("hints_dir", [], "expected a string, got a list"),
    ("datastore_password", 1234, "expected a string, got 1234"),
    ("admin_token", ["x"], "expected a string, got a list"),
    ("cluster_secret", 5, "expected a string, got 5"),
    ("maxclients", 0, "expected a whole number of connections"),
    ("proto_max_bulk_len", 1000, "out of range; expected a number of bytes like 1048576 or '512mb', at least 1048576"),
    ("client_query_buffer_limit", "1 tb", "expected a number of bytes like 1048576 or '512mb', got"),
    ("client_output_buffer_limit", -1, "out of range"),
    ("maxmemory_clients", "lots", "expected a number of bytes"),
    ("client_tls_cert", 5, "expected a string, got 5"),
    ("client_tls_key", "", "is empty; expected a non-empty string"),
    ("client_tls_ca", ["ca.pem"], "expected a string, got a list"),
    ("max_hint_window", -1, "expected a whole number of milliseconds"),
    ("max_hints_size", "lots", "expected a whole number of bytes"),
    ("versions_db", 0, "from 1 to 15"),
    ("versions_db", 16, "from 1 to 15"),
    ("read_repair_chance", 1.5, "expected a number from 0 to 1, got 1.5"),
    ("read_repair_chance", True, "expected a number from 0 to 1, got true"),
    ("repair_rate", -5, "expected a whole number of keys per second"),
    ("repair_interval", "daily", "expected a whole number of seconds"),
    ("stream_rate", -1, "expected a whole number of keys per second"),
    ("auto_bootstrap", "yes please", "expected true or false"),
    ("replace_node", "", "is empty; expected a non-empty string"),
    ("tombstone_grace", 0, "0 is out of range; expected a whole number of seconds, at least 1"),
    ("tombstone_grace", "10d", "expected a whole number of seconds"),
    # keys dyno ignores still get their values checked
    ("dyn_read_timeout", "abc", "expected a whole number, got 'abc'"),
    ("dyn_connections", 0, "0 is out of range; expected a whole number, at least 1"),
    ("dyn_port", 70000, "70000 is out of range; expected a whole number, from 0 to 65535"),
    ("backlog", -1, "-1 is out of range; expected a whole number, at least 0"),
    ("env", 5, "expected a string, got 5"),
    ("distribution", [], "expected a string, got a list"),
    ("dyn_seed_provider", None, "expected a string, got an empty value"),
    ("redis", False, "false (memcache) is not supported; dyno supports Redis only"),
    ("redis", "sure", "expected true or false, got 'sure'"),
]


@pytest.mark.parametrize(("key", "value", "message"), KEY_ERRORS,
                         ids=[f"{k}={v!r}"[:50] for k, v, _ in KEY_ERRORS])
def test_key_errors(key: str, value: object, message: str) -> None:
    problem = key_problem(**{key: value})
    where = "[0]" if key == "servers" and isinstance(value, list) and len(value) == 1 else ""
    prefix = f"node.yml: dyn_o_mite.{key}{where}: "
    assert problem.startswith(prefix), problem
    assert message in problem[len(prefix):], problem


def test_every_honoured_key_has_an_error_case() -> None:
    tested = {key for key, _, _ in KEY_ERRORS} | {"dyn_seeds"}
    assert set(config_module._SETTINGS) <= tested


SEED_ERRORS = [
    (["10.0.0.2:8101:rack1:dc1"], "[0]",
     "'10.0.0.2:8101:rack1:dc1' has 4 ':'-separated fields; expected 5: host:port:rack:dc:tokens"),
    (["10.0.0.2:8101:r:d:0:x"], "[0]", "has 6 ':'-separated fields; expected 5"),
    (["10.0.0.2:x:rack1:dc1:0"], "[0]", "port 'x' is not a number from 1 to 65535"),
    (["10.0.0.2:0:rack1:dc1:0"], "[0]", "port 0 is not allowed"),
    (["10.0.0.2:8101:rack1:dc1:abc"], "[0]", "got 'abc'"),
    (["10.0.0.2:8101:rack1:dc1:4294967296"], "[0]", "token 4294967296 is out of range"),
    (["10.0.0.2:8101:rack1:dc1:"], "[0]", "got ''"),
    (["10.0.0.2:8101::dc1:0"], "[0]", "is empty; expected a non-empty string"),
    (["10.0.0.2:8101:r1:d1:0", "bad!:8101:r:d:0"], "[1]", "'bad!' is not a host name"),
    (["10.0.0.2:8101:r1:d1:0", "10.0.0.2:8101:r2:d1:5"], "[1]", "lists 10.0.0.2:8101 twice"),
    (["10.0.0.2:8101:r1:d1:0 name"], "[0]", "contains whitespace"),
    ([8101], "[0]", "expected a string host:port:rack:dc:tokens, got 8101"),
    (5, "", "expected a list of host:port:rack:dc:tokens strings, got 5"),
]


@pytest.mark.parametrize(("seeds", "where", "message"), SEED_ERRORS)
def test_seed_errors(seeds: object, where: str, message: str) -> None:
    problem = key_problem(dyn_listen="10.0.0.1:8101", tokens=0, dyn_seeds=seeds)
    prefix = f"node.yml: dyn_o_mite.dyn_seeds{where}: "
    assert problem.startswith(prefix), problem
    assert message in problem, problem


def test_server_error_names_the_entry() -> None:
    assert key_problem(servers=["bad"]).startswith("node.yml: dyn_o_mite.servers[0]: ")


@pytest.mark.parametrize("key", ["listen", "servers"])
def test_required_keys(key: str) -> None:
    settings = dict(BASE)
    del settings[key]
    example = {"listen": "listen: 127.0.0.1:8102", "servers": "servers: ['127.0.0.1:6379:1']"}[key]
    assert problem_of(dump(settings)) == (
        f"node.yml: dyn_o_mite.{key}: missing; every node needs it, like {example}")


def test_all_problems_are_reported_together() -> None:
    problems = problems_of(dump({"timeout": -1, "hash": "nope", "listne": "x"}))
    assert problems == (
        "node.yml: dyn_o_mite.timeout: -1 is out of range; expected a whole number of "
        "milliseconds, at least 1",
        "node.yml: dyn_o_mite.hash: 'nope' is not one of one_at_a_time, md5, crc16, crc32, "
        "crc32a, fnv1_64, fnv1a_64, fnv1_32, fnv1a_32, hsieh, murmur, jenkins, murmur3, slot",
        "node.yml: dyn_o_mite.listne: unknown key; did you mean 'listen'?",
        "node.yml: dyn_o_mite.listen: missing; every node needs it, like listen: 127.0.0.1:8102",
        "node.yml: dyn_o_mite.servers: missing; every node needs it, like "
        "servers: ['127.0.0.1:6379:1']",
    )


# ---------------------------------------------------------------------------
# Unknown keys


def test_unknown_key_with_hint() -> None:
    assert key_problem(red_consistency="DC_ONE") == (
        "node.yml: dyn_o_mite.red_consistency: unknown key; did you mean 'read_consistency'?")


def test_unknown_key_hint_is_case_insensitive_enough() -> None:
    assert key_problem(Listen="x").endswith("unknown key; did you mean 'listen'?")


def test_unknown_key_hints_at_ignored_keys_too() -> None:
    assert key_problem(dyn_read_timout=5).endswith("did you mean 'dyn_read_timeout'?")


def test_unknown_key_without_close_match() -> None:
    assert key_problem(zzzzzz=1) == (
        "node.yml: dyn_o_mite.zzzzzz: unknown key; see configs/README.md for the keys dyno reads")


@pytest.mark.parametrize(
    ("key", "hint"),
    [("redis_auth", "twemproxy's key; dyno's is requirepass"),
     ("redis_db", "dyno always uses database 0"),
     ("tcpkeepalive", "does not support it"),
     ("reuseport", "does not support it")],
)
def test_twemproxy_keys_are_errors_with_a_pointer(key: str, hint: str) -> None:
    problem = key_problem(**{key: "x"})
    assert problem.startswith(f"node.yml: dyn_o_mite.{key}: unknown key (")
    assert hint in problem


def test_non_string_key() -> None:
    text = dump(BASE) + "  5: x\n"
    assert problem_of(text) == ("node.yml: dyn_o_mite: key 5 is not a name; "
                                "expected keys like listen")


# ---------------------------------------------------------------------------
# Ignored keys and other warnings

IGNORED = [
    ("distribution", "vnode", "deprecated in Dynomite"),
    ("backlog", 512, "not used by dyno"),
    ("client_connections", 0, "Dynomite ignores it too"),
    ("server_connections", 1, "use datastore_connections"),
    ("dyn_read_timeout", 10000, "bounded by timeout"),
    ("dyn_write_timeout", 10000, "bounded by timeout"),
    ("dyn_connections", 100, "use local_peer_connections and remote_peer_connections"),
    ("dyn_port", 8101, "the peer port is dyn_listen's"),
    ("dyn_seed_provider", "florida_provider", "static dyn_seeds list"),
    ("env", "aws", "not used by dyno"),
    ("recon_key_file", "conf/recon_key.pem", "reconciliation"),
    ("recon_iv_file", "conf/recon_iv.pem", "reconciliation"),
    ("conn_msg_rate", 50000, "no per-connection rate limit"),
    ("redis", True, "obsolete Dynomite key; dyno always speaks Redis"),
]


@pytest.mark.parametrize(("key", "value", "reason"), IGNORED, ids=[k for k, _, _ in IGNORED])
def test_ignored_keys_warn(key: str, value: object, reason: str) -> None:
    config = parse(**{key: value})
    assert len(config.warnings) == 1
    warning = config.warnings[0]
    assert warning.startswith(f"node.yml: dyn_o_mite.{key}: accepted but ignored: "), warning
    assert reason in warning
    assert config == dataclasses.replace(parse(), warnings=config.warnings)


def test_ignored_table_is_covered_above() -> None:
    assert {key for key, _, _ in IGNORED} == set(config_module._IGNORED)


def test_simple_seed_provider_is_what_dyno_does() -> None:
    assert parse(dyn_seed_provider="simple_provider").warnings == ()


def test_redis_requirepass_is_read_as_requirepass() -> None:
    config = parse(redis_requirepass="s3cret")
    assert config.requirepass == "s3cret"
    assert config.warnings == (
        "node.yml: dyn_o_mite.redis_requirepass: old name of requirepass; read as requirepass",)


def test_both_password_names_is_an_error() -> None:
    assert key_problem(requirepass="a", redis_requirepass="b") == (
        "node.yml: dyn_o_mite.redis_requirepass: old name of requirepass, which is also given; "
        "keep only requirepass")


# ---------------------------------------------------------------------------
# Rules spanning keys

SEEDS = ["10.0.0.2:8101:rack2:dc1:0"]


def test_seeds_need_dyn_listen_and_tokens() -> None:
    problems = problems_of(dump({**BASE, "dyn_seeds": SEEDS}))
    assert problems == (
        "node.yml: dyn_o_mite.dyn_listen: missing; required when dyn_seeds lists peers, since "
        "it is the address they reach this node at",
        "node.yml: dyn_o_mite.tokens: missing; required when dyn_seeds lists peers (nodes of "
        "one rack must not share the default token 0), unless auto_bootstrap or replace_node chooses them",
    )


def test_wildcard_dyn_listen_with_seeds_warns() -> None:
    config = parse(dyn_seeds=SEEDS, dyn_listen="0.0.0.0:8101", tokens=5)
    assert config.warnings == (
        "node.yml: dyn_o_mite.dyn_listen: 0.0.0.0:8101 is a wildcard address, so this node's "
        "name does not tell peers where it is; set dyn_listen to this node's own address",)
    assert parse(dyn_listen="0.0.0.0:8101").warnings == ()


@pytest.mark.parametrize(
    ("settings", "key", "message"),
    [
        ({"dyn_listen": "127.0.0.1:8102"}, "dyn_listen",
         "127.0.0.1:8102 clashes with listen (127.0.0.1:8102); each listener needs its own port"),
        ({"stats_listen": "0.0.0.0:8102"}, "stats_listen",
         "0.0.0.0:8102 clashes with listen (127.0.0.1:8102)"),
        ({"dyn_listen": "10.0.0.1:9000", "stats_listen": "[::]:9000"}, "stats_listen",
         "[::]:9000 clashes with dyn_listen (10.0.0.1:9000)"),
        ({"servers": ["127.0.0.1:8102:1"]}, "servers[0]",
         "127.0.0.1:8102 is this node's own listen address; it must be the local Redis"),
        ({"servers": ["127.0.0.1:22222:1"]}, "servers[0]", "is this node's own stats_listen address"),
        ({"listen": "127.0.0.1:8101"}, "dyn_listen",
         "the default dyn_listen 0.0.0.0:8101 clashes with listen (127.0.0.1:8101)"),
        ({"tombstone_grace": 3600}, "tombstone_grace",
         "tombstone_grace (3600 s) is shorter than max_hint_window (10800000 ms): a hint replayed "
         "after its key's tombstone was dropped would bring a deleted key back; set tombstone_grace "
         "to at least 10800"),
        ({"max_hint_window": 900_000_001}, "max_hint_window",
         "tombstone_grace (864000 s) is shorter than max_hint_window (900000001 ms)"),
        ({"tombstone_grace": 1, "max_hint_window": 1001}, "tombstone_grace",
         "set tombstone_grace to at least 2"),
    ],
)
def test_cross_key_errors(settings: dict, key: str, message: str) -> None:
    problem = key_problem(**settings)
    assert problem.startswith(f"node.yml: dyn_o_mite.{key}: "), problem
    assert message in problem


def test_same_port_on_different_hosts_is_fine() -> None:
    config = parse(dyn_listen="127.0.0.2:8102")
    assert config.dyn_listen == Address("127.0.0.2", 8102)


# ---------------------------------------------------------------------------
# Whole-document errors

DOCUMENT_ERRORS = [
    ("", "node.yml: is empty; expected one root key such as dyn_o_mite: with the node's "
         "settings indented under it"),
    ("# only a comment\n", "node.yml: is empty; expected one root key"),
    ("{}\n", "node.yml: is empty; expected one root key"),
    ("dyn_o_mite:\n", "node.yml: dyn_o_mite: expected the node's settings (listen:, servers:, "
                      "...) indented under the root key, got an empty value"),
    ("dyn_o_mite: 5\n", "node.yml: dyn_o_mite: expected the node's settings"),
    ("dyn_o_mite: {}\n", "node.yml: dyn_o_mite: expected the node's settings"),
    ("dyn_o_mite: [a]\n", "got a list"),
    ("- a\n- b\n", "node.yml: expected one root key such as dyn_o_mite: with the node's settings "
                   "indented under it, got a list"),
    ("just text\n", "got 'just text'"),
    ("a: {listen: x}\nb: {listen: y}\n",
     "node.yml: has 2 root keys ('a', 'b'); expected exactly one root key such as dyn_o_mite: "
     "with the node's settings indented under it (dyno, like Dynomite, runs one pool per node)"),
    ("5: {listen: x}\n", "node.yml: the root key 5 is not a name"),
    ("'': {listen: x}\n", "node.yml: the root key '' is not a name"),
    ("dyn_o_mite:\n  listen: [\n", "node.yml: line 3, column 1: invalid YAML: while parsing a "
                                  "flow node, expected the node content, but found '<stream end>'"),
    ("dyn_o_mite:\n  listen: a\n bad: 1\n", "node.yml: line 3, column 2: invalid YAML: "),
    ("dyn_o_mite:\n\tlisten: a\n", "node.yml: line 2, column 1: invalid YAML: while scanning for "
                                   "the next token, found character '\\t' that cannot start "
                                   "any token"),
    ("dyn_o_mite:\n  listen: a\n  listen: b\n",
     "node.yml: line 3, column 3: duplicate key 'listen' (first given on line 2); each key "
     "may appear once"),
    ("dyn_o_mite: {listen: a, listen: b}\n", "duplicate key 'listen' (first given on line 1)"),
    ("a: 1\n---\nb: 2\n", "node.yml: line 2, column 1: invalid YAML: expected a single "
                          "document in the stream, but found another document"),
    ("dyn_o_mite: !!timestamp x\n", "node.yml: invalid YAML: "),
    ("dyn_o_mite: !!bool x\n", "node.yml: invalid YAML: "),
    ("dyn_o_mite: !!binary 'a'\n", "node.yml: line 1, column 13: invalid YAML: failed to decode "
                                   "base64 data"),
    ("dyn_o_mite: !!binary 'AAAA'\n", "node.yml: dyn_o_mite: expected the node's settings "
                                      "(listen:, servers:, ...) indented under the root key, "
                                      "got a bytes"),
    ("x: *nowhere\n", "node.yml: line 1, column 4: invalid YAML: found undefined alias"),
]


@pytest.mark.parametrize(("text", "message"), DOCUMENT_ERRORS)
def test_document_errors(text: str, message: str) -> None:
    problem = problem_of(text)
    assert message in problem, problem


def test_yaml_errors_carry_line_numbers_of_the_problem() -> None:
    text = "dyn_o_mite:\n  listen: 127.0.0.1:8102\n  servers:\n  - a\n   b: c\n"
    assert problem_of(text).startswith("node.yml: line 5, column 5: invalid YAML: ")


# ---------------------------------------------------------------------------
# load_config


def test_load_config_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.yml"
    path.write_text(dump(BASE))
    config = load_config(path)
    assert config.path == str(path)
    assert load_config(str(path)) == config


def test_load_config_names_file_in_key_errors(tmp_path: Path) -> None:
    path = tmp_path / "node.yml"
    path.write_text(dump({**BASE, "timeout": "soon"}))
    with pytest.raises(ConfigError, match=rf"^{path}: dyn_o_mite\.timeout: expected a whole"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: cannot read the config file: No such file or directory"


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: cannot read the config file: "):
        load_config(tmp_path)


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.yml"
    path.write_text(dump(BASE))
    path.chmod(0)
    if os.access(path, os.R_OK):  # running as root: permissions do not apply
        pytest.skip("file permissions do not apply to this user")
    with pytest.raises(ConfigError, match=rf"^{path}: cannot read the config file: Permission"):
        load_config(path)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yml"
    path.write_bytes(b"dyn_o_mite:\n  rack: caf\xe9\n")
    with pytest.raises(ConfigError, match=rf"^{path}: is not UTF-8 text \(invalid continuation"):
        load_config(path)


# ---------------------------------------------------------------------------
# Shipped configs and fixtures


SHIPPED = sorted((ROOT / "configs").glob("*.yml"))


def test_there_are_shipped_configs() -> None:
    assert ROOT / "configs" / "single.yml" in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=[path.name for path in SHIPPED])
def test_every_shipped_config_parses(path: Path) -> None:
    load_config(path)


def test_single_yml() -> None:
    config = load_config(ROOT / "configs" / "single.yml")
    assert config.warnings == ()
    assert config.listen == Address("127.0.0.1", 8102)
    assert config.dyn_listen == Address("127.0.0.1", 8101)
    assert config.stats_listen == Address("127.0.0.1", 22222)
    assert config.servers == (Server("127.0.0.1", 22122, 1),)
    assert config.tokens == (0,)
    assert (config.rack, config.datacenter) == ("rack1", "dc1")
    assert config.data_store == 0
    assert (config.read_consistency, config.write_consistency) == ("DC_ONE", "DC_ONE")
    assert config.dyn_seeds == ()
    assert config.name == "127.0.0.1:8101"


def test_dynomite_style_fixture() -> None:
    config = load_config(FIXTURES / "dynomite_style.yml")
    assert config.read_consistency == "DC_QUORUM"
    assert config.write_consistency == "DC_SAFE_QUORUM"
    assert config.requirepass == "s3cret"
    assert config.secure_server_option == "none"
    assert [seed.rack for seed in config.dyn_seeds] == ["us-east-1d", "us-east-1e"]
    warned = {warning.split(": ")[1] for warning in config.warnings}
    assert warned == {f"dyn_o_mite.{key}" for key in (
        "env", "distribution", "dyn_seed_provider", "dyn_read_timeout", "dyn_write_timeout",
        "dyn_connections", "backlog", "client_connections", "server_connections",
        "conn_msg_rate", "redis_requirepass", "recon_key_file", "recon_iv_file", "pem_key_file")}
    for warning in config.warnings:
        assert warning.startswith(f"{FIXTURES / 'dynomite_style.yml'}: dyn_o_mite.")


def test_ipv6_fixture() -> None:
    config = load_config(FIXTURES / "ipv6.yml")
    assert config.listen == Address("::1", 8102)
    assert config.servers == (Server("::1", 22122, 1),)
    assert config.stats_listen == Address("::", 22222)
    assert config.dyn_seeds == (Seed("2001:db8::12", 8101, "rack2", "dc1", (0, 2147483648)),)
    assert config.tokens == (1073741824, 3221225472)
    assert config.name == "[2001:db8::11]:8101"


def test_config_error_from_one_message() -> None:
    error = ConfigError("x.yml: something")
    assert str(error) == "x.yml: something"
    assert error.problems == ("x.yml: something",)


# ---------------------------------------------------------------------------
# Property tests


def address_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


hosts = st.one_of(
    st.sampled_from(["127.0.0.1", "localhost", "10.0.0.7", "node-1.example.com", "redis_1"]),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
names = st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True)
token_lists = st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4, unique=True)
texts = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)


@st.composite
def token_values(draw: st.DrawFn, tokens: list[int]) -> object:
    """The same tokens in one of the forms a config may use."""
    forms: list[object] = [",".join(map(str, tokens)), ", ".join(map(str, tokens)), list(tokens)]
    if len(tokens) == 1:
        forms += [tokens[0], str(tokens[0])]
    return draw(st.sampled_from(forms))


def maybe_quoted_int(values: st.SearchStrategy[int]) -> st.SearchStrategy[tuple[object, int]]:
    return values.flatmap(lambda n: st.sampled_from([(n, n), (str(n), n)]))


@st.composite
def valid_configs(draw: st.DrawFn) -> tuple[dict, dict]:
    """(settings under the root, expected Config field values)."""
    settings: dict[str, object] = {}
    expected: dict[str, object] = {}
    # Distinct ports, none of them a default listener port (those clash: tested above).
    listen_port, dyn_port, stats_port, redis_port = draw(st.lists(
        st.integers(1, 65535).filter(lambda port: port not in (8101, 22222)),
        min_size=4, max_size=4, unique=True))

    def address(key: str, port: int, required: bool = False) -> None:
        if required or draw(st.booleans()):
            host = draw(hosts)
            settings[key] = address_text(host, port)
            expected[key] = Address(host, port)

    address("listen", listen_port, required=True)
    seeds = draw(st.lists(st.tuples(hosts, st.integers(1, 65535), names, names, token_lists),
                          max_size=4, unique_by=lambda seed: (seed[0], seed[1])))
    address("dyn_listen", dyn_port, required=bool(seeds))
    address("stats_listen", stats_port)
    if seeds:
        settings["dyn_seeds"] = [
            f"{address_text(host, port)}:{rack}:{dc}:{','.join(map(str, tokens))}"
            for host, port, rack, dc, tokens in seeds]
        expected["dyn_seeds"] = tuple(
            Seed(host, port, rack, dc, tuple(tokens)) for host, port, rack, dc, tokens in seeds)
    redis_host, weight = draw(hosts), draw(st.integers(0, 100))
    settings["servers"] = [f"{address_text(redis_host, redis_port)}:{weight}"]
    expected["servers"] = (Server(redis_host, redis_port, weight),)
    if seeds or draw(st.booleans()):
        tokens = draw(token_lists)
        settings["tokens"] = draw(token_values(tokens))
        expected["tokens"] = tuple(tokens)

    optional: dict[str, st.SearchStrategy[tuple[object, object]]] = {
        "datacenter": names.map(lambda n: (n, n)),
        "rack": names.map(lambda n: (n, n)),
        "data_store": st.just((0, 0)),
        "read_consistency": st.sampled_from(CONSISTENCY_LEVELS).flatmap(
            lambda level: st.sampled_from([(level, level), (level.lower(), level)])),
        "write_consistency": st.sampled_from(CONSISTENCY_LEVELS).map(lambda level: (level, level)),
        "hash": st.sampled_from(HASH_NAMES).map(lambda n: (n, n)),
        "hash_tag": st.one_of(st.none(), st.text(min_size=2, max_size=2)).map(lambda t: (t, t)),
        "timeout": maybe_quoted_int(st.integers(1, 2**31 - 1)),
        "gos_interval": maybe_quoted_int(st.integers(1, 100_000)),
        "enable_gossip": st.booleans().map(lambda b: (b, b)),
        "secure_server_option": st.just(("none", "none")),
        "pem_key_file": texts.map(lambda t: (t, t)),
        "preconnect": st.booleans().map(lambda b: (b, b)),
        "auto_eject_hosts": st.booleans().flatmap(
            lambda b: st.sampled_from([(b, b), (str(b).lower(), b)])),
        "server_retry_timeout": maybe_quoted_int(st.integers(0, 10**6)),
        "server_failure_limit": maybe_quoted_int(st.integers(1, 100)),
        "datastore_connections": maybe_quoted_int(st.integers(1, 64)),
        "local_peer_connections": maybe_quoted_int(st.integers(1, 64)),
        "remote_peer_connections": maybe_quoted_int(st.integers(1, 64)),
        "stats_interval": maybe_quoted_int(st.integers(1, 10**6)),
        "mbuf_size": maybe_quoted_int(st.integers(32, 4096).map(lambda k: k * 16)),
        "max_msgs": maybe_quoted_int(st.integers(100_000, 1_000_000)),
        "requirepass": st.one_of(st.none(), texts).map(lambda t: (t, t)),
        "hints_dir": st.one_of(st.none(), texts).map(lambda t: (t, t)),
        "flush_enabled": st.booleans().map(lambda b: (b, b)),
    }
    for key, values in optional.items():
        if draw(st.booleans()):
            settings[key], expected[key] = draw(values)
    order = draw(st.permutations(list(settings)))
    return {key: settings[key] for key in order}, expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_configs(), st.sampled_from(["dyn_o_mite", "pool_a"]))
def test_valid_configs_round_trip(generated: tuple[dict, dict], root: str) -> None:
    settings_, expected = generated
    config = parse_config(yaml.safe_dump({root: settings_}), "node.yml")
    assert config.pool == root
    for key, value in expected.items():
        assert getattr(config, key) == value, key
    for key in set(DEFAULTS) - set(expected) - {"pool", "warnings"}:
        assert getattr(config, key) == DEFAULTS[key], key
    wildcard = any(config.dyn_listen.host == ipaddress.ip_address(w).compressed
                   for w in ("0.0.0.0", "::"))
    no_effect = [key for key in settings_ if key in config_module._NO_EFFECT]
    assert len(config.warnings) == (1 if config.dyn_seeds and wildcard else 0) + len(no_effect)
    # What a Config prints is what it parses back to.
    again = {"listen": str(config.listen), "dyn_listen": str(config.dyn_listen),
             "stats_listen": str(config.stats_listen),
             "servers": [str(server) for server in config.servers],
             "dyn_seeds": [str(seed) for seed in config.dyn_seeds],
             "tokens": ",".join(map(str, config.tokens))}
    reparsed = parse_config(yaml.safe_dump({root: {**settings_, **again}}), "node.yml")
    assert reparsed == config


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_garbage_text_only_raises_config_error(text: str) -> None:
    try:
        parse_config(text, "node.yml")
    except ConfigError as error:
        assert str(error).startswith("node.yml: ")


yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
              st.dates(), st.sampled_from(["127.0.0.1:8102", "0", "true", "{}", "DC_ONE",
                                           "h:1:r:d:0", "h:1:1", "[::1]:1", "murmur"])),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
keys = st.one_of(st.sampled_from(sorted({*config_module._SETTINGS, *config_module._IGNORED,
                                         *config_module._ALIASES, *config_module._FOREIGN})),
                 st.text(max_size=12))


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(keys, yaml_values, max_size=8), st.booleans())
def test_garbage_values_only_raise_config_error(settings_: dict, with_base: bool) -> None:
    document = {"dyn_o_mite": {**(BASE if with_base else {}), **settings_}}
    try:
        config = parse_config(yaml.safe_dump(document), "node.yml")
    except ConfigError as error:
        for problem in error.problems:
            assert problem.startswith("node.yml: "), problem
    else:
        assert isinstance(config, Config)


SINGLE_YML = (ROOT / "configs" / "single.yml").read_text()


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_mutated_config_only_raises_config_error(data: st.DataObject) -> None:
    text = SINGLE_YML
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 3))
        insert = data.draw(st.text(alphabet=":,[]{}-'\"# \n\t0123456789abz!&*", max_size=3))
        text = text[:at] + insert + text[at + cut:]
    try:
        parse_config(text, "node.yml")
    except ConfigError as error:
        assert str(error).startswith("node.yml: ")


# ---------------------------------------------------------------------------
# TLS on the client port: the certificate and its key go together, a CA needs both.
# (The files themselves are opened by dyno.tls: tests/test_tls_client.py.)


@pytest.mark.parametrize(("settings", "problem"), [
    ({"client_tls_cert": "node.pem"},
     "node.yml: dyn_o_mite.client_tls_key: missing; client_tls_cert is set, and TLS on the "
     "client port needs both the certificate and its key"),
    ({"client_tls_key": "node-key.pem"},
     "node.yml: dyn_o_mite.client_tls_cert: missing; client_tls_key is set, and TLS on the "
     "client port needs both the certificate and its key"),
    ({"client_tls_ca": "ca.pem"},
     "node.yml: dyn_o_mite.client_tls_ca: needs client_tls_cert and client_tls_key (the "
     "client port speaks TLS only when both are set)"),
])
def test_client_tls_keys_go_together(settings: dict, problem: str) -> None:
    assert key_problem(**settings) == problem


def test_client_tls_keys_together_parse_without_warnings() -> None:
    config = parse(client_tls_cert="n.pem", client_tls_key="n-key.pem", client_tls_ca="ca.pem")
    assert (config.client_tls_cert, config.client_tls_key, config.client_tls_ca) == (
        "n.pem", "n-key.pem", "ca.pem")
    assert config.warnings == ()
    assert parse().client_tls_cert is None


# -- range movements: auto_bootstrap and replace_node choose the tokens ------------------

_MOVING = """
dyn_o_mite:
  listen: 127.0.0.1:8102
  dyn_listen: 127.0.0.1:8101
  rack: r1
  datacenter: dc
  servers: [127.0.0.1:22122:1]
  dyn_seeds: ['127.0.0.1:9101:r1:dc:0', '127.0.0.1:9201:r1:dc:1000', '127.0.0.1:9301:r2:dc:0']
"""


def test_auto_bootstrap_without_tokens_splits_the_widest_range_of_the_rack():
    config = parse_config(_MOVING + "  auto_bootstrap: true\n")
    # r1 holds 0 and 1000: the widest range is (1000, 2**32], its middle taken
    assert config.tokens == ((1000 + 2**32) // 2,)


def test_replace_node_takes_the_dead_nodes_tokens_and_must_name_a_seed_of_its_rack():
    assert parse_config(_MOVING + "  replace_node: 127.0.0.1:9201\n").tokens == (1000,)
    with pytest.raises(ConfigError, match="not in dyn_seeds"):
        parse_config(_MOVING + "  replace_node: 127.0.0.1:9999\n")
    with pytest.raises(ConfigError, match="takes the dead node's rack"):
        parse_config(_MOVING + "  replace_node: 127.0.0.1:9301\n")
    with pytest.raises(ConfigError, match="needs enable_gossip"):
        parse_config(_MOVING + "  replace_node: 127.0.0.1:9201\n  enable_gossip: false\n")
    with pytest.raises(ConfigError, match="tokens missing|missing; required"):
        parse_config(_MOVING)
def test_workers_auto_is_the_cores_available() -> None:
    assert parse(workers="auto").workers == config_module.cores_available() >= 1
    assert parse(workers="AUTO").workers == config_module.cores_available()
