"""Counts the Python function calls a process makes, for scripts/scale.py --count-calls.

Python imports a module named ``sitecustomize`` at start-up from its path; scale.py puts
this directory first on the PYTHONPATH of the dyno processes it starts, with
DYNO_CALL_COUNTS set to a directory. Every call (of Python code and of built-ins, all
threads) then adds one to its function's count, and on SIGUSR2 the process writes the
counts so far to DIR/PID.json (atomically: a reader never sees half a file), as
``{"function": calls}``. A count is the same on a crowded machine as on a quiet one, so
the calls a request costs measure the work a node does for it apart from the machine.

Without DYNO_CALL_COUNTS it does nothing.
"""

import os

_DIRECTORY = os.environ.get("DYNO_CALL_COUNTS")


def _install(directory: str) -> None:
    import json
    import signal
    import sys
    import threading

    counts: dict = {}
    get = counts.get

    def profile(frame, event, arg):
        if event == "call":
            key = frame.f_code
        elif event == "c_call":
            key = arg
        else:
            return
        counts[key] = get(key, 0) + 1

    def name(key) -> str:
        code = getattr(key, "co_qualname", None)
        if code is not None:
            return f"{key.co_filename.rsplit('/', 2)[-1]}:{code}"
        owner = getattr(key, "__self__", None)
        owner = type(owner).__name__ + "." if owner is not None and not isinstance(owner, type(sys)) else ""
        return f"<builtin>:{owner}{getattr(key, '__qualname__', repr(key))}"

    def dump(signum, frame):
        sys.setprofile(None)
        try:
            merged: dict[str, int] = {}
            for key, count in list(counts.items()):
                label = name(key)
                merged[label] = merged.get(label, 0) + count
            path = os.path.join(directory, f"{os.getpid()}.json")
            with open(path + ".tmp", "w") as out:
                json.dump(merged, out)
            os.replace(path + ".tmp", path)
        finally:
            sys.setprofile(profile)

    signal.signal(signal.SIGUSR2, dump)
    threading.setprofile(profile)
    sys.setprofile(profile)


if _DIRECTORY:
    _install(_DIRECTORY)
