"""What ``dyno status``, ``dyno ring``, ``dyno tokens`` and ``dyno repair`` print.

Each command is split in two: a function that gathers plain data (dicts and lists,
which ``--json`` prints as they are) and a function that renders that data as a
rich table fitting 80 columns. Gathering talks to the admin port of running nodes
(HTTP, ``dyno.admin``) with a short time-out per request: a dead node is reported
as such, never waited for. Nothing here runs inside a node.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from rich import box
from rich.console import Console
from rich.table import Table

from dyno.ring import MAX_TOKEN, Ring, RingError, RingNode, evenly_spaced_tokens

DEFAULT_ADMIN = "127.0.0.1:22222"
TIMEOUT = 2.0          # seconds per HTTP request
UNEVEN = 1.2           # a rack is uneven when its largest share / smallest share exceeds this
WIDTH = 80


class StatusError(Exception):
    """No node could be asked; the message says which and why."""


def console(width: int | None = None) -> Console:
    """A console no wider than 80 columns (narrower if the terminal is)."""
    if width is None:
        width = min(WIDTH, shutil.get_terminal_size((WIDTH, 24)).columns)
    return Console(width=width, highlight=False, soft_wrap=False)


# -- talking to admin ports ----------------------------------------------------------


class NotHTTP(OSError):
    """What answered is not an HTTP server (a client or peer port, say)."""


def fetch(address: str, path: str, timeout: float = TIMEOUT, method: str = "GET") -> bytes:
    """``method`` ``path`` at the admin port at ``address`` (HOST:PORT); raises
    OSError (URLError and NotHTTP are ones) when the node cannot be reached, does
    not speak HTTP, or answers an error."""
    headers = {}
    token = os.environ.get("DYNO_ADMIN_TOKEN")
    if method == "POST" and token:  # the node's admin_token, for what changes it
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"http://{address}{path}", method=method,
                                     data=b"" if method == "POST" else None, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except http.client.InvalidURL:  # not HOST:PORT (the CLI checks before asking)
        raise
    except http.client.RemoteDisconnected:  # Redis closes on what looks like HTTP
        raise NotHTTP(_not_http(address, "it closed the connection")) from None
    except http.client.HTTPException as error:  # BadStatusLine: a RESP port's -ERR, say
        raise NotHTTP(_not_http(address, f"it answered {_printable(str(error))!r}")) from None
    except ConnectionResetError:  # a port that resets what it cannot parse
        raise NotHTTP(_not_http(address, "it reset the connection")) from None


def _not_http(address: str, what: str) -> str:
    return (f"{address} does not answer HTTP ({what}): is it a node's client or peer port? "
            "dyno wants a node's admin port (its stats_listen)")


def _printable(text: str, limit: int = 40) -> str:
    """What a port answered, as a person can read it in one line: printable ASCII
    (a peer port's binary frame keeps its words), at most ``limit`` characters."""
    kept = "".join(c if " " <= c <= "~" else " " for c in text)
    return " ".join(kept.split())[:limit]


def admin_address(text: str) -> str:
    """``text`` if it is HOST:PORT (an IPv6 host in brackets) with a port in 1..65535;
    ValueError saying what is expected otherwise."""
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (a node's admin address, its stats_listen, "
                         f"e.g. {DEFAULT_ADMIN})")
    return text


def fetch_json(address: str, path: str, timeout: float = TIMEOUT) -> dict:
    return json.loads(fetch(address, path, timeout))


def _problem(address: str, error: Exception) -> str:
    """One line naming ``address`` and what went wrong asking it."""
    if isinstance(error, NotHTTP):
        return str(error)  # names the address and the port it wants
    if isinstance(error, ValueError) and not isinstance(error, http.client.InvalidURL):
        return (f"{address} answered something that is not JSON: is it a dyno node's admin "
                "port (its stats_listen)?")
    return f"{address}: {_reason(error)}"


def _reason(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        try:  # the admin port's first line says why
            body = error.read().decode("utf-8", "replace").strip().splitlines()
        except OSError:
            body = []
        return body[0] if body else str(error)
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error)


def _reachable_address(admin: str | None, peer_host: str) -> str | None:
    """A node's advertised admin address, with a wildcard host (0.0.0.0, ::)
    replaced by the host its peers reach it on (its dyn_listen host): a node whose
    admin port listens on every address is reachable where its peer port is."""
    if not admin:
        return None
    host, _, port = admin.rpartition(":")
    if host in ("0.0.0.0", "[::]", "::", ""):
        host = f"[{peer_host}]" if ":" in peer_host else peer_host
    return f"{host}:{port}"


def describe_from(addresses: Sequence[str]) -> tuple[str, dict, list[str]]:
    """The first node of ``addresses`` that answers /cluster_describe: (its address,
    the description, the warnings about those that did not)."""
    warnings = []
    for address in addresses:
        try:
            return address, fetch_json(address, "/cluster_describe"), warnings
        except (OSError, ValueError) as error:
            warnings.append(_problem(address, error))
    if len(warnings) == 1 and warnings[0].endswith("(its stats_listen)"):
        raise StatusError(warnings[0])  # it says what to give already
    tried = "; ".join(warnings)
    raise StatusError(
        f"no admin port answered ({tried}); give a node's admin address (its stats_listen) "
        "with --node HOST:PORT"
    )


def _servers(describe: dict):
    for dc in describe.get("dcs", []):
        for rack in dc.get("racks", []):
            for server in rack.get("servers", []):
                yield dc["name"], rack["name"], server


# -- dyno status ---------------------------------------------------------------------


def gather_status(addresses: Sequence[str]) -> dict:
    """The cluster as the first reachable node of ``addresses`` describes it, with
    each node's own /info where its admin port is known (advertised, or one of
    ``addresses``) and answers. Up/down is the describing node's view."""
    source, describe, warnings = describe_from(addresses)
    infos: dict[str, dict] = {}  # node name -> its /info
    for address in dict.fromkeys([source, *addresses]):
        try:
            info = fetch_json(address, "/info")
        except (OSError, ValueError) as error:
            if address != source:
                warnings.append(_problem(address, error))
            continue
        infos.setdefault(info.get("node", address), {**info, "admin": address})
    viewpoint = next((name for name, info in infos.items() if info["admin"] == source), None)
    rows = []
    for dc, rack, server in _servers(describe):
        name = server["name"]
        info = infos.get(name)
        admin = _reachable_address(server.get("admin"), server.get("host", ""))
        if info is None and admin and server.get("up", True):
            try:
                answer = fetch_json(admin, "/info", timeout=1.0)
            except (OSError, ValueError) as error:
                warnings.append(f"{name} (admin {admin}): {_reason(error)}")
            else:
                # A loopback admin address advertised to other hosts reaches whatever
                # node listens there locally: take figures only from the node itself.
                if answer.get("node", name) == name:
                    info = infos[name] = {**answer, "admin": admin}
                else:
                    warnings.append(f"{name} (admin {admin}): answered as {answer.get('node')}; its "
                                    "stats_listen is not an address other hosts can reach")
        up = bool(server.get("up", True)) or name == viewpoint
        rows.append({
            "dc": dc, "rack": rack, "node": name,
            "tokens": server.get("tokens", [server.get("token")]),
            "state": (server["state"] if server.get("state") in _MOVE_STATES
                      else info["state"] if info else server.get("state", "UNKNOWN")),
            "up": up,
            "keys": info.get("keys") if info else None,
            "ops_per_sec": info.get("ops_per_sec") if info else None,
            "p99_ms": round(info["latency_99th"] / 1000, 3) if info and "latency_99th" in info else None,
            "hints": _hints(info),
            "admin": info["admin"] if info else admin,
            # workers: N (dyno.workers): per worker, its clients and requests
            "workers": info.get("workers") if info else None,
        })
    repairs = []
    for row in rows:
        if row["admin"] and row["up"] and row["keys"] is not None:
            try:
                progress = fetch_json(row["admin"], "/repair", timeout=1.0)
            except (OSError, ValueError):
                continue  # a node without /repair, or one that stopped answering
            if isinstance(progress, dict) and progress.get("running"):
                repairs.append(progress)
    return {"source": source, "viewpoint": viewpoint, "nodes": rows, "warnings": warnings,
            "repairs": repairs, "movements": _movements(rows)}


_MOVE_STATES = ("JOINING", "REPLACING", "DECOMMISSIONING", "LEFT")


def _movements(rows: list[dict]) -> list[dict]:
    """The range movements running on the nodes (GET /movement), each with its node."""
    movements = []
    for row in rows:
        if row["admin"] and row["up"] and row["keys"] is not None:
            try:
                progress = fetch_json(row["admin"], "/movement", timeout=1.0)
            except (OSError, ValueError):
                continue
            if isinstance(progress, dict) and progress.get("state") in ("settling", "streaming", "waiting"):
                movements.append({**progress, "node": row["node"]})
    return movements


def _hints(info: dict | None) -> dict[str, int] | None:
    """Hints the node holds, per peer (only peers it holds some for), from its /info."""
    if not info:
        return None
    for value in info.values():
        if isinstance(value, dict) and isinstance(value.get("hints"), dict):
            return {peer: counts.get("pending", 0) for peer, counts in value["hints"].items()
                    if counts.get("pending")}
    return None


def _worker_line(worker: dict) -> str:
    restarted = f", started again {worker['restarts']}x" if worker.get("restarts") else ""
    state = "" if worker.get("up") else " DOWN"
    return (f"#{worker.get('index')}{state} {worker.get('client_connections', 0):,} clients, "
            f"{worker.get('client_requests', 0):,} requests{restarted}")


def _unknown(value, fmt="{}") -> str:
    return "?" if value is None else fmt.format(value)


def render_status(status: dict, out: Console) -> None:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1),
                  title=f"dyno cluster, as {status['viewpoint'] or status['source']} sees it")
    table.add_column("DC/rack", overflow="fold")
    table.add_column("node", overflow="fold", min_width=15)
    table.add_column("tokens", overflow="fold", max_width=12)
    table.add_column("state", overflow="fold")
    table.add_column("up", no_wrap=True)
    table.add_column("keys", justify="right", no_wrap=True)
    table.add_column("ops/s", justify="right", no_wrap=True)
    table.add_column("p99 ms", justify="right", no_wrap=True)
    table.add_column("hints", justify="right", no_wrap=True)
    for row in status["nodes"]:
        up = "[green]UP[/]" if row["up"] else "[bold red]DOWN[/]"
        down = not row["up"]
        table.add_row(
            f"{row['dc']}/{row['rack']}", row["node"], ",".join(map(str, row["tokens"])),
            row["state"], up,
            "-" if down else _unknown(row["keys"]),
            "-" if down else _unknown(row["ops_per_sec"], "{:.0f}"),
            "-" if down else _unknown(row["p99_ms"], "{:.2f}"),
            "-" if down or row.get("hints") is None else f"{sum(row['hints'].values()):,}",
        )
    out.print(table)
    for row in status["nodes"]:  # workers: N: a node's workers, when one is down or was started again
        if row.get("workers") and row["up"] and any(not w.get("up") or w.get("restarts") for w in row["workers"]):
            up = sum(bool(w.get("up")) for w in row["workers"])
            out.print(f"workers: {row['node']}: {up}/{len(row['workers'])} up: "
                      + "; ".join(_worker_line(w) for w in row["workers"]),
                      highlight=False, markup=False)
    for row in status["nodes"]:
        for peer, pending in sorted((row.get("hints") or {}).items()):
            out.print(f"hints: {row['node']} holds {pending:,} write(s) for {peer}, replayed once it is up",
                      highlight=False, markup=False)
    for progress in status.get("repairs", ()):
        out.print(repair_line(progress, width=out.width), highlight=False, markup=False)
    for progress in status.get("movements", ()):
        out.print(f"{progress['node']}: " + movement_line(progress, width=out.width - len(progress["node"]) - 2),
                  highlight=False, markup=False)
    for warning in status["warnings"]:
        out.print(f"warning: {warning}", style="yellow")
    if any(row["keys"] is None and row["up"] for row in status["nodes"]):
        out.print("?: that node's admin port is not known to the node asked (until gossip "
                  "carries it): add --node HOST:PORT for it")


