"""RESP parsing and reply scanning, tested alone (no sockets)."""

import hiredis
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dyno import resp

args = st.binary(min_size=0, max_size=40)
commands = st.lists(args, min_size=1, max_size=6)
pipelines = st.lists(commands, min_size=1, max_size=8)


def parse_all(chunks):
    parser = resp.RequestParser()
    out = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return out, parser


@given(pipelines)
def test_encode_then_parse_round_trip(requests):
    data = b"".join(resp.encode_command(r) for r in requests)
    parsed, parser = parse_all([data])
    assert parsed == requests
    assert parser.error is None and parser.pending == 0
    assert parser.clean


@given(pipelines, st.data())
def test_partial_reads_at_every_split_point(requests, data):
    stream = b"".join(resp.encode_command(r) for r in requests)
    split = data.draw(st.integers(0, len(stream)))
    second = data.draw(st.integers(split, len(stream)))
    parsed, parser = parse_all([stream[:split], stream[split:second], stream[second:]])
    assert parsed == requests
    assert parser.error is None and parser.pending == 0


# Arguments that look like headers after a CRLF ('\r\n*', '\r\n$3'): the cheap
# proof that a read was taken whole counts '\r\n*'; such data must not fool it.
tricky_args = st.one_of(args, st.sampled_from([b"\r\n*", b"a\r\n*1\r\n$1\r\nx", b"\r\n$3\r\nabc", b"*2"]))
tricky_pipelines = st.lists(st.lists(tricky_args, min_size=1, max_size=5), min_size=1, max_size=6)


@given(tricky_pipelines, st.data())
@settings(max_examples=400)
def test_a_read_is_clean_exactly_when_it_holds_whole_requests(requests, data):
    """Each chunk a fresh parser reads: clean means the requests it returned are
    exactly the chunk's bytes; a chunk of whole requests (cut at a request
    boundary) is clean."""
    encoded = [resp.encode_command(r) for r in requests]
    stream = b"".join(encoded)
    cut = data.draw(st.integers(1, len(stream)))
    chunk = stream[:cut]
    parser = resp.RequestParser()
    parsed = parser.feed(chunk)
    if parser.clean:
        assert b"".join(map(resp.encode_command, parsed)) == chunk
    boundaries = {sum(map(len, encoded[:i])) for i in range(1, len(encoded) + 1)}
    assert parser.clean == (cut in boundaries)


# What can follow whole requests in a read: the start of any RESP element, cut
# anywhere, or whole; hiredis holds some of these and swallows others.
_TAILS = [
    b"$3\r\nfoo\r\n", b":1\r\n", b"+OK\r\n", b"-ERR x\r\n", b"_\r\n", b"#t\r\n", b",1.5\r\n",
    b"(12\r\n", b"=7\r\ntxt:abc\r\n", b"!3\r\nabc\r\n", b"*1\r\n$4\r\nPING\r\n",
    b"%1\r\n$1\r\na\r\n$1\r\nb\r\n", b">1\r\n$1\r\na\r\n", b"~1\r\n$1\r\na\r\n",
    b"|1\r\n$1\r\na\r\n$1\r\nb\r\n", b"*0\r\n", b"*-1\r\n", b"PING\r\n",
]
_tails = st.sampled_from(_TAILS).flatmap(lambda t: st.integers(1, len(t)).map(lambda cut: t[:cut]))


@given(tricky_pipelines, st.lists(_tails, min_size=1, max_size=2), st.booleans())
@settings(max_examples=600)
def test_a_read_with_anything_after_whole_requests_is_clean_only_if_canonical(requests, tails, long):
    whole = b"".join(map(resp.encode_command, requests))
    if long:  # past _SMALL: the other-type check takes the memchr path
        whole = resp.encode_command([b"SET", b"k", b"v" * 450]) + whole
    data = whole + b"".join(tails)
    parser = resp.RequestParser()
    parsed = parser.feed(data)
    if parser.clean:  # Redis reads the chunk as exactly these requests
        assert exact_parse(data) == (parsed, True)


