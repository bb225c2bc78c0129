"""RESP2 on the wire: client requests in, raw replies through, replies out.

This module owns three things and does no I/O:

* ``RequestParser`` turns the bytes a client sends into argument lists, exactly as
  Redis's own request parser would accept or reject them (multibulk and inline,
  limits, error wording). The common case - whole multibulk requests - goes through
  hiredis, which parses a request in about 0.1 us. Everything unusual (inline
  commands typed over telnet, a request cut by a recv boundary, malformed frames)
  goes through a small pure-Python parser whose error messages are Redis's own.
* ``scan_reply`` finds where one reply ends in a buffer of Redis replies, so that
  replies are relayed verbatim: hiredis cannot say where a reply ended nor tell a
  status reply from a bulk string, and the client must get Redis's bytes unchanged.
* Reply encoders for the replies the node makes itself.

Requests are re-encoded canonically (``encode_command``) before they reach a shared
backend connection, so a client that sends something hiredis tolerates but Redis
does not can never make Redis drop a connection other clients are using.
"""

from __future__ import annotations

import re
from itertools import chain

import hiredis

# Redis's limits (server.h: PROTO_INLINE_MAX_SIZE, proto-max-bulk-len and
# client-query-buffer-limit defaults; the last two are config keys), and the
# element limit dyno enforces on a request array.
MAX_INLINE = 64 * 1024
MAX_BULK = 512 * 1024 * 1024
MAX_QUERY_BUFFER = 1024 * 1024 * 1024
MAX_MULTIBULK = 1024 * 1024

# hiredis allocates an aggregate's list when it reads its header ('*N', and the
# RESP3 set, push and attribute headers '~N', '>N', '|N'), so a hostile
# '*1 ~2000000000' would cost gigabytes before any limit could be checked - a
# MemoryError that took the node down. A chunk with any such header of 7+ digits
# therefore goes to the exact parser instead (Redis refuses all but the '*').
# Two patterns: one starting with a literal '*' is searched 6x faster than one
# starting with a character class, and '~', '>', '|' are rarely in a chunk at all.
_HUGE_ARRAY = re.compile(rb"\*-?\d{7}")
_HUGE_OTHER = re.compile(rb"[~>|]-?\d{7}")


def _huge_aggregate(data: bytes) -> bool:
    """Whether ``data`` may hold an aggregate header hiredis must not read."""
    return _HUGE_ARRAY.search(data) is not None or (  # find: half the time of `in`
        (data.find(b"~") >= 0 or data.find(b">") >= 0 or data.find(b"|") >= 0)
        and _HUGE_OTHER.search(data) is not None
    )

# Headers other than '*' and '$' that hiredis still turns into a request-like
# list of bytes: '+' status, '=' verbatim and '(' big-number elements read as bytes,
# '~' set and '|' attribute frames as lists. Redis refuses the elements and reads
# such a frame as an inline command, so a request holding one must never be
# forwarded as received; and since some are shorter and some longer than the bulk
# form, a mix can add up to the canonical length (see _only_bulk_strings). Also the
# map and push headers '%' and '>': a chunk that ends inside one leaves hiredis
# holding it with no byte unread (see _parse_fast).
_OTHER_TYPES = b"+=(~|%>"
_OTHER_TYPE_HEADER = re.compile(rb"\r\n[+=(~|%>]")
_SMALL = 400

CRLF = b"\r\n"
OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
NULL_BULK = b"$-1\r\n"
NULL_ARRAY = b"*-1\r\n"
NULL3 = b"_\r\n"  # RESP3's null


class ProtocolError(Exception):
    """A client broke the protocol. ``reply`` is the error line Redis would send
    before closing the connection."""

    def __init__(self, message: str):
        super().__init__(message)
        self.reply = b"-ERR Protocol error: " + message.encode() + CRLF


def _parse_length(line: bytes) -> int | None:
    """Redis's string2ll for protocol lengths: optional '-', digits, no leading
    zeros, no '+' or spaces (Python's int() accepts all of those)."""
    digits = line[1:] if line[:1] == b"-" else line
    if not digits.isdigit() or (len(digits) > 1 and digits[:1] == b"0") or len(digits) > 19:
        return None
    value = int(line)
    if line[:1] == b"-" and value == 0:
        return None
    return value


