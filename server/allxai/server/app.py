"""The server factory, the gateway's life cycle, and ``main()``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from allxai.server import logs, reflection
from allxai.server.audit import AuditLog
from allxai.server.backends.base import Backend
from allxai.server.core import Diagnosis
from allxai.server.intake import IntakeInterceptor, receive_limits, server_receive_limit
from allxai.server.interceptors import ErrorMappingInterceptor, MetricsInterceptor
from allxai.server.metrics import InstrumentedBackend, Metrics
from allxai.server.security import Authorizer, bind_host, check_transport, server_credentials
from allxai.server.servicer import DiagnosisServicer
from allxai.server.settings import Settings
from allxai.v1 import diagnosis_pb2, diagnosis_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = diagnosis_pb2.DESCRIPTOR.services_by_name["DiagnosisService"].full_name
#: Health service name for liveness probes: SERVING while the process runs, whatever the backend does,
#: so a TensorFlow Serving outage makes pods unready (no traffic) without kubelet restarting them.
LIVENESS_SERVICE = "allxai.liveness"


#: gRPC sets SO_REUSEPORT by default, so a second gateway on a port in use would start and share its
#: calls with the first; without it, binding a port in use fails, as the metrics port does.
_EXCLUSIVE_PORT = ("grpc.so_reuseport", 0)


def _options(settings: Settings) -> list[tuple[str, int]]:
    return [
        # The C core refuses a larger message without handing it over; below it, each method's own
        # limit is checked before the message is parsed (intake.py).
        ("grpc.max_receive_message_length", server_receive_limit(settings)),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        _EXCLUSIVE_PORT,
    ]


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Bind ``address`` (TLS when credentials are given); a clear error when it cannot be bound."""
    try:
        if credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # grpcio says only "Failed to bind to address ..."
        raise OSError(
            f"cannot listen on {address}: the port is in use (another gateway?) or the address is not "
            "available"
        ) from exc


