"""Export a trained Keras model as a serving-ready SavedModel under the model contract."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from allxai.contract import names as contract
from allxai.contract.card import CardError, ModelCard, dump_card, parse_card
from allxai.trainer.calibrate import Calibration
from allxai.trainer.domain import DomainDetector, feature_taps

#: Perturbed images the compose signature builds and predicts at a time.
COMPOSE_CHUNK = 64


class ExportError(RuntimeError):
    """The export could not be written, or does not behave like the model it came from."""


class ServingModule(tf.Module):  # type: ignore[misc]
    """Wraps a Keras model with the contract's three signatures; pixels go in as uint8.

    With a domain ``detector``, ``serving_default`` also returns each image's out-of-domain score, from the
    same forward pass (the model's feature taps) and the pixels."""

    def __init__(
        self, model: Any, input_size: tuple[int, int], card_json: str, detector: DomainDetector | None = None
    ) -> None:
        super().__init__(name="allxai_serving")
        self.model = model
        # The model and, with a detector, the same layers giving their feature taps too (tracked, so the
        # SavedModel holds the weights once).
        self.joint = feature_taps(model)[0] if detector is not None else model
        height, width = input_size
        num_classes = int(model.output_shape[-1])

        @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8, name="images")])
        def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
            pixels = tf.cast(images, tf.float32)
            if detector is None:
                return {contract.OUTPUT: self.model(pixels, training=False)}
            probabilities, *taps = self.joint(pixels, training=False)
            return {contract.OUTPUT: probabilities, contract.DOMAIN_OUTPUT: detector.score(images, taps)}

        @tf.function(
            input_signature=[
                tf.TensorSpec([height, width, 3], tf.uint8, name="image"),
                tf.TensorSpec([height, width, 3], tf.uint8, name="fill"),
                tf.TensorSpec([height, width], tf.int32, name="segments"),
                tf.TensorSpec([None, None], tf.uint8, name="masks"),
            ]
        )
        def compose(
            image: tf.Tensor, fill: tf.Tensor, segments: tf.Tensor, masks: tf.Tensor
        ) -> dict[str, tf.Tensor]:
            # One gather over the segment map builds a chunk of perturbed images at once: pixel (y, x)
            # of sample n keeps the image where masks[n, segments[y, x]] is 1, else the fill. Chunks
            # keep memory flat, so one request can carry all of an explanation's masks while the
            # image, fill and segments cross the wire once.
            base = tf.cast(fill, tf.float32)
            delta = tf.cast(image, tf.float32) - base

            def run(chunk: tf.Tensor) -> tf.Tensor:
                # fill + keep * (image - fill): exact for 0/1 masks and uint8 pixels, and cheaper on
                # CPU than a select on uint8 followed by the cast the model needs anyway.
                keep = tf.cast(tf.gather(chunk, segments, axis=1), tf.float32)
                batch = base[None] + keep[..., None] * delta[None]
                return tf.cast(self.model(batch, training=False), tf.float32)

            n = tf.shape(masks)[0]
            whole = n // COMPOSE_CHUNK * COMPOSE_CHUNK
            head = tf.reshape(masks[:whole], [-1, COMPOSE_CHUNK, tf.shape(masks)[1]])
            head_probs = tf.map_fn(
                run,
                head,
                fn_output_signature=tf.TensorSpec([COMPOSE_CHUNK, num_classes], tf.float32),
                parallel_iterations=2,
            )
            # A convolution refuses an empty batch, so the remainder runs only when there is one.
            tail_probs = tf.cond(
                whole < n, lambda: run(masks[whole:]), lambda: tf.zeros([0, num_classes], tf.float32)
            )
            probs = tf.concat([tf.reshape(head_probs, [-1, num_classes]), tail_probs], axis=0)
            return {contract.OUTPUT: probs}

        @tf.function(input_signature=[])
        def card() -> dict[str, tf.Tensor]:
            return {contract.CARD_OUTPUT: tf.constant(card_json)}

        self.serve = serve
        self.compose = compose
        self.card = card


def export_target(base: Path, name: str, version: int) -> Path:
    """``base/name/version``, refused when it exists already or the version is not positive.

    A run calls this before it trains, so a taken version is refused in seconds, not hours later.
    """
    if version < 1:
        raise ExportError(f"version must be a positive integer, got {version}")
    target = base / name / str(version)
    if target.exists():
        raise ExportError(
            f"{target} exists already; choose a new version number (--version) or another --out"
        )
    return target


