"""The TensorFlow Serving backend: ``tensorflow.serving.PredictionService`` over grpc.aio.

What it does that a plain stub does not:

- learns each model's versions, signatures, classes and input size from ``GetModelStatus``,
  ``GetModelMetadata`` and the model's own ``model_card`` signature, and re-reads them when a version
  label may have moved (canary promotions) after ``metadata_ttl`` seconds; a model with only
  ``serving_default`` gets its input size and tensor names from the signature and its class names
  from ``class_names`` (the ``ALLXAI_CLASS_NAMES`` setting) or ``class_0 ..`` (see :mod:`.signature`);
- pins every request to the exact version it resolved, so one explanation never mixes versions;
- cuts images into batches of at most ``batch_size`` and sends them together; explanation batches
  share ``max_in_flight`` slots so they cannot crowd out Classify, which the gateway bounds by its
  own admission limit instead;
- derives each call's deadline from the caller's remaining time, retries only UNAVAILABLE with jittered
  exponential backoff inside that deadline, and translates TensorFlow Serving's codes into ours;
- balances per request across pods: with a ``dns:///`` target naming a headless Service, the channel's
  ``round_robin`` policy spreads calls over every address, where a plain Service would pin one pod.

The models' lookup lives in :mod:`.tfserving_models`, the wire (channel, retries, error translation,
tensors) in :mod:`.tfserving_rpc`; this module is the backend and its predictions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import numpy.typing as npt

from allxai.contract import names as contract
from allxai.explainer.perturb import Composition
from allxai.server.backends import signature, tfserving_tensors
from allxai.server.backends.base import Lane, ModelInfo, ModelSpec, compose_inputs
from allxai.server.backends.tfserving_models import ModelCatalog
from allxai.server.backends.tfserving_rpc import Connection, TLSFiles, fill_model_spec, to_array
from allxai.server.errors import (
    AllxaiError,
    BackendError,
    BackendUnavailable,
    DeadlineExceeded,
    ModelNotFound,
)
from allxai.tfs_protos.tensorflow_serving.apis import predict_pb2

log = logging.getLogger(__name__)


class TFServingBackend:
    """Models served by TensorFlow Serving, reached over one (load-balanced) gRPC channel."""

    def __init__(
        self,
        target: str,
        models: list[str],
        default_model: str = "",
        *,
        batch_size: int = 64,
        max_in_flight: int = 8,
        timeout: float = 30.0,
        retries: int = 3,
        tls: TLSFiles | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        metadata_ttl: float = 10.0,
        start_poll_seconds: float = 0.5,
        class_names: dict[str, list[str]] | None = None,
    ) -> None:
        if not models:
            raise ValueError("name the models TensorFlow Serving serves (ALLXAI_TFSERVING_MODELS)")
        if default_model and default_model not in models:
            raise ValueError(f"default model {default_model!r} is not among {models}")
        self._rpc = Connection(target, tls, max_message_bytes, timeout, retries)
        self._catalog = ModelCatalog(self._rpc, models, default_model, metadata_ttl, class_names or {})
        self._batch_size = batch_size
        self._poll = start_poll_seconds
        # Explanation batches share these slots; Classify calls never wait for them.
        self._bulk_slots = asyncio.Semaphore(max_in_flight)

    # --- life cycle ---------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the channel without waiting for the models (:meth:`start` opens it and waits).

        Call it on the event loop's thread (grpc.aio channels belong to it).
        """
        if not self._rpc.is_open:
            self._rpc.open()

    async def start(self) -> None:
        """Wait until every model has an AVAILABLE version and its metadata reads, then return."""
        if not self._rpc.is_open:
            self.connect()
        waited = 0.0
        while True:
            try:
                for name in self._catalog.names:
                    await self.resolve(ModelSpec(name=name))
                return
            except (BackendUnavailable, ModelNotFound, DeadlineExceeded) as exc:
                if waited == 0.0 or waited >= 30.0:
                    log.warning("TensorFlow Serving at %s is not ready: %s", self._rpc.target, exc.message)
                    waited = 0.0
                await asyncio.sleep(self._poll)
                waited += self._poll

    def interactive(self) -> AbstractContextManager[None]:
        """No scope: Classify has connections of its own, and the model server's cores are not ours."""
        return nullcontext()

    async def check(self) -> bool:
        """Whether every model still has an AVAILABLE version (for the health service)."""
        try:
            for name in self._catalog.names:
                if not await self._catalog.available_versions(name, timeout=2.0):
                    return False
        except AllxaiError:
            return False
        return True

    async def close(self) -> None:
        """Close the channel; in-flight calls end with CANCELLED."""
        await self._rpc.close()

    async def resolve(self, spec: ModelSpec, timeout: float | None = None) -> ModelInfo:
        """The exact version a spec names now (see :class:`.ModelCatalog`)."""
        return await self._catalog.resolve(spec, timeout)

    # --- predictions ----------------------------------------------------------------------------

    async def predict(
        self,
        model: ModelInfo,
        images: npt.NDArray[np.uint8],
        timeout: float | None,
        lane: Lane = "interactive",
    ) -> npt.NDArray[np.float32]:
        """Probabilities for ``images``, in batches of at most ``batch_size`` sent together."""
        calls = [
            {model.serving_input: images[i : i + self._batch_size]}
            for i in range(0, len(images), self._batch_size)
        ]
        return await self._predict_all(model, contract.SERVING_SIGNATURE, None, calls, timeout, lane)

    async def predict_composed(
        self, model: ModelInfo, composition: Composition, timeout: float | None, lane: Lane = "bulk"
    ) -> npt.NDArray[np.float32]:
        """Probabilities of the perturbed images the ``compose`` signature builds from ``composition``."""
        if not model.has_composition:
            raise ModelNotFound(f"model {model.name!r} version {model.version} has no compose signature")
        # One request per call (the engine sends compose_batch_size masks at a time): the signature
        # chunks them in-graph, so image, fill and segments cross the wire once per request.
        calls = [compose_inputs(composition)]
        return await self._predict_all(
            model, contract.COMPOSE_SIGNATURE, contract.OUTPUT, calls, timeout, lane
        )

    async def _predict_all(
        self,
        model: ModelInfo,
        signature_name: str,
        output: str | None,
        calls: list[dict[str, npt.NDArray[Any]]],
        timeout: float | None,
        lane: Lane,
    ) -> npt.NDArray[np.float32]:
        """``output``'s probabilities, or (None) ``serving_default``'s rows with the domain score."""
        if not calls:
            return np.zeros((0, len(model.class_names) if output else model.row_width), np.float32)
        deadline = time.monotonic() + (self._rpc.timeout if timeout is None else timeout)
        parts = await asyncio.gather(
            *(self._predict_one(model, signature_name, output, inputs, deadline, lane) for inputs in calls)
        )
        return np.concatenate(parts, axis=0)

    async def _predict_one(
        self,
        model: ModelInfo,
        signature_name: str,
        output: str | None,
        inputs: dict[str, npt.NDArray[Any]],
        deadline: float,
        lane: Lane,
    ) -> npt.NDArray[np.float32]:
        wanted = (output,) if output else model.serving_outputs
        request = predict_pb2.PredictRequest(output_filter=list(wanted))
        fill_model_spec(request.model_spec, model.name, model.version, None, signature_name)
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tfserving_tensors.to_tensor_proto(value))
        what = f"{model.name} version {model.version}"

        # Classify goes over connections of its own and takes no bulk slot: it never queues behind
        # explanation batches on the gateway's side of TensorFlow Serving.
        stub = self._rpc.interactive_stub if lane == "interactive" else self._rpc.predict_stub

        async def send() -> npt.NDArray[np.float32]:
            response = await self._rpc.call(
                lambda t: stub.Predict(request, timeout=t),
                max(0.0, deadline - time.monotonic()),
                what,
            )
            missing = [key for key in wanted if key not in response.outputs]
            if missing:
                raise BackendError(f"{what}: TensorFlow Serving's answer has no output {missing[0]!r}")
            try:
                if output:
                    return signature.check_scores(model, to_array(response.outputs[output]))
                return signature.rows(model, {key: to_array(response.outputs[key]) for key in wanted})
            except signature.ContractError as exc:
                raise BackendError(str(exc)) from exc

        if lane == "interactive":
            return await send()
        async with self._bulk_slots:
            return await send()
