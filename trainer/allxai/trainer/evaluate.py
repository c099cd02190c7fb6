"""Evaluate an exported model through its serving signature, exactly as the gateway would call it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from allxai.trainer import contract
from allxai.trainer.datasets import index_dataset
from allxai.trainer.loading import load_samples, summary


def evaluate_export(model_path: Path, data: Path, layout: str, reports: Path) -> dict[str, Any]:
    """Run every image of ``data`` through the export at ``model_path``; write a report; return metrics."""
    from allxai.trainer.metrics import evaluate  # noqa: PLC0415
    from allxai.trainer.plots import plot_confusion  # noqa: PLC0415

    if not (model_path / "saved_model.pb").is_file():
        raise ValueError(f"{model_path} is not a SavedModel folder (<base>/<name>/<version>)")
    loaded = tf.saved_model.load(str(model_path))
    card = json.loads(loaded.signatures[contract.CARD_SIGNATURE]()[contract.CARD_OUTPUT].numpy().decode())
    names = list(card["class_names"])
    index = index_dataset(data, layout)  # type: ignore[arg-type]
    if index.class_names != names:
        raise ValueError(f"the data's classes {index.class_names} differ from the model's {names}")
    samples = index.samples + index.test_samples
    images = load_samples(samples, (int(card["input_size"][0]), int(card["input_size"][1])))
    serve = loaded.signatures[contract.SERVING_SIGNATURE]
    probs = np.concatenate(
        [
            serve(**{contract.SERVING_INPUT: tf.constant(images.images[i : i + 64])})[contract.OUTPUT].numpy()
            for i in range(0, len(images.labels), 64)
        ]
    )
    metrics = evaluate(images.labels, probs, names)
    reports.mkdir(parents=True, exist_ok=True)
    report = {"model": str(model_path), "data": summary(index, images), "metrics": metrics}
    (reports / "evaluation.json").write_text(json.dumps(report, indent=2, default=str))
    plot_confusion(metrics["confusion_matrix"], names, reports / "confusion_matrix.png")
    return metrics
