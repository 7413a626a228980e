"""A private certificate authority for development and tests (`medsettle certs init`), and
the TLS credentials servers and clients build from PEM files.

Production takes the operator's own PEM files; these certificates only have to carry the
same identity: an institution's certificate names its code in a URI subject alternative
name `urn:medsettle:institution:<fixmedins_code>` (and as its common name), a center's names
`urn:medsettle:center:<name>`. Every leaf is good for both ends of a connection, since a
front-end serves its HIS callers and is itself the center's client. Keys are ECDSA P-256
(what gRPC's TLS stacks take; the national SM2 algorithm is used for message signatures).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

INSTITUTION_URI = "urn:medsettle:institution:"
CENTER_URI = "urn:medsettle:center:"
FRONTEND_URI = "urn:medsettle:frontend:"
CA_DAYS = 3650
LEAF_DAYS = 825


def _name(cn: str, unit: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "medsettle"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@dataclass
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def load_or_create(cls, directory: Path) -> Authority:
        """The CA in `directory` (ca.pem, ca.key), created when absent."""
        directory.mkdir(parents=True, exist_ok=True)
        key_path, cert_path = directory / "ca.key", directory / "ca.pem"
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path}: not an EC private key")
            return cls(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))
        key = ec.generate_private_key(ec.SECP256R1())
        name = _name("medsettle development CA", "ca")
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        _write_key(key_path, key)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert)

    def issue(self, directory: Path, stem: str, uris: list[str], hosts: list[str]) -> Path:
        """A leaf for `uris` (and the DNS names / IP addresses in `hosts`), written as
        `<stem>.pem` and `<stem>.key`; returns the certificate's path."""
        key = ec.generate_private_key(ec.SECP256R1())
        uri = uris[-1]
        cn = uri.rsplit(":", 1)[-1]
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, uri.split(":")[2]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        _write_key(directory / f"{stem}.key", key)
        path = directory / f"{stem}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path


def init(
    directory: Path,
    institutions: list[str],
    centers: list[str],
    hosts: list[str] | None = None,
) -> list[Path]:
    """The CA (kept when it exists); for each institution a certificate for its HIS
    (`<code>.pem`) and one for its front-end machine (`frontend-<code>.pem`); one for each
    center (`center-<name>.pem`)."""
    hosts = hosts if hosts is not None else ["localhost", "127.0.0.1"]
    ca = Authority.load_or_create(directory)
    out = [directory / "ca.pem"]
    for code in institutions:
        out.append(ca.issue(directory, code, [INSTITUTION_URI + code], hosts))
        out.append(
            ca.issue(
                directory, f"frontend-{code}", [INSTITUTION_URI + code, FRONTEND_URI + code], hosts
            )
        )
    for name in centers:
        out.append(ca.issue(directory, f"center-{name}", [CENTER_URI + name], hosts))
    return out


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one end: its certificate and key, and the CA it trusts in its peers."""

    cert: str
    key: str
    ca: str

    def server_credentials(self, require_client_cert: bool) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(Path(self.key).read_bytes(), Path(self.cert).read_bytes())],
            root_certificates=Path(self.ca).read_bytes() if self.ca else None,
            require_client_auth=require_client_cert,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=Path(self.ca).read_bytes(),
            private_key=Path(self.key).read_bytes() if self.key else None,
            certificate_chain=Path(self.cert).read_bytes() if self.cert else None,
        )
