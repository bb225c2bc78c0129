"""A test certificate authority and node certificates, to try TLS locally.

``dyno certs --out DIR --nodes N`` writes a cluster CA and one certificate per node,
plus one client certificate (for mutual TLS on the client port), everything signed by
that CA. It is for a laptop or a test cluster: real deployments bring certificates
from their own PKI and point ``client_tls_*`` / ``peer_tls_*`` at them.

Files in DIR (keys are written mode 0600):

    ca.pem, ca-key.pem            the cluster CA (self-signed)
    node1.pem, node1-key.pem ...  one per node: serverAuth and clientAuth (a node is
                                  the server of its peer port and the client of its
                                  peers'), for every host name and address given
    client.pem, client-key.pem    a client certificate (clientAuth)

Keys are ECDSA P-256: a handshake costs a fraction of RSA-2048's, and every TLS 1.2+
client supports it. Nothing here does I/O but ``write_bundle``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DEFAULT_HOSTS", "Issued", "bundle_files", "issue", "make_ca", "write_bundle"]

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
VALID_DAYS = 365
_CLOCK_SKEW = datetime.timedelta(minutes=5)  # valid a little before "now": peers' clocks differ


class Issued:
    """A private key and its certificate."""

    __slots__ = ("cert", "key")

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate):
        self.key = key
        self.cert = cert

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption(),
        )


def _name(common_name: str, organisation: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _validity(builder: x509.CertificateBuilder, now: datetime.datetime, days: int) -> x509.CertificateBuilder:
    return builder.not_valid_before(now - _CLOCK_SKEW).not_valid_after(now + datetime.timedelta(days=days))


def make_ca(cluster: str = "dyno", *, days: int = VALID_DAYS, now: datetime.datetime | None = None) -> Issued:
    """A self-signed CA for ``cluster``: it signs certificates, nothing else."""
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"{cluster} cluster CA", cluster)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return Issued(key, _validity(builder, now, days).sign(key, hashes.SHA256()))


def _subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue(ca: Issued, common_name: str, hosts: Sequence[str] = (), *, server: bool = True,
          cluster: str = "dyno", days: int = VALID_DAYS, now: datetime.datetime | None = None) -> Issued:
    """A certificate signed by ``ca``: a node's (``server``: serverAuth and clientAuth,
    valid for ``hosts``) or a client's (clientAuth only)."""
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server \
        else [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, cluster)).issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(_subject_alt_names(hosts)), critical=False)
    return Issued(key, _validity(builder, now, days).sign(ca.key, hashes.SHA256()))


def _write(path: Path, data: bytes, private: bool) -> None:
    # A key is never readable by others, not even between open and chmod.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def bundle_files(nodes: int) -> list[str]:
    """The names ``write_bundle`` writes, in order."""
    names = ["ca.pem", "ca-key.pem"]
    for i in range(1, nodes + 1):
        names += [f"node{i}.pem", f"node{i}-key.pem"]
    return names + ["client.pem", "client-key.pem"]


def write_bundle(out: str | os.PathLike, nodes: int, hosts: Sequence[str] = DEFAULT_HOSTS, *,
                 cluster: str = "dyno", days: int = VALID_DAYS, force: bool = False) -> list[Path]:
    """Write a CA, ``nodes`` node certificates and a client certificate into ``out``
    (made if missing). Refuses (FileExistsError) to overwrite a file unless ``force``:
    replacing a CA silently would lock every node that trusts the old one out."""
    if nodes < 1:
        raise ValueError("--nodes must be at least 1")
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / name for name in bundle_files(nodes)]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{existing[0]} exists (use --force to replace the CA and every certificate)")
    ca = make_ca(cluster, days=days)
    issued = [ca] + [issue(ca, f"node{i}", hosts, cluster=cluster, days=days) for i in range(1, nodes + 1)]
    issued.append(issue(ca, "client", (), server=False, cluster=cluster, days=days))
    for index, item in enumerate(issued):
        _write(paths[2 * index], item.cert_pem(), private=False)
        _write(paths[2 * index + 1], item.key_pem(), private=True)
    return paths
