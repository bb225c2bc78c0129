"""The ``dyno`` command line: run a node, check a config, run a local cluster."""

from __future__ import annotations

import sys

import click

from dyno import __version__, process
from dyno.config import ConfigError, load_config


def _load(path: str):
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    for warning in config.warnings:
        click.echo(f"warning: {warning}", err=True)
    return config


def _check_tls_files(config, path: str, doing: str) -> None:
    """Open the certificate files the config names (client_tls_*), so a missing or bad
    one is one line from check-config and from start, before anything runs."""
    from dyno import tls

    try:
        tls.client_port_context(config)
    except tls.TLSConfigError as exc:
        raise click.ClickException(f"{path}: {doing}{config.pool}.{exc}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dyno")
def main() -> None:
    """dyno: a Dynamo layer that turns single-server Redis into a sharded,
    replicated cluster. Configuration uses Dynomite's YAML format."""


@main.command()
@click.option(
    "--config", "-c", "config_path", required=True, type=click.Path(dir_okay=False),
    help="Node configuration (Dynomite YAML, root key dyn_o_mite).",
)
@click.option("--verbose", "-v", count=True, help="Log more (debug level).")
@click.option("--log-file", type=click.Path(dir_okay=False), help="Log here instead of stderr.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              default="info", show_default=True, help="Least severe level logged (-v: debug).")
@click.option("--join", "join", default=None, metavar="ADMINHOST:PORT",
              help="Join the running cluster a node's admin port describes: its nodes become this "
                   "node's dyn_seeds, and it joins with auto_bootstrap (its ranges streamed in).")
def start(config_path: str, verbose: int, log_file: str | None, log_level: str, join: str | None) -> None:
    """Run a node in the foreground until Ctrl-C or SIGTERM.

    The node serves RESP clients on `listen`, and keeps its data in the Redis
    named by `servers`.
    """
    from dyno.datastore import DatastoreAuthError
    from dyno.hints import HintStoreError
    from dyno.node import serve
    from dyno.tls import TLSConfigError
    from dyno.workers import WorkerError

    config = _load(config_path) if join is None else _joining(config_path, join)
    _check_tls_files(config, config_path, "cannot start: ")
    process.setup_logging(verbose, log_file, config.name, log_level)
    try:
        if config.workers > 1:  # a supervisor and its worker processes (dyno.workers)
            from dyno import workers

            process.run(workers.serve, config, {"verbose": verbose, "log_file": log_file, "level": log_level})
        else:
            process.run(serve, config)
    except OSError as exc:  # e.g. a port taken: ListenError names its key and address
        raise click.ClickException(f"{config_path}: cannot start: {exc}") from None
    except HintStoreError as exc:  # hints_dir cannot be used
        raise click.ClickException(f"{config_path}: cannot start: hints_dir: {exc}") from None
    except DatastoreAuthError as exc:  # datastore_password wrong, or missing
        raise click.ClickException(f"{config_path}: cannot start: {exc}") from None
    except TLSConfigError as exc:  # a peer_tls_* file that cannot be used
        raise click.ClickException(f"{config_path}: cannot start: {exc}") from None
    except WorkerError as exc:  # a worker could not bind its ports, open its hints ...
        raise click.ClickException(f"{config_path}: cannot start: {exc}") from None


def _check_files(path: str, config) -> None:
    """The files a config names must be usable too (a node would not start)."""
    from dyno.peer_tls import PeerTLS
    from dyno.tls import TLSConfigError

    try:
        PeerTLS.from_config(config)
    except TLSConfigError as exc:
        raise click.ClickException(f"{path}: {exc}") from None


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False))
def check_config(path: str) -> None:
    """Validate a configuration file (and the certificate files it names) and print what it sets."""
    config = _load(path)
    _check_files(path, config)
    _check_tls_files(config, path, "")
    click.echo(
        f"{path}: ok (node {config.name}, dc {config.datacenter}, rack {config.rack}, "
        f"listen {config.listen}{_tls_note(config)}, datastore {config.servers[0].host}:{config.servers[0].port})"
    )


def _tls_note(config) -> str:
    if config.client_tls_cert is None:
        return ""
    return " (TLS, client certificates required)" if config.client_tls_ca else " (TLS)"


@main.group()
def cluster() -> None:
    """Run a local multi-node cluster (each node with its own redis-server)."""


@cluster.command("up")
@click.option("--dir", "directory", default=".cluster", show_default=True,
              type=click.Path(file_okay=False), help="Where configs, logs and state go.")
