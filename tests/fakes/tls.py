"""Throw-away TLS material for the local fakes, made at runtime with ``cryptography``.

``make_tls()`` writes, into a fresh temp directory, a self-signed CA, a server certificate for
``localhost`` / ``127.0.0.1`` / ``::1`` signed by it, the server key, and a *combined* bundle
(the system CA bundle + the fake CA).  ``shared_tls()`` returns one process-wide instance so every
fake shares one CA and one bundle trusts them all.

How clients are made to trust the fakes:

* ``requests`` (msal's default HTTP client, botbuilder's ``requests.get`` for signing keys):
  ``REQUESTS_CA_BUNDLE`` is set on this machine and *overrides* ``Session.verify`` unless the
  session has ``trust_env = False``.  Either point ``REQUESTS_CA_BUNDLE`` at ``ca_bundle``
  (see ``env()``), or use ``requests_session()`` (``trust_env=False`` + ``verify=ca_cert``).
* ``ssl`` / ``aiohttp``: ``client_ssl_context()``; or set ``SSL_CERT_FILE`` to ``ca_bundle``
  *before* the context is created.  Beware: aiohttp builds its default verified context once at
  import time, so for aiohttp pass ``ssl=`` explicitly (an ``ssl.create_default_context()`` made
  after ``SSL_CERT_FILE`` is set works).
"""

from __future__ import annotations

import atexit
import datetime as dt
import ipaddress
import os
import shutil
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TLSFiles", "make_tls", "shared_tls", "system_ca_file"]


def system_ca_file() -> str | None:
    """Return the CA file the standard environment points at (None if there is none)."""
    for candidate in (
        os.environ.get("REQUESTS_CA_BUNDLE"),
        os.environ.get("SSL_CERT_FILE"),
        ssl.get_default_verify_paths().cafile,
    ):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


@dataclass(frozen=True)
class TLSFiles:
    """Paths of generated TLS material; all files are PEM."""

    directory: Path
    ca_cert: Path  # the fake CA only
    cert: Path  # server certificate (leaf, then the CA)
    key: Path  # server private key (unencrypted PKCS#8)
    ca_bundle: Path  # system CAs + the fake CA: good for REQUESTS_CA_BUNDLE / SSL_CERT_FILE

    def server_ssl_context(self) -> ssl.SSLContext:
        """A server-side context presenting ``cert``/``key``."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx

    def client_ssl_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only the fake CA."""
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def requests_session(self) -> requests.Session:
        """A ``requests.Session`` that trusts the fake CA and ignores the environment."""
        session = requests.Session()
        session.trust_env = False  # otherwise REQUESTS_CA_BUNDLE overrides ``verify``
        session.verify = str(self.ca_cert)
        return session

    def env(self) -> dict[str, str]:
        """Environment variables that make standard clients trust the fakes (and the system CAs)."""
        return {"REQUESTS_CA_BUNDLE": str(self.ca_bundle), "SSL_CERT_FILE": str(self.ca_bundle)}

    def cleanup(self) -> None:
        """Delete the temp directory."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_tls(directory: str | os.PathLike[str] | None = None) -> TLSFiles:
    """Generate a CA and a loopback server certificate into ``directory`` (default: a temp dir)."""
    folder = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="fake-tls-"))
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fusion test fake CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    files = TLSFiles(
        directory=folder,
        ca_cert=folder / "ca.pem",
        cert=folder / "server.pem",
        key=folder / "server-key.pem",
        ca_bundle=folder / "bundle.pem",
    )
    files.ca_cert.write_bytes(_pem(ca_cert))
    files.cert.write_bytes(_pem(cert) + _pem(ca_cert))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    system = system_ca_file()
    system_pem = Path(system).read_bytes() if system else b""
    if system_pem and not system_pem.endswith(b"\n"):
        system_pem += b"\n"
    files.ca_bundle.write_bytes(system_pem + _pem(ca_cert))
    return files


_shared: TLSFiles | None = None
_shared_lock = threading.Lock()


def shared_tls() -> TLSFiles:
    """One process-wide ``TLSFiles`` (made on first use, deleted at interpreter exit)."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.cert.exists():
            _shared = make_tls()
            atexit.register(_shared.cleanup)
        return _shared
