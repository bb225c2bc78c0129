"""dyno.rewrite: relative expiries made absolute (EXPIRE -> PEXPIREAT, SET EX -> SET PXAT ...).

* Unit tests pin every form: what each command becomes, that flags and options are carried
  over in any case and order, and every request that must go unchanged (already absolute,
  no expiry, or one Redis would refuse).
* Property tests against a real redis-server: commands of each family with valid and invalid
  arguments run twice, the original on one key and the rewrite (or the original, when there
  is none) on a twin key in the same state. Replies must be byte-identical, errors included;
  the data must be the same; a rewrite's deadline must be exactly now_ms + relative and the
  original's within a few hundred ms of it.

More examples: DYNO_REWRITE_EXAMPLES=2000 .venv/bin/python -m pytest -q tests/test_rewrite.py
(the number is per family; five families).
"""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import differential as d

from dyno.rewrite import absolute_expiry

EXAMPLES = int(os.environ.get("DYNO_REWRITE_EXAMPLES", "80"))
integration = pytest.mark.integration
NOW = 1_700_000_000_000
LLONG_MAX = 2**63 - 1
LLONG_MIN = -(2**63)
SECONDS_MAX = LLONG_MAX // 1000  # C's LLONG_MAX / 1000
YEAR_MS = 365 * 24 * 3600 * 1000  # dyno.rewrite leaves deadlines this close to overflow alone


def ms(value: int) -> bytes:
    return b"%d" % value


def rewrite(*argv: bytes) -> list[bytes] | None:
    return absolute_expiry(list(argv), NOW)


# --------------------------------------------------------------------------- what becomes what