@click.option("--dcs", default=1, show_default=True, type=click.IntRange(1, 9), help="Datacenters.")
@click.option("--racks", default=3, show_default=True, type=click.IntRange(1, 9), help="Racks per datacenter.")
@click.option("--nodes-per-rack", default=1, show_default=True, type=click.IntRange(1, 16), help="Nodes per rack.")
@click.option("--base-port", type=int, default=None, help="First port to use (default: free ports).")
@click.option("--read-consistency", default="DC_ONE", show_default=True, help="read_consistency of every node.")
@click.option("--write-consistency", default="DC_ONE", show_default=True, help="write_consistency of every node.")
@click.option("--hash-tag", default="{}", show_default=True,
              help="hash_tag of every node ('' for none): {user1}:a and {user1}:b live together.")
@click.option("--tls", is_flag=True,
              help="TLS on every peer link (secure_server_option all) and every client port, with "
                   "a test CA and certificates made in DIR/tls (clients: redis-cli --tls --cacert DIR/tls/ca.pem).")
@click.option("--client-tls", "client_tls", type=click.Path(file_okay=False),
              help="Clients speak TLS to every node: node N serves with CERTDIR/nodeN.pem "
                   "(make them with `dyno certs --out CERTDIR --nodes N`).")
def cluster_up(directory, dcs, racks, nodes_per_rack, base_port, read_consistency, write_consistency, hash_tag,
               tls, client_tls):
    """Start a local cluster and print how to reach it."""
    from pathlib import Path

    from dyno import localcluster

    extra = {"hash_tag": hash_tag} if hash_tag else {}
    if client_tls is not None:
        count = dcs * racks * nodes_per_rack
        missing = [name for i in range(1, count + 1) for name in (f"node{i}.pem", f"node{i}-key.pem")
                   if not (Path(client_tls) / name).is_file()]
        if missing:
            raise click.ClickException(f"--client-tls: {client_tls} has no {missing[0]}; make the "
                                       f"certificates first: dyno certs --out {client_tls} --nodes {count}")
        extra["client_tls"] = client_tls
    try:
        state = localcluster.up(
            directory, dcs=dcs, racks=racks, nodes_per_rack=nodes_per_rack, base_port=base_port,
            read_consistency=read_consistency.upper(), write_consistency=write_consistency.upper(), tls=tls,
            **extra,
        )
    except localcluster.ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(localcluster.describe(state))


_DIR_OPTION = click.option("--dir", "directory", default=".cluster", show_default=True,
                           type=click.Path(file_okay=False), help="The cluster's directory (dyno cluster up --dir).")
_NODE_NAME = click.option("--node", "name", required=True, metavar="NAME",
                          help="The node's name in the cluster (node1, node2, ...).")
_KEEP_REDIS = click.option("--keep-redis", is_flag=True,
                           help="Leave the node's Redis running: stop only its dyno process.")


@cluster.command("down")
@_DIR_OPTION
def cluster_down(directory):
    """Stop every process of the local cluster in DIR, whoever started it (a node
    restarted by hand with `dyno start --config nodeN.yml` too). Its data is discarded."""
    from dyno import localcluster

    try:
        stopped = localcluster.stop_all(directory)
    except localcluster.ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    others = [str(p) for p in stopped if not p.recorded]
    click.echo(f"stopped {len(stopped)} process(es)" + (f", among them {', '.join(others)}" if others else ""))


def _stopped_line(name: str, stopped, state) -> str:
    if not stopped:
        return f"{name}: was not running"
    line = f"{name}: stopped {', '.join(str(p).removeprefix(name + ' ') for p in stopped)}"
    if any(p.kind != "dyno" for p in stopped):
        line += f"; its Redis saved its data to {state.node(name).redis_dir / 'dump.rdb'}"
    return line


def _started_line(name: str, started: list[str], state) -> str:
    node = state.node(name)
    what = f"started {', '.join(started)}" if started else "already running"
    return f"{name}: {what}; redis-cli -p {node.port}, stats http://{node.host}:{node.stats_port}/info"


@cluster.command("stop")
@_DIR_OPTION
@_NODE_NAME
@_KEEP_REDIS
def cluster_stop(directory, name, keep_redis):
    """Stop one node: its dyno process (whoever started it) and its Redis, which saves
    its data first so that `dyno cluster start` brings the node back with it."""
    from dyno import localcluster

    try:
        stopped = localcluster.stop_one(directory, name, keep_redis)
        click.echo(_stopped_line(name, stopped, localcluster.load(directory)))
    except localcluster.ClusterError as exc:
        raise click.ClickException(str(exc)) from None


