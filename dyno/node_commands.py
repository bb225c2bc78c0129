"""Commands the node answers itself: connection commands and introspection.

A handler gets the node, the client, the argv and the reply slot. It returns the
reply bytes, or None when it has arranged for the slot to be filled later (INFO asks
the datastore for its keyspace first). Arity and unknown subcommands were already
checked against the command table; what is left here is argument meaning.
Wording follows Redis 7.0 wherever Redis has the same situation.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Callable

from dyno import __version__, auth, resp
from dyno.commands import arity_error
from dyno.config import CONSISTENCY_LEVELS
from dyno.datastore import Sink

if TYPE_CHECKING:
    from dyno.client import ClientConnection, ReplySlot
    from dyno.node import Node

# The Redis version dyno speaks; clients use it to pick features (HELLO, INFO).
REDIS_VERSION = "7.0.15"

_SYNTAX = resp.error("ERR syntax error")
_NOT_INTEGER = resp.error("ERR value is not an integer or out of range")
_BAD_NAME = resp.error("ERR Client names cannot contain spaces, newlines or special characters.")


def _ping(node, client, argv, slot):
    if len(argv) > 2:  # COMMAND says arity -1; pingCommand itself refuses more
        return arity_error(b"ping")
    return resp.PONG if len(argv) == 1 else resp.bulk(argv[1])


def _echo(node, client, argv, slot):
    return resp.bulk(argv[1])


def _quit(node, client, argv, slot):
    client.closing = True
    return resp.OK


def _select(node, client, argv, slot):
    try:
        index = int(argv[1])
    except ValueError:
        return _NOT_INTEGER
    if index == 0:
        return resp.OK
    return resp.error("ERR dyno: only database 0 exists in a dyno cluster (SELECT is limited to 0)")


_NO_PASSWORD = auth.NO_PASSWORD


def _auth(node, client, argv, slot):
    if len(argv) > 3:
        return _SYNTAX
    if len(argv) == 2:
        if node.password.secret is None:
            return _NO_PASSWORD
        return _authenticate(node, client, b"default", argv[1])
    return _authenticate(node, client, argv[1], argv[2])


def _authenticate(node, client, username: bytes, password: bytes) -> bytes:
    """AUTH [username] password (dyno.auth): with no requirepass, as Redis with no
    password answers it (the default user takes any password)."""
    reply = node.password.check(username, password)
    if reply is resp.OK:
        client.authenticated = True
    return reply


def _hello(node, client, argv, slot):
    args = argv[1:]
    if args:
        try:
            version = int(args[0])
        except ValueError:
            return resp.error("ERR Protocol version is not an integer or out of range")
        if version not in (2, 3):
            return resp.error("NOPROTO unsupported protocol version")
        rest = args[1:]
        while rest:
            option = rest[0].upper()
            if option == b"SETNAME" and len(rest) >= 2:
                error = _set_client_name(client, rest[1])
                if error:
                    return error
                rest = rest[2:]
            elif option == b"AUTH" and len(rest) >= 3:
                reply = _authenticate(node, client, rest[1], rest[2])
                if reply is not resp.OK:
                    return reply
                rest = rest[3:]
            else:
                return resp.error(f"ERR Syntax error in HELLO option '{rest[0].decode(errors='replace')}'")
        if not client.authenticated and node.password.secret is not None:
            return auth.NOAUTH_HELLO
        client.protocol = version
    elif not client.authenticated and node.password.secret is not None:
        return auth.NOAUTH_HELLO
    fields = [
        b"server", b"redis", b"version", REDIS_VERSION, b"proto", client.protocol, b"id", client.id,
        b"mode", b"standalone", b"role", b"master", b"modules", [],
    ]
    if client.protocol == 3:  # a map, as Redis answers a RESP3 client
        return b"%%%d\r\n" % (len(fields) // 2) + b"".join(resp.encode(f) for f in fields)
    return resp.encode(fields)


def _set_client_name(client, name: bytes) -> bytes | None:
    if any(c <= 32 or c >= 127 for c in name):
        return _BAD_NAME
    client.name = name
    return None


def _client(node, client, argv, slot):
    sub = argv[1].lower()
    if sub == b"setname":
        return _set_client_name(client, argv[2]) or resp.OK
    if sub == b"getname":
        if not client.name and client.protocol == 3:
            return resp.NULL3
        return resp.bulk(client.name or None)
    if sub == b"id":
        return resp.integer(client.id)
    if sub in (b"info", b"list"):
        clients = [client] if sub == b"info" else list(node.clients.values())
        lines = b"".join(_client_line(node, c) for c in clients)
        return resp.bulk(lines[:-1] if sub == b"info" else lines)
    if sub == b"setinfo":
        return resp.OK
    if sub == b"help":
        return resp.encode(
            [
                b"CLIENT <subcommand> [<arg> ...]. Subcommands are:",
                b"GETNAME", b"    Return the name of the current connection.",
                b"ID", b"    Return the ID of the current connection.",
                b"INFO", b"    Return information about the current client connection.",
                b"LIST", b"    Return information about client connections.",
                b"SETNAME <name>", b"    Assign the name <name> to the current connection.",
            ]
        )
    return resp.error(
        f"ERR dyno: CLIENT {argv[1].decode(errors='replace').upper()} is not supported by a dyno node"
    )


def _client_line(node, client) -> bytes:
    import trio

    age = int(trio.current_time() - client.created)
    return b"id=%d addr=%s name=%s age=%d db=0 cmd=client\n" % (
        client.id, client.address.encode(), client.name, age,
    )


def _from_redis(node, client, argv, slot):
    """Answers that are the same on every Redis: the local one's. COMMAND (Redis's
    own replies are the truth about arity, flags and key specs; clients use them for
    hints and key extraction), TIME, LOLWUT and the *HELP subcommands. Nothing here
    may change the connection's state: other clients share it.
    The client's pool answers (RESP2 or RESP3 connections)."""
    datastore = node.datastore3 if client.protocol == 3 else node.datastore
    datastore.send(resp.encode_command(argv), slot, client.id)
    return None