# -- dyno repair ---------------------------------------------------------------------


def _admin_call(address: str, path: str, method: str = "GET"):
    """The JSON an admin path answers; StatusError with one line saying why not."""
    try:
        return json.loads(fetch(address, path, method=method))
    except (OSError, ValueError) as error:
        if isinstance(error, (urllib.error.HTTPError, NotHTTP)):
            raise StatusError(_problem(address, error)) from None
        if isinstance(error, ValueError) and not isinstance(error, http.client.InvalidURL):
            raise StatusError(f"{address}{path} answered something that is not JSON: is "
                              "it a dyno node's admin port (its stats_listen)?") from None
        raise StatusError(f"cannot reach the admin port at {address}: {_reason(error)}") from None


def start_repair(address: str, rack: str | None = None, token_range: str | None = None,
                 rate: float | None = None) -> dict:
    """POST /repair on the node at ``address``: the started job's progress."""
    from urllib.parse import urlencode

    query = urlencode({name: value for name, value in
                       (("rack", rack), ("range", token_range), ("rate", rate)) if value is not None})
    answer = _admin_call(address, "/repair" + (f"?{query}" if query else ""), "POST")
    if not isinstance(answer, dict) or not isinstance(answer.get("started"), dict):
        raise StatusError(f"{address}: POST /repair answered {str(answer)[:60]!r}, not a started repair")
    return answer["started"]


