"""Readability of many sockets through one private epoll, one trio wait per turn.

DESIGN.md §10 measured that trio's cost is per *wait*. Part of that cost is trio's own
epoll: it registers every fd with EPOLLONESHOT, so each ``wait_readable`` re-arms the fd
with one ``epoll_ctl`` syscall, and each event goes through trio's per-fd bookkeeping. A
proxy at ``-P 1`` waits once per request on each client, each backend and each peer
connection, so py-spy put about 16% of a node's time in that one syscall.

A ``Poller`` registers each long-lived socket once, edge-triggered, in an epoll of its
own, and only that epoll's fd is known to trio. One task waits for it, asks it which
sockets became readable, and wakes the task parked on each; a socket that became
readable while its task was busy keeps a flag, so the next ``wait`` returns at once.
Tasks keep their structure: a parked task is cancelled as with any trio wait.
A task may also park with an ``inline`` handler: the poller then calls it in its own
task, and wakes the parked task only when the handler asks (dyno's readers handle
most reads that way, without a task switch).

There is one Poller per trio run, made on the first ``watch(sock)``; its task is a trio
system task, so it needs no nursery and ends with the run.

Edge-triggered means an event comes only when new data arrives, so a ``Watch.wait``
caller must have read until ``recv`` came back short or with EAGAIN before it waits
again; every caller in dyno does (a short read means the socket buffer was emptied).
The exception is the end of the connection: the last data and the FIN can come in one
edge, and no edge follows the FIN. Once ``Watch.ended`` is set a reader must go on
reading until ``recv`` returns b"" or fails.
"""

from __future__ import annotations

import select
import socket

import trio

from dyno.wakeup import deferring, flush_noted

_EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
_ENDED = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_MAX_EVENTS = 512
_current: trio.lowlevel.RunVar = trio.lowlevel.RunVar("dyno.poller")


class Watch:
    """One socket's readability, from a Poller. ``wait()`` by one task at a time."""

    __slots__ = ("poller", "fd", "task", "ready", "inline", "ended", "_abort")

    def __init__(self, poller: "Poller", fd: int):
        self.poller = poller
        self.fd = fd
        self.task: trio.lowlevel.Task | None = None
        self.ready = True  # the first wait reads at once: data may predate the watch
        self.inline = None  # while parked: the poller calls it instead of waking the task
        # The other side has shut down or the socket failed. The data before it and
        # the end can come in one edge, so a short read no longer means drained:
        # readers read on until recv reports the end.
        self.ended = False

        def abort(_raise_cancel) -> trio.lowlevel.Abort:
            self.task = None
            self.inline = None
            return trio.lowlevel.Abort.SUCCEEDED

        self._abort = abort

    async def wait(self, inline=None) -> None:
        """Return once the socket has had new data (or an error, or EOF) since the
        last ``wait`` returned.

        ``inline``: while the task is parked, each time the socket becomes readable
        the poller calls ``inline()`` in its own task; the task stays parked while
        it returns True (it read and handled the data), and is woken when it
        returns False. It must not raise."""
        if self.ready:
            self.ready = False
            return
        assert self.task is None, "one task waits on a socket at a time"
        self.task = trio.lowlevel.current_task()
        self.inline = inline
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def close(self) -> None:
        """Stop watching (before the socket is closed)."""
        self.poller._forget(self)


def watch(sock: socket.socket) -> Watch:
    """Watch ``sock`` with this trio run's Poller (made and started on first use)."""
    poller = _current.get(None)
    if poller is None:
        poller = Poller()
        _current.set(poller)
        trio.lowlevel.spawn_system_task(poller.run, name="dyno.poller")
    return poller.watch(sock)


class Poller:
    """See the module docstring. ``run()`` must be running (``watch`` starts it)."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._watches: dict[int, Watch] = {}

    def watch(self, sock: socket.socket) -> Watch:
        fd = sock.fileno()
        watch = Watch(self, fd)
        self._watches[fd] = watch
        self._epoll.register(fd, _EVENTS)
        return watch

    def _forget(self, watch: Watch) -> None:
        if self._watches.get(watch.fd) is watch:
            del self._watches[watch.fd]
            try:
                self._epoll.unregister(watch.fd)
            except (OSError, ValueError):  # the socket or the epoll is closed already
                pass
        task, watch.task = watch.task, None
        watch.inline = None
        if task is not None:
            trio.lowlevel.reschedule(task)

    async def run(self) -> None:
        epoll = self._epoll
        watches = self._watches
        reschedule = trio.lowlevel.reschedule
        wait_readable = trio.lowlevel.wait_readable
        fileno = epoll.fileno()
        try:
            while True:
                await wait_readable(fileno)
                deferring()  # the writers these reads give work to are flushed after them
                try:
                    for fd, events in epoll.poll(0, _MAX_EVENTS):
                        watch = watches.get(fd)
                        if watch is None:
                            continue
                        if events & _ENDED:
                            watch.ended = True
                        task = watch.task
                        if task is None:
                            watch.ready = True
                        elif watch.inline is None or not watch.inline():
                            watch.task = None
                            watch.inline = None
                            reschedule(task)
                finally:
                    flush_noted()
        finally:
            epoll.close()
