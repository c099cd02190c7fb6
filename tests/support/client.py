"""For the client tests: a throwaway PKI, and more gateways beside the session's, sharing its loaded model.

The extra servers run on the session gateway's event loop with its started backend, so they cost no model
load: the real server factory (``create_server``: TLS, mTLS and token authorisation as configured), or
any servicer a test builds over the real ``Diagnosis``.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import RunningGateway

SERVER_NAME = "gateway.allxai.test"


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, the gateway's certificate (SERVER_NAME, 127.0.0.1), a client's, another CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    san: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path) -> Pki:
    """Write a CA, a server and a client certificate signed by it, and an unrelated CA."""

    def write(name: str, data: bytes) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    ca_key, server_key, client_key, other_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    ca = _certificate("allxai test CA", ca_key, None, ca=True)
    server = _certificate(
        SERVER_NAME,
        server_key,
        ("allxai test CA", ca_key),
        san=[x509.DNSName(SERVER_NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client = _certificate("lis-client", client_key, ("allxai test CA", ca_key))
    other = _certificate("some other CA", other_key, None, ca=True)
    return Pki(
        ca=write("ca.pem", pem(ca)),
        server_cert=write("server.pem", pem(server)),
        server_key=write("server.key", pem_key(server_key)),
        client_cert=write("client.pem", pem(client)),
        client_key=write("client.key", pem_key(client_key)),
        other_ca=write("other-ca.pem", pem(other)),
    )


def free_port() -> int:
    """A port nothing listens on (just now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _on_loop(gateway: RunningGateway, coroutine: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coroutine, gateway.loop).result(timeout=30)


@contextmanager
def gateway_server(
    gateway: RunningGateway, port: int = 0, audit: Any = None, **settings: Any
) -> Iterator[str]:
    """The real server factory with these settings over the session gateway's backend; yields its target."""
    from allxai.server.app import create_server
    from allxai.server.settings import Settings

    config = Settings(host="127.0.0.1", port=port, metrics_port=0, **settings)

    async def start() -> tuple[grpc.aio.Server, int]:
        server, bound = create_server(config, gateway.gateway.backend, audit=audit)  # type: ignore[attr-defined]
        await server.start()
        return server, bound

    server, bound = _on_loop(gateway, start())
    try:
        yield f"127.0.0.1:{bound}"
    finally:
        _on_loop(gateway, server.stop(0))


@contextmanager
def servicer_server(gateway: RunningGateway, make_servicer: Callable[[Any], Any]) -> Iterator[str]:
    """A plaintext server hosting ``make_servicer(Diagnosis)`` over the session gateway's backend."""
    from allxai.server.core import Diagnosis
    from allxai.server.settings import Settings
    from allxai.v1 import diagnosis_pb2_grpc

    diagnosis = Diagnosis(Settings(metrics_port=0), gateway.gateway.backend)  # type: ignore[attr-defined]

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        diagnosis_pb2_grpc.add_DiagnosisServiceServicer_to_server(make_servicer(diagnosis), server)
        bound = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, bound

    server, bound = _on_loop(gateway, start())
    try:
        yield f"127.0.0.1:{bound}"
    finally:
        _on_loop(gateway, server.stop(0))
