"""The embedded backend: SavedModels in TensorFlow Serving's layout, run in this process.

TensorFlow runs on a small pool of threads, never on the event loop; the pool is the only
limit on parallel predictions (no global lock: a loaded concrete function is thread-safe).
The pool takes interactive work (Classify) before queued explanation batches, and keeps
``reserved_threads`` of its threads for it, so a classification never waits for an explanation batch
to end (a model call cannot be pre-empted): it only shares the cores with the batches running; and
classifications that arrive while every model thread is busy share one model call (a model runs a
batch of 16 images in far less than 16 times its single-image time).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from allxai.contract import names as contract
from allxai.explainer.perturb import Composition
from allxai.server.backends import signature
from allxai.server.backends.base import Lane, ModelInfo, ModelSpec, compose_inputs
from allxai.server.backends.workers import Coalescer, InteractiveGate, PriorityPool
from allxai.server.errors import BackendError, BackendUnavailable, DeadlineExceeded, ModelNotFound

log = logging.getLogger(__name__)


@dataclass
class _Loaded:
    info: ModelInfo
    saved: Any  # the loaded object: signatures hold only weak references to it
    serve: Any
    compose: Any | None
    coalescer: Coalescer


_PRIORITY: dict[Lane, int] = {"interactive": 0, "bulk": 1}


def discover(base: Path) -> dict[str, list[int]]:
    """Model names and their numeric version folders under ``base`` (TensorFlow Serving's layout)."""
    if not base.is_dir():
        return {}
    found: dict[str, list[int]] = {}
    for model_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        versions = sorted(int(v.name) for v in model_dir.iterdir() if v.is_dir() and v.name.isdigit())
        if versions:
            found[model_dir.name] = versions
    return found


class EmbeddedBackend:
    """Serves the newest version of every model under ``base`` (plus labelled versions) in-process.

    A model with only ``serving_default`` is served too (see :mod:`.signature`): its class names come
    from ``assets.extra/model_card.json`` in its version folder, else from ``class_names`` (the
    ``ALLXAI_CLASS_NAMES`` setting, by model name), else they are ``class_0 .. class_{C-1}``.
    """

    def __init__(
        self,
        base: Path,
        default_model: str = "",
        version_labels: dict[str, dict[str, int]] | None = None,
        batch_size: int = 64,
        threads: int = 2,
        class_names: dict[str, list[str]] | None = None,
        reserved_threads: int = 1,
        bulk_batch_size: int | None = None,
        bulk_max_defer: float = 0.0,
    ) -> None:
        self._base = base
        self._default = default_model
        self._labels = version_labels or {}
        self._class_names = class_names or {}
        self._batch_size = batch_size
        # Explanation batches: a smaller batch holds TensorFlow's shared intra-op threads for less
        # time at once, so a classification's operations interleave with it sooner.
        self._bulk_batch = min(bulk_batch_size or batch_size, batch_size)
        self._threads = threads
        # Threads kept for interactive work (Classify); a single thread cannot be kept from bulk work.
        # Explanation batches wait (up to bulk_max_defer s) while a classification is in progress.
        self._gate = InteractiveGate(bulk_max_defer)
        self._pool = PriorityPool(threads, "allxai-model", min(reserved_threads, threads - 1), self._gate)
        self._models: dict[tuple[str, int], _Loaded] = {}
        self._ready = False
        self._closed = False

    async def start(self) -> None:
        """Load the newest and every labelled version of each model, and warm each up."""
        found = discover(self._base)
        if not found:
            raise BackendUnavailable(f"no models under {self._base} (expected <base>/<name>/<version>/)")
        for name, versions in found.items():
            wanted = {versions[-1], *self._labels.get(name, {}).values()}
            for version in sorted(wanted):
                if version not in versions:
                    raise BackendUnavailable(
                        f"label of model {name} names version {version}, which is absent"
                    )
                loaded = await self._pool.submit(0, self._load, name, version, tuple(versions))
                self._models[(name, version)] = loaded
                h, w = loaded.info.input_size
                await self.predict(loaded.info, np.zeros((1, h, w, 3), np.uint8), timeout=None)
                log.info("model %s version %d loaded and warm", name, version)
        if not self._default and len(found) > 1:
            raise BackendUnavailable(f"several models ({', '.join(found)}); set ALLXAI_DEFAULT_MODEL")
        self._default = self._default or next(iter(found))
        if self._default not in found:
            raise BackendUnavailable(f"default model {self._default!r} is not under {self._base}")
        self._ready = True

    def _load(self, name: str, version: int, versions: tuple[int, ...]) -> _Loaded:
        import tensorflow as tf  # noqa: PLC0415  (only the serving process pays for TensorFlow)

        path = self._base / name / str(version)
        saved = tf.saved_model.load(str(path))
        if contract.SERVING_SIGNATURE not in saved.signatures:
            found = ", ".join(sorted(saved.signatures)) or "none"
            raise BackendUnavailable(
                f"model {name} version {version} has no {contract.SERVING_SIGNATURE!r} signature "
                f"(it has: {found})"
            )
        serve = saved.signatures[contract.SERVING_SIGNATURE]
        try:
            info = signature.derive_model_info(
                name,
                version,
                _specs(serve.structured_input_signature[1], name, version),
                _specs(serve.structured_outputs, name, version),
                card=_card(saved, path, name, version),
                configured_names=self._class_names.get(name),
                has_composition=contract.COMPOSE_SIGNATURE in saved.signatures,
                available_versions=versions,
            )
        except signature.ContractError as exc:
            raise BackendUnavailable(str(exc)) from exc
        coalescer = Coalescer(
            self._pool,
            lambda images: _run(serve, {info.serving_input: images}, info),
            self._batch_size,
            self._threads,
        )
        return _Loaded(info, saved, serve, saved.signatures.get(contract.COMPOSE_SIGNATURE), coalescer)

    def interactive(self) -> AbstractContextManager[None]:
        """Hold explanation batches back while the classification in this scope is in progress."""
        return self._gate.active()

    async def check(self) -> bool:
        """Loaded models stay loaded: ready from the end of ``start`` to ``close``."""
        return self._ready

    async def close(self) -> None:
        """Drop the models and stop the threads."""
        self._ready = False
        self._closed = True
        self._models.clear()
        await asyncio.to_thread(self._pool.shutdown, True)

    async def resolve(self, spec: ModelSpec, timeout: float | None = None) -> ModelInfo:
        """Find the loaded model a spec names (in memory: ``timeout`` is not needed)."""
        if not self._ready:
            raise BackendUnavailable("the models are still loading" if not self._closed else "shutting down")
        name = spec.name or self._default
        loaded = sorted(v for (n, v) in self._models if n == name)
        if not loaded:
            raise ModelNotFound(f"model {name!r} is not served here")
        if spec.version_label:
            labels = self._labels.get(name, {})
            if spec.version_label not in labels:
                known = ", ".join(sorted(labels)) or "none"
                raise ModelNotFound(
                    f"model {name!r} has no version label {spec.version_label!r} (labels: {known})"
                )
            version = labels[spec.version_label]
        else:
            version = spec.version if spec.version is not None else loaded[-1]
        if (name, version) not in self._models:
            raise ModelNotFound(
                f"version {version} of model {name!r} is not loaded (loaded: {', '.join(map(str, loaded))})"
            )
        return self._models[(name, version)].info

    async def predict(
        self,
        model: ModelInfo,
        images: npt.NDArray[np.uint8],
        timeout: float | None,
        lane: Lane = "interactive",
    ) -> npt.NDArray[np.float32]:
        """Run the model on the thread pool in batches of at most ``batch_size``.

        Interactive work goes through the model's coalescer, so concurrent classifications share calls.
        """
        entry = self._entry(model)
        size = self._batch_size if lane == "interactive" else self._bulk_batch
        chunks = [images[i : i + size] for i in range(0, len(images), size)]
        if lane == "interactive":
            return await self._wait(
                [entry.coalescer.predict(chunk) for chunk in chunks], timeout, model.row_width
            )
        calls = [{entry.info.serving_input: chunk} for chunk in chunks]
        return await self._gather(entry.serve, calls, timeout, entry.info, lane)

    async def predict_composed(
        self, model: ModelInfo, composition: Composition, timeout: float | None, lane: Lane = "bulk"
    ) -> npt.NDArray[np.float32]:
        """Run the model's ``compose`` signature in batches of at most ``batch_size`` masks."""
        entry = self._entry(model)
        if entry.compose is None:
            raise ModelNotFound(f"model {model.name!r} version {model.version} has no compose signature")
        masks = composition.masks
        calls = [
            compose_inputs(replace(composition, masks=masks[i : i + self._bulk_batch]))
            for i in range(0, len(masks), self._bulk_batch)
        ]
        return await self._gather(entry.compose, calls, timeout, entry.info, lane, contract.OUTPUT)

    def _entry(self, model: ModelInfo) -> _Loaded:
        entry = self._models.get((model.name, model.version))
        if entry is None:
            raise ModelNotFound(f"version {model.version} of model {model.name!r} is not loaded")
        return entry

    async def _gather(
        self,
        fn: Any,
        calls: list[dict[str, Any]],
        timeout: float | None,
        model: ModelInfo,
        lane: Lane,
        output: str | None = None,
    ) -> npt.NDArray[np.float32]:
        futures = [self._pool.submit(_PRIORITY[lane], _run, fn, call, model, output) for call in calls]
        width = len(model.class_names) if output else model.row_width
        return await self._wait(futures, timeout, width)

    @staticmethod
    async def _wait(
        parts: Sequence[Awaitable[npt.NDArray[np.float32]]], timeout: float | None, width: int
    ) -> npt.NDArray[np.float32]:
        # asyncio.timeout, not wait_for: when the caller is cancelled, wait_for cancels the gather
        # and never reads its outcome, so asyncio logs "_GatheringFuture exception was never
        # retrieved" at ERROR for every cancelled call. Awaited directly, the outcome is read here.
        try:
            async with asyncio.timeout(timeout):
                results = await asyncio.gather(*parts)
        except TimeoutError as exc:
            raise DeadlineExceeded("the model did not answer within the deadline") from exc
        return np.concatenate(results, axis=0) if results else np.zeros((0, width), np.float32)


def _run(
    fn: Any, inputs: dict[str, Any], model: ModelInfo, output: str | None = None
) -> npt.NDArray[np.float32]:
    """One call of a signature: the probabilities of ``output``, or, by default, ``serving_default``'s
    rows (the probabilities, then the domain score where the model has a gate)."""
    import tensorflow as tf  # noqa: PLC0415

    outputs = fn(**{k: tf.constant(v) for k, v in inputs.items()})
    try:
        if output:
            return signature.check_scores(model, outputs[output].numpy())
        return signature.rows(model, {key: outputs[key].numpy() for key in model.serving_outputs})
    except signature.ContractError as exc:
        raise BackendError(str(exc)) from exc


def _specs(tensors: Any, name: str, version: int) -> list[signature.TensorSpec]:
    """A loaded signature's inputs or outputs (``{key: tf.TensorSpec}``) in plain terms."""
    if not isinstance(tensors, dict):
        # Signatures key their tensors by name; anything else is not a servable signature.
        raise signature.ContractError(
            f"model {name} version {version}: {contract.SERVING_SIGNATURE!r} has unnamed tensors"
        )
    return [
        signature.TensorSpec(
            str(key),
            spec.dtype.name,
            None if spec.shape.rank is None else tuple(spec.shape.as_list()),
        )
        for key, spec in tensors.items()
    ]


def _card(saved: Any, path: Path, name: str, version: int) -> signature.CardSource | None:
    """The model's card: its ``model_card`` signature, else ``assets.extra/model_card.json``, else none."""
    if contract.CARD_SIGNATURE in saved.signatures:
        raw = saved.signatures[contract.CARD_SIGNATURE]()[contract.CARD_OUTPUT].numpy()
        where = f"the {contract.CARD_SIGNATURE!r} signature"
        return signature.card_from_json(name, version, raw, where, is_signature=True)
    card_file = path / contract.CARD_FILE
    if card_file.is_file():
        return signature.card_from_json(name, version, card_file.read_bytes(), contract.CARD_FILE)
    return None
