"""Certificate rotation without a restart: the gateway serves its HTTPS
certificate from memory and loads it again when the files change (as
cert-manager rotates a Secret), on SIGHUP and on `POST /reload`. New
handshakes get the new certificate; a connection already open keeps
working; files that do not load leave the served certificate in place."""
import datetime
import http.client
import ipaddress
import os
import signal
import ssl

import httpx2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import ACCEPT, Backend, Gateway, metric, wait_until

NOW = datetime.datetime.now(datetime.timezone.utc)


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def new_ca():
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("rotation test CA")).issuer_name(name("rotation test CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(minutes=5)).not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(ca, cn):
    """A leaf for 127.0.0.1 signed by `ca`: (cert PEM, key PEM, serial)."""
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    serial = x509.random_serial_number()
    cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(serial)
            .not_valid_before(NOW - datetime.timedelta(minutes=5)).not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return pem, key_pem, serial


def install(dir_, leaf):
    """Writes a cert/key pair the way a Secret volume changes: new files renamed into place."""
    cert, key, _ = leaf
    for fname, data in (("tls.key", key), ("tls.crt", cert)):
        tmp = dir_ / f".{fname}.new"
        tmp.write_bytes(data)
        os.replace(tmp, dir_ / fname)


def served_serial(port, ca_pem) -> int:
    """The serial of the certificate a new handshake gets (verified against the CA)."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.connect()
        der = conn.sock.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        conn.close()


def start(tmp_path, name_, interval):
    ca = new_ca()
    ca_pem = ca[1].public_bytes(serialization.Encoding.PEM)
    certs = tmp_path / "certs"
    certs.mkdir()
    first = issue(ca, "first")
    install(certs, first)
    backend = Backend(tmp_path / "r.db", f"{name_}-0")
    gw = Gateway(tmp_path, name_, [backend.addr],
                 tls=f'cert = "{certs / "tls.crt"}"\nkey = "{certs / "tls.key"}"\nreload_interval = "{interval}"')
    return ca, ca_pem, certs, first, backend, gw


def initialize(conn):
    conn.request("POST", "/mcp", body=b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":'
                 b'"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}',
                 headers={"content-type": "application/json", "accept": ACCEPT})
    r = conn.getresponse()
    body = r.read()
    return r.status, body


def test_a_certificate_swapped_on_disk_is_served_to_the_next_handshake(tmp_path):
    ca, ca_pem, certs, first, backend, gw = start(tmp_path, "rotate", "200ms")
    try:
        assert served_serial(gw.https_port, ca_pem) == first[2]
        # a client connected before the rotation
        old = http.client.HTTPSConnection("127.0.0.1", gw.https_port,
                                          context=ssl.create_default_context(cadata=ca_pem.decode()), timeout=10)
        assert initialize(old)[0] == 200
        old_sock = old.sock
        before = metric(gw, "mcp_gateway_tls_reloads_total")
        second = issue(ca, "second")
        install(certs, second)
        wait_until(lambda: served_serial(gw.https_port, ca_pem) == second[2], 15, "the new certificate")
        assert metric(gw, "mcp_gateway_tls_reloads_total") >= before + 1
        # the connection opened before goes on, on its own handshake: the same
        # socket (http.client would have opened a new one had it been closed),
        # still showing the certificate it was opened with
        status, body = initialize(old)
        assert status == 200, body
        assert old.sock is old_sock, "the gateway closed the connection opened before the rotation"
        peer_serial = x509.load_der_x509_certificate(old.sock.getpeercert(binary_form=True)).serial_number
        assert peer_serial == first[2] != second[2]
        old.close()
        # files that do not load: the served certificate stays
        (certs / "tls.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
        r = httpx2.post(f"{gw.admin}/reload")
        assert r.status_code == 400 and "TLS certificate not reloaded" in r.text, r.text
        assert served_serial(gw.https_port, ca_pem) == second[2]
    finally:
        gw.proc.stop()
        backend.proc.stop()


def test_sighup_loads_the_certificate_when_the_timer_is_off(tmp_path):
    ca, ca_pem, certs, first, backend, gw = start(tmp_path, "hup", "0s")
    try:
        assert served_serial(gw.https_port, ca_pem) == first[2]
        second = issue(ca, "second")
        install(certs, second)
        os.kill(gw.proc.p.pid, signal.SIGHUP)
        wait_until(lambda: served_serial(gw.https_port, ca_pem) == second[2], 15, "the certificate after SIGHUP")
    finally:
        gw.proc.stop()
        backend.proc.stop()