def repair_progress(address: str) -> dict | None:
    """GET /repair: the node's current or last repair (None if none ran)."""
    answer = _admin_call(address, "/repair")
    if answer is not None and not isinstance(answer, dict):
        raise StatusError(f"{address}: GET /repair answered {str(answer)[:60]!r}")
    return answer


def _count(value) -> str:
    return "?" if value is None else f"{value:,}"


def _duration(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def repair_fraction(progress: dict) -> float | None:
    """How much of the scan is done, 0..1 (None until the replicas' sizes are known)."""
    if not progress.get("running"):
        return 1.0 if progress.get("phase") == "done" else None
    total = progress.get("keys_total")
    if not total:
        return None if total is None else 1.0
    return min(progress.get("keys_scanned", 0) / total, 0.99)


def repair_line(progress: dict, width: int = WIDTH) -> str:
    """One line of a repair's progress: a bar, keys compared and copied, ETA."""
    fraction = repair_fraction(progress)
    copies = progress.get("repaired", 0) + progress.get("deleted", 0)
    text = (f" {_count(progress.get('compared'))} compared, {_count(copies)} copied"
            + (f", {progress['errors']:,} errors" if progress.get("errors") else "")
            + (f", ETA {_duration(progress.get('eta'))}" if progress.get("running") else ""))
    head = f"repair {progress.get('node', '?')} "
    percent = "  ?%" if fraction is None else f"{fraction * 100:3.0f}%"
    bar_width = max(10, width - len(head) - len(text) - len(percent) - 4)
    filled = 0 if fraction is None else int(fraction * bar_width)
    return f"{head}[{'#' * filled}{'.' * (bar_width - filled)}] {percent}{text}"[:width]


def repair_clean(progress: dict) -> bool:
    return progress.get("phase") == "done" and not progress.get("errors")


def repair_summary(progress: dict) -> str:
    """A paragraph on how a repair ended."""
    where = (f"repair {progress.get('id')} of {progress.get('node')} ("
             f"{'rack ' + progress['rack'] if progress.get('rack') else 'every rack'} of "
             f"{progress.get('dc')}, "
             f"{'tokens ' + progress['range'] if progress.get('range') else 'all its ranges'})")
    replicas = progress.get("replicas") or []
    phase = progress.get("phase")
    elapsed = _duration(progress.get("elapsed"))
    copies = (f"{_count(progress.get('compared'))} keys compared on {len(replicas)} replicas "
              f"({', '.join(replicas)}), {_count(progress.get('repaired'))} values and "
              f"{_count(progress.get('deleted'))} deletes copied")
    if progress.get("skipped"):
        copies += f", {progress['skipped']:,} copies refused by a replica holding a newer write"
    if progress.get("changed"):
        copies += f", {progress['changed']:,} keys left alone (written during the repair)"
    if phase == "done":
        text = f"{where} done in {elapsed}: {copies}"
    elif phase == "failed":
        text = f"{where} FAILED after {elapsed}: {progress.get('error')}. So far: {copies}"
    else:
        text = f"{where} ended ({phase}) after {elapsed}: {progress.get('error') or ''} So far: {copies}"
    errors = progress.get("errors") or 0
    if errors:
        samples = "; ".join(progress.get("error_samples") or [])
        text += f"; {errors:,} errors (first: {samples}), see the node's log"
    else:
        text += "; no errors"
    return text + "."


# -- dyno ring -----------------------------------------------------------------------


def _claims(describe: dict) -> list:
    from dyno.ownership import NORMAL, Claim
    claims = []
    for dc, rack, server in _servers(describe):
        node = RingNode(name=server["name"], host=server["host"], port=server["port"], dc=dc, rack=rack,
                        tokens=tuple(server.get("tokens") or [server["token"]]))
        state = server.get("state")
        claims.append(Claim(node, state if state in _MOVE_STATES else NORMAL, 0))
    return claims


def ring_of(describe: dict) -> Ring:
    """The ring a node's /cluster_describe shows: its owners now (a joining node,
    or a replacement, pending)."""
    from dyno.ownership import ring_of as build
    claims = _claims(describe)
    if not claims:
        raise StatusError("the node described an empty ring")
    try:
        return build(claims, claims[0].node)[0]
    except RingError as error:
        raise StatusError(f"the described ring is inconsistent: {error}") from None


def planned_ring(describe: dict, add: Sequence[str] = (), remove: Sequence[str] = ()) -> Ring | None:
    """The ring once the moves in flight are done, and the planned ones: ``add``, racks
    ("rack" or "dc/rack") that each get a node with the tokens a join would choose,
    ``remove``, nodes decommissioned. None if nothing moves or is planned."""
    from dyno.ownership import DECOMMISSIONING, LEFT, MOVING_IN, REPLACING, placement, split_range
    claims = _claims(describe)
    placed = placement(claims)
    if not placed.moving and not add and not remove:
        return None
    nodes = {node.name: node for node in placed.current}
    for claim in claims:
        name = claim.node.name
        if placed.moving.get(name) in (DECOMMISSIONING, LEFT):
            nodes.pop(name, None)
        elif placed.moving.get(name) in MOVING_IN:
            if claim.state == REPLACING:
                for other in list(nodes.values()):
                    if (other.dc, other.rack, set(other.tokens)) == (claim.node.dc, claim.node.rack,
                                                                     set(claim.node.tokens)):
                        del nodes[other.name]
            nodes[name] = claim.node
    for name in remove:
        if name not in nodes:
            raise StatusError(f"no node {name} in the ring (nodes: {', '.join(sorted(nodes))})")
        del nodes[name]
    for index, where in enumerate(add):
        dc, _, rack = where.rpartition("/")
        racks = {(n.dc, n.rack) for n in nodes.values() if n.rack == rack and (not dc or n.dc == dc)}
        if len(racks) != 1:
            raise StatusError(f"--add {where}: " + ("no such rack" if not racks else "give dc/rack") +
                              f" (racks: {', '.join(sorted(f'{d}/{r}' for d, r in {(n.dc, n.rack) for n in nodes.values()}))})")
        dc, rack = racks.pop()
        tokens = split_range([t for n in nodes.values() if (n.dc, n.rack) == (dc, rack) for t in n.tokens])
        name = f"new-{index + 1} ({dc}/{rack})"
        nodes[name] = RingNode(name, "planned", 1, dc, rack, tuple(tokens))
    if not nodes:
        raise StatusError("the plan leaves no node in the ring")
    ordered = sorted(nodes.values(), key=lambda n: n.name)
    try:
        return Ring(ordered[1:], ordered[0])
    except RingError as error:
        raise StatusError(f"the planned ring is inconsistent: {error}") from None


def ring_shares(describe: dict, add: Sequence[str] = (), remove: Sequence[str] = ()) -> dict:
    """Per rack, the share of the token space each node owns, and whether the rack
    is uneven (largest share / smallest share > ``UNEVEN``); with moves in flight or
    planned (``planned_ring``), each node's share after them too."""
    result = _shares(ring_of(describe))
    after = planned_ring(describe, add, remove)
    if after is not None:
        result["after"] = _shares(after)
    return result


def _shares(ring: Ring) -> dict:
    racks = []
    warnings = []
    for dc in sorted(ring.dcs):
        for rack in sorted(ring.racks(dc)):
            shares = ring.shares(dc, rack)
            members = {node.name: node for node in ring.rack_nodes(dc, rack)}
            smallest, largest = min(shares.values()), max(shares.values())
            ratio = largest / smallest if smallest else float("inf")
            uneven = ratio > UNEVEN
            racks.append({
                "dc": dc, "rack": rack,
                "nodes": [{"node": name, "tokens": list(members[name].tokens), "share": share}
                          for name, share in shares.items()],
                "imbalance": None if ratio == float("inf") else round(ratio, 3),
                "uneven": uneven,
            })
            if uneven:
                warnings.append(
                    f"rack {rack} of {dc} is uneven: its largest share is "
                    + ("infinitely" if ratio == float("inf") else f"{ratio:.2f}x")
                    + f" its smallest (more than {UNEVEN}x); `dyno tokens --nodes-per-rack "
                    f"{len(shares)}` gives even tokens"
                )
    return {"racks": racks, "warnings": warnings}


def render_ring(shares: dict, out: Console) -> None:
    after = shares.get("after")
    _render_shares(shares, out, "token ownership per rack" + (", now" if after else ""))
    if after is not None:
        _render_shares(after, out, "after the moves in flight and planned")


def _render_shares(shares: dict, out: Console, title: str) -> None:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), title=title)
    table.add_column("DC/rack", overflow="fold")
    table.add_column("node", overflow="fold", min_width=15)
    table.add_column("tokens", overflow="fold", max_width=24)
    table.add_column("share", justify="right", no_wrap=True)
    for rack in shares["racks"]:
        for index, node in enumerate(rack["nodes"]):
            table.add_row(
                f"{rack['dc']}/{rack['rack']}" if index == 0 else "", node["node"],
                ",".join(map(str, node["tokens"])), f"{node['share'] * 100:.1f}%",
                style="yellow" if rack["uneven"] else None,
            )
    out.print(table)
    for warning in shares["warnings"]:
        out.print(f"warning: {warning}", style="bold yellow")
    if not shares["warnings"]:
        out.print(f"every rack is even (largest share within {UNEVEN}x of the smallest)")


