"""TLS over dyno's raw non-blocking sockets (dyno.stream), fit for the poller.

An ``ssl.SSLSocket`` would hide two things the edge-triggered poller (dyno.poller)
must see: decrypted bytes can sit inside the SSL object while the kernel socket is
empty (no edge will ever come for them), and a full socket raises
SSLWantWriteError, not BlockingIOError. So a ``TLSSession`` is an
``ssl.SSLObject`` between two memory BIOs, and the kernel socket is read and
written raw, exactly as a plaintext connection's:

- a read feeds what ``recv`` returned to the session and decrypts *everything* it
  completed, so nothing waits inside the SSL object; the socket counts as drained
  exactly when the raw ``recv`` came back short or empty (``TLSReceiver``);
- a write encrypts all it is given into the outgoing BIO (that never blocks) and
  sends what the socket takes; the rest waits for the socket to be writable
  (``write_loop``, the same turns as ``dyno.stream.write_loop``);
- the handshake runs the same way, with a deadline, in the connection's own task
  and before its first frame (``TLSSession.handshake``).

This module owns that mechanism only. It never decides who must use TLS or with
which certificates (``dyno.tls`` builds the contexts; the peer port decides which
links), and it never opens a socket.
"""

from __future__ import annotations

import socket
import ssl

import trio

from dyno.stream import ConnectionLost, Receiver, drive_writer
from dyno.wakeup import Wakeup

__all__ = ["TLS_HANDSHAKE", "TLSHandshakeError", "TLSReceiver", "TLSSession", "write_loop"]

TLS_HANDSHAKE = 0x16  # the first byte of every TLS connection (a handshake record)
_HANDSHAKE_READ = 64 * 1024
_PLAINTEXT_READ = 256 * 1024


class TLSHandshakeError(Exception):
    """The handshake failed or did not finish in time; the message says why, in one line."""


def describe(exc: BaseException) -> str:
    """One line for an ``ssl`` error: the verification message when there is one
    (``certificate verify failed: unable to get local issuer certificate``), else
    OpenSSL's reason (``TLSV1_ALERT_UNKNOWN_CA``)."""
    verify = getattr(exc, "verify_message", None)
    if verify:
        return f"certificate verify failed: {verify}"
    reason = getattr(exc, "reason", None)
    if reason:
        return reason.lower().replace("_", " ")
    return str(exc) or exc.__class__.__name__