@pytest.mark.parametrize("tail", [
    b"$", b":", b"+", b"*", b"%", b"*1\r\n", b"%1\r\n", b"%1\r\n$1\r\na\r\n", b">1\r\n",
    b">2\r\n$1\r\na\r\n", b"~1\r\n", b"|1\r\n", b"*2\r\n$1\r\na\r\n", b"$3\r\nab",
])
@pytest.mark.parametrize("long", [False, True], ids=["short", "long"])
def test_a_read_ending_inside_an_element_hiredis_holds_is_not_clean(tail, long):
    # hiredis swallows a type byte, and an aggregate's header, with no byte left
    # for has_data() to report: the read must still not count as whole requests.
    whole = resp.encode_command([b"PING"])
    if long:
        whole = resp.encode_command([b"SET", b"k", b"v" * 450]) + whole
    parser = resp.RequestParser()
    parser.feed(whole + tail)
    assert not parser.clean


def exact_parse(data: bytes) -> tuple[list[list[bytes]], bool]:
    """What Redis reads in ``data`` (the pure-Python parser, which follows Redis's
    own), and whether that takes every byte. Like Redis, it skips the two bytes
    after a bulk string's data without looking at them."""
    parser = resp.RequestParser()
    parser._buffer += data
    requests = parser._parse_slowly([])
    return requests, parser.error is None and not parser.pending


def test_every_split_point_of_one_pipeline():
    requests = [[b"SET", b"k\r\n", b"v" * 20], [b"GET", b""], [b"PING"]]
    stream = b"".join(resp.encode_command(r) for r in requests) + b"PING\r\n"
    for i in range(len(stream) + 1):
        parsed, parser = parse_all([stream[:i], stream[i:]])
        assert parsed == requests + [[b"PING"]], i
        assert parser.error is None


def test_byte_at_a_time():
    stream = resp.encode_command([b"SET", b"a", b"b"]) + b"GET a\r\n" + resp.encode_command([b"DEL", b"a"])
    parsed, parser = parse_all([stream[i : i + 1] for i in range(len(stream))])
    assert parsed == [[b"SET", b"a", b"b"], [b"GET", b"a"], [b"DEL", b"a"]]


@pytest.mark.parametrize(
    "line, expected",
    [
        (b"PING", [b"PING"]),
        (b"  SET   a   b  ", [b"SET", b"a", b"b"]),
        (b'SET k "hello world"', [b"SET", b"k", b"hello world"]),
        (b'SET k "a\\nb\\x41"', [b"SET", b"k", b"a\nbA"]),
        (b"SET k 'it\\'s'", [b"SET", b"k", b"it's"]),
        (b'SET k ""', [b"SET", b"k", b""]),
        (b"", []),
    ],
)
def test_inline_commands(line, expected):
    parsed, parser = parse_all([line + b"\r\n"])
    assert parsed == ([expected] if expected else [])
    assert parser.error is None


@pytest.mark.parametrize(
    "data, message",
    [
        (b'SET k "unterminated\r\n', "unbalanced quotes in request"),
        (b'SET k "a"b\r\n', "unbalanced quotes in request"),
        (b"*abc\r\n", "invalid multibulk length"),
        (b"*2\r\n:1\r\n", "expected '$', got ':'"),
        (b"*1\r\n+OK\r\n", "expected '$', got '+'"),
        (b"*1\r\n$-1\r\n", "invalid bulk length"),
        (b"*1\r\n$03\r\nabc\r\n", "invalid bulk length"),
        (b"*%d\r\n" % (resp.MAX_MULTIBULK + 1), "invalid multibulk length"),
        (b"*1\r\n$%d\r\n" % (resp.MAX_BULK + 1), "invalid bulk length"),
        (b"x" * (resp.MAX_INLINE + 1), "too big inline request"),
        (b"*" + b"1" * (resp.MAX_INLINE + 1), "too big mbulk count string"),
        (b"*1\r\n$" + b"1" * (resp.MAX_INLINE + 1), "too big bulk count string"),
    ],
)
def test_protocol_errors_use_redis_wording(data, message):
    # Requests before the bad frame are still returned (Redis runs them first).
    parsed, parser = parse_all([resp.encode_command([b"PING"]) + data])
    assert parsed == [[b"PING"]]
    assert parser.error == b"-ERR Protocol error: " + message.encode() + b"\r\n"
    assert parser.feed(resp.encode_command([b"PING"])) == []  # nothing after an error


