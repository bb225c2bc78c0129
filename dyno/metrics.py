"""Counters and latency histograms of a node, and their Prometheus text rendering.

What it owns: the numbers the admin port shows (``/metrics``, ``/info``): the
node's plain ``Stats`` and the ``Metrics`` beyond them, and the one place they are
turned into text. What it must never do: cost the hot path anything but plain-integer work.

* Counters are ints in dicts and attributes, bumped by the coordinator: per command
  (keyed by the command table's row, so a client cannot grow the dict with made-up
  names; a batch adds once per run of one command, not once per request), per
  consistency level, per kind of failure. Request classes (read, write, local...)
  are derived from the per-command counts when rendered, not counted.
* Latency is *sampled* (``SAMPLING`` says how, in ``/info`` and ``/metrics``): one
  client batch in ``SAMPLE_EVERY`` gets timed reply slots (client-facing latency) and
  timed sinks on its datastore and peer requests; so does the node's first batch, and
  the first batch after any second in which none was timed (the admin port's
  once-a-second tick asks the coordinator, off the hot path), so that a node with
  little traffic, or with deep pipelines (few batches), still has figures. An unsampled
  batch pays one integer decrement for it. A timed batch is one observation of the
  client latency (the time its last reply took), or one per request when its replies
  are kept apart. Histograms have fixed buckets (Prometheus style); percentiles for
  ``/info`` are estimated from a recent window.
* Measured cost (execute_batch alone, in-process, 2-core box): about +0.12 us per
  request at pipeline depth 1 and +0.02 us at depth 16, against ~14 us and ~2 us of
  CPU per request for the whole node (scripts/bench.py's dyno-1).
* Rendering (``render_prometheus``) walks everything; it runs only when asked.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dyno import __version__
from dyno.client import BatchSlot, ReplySlot
from dyno.commands import COMMANDS, CommandSpec, Route
from dyno.consistency import LEVELS
from dyno.datastore import Sink
from dyno.states import OPERATOR_STATES

if TYPE_CHECKING:
    from dyno.admin import NodeView

#: One client batch in this many is timed (with all its requests).
SAMPLE_EVERY = 128
#: How the latency figures are sampled, in words (/info's latency_sampling, /metrics' help).
SAMPLING = (f"1 client batch in {SAMPLE_EVERY}, the first one, and the first after any second "
            "without one, each with all its requests")

#: Upper bounds (seconds) of the latency buckets; the last bucket is +Inf.
BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)

_perf_counter = time.perf_counter


class Histogram:
    """Counts of observations per bucket, their sum and their maximum."""

    __slots__ = ("counts", "sum", "count", "max")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0
        self.max = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1
        if seconds > self.max:
            self.max = seconds

    def snapshot(self) -> tuple[list[int], float]:
        return list(self.counts), self.sum


def percentile(counts: list[int], fraction: float) -> float:
    """Estimate the ``fraction`` quantile (seconds) from bucket counts, interpolating
    linearly inside the bucket it falls in. 0.0 when there are no observations."""
    total = sum(counts)
    if not total:
        return 0.0
    rank = fraction * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            low = BUCKETS[index - 1] if index else 0.0
            high = BUCKETS[index] if index < len(BUCKETS) else BUCKETS[-1] * 2
            return low + (high - low) * ((rank - seen) / count)
        seen += count
    return BUCKETS[-1] * 2


class TimedSink(Sink):
    """Wraps the sink of a sampled request to one target: records how long the
    target took to start answering (or to fail)."""

    __slots__ = ("sink", "histogram", "start", "count")
    runs = True  # whatever the wrapped sink takes, it is handed on as it came

    def __init__(self, sink: Sink, histogram: Histogram, count: int = 1):
        self.sink = sink
        self.histogram = histogram
        self.start = _perf_counter()
        self.count = count  # requests sent together, for a batch sent to a peer

    def _observe(self) -> None:
        start = self.start
        if start:
            self.start = 0.0
            self.histogram.observe(_perf_counter() - start)

    def deliver(self, reply: bytes) -> None:
        self._observe()
        self.sink.deliver(reply)

    def deliver_run(self, replies: bytes, n: int) -> None:
        self._observe()
        self.sink.deliver_run(replies, n)

    def fail(self, error: bytes) -> None:
        self._observe()
        self.sink.fail(error)

    def deliver_each(self, replies: list[bytes]) -> None:
        self._observe()
        self.sink.deliver_each(replies)


def timed_slot_class(histogram: Histogram) -> type[ReplySlot]:
    """A ``ReplySlot`` that records, when its reply lands, how long it took since
    the request was handed to the coordinator (client-facing latency)."""

    class TimedSlot(ReplySlot):
        __slots__ = ("start",)

        def __init__(self, client, data: bytes | None = None):
            self.client = client
            self.data = data
            self.start = _perf_counter()

        def deliver(self, reply: bytes) -> None:
            histogram.observe(_perf_counter() - self.start)
            ReplySlot.deliver(self, reply)

        def deliver_run(self, reply: bytes, n: int) -> None:  # (ReplySlot's does not call deliver)
            self.deliver(reply)

    return TimedSlot


def timed_batch_slot_class(histogram: Histogram) -> type[BatchSlot]:
    """A ``BatchSlot`` that records, when its last reply lands, how long the batch
    took (one observation for the batch: the latency its last request saw)."""

    class TimedBatchSlot(BatchSlot):
        __slots__ = ("start",)

        def __init__(self, client, count: int):
            super().__init__(client, count)
            self.start = _perf_counter()

        def deliver_run(self, replies: bytes, n: int) -> None:
            BatchSlot.deliver_run(self, replies, n)
            if self.data is not None:
                histogram.observe(_perf_counter() - self.start)

    return TimedBatchSlot


@dataclass
class Stats:
    """Counters on the hot path are plain integers, read only when asked."""

    commands: int = 0
    errors: int = 0
    connections_received: int = 0
    replica_failures: int = 0
    client_bytes_in: int = 0   # request bytes read from clients
    client_bytes_out: int = 0  # reply bytes written to clients
    client_unsent: int = 0     # reply bytes waiting for clients that have not read them
    output_limit_closes: int = 0  # clients closed for holding too many unread replies


class Metrics:
    """The node's counters beyond ``Stats``; see the module docstring for the rules."""

    def __init__(self) -> None:
        self.calls: defaultdict[CommandSpec, int] = defaultdict(int)  # per command (table row)
        self.refused: dict[bytes, int] = {}           # errors dyno answered itself, per command
        self.by_level: dict[str, int] = dict.fromkeys(LEVELS, 0)      # replicated requests
        self.failures_by_level: dict[str, int] = dict.fromkeys(LEVELS, 0)  # quorum errors
        self.disagreements = 0      # a replica answered differently from the decided reply
        self.widened_reads = 0      # quorum reads the first Q replicas could not decide
        self.failovers = 0          # DC_ONE parts answered by another replica than the first
        self.write_failures = 0     # replica writes that failed (or may have), reported
        self.stamp_failures = 0     # batches whose versions a replica could not record
        self.read_repairs = 0       # reads whose keys were repaired (quorum disagreement, chance)
        self.read_repair_failures = 0
        self.transactions = 0       # MULTI ... EXEC blocks sent to replicas
        self.state_refusals = 0     # requests refused because of the node state
        self.sampled_batches = 0    # client batches timed (see "Latency is sampled")
        self.client_latency = Histogram()
        self.datastore_latency = Histogram()
        self.peer_latency: dict[str, Histogram] = {}
        self.timed_slot = timed_slot_class(self.client_latency)
        self.timed_batch_slot = timed_batch_slot_class(self.client_latency)

    def peer_histogram(self, name: str) -> Histogram:
        histogram = self.peer_latency.get(name)
        if histogram is None:
            histogram = self.peer_latency[name] = Histogram()
        return histogram

    def count_refused(self, name: bytes) -> None:
        self.refused[name] = self.refused.get(name, 0) + 1

    def quorum_failures(self) -> int:
        return sum(self.failures_by_level.values())

    def commands(self) -> dict[str, int]:
        """Requests per command name (subcommands as ``object|encoding``)."""
        out: dict[str, int] = {}
        for spec, count in self.calls.items():
            name = spec.name.decode()
            out[name] = out.get(name, 0) + count
        return dict(sorted(out.items()))

    def by_class(self) -> dict[str, int]:
        """Requests per class: read, write, local (answered by the node), rack
        (fanned out over a rack: DBSIZE, KEYS, SCAN), all (every replica: FLUSHALL)."""
        out = {"read": 0, "write": 0, "local": 0, "rack": 0, "all": 0}
        for spec, count in self.calls.items():
            out[request_class(spec)] += count
        return out


