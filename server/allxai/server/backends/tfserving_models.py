"""The models TensorFlow Serving serves: their versions, signatures and cards, resolved per spec.

Each model's versions come from ``GetModelStatus``, its signatures from ``GetModelMetadata`` and its
classes and input size from its own ``model_card`` signature (or, for a model with only
``serving_default``, from that signature and the configured class names: see :mod:`.signature`).
A resolved spec is cached for ``metadata_ttl`` seconds, so a version label that moved (a canary
promotion) is followed soon after; a card is read once per version, which never changes.
"""

from __future__ import annotations

import asyncio
import time

from allxai.contract import names as contract
from allxai.server.backends import signature
from allxai.server.backends.base import ModelInfo, ModelSpec
from allxai.server.backends.tfserving_rpc import (
    Connection,
    fill_model_spec,
    left,
    signature_defs,
    tensor_specs,
    to_array,
)
from allxai.server.errors import BackendError, DeadlineExceeded, ModelNotFound
from allxai.tfs_protos.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
)

_Key = tuple[str, int | None, str | None]


class ModelCatalog:
    """The named models of one TensorFlow Serving, looked up over ``connection``."""

    def __init__(
        self,
        connection: Connection,
        models: list[str],
        default_model: str,
        metadata_ttl: float,
        class_names: dict[str, list[str]],
    ) -> None:
        self._rpc = connection
        self.names = list(models)
        self._default = default_model or models[0]
        self._metadata_ttl = metadata_ttl
        self._class_names = class_names
        self._resolved: dict[_Key, tuple[float, ModelInfo]] = {}
        self._refreshing: dict[_Key, asyncio.Lock] = {}
        self._cards: dict[tuple[str, int], signature.CardSource] = {}

    async def resolve(self, spec: ModelSpec, timeout: float | None = None) -> ModelInfo:
        """The exact version a spec names now (labels are re-read after ``metadata_ttl``)."""
        name = spec.name or self._default
        if name not in self.names:
            raise ModelNotFound(f"model {name!r} is not served here (served: {', '.join(self.names)})")
        key = (name, spec.version, spec.version_label)
        cached = self._resolved.get(key)
        if cached is not None and time.monotonic() - cached[0] < self._metadata_ttl:
            return cached[1]
        # One refresh per key at a time: callers arriving meanwhile wait for it instead of each
        # sending their own metadata calls when the cache entry expires.
        lock = self._refreshing.setdefault(key, asyncio.Lock())
        deadline = time.monotonic() + (self._rpc.timeout if timeout is None else timeout)
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

    async def available_versions(self, name: str, timeout: float | None) -> list[int]:
        """The versions of ``name`` that are AVAILABLE now, oldest first."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        response = await self._rpc.call(
            lambda t: self._rpc.model_stub.GetModelStatus(request, timeout=t), timeout, f"status of {name}"
        )
        available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return sorted(int(s.version) for s in response.model_version_status if s.state == available)

    async def _read_model(self, name: str, spec: ModelSpec, deadline: float) -> ModelInfo:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        fill_model_spec(request.model_spec, name, spec.version, spec.version_label)
        try:
            response = await self._rpc.call(
                lambda t: self._rpc.predict_stub.GetModelMetadata(request, timeout=t),
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
        versions = await self.available_versions(name, timeout=left(deadline))
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
        cached = self._cards.get((name, version))
        if cached is not None:
            return cached
        request = predict_pb2.PredictRequest()
        fill_model_spec(request.model_spec, name, version, None, contract.CARD_SIGNATURE)
        response = await self._rpc.call(
            lambda t: self._rpc.predict_stub.Predict(request, timeout=t),
            left(deadline),
            f"model card of {name}",
        )
        raw = to_array(response.outputs[contract.CARD_OUTPUT])
        where = f"the {contract.CARD_SIGNATURE!r} signature"
        card = signature.card_from_json(name, version, bytes(raw.reshape(-1)[0]), where, is_signature=True)
        self._cards[(name, version)] = card
        return card
