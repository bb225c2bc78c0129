"""Waking a long-lived task without a trio primitive per request.

DESIGN.md §10: trio's cost is per wait. The hot path therefore never creates an
Event, a channel or a task per request. Each long-lived task that sometimes has
nothing to do (a connection's writer, a client held back by back-pressure) parks on
its own ``Wakeup``; whoever gives it work calls ``set()``, which is a flag check when
the task is already awake and one ``reschedule`` when it sleeps. Many ``set()`` calls
before the task runs cost one wake-up: that is what batches the writes of many
requests into one ``send``.

A writer can do better than one wake-up per turn: it gives its Wakeup a ``flush``
(``stream.write_loop`` does). A ``set()`` made while the poller dispatches readable
sockets (``deferring()``: every read handled in the poller's task) then only notes
the Wakeup; when the dispatch ends the poller calls each noted parked writer's
``flush`` in its own task, which sends what was queued, and wakes the writer only if
the socket could not take it all. A read that fans out to Redis and two peers then
costs no task switch at all.
"""

from __future__ import annotations

import trio

_noted: list["Wakeup"] = []  # set() while deferring, flush at the end of the dispatch
_deferring = False


class Wakeup:
    """A one-waiter, auto-resetting signal."""

    __slots__ = ("_task", "_pending", "flush", "_noted")

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None
        self._pending = False
        # The parked waiter's work, done by someone else's task: returns True if
        # there is nothing left for the waiter to do (then it stays parked).
        self.flush = None
        self._noted = False

    def set(self) -> None:
        task = self._task
        if task is None:
            self._pending = True
        elif _deferring and self.flush is not None:
            if not self._noted:
                self._noted = True
                _noted.append(self)
        else:
            self._task = None
            trio.lowlevel.reschedule(task)

    async def wait(self) -> None:
        """Return once ``set()`` has been called since the last ``wait``."""
        if self._pending:
            self._pending = False
            await trio.lowlevel.checkpoint()
            return
        assert self._task is None, "Wakeup supports a single waiter"
        self._task = trio.lowlevel.current_task()

        def abort(_raise_cancel) -> trio.lowlevel.Abort:
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


def deferring() -> None:
    """From now until ``flush_noted()``, writers' wake-ups are noted, not made."""
    global _deferring
    _deferring = True


def flush_noted() -> None:
    """Flush every noted writer still parked; wake those whose flush did not finish
    (the socket was full, or failed: the writer's own send then reports it). A
    flush may note more writers (a peer link sealing a frame): they are flushed too."""
    global _deferring
    noted = _noted
    reschedule = trio.lowlevel.reschedule
    try:
        for wakeup in noted:  # grows while it is walked
            task = wakeup._task
            if task is not None:
                try:
                    done = wakeup.flush()
                except Exception:  # a bug in a flush: the writer's task runs into it
                    done = False
                if not done and wakeup._task is task:
                    wakeup._task = None
                    reschedule(task)
            wakeup._noted = False
    finally:
        noted.clear()
        _deferring = False


class Idle:
    """Where a long-lived task that works on a timer (a watchdog, a sweeper, a
    flusher) waits, no timer running, while it has nothing to look at: ``wait()``
    parks it; whoever gives it something calls ``wake()`` if ``parked`` (one
    attribute check on the path that makes the work, no call when it is awake)."""

    __slots__ = ("parked", "_wakeup")

    def __init__(self) -> None:
        self.parked = False
        self._wakeup = Wakeup()

    async def wait(self) -> None:
        self.parked = True
        await self._wakeup.wait()

    def wake(self) -> None:
        if self.parked:
            self.parked = False
            self._wakeup.set()
