"""Client authentication (``requirepass``), as Redis 6+ does it for the default user.

With a password configured, a connection starts unauthenticated: every command but
AUTH, HELLO (with its AUTH option) and QUIT gets Redis's ``-NOAUTH`` error, and
nothing it sent reaches the ring. ``AUTH pass``, ``AUTH default pass`` and ``HELLO
3 AUTH default pass`` authenticate it; a wrong password gets ``-WRONGPASS`` (and is
counted), compared in constant time. RESET makes it unauthenticated again. An
authenticated connection's batches go straight to the coordinator: the check costs
one attribute read per batch.

What this module never does: keep or log a password, or answer a request it
refuses with anything but Redis's own error lines.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from dyno import resp
from dyno.client import ReplySlot

NOAUTH = resp.error("NOAUTH Authentication required.")
NOAUTH_HELLO = resp.error(
    "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO "
    "<proto> AUTH <user> <pass> option can be used to authenticate the client and select the "
    "RESP protocol version at the same time"
)
WRONGPASS = resp.error("WRONGPASS invalid username-password pair or user is disabled.")
NO_PASSWORD = resp.error(
    "ERR AUTH <password> called without any password configured for the default user. "
    "Are you sure your configuration is correct?"
)
# What an unauthenticated connection may send (Redis's no-auth commands).
_BEFORE_AUTH = frozenset({b"auth", b"hello", b"quit"})


class Password:
    """The password clients must give (``requirepass``), or None: no AUTH needed."""

    __slots__ = ("secret", "failures")

    def __init__(self, secret: str | None):
        self.secret = None if secret is None else secret.encode()
        self.failures = 0  # wrong passwords given (metrics)

    def check(self, username: bytes, password: bytes) -> bytes:
        """AUTH [username] password: +OK or the error line Redis gives."""
        secret = self.secret
        if secret is None:  # Redis with no password: the default user takes any
            return resp.OK if username == b"default" else WRONGPASS
        right = hmac.compare_digest(password, secret)
        if username == b"default" and right:
            return resp.OK
        self.failures += 1
        return WRONGPASS


def gate(password: Password, execute_batch: Callable) -> Callable:
    """``execute_batch`` for a node whose clients must authenticate: what a client
    sends before it has is refused, request by request, until AUTH succeeds."""

    def execute(client, requests: list[list[bytes]], raw: bytes | None) -> None:
        if client.authenticated:
            execute_batch(client, requests, raw)
            return
        for index, argv in enumerate(requests):
            if client.authenticated:  # the AUTH before this one succeeded
                execute_batch(client, requests[index:], None)
                return
            if argv and argv[0].lower() in _BEFORE_AUTH:
                execute_batch(client, [argv], None)
                continue
            slot = ReplySlot(client)
            client.replies.append(slot)
            slot.deliver(NOAUTH)

    return execute
