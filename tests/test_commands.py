"""The command table against a real redis-server 7.0.

Redis is the authority on arity, key positions, write flags and error wording; each test
asks a live server (one per session, on a free port) the same question it asks
dyno.commands and compares the answers. Where dyno differs on purpose, the difference is
listed below with its reason, and nowhere else.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dyno import commands
from dyno.commands import COMMANDS, CommandSpec, Merge, Route

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

# --- where dyno deliberately differs from Redis 7.0 ------------------------------------------

#: Write flags that differ from Redis's COMMAND INFO flags.
WRITE_DIFFERENCES = {
    b"eval": "Redis flags scripts neither read nor write (the script decides); dyno must "
             "assume a script writes, so that it reaches every replica",
    b"evalsha": "as EVAL",
    b"fcall": "as EVAL",
    b"pfcount": "Redis flags it read-only but may-replicate: with one key it caches the count "
                "in the key and propagates itself, so every replica's bytes stay the same; dyno "
                "replicates it as a write (commands.is_write: several keys are a read)",
}

#: Where key_positions knowingly differs from COMMAND GETKEYS.
GETKEYS_DIFFERENCES = {
    b"pfmerge": "PFMERGE dst (no source) is a valid command, but Redis 7.0's key specs find "
                "no key in it and COMMAND GETKEYS fails; dyno routes it by dst",
}

#: Unsupported anyway: their legacy key range (COMMAND INFO) points at shard channels, which
#: the key specs mark as not keys, so COMMAND GETKEYS finds none.
SHARD_CHANNELS = {b"spublish", b"ssubscribe", b"sunsubscribe"}

#: Where resolve() refuses an argv for which COMMAND GETKEYS still finds keys.
RESOLVE_STRICTER = {
    b"mset": "an odd number of key/value arguments: MSET answers its arity error itself; "
             "dyno must answer it before splitting the pairs",
    b"msetnx": "as MSET",
    b"xread": "BLOCK is refused (a blocked read would stall a shared Redis connection)",
    b"xreadgroup": "as XREAD",
}


# --- a real redis-server and a raw RESP client -----------------------------------------------

class RedisError:
    """An error reply, kept as the exact bytes of its line."""

    def __init__(self, line: bytes) -> None:
        self.line = line

    def __repr__(self) -> str:
        return f"RedisError({self.line!r})"


class RawClient:
    """Speaks RESP2 over a plain socket, so that error lines are compared byte for byte."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.reader = self.sock.makefile("rb")

    def call(self, *argv: bytes | str):
        out = [b"*%d\r\n" % len(argv)]
        for arg in argv:
            arg = arg.encode() if isinstance(arg, str) else arg
            out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _read(self):
        line = self.reader.readline()
        kind, body = line[:1], line[1:-2]
        if kind == b"-":
            return RedisError(line)
        if kind == b"+":
            return body
        if kind == b":":
            return int(body)
        if kind == b"$":
            size = int(body)
            return None if size < 0 else self.reader.read(size + 2)[:-2]
        if kind == b"*":
            size = int(body)
            return None if size < 0 else [self._read() for _ in range(size)]
        raise AssertionError(f"unexpected reply line {line!r}")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis() -> Iterator[RawClient]:
    if not shutil.which(REDIS_SERVER):
        pytest.skip("redis-server is not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--databases", "1", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = None
    try:
        deadline = time.monotonic() + 10
        while client is None:
            try:
                client = RawClient(port)
                if client.call("PING") != b"PONG":
                    raise OSError("not ready")
            except OSError:
                if client is not None:
                    client.close()
                    client = None
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {port}")
                time.sleep(0.02)
        version = client.call("INFO", "server")
        if b"redis_version:7.0." not in version:
            pytest.skip("these tests compare with Redis 7.0")
        yield client
    finally:
        if client is not None:
            client.close()
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def live_info(redis: RawClient) -> dict[bytes, list]:
    """COMMAND's reply by full name (b"get", b"object|encoding")."""
    table = {}
    for row in redis.call("COMMAND"):
        table[row[0]] = row
        for sub in row[9]:
            table[sub[0]] = sub
    return table


def all_specs() -> list[CommandSpec]:
    specs = []
    for spec in COMMANDS.values():
        specs.append(spec)
        specs.extend((spec.subcommands or {}).values())
    return specs


def spec_for(argv: Sequence[bytes]) -> CommandSpec:
    """The row argv names, without resolve()'s validation."""
    spec = commands.lookup(argv[0])
    assert spec is not None
    if spec.subcommands and len(argv) > 1:
        spec = spec.subcommands[argv[1].lower()]
    return spec


def has_keys(spec: CommandSpec) -> bool:
    return spec.first_key != 0 or spec.movable_keys


def argv_of(spec: CommandSpec) -> list[bytes]:
    """The words that name a (sub)command: [b"get"], [b"object", b"encoding"]."""
    return spec.name.split(b"|")


# --- the table is Redis's ---------------------------------------------------------------------

def test_every_row_agrees_with_command_info(live_info):
    mismatches = []
    for spec in all_specs():
        row = live_info.get(spec.name)
        if row is None:
            mismatches.append((spec.name, "unknown to Redis"))
            continue
        name, arity, flags, first, last, step = row[:6]
        ours = (spec.arity, spec.first_key, spec.last_key, spec.step, spec.movable_keys)
        theirs = (arity, first, last, step, b"movablekeys" in flags)
        if ours != theirs:
            mismatches.append((spec.name, ours, theirs))
        redis_write = b"write" in flags
        if spec.name in WRITE_DIFFERENCES:
            assert spec.write != redis_write, f"{spec.name}: no longer differs, drop the entry"
        elif spec.write != redis_write:
            mismatches.append((spec.name, "write", spec.write, redis_write))
        live_subs = {sub[0].split(b"|")[1] for sub in row[9]}
        if live_subs != set(spec.subcommands or ()):
            mismatches.append((spec.name, "subcommands", live_subs ^ set(spec.subcommands or ())))
    assert mismatches == []


def test_every_command_redis_knows_is_in_the_table(live_info):
    ours = {spec.name for spec in all_specs()}
    assert set(live_info) - ours == set()
    assert ours - set(live_info) == set()


def test_table_invariants():
    for spec in all_specs():
        assert spec.name == spec.name.lower()
        if spec.route is Route.UNSUPPORTED:
            assert spec.reason and "\r" not in spec.reason and "\n" not in spec.reason
            assert spec.unsupported_error_line.startswith(b"-ERR ")
        else:
            assert not spec.reason
        if spec.route is Route.MULTI_KEY:
            assert spec.merge is not None and has_keys(spec)
        elif spec.merge is not None:
            assert spec.name == b"dbsize" and spec.merge is Merge.SUM
        if spec.route is Route.KEY and not spec.subcommands:
            assert has_keys(spec), spec.name
        if spec.subcommands:
            assert all(sub.name.startswith(spec.name + b"|") for sub in spec.subcommands.values())


@pytest.mark.parametrize("name, route, merge", [
    (b"get", Route.KEY, None), (b"rename", Route.KEY, None), (b"smove", Route.KEY, None),
    (b"sinterstore", Route.KEY, None), (b"zunionstore", Route.KEY, None),
    (b"lmove", Route.KEY, None), (b"eval", Route.KEY, None), (b"pfmerge", Route.KEY, None),
    (b"bitop", Route.KEY, None), (b"msetnx", Route.KEY, None), (b"georadius", Route.KEY, None),
    (b"xread", Route.KEY, None), (b"ttl", Route.KEY, None),
    (b"mget", Route.MULTI_KEY, Merge.MGET), (b"mset", Route.MULTI_KEY, Merge.MSET),
    (b"del", Route.MULTI_KEY, Merge.SUM), (b"unlink", Route.MULTI_KEY, Merge.SUM),
    (b"exists", Route.MULTI_KEY, Merge.SUM), (b"touch", Route.MULTI_KEY, Merge.SUM),
    (b"ping", Route.LOCAL, None), (b"echo", Route.LOCAL, None), (b"quit", Route.LOCAL, None),
    (b"hello", Route.LOCAL, None), (b"select", Route.LOCAL, None), (b"command", Route.LOCAL, None),
    (b"info", Route.LOCAL, None), (b"auth", Route.LOCAL, None),
    (b"dbsize", Route.ONE_REPLICA, Merge.SUM), (b"keys", Route.ONE_REPLICA, None),
    (b"scan", Route.ONE_REPLICA, None), (b"randomkey", Route.ONE_REPLICA, None),
    (b"flushdb", Route.ALL_REPLICAS, None), (b"flushall", Route.ALL_REPLICAS, None),
    (b"multi", Route.LOCAL, None), (b"exec", Route.LOCAL, None),
    (b"watch", Route.LOCAL, None), (b"subscribe", Route.LOCAL, None),
    (b"publish", Route.LOCAL, None), (b"blpop", Route.LOCAL, None),
    (b"bzpopmin", Route.LOCAL, None), (b"blmove", Route.LOCAL, None),
    (b"wait", Route.LOCAL, None), (b"config", Route.LOCAL, None),
    (b"slaveof", Route.UNSUPPORTED, None), (b"debug", Route.UNSUPPORTED, None),
    (b"shutdown", Route.UNSUPPORTED, None), (b"migrate", Route.UNSUPPORTED, None),
    (b"move", Route.UNSUPPORTED, None), (b"swapdb", Route.UNSUPPORTED, None),
    (b"cluster", Route.LOCAL, None), (b"monitor", Route.UNSUPPORTED, None),
])
def test_routes_of_design_section_5(name, route, merge):
    spec = commands.lookup(name)
    assert (spec.route, spec.merge) == (route, merge)


def test_read_write_classes_of_design_section_4():
    for name in [b"sinterstore", b"sunionstore", b"sdiffstore", b"zunionstore", b"zinterstore",
                 b"zdiffstore", b"zrangestore", b"geosearchstore", b"sort", b"smove",
                 b"rpoplpush", b"lmove", b"restore", b"expire", b"pfadd", b"pfmerge", b"eval"]:
        assert commands.lookup(name).write, name
    for name in [b"ttl", b"pttl", b"get", b"sort_ro", b"eval_ro", b"georadius_ro"]:
        assert not commands.lookup(name).write, name
    # PFCOUNT of one key writes its cached count (Redis propagates it); of several, not.
    pfcount = commands.lookup(b"pfcount")
    assert commands.is_write(pfcount, [b"pfcount", b"h"])
    assert not commands.is_write(pfcount, [b"pfcount", b"{h}1", b"{h}2"])
    sort = commands.lookup(b"sort")
    assert not commands.is_write(sort, [b"sort", b"k", b"limit", b"0", b"1", b"alpha"])
    assert commands.is_write(sort, [b"sort", b"k", b"by", b"w_*", b"store", b"dst"])
    georadius = commands.lookup(b"georadius")
    assert not commands.is_write(georadius, [b"georadius", b"k", b"0", b"0", b"1", b"km"])
    stored = [b"georadius", b"k", b"0", b"0", b"1", b"km", b"storedist", b"d"]
    assert commands.is_write(georadius, stored)
    assert commands.is_write(commands.lookup(b"set"), [b"set", b"k", b"v"])


def test_lookup_is_case_insensitive():
    get = commands.lookup(b"get")
    assert get is not None
    assert commands.lookup(b"GET") is get and commands.lookup(b"GeT") is get
    assert commands.lookup(b"ZRangeByScore") is commands.lookup(b"zrangebyscore")
    assert commands.lookup(b"gett") is None and commands.lookup(b"") is None
    sub = commands.resolve([b"oBjEcT", b"EnCoDiNg", b"k"])
    assert sub is COMMANDS[b"object"].subcommands[b"encoding"]
    assert commands.resolve([b"xinfo", b"STREAM", b"k"]).name == b"xinfo|stream"


def test_colocated():
    owner = {b"a": 1, b"b": 1, b"c": 2}.__getitem__
    assert commands.colocated([], owner) and commands.colocated([b"c"], owner)
    assert commands.colocated([b"a", b"b"], owner)
    assert not commands.colocated([b"a", b"b", b"c"], owner)


# --- key positions: the same keys as COMMAND GETKEYS ------------------------------------------

def compare_keys(redis: RawClient, argv: list[bytes]) -> None:
    """Ask Redis for argv's keys and check key_positions and resolve() against the answer."""
    spec = spec_for(argv)
    reply = redis.call("COMMAND", "GETKEYS", *argv)
    resolved = commands.resolve(argv)
    if isinstance(reply, RedisError):
        if reply.line == b"-ERR Invalid number of arguments specified for command\r\n":
            assert resolved == spec.arity_error_line, argv
        elif reply.line == b"-ERR Invalid arguments specified for command\r\n":
            # A syntax error for whichever Redis gets the request: dyno finds no keys and
            # lets Redis say what is wrong (see Route.KEY).
            if spec.name in GETKEYS_DIFFERENCES and len(argv) == 2:
                assert commands.key_positions(spec, argv) == [1]
            else:
                assert commands.key_positions(spec, argv) == [], argv
        elif reply.line == b"-ERR The command has no key arguments\r\n":
            assert spec.name in SHARD_CHANNELS, argv
        else:
            raise AssertionError(f"{argv}: unexpected {reply}")
        return
    if isinstance(resolved, bytes):
        assert spec.route is Route.UNSUPPORTED or spec.name in RESOLVE_STRICTER, (argv, resolved)
    assert commands.keys(spec, argv) == reply, argv


# Commands dyno refuses (MIGRATE's KEYS corner cases, ...) never have their keys looked at.
KEYED = [spec for spec in all_specs() if has_keys(spec) and spec.route is not Route.UNSUPPORTED]


@pytest.mark.parametrize("spec", KEYED, ids=[s.name.decode() for s in KEYED])
def test_key_positions_for_every_argc(redis, spec):
    """Every keyed command with distinct words, at every argc around its arity."""
    base = argv_of(spec)
    low = abs(spec.arity)
    for argc in range(max(2, len(base), low - 1), low + 7):
        words = [b"w%d" % i for i in range(argc - len(base))]
        compare_keys(redis, base + words)
        # numkeys-style commands: every count that could fit, and the malformed ones
        for count in [b"0", b"1", b"2", b"3", b"-1", b"+2", b"02", b" 1", b"1x"]:
            for at in (1, 2):
                if len(base) == 1 and at < argc and spec.movable_keys:
                    argv = base + words
                    argv[at] = count
                    compare_keys(redis, argv)


def test_commands_without_keys(redis):
    for spec in all_specs():
        if has_keys(spec) or spec.subcommands:
            continue
        argv = argv_of(spec) + [b"x", b"y", b"z"][: max(1, abs(spec.arity) - len(argv_of(spec)))]
        reply = redis.call("COMMAND", "GETKEYS", *argv)
        assert isinstance(reply, RedisError) and reply.line == (
            b"-ERR The command has no key arguments\r\n"), argv
        assert commands.key_positions(spec, argv) == [] and commands.keys(spec, argv) == []


#: Argvs where Redis 7.0's answer is surprising, with that answer (None: GETKEYS fails).
GETKEYS_QUIRKS = [
    ([b"sort", b"k", b"store", b"store", b"x"], [b"k", b"x"]),  # STORE's argument is rescanned
    ([b"sort", b"k", b"limit", b"0", b"store", b"d"], [b"k"]),   # LIMIT eats two arguments
    ([b"zunionstore", b"d", b"1", b"a"], [b"d", b"a"]),
    ([b"zunionstore", b"d", b"+1", b"a"], [b"a", b"d"]),  # key spec fails, atoi() path: dst last
    ([b"zunionstore", b"d", b"0", b"a"], None),
    ([b"zunionstore", b"d", b"4294967297", b"a"], [b"d", b"a"]),  # (int)numkeys is 1
    ([b"zunionstore", b"d", b"2147483647", b"a"], None),  # first + numkeys - 1 overflows
    ([b"eval", b"s", b"1abc", b"k"], [b"k"]),
    ([b"eval", b"s", b"0"], []),  # EVAL may have no keys: an empty answer, not an error
    ([b"eval", b"s", b"5", b"k"], []),
    ([b"georadius", b"k", b"0", b"0", b"1", b"m", b"STOREDIST", b"b", b"STORE", b"a"],
     [b"k", b"a", b"b"]),  # STORE's key spec comes first
    ([b"georadius", b"k", b"0", b"0", b"1", b"m", b"STORE", b"a", b"STORE", b"c"], [b"k", b"a"]),
    ([b"georadius", b"k", b"0", b"0", b"1", b"m", b"STORE"], [b"k"]),
    ([b"xread", b"count", b"streams", b"STREAMS", b"a", b"0"], [b"STREAMS"]),
    ([b"xread", b"streams", b"a", b"b", b"c", b"0", b"1"], [b"a", b"b"]),  # odd: half, rounded down
    ([b"xreadgroup", b"STREAMS", b"a", b"b", b"c", b"d", b"STREAMS", b"e"], [b"a", b"b", b"c"]),
    ([b"migrate", b"h", b"1", b"k", b"0", b"1"], [b"k"]),
    ([b"migrate", b"h", b"1", b"", b"0", b"1", b"AUTH2", b"u", b"p", b"KEYS", b"a", b"b"],
     [b"a", b"b"]),
    ([b"migrate", b"h", b"1", b"", b"0", b"1", b"AUTH", b"KEYS", b"x", b"KEYS", b"a"], [b"a"]),
    ([b"migrate", b"h", b"1", b"k", b"0", b"1", b"KEYS", b"a", b"b"], None),
    ([b"migrate", b"keys", b"1", b"k", b"0", b"1"], [b"k"]),
    ([b"migrate", b"h", b"1", b"", b"0", b"1", b"AUTH2", b"u", b"KEYS", b"a"], [b""]),
    ([b"xreadgroup", b"BLOCK", b"STREAMS", b"a", b"b", b"c", b"d", b"STREAMS", b"x"], None),
    ([b"pfmerge", b"d"], None),  # see GETKEYS_DIFFERENCES
]


@pytest.mark.parametrize("argv, expected", GETKEYS_QUIRKS, ids=lambda v: repr(v)[:60])
def test_getkeys_quirks(redis, argv, expected):
    reply = redis.call("COMMAND", "GETKEYS", *argv)
    assert (None if isinstance(reply, RedisError) else reply) == expected
    compare_keys(redis, argv)


GENERIC_WORDS = [b"k1", b"k2", b"k3", b"0", b"1", b"2", b"-1", b"", b"\xff\xfe", b"x\x00"]
#: The words each movable-keys command looks for, so that generated argvs hit its corners.
MOVABLE_WORDS = {
    "numkeys": [b"0", b"1", b"2", b"3", b"4", b"-1", b"+1", b" 2", b"02", b"2x", b"1\x00",
                b"4294967298", b"2147483647", b"-4294967295", b"99999999999999999999", b"\t\v2"],
    b"sort": [b"STORE", b"store", b"LIMIT", b"GET", b"by", b"ALPHA", b"STORE\x00x", b"Limit\x00"],
    b"georadius": [b"STORE", b"StoreDist", b"store\x00", b"STOREDIST", b"WITHDIST", b"COUNT"],
    b"xread": [b"STREAMS", b"streams", b"COUNT", b"BLOCK", b"GROUP", b"NOACK", b"Streams\x00"],
    b"migrate": [b"KEYS", b"keys", b"COPY", b"REPLACE", b"AUTH", b"AUTH2", b"", b"keys\x00"],
}
MOVABLE_WORDS[b"sort_ro"] = MOVABLE_WORDS[b"sort"]
MOVABLE_WORDS[b"georadiusbymember"] = MOVABLE_WORDS[b"georadius"]
MOVABLE_WORDS[b"xreadgroup"] = MOVABLE_WORDS[b"xread"]
MOVABLE = [spec for spec in KEYED if spec.movable_keys]


def words_for(spec: CommandSpec) -> st.SearchStrategy[bytes]:
    own = MOVABLE_WORDS.get(spec.name, MOVABLE_WORDS["numkeys"])
    return st.one_of(st.sampled_from(own), st.sampled_from(own + GENERIC_WORDS),
                     st.binary(min_size=1, max_size=4))


@pytest.mark.parametrize("spec", MOVABLE, ids=lambda s: s.name.decode())
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_key_positions_of_movable_keys_commands(redis, spec, data):
    """numkeys, STORE, STREAMS, KEYS ...: argvs built from the words the command looks for."""
    base = argv_of(spec)
    argc = data.draw(st.integers(max(2, abs(spec.arity) - 1), abs(spec.arity) + 8), label="argc")
    argv = base + data.draw(st.lists(words_for(spec), min_size=argc - 1, max_size=argc - 1),
                            label="args")
    finder = spec.find_keys.__qualname__
    if finder.startswith("_numkeys") and data.draw(st.booleans(), label="consistent numkeys"):
        at = 2 if spec.name in (b"eval", b"evalsha", b"eval_ro", b"evalsha_ro", b"fcall",
                                b"fcall_ro", b"blmpop", b"bzmpop", b"zunionstore",
                                b"zinterstore", b"zdiffstore") else 1
        if at < len(argv):
            argv[at] = b"%d" % data.draw(st.integers(0, len(argv) - at), label="numkeys")
    argv[0] = data.draw(st.sampled_from([argv[0], argv[0].upper()]), label="name case")
    compare_keys(redis, argv)


words = st.one_of(st.sampled_from(GENERIC_WORDS), st.binary(min_size=1, max_size=6))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_key_positions_of_any_keyed_command(redis, data):
    spec = data.draw(st.sampled_from(KEYED), label="command")
    base = argv_of(spec)
    argc = data.draw(st.integers(max(2, len(base), abs(spec.arity) - 1), abs(spec.arity) + 6))
    argv = base + data.draw(st.lists(words, min_size=argc - len(base), max_size=argc - len(base)))
    compare_keys(redis, argv)


# --- error lines: byte for byte what Redis replies --------------------------------------------

def wrong_argcs(arity: int) -> list[int]:
    """Argument counts Redis rejects before running anything (never a valid call)."""
    if arity > 0:
        return [n for n in (arity - 1, arity + 1, arity + 3) if n >= 1]
    return list(range(1, -arity))


@pytest.mark.parametrize("spec", all_specs(), ids=lambda s: s.name.decode())
def test_wrong_number_of_arguments(redis, live_info, spec):
    base = argv_of(spec)
    arity = live_info[spec.name][1]  # the server's arity decides what is safe to send
    for argc in wrong_argcs(arity):
        if argc < len(base):
            continue
        argv = base + [b"a%d" % i for i in range(argc - len(base))]
        if len(base) == 1 and argc == 2 and spec.subcommands:
            continue  # argv[1] would be read as a subcommand
        reply = redis.call(*argv)
        assert isinstance(reply, RedisError), argv
        assert commands.resolve(argv) == reply.line, argv
        assert commands.arity_error(spec) == reply.line


def test_arity_error_wording():
    assert commands.arity_error(b"get") == b"-ERR wrong number of arguments for 'get' command\r\n"
    assert commands.arity_error("GET") == commands.arity_error(commands.lookup(b"get"))
    setname = commands.lookup(b"client").subcommands[b"setname"]
    assert commands.arity_error(setname) == (
        b"-ERR wrong number of arguments for 'client|setname' command\r\n")


@pytest.mark.parametrize("argv", [
    [b"mset", b"a", b"1", b"b"], [b"MSETNX", b"a"], [b"mset", b"a", b"1", b"b", b"2", b"c"],
    [b"select", b"x"], [b"select", b"1.0"], [b"select", b"-0"], [b"select", b"99999999999"],
    [b"select", b"99999999999999999999999"],
])
def test_errors_of_per_command_checks(redis, argv):
    reply = redis.call(*argv)
    assert isinstance(reply, RedisError)
    assert commands.resolve(argv) == reply.line


def test_dyno_refusals():
    assert commands.resolve([b"config", b"set", b"maxmemory", b"1"]).startswith(
        b"-ERR 'CONFIG SET' is not supported in a dyno cluster: ")
    assert commands.resolve([b"select", b"3"]).startswith(
        b"-ERR 'SELECT 3' is not supported in a dyno cluster: ")
    assert commands.resolve([b"select", b"0"]) is commands.lookup(b"select")
    block = [b"XREAD", b"COUNT", b"1", b"BLOCK", b"0", b"STREAMS", b"s", b"$"]
    assert commands.resolve(block) is commands.lookup(b"xread") and commands.blocks(block)  # dyno.blocking
    assert not commands.blocks([b"XREAD", b"COUNT", b"1", b"STREAMS", b"block", b"$"])
    group = [b"xreadgroup", b"group", b"g", b"c", b"block", b"10", b"streams", b"s", b">"]
    assert commands.resolve(group) is commands.lookup(b"xreadgroup") and commands.blocks(group)  # dyno.groups
    assert isinstance(commands.resolve([b"xread", b"count", b"1", b"streams", b"s", b"0"]),
                      CommandSpec)
    for spec in all_specs():
        if spec.route is Route.UNSUPPORTED:
            line = spec.unsupported_error_line
            assert line.endswith(b"\r\n") and b"\r" not in line[:-2] and b"\n" not in line[:-2]


def test_resolve_returns_the_subcommand():
    spec = commands.resolve([b"CLIENT", b"SETNAME", b"me"])
    assert spec.name == b"client|setname" and spec.route is Route.LOCAL
    assert commands.resolve([b"command"]) is commands.lookup(b"command")
    assert commands.resolve([b"memory", b"usage", b"k"]).route is Route.KEY
    assert commands.resolve([b"script", b"load", b"return 1"]).route is Route.ALL_REPLICAS


def test_dyno_config_is_not_a_redis_command():
    """The coordinator answers Dynomite's DYNO_CONFIG:* settings where resolve() reports an
    unknown command, so that they cost nothing on the way of Redis commands."""
    line = commands.resolve([b"DYNO_CONFIG:CONN_CONSISTENCY", b"DC_QUORUM"])
    assert line.startswith(b"-ERR unknown command 'DYNO_CONFIG:CONN_CONSISTENCY'")


CONTAINERS = [spec for spec in COMMANDS.values() if spec.subcommands]


@pytest.mark.parametrize("spec", CONTAINERS, ids=lambda s: s.name.decode())
def test_unknown_subcommand(redis, spec):
    name = spec.name
    for argv in ([name, b"nosuch"], [name.upper(), b"NoSuch", b"x"],
                 [name.capitalize(), b"x" * 200, b"y"], [name, b"a\r\nb"], [name, b"ab\x00cd"],
                 [name, b""]):
        reply = redis.call(*argv)
        assert isinstance(reply, RedisError)
        assert commands.resolve(argv) == reply.line, argv


command_names = st.binary(min_size=0, max_size=140).filter(
    lambda name: b"\x00" not in name and commands.lookup(name) is None)
arguments = st.lists(
    st.one_of(st.binary(max_size=150), st.sampled_from([b"a\r\nb", b"x\x00y", b""])), max_size=12)


@settings(max_examples=200, deadline=None)
@given(name=command_names, args=arguments)
def test_unknown_command(redis, name, args):
    argv = [name, *args]
    reply = redis.call(*argv)
    assert isinstance(reply, RedisError)
    assert commands.resolve(argv) == reply.line
    assert commands.unknown_command_error(argv) == reply.line


def test_unknown_command_examples(redis):
    for argv in ([b"foo", b"a", b"b"], [b"foo"], [b"FOO", b"x" * 300], [b"get\r\nx", b"\r\n"],
                 [b"foo"] + [b"abcdefghij"] * 20, [b"f" * 200, b"a"]):
        reply = redis.call(*argv)
        assert commands.resolve(argv) == reply.line, argv
    assert commands.unknown_command_error([b"foo", b"a", b"b"]) == (
        b"-ERR unknown command 'foo', with args beginning with: 'a' 'b' \r\n")


def test_what_a_peer_may_run():
    """dyno.peer refuses REQUEST frames with anything replication does not send."""
    ok = [[b"SET", b"a", b"1"], [b"SELECT", b"15"], [b"MSET", b"a", b"v"], [b"SELECT", b"0"],
          [b"EVAL", b"return 1", b"0"], [b"EVALSHA", b"x", b"0"], [b"SCRIPT", b"LOAD", b"x"],
          [b"scan", b"0"], [b"DUMP", b"a"], [b"OBJECT", b"ENCODING", b"a"]]
    assert commands.peer_refusal(ok, flush_enabled=False) is None
    for argv, refused in (([b"CONFIG", b"SET", b"x", b"y"], b"CONFIG SET"), ([b"shutdown"], b"shutdown"),
                          ([b"MODULE", b"LOAD", b"m"], b"MODULE LOAD"), ([b"PING"], b"PING"),
                          ([b"NOPE"], b"NOPE"), ([b"CONFIG"], b"CONFIG")):
        assert commands.peer_refusal([*ok, argv], flush_enabled=True) == refused
    assert commands.peer_refusal([[b"FLUSHALL"]], flush_enabled=False) == b"FLUSHALL"
    assert commands.peer_refusal([[b"FLUSHALL"]], flush_enabled=True) is None


_PEER_ARGVS = [[b"SET", b"a", b"1"], [b"set", b"a", b"1"], [b"SELECT", b"15"], [b"MSET", b"a", b"v"],
               [b"SCRIPT", b"LOAD", b"x"], [b"SCRIPT", b"KILL"], [b"CONFIG", b"SET", b"x", b"y"],
               [b"FLUSHALL"], [b"PING"], [b"NOPE"], [b"MULTI"], [b"EXEC"], [b"GET", b"a"]]


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(st.tuples(st.lists(st.sampled_from(_PEER_ARGVS), min_size=1, max_size=6),
                                 st.booleans()), min_size=1, max_size=12))
