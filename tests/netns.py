"""Hosts on one machine: a network namespace per host, a bridge per rack, links a test can cut.

What it owns: a small network (`Lab`) made only of namespaces it creates itself, and its
removal. Each host is a namespace with one interface (`eth0`, its own address) plugged into
its rack's bridge; every rack bridge has an uplink to a core bridge. All bridges live in one
"switch" namespace the lab made, so nothing is added to the machine's own namespace but the
namespace names and `/etc/netns/<namespace>/hosts` (the file `ip netns exec` bind-mounts
over /etc/hosts, so programs started on a host find the others by name).

Cutting a rack's uplink (`cut`) partitions that rack from the rest while its hosts still
reach each other, as a failed top-of-rack uplink would; `heal` plugs it back.

Rules it keeps: every name it creates starts with ``dynotest<pid>-`` so that runs never
collide and a run can remove what a crashed one left (`remove_stale`); `close()` removes
everything it made, whatever state it is in, and may be called twice. It starts no
long-lived process: the caller starts those with `wrap()` and stops them before `close()`
(a namespace outlives its deletion while a process holds it).

Python code of the test itself reaches the hosts through `Lab.call(fn)`: a thread that
entered the client host's namespace (setns(2) applies to the calling thread only), so its
sockets are created there. That thread sees the machine's /etc/hosts, so it uses addresses.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from dyno import localcluster

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_RUN = Path("/run/netns")  # where `ip netns add` keeps its namespaces
NETNS_ETC = Path("/etc/netns")  # per-namespace files `ip netns exec` bind-mounts over /etc
PREFIX = "dynotest"


class LabUnavailable(Exception):
    """This machine cannot make the lab (not root, no `ip`, namespaces not allowed)."""


def why_unavailable() -> str | None:
    """Why a Lab cannot be made here (None when it can, as far as can be told without trying)."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns add)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` on PATH"
    return None