@given(st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=12),
       st.integers(37, 600), st.integers(64, 400))
@settings(max_examples=300)
def test_the_parser_never_holds_more_than_its_limits(requests, max_bulk, max_buffer):
    """Whatever the requests and their cutting, an unfinished request never holds
    more than ``max_buffer`` bytes; passing it is the query-buffer error; an argument
    over ``max_bulk`` (at least a read's size, as in dyno) is refused; whatever is
    returned is what was sent, in order."""
    stream = b"".join(resp.encode_command([b"SET", b"k", value]) for value in requests)
    parser = resp.RequestParser(max_bulk=max_bulk, max_buffer=max_buffer)
    got = []
    for start in range(0, len(stream), 37):
        got += parser.feed(stream[start:start + 37])
        assert parser.pending <= max_buffer
        if parser.error is not None:
            break
    assert got == [[b"SET", b"k", value] for value in requests[:len(got)]]
    if parser.error is None:
        assert len(got) == len(requests)
        assert all(len(value) <= max_bulk for value in requests)
    elif parser.error == b"-ERR Protocol error: invalid bulk length\r\n":
        assert len(requests[len(got)]) > max_bulk
    else:
        assert parser.error == b"-ERR Protocol error: client query buffer limit reached\r\n"
        assert len(resp.encode_command([b"SET", b"k", requests[len(got)]])) > max_buffer


def test_empty_multibulk_frames_are_skipped_but_not_clean():
    parsed, parser = parse_all([b"*0\r\n*-1\r\n" + resp.encode_command([b"PING"])])
    assert parsed == [[b"PING"]]
    assert not parser.clean


@given(st.binary(max_size=300))
@settings(max_examples=400)
def test_garbage_never_crashes(data):
    parser = resp.RequestParser()
    for request in parser.feed(data):
        assert request and all(isinstance(a, bytes) for a in request)
    assert parser.error is None or parser.error.startswith(b"-ERR Protocol error: ")


# -- replies ---------------------------------------------------------------------

reply_values = st.recursive(
    st.one_of(
        st.binary(max_size=30).map(resp.bulk),
        st.just(resp.NULL_BULK),
        st.integers(-(2**63), 2**63 - 1).map(resp.integer),
        st.text("abc xyz", max_size=10).map(lambda t: resp.status(t)),
        st.text("abc xyz", max_size=10).map(lambda t: resp.error("ERR " + t)),
    ),
    lambda inner: st.lists(inner, max_size=5).map(resp.array),
    max_leaves=20,
)


@given(st.lists(reply_values, min_size=1, max_size=6))
def test_scan_reply_finds_every_boundary(replies):
    stream = b"".join(replies)
    pos, found = 0, []
    while pos < len(stream):
        end = resp.scan_reply(stream, pos)
        assert end > pos
        found.append(stream[pos:end])
        pos = end
    assert found == replies
    # Every strict prefix of the last reply is incomplete.
    last_start = len(stream) - len(replies[-1])
    for cut in range(last_start + 1, len(stream)):
        assert resp.scan_reply(stream[:cut], last_start) == -1


@given(reply_values)
def test_encoded_replies_are_valid_resp(reply):
    reader = hiredis.Reader()
    reader.feed(reply)
    assert reader.gets() is not False
    assert not reader.has_data()


def test_encode_values():
    assert resp.encode([b"a", 1, None, [b"b"]]) == b"*4\r\n$1\r\na\r\n:1\r\n$-1\r\n*1\r\n$1\r\nb\r\n"
    assert resp.error("ERR bad\r\nthing") == b"-ERR bad  thing\r\n"
    with pytest.raises(TypeError):
        resp.encode(object())


@given(commands)
def test_resp3_elements_are_refused(request):
    assume(request[-1] and b"\r" not in request[-1] and b"\n" not in request[-1])
    good = resp.encode_command(request)
    parser = resp.RequestParser()
    assert parser.feed(good) == [request] and parser.clean
    # Same argv through hiredis, but the last element sent as a '+' status string:
    # refused with Redis's error, and never marked clean for verbatim forwarding.
    header = good.rindex(b"$", 0, len(good) - len(request[-1]) - 2)
    bad = good[:header] + b"+" + request[-1] + b"\r\n"
    parser = resp.RequestParser()
    assert parser.feed(bad) == []
    assert not parser.clean
    assert parser.error == b"-ERR Protocol error: expected '$', got '+'\r\n"


