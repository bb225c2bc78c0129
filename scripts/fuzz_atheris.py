#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris, libFuzzer) of what dyno reads from others.

Targets (the first argument):
  resp    the RESP request parser, fed the input in pieces (where a cut falls is in it)
  peer    the peer frame decoder, then the HELLO check and the request checks on what decodes
  config  the config loader (YAML text)
  pattern pub/sub patterns: Redis's glob against any channel

Each must do its job or refuse with its own error type: any other exception is a
crash, which libFuzzer reports with the input that caused it (written as crash-*).
The rest of the arguments are libFuzzer's (-runs=N, -max_total_time=S, a corpus
directory ...). tests/test_fuzz.py runs each target briefly; run longer by hand:

    .venv/bin/python scripts/fuzz_atheris.py resp -max_total_time=600
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atheris  # noqa: E402

with atheris.instrument_imports():
    import msgpack

    from dyno import commands, peer, pubsub, resp
    from dyno.config import ConfigError, parse_config


def fuzz_resp(data: bytes) -> None:
    cut = data[0] if data else 0
    data = data[1:]
    parser = resp.RequestParser(1 << 20, 1 << 20)
    requests = parser.feed(data[:cut]) + parser.feed(data[cut:])
    if parser.error is not None and not parser.error.startswith(b"-ERR Protocol error"):
        raise AssertionError(f"unexpected parser error {parser.error!r}")
    for argv in requests:
        if not (isinstance(argv, list) and argv and all(isinstance(arg, bytes) for arg in argv)):
            raise AssertionError(f"not a request: {argv!r}")
        commands.resolve(argv)  # an error line or a spec, never an exception


def fuzz_peer(data: bytes) -> None:
    try:
        frames = peer._decode(peer._unpacker(), data)
    except peer.PeerError:
        return
    for frame in frames:
        reason = peer.check_hello("dyn_o_mite", frame)
        if reason is not None and not isinstance(reason, str):
            raise AssertionError(f"check_hello gave {reason!r}")
        if isinstance(frame, list) and len(frame) == 5 and isinstance(frame[3], bytes) and isinstance(frame[4], int):
            if 0 < frame[4] <= 1000:
                requests = resp.whole_requests(frame[3], frame[4])
                if requests is not None:
                    commands.peer_refusal(requests, False)


def fuzz_config(data: bytes) -> None:
    try:
        parse_config(data.decode("utf-8", errors="replace"), "node.yml")
    except ConfigError:
        pass


def fuzz_pattern(data: bytes) -> None:
    half = len(data) // 2
    pubsub.glob_regex(data[:half][:64]).match(data[half:][:64])


TARGETS = {"resp": fuzz_resp, "peer": fuzz_peer, "config": fuzz_config, "pattern": fuzz_pattern}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    msgpack.packb(None)  # (imported under instrumentation for the peer target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
