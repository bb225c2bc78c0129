"""WAIT: how many other replicas (racks) acknowledged what the node sent them before
it, waiting up to the time-out for the number asked."""

from __future__ import annotations

import time

import pytest
import redis

integration = pytest.mark.integration


@integration
def test_wait_counts_the_other_racks_that_acknowledged(cluster_factory):
    cluster = cluster_factory(racks=3)
    client = cluster[0].client()
    assert client.set("w", "1")
    assert client.wait(2, 5000) == 2
    assert client.wait(5, 200) == 2  # no more replicas than there are: the time-out
    cluster[2].pause()  # a rack that does not answer cannot acknowledge
    try:
        assert client.set("w", "2")
        started = time.monotonic()
        assert client.wait(2, 300) == 1
        assert time.monotonic() - started >= 0.25
        assert client.wait(1, 1000) == 1
    finally:
        cluster[2].resume()
    with pytest.raises(redis.ResponseError, match="timeout is negative"):
        client.wait(1, -1)
    with pytest.raises(redis.ResponseError, match="not an integer"):
        client.execute_command("WAIT", "x", "0")


@integration
def test_wait_on_a_single_node_is_zero_at_once(cluster_factory):
    client = cluster_factory(racks=1)[0].client()
    assert client.set("w", "1") and client.wait(0, 0) == 0 and client.wait(1, 100) == 0