def test_nul_byte_in_an_inline_command_hides_its_newline_as_in_redis():
    # Redis finds the newline with strchr(), which stops at the NUL: no command is
    # seen, Redis waits for more, and past the inline limit it is a protocol error.
    parsed, parser = parse_all([b"SET a\x00b c\r\nGET a\r\n"])
    assert parsed == [] and parser.error is None
    parser.feed(b"x" * resp.MAX_INLINE)
    assert parser.error == b"-ERR Protocol error: too big inline request\r\n"


@given(st.binary(max_size=60))
def test_split_args_always_ends(line):
    args = resp.split_args(line)
    assert args is None or all(isinstance(a, bytes) for a in args)


@pytest.mark.parametrize("reply", [
    b"_\r\n", b",3.14\r\n", b"#t\r\n", b"(3492890328409238509324850943850943825024385\r\n",
    b"=15\r\ntxt:Some string\r\n", b"!21\r\nSYNTAX invalid syntax\r\n",
    b"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n", b"~3\r\n:1\r\n:2\r\n:3\r\n",
    b">2\r\n+message\r\n$2\r\nhi\r\n",
    b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*1\r\n:2039123\r\n",  # attribute + reply
    b"%1\r\n$1\r\nk\r\n~1\r\n_\r\n",
])
def test_scan_reply_knows_resp3(reply):
    assert resp.scan_reply(reply + b"+next\r\n", 0) == len(reply)
    for cut in range(1, len(reply)):
        assert resp.scan_reply(reply[:cut], 0) == -1


def _element(kind: str, arg: bytes) -> bytes:
    """``arg`` as one array element in a form hiredis reads back as bytes."""
    if kind == "$":
        return b"$%d\r\n%s\r\n" % (len(arg), arg)
    if kind == "=":
        return b"=%d\r\ntxt:%s\r\n" % (len(arg) + 4, arg)
    return kind.encode() + arg + b"\r\n"  # '+' status, '(' big number


_line_args = st.binary(min_size=1, max_size=30).filter(lambda a: b"\r" not in a and b"\n" not in a)
_elements = st.one_of(
    st.tuples(st.just("$"), args),
    st.tuples(st.sampled_from("+="), _line_args),
    st.tuples(st.just("("), st.integers(0, 10**25).map(lambda n: str(n).encode())),
)
# '*' is a request; '~' (set) and '|' (attribute) frames come out of hiredis as
# lists too, but Redis reads them as inline commands.
_frames = st.tuples(st.sampled_from("***~|"), st.lists(_elements, min_size=1, max_size=5))


