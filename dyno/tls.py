"""TLS contexts from a node's certificate files, with one-line errors.

The client port and the peer port build their ``ssl.SSLContext`` here, so both get
the same floor (TLS 1.2 or newer, the stdlib's default ciphers) and a bad file is
reported the same way: ``TLSConfigError("client_tls_key: ...")`` naming the config
key, never an ``ssl`` traceback. Nothing here opens a socket.
"""

from __future__ import annotations

import os
import ssl

__all__ = ["TLSConfigError", "client_context", "client_port_context", "server_context"]


class TLSConfigError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names the key."""


def _load_chain(context: ssl.SSLContext, cert: str, key: str, names: tuple[str, str]) -> None:
    for path, name in ((cert, names[0]), (key, names[1])):
        if not os.path.isfile(path):  # ssl's error would not say which of the two
            raise TLSConfigError(f"{name}: no such file ({path})")
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(
            f"{names[0]}/{names[1]}: cannot use {cert} with {key} ({_reason(exc)}); "
            "are they PEM, and is the key the certificate's?") from None


def _load_ca(context: ssl.SSLContext, ca: str, name: str) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except FileNotFoundError:
        raise TLSConfigError(f"{name}: no such file ({ca})") from None
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"{name}: cannot use {ca} as a CA bundle ({_reason(exc)})") from None


def _reason(exc: Exception) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)


def server_context(cert: str, key: str, ca: str | None = None, *,
                   names: tuple[str, str, str] = ("tls_cert", "tls_key", "tls_ca")) -> ssl.SSLContext:
    """The context of a listening side: our certificate; with ``ca``, the other side
    must show a certificate signed by it (mutual TLS). ``names`` are the config keys
    the three files came from, for errors."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, cert, key, names[:2])
    if ca is not None:
        _load_ca(context, ca, names[2])
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca: str, cert: str | None = None, key: str | None = None, *,
                   check_hostname: bool = True,
                   names: tuple[str, str, str] = ("tls_cert", "tls_key", "tls_ca")) -> ssl.SSLContext:
    """The context of a connecting side: the other side's certificate must be signed
    by ``ca`` (and, with ``check_hostname``, name the host we dialled); with
    ``cert``/``key`` we show our own."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    _load_ca(context, ca, names[2])
    if cert is not None and key is not None:
        _load_chain(context, cert, key, names[:2])
    return context


CLIENT_PORT_KEYS = ("client_tls_cert", "client_tls_key", "client_tls_ca")


def client_port_context(config) -> ssl.SSLContext | None:
    """The client port's context from a ``dyno.config.Config`` (client_tls_*), or None
    when the port speaks plaintext. ``dyno start`` and ``dyno check-config`` call it
    before anything runs, so a bad file stops both with one line."""
    if config.client_tls_cert is None:
        return None
    context = server_context(config.client_tls_cert, config.client_tls_key, config.client_tls_ca,
                             names=CLIENT_PORT_KEYS)
    # No TLS 1.2 renegotiation: mid-stream it would make a write wait for a read
    # (dyno.tls_socket treats a blocked write as "wait until writable"); Redis refuses it too.
    context.options |= ssl.OP_NO_RENEGOTIATION
    return context
