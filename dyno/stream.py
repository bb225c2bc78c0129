"""Non-blocking stdlib sockets driven by trio's low-level waits (DESIGN.md §10).

Shared by every connection dyno owns (datastore, peer links, peer server): connect
without trio's socket wrappers, and the one writer loop that sends everything queued
since its last turn in a single ``send``.
"""

from __future__ import annotations

import errno
import socket

import trio

from dyno import poller
from dyno.wakeup import Wakeup


class ConnectionLost(Exception):
    """The other side went away or broke the protocol; ``reply`` is the error
    line for requests that were waiting on this connection."""

    def __init__(self, reply: bytes, message: str):
        super().__init__(message)
        self.reply = reply


async def connect(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket with TCP_NODELAY.

    A host name is looked up first in a worker thread: ``connect_ex`` would resolve it
    inside the event loop, and a resolver that does not answer (a name gone from DNS, a
    DNS server down) would stall the whole node for its time-out on every attempt."""
    family, address = await _resolve(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex(address)
        if code == errno.EINPROGRESS:
            await trio.lowlevel.wait_writable(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, f"connect to {host}:{port}: {errno.errorcode.get(code, code)}")
        return sock
    except BaseException:
        sock.close()
        raise


async def _resolve(host: str, port: int) -> tuple[int, tuple]:
    """(family, socket address) to connect to: an IP address as it is, a name by
    getaddrinfo in a thread (its first answer; gaierror, an OSError, if none)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.inet_pton(family, host)
    except OSError:
        answers = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = answers[0]
        return family, address
    return family, (host, port)


class ListenError(OSError):
    """A port the node's config names could not be opened: the message names the
    config key and the address, and says why in words (``str()`` is just that line)."""

    WHY = {
        errno.EADDRINUSE: "is already in use (another process holds it)",
        errno.EADDRNOTAVAIL: "is not an address of this host",
        errno.EACCES: "is not allowed to this user (ports below 1024 need root)",
    }

    def __init__(self, key: str, host: str, port: int, error: OSError):
        why = self.WHY.get(error.errno) or f"cannot be opened ({error.strerror or error})"
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__(error.errno, f"{key} {address} {why}")
        self.key = key
        self.address = address

    def __str__(self) -> str:
        return self.strerror


def listen_socket(host: str, port: int, backlog: int = 1024, reuse_port: bool = False) -> socket.socket:
    """``reuse_port``: several processes listen on the port (a node's workers,
    dyno.workers); the kernel spreads new connections over them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Receiver:
    """Reads one socket for its connection's reader task: try first, and wait through
    the Poller only when the last read emptied the socket (dyno.poller).
    The connection ending or failing raises ConnectionLost(broken, ...)."""

    __slots__ = ("sock", "size", "broken", "closed", "_watch", "_drained", "_handle", "_error")

    def __init__(self, sock: socket.socket, size: int, broken: bytes, closed: str = "connection closed"):
        self.sock = sock
        self.size = size
        self.broken = broken
        self.closed = closed
        self._watch = poller.watch(sock)
        self._drained = True
        self._handle = None
        self._error: BaseException | None = None

    async def receive(self) -> bytes:
        """What the socket has (at most ``size`` bytes), once it has something."""
        if self._drained:
            await self._watch.wait()
        else:  # the last read filled the buffer: more is likely there, but let others run
            await trio.lowlevel.checkpoint()
        while True:
            data = self._recv()
            if data is not None:
                return data
            await self._watch.wait()

    async def serve(self, handle) -> None:
        """Pass everything the socket receives to ``handle(data)`` (synchronous), until
        the connection ends (ConnectionLost) or ``handle`` raises. While the task is
        parked the poller reads and calls ``handle`` itself, so a read costs no task
        switch; the task wakes only to let others run after a full read, or to
        raise what the poller's read ran into."""
        self._handle = handle
        while True:
            if self._drained:
                await self._watch.wait(self._inline)
            else:
                await trio.lowlevel.checkpoint()
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            data = self._recv()
            if data is None:
                self._drained = True
            else:
                handle(data)

    def _recv(self) -> bytes | None:
        """One recv: the data, or None if there was none (EAGAIN)."""
        try:
            data = self.sock.recv(self.size)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise ConnectionLost(self.broken, f"recv failed: {exc}") from None
        if not data:
            raise ConnectionLost(self.broken, self.closed)
        self._drained = len(data) < self.size and not self._watch.ended
        return data

    def _inline(self) -> bool:
        """The poller's read while ``serve``'s task is parked (see Watch.wait)."""
        try:
            data = self._recv()
            if data is not None:
                self._handle(data)
        except Exception as exc:  # raised in the reader's task, as if it had read
            self._error = exc
            return False
        return self._drained

    def close(self) -> None:
        """Stop watching the socket (call before closing it)."""
        self._watch.close()


class Listener:
    """A listening socket whose every connection gets its own task."""

    def __init__(self, host: str, port: int):
        self.host = host
        self.port = port
        self.sock: socket.socket | None = None
        self.reuse_port = False  # set by a node's worker: its siblings listen on the port too
        # Set by a node's worker for its client port: where its connections come from
        # instead of a socket of its own (``handed(on_connection, log)``: the
        # supervisor accepts them and hands them over, dyno.workers).
        self.handed = None

    def bind(self) -> None:
        """Open the port now (port 0 picks a free one), so callers know it is open."""
        self.sock = listen_socket(self.host, self.port, reuse_port=self.reuse_port)
        self.port = self.sock.getsockname()[1]

    async def serve(self, on_connection, log) -> None:
        if self.handed is not None:
            await self.handed(on_connection, log)
        else:
            await accept_loop(self.sock, on_connection, log)


async def write_loop(sock: socket.socket, out: list, wakeup: Wakeup, broken: bytes, before_turn=None) -> None:
    """Send whatever is appended to ``out``, batching everything queued since the
    last turn into one send. ``wakeup`` is set by whoever appends. ``before_turn``,
    if given, is called at the start of every turn (to append what was held back).

    A turn is ``flush``. While this task is parked, the poller makes most turns
    itself (see dyno.wakeup): no task switch. The task wakes to wait for room when
    the socket is full, and to raise ConnectionLost when a send fails."""

    def flush() -> bool:
        """One turn: True if everything went, False if the socket is full (the rest
        stays first in ``out``)."""
        if before_turn is not None:
            before_turn()
        if not out:
            return True
        data = b"".join(out) if len(out) > 1 else out[0]
        try:
            sent = sock.send(data)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise ConnectionLost(broken, f"send failed: {exc}") from None
        if sent == len(data):
            out.clear()
            return True
        out[:] = [memoryview(data)[sent:]]
        return False

    await drive_writer(sock, wakeup, flush)


async def drive_writer(sock: socket.socket, wakeup: Wakeup, flush) -> None:
    """A writer's task around its ``flush`` (one turn: True if everything went): the
    poller makes turns while it is parked (``wakeup.flush``); it wakes to wait for
    room when ``sock`` is full."""
    wakeup.flush = flush
    try:
        while True:
            if flush():
                await wakeup.wait()
            else:
                await trio.lowlevel.wait_writable(sock)
    finally:
        wakeup.flush = None


async def accept_loop(sock: socket.socket, on_connection, log) -> None:
    """Accept connections forever; ``on_connection(conn, address)`` starts their task."""
    try:
        while True:
            await trio.lowlevel.wait_readable(sock)
            while True:
                try:
                    conn, address = sock.accept()
                except BlockingIOError:
                    break
                except OSError as exc:  # EMFILE and friends: back off, keep serving
                    log.warning("accept failed: %s", exc)
                    await trio.sleep(0.1)
                    break
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                on_connection(conn, address)
    finally:
        sock.close()
