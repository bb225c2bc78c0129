"""TLS connections that read and write like dyno's non-blocking sockets.

The client port (``dyno.client``) reads plain sockets with a private edge-triggered
epoll (``dyno.poller``) and speaks to them through three calls: ``recv``, ``send`` and
``fileno``, with ``BlockingIOError`` for "nothing now" and ``b""`` for the end.
``TLSSocket`` gives an ``ssl.SSLSocket`` exactly that face, so the reading and writing
code is one and the same for both, and the plaintext path gains nothing per read.
What the adapter owns are the three ways TLS differs from TCP there:

1. ``SSLSocket.recv`` returns at most one TLS record, and decrypted bytes can wait
   inside the SSL object while the kernel socket is already empty, so an edge-triggered
   reader that took a short read for "drained" would stall with a request half in
   hand. ``TLSSocket.recv`` reads record after record until OpenSSL wants more from the
   kernel (``SSLWantReadError``: the kernel socket *is* empty, a new edge will come) or
   the caller's buffer size is reached (the caller then reads again, as after any
   full read).
2. A non-blocking ``send`` raises ``SSLWantWriteError`` (an ``OSError``, not a
   ``BlockingIOError``) when the kernel buffer is full. OpenSSL then holds on to the
   part it already encrypted and must be called again with the same bytes first
   (CPython allows a moved buffer, and a longer one that starts with them): that is
   what a caller that keeps its unsent bytes and retries does anyway, so it becomes
   "sent 0" (``BlockingIOError``).
3. The end of the stream comes as ``close_notify`` (``SSLZeroReturnError``), as a TCP
   FIN without it (``SSLEOFError``, a "ragged EOF": most Redis clients close that way)
   or as ``b""``: all are ``b""`` here, a clean end.

``accept()`` runs the server side of the handshake on an accepted socket with a
deadline; the caller gives it a task of its own, so a slow or failed handshake costs
only that connection. Nothing here reads a config or logs; errors are raised as
``TLSHandshakeError`` with a one-line reason.
"""

from __future__ import annotations

import socket
import ssl

import trio

__all__ = ["TLSHandshakeError", "TLSSocket", "accept"]


class TLSHandshakeError(Exception):
    """The TLS handshake with a connecting client failed or took too long."""


class TLSSocket:
    """A connected, handshaken, non-blocking ``SSLSocket`` with a plain socket's
    ``recv``/``send`` semantics (see the module docstring)."""

    __slots__ = ("ssl", "_ended")

    def __init__(self, ssl_sock: ssl.SSLSocket):
        self.ssl = ssl_sock
        self._ended = False  # the end was seen after data: the next recv returns b""

    def fileno(self) -> int:
        return self.ssl.fileno()

    def recv(self, size: int) -> bytes:
        """Up to ``size`` decrypted bytes: every record the kernel and OpenSSL hold,
        unless ``size`` is reached first. ``BlockingIOError`` if there is none yet,
        ``b""`` at the end of the stream; other failures raise ``OSError``."""
        if self._ended:
            return b""
        recv = self.ssl.recv
        try:
            data = recv(size)
        except ssl.SSLWantReadError:
            raise BlockingIOError from None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""
        if not data or len(data) >= size:
            return data
        # One record so far; more may be decrypted or decryptable already.
        chunks = [data]
        have = len(data)
        while have < size:
            try:
                data = recv(size - have)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._ended = True
                break
            if not data:
                self._ended = True
                break
            chunks.append(data)
            have += len(data)
        return b"".join(chunks)

    def send(self, data) -> int:
        """Send all of ``data`` (OpenSSL writes whole buffers, or nothing it reports):
        ``len(data)``, or ``BlockingIOError`` when the kernel buffer is full (call
        again with the same bytes first, see the module docstring)."""
        try:
            return self.ssl.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            raise BlockingIOError from None

    def close(self) -> None:
        # No close_notify: the connection is being dropped, or the client left first;
        # Redis's own TLS does the same on a closing client.
        self.ssl.close()


async def accept(sock: socket.socket, context: ssl.SSLContext, timeout: float) -> TLSSocket:
    """The server side of the TLS handshake on an accepted non-blocking socket, within
    ``timeout`` seconds. On failure the socket is closed and ``TLSHandshakeError``
    raised with a one-line reason; cancellation closes it too."""
    try:
        tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    except (OSError, ValueError) as exc:
        sock.close()
        raise TLSHandshakeError(f"cannot start TLS: {exc}") from None
    try:
        with trio.move_on_after(timeout) as scope:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await trio.lowlevel.wait_readable(tls)
                except ssl.SSLWantWriteError:
                    await trio.lowlevel.wait_writable(tls)
        if scope.cancelled_caught:
            raise TLSHandshakeError(f"no TLS handshake within {timeout:g} s")
    except ssl.SSLError as exc:
        tls.close()
        raise TLSHandshakeError(f"TLS handshake failed: {_reason(exc)}") from None
    except OSError as exc:  # reset, or the kernel's EOF before a Finished message
        tls.close()
        raise TLSHandshakeError(f"TLS handshake failed: {exc.strerror or exc}") from None
    except BaseException:
        tls.close()
        raise
    return TLSSocket(tls)


# OpenSSL's reasons that mean "this is not a TLS client at all".
_NOT_TLS = {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE"}


def _reason(exc: ssl.SSLError) -> str:
    # "WRONG_VERSION_NUMBER" and friends: OpenSSL's reason, without the file:line noise.
    reason = exc.reason or exc.strerror or str(exc)
    if reason in _NOT_TLS:
        return f"{reason} (not TLS: a plaintext client?)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{reason} ({exc.verify_message})"
    return str(reason)