@cluster.command("start")
@_DIR_OPTION
@_NODE_NAME
def cluster_start(directory, name):
    """Start one node of the cluster again (what of it is not running: its Redis, with the
    data it saved when stopped, then its dyno process, with its config)."""
    from dyno import localcluster

    try:
        started = localcluster.start_one(directory, name)
        click.echo(_started_line(name, started, localcluster.load(directory)))
    except localcluster.ClusterError as exc:
        raise click.ClickException(str(exc)) from None


@cluster.command("restart")
@_DIR_OPTION
@_NODE_NAME
@_KEEP_REDIS
def cluster_restart(directory, name, keep_redis):
    """Stop one node and start it again (dyno cluster stop, then start): it keeps its data,
    and picks up changes made to its config file."""
    from dyno import localcluster

    try:
        stopped, started = localcluster.restart_one(directory, name, keep_redis)
        state = localcluster.load(directory)
        click.echo(_stopped_line(name, stopped, state))
        click.echo(_started_line(name, started, state))
    except localcluster.ClusterError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--out", "directory", required=True, type=click.Path(file_okay=False),
              help="Directory for the CA, node and client certificates (made if missing).")
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 1000),
              help="Node certificates to make (node1.pem ...).")
@click.option("--host", "hosts", multiple=True,
              help="A host name or address the node certificates are valid for (repeat; default: "
                   "localhost, 127.0.0.1, ::1).")
@click.option("--days", default=365, show_default=True, type=click.IntRange(1, 36500), help="Validity.")
@click.option("--force", is_flag=True, help="Replace certificates already in --out.")
def certs(directory: str, nodes: int, hosts: tuple[str, ...], days: int, force: bool) -> None:
    """Make a test CA, node certificates and a client certificate (to try TLS locally;
    bring your own PKI's in production)."""
    from dyno import certs as certificates

    try:
        paths = certificates.write_bundle(directory, nodes, hosts or certificates.DEFAULT_HOSTS,
                                          days=days, force=force)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {len(paths)} files to {directory}: ca.pem (the CA to trust), "
               f"node1.pem..node{nodes}.pem, client.pem, and their -key.pem files (mode 0600)")


# -- the operator's view (admin ports of running nodes) ---------------------------------

_NODE_HELP = "A node's admin address (its stats_listen, HOST:PORT)."