def encoded_length(argv: list) -> int:
    """Bytes of the canonical multibulk encoding of argv (used to find where the
    requests hiredis parsed end in the buffer it was fed)."""
    total = 3 + len(str(len(argv)))
    for arg in argv:
        size = len(arg)
        total += size + (6 if size < 10 else 7 if size < 100 else 5 + len(str(size)))
    return total


def _only_bulk_strings(data: bytes, requests: list[list[bytes]]) -> bool:
    """Whether ``data``, as long as the canonical encoding of the ``requests`` hiredis
    read from it, is that encoding: whether every header in it is '*' or '$'.

    Every header but the chunk's first byte (a '*', checked before) follows a CRLF.
    So a chunk with none of the other types' bytes, or none of them right after a
    CRLF, is proven. Bulk data can hold them too (ZRANGEBYSCORE's '(1', '+inf'):
    only then is the chunk re-encoded, in C, and compared. The parser has already
    checked a chunk of up to _SMALL bytes for those bytes (one translate pass)."""
    if len(data) > _SMALL and (  # memchr scans beat translate here (find: half `in`)
        data.find(b"+") < 0 and data.find(b"=") < 0 and data.find(b"(") < 0
        and data.find(b"~") < 0 and data.find(b"|") < 0 and data.find(b"%") < 0
        and data.find(b">") < 0
    ):
        return True
    if _OTHER_TYPE_HEADER.search(data) is None:
        return True
    return b"".join(map(hiredis.pack_command, map(tuple, requests))) == data


_LIST_ONLY = {list}
_pack_command = hiredis.pack_command


def whole_commands(payload: bytes, count: int) -> bool:
    """Whether ``payload`` is exactly the canonical encoding of ``count`` requests
    (what a peer frame must carry before it goes to a shared Redis connection)."""
    return whole_requests(payload, count) is not None


def whole_requests(payload: bytes, count: int) -> list | None:
    """The ``count`` requests ``payload`` is exactly the canonical encoding of, or
    None (``whole_commands``).

    RequestParser.feed proves the same, but checks each request in Python; knowing
    the count, this reads the payload as one array of ``count`` elements with a
    single hiredis call and checks the result with C-level passes: 0.15 us per
    request against 0.38. hiredis checks lengths as strictly as Redis does
    (string2ll), and bytes left over after the array mean more than ``count``."""
    if payload[:1] != b"*":
        return None
    if _huge_aggregate(payload):  # maybe a hostile header, maybe data: be exact
        parser = RequestParser()
        requests = parser.feed(payload)
        whole = (len(requests) == count and parser.error is None and not parser.pending
                 and b"".join(map(encode_command, requests)) == payload)
        return requests if whole else None
    reader = hiredis.Reader()
    reader.feed(b"*%d\r\n" % count)
    reader.feed(payload)
    try:
        requests = reader.gets()
    except hiredis.ProtocolError:
        return None
    if requests is False or reader.has_data():
        return None
    # Every request a non-empty array (a push frame is a list subclass), every
    # argument bytes: join refuses the integers, lists and None of other types.
    if set(map(type, requests)) != _LIST_ONLY or [] in requests:
        return None
    try:
        b"".join(chain.from_iterable(requests))
    except TypeError:
        return None
    size = len(payload)
    if (size <= _SMALL and len(payload.translate(None, _OTHER_TYPES)) == size) or \
            _only_bulk_strings(payload, requests):
        return requests
    return None


