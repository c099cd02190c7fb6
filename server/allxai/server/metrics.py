"""Prometheus metrics of one gateway, on a registry of its own (tests run several gateways at once).

RED metrics per method and code come from :class:`~allxai.server.interceptors.MetricsInterceptor`;
the domain's histograms (``*_seconds``, samples, batch sizes) from :class:`InstrumentedBackend` and
the core. Names follow Prometheus conventions; every label set is small and fixed (no ids, no paths).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Sequence
from contextlib import AbstractContextManager
from wsgiref.simple_server import WSGIServer

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

from allxai.explainer.perturb import Composition
from allxai.server.backends.base import Backend, Lane, ModelInfo, ModelSpec
from allxai.server.outcomes import Classification

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 5000)


class Metrics:
    """Every metric of the gateway, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "allxai_requests", "Calls answered, by method and status code.", ["method", "code"], registry=r
        )
        self.latency = Histogram(
            "allxai_request_seconds",
            "Time from receiving a call to its status, by method and code.",
            ["method", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "allxai_in_flight_requests", "Calls being handled now.", ["method"], registry=r
        )
        self.backend_latency = Histogram(
            "allxai_backend_seconds",
            "Time of one call to the model backend, by operation and lane.",
            ["operation", "lane", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "allxai_backend_batch_size",
            "Images (or masks) per call to the model backend.",
            ["operation"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.explanation_samples = Histogram(
            "allxai_explanation_samples",
            "LIME samples per finished explanation.",
            buckets=(50, 100, 200, 400, 700, 1000, 2000, 5000, 10000),
            registry=r,
        )
        self.explanation_seconds = Histogram(
            "allxai_explanation_seconds",
            "Time of one explanation, from its slot to its result.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.running_explanations = Gauge(
            "allxai_running_explanations", "Explanations holding a slot now.", registry=r
        )
        self.queued_explanations = Gauge(
            "allxai_queued_explanations", "Explanations waiting for a slot.", registry=r
        )
        self.rejected = Counter(
            "allxai_rejected", "Calls refused at once for overload, by kind.", ["kind"], registry=r
        )
        self.backend_ready = Gauge(
            "allxai_backend_ready", "1 while the model backend answers its health check.", registry=r
        )
        # Drift shows here: the scores of what the laboratories send, and how often they leave the domain.
        self.domain_score = Histogram(
            "allxai_domain_score",
            "Out-of-domain score of each answered image (higher: less like the training images).",
            ["model", "version"],
            buckets=(0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128),
            registry=r,
        )
        self.out_of_domain = Counter(
            "allxai_out_of_domain",
            "Answers about images outside the model's training domain.",
            ["model", "version"],
            registry=r,
        )

    def observe_domain(self, model: ModelInfo, answers: Sequence[Classification]) -> None:
        """Count the domain checks of ``answers`` (none for a model without a gate)."""
        labels = (model.name, str(model.version))
        for answer in answers:
            if answer.in_domain is None:
                continue
            if answer.domain_score is not None:
                self.domain_score.labels(*labels).observe(answer.domain_score)
            if not answer.in_domain:
                self.out_of_domain.labels(*labels).inc()

    def serve(self, host: str, port: int) -> WSGIServer:
        """Serve ``/metrics`` over HTTP on a daemon thread; ``shutdown()`` and ``server_close()`` stop it."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server

    def text(self) -> str:
        """The exposition text, as Prometheus would scrape it."""
        return generate_latest(self.registry).decode()


class InstrumentedBackend:
    """A backend that records the latency, outcome and batch size of every call it passes on."""

    def __init__(self, inner: Backend, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    async def start(self) -> None:
        """Start the inner backend."""
        await self._inner.start()
        self._metrics.backend_ready.set(1)

    async def close(self) -> None:
        """Close the inner backend."""
        self._metrics.backend_ready.set(0)
        await self._inner.close()

    async def check(self) -> bool:
        """Ask the inner backend, and publish the answer."""
        ready = await self._inner.check()
        self._metrics.backend_ready.set(1 if ready else 0)
        return ready

    async def resolve(self, spec: ModelSpec, timeout: float | None = None) -> ModelInfo:
        """Resolve with the inner backend."""
        return await self._inner.resolve(spec, timeout)

    def interactive(self) -> AbstractContextManager[None]:
        """The inner backend's interactive scope."""
        return self._inner.interactive()

    async def predict(
        self,
        model: ModelInfo,
        images: npt.NDArray[np.uint8],
        timeout: float | None,
        lane: Lane = "interactive",
    ) -> npt.NDArray[np.float32]:
        """Predict with the inner backend, timed."""
        return await self._timed(
            "predict", lane, len(images), self._inner.predict(model, images, timeout, lane)
        )

    async def predict_composed(
        self, model: ModelInfo, composition: Composition, timeout: float | None, lane: Lane = "bulk"
    ) -> npt.NDArray[np.float32]:
        """Predict composed images with the inner backend, timed."""
        return await self._timed(
            "compose", lane, len(composition), self._inner.predict_composed(model, composition, timeout, lane)
        )

    async def _timed(
        self, operation: str, lane: str, size: int, call: Awaitable[npt.NDArray[np.float32]]
    ) -> npt.NDArray[np.float32]:
        self._metrics.batch_size.labels(operation).observe(size)
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await call
            outcome = "ok"
            return result
        finally:
            elapsed = time.perf_counter() - started
            self._metrics.backend_latency.labels(operation, lane, outcome).observe(elapsed)
