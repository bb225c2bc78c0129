"""Fuzzing the parts that read what others send: the RESP request parser, the peer
frame decoder and HELLO check, the gossip merge and the config loader. Whatever
bytes or values arrive, each either does its job or refuses with its own error
type - never another exception, never a hang (hypothesis' deadline), never a
buffer past its bound. (DYNO_FUZZ_EXAMPLES raises the example count for long runs.)"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import support
from dyno import peer, resp
from dyno.config import ConfigError, parse_config
from dyno.membership import GossipError, Member, Membership, State

EXAMPLES = int(os.environ.get("DYNO_FUZZ_EXAMPLES", "300"))
fuzz = settings(max_examples=EXAMPLES, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

# Values msgpack can carry, nested: what a hostile peer can put in a frame.
values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False)
    | st.binary(max_size=40) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8),
                                                              inner, max_size=6),
    max_leaves=30,
)
# Bytes that look like RESP often enough to get past the first byte.
resp_like = st.lists(st.sampled_from([b"*", b"$", b"\r\n", b"1", b"3", b"-1", b"0", b"GET", b"\r", b"\n",
                                      b"99999999999", b" ", b"\x00", b"+OK", b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n"]),
                     max_size=40).map(b"".join)


@fuzz
@given(data=st.one_of(st.binary(max_size=300), resp_like), cuts=st.lists(st.integers(0, 300), max_size=5))
def test_the_request_parser_takes_any_bytes_in_any_pieces(data, cuts):
    parser = resp.RequestParser()
    requests = []
    start = 0
    for cut in sorted(cuts) + [len(data)]:
        requests += parser.feed(data[start:cut])
        start = max(start, cut)
        if parser.error is not None:
            assert parser.error.startswith(b"-ERR Protocol error")
            break
    for argv in requests:
        assert isinstance(argv, list) and all(isinstance(arg, bytes) for arg in argv)
    # what it says is whole is exactly that
    assert resp.whole_commands(b"".join(map(resp.encode_command, requests)), len(requests)) or not requests


@fuzz
@given(frames=st.lists(values, max_size=5), noise=st.binary(max_size=60))
def test_the_peer_frame_decoder_and_hello_check_take_anything(frames, noise):
    unpacker = peer._unpacker()
    payload = b"".join(msgpack.packb(frame) for frame in frames) + noise
    try:
        decoded = peer._decode(unpacker, payload)
    except peer.PeerError:
        return
    for frame in decoded:
        reason = peer.check_hello("dyn_o_mite", frame)
        assert reason is None or isinstance(reason, str)
        assert peer._auth_field(frame, "nonce") is None or isinstance(peer._auth_field(frame, "nonce"), bytes)


@fuzz
@given(message=values, sender=st.text(max_size=30))
def test_gossip_merges_or_refuses_anything_and_changes_nothing_when_it_refuses(message, sender):
    me = Member("10.0.0.1:8101", "10.0.0.1", 8101, "dc1", "rack1", (0,), 1, 0, State.NORMAL)
    membership = Membership(me, (), gos_interval=1.0, rng=random.Random(0), now=0.0)
    before = membership.describe() if hasattr(membership, "describe") else None
    try:
        replies = membership.receive(sender, message, 1.0)
    except GossipError:
        if before is not None:
            assert membership.describe() == before
        return
    assert isinstance(replies, list)


@fuzz
@given(document=st.one_of(
    st.text(max_size=200),
    st.dictionaries(st.sampled_from(["dyn_o_mite", "pool"]),
                    st.dictionaries(st.sampled_from(["listen", "servers", "tokens", "dyn_seeds", "timeout",
                                                     "hints_dir", "read_consistency", "requirepass",
                                                     "secure_server_option", "max_hint_window", "versions_db",
                                                     "read_repair_chance", "unknown_key"]),
                                    values, max_size=6), max_size=2).flatmap(
        lambda d: st.sampled_from([repr(d), yaml.safe_dump(d)])),
))
def test_the_config_loader_refuses_what_it_cannot_read_in_one_line(document):
    try:
        parse_config(document, "node.yml")
    except ConfigError as error:
        assert str(error).startswith("node.yml")


@pytest.mark.integration
def test_random_bytes_at_every_port_of_a_live_cluster_cost_only_their_own_connections(cluster_factory):
    """Random bytes (seeded; DYNO_FUZZ_EXAMPLES connections per port) at the client, peer
    and admin ports of a running cluster while a normal client writes and reads: the
    normal client never sees an error, its data stays, and every node still serves."""
    cluster = cluster_factory(racks=3)
    rng = random.Random(int(os.environ.get("DYNO_TEST_SEED", "14")))
    client = cluster[0].client()
    written = {}
    for round_ in range(max(20, EXAMPLES // 10)):
        node = rng.choice(cluster.nodes)
        port = rng.choice([node.port, node.dyn_port, node.stats_port])
        garbage = rng.randbytes(rng.randrange(1, 2000))
        if rng.random() < 0.3:  # something that starts like the real thing
            garbage = rng.choice([b"*3\r\n$3\r\nSET\r\n", msgpack.packb([0, 0, {"cluster": "dyn_o_mite"}]),
                                  b"GET /info HTTP/1.1\r\n"]) + garbage
        try:
            with socket.create_connection((node.host, port), timeout=2) as sock:
                sock.sendall(garbage)
                sock.settimeout(0.2)
                try:
                    sock.recv(65536)
                except (TimeoutError, OSError):
                    pass
        except OSError:
            pass
        key = f"fuzzed:{round_}"
        assert client.set(key, round_)
        written[key] = str(round_).encode()
        assert client.get(key) == written[key]
    for node in cluster.nodes:  # (DC_ONE: the other racks get the last writes a moment later)
        reader = node.client()
        support.wait_for(lambda: reader.mget(list(written)) == list(written.values()), 10,
                         f"{node.name} to hold every write")


@pytest.mark.parametrize("target", ["resp", "peer", "config", "pattern"])
def test_coverage_guided_fuzzing_finds_no_crash(tmp_path, target):
    """atheris (libFuzzer) on the same readers, coverage-guided: DYNO_FUZZ_RUNS inputs
    each (longer by hand: scripts/fuzz_atheris.py TARGET -max_total_time=600)."""
    runs = int(os.environ.get("DYNO_FUZZ_RUNS", "10000"))
    script = Path(__file__).resolve().parent.parent / "scripts" / "fuzz_atheris.py"
    done = subprocess.run([sys.executable, str(script), target, f"-runs={runs}", "-seed=1"],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Done {runs} runs" in done.stderr
    assert not list(tmp_path.glob("crash-*"))