class RequestParser:
    """Feed it received bytes, get back complete requests (lists of bytes).

    After ``feed`` returns, ``error`` holds the reply for a protocol error found
    after the returned requests; the caller answers the requests, sends the error
    and closes the connection, as Redis does. ``max_bulk`` is Redis's
    proto-max-bulk-len (a larger declared argument is a protocol error at once);
    ``max_buffer`` its client-query-buffer-limit: the bytes of an unfinished
    request the parser holds, past which it gives up on the client. Whole requests
    in one ``feed`` take the fast path, which does not look at lengths: both limits
    are exact for any ``max_bulk`` and ``max_buffer`` of at least the size of one
    read (config: 1mb at least, reads 64 KB).
    """

    __slots__ = ("_reader", "_buffer", "error", "clean", "max_bulk", "max_buffer")

    def __init__(self, max_bulk: int = MAX_BULK, max_buffer: int = MAX_QUERY_BUFFER) -> None:
        self.max_bulk = max_bulk
        self.max_buffer = max_buffer
        self._reader = hiredis.Reader()
        # Bytes the slow parser still has to look at; empty while hiredis is in
        # charge and the stream is at a request boundary.
        self._buffer = bytearray()
        self.error: bytes | None = None
        # After feed(): True if the data fed was exactly the canonical encoding of
        # the requests returned - the precondition for forwarding it verbatim.
        self.clean = False

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a complete request."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[list[bytes]]:
        self.clean = False
        if self.error is not None:
            return []
        if self._buffer or data[:1] != b"*":
            self._buffer += data
            return self._parse_slowly([])
        size = len(data)
        if size <= _SMALL:
            # One translate pass both guards hiredis and, later, proves the headers.
            plain = len(data.translate(None, _OTHER_TYPES)) == size
            huge = _HUGE_ARRAY.search(data) is not None or not plain and _HUGE_OTHER.search(data) is not None
        else:
            plain = False
            huge = _huge_aggregate(data)
        if huge:
            self._buffer += data
            return self._parse_slowly([])
        return self._parse_fast(data, plain)

    def _parse_fast(self, data: bytes, plain: bool) -> list[list[bytes]]:
        """``plain``: ``data`` holds none of the _OTHER_TYPES bytes."""
        reader = self._reader
        requests: list[list[bytes]] = []
        skipped = False
        try:
            reader.feed(data)
            gets = reader.gets
            argv = gets()
            if argv.__class__ is list and argv:
                following = gets()
                if following is False and _pack_command(tuple(argv)) == data:
                    # One request, the common case at -P 1: its canonical encoding,
                    # made in C, equal to the chunk is the whole proof (every element
                    # a bulk string, nothing else read) and saves the checks below.
                    self.clean = True
                    return [argv]
                requests.append(argv)
                argv = following
            while argv is not False:
                if argv.__class__ is not list or not argv:
                    if argv is None or argv == []:
                        skipped = True
                        argv = gets()
                        continue  # '*-1' and '*0' are skipped, as Redis does
                    raise ValueError
                requests.append(argv)
                argv = gets()
            # Every argument bytes: join refuses the ints, lists and None hiredis
            # makes of other element types (one C call, not a loop per argument).
            b"".join(chain.from_iterable(requests))
        except (hiredis.ProtocolError, ValueError, TypeError):
            skipped = True
        # Did the requests take every byte? hiredis keeps the bytes of an element
        # it has not finished (has_data()), except its type byte, and the whole
        # header of an aggregate it has not finished. A chunk ending in CRLF has no
        # type byte left over. Each request's own '*' opens the chunk or follows a
        # CRLF, so one '\r\n*' fewer than requests leaves no room for another
        # array, whole, cut or nested; the other aggregates ('%', '>', '~', '|')
        # are _OTHER_TYPES. (Bulk data holding '\r\n*' only sends the chunk to
        # the longer proof: the requests' canonical length.)
        if not skipped and (
            (
                not reader.has_data() and data.endswith(b"\r\n")  # no type byte left
                and data.count(b"\r\n*") + 1 == len(requests)
            )
            or sum(map(encoded_length, requests)) == len(data)
        ) and (plain or _only_bulk_strings(data, requests)):
            self.clean = True
            return requests
        # A request cut by the recv boundary, an inline command after a multibulk
        # one, or something malformed: hand the rest to the exact parser. If the
        # accepted requests were not canonical or frames were skipped, rescan all.
        self._reader = hiredis.Reader()
        consumed = 0 if skipped else sum(map(encoded_length, requests))
        if skipped or data[consumed : consumed + 1] != b"*":
            requests, consumed = [], 0
        self._buffer = bytearray(memoryview(data)[consumed:])
        return self._parse_slowly(requests)

    def _parse_slowly(self, requests: list[list[bytes]]) -> list[list[bytes]]:
        buffer = self._buffer
        pos = 0
        try:
            while pos < len(buffer):
                if buffer[pos] == 0x2A:  # '*'
                    parsed = _parse_multibulk(buffer, pos, self.max_bulk)
                else:
                    parsed = _parse_inline(buffer, pos)
                if parsed is None:
                    break
                argv, pos = parsed
                if argv:
                    requests.append(argv)
        except ProtocolError as exc:
            self.error = exc.reply
            pos = len(buffer)
        del buffer[:pos]
        # Only this parser ever holds an unfinished request (_parse_fast hands it
        # over), so this one check bounds what a client can make the node buffer.
        # Redis closes such a client without a word; dyno says why first.
        if len(buffer) > self.max_buffer:
            self.error = ProtocolError("client query buffer limit reached").reply
            buffer.clear()
        return requests