# -- a worker's counters, added up by its supervisor (dyno.workers) --------------------

#: Metrics' plain-integer counters beyond the tables and histograms.
_COUNTERS = ("disagreements", "widened_reads", "failovers", "write_failures", "stamp_failures",
             "read_repairs", "read_repair_failures", "transactions", "state_refusals", "sampled_batches")


def snapshot(stats: Stats, metrics: Metrics) -> dict:
    """Every counter of ``stats`` and ``metrics`` as plain values (msgpack): what a
    worker sends its supervisor, which adds them up with ``merge_into``."""
    return {
        "stats": dict(vars(stats)),
        "calls": [[spec.name, count] for spec, count in metrics.calls.items()],
        "refused": [[name, count] for name, count in metrics.refused.items()],
        "by_level": dict(metrics.by_level),
        "failures_by_level": dict(metrics.failures_by_level),
        "counters": {name: getattr(metrics, name) for name in _COUNTERS},
        "client_latency": _histogram_values(metrics.client_latency),
        "datastore_latency": _histogram_values(metrics.datastore_latency),
        "peer_latency": {name: _histogram_values(h) for name, h in metrics.peer_latency.items()},
    }


def merge_into(stats: Stats, metrics: Metrics, snapshots: Iterable[dict]) -> None:
    """Make ``stats`` and ``metrics`` the sum of ``snapshots`` (in place: the
    admin port holds them)."""
    for name in vars(stats):
        setattr(stats, name, 0)
    metrics.calls.clear()
    metrics.refused.clear()
    metrics.by_level = dict.fromkeys(LEVELS, 0)
    metrics.failures_by_level = dict.fromkeys(LEVELS, 0)
    for name in _COUNTERS:
        setattr(metrics, name, 0)
    _clear(metrics.client_latency)
    _clear(metrics.datastore_latency)
    metrics.peer_latency.clear()
    for taken in snapshots:
        for name, value in taken["stats"].items():
            if hasattr(stats, name):
                setattr(stats, name, getattr(stats, name) + value)
        for name, count in taken["calls"]:
            spec = _spec_named(name)
            if spec is not None:
                metrics.calls[spec] += count
        for name, count in taken["refused"]:
            metrics.refused[name] = metrics.refused.get(name, 0) + count
        for table in ("by_level", "failures_by_level"):
            mine = getattr(metrics, table)
            for level, count in taken[table].items():
                mine[level] = mine.get(level, 0) + count
        for name, value in taken["counters"].items():
            if name in _COUNTERS:
                setattr(metrics, name, getattr(metrics, name) + value)
        _add(metrics.client_latency, taken["client_latency"])
        _add(metrics.datastore_latency, taken["datastore_latency"])
        for name, values in taken["peer_latency"].items():
            _add(metrics.peer_histogram(name), values)