def export_model(
    model: Any,
    base: Path,
    name: str,
    version: int,
    card: ModelCard | Mapping[str, Any],
    check_images: npt.NDArray[np.uint8],
    atol: float = 1e-4,
    calibration: Calibration | None = None,
) -> Path:
    """Write ``base/name/version`` atomically and check that it predicts as ``model`` does.

    The SavedModel is written to a hidden temporary folder first (TensorFlow Serving ignores
    folders whose names are not numbers) and renamed into place only after the check passes,
    so a model server never sees a half-written version. The card is checked and written
    under the contract's schema (:mod:`allxai.contract.card`), as the gateway will read it.
    With a ``calibration``, the export carries its domain gate and conformal levels (graph and card).
    """
    target = export_target(base, name, version)
    card, input_size = _checked_card(card, int(model.output_shape[-1]))
    detector = None
    if calibration is not None:
        card = replace(card, domain=calibration.gate, conformal=calibration.sets)
        detector = calibration.detector
    module = ServingModule(model, input_size, dump_card(card), detector)
    tmp = base / name / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        tf.saved_model.save(
            module,
            str(tmp),
            signatures={
                contract.SERVING_SIGNATURE: module.serve,
                contract.COMPOSE_SIGNATURE: module.compose,
                contract.CARD_SIGNATURE: module.card,
            },
        )
        (tmp / contract.CARD_FILE).parent.mkdir(parents=True, exist_ok=True)
        (tmp / contract.CARD_FILE).write_text(dump_card(card, indent=2))
        write_warmup_requests(tmp / contract.WARMUP_FILE, name, input_size)
        _check_export(model, tmp, check_images, atol, detector)
        try:  # last, before the version appears: the gateway refuses a card without class names
            card.classes_and_size()
        except CardError as exc:
            raise ExportError(str(exc)) from exc
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def write_warmup_requests(
    path: Path, model_name: str, input_size: tuple[int, int], batch_sizes: tuple[int, ...] = (1, 8)
) -> None:
    """TensorFlow Serving warm-up records: PredictionLogs it replays before reporting AVAILABLE,
    so the first real request does not pay for graph initialisation: ``serving_default`` at each
    of ``batch_sizes``, and ``compose`` (the first explanation's signature) with 8 masks over a
    two-superpixel segment map."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2  # noqa: PLC0415

    height, width = input_size
    segments = np.zeros((height, width), np.int32)
    segments[:, width // 2 :] = 1
    requests: list[tuple[str, dict[str, np.ndarray[Any, Any]]]] = [
        (contract.SERVING_SIGNATURE, {contract.SERVING_INPUT: np.zeros((batch, height, width, 3), np.uint8)})
        for batch in batch_sizes
    ]
    image = np.zeros((height, width, 3), np.uint8)
    masks = np.random.default_rng(0).integers(0, 2, (8, 2)).astype(np.uint8)
    requests.append(
        (
            contract.COMPOSE_SIGNATURE,
            dict(zip(contract.COMPOSE_INPUTS, (image, image, segments, masks), strict=True)),
        )
    )
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, inputs in requests:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
            )
            for key, value in inputs.items():
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def export_checkpoint(config: Any, weights: Path, card: Mapping[str, Any] | None) -> Path:
    """Rebuild ``config``'s architecture, load a checkpoint's weights, export it under the contract."""
    from allxai.trainer.models import build_model  # noqa: PLC0415

    if not weights.is_file():
        raise ExportError(f"weights file {weights} does not exist")
    try:
        given = parse_card(card or {})
    except CardError as exc:
        raise ExportError(str(exc)) from exc
    if given.class_names is None:
        raise ExportError("the model card with class_names is needed to export a checkpoint (use --card)")
    size = (config.input_size, config.input_size)
    model = build_model(config.arch, len(given.class_names), size, weights=None)
    model.load_weights(str(weights))
    given = replace(given, name=config.name, version=config.version, input_size=size)
    rng = np.random.default_rng(0)
    check = rng.integers(0, 256, (4, *size, 3), dtype=np.uint8)
    return export_model(model, config.out, config.name, config.version, given, check)


def _checked_card(card: ModelCard | Mapping[str, Any], classes: int) -> tuple[ModelCard, tuple[int, int]]:
    """The card as the gateway will read it (a card built in code is checked in the JSON it gives)
    and the input size the signatures need; when it names the classes, one per score."""
    try:
        checked = parse_card(dump_card(card) if isinstance(card, ModelCard) else card)
    except CardError as exc:
        raise ExportError(str(exc)) from exc
    if checked.input_size is None:
        raise ExportError("the model card gives no input_size [height, width]; the export needs it")
    if checked.class_names is not None and len(checked.class_names) != classes:
        raise ExportError(
            f"the model card names {len(checked.class_names)} classes, but the model gives scores "
            f"for {classes}"
        )
    return checked, checked.input_size


def _check_export(
    model: Any, path: Path, images: npt.NDArray[np.uint8], atol: float, detector: DomainDetector | None
) -> None:
    """Reload the export, require finite probabilities (and domain scores), and compare them with the
    Keras model's (and the detector's)."""
    loaded = tf.saved_model.load(str(path))
    outputs = loaded.signatures[contract.SERVING_SIGNATURE](images=tf.constant(images))
    served = outputs[contract.OUTPUT].numpy()
    if detector is not None and len(images):
        scores = outputs[contract.DOMAIN_OUTPUT].numpy()
        joint = feature_taps(model)[0]
        expected_scores = np.asarray(detector.score(images, list(joint(images.astype(np.float32))[1:])))
        if not np.all(np.isfinite(scores)) or not np.allclose(scores, expected_scores, rtol=1e-3, atol=1e-3):
            raise ExportError("the export's domain scores differ from the detector's on the check images")
    expected = np.asarray(model(images.astype(np.float32), training=False))
    # NaN compares False with everything, so a diverged model would pass the tolerance test.
    if not np.all(np.isfinite(served)):
        raise ExportError(
            "the export gives non-finite probabilities (NaN or infinity) on the check images; "
            "the model's weights have probably diverged (try a lower learning rate)"
        )
    diff = float(np.max(np.abs(served - expected))) if len(images) else 0.0
    if not diff <= atol:
        raise ExportError(f"the export predicts differently from the Keras model (max |diff| {diff:.2e})")