def _parse_multibulk(buffer: bytearray, pos: int, max_bulk: int) -> tuple[list[bytes], int] | None:
    """One multibulk request at ``pos``: (argv, end) or None if incomplete.
    Raises ProtocolError with Redis's wording (networking.c processMultibulkBuffer)."""
    newline = buffer.find(b"\r\n", pos)
    if newline < 0:
        if len(buffer) - pos > MAX_INLINE:
            raise ProtocolError("too big mbulk count string")
        return None
    count = _parse_length(bytes(buffer[pos + 1 : newline]))
    if count is None or count > MAX_MULTIBULK:
        raise ProtocolError("invalid multibulk length")
    pos = newline + 2
    argv: list[bytes] = []
    for _ in range(max(count, 0)):
        if pos >= len(buffer):
            return None
        newline = buffer.find(b"\r\n", pos)
        if newline < 0:
            if len(buffer) - pos > MAX_INLINE:
                raise ProtocolError("too big bulk count string")
            return None  # Redis waits for the whole line before looking at it
        if buffer[pos] != 0x24:  # '$'
            raise ProtocolError("expected '$', got '%c'" % buffer[pos])
        size = _parse_length(bytes(buffer[pos + 1 : newline]))
        if size is None or size < 0 or size > max_bulk:
            raise ProtocolError("invalid bulk length")
        start = newline + 2
        if len(buffer) < start + size + 2:
            return None
        argv.append(bytes(buffer[start : start + size]))
        pos = start + size + 2
    return argv, pos


def _parse_inline(buffer: bytearray, pos: int) -> tuple[list[bytes], int] | None:
    """One inline command (``SET a b\\r\\n``) at ``pos`` (networking.c processInlineBuffer)."""
    newline = buffer.find(b"\n", pos)
    # Redis looks for the newline with strchr(), which stops at a NUL byte: a NUL
    # before the newline hides it, and Redis waits for more, up to the size limit.
    if newline < 0 or buffer.find(b"\0", pos, newline) >= 0:
        if len(buffer) - pos > MAX_INLINE:
            raise ProtocolError("too big inline request")
        return None
    line = bytes(buffer[pos:newline])
    if line.endswith(b"\r"):
        line = line[:-1]
    argv = split_args(line)
    if argv is None:
        raise ProtocolError("unbalanced quotes in request")
    return argv, newline + 1


_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b", ord("a"): b"\a"}
_HEX = b"0123456789abcdefABCDEF"


def split_args(line: bytes) -> list[bytes] | None:
    """Redis's sdssplitargs: words, "double quoted" with escapes, 'single quoted'.
    Returns None for unbalanced quotes (or a closing quote not followed by a space).
    Redis reads the line as a C string, so a NUL byte ends it."""
    line = line.split(b"\0", 1)[0]  # (the caller already holds back lines with a NUL)
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in b" \n\r\t\v\f":
            i += 1
        if i >= n:
            return args
        current = bytearray()
        in_double = in_single = False
        while True:
            if in_double:
                if i >= n:
                    return None
                c = line[i]
                if (
                    c == 0x5C and i + 3 < n and line[i + 1] == 0x78
                    and line[i + 2] in _HEX and line[i + 3] in _HEX
                ):
                    current.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 0x5C and i + 1 < n:
                    i += 1
                    current += _ESCAPES.get(line[i], bytes([line[i]]))
                elif c == 0x22:
                    if i + 1 < n and line[i + 1] not in b" \n\r\t\v\f":
                        return None
                    in_double = False
                    i += 1
                    break
                else:
                    current.append(c)
            elif in_single:
                if i >= n:
                    return None
                c = line[i]
                if c == 0x5C and i + 1 < n and line[i + 1] == 0x27:
                    i += 1
                    current.append(0x27)
                elif c == 0x27:
                    if i + 1 < n and line[i + 1] not in b" \n\r\t\v\f":
                        return None
                    in_single = False
                    i += 1
                    break
                else:
                    current.append(c)
            else:
                if i >= n:
                    break
                c = line[i]
                if c in b" \n\r\t\v\f":
                    break
                if c == 0x22:
                    in_double = True
                elif c == 0x27:
                    in_single = True
                else:
                    current.append(c)
            i += 1
        args.append(bytes(current))