REWRITES = [
    # EXPIRE / PEXPIRE -> PEXPIREAT, flags as given
    ((b"EXPIRE", b"k", b"100"), [b"PEXPIREAT", b"k", ms(NOW + 100_000)]),
    ((b"expire", b"k", b"100", b"nx"), [b"PEXPIREAT", b"k", ms(NOW + 100_000), b"nx"]),
    ((b"ExPiRe", b"k", b"1", b"XX", b"gt"), [b"PEXPIREAT", b"k", ms(NOW + 1000), b"XX", b"gt"]),
    ((b"EXPIRE", b"k", b"5", b"LT", b"xx", b"LT"), [b"PEXPIREAT", b"k", ms(NOW + 5000), b"LT", b"xx", b"LT"]),
    ((b"PEXPIRE", b"k", b"1500"), [b"PEXPIREAT", b"k", ms(NOW + 1500)]),
    ((b"pexpire", b"k", b"1", b"GT"), [b"PEXPIREAT", b"k", ms(NOW + 1), b"GT"]),
    # EXPIRE takes 0 and negative values (they delete the key; so does PEXPIREAT in the past)
    ((b"EXPIRE", b"k", b"0"), [b"PEXPIREAT", b"k", ms(NOW)]),
    ((b"EXPIRE", b"k", b"-5"), [b"PEXPIREAT", b"k", ms(NOW - 5000)]),
    ((b"PEXPIRE", b"k", b"-1"), [b"PEXPIREAT", b"k", ms(NOW - 1)]),
    ((b"EXPIRE", b"k", b"-%d" % SECONDS_MAX), [b"PEXPIREAT", b"k", ms(NOW - SECONDS_MAX * 1000)]),
    ((b"PEXPIRE", b"k", ms(LLONG_MIN)), [b"PEXPIREAT", b"k", ms(NOW + LLONG_MIN)]),
    # SETEX / PSETEX -> SET PXAT
    ((b"SETEX", b"k", b"10", b"v"), [b"SET", b"k", b"v", b"PXAT", ms(NOW + 10_000)]),
    ((b"setex", b"k", b"1", b"EX"), [b"SET", b"k", b"EX", b"PXAT", ms(NOW + 1000)]),
    ((b"PSETEX", b"k", b"250", b"v"), [b"SET", b"k", b"v", b"PXAT", ms(NOW + 250)]),
    ((b"psetex", b"k", b"1", b"v"), [b"SET", b"k", b"v", b"PXAT", ms(NOW + 1)]),
    # SET ... EX/PX -> SET ... PXAT, the other options kept in their order
    ((b"SET", b"k", b"v", b"EX", b"100"), [b"SET", b"k", b"v", b"PXAT", ms(NOW + 100_000)]),
    ((b"set", b"k", b"v", b"px", b"100"), [b"SET", b"k", b"v", b"PXAT", ms(NOW + 100)]),
    ((b"SeT", b"k", b"v", b"nx", b"Ex", b"3", b"get"), [b"SET", b"k", b"v", b"nx", b"get", b"PXAT", ms(NOW + 3000)]),
    ((b"SET", b"k", b"v", b"GET", b"XX", b"PX", b"7"), [b"SET", b"k", b"v", b"GET", b"XX", b"PXAT", ms(NOW + 7)]),
    ((b"SET", b"k", b"v", b"NX", b"NX", b"GET", b"GET", b"EX", b"1"),
     [b"SET", b"k", b"v", b"NX", b"NX", b"GET", b"GET", b"PXAT", ms(NOW + 1000)]),
    # a repeated expiry option: the last value wins, earlier ones are not even parsed
    ((b"SET", b"k", b"v", b"EX", b"abc", b"EX", b"20"), [b"SET", b"k", b"v", b"PXAT", ms(NOW + 20_000)]),
    ((b"SET", b"k", b"v", b"PX", b"-1", b"NX", b"px", b"5"), [b"SET", b"k", b"v", b"NX", b"PXAT", ms(NOW + 5)]),
    # option names as values are values
    ((b"SET", b"k", b"EX", b"EX", b"9"), [b"SET", b"k", b"EX", b"PXAT", ms(NOW + 9000)]),
    ((b"SET", b"NX", b"GET", b"EX", b"9"), [b"SET", b"NX", b"GET", b"PXAT", ms(NOW + 9000)]),
    # GETEX EX/PX -> GETEX PXAT
    ((b"GETEX", b"k", b"EX", b"60"), [b"GETEX", b"k", b"PXAT", ms(NOW + 60_000)]),
    ((b"getex", b"k", b"px", b"60"), [b"GETEX", b"k", b"PXAT", ms(NOW + 60)]),
    ((b"GetEx", b"k", b"EX", b"x", b"ex", b"2"), [b"GETEX", b"k", b"PXAT", ms(NOW + 2000)]),
    # RESTORE ttl -> absolute ttl + ABSTTL, options kept
    ((b"RESTORE", b"k", b"100", b"payload"), [b"RESTORE", b"k", ms(NOW + 100), b"payload", b"ABSTTL"]),
    ((b"restore", b"k", b"1", b"p", b"replace", b"IDLETIME", b"0", b"REPLACE"),
     [b"RESTORE", b"k", ms(NOW + 1), b"p", b"replace", b"IDLETIME", b"0", b"REPLACE", b"ABSTTL"]),
    ((b"RESTORE", b"k", b"5000", b"p", b"FREQ", b"255"),
     [b"RESTORE", b"k", ms(NOW + 5000), b"p", b"FREQ", b"255", b"ABSTTL"]),
    ((b"RESTORE", b"k", b"5", b"p", b"IDLETIME", b"1", b"idletime", b"2"),
     [b"RESTORE", b"k", ms(NOW + 5), b"p", b"IDLETIME", b"1", b"idletime", b"2", b"ABSTTL"]),
    # the largest values that stay a year clear of overflow
    ((b"PEXPIRE", b"k", ms(LLONG_MAX - YEAR_MS - NOW)), [b"PEXPIREAT", b"k", ms(LLONG_MAX - YEAR_MS)]),
    ((b"SET", b"k", b"v", b"PX", ms(LLONG_MAX - YEAR_MS - NOW)),
     [b"SET", b"k", b"v", b"PXAT", ms(LLONG_MAX - YEAR_MS)]),
]


@pytest.mark.parametrize(("argv", "expected"), REWRITES, ids=[b" ".join(a).decode() for a, _ in REWRITES])
def test_rewrites(argv, expected):
    assert rewrite(*argv) == expected


