"""What both clients share: how a channel is configured (TLS, tokens, service config) and the model spec."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from allxai.client._messages import model_spec
from allxai.client._results import ImageInput
from allxai.client._specimen import SpecimenBatches
from allxai.client._waiting import Patience
from allxai.v1 import diagnosis_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["DiagnosisService"].full_name

#: Messages both ways may be this large (gRPC's default of 4 MiB is too small for large images).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: gRPC makes at most five attempts of a call, whatever a service config asks for.
MAX_RETRIES = 4

#: Images per ClassifySpecimen call; the gateway takes 2,000 by default, and smaller calls stream better.
SPECIMEN_BATCH_SIZE = 500

Metadata = tuple[tuple[str, str], ...]


def _read(value: bytes | str | Path | None) -> bytes | None:
    """PEM given as bytes, or read from a path."""
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def _seconds(value: float) -> str:
    # google.protobuf.Duration in JSON: decimal seconds with an "s"; gRPC accepts 0, 3, 6 or 9 digits.
    return f"{value:.3f}s"


def service_config(
    retries: int, initial_backoff: float = 0.2, max_backoff: float = 5.0, wait_for_ready: bool = False
) -> str:
    """The channel's service config: retries of UNAVAILABLE with exponential backoff, and wait-for-ready.

    Retries are throttled per channel (gRPC's token bucket), so a gateway that is down is not met with
    a storm of retries from every call. Deadlines are not set here but on each call: in grpcio (1.74 to
    at least 1.85) a service-config ``timeout`` fires about two seconds early (grpc/grpc#40633).
    """
    if not 0 <= retries <= MAX_RETRIES:
        raise ValueError(f"retries must be from 0 to {MAX_RETRIES} (gRPC makes at most 5 attempts)")
    if not (initial_backoff > 0 and max_backoff > 0):
        # gRPC would refuse the whole service config only at the first call, as INVALID_ARGUMENT.
        raise ValueError("initial_backoff and max_backoff must be positive")
    config: dict[str, Any] = {"name": [{"service": SERVICE}], "waitForReady": wait_for_ready}
    if retries:
        config["retryPolicy"] = {
            "maxAttempts": retries + 1,
            "initialBackoff": _seconds(initial_backoff),
            "maxBackoff": _seconds(max_backoff),
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
    return json.dumps({"methodConfig": [config], "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}})


@dataclass(frozen=True)
class Security:
    """How a channel is secured: TLS (and mTLS) and a bearer token; the one place that turns them into gRPC.

    The SDK clients, the ``allxai`` commands, the load tester and the LIS watcher all build their channels
    from this, so a token is refused without TLS, and sent with it, the same way everywhere.
    PEM values are bytes or file paths; files are read when :meth:`credentials` is called.
    """

    tls: bool = False
    root_certificates: bytes | str | Path | None = None
    certificate_chain: bytes | str | Path | None = None
    private_key: bytes | str | Path | None = None
    server_name: str = ""
    token: str = ""
    allow_plaintext_token: bool = False

    @property
    def uses_tls(self) -> bool:
        """Whether the channel uses TLS: asked for, or implied by a CA or a client certificate."""
        return self.tls or self.root_certificates is not None or self.certificate_chain is not None

    def check(self) -> None:
        """Refuse settings that cannot work or would leak the token; ``ValueError`` says which."""
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")
        if self.token.strip() and not self.uses_tls and not self.allow_plaintext_token:
            raise ValueError(
                "a bearer token without TLS would travel in clear text; use TLS, or allow it "
                "for a local gateway (allow_plaintext_token, --plaintext-token)"
            )

    def channel_options(self) -> list[tuple[str, Any]]:
        """The channel arguments security adds (the name to check the gateway's certificate against)."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS channel credentials, with the token as call credentials; None for a plaintext channel.

        Raises ``OSError`` when a PEM file cannot be read.
        """
        if not self.uses_tls:
            return None
        credentials = grpc.ssl_channel_credentials(
            _read(self.root_certificates), _read(self.private_key), _read(self.certificate_chain)
        )
        token = self.token.strip()
        if token:
            # Call credentials: gRPC itself refuses to send them over a channel without TLS.
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(token)
            )
        return credentials

    def metadata(self) -> Metadata:
        """Metadata every call carries: the token, only on a plaintext channel that allows it."""
        token = self.token.strip()
        if token and not self.uses_tls:
            return (("authorization", f"Bearer {token}"),)
        return ()


class ClientBase:
    """Connection settings common to :class:`~allxai.client.Client` and :class:`~allxai.client.AsyncClient`.

    Args:
        target: the gateway as ``host:port`` (or any gRPC target, e.g. ``dns:///gateway:50051``).
        timeout: deadline in seconds of each Classify and GetModelInfo call, and of each ClassifySpecimen
            call: a specimen sent in several batches has this deadline per batch, not for all of them.
        model, version, version_label: which model answers; empty and ``None`` mean the server's defaults.
        explain_timeout: deadline in seconds of an explanation.
        retries: retries of a call that got UNAVAILABLE (0 to 4), with exponential backoff from
            ``initial_backoff`` up to ``max_backoff`` seconds; no other status is retried.
        wait_for_ready: let calls wait, within their deadline, for a gateway that is not up yet or still
            loading its models, instead of failing at once with UNAVAILABLE.
        tls: use TLS with the system's root certificates; implied by any of the next three.
        root_certificates: PEM (bytes, or a file path) of the CA that signed the gateway's certificate.
        certificate_chain, private_key: PEM (bytes or file paths) of a client certificate and its key (mTLS).
        server_name: the name to check the gateway's certificate against, when it is not the target's host.
        token: a bearer token, sent as ``authorization: Bearer <token>`` with every call.
        allow_plaintext_token: send the token without TLS too (a local gateway or a sidecar); otherwise a
            token without TLS is refused, since it would travel in clear text.
        max_message_bytes: the largest message either way.
        specimen_batch_size: the most images per ClassifySpecimen call; larger specimens are sent in batches.

    Retries and wait-for-ready live in the channel's service config (the ``grpc.service_config`` option);
    every call carries its deadline, which covers all its attempts.
    """

    def __init__(
        self,
        target: str,
        timeout: float = 60.0,
        model: str = "",
        version: int | None = None,
        version_label: str | None = None,
        *,
        explain_timeout: float = 600.0,
        retries: int = 3,
        initial_backoff: float = 0.2,
        max_backoff: float = 5.0,
        wait_for_ready: bool = False,
        tls: bool = False,
        root_certificates: bytes | str | Path | None = None,
        certificate_chain: bytes | str | Path | None = None,
        private_key: bytes | str | Path | None = None,
        server_name: str = "",
        token: str = "",
        allow_plaintext_token: bool = False,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        specimen_batch_size: int = SPECIMEN_BATCH_SIZE,
    ) -> None:
        security = Security(
            tls,
            root_certificates,
            certificate_chain,
            private_key,
            server_name,
            token,
            allow_plaintext_token,
        )
        security.check()
        if timeout <= 0 or explain_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if specimen_batch_size < 1:
            raise ValueError("specimen_batch_size must be at least 1")
        self.target = target
        self._wait_for_ready = wait_for_ready
        self._backoff = (initial_backoff, max_backoff)
        self._spec = model_spec(model, version, version_label)
        self._timeout = timeout
        self._explain_timeout = explain_timeout
        self._max_message_bytes = max_message_bytes
        self._specimen_batch_size = specimen_batch_size
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.enable_retries", 1),
            # Our config is the whole truth: ignore any a name resolver might bring.
            ("grpc.service_config_disable_resolution", 1),
            (
                "grpc.service_config",
                service_config(retries, initial_backoff, max_backoff, wait_for_ready),
            ),
            *security.channel_options(),
        ]
        self._metadata: Metadata = security.metadata()
        credentials = security.credentials()
        self._open(target, options, credentials)

    def _patience(self, timeout: float) -> Patience:
        """The attempts of one call with deadline ``timeout``."""
        return Patience(timeout, self._wait_for_ready, *self._backoff)

    def _specimen_batches(
        self,
        images: Iterable[ImageInput],
        specimen_id: str,
        image_ids: Iterable[str] | None,
        alpha: float | None = None,
    ) -> SpecimenBatches:
        # Half the message limit per batch leaves room for a gateway configured tighter than this client.
        return SpecimenBatches(
            images,
            self._spec,
            specimen_id,
            self._specimen_batch_size,
            self._max_message_bytes // 2,
            image_ids,
            alpha,
        )

    def _open(
        self, target: str, options: list[tuple[str, Any]], credentials: grpc.ChannelCredentials | None
    ) -> None:
        """Open the channel and its stub (each client with its own flavour of gRPC)."""
        raise NotImplementedError
