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
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from allxai.contract import names as contract
from allxai.explainer.perturb import Composition
from allxai.server.backends import signature
from allxai.server.backends.base import Lane, ModelInfo, ModelSpec, compose_inputs
from allxai.server.backends.tfserving_rpc import (
    T,
    TLSFiles,
    call_with_retries,
    fill_model_spec,
    left,
    open_channel,
    signature_defs,
    tensor_specs,
    to_array,
)
from allxai.server.errors import (
    AllxaiError,
    BackendError,
    BackendUnavailable,
    DeadlineExceeded,
    ModelNotFound,
)

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
        self._target = target
        self._models = list(models)
        self._default = default_model or models[0]
        self._batch_size = batch_size
        self._timeout = timeout
        self._retries = retries
        self._tls = tls
        self._max_message_bytes = max_message_bytes
        self._metadata_ttl = metadata_ttl
        self._poll = start_poll_seconds
        self._class_names = class_names or {}
        # Explanation batches share these slots; Classify calls never wait for them.
        self._bulk_slots = asyncio.Semaphore(max_in_flight)
        self._channel: grpc.aio.Channel | None = None
        self._predict_stub: Any = None
        self._model_stub: Any = None
        self._resolved: dict[tuple[str, int | None, str | None], tuple[float, ModelInfo]] = {}
        self._refreshing: dict[tuple[str, int | None, str | None], asyncio.Lock] = {}
        self._cards: dict[tuple[str, int], signature.CardSource] = {}
        self._closed = False

    # --- life cycle ---------------------------------------------------------------------------

    def _open(self) -> None:
        from tensorflow_serving.apis import (  # noqa: PLC0415  (imports all of TensorFlow)
            model_service_pb2_grpc,
            prediction_service_pb2_grpc,
        )

        channel = open_channel(self._target, self._tls, self._max_message_bytes)
        self._channel = channel
        self._predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self._model_stub = model_service_pb2_grpc.ModelServiceStub(channel)

    async def start(self) -> None:
        """Wait until every model has an AVAILABLE version and its metadata reads, then return."""
        if self._channel is None:
            # Importing tensorflow_serving imports all of TensorFlow (seconds): not on the event loop.
            # (The channel itself must be made on the loop's thread.)
            await asyncio.to_thread(
                importlib.import_module, "tensorflow_serving.apis.prediction_service_pb2_grpc"
            )
            self._open()
        waited = 0.0
        while True:
            try:
                for name in self._models:
                    await self.resolve(ModelSpec(name=name))
                return
            except (BackendUnavailable, ModelNotFound, DeadlineExceeded) as exc:
                if waited == 0.0 or waited >= 30.0:
                    log.warning("TensorFlow Serving at %s is not ready: %s", self._target, exc.message)
                    waited = 0.0
                await asyncio.sleep(self._poll)
                waited += self._poll

    async def check(self) -> bool:
        """Whether every model still has an AVAILABLE version (for the health service)."""
        try:
            for name in self._models:
                if not await self._available_versions(name, timeout=2.0):
                    return False
        except AllxaiError:
            return False
        return True

    async def close(self) -> None:
        """Close the channel; in-flight calls end with CANCELLED."""
        self._closed = True
        if self._channel is not None:
            await self._channel.close(None)

    # --- models ---------------------------------------------------------------------------------

    async def resolve(self, spec: ModelSpec, timeout: float | None = None) -> ModelInfo:
        """The exact version a spec names now (labels are re-read after ``metadata_ttl``)."""
        name = spec.name or self._default
        if name not in self._models:
            raise ModelNotFound(f"model {name!r} is not served here (served: {', '.join(self._models)})")
        key = (name, spec.version, spec.version_label)
        cached = self._resolved.get(key)
        if cached is not None and time.monotonic() - cached[0] < self._metadata_ttl:
            return cached[1]
        # One refresh per key at a time: callers arriving meanwhile wait for it instead of each
        # sending their own metadata calls when the cache entry expires.
        lock = self._refreshing.setdefault(key, asyncio.Lock())
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        try:
            await asyncio.wait_for(lock.acquire(), max(0.0, deadline - time.monotonic()))
        except TimeoutError as exc:
            raise DeadlineExceeded(f"the deadline passed while model {name} was being looked up") from exc
        try:
            cached = self._resolved.get(key)
            if cached is not None and time.monotonic() - cached[0] < self._metadata_ttl:
                return cached[1]
            info = await self._read_model(name, spec, deadline)
            self._resolved[key] = (time.monotonic(), info)
            return info
        finally:
            lock.release()

    async def _read_model(self, name: str, spec: ModelSpec, deadline: float) -> ModelInfo:
        from tensorflow_serving.apis import get_model_metadata_pb2  # noqa: PLC0415

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        fill_model_spec(request.model_spec, name, spec.version, spec.version_label)
        try:
            response = await self._call(
                lambda t: self._predict_stub.GetModelMetadata(request, timeout=t),
                left(deadline),
                f"metadata of {name}",
            )
        except BackendError as exc:
            if spec.version_label:  # TensorFlow Serving says INVALID_ARGUMENT for an unknown label
                raise ModelNotFound(f"model {name!r} has no version label {spec.version_label!r}") from exc
            raise
        version = int(response.model_spec.version.value)
        signatures = signature_defs(response)
        if contract.SERVING_SIGNATURE not in signatures:
            found = ", ".join(sorted(signatures)) or "none"
            raise BackendError(
                f"model {name} version {version} has no {contract.SERVING_SIGNATURE!r} signature "
                f"(it has: {found})"
            )
        versions = await self._available_versions(name, timeout=left(deadline))
        serving = signatures[contract.SERVING_SIGNATURE]
        try:
            has_card = contract.CARD_SIGNATURE in signatures
            card = await self._read_card(name, version, deadline) if has_card else None
            return signature.derive_model_info(
                name,
                version,
                tensor_specs(serving.inputs),
                tensor_specs(serving.outputs),
                card=card,
                configured_names=self._class_names.get(name),
                has_composition=contract.COMPOSE_SIGNATURE in signatures,
                available_versions=tuple(versions),
            )
        except signature.ContractError as exc:
            raise BackendError(str(exc)) from exc

    async def _read_card(self, name: str, version: int, deadline: float) -> signature.CardSource:
        """The ``model_card`` signature's card, read once per version (a version never changes)."""
        from tensorflow_serving.apis import predict_pb2  # noqa: PLC0415

        cached = self._cards.get((name, version))
        if cached is not None:
            return cached
        request = predict_pb2.PredictRequest()
        fill_model_spec(request.model_spec, name, version, None, contract.CARD_SIGNATURE)
        response = await self._call(
            lambda t: self._predict_stub.Predict(request, timeout=t), left(deadline), f"model card of {name}"
        )
        raw = to_array(response.outputs[contract.CARD_OUTPUT])
        where = f"the {contract.CARD_SIGNATURE!r} signature"
        card = signature.card_from_json(name, version, bytes(raw.reshape(-1)[0]), where, is_signature=True)
        self._cards[(name, version)] = card
        return card

    async def _available_versions(self, name: str, timeout: float | None) -> list[int]:
        from tensorflow_serving.apis import get_model_status_pb2  # noqa: PLC0415

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        response = await self._call(
            lambda t: self._model_stub.GetModelStatus(request, timeout=t), timeout, f"status of {name}"
        )
        available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return sorted(int(s.version) for s in response.model_version_status if s.state == available)

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
        return await self._predict_all(
            model, contract.SERVING_SIGNATURE, model.serving_output, calls, timeout, lane
        )

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
        output: str,
        calls: list[dict[str, npt.NDArray[Any]]],
        timeout: float | None,
        lane: Lane,
    ) -> npt.NDArray[np.float32]:
        if not calls:
            return np.zeros((0, len(model.class_names)), np.float32)
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        parts = await asyncio.gather(
            *(self._predict_one(model, signature_name, output, inputs, deadline, lane) for inputs in calls)
        )
        return np.concatenate(parts, axis=0)

    async def _predict_one(
        self,
        model: ModelInfo,
        signature_name: str,
        output: str,
        inputs: dict[str, npt.NDArray[Any]],
        deadline: float,
        lane: Lane,
    ) -> npt.NDArray[np.float32]:
        import tensorflow as tf  # noqa: PLC0415
        from tensorflow_serving.apis import predict_pb2  # noqa: PLC0415

        request = predict_pb2.PredictRequest(output_filter=[output])
        fill_model_spec(request.model_spec, model.name, model.version, None, signature_name)
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        what = f"{model.name} version {model.version}"

        async def send() -> npt.NDArray[np.float32]:
            response = await self._call(
                lambda t: self._predict_stub.Predict(request, timeout=t),
                max(0.0, deadline - time.monotonic()),
                what,
            )
            if output not in response.outputs:
                raise BackendError(f"{what}: TensorFlow Serving's answer has no output {output!r}")
            try:
                return signature.check_scores(model, to_array(response.outputs[output]))
            except signature.ContractError as exc:
                raise BackendError(str(exc)) from exc

        if lane == "interactive":
            return await send()
        async with self._bulk_slots:
            return await send()

    # --- plumbing -------------------------------------------------------------------------------

    async def _call(self, send: Callable[[float], Awaitable[T]], timeout: float | None, what: str) -> T:
        """One unary call with the deadline, retrying UNAVAILABLE (see :func:`call_with_retries`)."""
        if self._channel is None or self._closed:
            raise BackendUnavailable("the TensorFlow Serving channel is closed")
        budget = self._timeout if timeout is None else timeout
        return await call_with_retries(send, budget, what, self._retries, lambda: self._closed)