def _histogram_values(histogram: Histogram) -> list:
    return [list(histogram.counts), histogram.sum, histogram.count, histogram.max]


def _clear(histogram: Histogram) -> None:
    histogram.counts[:] = [0] * len(histogram.counts)
    histogram.sum, histogram.count, histogram.max = 0.0, 0, 0.0


def _add(histogram: Histogram, values: list) -> None:
    counts, total, count, largest = values
    for index, n in enumerate(counts[: len(histogram.counts)]):
        histogram.counts[index] += n
    histogram.sum += total
    histogram.count += count
    histogram.max = max(histogram.max, largest)


def _spec_named(name: bytes) -> CommandSpec | None:
    """The table row named ``name`` (``b"object|encoding"``: a subcommand's)."""
    head, _, sub = name.partition(b"|")
    spec = COMMANDS.get(head)
    if spec is not None and sub:
        spec = (spec.subcommands or {}).get(sub)
    return spec


def request_class(spec: CommandSpec) -> str:
    route = spec.route
    if route is Route.LOCAL:
        return "local"
    if route is Route.ONE_REPLICA:
        return "rack"
    if route is Route.ALL_REPLICAS:
        return "all"
    return "write" if spec.write else "read"


class Window:
    """Recent history, sampled once a second by the admin server: rates and
    percentiles over the last minute rather than since the node started."""

    def __init__(self, seconds: int = 60):
        self.samples: list[tuple[float, int, list[int]]] = []
        self.seconds = seconds

    def sample(self, now: float, commands: int, latency: Histogram) -> None:
        self.samples.append((now, commands, list(latency.counts)))
        cutoff = now - self.seconds
        while len(self.samples) > 2 and self.samples[1][0] <= cutoff:
            del self.samples[0]

    def latest(self, now: float, commands: int) -> tuple[float, int]:
        """(time, commands) of the last sample; ``now`` and ``commands`` before the first."""
        return self.samples[-1][:2] if self.samples else (now, commands)

    def ops_per_sec(self, now: float, commands: int, span: float = 10.0) -> float:
        """Commands per second over the last ``span`` seconds (or what history there is)."""
        base = None
        for when, count, _ in self.samples:
            if now - when <= span:
                base = (when, count)
                break
        if base is None or now - base[0] < 0.5:
            return 0.0
        # max: a node's count falls when one of its workers restarts (dyno.workers)
        return max(commands - base[1], 0) / (now - base[0])

    def recent_counts(self, latency: Histogram) -> list[int]:
        """Latency bucket counts observed within the window."""
        if not self.samples:
            return list(latency.counts)
        oldest = self.samples[0][2]
        # max: a node's counts fall when one of its workers restarts (dyno.workers)
        return [max(now - then, 0) for now, then in zip(latency.counts, oldest)]