UNCHANGED = [
    # no relative expiry at all: the hot path
    (b"SET", b"k", b"v"),
    (b"GET", b"k"),
    (b"SET", b"k", b"v", b"NX"),
    (b"SET", b"k", b"v", b"NX", b"GET"),
    (b"GETEX", b"k"),
    (b"GETEX", b"k", b"PERSIST"),
    (b"DEL", b"k", b"EX", b"100"),
    (b"RESTORE", b"k", b"0", b"p"),  # 0: no expiry
    (b"RESTORE", b"k", b"0", b"p", b"REPLACE"),
    (b"SETRANGE", b"k", b"100", b"v"),
    (b"SETNX", b"k", b"v"),
    # already absolute
    (b"EXPIREAT", b"k", b"100"),
    (b"PEXPIREAT", b"k", b"100"),
    (b"SET", b"k", b"v", b"EXAT", b"100"),
    (b"SET", b"k", b"v", b"PXAT", b"100"),
    (b"SET", b"k", b"v", b"KEEPTTL"),
    (b"GETEX", b"k", b"EXAT", b"100"),
    (b"GETEX", b"k", b"PXAT", b"100"),
    (b"RESTORE", b"k", b"100", b"p", b"ABSTTL"),
    (b"RESTORE", b"k", b"100", b"p", b"absttl", b"REPLACE"),
    # wrong arity
    (b"EXPIRE", b"k"),
    (b"SETEX", b"k", b"10"),
    (b"SETEX", b"k", b"10", b"v", b"extra"),
    (b"PSETEX", b"k", b"10", b"v", b"v"),
    (b"RESTORE", b"k", b"10"),
    # not an integer as Redis's string2ll reads one
    *[(b"EXPIRE", b"k", bad) for bad in (b"", b"abc", b"1.5", b"+5", b"05", b"-0", b"00", b" 5", b"5 ", b"1e3",
                                          b"0x10", b"1_000", b"\xd9\xa3", b"5\x00", b"9223372036854775808",
                                          b"-9223372036854775809", b"000000000000000000001")],
    # invalid expire times: <= 0 for SET/SETEX/PSETEX/GETEX
    (b"SET", b"k", b"v", b"EX", b"0"),
    (b"SET", b"k", b"v", b"PX", b"-1"),
    (b"SETEX", b"k", b"0", b"v"),
    (b"PSETEX", b"k", b"-5", b"v"),
    (b"GETEX", b"k", b"EX", b"0"),
    (b"GETEX", b"k", b"PX", b"-100"),
    (b"SET", b"k", b"v", b"EX", b"1", b"EX", b"0"),  # the last one counts
    (b"SET", b"k", b"v", b"EX", b"abc"),
    (b"RESTORE", b"k", b"-1", b"p"),
    (b"RESTORE", b"k", b"x", b"p"),
    # overflow: seconds * 1000, or the deadline (and a year's headroom below it)
    (b"EXPIRE", b"k", ms(SECONDS_MAX + 1)),
    (b"EXPIRE", b"k", ms(-SECONDS_MAX - 1)),
    (b"EXPIRE", b"k", ms(SECONDS_MAX)),
    (b"PEXPIRE", b"k", ms(LLONG_MAX)),
    (b"PEXPIRE", b"k", ms(LLONG_MAX - NOW)),
    (b"PEXPIRE", b"k", ms(LLONG_MAX - YEAR_MS - NOW + 1)),
    (b"SETEX", b"k", ms(SECONDS_MAX + 1), b"v"),
    (b"SETEX", b"k", ms(SECONDS_MAX), b"v"),
    (b"SET", b"k", b"v", b"PX", ms(LLONG_MAX)),
    (b"SET", b"k", b"v", b"PX", ms(LLONG_MAX - YEAR_MS - NOW + 1)),
    (b"GETEX", b"k", b"EX", ms(SECONDS_MAX + 1)),
    (b"RESTORE", b"k", ms(LLONG_MAX - NOW), b"p"),
    # EXPIRE flags: unknown ones, conflicting ones
    (b"EXPIRE", b"k", b"10", b"foo"),
    (b"EXPIRE", b"k", b"10", b"NX", b"XX"),
    (b"EXPIRE", b"k", b"10", b"nx", b"gt"),
    (b"EXPIRE", b"k", b"10", b"LT", b"NX"),
    (b"PEXPIRE", b"k", b"10", b"GT", b"LT"),
    (b"EXPIRE", b"k", b"10", b"nx\x00"),  # Redis's strcasecmp would see "nx"; left to Redis
    # SET syntax: conflicting options, options without values, unknown ones, GETEX-only ones
    (b"SET", b"k", b"v", b"EX", b"10", b"KEEPTTL"),
    (b"SET", b"k", b"v", b"KEEPTTL", b"EX", b"10"),
    (b"SET", b"k", b"v", b"EX", b"10", b"PX", b"10"),
    (b"SET", b"k", b"v", b"PX", b"10", b"EX", b"10"),
    (b"SET", b"k", b"v", b"EX", b"10", b"EXAT", b"10"),
    (b"SET", b"k", b"v", b"PXAT", b"10", b"PX", b"10"),
    (b"SET", b"k", b"v", b"NX", b"XX", b"EX", b"10"),
    (b"SET", b"k", b"v", b"XX", b"EX", b"10", b"NX"),
    (b"SET", b"k", b"v", b"EX", b"10", b"EX"),
    (b"SET", b"k", b"v", b"NX", b"EX"),
    (b"SET", b"k", b"v", b"EX", b"10", b"PERSIST"),
    (b"SET", b"k", b"v", b"EX", b"10", b"foo"),
    (b"SET", b"k", b"v", b"E", b"10"),
    (b"SET", b"k", b"v", b"EX\x00", b"10"),
    # GETEX syntax
    (b"GETEX", b"k", b"EX", b"10", b"PERSIST"),
    (b"GETEX", b"k", b"PERSIST", b"EX", b"10"),
    (b"GETEX", b"k", b"EX", b"10", b"PX", b"10"),
    (b"GETEX", b"k", b"EX", b"10", b"NX"),
    (b"GETEX", b"k", b"GET", b"EX", b"10"),
    (b"GETEX", b"k", b"KEEPTTL", b"EX", b"10"),
    (b"GETEX", b"k", b"EX"),
    # RESTORE options
    (b"RESTORE", b"k", b"10", b"p", b"foo"),
    (b"RESTORE", b"k", b"10", b"p", b"IDLETIME"),
    (b"RESTORE", b"k", b"10", b"p", b"IDLETIME", b"-1"),
    (b"RESTORE", b"k", b"10", b"p", b"IDLETIME", b"x"),
    (b"RESTORE", b"k", b"10", b"p", b"FREQ", b"256"),
    (b"RESTORE", b"k", b"10", b"p", b"FREQ", b"-1"),
    (b"RESTORE", b"k", b"10", b"p", b"FREQ"),
    (b"RESTORE", b"k", b"10", b"p", b"IDLETIME", b"1", b"FREQ", b"1"),
    (b"RESTORE", b"k", b"10", b"p", b"FREQ", b"1", b"IDLETIME", b"1"),
    # not a request
    (),
]