# -- Replies from Redis ---------------------------------------------------------------


def scan_reply(buffer, pos: int) -> int:
    """End offset of the reply starting at ``pos``, or -1 if it is incomplete.

    Trusts its input: it only ever reads what a Redis server (or a dyno peer
    relaying one) wrote."""
    kind = buffer[pos]
    newline = buffer.find(b"\r\n", pos)
    if newline < 0:
        return -1
    if kind == 0x24 or kind == 0x3D or kind == 0x21:  # '$' bulk; RESP3 '=' verbatim, '!' error
        size = int(buffer[pos + 1 : newline])
        if size < 0:
            return newline + 2
        end = newline + size + 4
        return end if end <= len(buffer) else -1
    if kind == 0x2A or kind == 0x7E or kind == 0x3E or kind == 0x25 or kind == 0x7C:
        # '*' array; RESP3 '~' set, '>' push; '%' map and '|' attribute hold pairs
        count = int(buffer[pos + 1 : newline])
        if kind == 0x25 or kind == 0x7C:
            count *= 2
        pos = newline + 2
        for _ in range(count):
            if pos >= len(buffer):
                return -1
            pos = scan_reply(buffer, pos)
            if pos < 0:
                return -1
        if kind == 0x7C:  # an attribute comes before the reply it describes
            return scan_reply(buffer, pos) if pos < len(buffer) else -1
        return pos
    return newline + 2  # '+', '-', ':'; RESP3 '_' null, ',' double, '#' boolean, '(' big number


def split_replies(data: bytes, count: int) -> list[bytes] | None:
    """``data`` cut into its ``count`` replies, or None if it does not hold exactly
    that many. A run of '+OK' (writes) is recognised in one comparison."""
    if data == OK * count:
        return [OK] * count
    parts = []
    pos = 0
    for _ in range(count):
        end = scan_reply(data, pos) if pos < len(data) else -1
        if end < 0:
            return None
        parts.append(data[pos:end])
        pos = end
    return parts if pos == len(data) else None


# -- Encoding -------------------------------------------------------------------------


def encode_command(argv: list[bytes]) -> bytes:
    """Canonical multibulk encoding of a request (of bytes arguments), by hiredis
    (in C: half the time of a Python join)."""
    return hiredis.pack_command(tuple(argv))


def error(message: str | bytes) -> bytes:
    """An error reply; the message starts with its code (ERR, WRONGTYPE, ...).
    Line breaks in user-supplied text become spaces, as Redis does."""
    if isinstance(message, str):
        message = message.encode()
    return b"-" + message.replace(b"\r", b" ").replace(b"\n", b" ") + CRLF


def status(text: str | bytes) -> bytes:
    if isinstance(text, str):
        text = text.encode()
    return b"+" + text + CRLF


def integer(value: int) -> bytes:
    return b":%d\r\n" % value


def bulk(value: bytes | str | None) -> bytes:
    if value is None:
        return NULL_BULK
    if isinstance(value, str):
        value = value.encode()
    return b"$%d\r\n%s\r\n" % (len(value), value)


def array(items: list[bytes] | None) -> bytes:
    """An array of already-encoded replies."""
    if items is None:
        return NULL_ARRAY
    return b"*%d\r\n" % len(items) + b"".join(items)


def encode(value) -> bytes:
    """Encode a Python value as a reply: bytes/str -> bulk, int -> integer,
    list/tuple -> array, None -> null bulk. For node-made replies (COMMAND, INFO)."""
    if value is None:
        return NULL_BULK
    if isinstance(value, bool):
        return integer(int(value))
    if isinstance(value, int):
        return integer(value)
    if isinstance(value, (bytes, str)):
        return bulk(value)
    if isinstance(value, (list, tuple)):
        return array([encode(v) for v in value])
    if isinstance(value, dict):
        flat = []
        for k, v in value.items():
            flat += [encode(k), encode(v)]
        return array(flat)
    raise TypeError(f"cannot encode {type(value).__name__} as RESP")