def _admin_addresses(ctx, param, value):
    """--node values must be HOST:PORT (a usage error otherwise, before anything is asked)."""
    from dyno import status as view

    try:
        if value is None or isinstance(value, str):
            return value if value is None else view.admin_address(value)
        return tuple(view.admin_address(v) for v in value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _print_json(value) -> None:
    import json

    click.echo(json.dumps(value, indent=2))


@main.command()
@click.option("--node", "nodes", multiple=True, metavar="HOST:PORT", callback=_admin_addresses,
              help=_NODE_HELP + " Default 127.0.0.1:22222. Repeat it to reach nodes whose "
              "admin port the first one does not know.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def status(nodes: tuple[str, ...], as_json: bool) -> None:
    """The cluster as one node sees it: DC, rack, node, tokens, state, up/down,
    keys, ops/s and p99 latency of each node."""
    from dyno import status as view

    try:
        result = view.gather_status(nodes or (view.DEFAULT_ADMIN,))
    except view.StatusError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _print_json(result)
    else:
        view.render_status(result, view.console())


@main.command()
@click.option("--node", default=None, metavar="HOST:PORT", callback=_admin_addresses,
              help=_NODE_HELP + " Default 127.0.0.1:22222.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--add", "add", multiple=True, metavar="[DC/]RACK",
              help="Plan a node joining this rack (tokens as auto_bootstrap picks them); repeatable.")
@click.option("--remove", "remove", multiple=True, metavar="NODE",
              help="Plan the decommission of this node (host:port); repeatable.")
def ring(node: str | None, as_json: bool, add: tuple[str, ...], remove: tuple[str, ...]) -> None:
    """Token ownership: each node's share of its rack's ring, and a warning when a
    rack is uneven; with moves in flight (joins, decommissions, replacements) or
    planned (--add, --remove), the shares after them too."""
    from dyno import status as view

    try:
        _, describe, _ = view.describe_from([node or view.DEFAULT_ADMIN])
        result = view.ring_shares(describe, add, remove)
    except view.StatusError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _print_json(result)
    else:
        view.render_ring(result, view.console())


@main.command()
@click.option("--nodes-per-rack", required=True, type=click.IntRange(1, 2**32), help="Nodes in each rack.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def tokens(nodes_per_rack: int, as_json: bool) -> None:
    """Evenly spaced tokens for the nodes of a new cluster's racks."""
    from dyno import status as view

    plan = view.tokens_plan(nodes_per_rack)
    if as_json:
        _print_json(plan)
    else:
        view.render_tokens(plan, view.console())


@main.command()
@click.option("--node", default=None, metavar="HOST:PORT", callback=_admin_addresses,
              help=_NODE_HELP + " The node whose token ranges are repaired. Default 127.0.0.1:22222.")
@click.option("--rack", default=None, metavar="RACK",
              help="Copy only to the replicas in this rack of the node's datacenter; the other "
              "racks' replicas are read as sources. Default: every rack.")
@click.option("--range", "token_range", default=None, metavar="A:B",
              help="Only keys whose token t is in A < t <= B (wrapping past 4294967295 when "
              "A > B), within the node's own ranges. Default: all of them.")
@click.option("--rate", default=None, type=click.FloatRange(min=0), metavar="KEYS",
              help="Compare at most this many keys per second (0: no limit). Default: no limit.")
@click.option("--no-wait", is_flag=True, help="Start the repair and return; `dyno status` shows it.")
def repair(node: str | None, rack: str | None, token_range: str | None, rate: float | None,
           no_wait: bool) -> None:
    """Anti-entropy repair of a node's token ranges.

    The node compares the replicas of its ranges (their owners in every rack of its
    datacenter) key by key, and copies the newest version of each key, with its
    expiry, over stale or missing copies; a key deleted more recently than another
    replica's copy was written is deleted there. A write that lands during the
    repair is never overwritten. Exit status: 0 when the repair ended without
    errors, 1 otherwise.
    """
    from dyno import status as view

    address = node or view.DEFAULT_ADMIN
    try:
        started = view.start_repair(address, rack, token_range, rate)
    except view.StatusError as exc:
        raise click.ClickException(str(exc)) from None
    job = started.get("id")
    if no_wait:
        click.echo(f"repair {job} of {started.get('node')} started (replicas: "
                   f"{', '.join(started.get('replicas') or [])}); `dyno status --node {address}` "
                   "shows its progress")
        return
    try:
        progress = _watch_repair(view, address, job)
    except view.StatusError as exc:
        raise click.ClickException(f"{exc}; repair {job} may still be running on the node") from None
    except KeyboardInterrupt:
        click.echo(f"\nstopped watching; repair {job} goes on on the node "
                   f"(`dyno status --node {address}` shows it)", err=True)
        sys.exit(130)
    click.echo(view.repair_summary(progress))
    sys.exit(0 if view.repair_clean(progress) else 1)


POLL_INTERVAL = 0.5  # seconds between two GET /repair while watching


def _stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def _watch_repair(view, address: str, job) -> dict:
    """Poll the node's repair ``job`` until it ends, drawing its progress on stderr:
    one line redrawn on a terminal, a line per tenth done otherwise."""
    import shutil
    import time

    tty = _stderr_is_tty()
    width = min(view.WIDTH, shutil.get_terminal_size((view.WIDTH, 24)).columns) - 1
    last_step = None
    while True:
        progress = view.repair_progress(address)
        if not isinstance(progress, dict) or progress.get("id") != job:
            raise view.StatusError(f"{address} no longer reports repair {job} (was the node restarted?)")
        line = view.repair_line(progress, width)
        if tty:
            click.echo("\r" + line.ljust(width), err=True, nl=not progress.get("running"))
        else:
            fraction = view.repair_fraction(progress)
            step = (progress.get("phase"), None if fraction is None else int(fraction * 10))
            if step != last_step:
                click.echo(line, err=True)
                last_step = step
        if not progress.get("running"):
            return progress
        time.sleep(POLL_INTERVAL)


# -- range movements (dyno.streaming): decommission, cluster add-node / remove-node ----------


def _movement_printer(view):
    """A ``progress(status)`` callback drawing a move's progress bar on stderr: one line
    redrawn on a terminal, a line per state change otherwise."""
    import shutil

    tty = _stderr_is_tty()
    width = min(view.WIDTH, shutil.get_terminal_size((view.WIDTH, 24)).columns) - 1
    last = [None]

    def progress(status: dict) -> None:
        line = view.movement_line(status, width)
        if tty:
            click.echo("\r" + line.ljust(width), err=True, nl=status.get("state") in ("done", "left"))
        elif status.get("state") != last[0]:
            click.echo(line, err=True)
            last[0] = status.get("state")

    return progress


@main.command()
@click.option("--node", required=True, metavar="HOST:PORT",
              help=_NODE_HELP + " The node to take out of the ring.")
@click.option("--timeout", default=3600.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds to wait for the streaming to end.")
def decommission(node: str, timeout: float) -> None:
    """Take a node out of the ring: its ranges stream to their next owners in its
    rack (writes reach both meanwhile), then it leaves the ring and every node's
    view, and may be stopped. Shows the progress; exit status 0 once it left."""
    from dyno import status as view

    try:
        last = view.decommission(node, progress=_movement_printer(view), timeout=timeout)
    except view.StatusError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo(f"\nstopped watching; the decommission goes on on the node "
                   f"(curl http://{node}/movement shows it)", err=True)
        sys.exit(130)
    transfer = last.get("transfer") or {}
    click.echo(f"{node} left the ring: {transfer.get('copied', 0):,} keys "
               f"({transfer.get('bytes', 0) / 1e6:.1f} MB) streamed in {transfer.get('elapsed', 0):.1f} s; "
               "it can be stopped")


@cluster.command("add-node")
@click.option("--dir", "directory", default=".cluster", show_default=True, type=click.Path(file_okay=False))
@click.option("--rack", default=None, help="The rack it joins (required unless --replace).")
@click.option("--dc", default=None, help="Its datacenter (default: the rack's).")
@click.option("--replace", default=None, metavar="NODE",
              help="Take the place (tokens, data) of this dead node of the cluster (node3).")
@click.option("--no-wait", is_flag=True, help="Return once it runs; its join goes on.")
def cluster_add_node(directory, rack, dc, replace, no_wait):
    """Add a node (and its Redis) to a running local cluster: it takes tokens
    splitting its rack's widest range and streams that range in (or, with --replace,
    a dead node's tokens and data), then serves it."""
    from dyno import localcluster
    from dyno import status as view

    if rack is None and replace is None:
        raise click.ClickException("give --rack (or --replace NODE)")
    try:
        node = localcluster.add_node(directory, rack, dc, replace=replace)
    except localcluster.ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{node.name} ({node.dc}/{node.rack}, tokens {localcluster.format_tokens(node.tokens)}) started: "
               f"redis-cli -p {node.port}")
    if no_wait:
        return
    import time

    address = f"{node.host}:{node.stats_port}"
    progress = _movement_printer(view)
    while True:
        try:
            status = view.movement_progress(address)
        except view.StatusError as exc:
            raise click.ClickException(str(exc)) from None
        progress(status)
        if status.get("state") == "done":
            break
        time.sleep(POLL_INTERVAL)
    click.echo(f"{node.name} owns its ranges")


@cluster.command("remove-node")
@click.option("--dir", "directory", default=".cluster", show_default=True, type=click.Path(file_okay=False))
@click.option("--node", "name", required=True, metavar="NODE", help="The node to remove (node4).")
def cluster_remove_node(directory, name):
    """Decommission a node of a local cluster (its ranges stream to the others),
    then stop it and its Redis."""
    from dyno import localcluster
    from dyno import status as view

    try:
        localcluster.remove_node(directory, name, progress=_movement_printer(view))
    except localcluster.ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{name} left the ring and is stopped")


def _joining(config_path: str, seed_admin: str):
    """``dyno start --join``: the config at ``config_path`` with the nodes the seed's
    admin port describes as dyn_seeds, and auto_bootstrap (dyno.streaming)."""
    import yaml

    from dyno import status as view
    from dyno.config import ConfigError, parse_config

    config = _load(config_path)
    try:
        seeds = view.seed_entries(seed_admin, leaving_out=config.name)
    except view.StatusError as exc:
        raise click.ClickException(f"--join: {exc}") from None
    from dyno.config import _StrictLoader  # the loader the config was read with (YAML 1.1 quirks off)

    with open(config_path) as file:
        document = yaml.load(file, Loader=_StrictLoader)
    root = next(iter(document))
    document[root]["dyn_seeds"] = seeds
    document[root]["auto_bootstrap"] = True
    try:
        return parse_config(yaml.safe_dump(document, sort_keys=False), config_path)
    except ConfigError as exc:
        raise click.ClickException(f"--join: {exc}") from None
