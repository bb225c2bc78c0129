"""How a dyno process starts and ends: its log format, and its trio run.

Shared by the command line (``dyno start``: one node, or a node's supervisor) and a
node's worker processes (dyno.workers), so every process of a node logs alike and
ends on an error a user can act on with one line, not a traceback.
"""

from __future__ import annotations

import logging
import sys


def setup_logging(verbose: int, log_file: str | None, node: str = "", level_name: str | None = None) -> None:
    """One line per event: time, level, the node's name, the module, the message."""
    level = logging.DEBUG if verbose >= 1 else getattr(logging, (level_name or "info").upper())
    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    )
    where = f" [{node}]" if node else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)-7s{where} %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def run(main, *args) -> None:
    """trio.run, with an error that reached it through nurseries (an exception group
    of one) raised as itself, so the caller can say it in one line."""
    import trio

    try:
        trio.run(main, *args)
    except BaseExceptionGroup as group:
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        if error is group:
            raise
        raise error from None