class TLSSession:
    """One TLS connection over the connected non-blocking socket ``sock``."""

    __slots__ = ("sock", "_tls", "_incoming", "_outgoing", "_unsent", "ended")

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, *, server_side: bool):
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._unsent: bytes | memoryview = b""  # ciphertext the socket has not taken yet
        self.ended = False  # the other side closed the TLS session (close_notify)

    async def handshake(self, timeout: float) -> None:
        """Run the handshake; TLSHandshakeError if it fails or takes over ``timeout`` s.
        Bytes the other side sent after its part stay in the session for the first read."""
        tls = self._tls
        with trio.move_on_after(timeout):
            while True:
                try:
                    tls.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
                except ssl.SSLError as exc:
                    self._send_alert()
                    raise TLSHandshakeError(describe(exc)) from None
                try:
                    while not self.push():
                        await trio.lowlevel.wait_writable(self.sock)
                except OSError as exc:
                    raise TLSHandshakeError(f"connection failed during the TLS handshake: {exc}") from None
                if done:
                    return
                await self._fill()
        raise TLSHandshakeError(f"no TLS handshake within {timeout:g} s")

    def _send_alert(self) -> None:
        """Tell the other side why (the alert OpenSSL queued), if the socket takes it now."""
        try:
            self.push()
        except OSError:
            pass

    async def _fill(self) -> None:
        """Wait for handshake bytes and feed all the socket has to the session."""
        while True:
            try:
                data = self.sock.recv(_HANDSHAKE_READ)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            except OSError as exc:
                raise TLSHandshakeError(f"connection failed during the TLS handshake: {exc}") from None
            if not data:
                raise TLSHandshakeError("the other side closed the connection during the TLS handshake "
                                        "(a plaintext peer, or one that refused our certificate)")
            self._incoming.write(data)
            if len(data) < _HANDSHAKE_READ:
                return

    def feed(self, data: bytes) -> None:
        """Ciphertext read from the socket."""
        self._incoming.write(data)

    def decrypt(self) -> bytes:
        """All the plaintext the ciphertext fed so far completes (b"" if none: a
        record is still partial). Raises ssl.SSLError if the other side broke TLS or
        sent an alert; sets ``ended`` on its close_notify."""
        tls = self._tls
        incoming = self._incoming
        chunks = []
        try:
            while True:
                chunk = tls.read(_PLAINTEXT_READ)
                if not chunk:
                    break
                chunks.append(chunk)
                if not incoming.pending and not tls.pending():
                    break  # everything fed was decrypted (no exception needed to learn it)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self.ended = True
        if self._outgoing.pending:  # e.g. a key update's answer: goes out with the next write
            self._unsent = bytes(self._unsent) + self._outgoing.read()
        return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    def send(self, data: bytes) -> bool:
        """Encrypt ``data`` (all of it, whatever the socket takes) and send what the
        socket takes; True if nothing is left unsent. OSError if the socket failed."""
        if data:
            self._tls.write(data)
        return self.push()

    def push(self) -> bool:
        """Send ciphertext still waiting; True if none is left."""
        outgoing = self._outgoing
        if outgoing.pending:
            more = outgoing.read()
            self._unsent = bytes(self._unsent) + more if self._unsent else more
        unsent = self._unsent
        if not unsent:
            return True
        try:
            sent = self.sock.send(unsent)
        except BlockingIOError:
            return False
        if sent == len(unsent):
            self._unsent = b""
            return True
        self._unsent = memoryview(unsent)[sent:]
        return False


class TLSReceiver(Receiver):
    """A ``dyno.stream.Receiver`` for a TLS session: the same waits, decrypted data."""

    __slots__ = ("session", "_closing")

    def __init__(self, session: TLSSession, size: int, broken: bytes, closed: str = "connection closed"):
        super().__init__(session.sock, size, broken, closed)
        self.session = session
        self._closing = False
        # The handshake may have left whole records in the session: read before waiting.
        self._drained = False

    def _recv(self) -> bytes | None:
        session = self.session
        size = self.size
        while True:
            if self._closing:
                raise ConnectionLost(self.broken, self.closed)
            try:
                raw = self.sock.recv(size)
            except BlockingIOError:
                raw = None
            except OSError as exc:
                raise ConnectionLost(self.broken, f"recv failed: {exc}") from None
            if raw:
                session.feed(raw)
            try:
                data = session.decrypt()
            except ssl.SSLError as exc:
                raise ConnectionLost(self.broken, f"TLS: {describe(exc)}") from None
            full = raw is not None and len(raw) == size
            if raw == b"" or session.ended:
                self._closing = True  # after the plaintext that came before the end
            if data:
                self._drained = not full and not self._watch.ended and not self._closing
                return data
            if not full and not self._closing:
                return None  # the socket is empty; a partial record waits for its rest


async def write_loop(session: TLSSession, out: list, wakeup: Wakeup, broken: bytes, before_turn=None) -> None:
    """``dyno.stream.write_loop`` for a TLS session: each turn encrypts everything
    queued since the last one and sends what the socket takes; the task waits for
    the socket to be writable while ciphertext is left over."""
    sock = session.sock

    def flush() -> bool:
        if before_turn is not None:
            before_turn()
        try:
            if out:
                data = b"".join(out) if len(out) > 1 else out[0]
                out.clear()
                return session.send(data)
            return session.push()
        except OSError as exc:  # ssl.SSLError is one too
            raise ConnectionLost(broken, f"send failed: {exc}") from None

    await drive_writer(sock, wakeup, flush)
