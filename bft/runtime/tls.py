"""A private certificate authority per cluster, replica certificates, and the TLS settings that use
them: gRPC credentials for the client port, stdlib ``ssl`` contexts for the replica-to-replica links.

TLS gives the links confidentiality and lets clients check they reached a replica of *this* cluster;
it is not what makes the protocol safe (every protocol message is Ed25519-signed, and peer links are
authenticated by a signed hello as well), so a leaked TLS key costs privacy of the link metadata,
not safety.

Keys are ECDSA P-256 with SHA-256 signatures. Ed25519 certificates would match the protocol's
keys, but grpcio's BoringSSL rejects them in the handshake (NO_COMMON_SIGNATURE_ALGORITHMS, checked
with grpcio 1.85); P-256 works with every TLS stack.

Each replica's certificate carries both the serverAuth and clientAuth extended key usages, so one
certificate serves its listening port and its outgoing peer links (mutual TLS). Subject alternative
names are the replica's host (IP addresses as IP SANs, names as DNS SANs) plus ``localhost``,
``127.0.0.1`` and ``::1`` so that local clusters and on-host tools work.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bft.framing import SESSION_ALPN
from bft.keys import KeyFileError, read_secret_file, write_public_file, write_secret_file

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
DEFAULT_DAYS = 3650  # a private CA for one cluster: rotation is "run keygen again", not renewal
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
_BACKDATE = datetime.timedelta(hours=1)  # tolerate clocks a little behind the one that issued


class TlsError(ValueError):
    """A certificate or key file that is missing or unusable."""


@dataclass(frozen=True)
class CertificateAuthority:
    """The cluster's CA: its certificate (shared with everyone) and private key (kept by the operator)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)


def make_ca(
    directory: str | Path, *, name: str = "bftchat", days: int = DEFAULT_DAYS, force: bool = False
) -> CertificateAuthority:
    """Create a CA and write ``directory/ca.pem`` (0644) and ``directory/ca.key`` (0600)."""
    directory = Path(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bftchat"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"bftchat CA {name}"[:64]),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    ca = CertificateAuthority(cert, key)
    directory.mkdir(parents=True, exist_ok=True)
    write_secret_file(directory / CA_KEY_FILE, ca.key_pem, force)
    write_public_file(directory / CA_CERT_FILE, ca.cert_pem, force)
    return ca


def load_ca(directory: str | Path) -> CertificateAuthority:
    """The CA written by :func:`make_ca`, to issue more certificates later."""
    directory = Path(directory)
    cert = x509.load_pem_x509_certificate(_read_public(directory / CA_CERT_FILE))
    key = _load_key(directory / CA_KEY_FILE)
    if key.public_key().public_numbers() != _ec_public(cert).public_numbers():
        raise TlsError(f"'{directory / CA_KEY_FILE}' is not the key of '{directory / CA_CERT_FILE}'")
    return CertificateAuthority(cert, key)


def make_replica_cert(
    ca: CertificateAuthority, replica_id: int, hosts: list[str], *, days: int = DEFAULT_DAYS
) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) for replica ``replica_id`` reachable at ``hosts``.

    Usable as a server and as a client certificate (mutual TLS between replicas).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bftchat"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"bftchat-replica-{replica_id}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + datetime.timedelta(days=days), ca.cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(san_entries(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(_ec_public(ca.cert)), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def san_entries(hosts: list[str]) -> list[x509.GeneralName]:
    """IP SANs for IP literals, DNS SANs for names; always the local names too; no duplicates."""
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in [*hosts, *LOCAL_NAMES]:
        host = host.strip().strip("[]")
        if not host:
            continue
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
            canonical = str(ipaddress.ip_address(host))
        except ValueError:
            canonical = host.lower().rstrip(".")
            entry = x509.DNSName(canonical)
        if canonical not in seen:
            seen.add(canonical)
            out.append(entry)
    return out


def replica_cert_paths(tls_dir: str | Path, replica_id: int) -> tuple[Path, Path]:
    """Where keygen puts replica ``replica_id``'s certificate and key: ``replica-<i>.pem``/``.key``."""
    tls_dir = Path(tls_dir)
    return tls_dir / f"replica-{replica_id}.pem", tls_dir / f"replica-{replica_id}.key"


def write_cert_and_key(
    cert_path: str | Path, key_path: str | Path, cert_pem: bytes, key_pem: bytes, force: bool = False
) -> None:
    """Write a certificate (0644) and its private key (0600, never overwritten without ``force``)."""
    write_secret_file(key_path, key_pem, force)
    write_public_file(cert_path, cert_pem, force)


# ---- gRPC credentials --------------------------------------------------------------------------


def server_credentials(
    ca_path: str | Path, cert_path: str | Path, key_path: str | Path, *, require_client_auth: bool = True
) -> grpc.ServerCredentials:
    """Credentials for a replica's listening port.

    With ``require_client_auth`` only holders of a certificate from this cluster's CA can connect
    (mutual TLS, for peer-only ports). gRPC Python cannot *request* a client certificate without
    requiring it, so a port that also serves chat clients must pass False.
    """
    ca_pem = _read_public(Path(ca_path))
    cert_pem = _read_public(Path(cert_path))
    key_pem = _read_key_pem(Path(key_path))
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=require_client_auth
    )


def channel_credentials(
    ca_path: str | Path, cert_path: str | Path | None = None, key_path: str | Path | None = None
) -> grpc.ChannelCredentials:
    """Credentials to reach a replica: trust only this cluster's CA; present a cert if given (peers)."""
    if (cert_path is None) != (key_path is None):
        raise TlsError("a client certificate needs both the certificate and its key")
    ca_pem = _read_public(Path(ca_path))
    if cert_path is None or key_path is None:
        return grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem,
        private_key=_read_key_pem(Path(key_path)),
        certificate_chain=_read_public(Path(cert_path)),
    )