# -- dyno tokens ---------------------------------------------------------------------


def tokens_plan(nodes_per_rack: int) -> dict:
    tokens = evenly_spaced_tokens(nodes_per_rack)
    return {
        "nodes_per_rack": nodes_per_rack,
        "tokens": tokens,
        "share": (MAX_TOKEN + 1) // nodes_per_rack / (MAX_TOKEN + 1),
    }


def render_tokens(plan: dict, out: Console) -> None:
    out.print(f"Evenly spaced tokens for {plan['nodes_per_rack']} node(s) per rack:")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    table.add_column("node", justify="right")
    table.add_column("token", justify="right")
    table.add_column("share", justify="right")
    for index, token in enumerate(plan["tokens"], 1):
        table.add_row(str(index), str(token), f"{plan['share'] * 100:.2f}%")
    out.print(table)
    out.print("Give node i of every rack token i: each rack then holds a full copy, "
              "and a key has the same owner position in every rack.", soft_wrap=False)


# -- range movements (dyno.streaming) ---------------------------------------------------


def movement_progress(address: str) -> dict:
    """GET /movement: the node's range movement (join, replace, decommission) and cleanup."""
    answer = _admin_call(address, "/movement")
    if not isinstance(answer, dict):
        raise StatusError(f"{address}: GET /movement answered {str(answer)[:60]!r}")
    return answer