# -- Prometheus text format ------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, object]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(str(value))}"' for key, value in labels.items()) + "}"


class _Family:
    def __init__(self, name: str, kind: str, help_text: str):
        self.name = name
        self.kind = kind
        self.help = help_text
        self.lines: list[str] = []

    def add(self, value: float, **labels: object) -> None:
        self.lines.append(f"{self.name}{_labels(labels)} {_number(value)}")

    def histogram(self, histogram: Histogram, **labels: object) -> None:
        cumulative = 0
        for bound, count in zip((*BUCKETS, float("inf")), histogram.counts):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            self.lines.append(f"{self.name}_bucket{_labels({**labels, 'le': le})} {cumulative}")
        self.lines.append(f"{self.name}_sum{_labels(labels)} {_number(histogram.sum)}")
        self.lines.append(f"{self.name}_count{_labels(labels)} {histogram.count}")

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        yield from self.lines


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


NO_REQUESTS = {"sent": 0, "failed": 0, "in_flight": 0}


def peer_totals(node: "NodeView") -> dict[str, dict]:
    """Requests sent to each peer, failed and in flight, by the whole node (its
    workers' links together with ``workers: N``)."""
    if node.peer_totals is not None:
        return node.peer_totals()
    return {name: {"sent": link.sent, "failed": link.failed, "in_flight": link.in_flight}
            for name, link in node.peer_links.items()}