@pytest.mark.parametrize("argv", UNCHANGED, ids=[repr(b" ".join(a))[2:-1] for a in UNCHANGED])
def test_unchanged(argv):
    assert rewrite(*argv) is None


@given(st.sampled_from([b"set", b"expire", b"pexpire", b"setex", b"psetex", b"getex", b"restore"]),
       st.data())
def test_the_name_is_found_in_any_case(name, data):
    spelled = bytes(c ^ 0x20 if data.draw(st.booleans()) else c for c in name)  # flip some letters' case
    args = {
        b"set": (b"k", b"v", b"EX", b"5"),
        b"expire": (b"k", b"5"),
        b"pexpire": (b"k", b"5"),
        b"setex": (b"k", b"5", b"v"),
        b"psetex": (b"k", b"5", b"v"),
        b"getex": (b"k", b"EX", b"5"),
        b"restore": (b"k", b"5", b"p"),
    }[name]
    lower = rewrite(name, *args)
    assert lower is not None
    assert rewrite(spelled, *args) == lower


def test_argv_is_not_modified():
    argv = [b"SET", b"k", b"v", b"NX", b"EX", b"100", b"GET"]
    before = list(argv)
    out = absolute_expiry(argv, NOW)
    assert out == [b"SET", b"k", b"v", b"NX", b"GET", b"PXAT", ms(NOW + 100_000)]
    assert argv == before and out is not argv


# --------------------------------------------------------------------------- commands, valid and not

BAD_NUMBERS = [b"", b"abc", b"1.5", b"+5", b"05", b"-0", b"00", b" 5", b"1e3", b"0x10", b"\xd9\xa3",
               b"9223372036854775808", b"-9223372036854775809"]  # fmt: skip
