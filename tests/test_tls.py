"""TLS: certificate contents, file modes, and a real grpc.aio mutual-TLS handshake on 127.0.0.1."""

from __future__ import annotations

import asyncio
import ipaddress
import stat
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from bft.keys import KeyFileError
from bft.runtime.tls import (
    CertificateAuthority,
    TlsError,
    channel_credentials,
    load_ca,
    make_ca,
    make_replica_cert,
    replica_cert_paths,
    server_credentials,
    write_cert_and_key,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    make_ca(directory, name="test")
    return directory


@pytest.fixture(scope="module")
def ca(ca_dir: Path) -> CertificateAuthority:
    return load_ca(ca_dir)


def test_ca_files_and_extensions(ca_dir: Path, ca: CertificateAuthority) -> None:
    assert mode(ca_dir / "ca.key") == 0o600
    assert mode(ca_dir / "ca.pem") == 0o644
    basic = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    assert ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey) and ca.key.curve.name == "secp256r1"
    with pytest.raises(KeyFileError, match="already exists"):
        make_ca(ca_dir)


def test_replica_cert_contents(ca: CertificateAuthority) -> None:
    cert_pem, key_pem = make_replica_cert(ca, 3, ["10.1.2.3", "Replica3.Example.com", "[2001:db8::1]"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    cert.verify_directly_issued_by(ca.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = set(san.get_values_for_type(x509.IPAddress))
    dns = set(san.get_values_for_type(x509.DNSName))
    assert ips == {ipaddress.ip_address(a) for a in ("10.1.2.3", "127.0.0.1", "::1", "2001:db8::1")}
    assert dns == {"replica3.example.com", "localhost"}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert "bftchat-replica-3" in cert.subject.rfc4514_string()
    assert cert.not_valid_after_utc <= ca.cert.not_valid_after_utc
    assert b"BEGIN PRIVATE KEY" in key_pem


def test_local_names_are_not_duplicated(ca: CertificateAuthority) -> None:
    cert_pem, _ = make_replica_cert(ca, 0, ["127.0.0.1", "localhost"])
    san = x509.load_pem_x509_certificate(cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert len(list(san.value)) == 3


def test_load_ca_checks_key_matches(tmp_path: Path) -> None:
    make_ca(tmp_path / "a")
    make_ca(tmp_path / "b")
    (tmp_path / "a" / "ca.key").unlink()
    (tmp_path / "b" / "ca.key").rename(tmp_path / "a" / "ca.key")
    with pytest.raises(TlsError, match="is not the key of"):
        load_ca(tmp_path / "a")


def test_credentials_refuse_missing_or_loose_files(
    tmp_path: Path, ca: CertificateAuthority, ca_dir: Path
) -> None:
    cert, key = replica_cert_paths(tmp_path, 0)
    write_cert_and_key(cert, key, *make_replica_cert(ca, 0, []))
    assert mode(key) == 0o600 and mode(cert) == 0o644
    key.chmod(0o640)
    with pytest.raises(TlsError, match="too open"):
        server_credentials(ca_dir / "ca.pem", cert, key)
    with pytest.raises(TlsError, match="does not exist"):
        channel_credentials(tmp_path / "nope.pem")
    with pytest.raises(TlsError, match="both"):
        channel_credentials(ca_dir / "ca.pem", cert_path=cert)


# ---- a real handshake --------------------------------------------------------------------------


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


def _handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )


async def _call(target: str, creds: grpc.ChannelCredentials, server_name: str | None = None) -> bool:
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    async with grpc.aio.secure_channel(target, creds, options=options) as channel:
        try:
            reply = await channel.unary_unary("/test.Echo/Echo")(b"ping", timeout=5)
        except grpc.aio.AioRpcError as e:
            assert e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), e
            return False
        assert reply == b"ping"
        return True


def test_grpc_mutual_tls_handshake(tmp_path: Path, ca: CertificateAuthority, ca_dir: Path) -> None:
    """Server requiring client certs: a same-CA cert gets in; no cert, or another CA's cert, does not."""
    ca_pem = ca_dir / "ca.pem"
    server_cert, server_key = replica_cert_paths(tmp_path, 0)
    write_cert_and_key(server_cert, server_key, *make_replica_cert(ca, 0, ["127.0.0.1"]))
    peer_cert, peer_key = replica_cert_paths(tmp_path, 1)
    write_cert_and_key(peer_cert, peer_key, *make_replica_cert(ca, 1, ["127.0.0.1"]))
    rogue = make_ca(tmp_path / "rogue")
    rogue_cert, rogue_key = tmp_path / "rogue.pem", tmp_path / "rogue.key"
    write_cert_and_key(rogue_cert, rogue_key, *make_replica_cert(rogue, 1, ["127.0.0.1"]))

    async def scenario() -> None:
        mutual = grpc.aio.server()
        mutual.add_generic_rpc_handlers((_handler(),))
        port = mutual.add_secure_port("127.0.0.1:0", server_credentials(ca_pem, server_cert, server_key))
        open_ = grpc.aio.server()
        open_.add_generic_rpc_handlers((_handler(),))
        creds = server_credentials(ca_pem, server_cert, server_key, require_client_auth=False)
        open_port = open_.add_secure_port("127.0.0.1:0", creds)
        await mutual.start()
        await open_.start()
        try:
            peer = channel_credentials(ca_pem, peer_cert, peer_key)
            # A replica with a cert from the cluster CA: by IP and by name (both in the SANs).
            assert await _call(f"127.0.0.1:{port}", peer)
            assert await _call(f"localhost:{port}", peer)
            # No client cert, or one from another CA: the server refuses the handshake.
            assert not await _call(f"127.0.0.1:{port}", channel_credentials(ca_pem))
            assert not await _call(f"127.0.0.1:{port}", channel_credentials(ca_pem, rogue_cert, rogue_key))
            # A client that does not trust the server's CA refuses the server.
            assert not await _call(f"127.0.0.1:{port}", channel_credentials(tmp_path / "rogue" / "ca.pem"))
            # A client-facing port (no client auth) serves a client holding only the CA cert.
            assert await _call(f"127.0.0.1:{open_port}", channel_credentials(ca_pem))
        finally:
            await mutual.stop(None)
            await open_.stop(None)

    asyncio.run(scenario())


def test_grpc_checks_the_server_name(tmp_path: Path, ca: CertificateAuthority, ca_dir: Path) -> None:
    """A client expecting another replica's name refuses a certificate that does not carry it."""
    ca_pem = ca_dir / "ca.pem"
    cert, key = replica_cert_paths(tmp_path, 0)
    write_cert_and_key(cert, key, *make_replica_cert(ca, 0, ["10.9.9.9", "replica-0.example.com"]))

    async def scenario() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_handler(),))
        port = server.add_secure_port(
            "127.0.0.1:0", server_credentials(ca_pem, cert, key, require_client_auth=False)
        )
        await server.start()
        try:
            creds = channel_credentials(ca_pem)
            assert await _call(f"127.0.0.1:{port}", creds, server_name="replica-0.example.com")
            assert not await _call(f"127.0.0.1:{port}", creds, server_name="replica-1.example.com")
        finally:
            await server.stop(None)

    asyncio.run(scenario())
