"""Evaluate an exported model through its serving signature, exactly as the gateway would call it.

Our exports carry a model card (class names, input size). A SavedModel from elsewhere may have only
``serving_default`` (the model contract allows it): then the card comes from ``--card``, from
``assets.extra/model_card.json`` if present, or else the input size from the signature and the class
names from the data's class folders, in order; the report says which.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from allxai.contract import names as contract
from allxai.contract.card import ModelCard, parse_card
from allxai.trainer.datasets import index_dataset
from allxai.trainer.loading import load_samples, summary

#: Images per call of the serving signature.
BATCH = 64


def _read_card(loaded: Any, model_path: Path, card_path: Path | None) -> tuple[ModelCard, str]:
    """The model card under the contract's schema and where it came from (a
    :class:`~allxai.contract.card.CardError`, a ValueError, when it breaks it); an empty card when the
    model has none."""
    if card_path is not None:
        raw: str | bytes = card_path.read_bytes()
        where = str(card_path)
    elif contract.CARD_SIGNATURE in loaded.signatures:
        raw = loaded.signatures[contract.CARD_SIGNATURE]()[contract.CARD_OUTPUT].numpy()
        where = f"the {contract.CARD_SIGNATURE!r} signature"
    elif (model_path / contract.CARD_FILE).is_file():
        raw = (model_path / contract.CARD_FILE).read_bytes()
        where = contract.CARD_FILE
    else:
        return ModelCard(), "no model card"
    return parse_card(raw, where), f"card from {where}"


def _serving(loaded: Any) -> tuple[Any, str, tf.TensorSpec, str]:
    """The serving function, its image input's name and spec, and its output's name."""
    if contract.SERVING_SIGNATURE not in loaded.signatures:
        raise ValueError(f"the model has no {contract.SERVING_SIGNATURE!r} signature")
    serve = loaded.signatures[contract.SERVING_SIGNATURE]
    inputs: dict[str, tf.TensorSpec] = serve.structured_input_signature[1]
    outputs: dict[str, Any] = serve.structured_outputs
    if len(inputs) != 1 or (len(outputs) != 1 and contract.OUTPUT not in outputs):
        raise ValueError(
            f"{contract.SERVING_SIGNATURE!r} must take one image tensor and give one probability "
            f"tensor; it takes {sorted(inputs)} and gives {sorted(outputs)}"
        )
    ((name, spec),) = inputs.items()
    if spec.dtype != tf.uint8 or spec.shape.rank != 4:
        raise ValueError(
            f"{contract.SERVING_SIGNATURE!r} must take uint8 images [N, H, W, 3] (the model contract); "
            f"its input {name!r} is {spec.dtype.name} {spec.shape}"
        )
    output = contract.OUTPUT if contract.OUTPUT in outputs else next(iter(outputs))
    return serve, name, spec, output


def evaluate_export(
    model_path: Path, data: Path, layout: str, reports: Path, card_path: Path | None = None
) -> dict[str, Any]:
    """Run every image of ``data`` through the export at ``model_path``; write a report; return metrics."""
    from allxai.trainer.plots import plot_confusion  # noqa: PLC0415
    from allxai.trainer.scores import evaluate  # noqa: PLC0415

    if not (model_path / "saved_model.pb").is_file():
        raise ValueError(f"{model_path} is not a SavedModel folder (<base>/<name>/<version>)")
    loaded = tf.saved_model.load(str(model_path))
    card, source = _read_card(loaded, model_path, card_path)
    serve, input_name, spec, output = _serving(loaded)
    index = index_dataset(data, layout)  # type: ignore[arg-type]
    notes = [source]
    if card.class_names is not None:
        names = list(card.class_names)
        if index.class_names != names:
            raise ValueError(f"the data's classes {index.class_names} differ from the model's {names}")
    else:
        names = index.class_names
        notes.append(f"class names from the data's class folders, in order: {', '.join(names)}")
    if card.input_size is not None:
        size = card.input_size
    elif spec.shape[1] is not None and spec.shape[2] is not None:
        size = (int(spec.shape[1]), int(spec.shape[2]))
        notes.append(f"input size {size[0]}x{size[1]} from the serving signature")
    else:
        raise ValueError("the model has no card and its signature leaves the input size open; pass --card")
    images = load_samples(index.samples + index.test_samples, size)
    if len(images.labels) == 0:
        reasons = "; ".join(f"{Path(p).name}: {why}" for p, why in images.skipped[:3])
        raise ValueError(f"no usable images in {data}: all {len(images.skipped)} were skipped ({reasons})")
    probs = np.concatenate(
        [
            serve(**{input_name: tf.constant(images.images[i : i + BATCH])})[output].numpy()
            for i in range(0, len(images.labels), BATCH)
        ]
    )
    if probs.ndim != 2 or probs.shape[1] != len(names):
        raise ValueError(f"the model gives scores of shape {list(probs.shape[1:])} for {len(names)} classes")
    metrics = evaluate(images.labels, probs, names)
    reports.mkdir(parents=True, exist_ok=True)
    report = {"model": str(model_path), "notes": notes, "data": summary(index, images), "metrics": metrics}
    (reports / "evaluation.json").write_text(json.dumps(report, indent=2, default=str))
    plot_confusion(metrics["confusion_matrix"], names, reports / "confusion_matrix.png")
    return metrics
