"""Waking a long-lived task without a trio primitive per request.

DESIGN.md §10: trio's cost is per wait. The hot path therefore never creates an
Event, a channel or a task per request. Each long-lived task that sometimes has
nothing to do (a connection's writer, a client held back by back-pressure) parks on
its own ``Wakeup``; whoever gives it work calls ``set()``, which is a flag check when
the task is already awake and one ``reschedule`` when it sleeps. Many ``set()`` calls
before the task runs cost one wake-up: that is what batches the writes of many
requests into one ``send``.
"""

from __future__ import annotations

import trio


class Wakeup:
    """A one-waiter, auto-resetting signal."""

    __slots__ = ("_task", "_pending")

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None
        self._pending = False

    def set(self) -> None:
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task)
        else:
            self._pending = True

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