def _reset(node, client, argv, slot):
    # What RESET undoes that dyno keeps per client; never sent to the shared
    # connection, whose RESP3 state other clients rely on.
    client.protocol = 2
    client.name = b""
    client.consistency_override.clear()
    client.authenticated = node.password.secret is None  # Redis: RESET de-authenticates
    return b"+RESET\r\n"


class _InfoSink(Sink):
    """Adds Redis's keyspace section to the node's own INFO sections."""

    __slots__ = ("slot", "head")

    def __init__(self, slot: "ReplySlot", head: bytes):
        self.slot = slot
        self.head = head

    def deliver(self, reply: bytes) -> None:
        keyspace = b""
        if reply[:1] == b"$":
            keyspace = reply[reply.index(b"\r\n") + 2 : -2]
        self.slot.deliver(resp.bulk(self.head + keyspace))


def _info(node, client, argv, slot):
    sections = [s.lower() for s in argv[1:]] or [b"default"]
    everything = any(s in (b"all", b"everything", b"default") for s in sections)
    head = node.info_text(sections, everything).encode()
    if everything or b"keyspace" in sections:
        payload = resp.encode_command([b"INFO", b"keyspace"])
        node.datastore.send(payload, _InfoSink(slot, head), client.id)
        return None
    return resp.bulk(head)


def dyno_config(client, argv) -> bytes:
    """Dynomite's per-connection override: ``DYNO_CONFIG:CONN_CONSISTENCY <level>``."""
    name = argv[0].upper()
    if name != b"DYNO_CONFIG:CONN_CONSISTENCY":
        return resp.error(f"ERR dyno: unknown setting '{argv[0].decode(errors='replace')}'")
    if len(argv) != 2:
        return resp.error("ERR wrong number of arguments for 'dyno_config:conn_consistency' command")
    level = argv[1].decode(errors="replace").upper()
    if level not in CONSISTENCY_LEVELS:
        return resp.error(f"ERR dyno: '{level}' is not one of {', '.join(CONSISTENCY_LEVELS)}")
    client.consistency_override = {"read": level, "write": level}
    return resp.OK


Handler = Callable[["Node", "ClientConnection", list, "ReplySlot"], "bytes | None"]

HANDLERS: dict[bytes, Handler] = {
    b"ping": _ping,
    b"echo": _echo,
    b"quit": _quit,
    b"select": _select,
    b"auth": _auth,
    b"hello": _hello,
    b"client": _client,
    b"info": _info,
    b"reset": _reset,
}


def run(node, client, spec, argv, slot) -> bytes | None:
    return HANDLERS.get(argv[0].lower(), _from_redis)(node, client, argv, slot)


def server_info(node) -> dict[str, object]:
    """Fields of INFO's server section."""
    return {
        "redis_version": REDIS_VERSION,
        "dyno_version": __version__,
        "redis_mode": "standalone",
        "os": " ".join(os.uname()[::2]),
        "process_id": os.getpid(),
        "tcp_port": node.listener.port,
        "uptime_in_seconds": int(time.time() - node.started),
    }