def ip(*args: str) -> str:
    """Run `ip ARGS`; raise LabUnavailable with ip's own words when it fails."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise LabUnavailable(f"`ip {' '.join(args)}` failed: {result.stderr.strip() or result.returncode}")
    return result.stdout


def remove_stale() -> list[str]:
    """Remove the namespaces and /etc/netns dirs of lab runs whose process is gone."""
    removed = []
    names = set()
    for folder in (NETNS_RUN, NETNS_ETC):
        if folder.is_dir():
            names.update(p.name for p in folder.iterdir() if p.name.startswith(PREFIX))
    for name in sorted(names):
        match = re.fullmatch(rf"{PREFIX}(\d+)-.*", name)
        if match is None or localcluster.pid_alive(int(match.group(1))):
            continue
        if (NETNS_RUN / name).exists():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
        removed.append(name)
    return removed


@dataclasses.dataclass(frozen=True)
class Host:
    name: str        # host name, as the configs spell it
    rack: str        # the bridge it is plugged into ("" for a host on the core bridge)
    address: str     # its IPv4 address on eth0
    namespace: str
    port: str        # its veth end on the bridge, in the switch namespace


class Lab:
    """A switch namespace with a core bridge, rack bridges, and hosts plugged into them.

    ``subnet`` is the first three octets of the /24 every host is on (one L2 segment: the
    core bridge joins the racks); hosts get .10, .11, ... in the order they are added.
    """

    def __init__(self, subnet: str = "10.213.0"):
        reason = why_unavailable()
        if reason:
            raise LabUnavailable(reason)
        self.tag = f"{PREFIX}{os.getpid()}"
        self.subnet = subnet
        self.switch = f"{self.tag}-sw"
        self.namespaces: list[str] = []
        self.hosts: dict[str, Host] = {}
        self.racks: dict[str, str] = {}  # rack -> its bridge's uplink port (switch side)
        self._next_address = 10
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._client: Host | None = None
        self._closed = False
        self._add_namespace(self.switch)
        ip("-n", self.switch, "link", "add", "core", "type", "bridge")
        ip("-n", self.switch, "link", "set", "core", "up")

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def add_rack(self, rack: str) -> None:
        index = len(self.racks) + 1
        bridge, uplink, core_side = f"br{index}", f"up{index}", f"upc{index}"
        ip("-n", self.switch, "link", "add", bridge, "type", "bridge")
        ip("-n", self.switch, "link", "add", uplink, "type", "veth", "peer", "name", core_side)
        ip("-n", self.switch, "link", "set", uplink, "master", bridge)
        ip("-n", self.switch, "link", "set", core_side, "master", "core")
        for link in (bridge, uplink, core_side):
            ip("-n", self.switch, "link", "set", link, "up")
        self.racks[rack] = uplink

    def add_host(self, name: str, rack: str = "") -> Host:
        """A namespace with eth0 at the next address, on `rack`'s bridge (or the core one)."""
        index = len(self.hosts) + 1
        namespace = f"{self.tag}-h{index}"
        port = f"h{index}"
        address = f"{self.subnet}.{self._next_address}"
        self._next_address += 1
        self._add_namespace(namespace)
        bridge = "core" if not rack else f"br{list(self.racks).index(rack) + 1}"
        ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        ip("-n", self.switch, "link", "set", port, "master", bridge)
        ip("-n", self.switch, "link", "set", port, "up")
        ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        host = Host(name, rack, address, namespace, port)
        self.hosts[name] = host
        return host

    def write_hosts_files(self, resolver: str | None = None) -> None:
        """/etc/netns/<ns>/hosts for every host: localhost and every host's name. With
        `resolver`, also a resolv.conf naming that DNS server (2 s time-out, one attempt):
        an address where nothing answers makes every other name a slow failure, as a
        DNS server that is down does. Takes effect for programs started afterwards."""
        lines = ["127.0.0.1 localhost"] + [f"{h.address} {h.name}" for h in self.hosts.values()]
        for host in self.hosts.values():
            folder = NETNS_ETC / host.namespace
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hosts").write_text("\n".join(lines) + "\n")
            if resolver is not None:
                (folder / "resolv.conf").write_text(f"nameserver {resolver}\noptions timeout:2 attempts:1\n")

    def wrap(self, host: str, argv: Sequence[str]) -> list[str]:
        """`argv` run on `host` (its namespace, its /etc/hosts). `ip netns exec` execs the
        command in place, so the pid of the process started is the command's own."""
        return ["ip", "netns", "exec", self.hosts[host].namespace, *argv]

    def run(self, host: str, argv: Sequence[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.wrap(host, argv), capture_output=True, text=True, timeout=timeout, **kw)

    # --- the partition ---

    def cut(self, rack: str) -> None:
        ip("-n", self.switch, "link", "set", self.racks[rack], "down")

    def heal(self, rack: str) -> None:
        ip("-n", self.switch, "link", "set", self.racks[rack], "up")

    # --- the test's own sockets ---

    def use_client(self, host: str) -> None:
        """Run `call()`s from `host`'s namespace from now on."""
        if self._executor is not None:
            self._executor.shutdown()
        namespace = self.hosts[host].namespace
        self._client = self.hosts[host]
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"netns-{host}", initializer=_enter, initargs=(namespace,))

    def call(self, fn: Callable[..., T], *args, **kw) -> T:
        """fn(*args, **kw) in the client host's namespace (sockets made there live there)."""
        if self._executor is None:
            raise RuntimeError("Lab.use_client(host) first")
        return self._executor.submit(fn, *args, **kw).result()

    # --- removal ---

    def close(self) -> list[str]:
        """Remove every namespace and /etc/netns dir this lab made; return what failed."""
        if self._closed:
            return []
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown()
        problems = []
        for namespace in reversed(self.namespaces):
            result = subprocess.run(["ip", "netns", "del", namespace], capture_output=True, text=True)
            if result.returncode != 0:
                problems.append(f"ip netns del {namespace}: {result.stderr.strip()}")
            shutil.rmtree(NETNS_ETC / namespace, ignore_errors=True)
        with contextlib.suppress(OSError):
            NETNS_ETC.rmdir()  # only if empty: other users' entries stay
        return problems

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_libc = ctypes.CDLL(None, use_errno=True)


def _enter(namespace: str) -> None:
    """setns(2) the calling thread into the named network namespace."""
    fd = os.open(NETNS_RUN / namespace, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns into {namespace}: {os.strerror(error)}")
    finally:
        os.close(fd)
