"""Which peer links use TLS (``secure_server_option``), and with which certificates.

Dynomite's four values, with Dynomite's meaning (src/dyn_dnode_peer.c,
is_conn_secured): a link between this node and a peer is TLS when

    none        never
    rack        the peer is in another rack, or in another datacenter (a rack of
                the same name in another DC is another rack)
    datacenter  the peer is in another datacenter
    all         always

Unlike Dynomite (which encrypts with a home-made RSA+AES scheme and never checks
who is on the other end), a TLS link is mutually authenticated: both sides show a
certificate signed by the cluster CA (``peer_tls_ca``) and both verify the other's.
That signature is the identity that matters: host names are not checked, because
peers are dialled by the addresses in ``dyn_seeds`` and gossip (often bare IPs,
sometimes a NAT's), and a node whose certificate the cluster CA signed is a member
whatever address it is reached at.

The accepting side (dyno.peer.PeerConnection) takes TLS from any peer once TLS is
configured; a plaintext peer only where this table says its link may be plaintext,
judged from the datacenter and rack its HELLO claims (a plaintext peer claiming
another rack or DC where TLS is required is refused, and logged).

Nothing here touches a socket; ``PeerTLS.from_config`` reads the certificate files
(dyno.tls), raising TLSConfigError with a one-line message naming the key.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from dyno import tls

if TYPE_CHECKING:
    from dyno.config import Config

__all__ = ["KEYS", "PeerTLS", "needs_tls"]

KEYS = ("peer_tls_cert", "peer_tls_key", "peer_tls_ca")


def needs_tls(option: str, dc: str, rack: str, peer_dc: object, peer_rack: object) -> bool:
    """Whether the link between a node in ``dc``/``rack`` and a peer in
    ``peer_dc``/``peer_rack`` must be TLS under ``secure_server_option`` ``option``.
    A place that is not known (or not a string) counts as another one."""
    if option == "none":
        return False
    if option == "datacenter":
        return peer_dc != dc
    if option == "rack":
        return peer_dc != dc or peer_rack != rack
    return True  # all


class PeerTLS:
    """This node's place and option, and the two contexts its peer links use:
    ``server`` for connections it accepts, ``client`` for those it makes. Both
    require the other side's certificate, signed by the cluster CA."""

    __slots__ = ("option", "dc", "rack", "server", "client")

    def __init__(self, option: str, dc: str, rack: str, server: ssl.SSLContext, client: ssl.SSLContext):
        self.option = option
        self.dc = dc
        self.rack = rack
        self.server = server
        self.client = client

    def required(self, peer_dc: object, peer_rack: object) -> bool:
        return needs_tls(self.option, self.dc, self.rack, peer_dc, peer_rack)

    @classmethod
    def from_config(cls, config: "Config") -> "PeerTLS | None":
        """None when ``secure_server_option`` is none; else the contexts built from
        the files (TLSConfigError naming the key of a file that cannot be used)."""
        if config.secure_server_option == "none":
            return None
        cert, key, ca = config.peer_tls_cert, config.peer_tls_key, config.peer_tls_ca
        if cert is None or key is None or ca is None:  # the config check refuses this first
            raise tls.TLSConfigError("secure_server_option needs peer_tls_cert, peer_tls_key and peer_tls_ca")
        server = tls.server_context(cert, key, ca, names=KEYS)
        client = tls.client_context(ca, cert, key, check_hostname=False, names=KEYS)
        for context in (server, client):
            # Both ends are dyno nodes: no reason to speak anything older than TLS 1.3.
            context.minimum_version = ssl.TLSVersion.TLSv1_3
        server.num_tickets = 0  # peers keep their connection; session tickets would go unused
        return cls(config.secure_server_option, config.datacenter, config.rack, server, client)
