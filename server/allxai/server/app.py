"""The server factory, the gateway's life cycle, and ``main()``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from allxai.server import logs
from allxai.server.backends.base import Backend
from allxai.server.core import Diagnosis
from allxai.server.interceptors import ErrorMappingInterceptor
from allxai.server.servicer import DiagnosisServicer
from allxai.server.settings import Settings
from allxai.v1 import diagnosis_pb2, diagnosis_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = diagnosis_pb2.DESCRIPTOR.services_by_name["DiagnosisService"].full_name


def create_server(
    settings: Settings, backend: Backend, health_servicer: health_aio.HealthServicer | None = None
) -> tuple[grpc.aio.Server, int]:
    """Build the grpc.aio server with every service and bind its port; the caller starts it."""
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
    ]
    server = grpc.aio.server(interceptors=[ErrorMappingInterceptor()], options=options)
    diagnosis_pb2_grpc.add_DiagnosisServiceServicer_to_server(
        DiagnosisServicer(Diagnosis(settings, backend)), server
    )
    names = [SERVICE_NAME]
    if settings.enable_health and health_servicer is not None:
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        names.append(health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    if settings.enable_reflection:
        names.append(reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise RuntimeError(f"could not bind {settings.host}:{settings.port}")
    return server, port


def make_backend(settings: Settings) -> Backend:
    """The backend the settings ask for."""
    from allxai.server.backends.embedded import EmbeddedBackend  # noqa: PLC0415

    return EmbeddedBackend(
        settings.model_base_path,
        settings.default_model,
        settings.version_labels,
        batch_size=settings.predict_batch_size,
        threads=settings.predict_threads,
    )


class Gateway:
    """The server, its backend and its health, started and stopped in the right order."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings = settings
        self.backend = backend
        self.health = health_aio.HealthServicer()
        self.server, self.port = create_server(settings, backend, self.health)

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def start(self) -> None:
        """Listen at once (NOT_SERVING), then load and warm the models, then report SERVING."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        log.info("listening on port %d; loading models", self.port)
        await self.backend.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving")

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, let in-flight calls finish within the grace period, then release the backend."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace_period_seconds if grace is None else grace)
        await self.backend.close()
        log.info("stopped")


async def serve(settings: Settings) -> None:
    """Run the gateway until SIGTERM or SIGINT."""
    gateway = Gateway(settings, make_backend(settings))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await gateway.start()
        await stopping.wait()
        log.info("signal received; draining for up to %.1f s", settings.grace_period_seconds)
    finally:
        await gateway.stop()


def main() -> int:
    """Entry point of ``allxai serve`` and ``python -m allxai.server``."""
    # lime 0.2.0.1 always draws a progress bar; in a server it would only litter the log.
    os.environ.setdefault("TQDM_DISABLE", "1")
    settings = Settings()
    logs.configure(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except Exception as exc:  # noqa: BLE001  (a clear last word instead of a traceback)
        log.error("gateway failed: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