def test_a_peers_frame_is_refused_or_allowed_alike_whatever_frames_came_before(frames):
    """peer_refusal remembers the sets of names it allowed whole: a later frame gets the
    verdict it would get first thing (the same names with a subcommand refused, or
    with MULTI left open, or FLUSHALL where flush is off, are never let through)."""
    for frame, flush_enabled in frames:
        commands._ALLOWED_NAME_SETS.clear()
        first = commands.peer_refusal(frame, flush_enabled)
        for earlier, earlier_flush in frames:  # whatever was seen since
            commands.peer_refusal(earlier, earlier_flush)
        assert commands.peer_refusal(frame, flush_enabled) == first, frame


def test_a_peer_may_send_a_transaction_only_with_its_brackets_whole():
    """MULTI left open on the node's shared Redis connection would queue every other
    client's commands: a frame's MULTI must be closed by its EXEC, none nested."""
    block = [[b"MULTI"], [b"SET", b"k", b"1"], [b"EXEC"]]
    assert commands.peer_refusal(block, flush_enabled=False) is None
    assert commands.peer_refusal(block + [[b"GET", b"k"]] + block, flush_enabled=False) is None
    for frame in ([[b"MULTI"], [b"SET", b"k", b"1"]], [[b"SET", b"k", b"1"], [b"EXEC"]],
                  [[b"MULTI"], [b"MULTI"], [b"EXEC"], [b"EXEC"]], [[b"exec"], [b"multi"]]):
        assert commands.peer_refusal(frame, flush_enabled=False) == b"MULTI without its EXEC", frame
    assert commands.peer_refusal([[b"MULTI"], [b"DISCARD"]], flush_enabled=False) is not None
