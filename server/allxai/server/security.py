"""TLS credentials and authorisation of callers: bearer tokens and client certificates.

Secrets come from files or the environment (through :class:`Settings`), are held as bytes, and are
never logged; tokens are compared in constant time (``hmac.compare_digest``) against every accepted
token, so neither a match nor its position leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from allxai.server.errors import PermissionDenied, Unauthenticated
from allxai.server.settings import Settings

log = logging.getLogger(__name__)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (or mTLS, when a client CA is set) credentials, or ``None`` for plaintext."""
    if settings.tls_cert_file is None and settings.tls_key_file is None:
        if settings.tls_client_ca_file is not None:
            raise ValueError("ALLXAI_TLS_CLIENT_CA_FILE needs ALLXAI_TLS_CERT_FILE and ALLXAI_TLS_KEY_FILE")
        return None
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise ValueError("set both ALLXAI_TLS_CERT_FILE and ALLXAI_TLS_KEY_FILE, or neither")
    client_ca = read_secret(settings.tls_client_ca_file) if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(read_secret(settings.tls_key_file), read_secret(settings.tls_cert_file))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def check_transport(settings: Settings) -> None:
    """Refuse bearer tokens in cleartext unless the settings allow it, and then say so in the log.

    A token sent without TLS can be read by anyone on the path and replayed, so token auth on a
    plaintext port starts only with ``ALLXAI_AUTH_ALLOW_PLAINTEXT_TOKENS`` (a proxy or mesh encrypts
    the hop). Client-certificate modes need TLS already (:meth:`Authorizer.from_settings`).
    """
    if settings.auth_mode != "token" or settings.tls_cert_file is not None:
        return
    if not settings.auth_allow_plaintext_tokens:
        raise ValueError(
            "ALLXAI_AUTH_MODE=token without TLS would accept bearer tokens in cleartext: set "
            "ALLXAI_TLS_CERT_FILE and ALLXAI_TLS_KEY_FILE, or ALLXAI_AUTH_ALLOW_PLAINTEXT_TOKENS=true "
            "where a proxy or mesh encrypts the connection"
        )
    log.warning(
        "bearer tokens are accepted over plaintext (ALLXAI_AUTH_ALLOW_PLAINTEXT_TOKENS): anyone on the "
        "path can read them; use TLS unless a proxy or mesh encrypts the connection"
    )


def load_tokens(settings: Settings) -> list[bytes]:
    """The accepted bearer tokens: one per non-empty line of the file, plus the comma-separated list."""
    tokens: list[str] = []
    if settings.auth_tokens_file is not None:
        tokens += read_secret(settings.auth_tokens_file).decode().splitlines()
    if settings.auth_tokens is not None:
        tokens += settings.auth_tokens.get_secret_value().split(",")
    return [t.strip().encode() for t in tokens if t.strip() and not t.strip().startswith("#")]


@dataclass(frozen=True)
class Authorizer:
    """Decides whether a call may proceed, from its metadata and its TLS peer."""

    mode: str
    tokens: Sequence[bytes] = field(default=(), repr=False)  # never in a log line or a traceback
    allowed_client_names: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> Authorizer:
        """Build and check the authorisation the settings ask for."""
        tokens = load_tokens(settings)
        if settings.auth_mode in ("token", "token_or_client_cert") and not tokens:
            raise ValueError(
                f"ALLXAI_AUTH_MODE={settings.auth_mode} needs tokens "
                "(ALLXAI_AUTH_TOKENS_FILE or ALLXAI_AUTH_TOKENS)"
            )
        if (
            settings.auth_mode in ("client_cert", "token_or_client_cert")
            and settings.tls_client_ca_file is None
        ):
            raise ValueError(f"ALLXAI_AUTH_MODE={settings.auth_mode} needs ALLXAI_TLS_CLIENT_CA_FILE (mTLS)")
        return cls(settings.auth_mode, tuple(tokens), frozenset(settings.auth_allowed_client_names))

    def check(
        self, metadata: Iterable[tuple[str, str | bytes]], auth_context: Mapping[str, Iterable[bytes]]
    ) -> None:
        """Return if the caller may proceed; raise :class:`Unauthenticated` or :class:`PermissionDenied`."""
        if self.mode == "none":
            return
        if self.mode in ("client_cert", "token_or_client_cert") and self._certificate_ok(auth_context):
            return
        if self.mode in ("token", "token_or_client_cert"):
            presented = _bearer(metadata)
            if presented is None:
                raise Unauthenticated("send 'authorization: Bearer <token>' metadata")
            # Compare digests (equal length, so not even the token's length leaks) with every token,
            # without stopping early, so timing says nothing about which one matched.
            digest = hashlib.sha256(presented).digest()
            matched = False
            for token in self.tokens:
                matched |= hmac.compare_digest(digest, hashlib.sha256(token).digest())
            if matched:
                return
            raise Unauthenticated("the bearer token is not accepted")
        names = _common_names(auth_context)
        if not names:
            raise Unauthenticated("present a client certificate (mTLS)")
        raise PermissionDenied("this client certificate is not allowed in")

    def _certificate_ok(self, auth_context: Mapping[str, Iterable[bytes]]) -> bool:
        names = _common_names(auth_context)
        if not names:
            return False  # gRPC verified any presented certificate against the client CA already
        return not self.allowed_client_names or bool(names & self.allowed_client_names)


def _bearer(metadata: Iterable[tuple[str, str | bytes]]) -> bytes | None:
    for key, value in metadata:
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip().encode()
    return None


def _common_names(auth_context: Mapping[str, Iterable[bytes]]) -> set[str]:
    return {v.decode() for v in auth_context.get("x509_common_name", ())}


def read_secret(path: Path) -> bytes:
    """A secret file's bytes (for certificates and keys), with a message that names the file."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc


#: Addresses that mean "every interface".
_EVERY_INTERFACE = frozenset({"[::]", "::", "0.0.0.0", "*"})


def bind_host(settings: Settings, *, warn: bool = False) -> str:
    """The address the gateway binds: ``ALLXAI_HOST`` when set; else every interface only with TLS and auth
    both on, and loopback otherwise, so a gateway started without them cannot be reached from another
    machine by accident. With ``warn``, every interface without auth logs a warning (a proxy or mesh may
    guard it)."""
    secured = settings.tls_cert_file is not None and settings.auth_mode != "none"
    host = settings.host or ("[::]" if secured else "127.0.0.1")
    if warn and host in _EVERY_INTERFACE and settings.auth_mode == "none":
        log.warning(
            "listening on every interface (%s) without authentication (ALLXAI_AUTH_MODE=none): anyone who "
            "can reach the port can call the gateway; set ALLXAI_AUTH_MODE, or ALLXAI_HOST=127.0.0.1 "
            "behind a proxy on the same machine",
            host,
        )
    return host