# ---- peer links (stdlib ssl) ------------------------------------------------------------------


@dataclass(frozen=True)
class PeerTls:
    """Mutual TLS for replica-to-replica links: both ends present their replica certificate and
    accept only certificates issued by this cluster's CA (TLS 1.3 only)."""

    server: ssl.SSLContext
    client: ssl.SSLContext


def peer_contexts(ca_path: str | Path, cert_path: str | Path, key_path: str | Path) -> PeerTls:
    """The listening and connecting contexts of one replica's peer links."""
    ca_pem = _read_public(Path(ca_path)).decode("ascii", "replace")
    _read_public(Path(cert_path))
    _read_key_pem(Path(key_path))  # refuses a key file readable by others, like every secret file
    contexts = []
    for protocol in (ssl.PROTOCOL_TLS_SERVER, ssl.PROTOCOL_TLS_CLIENT):
        ctx = ssl.SSLContext(protocol)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cadata=ca_pem)
            ctx.load_cert_chain(str(cert_path), str(key_path))
        except (ssl.SSLError, ValueError) as e:
            raise TlsError(f"cannot use {cert_path} / {key_path} with {ca_path}: {e}") from None
        contexts.append(ctx)
    return PeerTls(server=contexts[0], client=contexts[1])


def session_server_context(cert_path: str | Path, key_path: str | Path) -> ssl.SSLContext:
    """The session port's TLS (``session_port.py``): TLS 1.3, this replica's certificate, no client
    certificate, ALPN v1."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(cert_path), str(key_path))
    ctx.set_alpn_protocols([SESSION_ALPN])
    return ctx


def peer_cert_names(peercert: Any) -> list[str]:
    """Common names and DNS names of a verified peer certificate (``SSLObject.getpeercert()``)."""
    if not peercert:
        return []
    names: list[str] = []
    for rdn in peercert.get("subject", ()):
        names.extend(str(value) for key, value in rdn if key == "commonName")
    names.extend(str(value) for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS")
    return names


# ---- helpers -----------------------------------------------------------------------------------


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ec_public(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise TlsError("certificate key is not an ECDSA key")
    return public


def _read_public(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsError(f"TLS file '{path}' does not exist") from None
    except OSError as e:
        raise TlsError(f"cannot read TLS file '{path}': {e.strerror}") from None


def _read_key_pem(path: Path) -> bytes:
    try:
        return read_secret_file(path)
    except KeyFileError as e:
        raise TlsError(str(e)) from None


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    pem = _read_key_pem(path)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except ValueError as e:
        raise TlsError(f"'{path}' is not a PEM private key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TlsError(f"'{path}' is not an ECDSA key")
    return key
