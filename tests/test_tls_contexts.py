"""dyno.tls: contexts from certificate files; a bad file is a one-line error that
names the config key."""

from __future__ import annotations

import pytest

from dyno import certs, tls

NAMES = ("client_tls_cert", "client_tls_key", "client_tls_ca")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    certs.write_bundle(directory, 2)
    return directory


def test_good_files_make_contexts(bundle):
    server = tls.server_context(str(bundle / "node1.pem"), str(bundle / "node1-key.pem"),
                                str(bundle / "ca.pem"), names=NAMES)
    assert server.verify_mode.name == "CERT_REQUIRED"
    plain = tls.server_context(str(bundle / "node1.pem"), str(bundle / "node1-key.pem"))
    assert plain.verify_mode.name == "CERT_NONE"
    client = tls.client_context(str(bundle / "ca.pem"), str(bundle / "client.pem"), str(bundle / "client-key.pem"))
    assert client.check_hostname


@pytest.mark.parametrize("case, expected", [
    ("missing cert", "client_tls_cert: no such file"),
    ("missing key", "client_tls_key: no such file"),
    ("key of another cert", "client_tls_cert/client_tls_key: cannot use"),
    ("not pem", "client_tls_cert/client_tls_key: cannot use"),
    ("missing ca", "client_tls_ca: no such file"),
    ("ca not pem", "client_tls_ca: cannot use"),
])
def test_bad_files_are_one_line_errors_naming_the_key(bundle, tmp_path, case, expected):
    cert, key, ca = bundle / "node1.pem", bundle / "node1-key.pem", bundle / "ca.pem"
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    if case == "missing cert":
        cert = tmp_path / "nope.pem"
    elif case == "missing key":
        key = tmp_path / "nope-key.pem"
    elif case == "key of another cert":
        key = bundle / "node2-key.pem"
    elif case == "not pem":
        cert = junk
    elif case == "missing ca":
        ca = tmp_path / "nope-ca.pem"
    else:
        ca = junk
    with pytest.raises(tls.TLSConfigError) as caught:
        tls.server_context(str(cert), str(key), str(ca), names=NAMES)
    message = str(caught.value)
    assert message.startswith(expected), message
    assert "\n" not in message
