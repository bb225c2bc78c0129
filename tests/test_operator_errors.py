"""Mistakes an operator makes, each answered with one line and a non-zero exit, with real
processes: a dyno command pointed at a node's client, peer or Redis port instead of its
admin port, and a node whose port another process holds."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import yaml

import support
from dyno import localcluster

integration = pytest.mark.integration

ADMIN_COMMANDS = (("status",), ("ring",), ("repair", "--no-wait"))


def dyno(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dyno", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env=localcluster._dyno_env())


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The error a command printed, after checking it is a single line and no traceback."""
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr and "ExceptionGroup" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


# --------------------------------------------------------------------------- the wrong --node port


@integration
@pytest.mark.parametrize("port", ["port", "dyn_port", "redis_port"])
@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=lambda c: c[0])
def test_an_admin_command_on_a_nodes_other_ports_is_one_line(dyno_node, port, command):
    address = f"{dyno_node.host}:{getattr(dyno_node, port)}"
    line = one_line_error(dyno(*command, "--node", address))
    assert line.startswith(f"Error: {address} does not answer HTTP (it ")
    assert line.endswith("is it a node's client or peer port? dyno wants a node's admin port (its stats_listen)")
    assert dyno_node.client().ping(), "the node's port was asked nothing it minds"
    # the right port works
    right = dyno(*command, "--node", f"{dyno_node.host}:{dyno_node.stats_port}")
    assert right.returncode == 0, right.stderr


@integration
def test_status_says_which_of_several_nodes_did_not_answer(dyno_node):
    client_port = f"{dyno_node.host}:{dyno_node.port}"
    nobody = f"127.0.0.1:{support.free_port()}"
    line = one_line_error(dyno("status", "--node", client_port, "--node", nobody))
    assert line.startswith("Error: no admin port answered (")
    assert f"{client_port} does not answer HTTP" in line and f"{nobody}: " in line
    assert line.endswith("give a node's admin address (its stats_listen) with --node HOST:PORT")


@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:http", "127.0.0.1:0", "127.0.0.1:70000", ":8102"])
def test_a_node_address_that_is_not_host_port_is_a_usage_error(command, address):
    done = dyno(*command, "--node", address)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"Invalid value for '--node': '{address}' is not HOST:PORT" in done.stderr


# --------------------------------------------------------------------------- a port already taken


def node_config(tmp_path, **ports: str) -> str:
    """A one-node config on free ports, with ``ports`` (config key -> address) instead."""
    plan = localcluster.plan(racks=1)[0]
    path = localcluster.write_configs([plan], tmp_path)[0]
    document = yaml.safe_load(path.read_text())
    document["dyn_o_mite"].update(ports)
    path.write_text(yaml.safe_dump(document))
    return path.name


@integration
@pytest.mark.parametrize("key", ["listen", "dyn_listen", "stats_listen"])
def test_a_node_whose_port_is_taken_says_which_key_in_one_line(tmp_path, key):
    with socket.create_server(("127.0.0.1", 0)) as holder:  # another process's port, in effect
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        config = node_config(tmp_path, **{key: address})
        line = one_line_error(dyno("start", "--config", config, cwd=tmp_path))
    assert line == f"Error: {config}: cannot start: {key} {address} is already in use (another process holds it)"


@integration
def test_a_node_listening_on_another_hosts_address_says_so(tmp_path):
    address = f"192.0.2.1:{support.free_port()}"  # TEST-NET-1: no host has it
    config = node_config(tmp_path, listen=address)
    line = one_line_error(dyno("start", "--config", config, cwd=tmp_path))
    assert line == f"Error: {config}: cannot start: listen {address} is not an address of this host"
