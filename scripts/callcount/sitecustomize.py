"""Counts the Python function calls a process makes, for scripts/scale.py --count-calls.

Python imports a module named ``sitecustomize`` at start-up from its path; scale.py puts
this directory first on the PYTHONPATH of the dyno processes it starts, with
DYNO_CALL_COUNTS set to a directory. Every call (of Python code and of built-ins, all
threads) then adds one to its function's count, and on SIGUSR2 the process writes the
counts so far to DIR/PID.json (atomically: a reader never sees half a file), as
``{"function": calls}``, with the garbage collector's runs and microseconds per
generation beside them (``<gc>:...``). A count is the same on a crowded machine as on a quiet one, so
the calls a request costs measure the work a node does for it apart from the machine.

Without DYNO_CALL_COUNTS it does nothing.
"""

import os

_DIRECTORY = os.environ.get("DYNO_CALL_COUNTS")


def _install(directory: str) -> None:
    import gc
    import json
    import signal
    import sys
    import threading
    import time

    counts: dict = {}  # code object -> calls
    builtins: dict = {}  # a built-in's qualified name -> calls (a bound method is a new
    # object at every attribute access: kept as keys, they would fill the heap)
    collector: dict = {}  # "<gc>:..." -> runs, microseconds
    get = counts.get
    get_builtin = builtins.get

    def profile(frame, event, arg):
        if event == "call":
            key = frame.f_code
            counts[key] = get(key, 0) + 1
        elif event == "c_call":
            key = arg.__qualname__
            builtins[key] = get_builtin(key, 0) + 1

    def name(code) -> str:
        return f"{code.co_filename.rsplit('/', 2)[-1]}:{code.co_qualname}"

    def dump(signum, frame):
        sys.setprofile(None)
        try:
            merged: dict[str, int] = {}
            for code, count in list(counts.items()):
                label = name(code)
                merged[label] = merged.get(label, 0) + count
            for qualname, count in list(builtins.items()):
                merged[f"<builtin>:{qualname}"] = count
            merged.update(collector)
            path = os.path.join(directory, f"{os.getpid()}.json")
            with open(path + ".tmp", "w") as out:
                json.dump(merged, out)
            os.replace(path + ".tmp", path)
        finally:
            sys.setprofile(profile)

    # The garbage collector's runs, which no call shows: how many of each generation,
    # and the microseconds they took.
    started = [0]

    def collecting(phase, info):
        if phase == "start":
            started[0] = time.perf_counter_ns()
        else:
            generation = info["generation"]
            runs = f"<gc>:generation {generation} collections"
            collector[runs] = collector.get(runs, 0) + 1
            took = f"<gc>:generation {generation} microseconds"
            collector[took] = collector.get(took, 0) + (time.perf_counter_ns() - started[0]) // 1000

    gc.callbacks.append(collecting)
    signal.signal(signal.SIGUSR2, dump)
    threading.setprofile(profile)
    sys.setprofile(profile)


if _DIRECTORY:
    _install(_DIRECTORY)