def create_server(
    settings: Settings,
    backend: Backend,
    health_servicer: health_aio.HealthServicer | None = None,
    metrics: Metrics | None = None,
    audit: AuditLog | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Build the grpc.aio server with every service and bind its port (TLS when configured).

    The caller starts it. Interceptors, outermost first: metrics (they see the final code), error
    mapping, then intake: authorisation and each method's receive limit, before the request is read
    (its refusals are domain errors, mapped like any other).
    """
    metrics = metrics or Metrics()
    check_transport(settings)
    interceptors: list[grpc.aio.ServerInterceptor[object, object]] = [
        MetricsInterceptor(metrics),
        ErrorMappingInterceptor(),
        IntakeInterceptor(Authorizer.from_settings(settings), receive_limits(settings)),
    ]
    server = grpc.aio.server(interceptors=interceptors, options=_options(settings))
    diagnosis_pb2_grpc.add_DiagnosisServiceServicer_to_server(
        DiagnosisServicer(Diagnosis(settings, backend, metrics), audit), server
    )
    names = [SERVICE_NAME]
    if settings.enable_health and health_servicer is not None:
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        names.append(health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    if settings.enable_reflection:
        reflection.enable_reflection(names, server)
    address = f"{bind_host(settings, warn=True)}:{settings.port}"
    return server, _bind(server, address, server_credentials(settings))


def make_backend(settings: Settings) -> Backend:
    """The backend the settings ask for."""
    if settings.backend == "tfserving":
        from allxai.server.backends.tfserving import TFServingBackend  # noqa: PLC0415
        from allxai.server.backends.tfserving_rpc import TLSFiles  # noqa: PLC0415

        tls = None
        if settings.tfserving_tls:
            tls = TLSFiles(
                settings.tfserving_ca_file,
                settings.tfserving_cert_file,
                settings.tfserving_key_file,
                settings.tfserving_server_name,
            )
        return TFServingBackend(
            settings.tfserving_target,
            settings.tfserving_models,
            settings.default_model,
            batch_size=settings.tfserving_batch_size,
            max_in_flight=settings.tfserving_max_in_flight,
            timeout=settings.tfserving_timeout_seconds,
            retries=settings.tfserving_retries,
            tls=tls,
            max_message_bytes=settings.max_message_bytes,
            class_names=settings.class_names,
        )
    from allxai.server.backends.embedded import EmbeddedBackend  # noqa: PLC0415

    return EmbeddedBackend(
        settings.model_base_path,
        settings.default_model,
        settings.version_labels,
        batch_size=settings.predict_batch_size,
        threads=settings.predict_threads,
        class_names=settings.class_names,
        reserved_threads=settings.predict_reserved_threads,
        bulk_batch_size=settings.explain_model_batch_size,
        bulk_max_defer=settings.explain_yield_ms / 1000,
    )


class Gateway:
    """The server, its backend, health, metrics and audit, started and stopped in the right order."""

    #: Seconds between backend health checks once serving.
    HEALTH_INTERVAL = 1.0

    def __init__(self, settings: Settings, backend: Backend, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.backend: Backend = InstrumentedBackend(backend, self.metrics)
        self.health = health_aio.HealthServicer()
        self.audit = (
            AuditLog(settings.audit_path, settings.audit_fsync, settings.audit_fsync_interval_seconds)
            if settings.audit_path is not None
            else None
        )
        self.server, self.port = create_server(settings, self.backend, self.health, self.metrics, self.audit)
        self.health_server: grpc.aio.Server | None = None
        self.health_port = 0
        if settings.health_port and settings.enable_health:
            # Plaintext and health only: kubelet's gRPC probes cannot speak TLS or send tokens.
            self.health_server = grpc.aio.server(options=[_EXCLUSIVE_PORT])
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            health_address = f"{bind_host(settings)}:{settings.health_port}"
            self.health_port = _bind(self.health_server, health_address, None)
        self.metrics_port = 0
        self._metrics_http: WSGIServer | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._serving = False

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def start(self) -> None:
        """Listen at once (NOT_SERVING), then wait for the backend's models, then report SERVING."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        if self.settings.enable_metrics:
            server = self.metrics.serve(self.settings.metrics_host, self.settings.metrics_port)
            self._metrics_http = server
            self.metrics_port = int(server.server_port)
        if self.health_server is not None:
            await self.health_server.start()
        await self.server.start()
        log.info("listening on port %d; waiting for the models", self.port)
        await self.backend.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._serving = True
        self._monitor = asyncio.create_task(self._watch_backend())
        log.info("serving")

    async def _watch_backend(self) -> None:
        """Follow the backend's health: NOT_SERVING while its model server is gone, SERVING when back."""
        while True:
            await asyncio.sleep(self.HEALTH_INTERVAL)
            try:
                ready = await self.backend.check()
            except Exception:  # a check that fails means not ready; the watch goes on
                log.exception("backend health check failed")
                ready = False
            if ready != self._serving:
                self._serving = ready
                log.warning("backend %s", "is back: serving" if ready else "is not ready: NOT_SERVING")
                await self._set_health(
                    health_pb2.HealthCheckResponse.SERVING
                    if ready
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, let in-flight calls finish within the grace period, then release everything."""
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace_period_seconds if grace is None else grace)
        if self.health_server is not None:
            await self.health_server.stop(0)
        await self.backend.close()
        if self.audit is not None:
            self.audit.close()
        if self._metrics_http is not None:
            # shutdown() waits for the serving thread's next poll (up to 0.5 s): not on the event loop.
            await asyncio.to_thread(self._metrics_http.shutdown)
            self._metrics_http.server_close()
        log.info("stopped")


async def serve(settings: Settings) -> None:
    """Run the gateway until SIGTERM or SIGINT."""
    gateway = Gateway(settings, make_backend(settings))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        starting = asyncio.create_task(gateway.start())
        signalled = asyncio.create_task(stopping.wait())
        # A signal while the models are still loading (or TensorFlow Serving is still absent) stops too.
        await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()
        else:
            starting.cancel()
        await signalled
        log.info("signal received; draining for up to %.1f s", settings.grace_period_seconds)
    finally:
        await gateway.stop()


def main() -> int:
    """Entry point of ``allxai serve`` and ``python -m allxai.server``."""
    # lime 0.2.0.1 always draws a progress bar; in a server it would only litter the log.
    os.environ.setdefault("TQDM_DISABLE", "1")
    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except Exception as exc:  # noqa: BLE001  (a clear last word instead of a traceback)
        log.error("gateway failed: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