_now_ms = time.time_ns() // 1_000_000  # for numbers near the overflow boundaries, which depend on it
BOUNDARY_NUMBERS = [
    SECONDS_MAX - 1, SECONDS_MAX, SECONDS_MAX + 1, -SECONDS_MAX, -SECONDS_MAX - 1,
    LLONG_MAX, LLONG_MAX - 1, LLONG_MIN, LLONG_MIN + 1,
    LLONG_MAX - _now_ms, LLONG_MAX - _now_ms - 10_000, (LLONG_MAX - _now_ms) // 1000,
    LLONG_MAX - YEAR_MS - _now_ms - 60_000, (LLONG_MAX - YEAR_MS - _now_ms) // 1000 - 60,
    LLONG_MAX - YEAR_MS - _now_ms + 60_000,
]  # fmt: skip


def numbers() -> st.SearchStrategy[bytes]:
    """Relative times as a client might send them: near 0, ordinary, huge, and not integers."""
    return st.one_of(
        st.integers(1, 10**6).map(ms),
        st.integers(1, 10**6).map(ms),
        st.integers(-3, 3).map(ms),
        st.integers(-(10**7), 10**7).map(ms),
        st.sampled_from(BOUNDARY_NUMBERS).map(ms),
        st.sampled_from(BAD_NUMBERS),
    )


