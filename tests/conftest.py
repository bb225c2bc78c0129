"""Fixtures shared by every test; the process machinery itself is in support.py.

- `redis_server`: a plain redis-server on a free port (a `support.RedisServer`).
- `dyno_node`: one dyno node in front of its own redis-server (a `support.NodeHandle`:
  .host .port .addr .redis_port .redis_addr .client() .redis_client() .stop() .kill()
  .start() .restart() .pause() .resume() .stop_redis() .kill_redis() .start_redis()
  .restart_redis() .pause_redis() .resume_redis() .log_tail()).
- `cluster_factory`: `cluster_factory(dcs=1, racks=3, nodes_per_rack=1, **config)` starts a
  local cluster in tmp_path and returns a `support.Cluster` (.nodes, .addrs, .redis_addrs,
  .node(name), .logs()).
All of them stop their processes at teardown, also when the test failed; when it failed,
the tails of the logs are printed (shown by pytest under "Captured stdout teardown").
A session-wide safety net stops anything the harness started that is still running.
"""

from __future__ import annotations

import signal
import warnings

import pytest

import support


def pytest_configure(config):
    # `timeout`, CI cancellation and `kill` send SIGTERM, which would end pytest without any
    # teardown and leave the servers of running tests behind (they run in their own sessions).
    # Treat it like Ctrl-C instead: fixtures tear down, the safety net runs.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

        def interrupt(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, interrupt)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # Lets fixtures see at teardown whether the test itself failed (to print logs).
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(request) -> bool:
    report = getattr(request.node, "rep_call", None)
    return report is None or report.failed


@pytest.fixture(scope="session", autouse=True)
def _stop_leftover_processes():
    yield
    left = support.TRACKER.stop_all()
    if left:
        warnings.warn(f"the test harness had to stop leftover processes: {', '.join(left)}", stacklevel=1)


def _require_dyno() -> None:
    reason = support.dyno_missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def redis_server(tmp_path, request):
    server = support.RedisServer(tmp_path / "redis")
    try:
        yield server.start()
    finally:
        if _failed(request):
            print(f"--- {server.log} ---\n{server.log_tail()}")
        server.stop()


@pytest.fixture
def cluster_factory(tmp_path, request):
    _require_dyno()
    started: list[support.Cluster] = []

    def make(dcs: int = 1, racks: int = 3, nodes_per_rack: int = 1, **kw) -> support.Cluster:
        cluster = support.start_cluster(tmp_path / f"cluster{len(started) + 1}", dcs, racks, nodes_per_rack, **kw)
        started.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in started:
            if _failed(request):
                print(cluster.logs())
            cluster.down()


@pytest.fixture
def dyno_node(cluster_factory) -> support.NodeHandle:
    return cluster_factory(racks=1)[0]