@given(st.lists(_frames, min_size=1, max_size=4))
@settings(max_examples=400)
def test_clean_means_canonical_whatever_hiredis_reads_as_requests(frames):
    data = b"".join(
        b"%s%d\r\n" % (kind.encode(), len(elements) // 2 if kind == "|" else len(elements))
        + b"".join(_element(*element) for element in elements)
        for kind, elements in frames
    )
    parser = resp.RequestParser()
    parsed = parser.feed(data)
    if parser.clean:
        assert b"".join(map(resp.encode_command, parsed)) == data
    if any(kind != "*" or any(e != "$" for e, _ in elements) for kind, elements in frames):
        assert not parser.clean


@pytest.mark.parametrize("before", [b"", resp.encode_command([b"SET", b"k", b"v" * 500])], ids=["short", "long"])
def test_elements_that_add_up_to_the_canonical_length_are_still_refused(before):
    # '=' is 4 bytes longer than the bulk form, '+' with a 2-digit length 4 shorter.
    data = b"*3\r\n$3\r\nSET\r\n=5\r\ntxt:a\r\n+abcdefghij\r\n"
    assert len(data) == len(resp.encode_command([b"SET", b"a", b"abcdefghij"]))
    parser = resp.RequestParser()
    assert parser.feed(before + data) == ([[b"SET", b"k", b"v" * 500]] if before else [])
    assert not parser.clean
    assert parser.error == b"-ERR Protocol error: expected '$', got '='\r\n"


def test_a_set_frame_as_long_as_a_request_is_not_forwarded():
    # '~1' is as long as '*1', and hiredis reads both as a list: Redis would read
    # it as three inline commands, and the shared connection would fall out of step.
    data = resp.encode_command([b"PING"]) + b"~1\r\n$4\r\nPING\r\n"
    parsed, parser = parse_all([data])
    assert not parser.clean
    assert parsed == [[b"PING"], [b"~1"], [b"$4"], [b"PING"]]  # as Redis reads it


@pytest.mark.parametrize("arg", [b"(1", b"+inf", b"=x", b"~", b"|", b"a\r\n+OK\r\n=5\r\n(1", b"x" * 500 + b"(2"])
def test_bulk_data_like_another_types_header_is_still_forwarded_as_received(arg):
    request = [b"ZRANGEBYSCORE", b"k", arg, b"+inf"]
    parsed, parser = parse_all([resp.encode_command(request)])
    assert parsed == [request] and parser.error is None
    assert parser.clean


# Elements hiredis reads as something other than bytes: whole_commands must refuse
# them by type, where RequestParser refuses them request by request.
_OTHER_ELEMENTS = [b":12\r\n", b"*1\r\n$1\r\na\r\n", b"*0\r\n", b"*-1\r\n", b"_\r\n", b"#t\r\n",
                   b",1.5\r\n", b"-ERR x\r\n", b"%1\r\n$1\r\na\r\n$1\r\nb\r\n", b">1\r\n$1\r\na\r\n"]
_bulk = st.tuples(st.just("$"), args)
_any_elements = st.one_of(_bulk, _bulk, _bulk, _elements, st.sampled_from(_OTHER_ELEMENTS))  # mostly canonical


def _encode_any(element) -> bytes:
    return element if element.__class__ is bytes else _element(*element)


@given(
    st.lists(st.tuples(st.sampled_from("******~|>"), st.lists(_any_elements, max_size=4)), min_size=1, max_size=4),
    st.sampled_from(["whole", "cut", "more"]),
    st.binary(min_size=1, max_size=12),
    st.integers(-1, 1),
)
@settings(max_examples=600)
def test_whole_commands_proves_what_the_request_parser_proves(frames, change, tail, off_by):
    data = b"".join(
        b"%s%d\r\n" % (kind.encode(), len(elements) // 2 if kind == "|" else len(elements))
        + b"".join(map(_encode_any, elements))
        for kind, elements in frames
    )
    if change == "cut":
        data = data[: len(data) // 2]
    elif change == "more":
        data += tail
    count = max(1, len(frames) + off_by)
    parser = resp.RequestParser()
    parsed = parser.feed(data)
    proven = resp.whole_commands(data, count)
    canonical = b"".join(map(resp.encode_command, parsed)) == data
    assert proven == (len(parsed) == count and canonical and parser.error is None and not parser.pending)
    if change == "whole" and off_by == 0 and all(
        kind == "*" and elements and all(e.__class__ is tuple and e[0] == "$" for e in elements)
        for kind, elements in frames
    ):
        assert proven, data  # canonical requests, as many as said


@pytest.mark.parametrize("arg", [b"*1234567", b"x~9999999", b"(1", b"a\r\n+OK\r\n"])
def test_whole_commands_accepts_data_that_looks_like_headers(arg):
    requests = [[b"SET", b"k", arg], [b"GET", b"k"]]
    data = b"".join(map(resp.encode_command, requests))
    assert resp.whole_commands(data, 2)
    assert not resp.whole_commands(data, 1) and not resp.whole_commands(data, 3)


def test_whole_commands_refuses_a_hostile_aggregate_header_without_allocating_it():
    assert not resp.whole_commands(b"*1\r\n~2000000000\r\n", 1)
    assert not resp.whole_commands(b"*2000000000\r\n", 1)


@pytest.mark.parametrize("first", [b"~", b"|", b">"])
def test_whole_commands_refuses_another_aggregate_first_in_a_long_payload(first):
    # Only headers after a CRLF are scanned for other types past _SMALL bytes.
    data = first + b"1\r\n$4\r\nPING\r\n" + resp.encode_command([b"SET", b"k", b"v" * 500])
    assert not resp.whole_commands(data, 2)