def absolute_seconds() -> st.SearchStrategy[bytes]:
    return st.sampled_from([b"1", ms(_now_ms // 1000 + 3600), b"0", b"-1", b"abc"])


def absolute_ms() -> st.SearchStrategy[bytes]:
    return st.sampled_from([b"1", ms(_now_ms + 3_600_000), b"0", b"-1", b"abc"])


def word(text: bytes) -> st.SearchStrategy[bytes]:
    """An option or command name in any case."""
    return st.sampled_from([text.lower(), text.upper(), text.capitalize(), text.swapcase()])


def option(text: bytes, *value: st.SearchStrategy[bytes]) -> st.SearchStrategy[tuple[bytes, ...]]:
    return st.tuples(word(text), *value)


JUNK = st.sampled_from([(b"foo",), (b"",), (b"E",), (b"NXX",)])
KEY = b"<key>"  # replaced by each twin's own key name
PAYLOAD = b"<payload>"  # replaced by a DUMP of the string b"new" on the server under test
Piece = tuple[bytes, ...]  # one option with its value, if it takes one


def any_order(*pieces: st.SearchStrategy[Piece], optional: tuple = ()) -> st.SearchStrategy[list[Piece]]:
    """All of `pieces` and some of `optional`, in any order."""
    chosen = st.tuples(*pieces, *(st.one_of(st.just(()), piece) for piece in optional))
    return chosen.flatmap(st.permutations).map(lambda parts: [part for part in parts if part])


def with_options(
    tidy: st.SearchStrategy[list[Piece]], wrong: st.SearchStrategy[Piece], wild: list[st.SearchStrategy[Piece]]
) -> st.SearchStrategy[list[bytes]]:
    """Options as clients send them: ones Redis accepts together (`tidy`); the same with one
    more slipped in anywhere (`wrong`: a conflict, a repeat, a missing value, a stray word);
    or any few of `wild` in any order."""
    spoiled = st.tuples(tidy, wrong, st.integers(0, 3)).map(lambda t: [*t[0][: t[2]], t[1], *t[0][t[2] :]])
    anything = st.lists(st.one_of(*wild), max_size=4)
    return st.one_of(tidy, spoiled, anything).map(lambda parts: [a for part in parts for a in part])


def expires() -> st.SearchStrategy[list[bytes]]:
    flags = [option(b"NX"), option(b"XX"), option(b"GT"), option(b"LT"), JUNK]
    tidy = st.one_of(st.just([]), option(b"NX").map(lambda nx: [nx]),
                     any_order(optional=(option(b"XX"), st.one_of(option(b"GT"), option(b"LT")))))  # fmt: skip
    # the absolute forms (never rewritten) less often than the relative ones
    name = st.one_of(word(b"EXPIRE"), word(b"PEXPIRE"), word(b"EXPIRE"), word(b"PEXPIRE"), word(b"EXPIREAT"),
                     word(b"PEXPIREAT"))  # fmt: skip
    return st.tuples(name, numbers(), with_options(tidy, st.one_of(*flags), flags)).map(
        lambda t: [t[0], KEY, t[1], *t[2]]
    )


def setexes() -> st.SearchStrategy[list[bytes]]:
    name = st.one_of(word(b"SETEX"), word(b"PSETEX"))
    extra = st.sampled_from([[], [], [], [b"more"]])
    return st.tuples(name, numbers(), extra).map(lambda t: [t[0], KEY, t[1], b"new", *t[2]])


def sets() -> st.SearchStrategy[list[bytes]]:
    relative = st.one_of(option(b"EX", numbers()), option(b"PX", numbers()))
    nx_or_xx = st.one_of(option(b"NX"), option(b"XX"))
    tidy = any_order(relative, optional=(nx_or_xx, option(b"GET")))
    others = [nx_or_xx, option(b"GET"), option(b"KEEPTTL"), option(b"PERSIST"), option(b"EXAT", absolute_seconds()),
              option(b"PXAT", absolute_ms()), option(b"EX"), option(b"PX"), JUNK]  # fmt: skip
    wrong = st.one_of(relative, *others)
    opts = with_options(tidy, wrong, [relative, *others])
    return st.tuples(word(b"SET"), opts).map(lambda t: [t[0], KEY, b"new", *t[1]])


def getexes() -> st.SearchStrategy[list[bytes]]:
    relative = st.one_of(option(b"EX", numbers()), option(b"PX", numbers()))
    others = [option(b"EXAT", absolute_seconds()), option(b"PXAT", absolute_ms()), option(b"PERSIST"),
              option(b"EX"), option(b"PX"), option(b"NX"), option(b"GET"), option(b"KEEPTTL"), JUNK]  # fmt: skip
    opts = with_options(relative.map(lambda piece: [piece]), st.one_of(relative, *others), [relative, *others])
    return st.tuples(word(b"GETEX"), opts).map(lambda t: [t[0], KEY, *t[1]])


def restores() -> st.SearchStrategy[list[bytes]]:
    small = st.one_of(st.integers(-1, 300).map(ms), st.sampled_from(BAD_NUMBERS))
    lru = st.one_of(option(b"IDLETIME", small), option(b"FREQ", small))
    tidy = any_order(optional=(option(b"REPLACE"), lru))
    others = [option(b"REPLACE"), option(b"ABSTTL"), lru, option(b"IDLETIME"), option(b"FREQ"), JUNK]
    opts = with_options(tidy, st.one_of(*others), others)
    ttl = st.one_of(st.just(b"0"), numbers())
    payload = st.sampled_from([PAYLOAD, PAYLOAD, b"not a dump"])
    return st.tuples(word(b"RESTORE"), ttl, payload, opts).map(lambda t: [t[0], KEY, t[1], t[2], *t[3]])


def maybe_cut(commands: st.SearchStrategy[list[bytes]]) -> st.SearchStrategy[list[bytes]]:
    """One command in four cut short after its key: missing values, wrong arity."""
    cut = st.tuples(commands, st.integers(1, 8)).map(lambda t: t[0][: max(2, len(t[0]) - t[1])])
    return st.one_of(commands, commands, commands, cut)


FAMILIES = {"expire": expires, "setex": setexes, "set": sets, "getex": getexes, "restore": restores}
# Run first in every family, whatever else is generated: a rewrite that must set a deadline,
# one that must not (NX on a key that has one), and an error the rewrite must leave alone.
FAMILY_EXAMPLES = {
    "expire": [([b"EXPIRE", KEY, b"100"], "string"), ([b"pexpire", KEY, b"100", b"NX"], "string-with-ttl"),
               ([b"EXPIRE", KEY, b"+1"], "string")],
    "setex": [([b"SETEX", KEY, b"100", b"new"], "missing"), ([b"PSETEX", KEY, b"100", b"new"], "list"),
              ([b"SETEX", KEY, b"0", b"new"], "string")],
    "set": [([b"SET", KEY, b"new", b"GET", b"EX", b"100"], "string"),
            ([b"set", KEY, b"new", b"nx", b"px", b"100"], "string-with-ttl"),
            ([b"SET", KEY, b"new", b"EX", b"100", b"KEEPTTL"], "string")],
    "getex": [([b"GETEX", KEY, b"EX", b"100"], "string"), ([b"GETEX", KEY, b"PX", b"100"], "list"),
              ([b"GETEX", KEY, b"EX", b"-1"], "string")],
    "restore": [([b"RESTORE", KEY, b"100", PAYLOAD, b"REPLACE"], "string"),
                ([b"RESTORE", KEY, b"100", PAYLOAD], "string"),
                ([b"RESTORE", KEY, b"100", PAYLOAD, b"REPLACE", b"FREQ", b"256"], "string")],
}  # fmt: skip
# How each twin key starts: missing, a string, a string with a deadline, a list (wrong type).
STATES = ["missing", "string", "string-with-ttl", "list"]


# --------------------------------------------------------------------------- against Redis

TOLERANCE_MS = 500  # how much later than now_ms the original may run, and its deadline be


def server_ms(conn: d.RespConnection) -> int:
    seconds, micros = d.split_array(conn.call(b"TIME"))
    return int(seconds.split(b"\r\n")[1]) * 1000 + int(micros.split(b"\r\n")[1]) // 1000


def integer(reply: bytes) -> int:
    assert reply[:1] == b":", reply
    return int(reply[1:-2])


def snapshot(conn: d.RespConnection, key: bytes) -> tuple[bytes, int]:
    """The key's DUMP and PEXPIRETIME, read at one instant (so that it cannot expire between)."""
    conn.send([(b"MULTI",), (b"DUMP", key), (b"PEXPIRETIME", key), (b"EXEC",)])
    replies = [conn.read_reply()[0] for _ in range(4)]
    assert replies[:3] == [b"+OK\r\n", b"+QUEUED\r\n", b"+QUEUED\r\n"], replies
    dump, pexpiretime = d.split_array(replies[3])
    return dump, integer(pexpiretime)


def prepare(conn: d.RespConnection, key: bytes, state: str, deadline: int) -> None:
    assert conn.call(b"DEL", key)[:1] == b":"
    if state == "string":
        assert conn.call(b"SET", key, b"old") == b"+OK\r\n"
    elif state == "string-with-ttl":
        assert conn.call(b"SET", key, b"old", b"PXAT", ms(deadline)) == b"+OK\r\n"
    elif state == "list":
        assert conn.call(b"RPUSH", key, b"a", b"b") == b":2\r\n"


def stated_relative_ms(command: list[bytes]) -> int:
    """The relative expiry a (valid) original command states, in ms, read from the original
    itself and not from the rewrite: the time argument, or the last EX/PX option's value."""
    name = command[0].lower()
    if name in (b"expire", b"setex"):
        return int(command[2]) * 1000
    if name in (b"pexpire", b"psetex", b"restore"):
        return int(command[2])
    assert name in (b"set", b"getex"), command
    last = None  # an expiry option may repeat; the last one counts, the others are not read
    j = 3 if name == b"set" else 2
    while j < len(command):
        option = command[j].lower()
        if option in (b"ex", b"px", b"exat", b"pxat"):
            last = option, command[j + 1]
            j += 2
        else:
            j += 1
    assert last is not None and last[0] in (b"ex", b"px"), command
    return int(last[1]) * (1000 if last[0] == b"ex" else 1)


def check_twins(command, rewritten, now_ms, reply_a, reply_b, snap_a, snap_b, check_ms) -> None:
    """The original ran on twin A, then the rewrite (or the original again) on twin B, both
    after now_ms was read from the server; the snapshots were taken before check_ms."""
    where = f"{d.format_command(tuple(command))} -> {rewritten and d.format_command(tuple(rewritten))}"
    assert reply_a == reply_b, f"{where}: replies {reply_a!r} (original) vs {reply_b!r}"
    (dump_a, pa), (dump_b, pb) = snap_a, snap_b
    if rewritten is not None and pb > 0 and pb != pa:
        # B's deadline was set by the rewrite: exactly now_ms + the relative time stated.
        expected = now_ms + stated_relative_ms(command)
        assert pb == expected, f"{where}: deadline {pb}, expected {expected}"
    if pa == pb:  # deadline untouched, or both gone, or no expiry on either
        assert dump_a == dump_b, f"{where}: data {dump_a!r} vs {dump_b!r}"
    elif pa == -2 or pb == -2:
        # One twin's deadline passed between the runs and the snapshots; the other's must
        # have been about to pass as well.
        alive = pb if pa == -2 else pa
        assert 0 < alive <= check_ms + TOLERANCE_MS, f"{where}: deadlines {pa} vs {pb} at {check_ms}"
    else:
        assert dump_a == dump_b, f"{where}: data {dump_a!r} vs {dump_b!r}"
        assert pa > 0 and pb > 0, f"{where}: deadlines {pa} (original) vs {pb}"
        if rewritten is not None:  # A ran later than now_ms, on the server's own clock
            assert 0 <= pa - pb <= TOLERANCE_MS, f"{where}: deadlines {pa} (original) vs {pb}"
        else:
            assert abs(pa - pb) <= TOLERANCE_MS, f"{where}: deadlines {pa} vs {pb}"


@integration
@pytest.mark.parametrize("family", FAMILIES)
def test_rewrite_answers_as_the_original_on_redis(redis_server, family):
    conn = d.RespConnection(redis_server.addr)
    assert conn.call(b"SET", b"source", b"new") == b"+OK\r\n"
    payload = conn.call(b"DUMP", b"source").split(b"\r\n", 1)[1][:-2]
    twin_a, twin_b = b"twin:a", b"twin:b"
    seen = {"rewritten": 0, "verbatim": 0, "deadline set": 0}

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(maybe_cut(FAMILIES[family]()), st.sampled_from(STATES))
    def run(command, state):
        # Both twins start with the same data and the same absolute deadline (~4 years away),
        # far from any deadline the generated commands set (those are under 4 months or over
        # 200,000 years away), so that GT/LT decide the same way for both.
        existing = server_ms(conn) + 123_456_789_123
        prepare(conn, twin_a, state, existing)
        prepare(conn, twin_b, state, existing)
        fill_a, fill_b = {KEY: twin_a, PAYLOAD: payload}, {KEY: twin_b, PAYLOAD: payload}
        argv_a = [fill_a.get(a, a) for a in command]
        argv_b = [fill_b.get(a, a) for a in command]
        now_ms = server_ms(conn)
        rewritten = absolute_expiry(argv_b, now_ms)
        seen["rewritten" if rewritten is not None else "verbatim"] += 1
        reply_a = conn.call(*argv_a)
        reply_b = conn.call(*(rewritten if rewritten is not None else argv_b))
        snap_a, snap_b = snapshot(conn, twin_a), snapshot(conn, twin_b)
        check_ms = server_ms(conn)
        if rewritten is not None and snap_b[1] > 0 and snap_b[1] == now_ms + stated_relative_ms(command):
            seen["deadline set"] += 1
        check_twins(command, rewritten, now_ms, reply_a, reply_b, snap_a, snap_b, check_ms)

    for command, state in FAMILY_EXAMPLES[family]:
        run = example(command, state)(run)
    try:
        run()
    finally:
        conn.close()
    # The generators must reach both sides of the rule, or this test proves nothing.
    assert seen["rewritten"] and seen["verbatim"] and seen["deadline set"], seen


@integration
@pytest.mark.parametrize("command", [[b"EXPIRE", b"-5"], [b"EXPIRE", b"0"], [b"PEXPIRE", b"-1"],
                                     [b"pexpire", b"0"], [b"EXPIRE", b"-1", b"LT"]])  # fmt: skip
def test_an_expiry_in_the_past_deletes_the_key_as_the_original_does(redis_server, command):
    """EXPIRE with a value <= 0 is no error: it deletes the key and answers 1 (0 when there is
    no key). PEXPIREAT with a deadline in the past does exactly the same."""
    conn = d.RespConnection(redis_server.addr)
    try:
        for existing, reply in ((True, b":1\r\n"), (False, b":0\r\n")):
            argv = {"a": [command[0], b"a", *command[1:]], "b": [command[0], b"b", *command[1:]]}
            for key in (b"a", b"b"):
                prepare(conn, key, "string" if existing else "missing", 0)
            now_ms = server_ms(conn)
            rewritten = absolute_expiry(argv["b"], now_ms)
            assert rewritten is not None and rewritten[0] == b"PEXPIREAT" and int(rewritten[2]) <= now_ms
            assert conn.call(*argv["a"]) == reply
            assert conn.call(*rewritten) == reply
            assert conn.call(b"EXISTS", b"a", b"b") == b":0\r\n"
    finally:
        conn.close()


@settings(max_examples=300, deadline=None)
@given(st.one_of(*(maybe_cut(family()) for family in FAMILIES.values())), st.integers(0, 2**42))
def test_a_rewrite_is_final_and_leaves_the_request_alone(command, now_ms):
    """Never an exception, never a change to the caller's argv, and a rewrite is absolute:
    rewriting it again finds nothing to do."""
    before = list(command)
    rewritten = absolute_expiry(command, now_ms)
    assert command == before
    if rewritten is not None:
        assert rewritten[0] in (b"PEXPIREAT", b"SET", b"GETEX", b"RESTORE")
        assert absolute_expiry(rewritten, now_ms) is None
        assert absolute_expiry(rewritten, now_ms + 10**6) is None