def movement_line(progress: dict, width: int = WIDTH) -> str:
    """One line of a move's progress: a bar over the sources' keys, keys copied, MB, keys/s."""
    transfer = progress.get("transfer") or {}
    total, scanned = transfer.get("total"), transfer.get("scanned", 0)
    state = progress.get("state", "?")
    fraction = 1.0 if state in ("done", "left") else (min(scanned / total, 0.99) if total else None)
    text = (f" {state}: {_count(transfer.get('copied'))} keys copied"
            f" ({transfer.get('bytes', 0) / 1e6:.1f} MB, {transfer.get('keys_per_second', 0):,.0f} keys/s)")
    head = f"{progress.get('kind') or 'move'} "
    percent = "  ?%" if fraction is None else f"{fraction * 100:3.0f}%"
    bar_width = max(10, width - len(head) - len(text) - len(percent) - 4)
    filled = 0 if fraction is None else int(fraction * bar_width)
    return f"{head}[{'#' * filled}{'.' * (bar_width - filled)}] {percent}{text}"[:width]


def decommission(address: str, progress: Callable[[dict], None] | None = None, timeout: float = 3600.0,
                 poll: float = 0.5) -> dict:
    """POST /decommission on the node at ``address``, then follow /movement until the
    node has left the ring (``progress`` gets each status); its last status. StatusError
    when it cannot start, fails, or does not finish within ``timeout`` seconds."""
    _admin_call(address, "/decommission", "POST")
    deadline = time.monotonic() + timeout
    while True:
        status = movement_progress(address)
        if progress is not None:
            progress(status)
        if status.get("state") == "left":
            return status
        transfer = status.get("transfer") or {}
        if transfer.get("phase") == "failed" and status.get("state") not in ("settling", "streaming", "waiting"):
            raise StatusError(f"{address}: decommission failed: {transfer.get('error')}")
        if time.monotonic() > deadline:
            raise StatusError(f"{address}: decommission not done after {timeout:g} s ({status.get('state')})")
        time.sleep(poll)


def seed_entries(address: str, leaving_out: str | None = None) -> list[str]:
    """Every node of the ring the node at ``address`` (its admin port) describes, as
    dyn_seeds entries (host:port:rack:dc:tokens), but ``leaving_out`` (a node name)."""
    describe = _admin_call(address, "/cluster_describe")
    if not isinstance(describe, dict) or "dcs" not in describe:
        raise StatusError(f"{address}: /cluster_describe answered {str(describe)[:60]!r}")
    return [f"{server['host']}:{server['port']}:{rack}:{dc}:"
            + ",".join(map(str, server.get("tokens") or [server["token"]]))
            for dc, rack, server in _servers(describe)
            if server["name"] != leaving_out and server.get("state") not in ("LEFT", "DECOMMISSIONING")]