def render_prometheus(node: "NodeView", view: list[dict]) -> str:
    """Every metric of ``node`` in the Prometheus text exposition format (0.0.4).
    ``view`` is the node's cluster view (``dyno.admin.cluster_view``)."""
    metrics: Metrics = node.metrics
    stats = node.stats
    state = node.state()
    families: list[_Family] = []

    def family(name: str, kind: str, help_text: str) -> _Family:
        f = _Family(name, kind, help_text)
        families.append(f)
        return f

    family("dyno_info", "gauge", "Constant 1; the labels describe the node.").add(
        1, node=node.name, dc=node.config.datacenter, rack=node.config.rack,
        version=__version__, state=state,
    )
    family("dyno_uptime_seconds", "gauge", "Seconds since the node started.").add(
        round(time.time() - node.started, 3))
    states = family("dyno_node_state", "gauge", "1 for the node's current operator state.")
    for operator_state in OPERATOR_STATES:
        states.add(int(state == operator_state), state=operator_state)
    family("dyno_client_connections", "gauge", "Client connections open.").add(len(node.clients))
    family("dyno_commands_total", "counter", "Client requests received, all commands.").add(stats.commands)
    family("dyno_errors_total", "counter",
           "Error replies dyno itself gave clients (refused commands).").add(stats.errors)

    requests = family("dyno_requests_total", "counter",
                      "Client requests per command (unknown and malformed ones are not included).")
    for name, count in metrics.commands().items():
        requests.add(count, command=name)
    classes = family("dyno_requests_by_class_total", "counter",
                     "Client requests per class: read, write, local, rack (over one rack), all (every replica).")
    for name, count in metrics.by_class().items():
        classes.add(count, **{"class": name})
    refused = family("dyno_request_errors_total", "counter",
                     "Requests dyno refused with an error, per command: unknown command, wrong arity, "
                     "unsupported, CROSSSLOT, node state.")
    for name, count in sorted(metrics.refused.items()):
        refused.add(count, command=name.decode(errors="replace"))
    family("dyno_state_refusals_total", "counter",
           "Requests refused because the node is in STANDBY or WRITES_ONLY.").add(metrics.state_refusals)

    levels = family("dyno_consistency_requests_total", "counter",
                    "Replicated client requests per consistency level.")
    for level, count in metrics.by_level.items():
        levels.add(count, level=level)
    failures = family("dyno_quorum_failures_total", "counter",
                      "Requests answered with a quorum error (not achieved, replicas disagree), per level.")
    for level, count in metrics.failures_by_level.items():
        failures.add(count, level=level)
    family("dyno_replica_disagreements_total", "counter",
           "Replica replies that differed from the reply the client got.").add(metrics.disagreements)
    family("dyno_quorum_reads_widened_total", "counter",
           "Quorum reads sent to the remaining replicas because the first Q could not decide "
           "them (they disagreed, failed or were slow).").add(metrics.widened_reads)
    family("dyno_replica_failures_total", "counter",
           "Replica requests that failed (peer or datastore down, timed out, connection lost).").add(
        stats.replica_failures)
    family("dyno_replica_write_failures_total", "counter",
           "Replica writes that did not reach their replica, or may not have (reported with "
           "their payload, whether or not a client waited for them).").add(metrics.write_failures)
    family("dyno_failovers_total", "counter",
           "DC_ONE requests answered by another replica than the one first asked, because it "
           "failed after they were sent.").add(metrics.failovers)
    family("dyno_auth_failures_total", "counter",
           "Wrong passwords clients gave (AUTH, HELLO ... AUTH).").add(node.auth_failures())
    family("dyno_read_repairs_total", "counter",
           "Reads whose keys were repaired because replicas disagreed (or picked by "
           "read_repair_chance).").add(metrics.read_repairs)
    family("dyno_transactions_total", "counter",
           "Transactions (MULTI ... EXEC) run on their keys' replicas.").add(metrics.transactions)
    family("dyno_read_repair_failures_total", "counter",
           "Read repairs that could not be completed (a replica unreachable).").add(metrics.read_repair_failures)
    family("dyno_version_stamp_failures_total", "counter",
           "Write batches whose versions a replica could not record (versions_db).").add(metrics.stamp_failures)
    hints = node.hints()
    for name, help_text, field in (
        ("dyno_hints_pending", "Hinted writes waiting for each peer to come back.", "pending"),
        ("dyno_hints_pending_bytes", "Bytes of hints waiting for each peer.", "pending_bytes"),
        ("dyno_hints_stored_total", "Replica writes kept as hints, per peer.", "stored"),
        ("dyno_hints_replayed_total", "Hints replayed to their peer.", "replayed"),
        ("dyno_hints_dropped_window_total", "Hints dropped past max_hint_window (repair takes over).",
         "dropped_window"),
        ("dyno_hints_dropped_full_total", "Writes not hinted because max_hints_size was reached.",
         "dropped_full"),
    ):
        hinted = family(name, "gauge" if field.startswith("pending") else "counter", help_text)
        for peer_name, counts in hints.items():
            hinted.add(counts[field], peer=peer_name)
    swept = node.tombstones()
    family("dyno_tombstones_removed_total", "counter",
           "Versions of keys deleted or expired more than tombstone_grace ago, dropped from "
           "this node's versions database.").add(swept.get("removed", 0))
    family("dyno_tombstone_sweeps_total", "counter",
           "Passes of the tombstone sweep over this node's versions database, completed.").add(
        swept.get("passes", 0))
    family("dyno_tombstone_sweep_failures_total", "counter",
           "Tombstone sweep passes that ended early (the node's Redis unreachable).").add(
        swept.get("failures", 0))
    moving = node.movement()
    transfer = moving.get("transfer") or {}
    family("dyno_stream_keys_copied_total", "counter",
           "Keys this node's range movement (join, replace, decommission) copied.").add(
        transfer.get("copied", 0), kind=moving.get("kind") or "none")
    family("dyno_stream_bytes_copied_total", "counter",
           "Bytes (keys and DUMP payloads) this node's range movement copied.").add(
        transfer.get("bytes", 0), kind=moving.get("kind") or "none")
    scanned = family("dyno_stream_keys_scanned", "gauge",
                     "Keys of the sources scanned by this node's range movement, and their total.")
    scanned.add(transfer.get("scanned", 0), of="scanned")
    scanned.add(transfer.get("total") or 0, of="total")
    family("dyno_stream_active", "gauge", "1 while this node's range movement runs.").add(
        int(moving.get("state") in ("settling", "streaming", "waiting")), kind=moving.get("kind") or "none")
    cleanup = moving.get("cleanup") or {}
    family("dyno_cleanup_keys_dropped_total", "counter",
           "Keys dropped because a join took their range from this node.").add(cleanup.get("dropped", 0))
    family("dyno_client_bytes_received_total", "counter",
           "Request bytes read from clients.").add(stats.client_bytes_in)
    family("dyno_client_bytes_sent_total", "counter",
           "Reply bytes written to clients.").add(stats.client_bytes_out)

    family("dyno_latency_sampled_batches_total", "counter",
           f"Client batches timed for the latency histograms (sampled: {SAMPLING}).").add(
        metrics.sampled_batches)
    client = family("dyno_request_latency_seconds", "histogram",
                    f"Client-facing latency, from request to reply ready (sampled: {SAMPLING}).")
    client.histogram(metrics.client_latency)
    datastore = family("dyno_datastore_latency_seconds", "histogram",
                       "Latency of requests to the node's own Redis (those of the sampled client batches).")
    datastore.histogram(metrics.datastore_latency, datastore=node.datastore.address)
    peer_latency = family("dyno_peer_latency_seconds", "histogram",
                          "Latency of requests to each peer (those of the sampled client batches).")
    for name in sorted(metrics.peer_latency):
        peer_latency.histogram(metrics.peer_latency[name], peer=name)

    family("dyno_datastore_up", "gauge", "1 when a connection to the node's Redis is up.").add(
        int(node.datastore.up), datastore=node.datastore.address)
    workers = node.workers() if node.workers is not None else []
    if workers:
        worker_clients = family("dyno_worker_client_connections", "gauge",
                                "Client connections open, per worker process (workers: N).")
        worker_requests = family("dyno_worker_commands_total", "counter",
                                 "Client requests received, per worker process (since it started).")
        worker_up = family("dyno_worker_up", "gauge", "1 when the worker process is serving.")
        worker_restarts = family("dyno_worker_restarts_total", "counter",
                                 "Times the worker process was started again after it ended.")
        for worker in workers:
            index = worker["index"]
            worker_clients.add(worker["client_connections"], worker=index)
            worker_requests.add(worker["client_requests"], worker=index)
            worker_up.add(int(worker["up"]), worker=index)
            worker_restarts.add(worker["restarts"], worker=index)
    link_up = family("dyno_peer_up", "gauge", "1 when the peer link is connected.")
    sent = family("dyno_peer_requests_total", "counter",
                  "Commands sent to each peer (a batch of writes carries 3 more: its version stamp).")
    failed = family("dyno_peer_failures_total", "counter", "Requests to each peer that failed.")
    in_flight = family("dyno_peer_in_flight", "gauge", "Requests sent to each peer, not answered yet.")
    admin_down = family("dyno_peer_admin_down", "gauge", "1 when an operator marked the peer down.")
    totals = peer_totals(node)
    for name in sorted(node.peer_links):
        link = node.peer_links[name]
        counts = totals.get(name, NO_REQUESTS)
        link_up.add(int(link.up), peer=name)
        sent.add(counts["sent"], peer=name)
        failed.add(counts["failed"], peer=name)
        in_flight.add(counts["in_flight"], peer=name)
        admin_down.add(int(name in node.admin_down), peer=name)
    view_up = family("dyno_view_node_up", "gauge", "This node's view of the cluster: 1 up, 0 down.")
    for entry in view:
        view_up.add(int(entry["up"]), node=entry["name"], dc=entry["dc"], rack=entry["rack"])

    lines: list[str] = []
    for f in families:
        lines.extend(f.render())
    return "\n".join(lines) + "\n"
