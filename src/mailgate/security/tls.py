"""TLS material for every listener: the configured certificate, else a self-signed one in the data dir."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailgate.domain.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    cert_file: Path
    key_file: Path
    fingerprint: str
    generated: bool

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def _fingerprint(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return "SHA256:" + cert.fingerprint(hashes.SHA256()).hex(":")


def _self_signed(hostname: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost")]
    alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_tls(data_dir: Path, cert_file: Path | None, key_file: Path | None, hostname: str) -> TlsMaterial:
    if cert_file or key_file:
        if not (cert_file and key_file):
            raise ConfigurationError("tls.cert_file and tls.key_file must be set together")
        for path in (cert_file, key_file):
            if not path.is_file():
                raise ConfigurationError(f"TLS file {path} does not exist")
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigurationError(f"TLS certificate/key unusable: {exc}") from None
        return TlsMaterial(cert_file, key_file, _fingerprint(cert_file.read_bytes()), generated=False)
    tls_dir = data_dir / "tls"
    cert_path, key_path = tls_dir / "cert.pem", tls_dir / "key.pem"
    generated = False
    if not (cert_path.exists() and key_path.exists()):
        tls_dir.mkdir(parents=True, exist_ok=True)
        cert_pem, key_pem = _self_signed(hostname)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_pem)
        cert_path.write_bytes(cert_pem)
        generated = True
    return TlsMaterial(cert_path, key_path, _fingerprint(cert_path.read_bytes()), generated)
