"""Evaluate an exported model through its serving signature, exactly as the gateway would call it.

Our exports carry a model card (class names, input size). A SavedModel from elsewhere may have only
``serving_default`` (the model contract allows it): then the card comes from ``--card``, from
``assets.extra/model_card.json`` if present, or else the input size from the signature and the class
names from the data's class folders, in order; the report says which.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from allxai.contract import names as contract
from allxai.contract.card import ModelCard, dump_card, normal_classes, parse_card
from allxai.trainer import ood_eval
from allxai.trainer.datasets import index_dataset
from allxai.trainer.loading import load_samples, summary

#: Images per call of the serving signature.
BATCH = 64

Floats = npt.NDArray[np.float64]


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


def _predict(
    serve: Any, input_name: str, images: npt.NDArray[np.uint8], output: str, domain_output: str | None
) -> tuple[Floats, Floats | None]:
    """The probabilities ``[N, C]`` and, where the export has a gate, the domain scores ``[N]``."""
    probs: list[Floats] = []
    scores: list[Floats] = []
    for i in range(0, len(images), BATCH):
        out = serve(**{input_name: tf.constant(images[i : i + BATCH])})
        probs.append(np.asarray(out[output].numpy(), np.float64))
        if domain_output is not None:
            scores.append(np.asarray(out[domain_output].numpy(), np.float64).reshape(-1))
    return np.concatenate(probs), (np.concatenate(scores) if domain_output is not None else None)


def _check_request(
    model_path: Path, ood: Sequence[Path], card_out: Path | None
) -> dict[str, tuple[Path, list[Path]]]:
    """The development sets' images by name; a ValueError for what cannot be done, before any work."""
    if not (model_path / "saved_model.pb").is_file():
        raise ValueError(f"{model_path} is not a SavedModel folder (<base>/<name>/<version>)")
    if card_out is not None:
        if not ood:
            raise ValueError("--card-out writes the figures of --ood folders; give at least one")
        if card_out.resolve().is_relative_to(model_path.resolve()):
            raise ValueError(f"--card-out {card_out} is inside the export; write the copy elsewhere")
    return ood_eval.name_sets(ood)


def _domain_output(card: ModelCard, outputs: Sequence[str], ood: bool) -> tuple[str | None, str]:
    """The gate's output in the serving signature, or None and why (refused with --ood)."""
    if card.domain is None:
        if ood:
            raise ValueError(
                "the model has no domain gate (its model card gives no 'domain'), so --ood has nothing to "
                "measure; evaluate an export of `allxai train` with calibration on"
            )
        return None, "no domain gate: the model card gives no 'domain'"
    if card.domain.output not in outputs:
        why = (
            f"the model card's domain score {card.domain.output!r} is not among "
            f"{contract.SERVING_SIGNATURE!r}'s outputs ({', '.join(sorted(outputs))})"
        )
        if ood:
            raise ValueError(f"{why}; --ood cannot measure the gate")
        return None, f"{why}: no domain figures"
    return card.domain.output, ""


def evaluate_export(
    model_path: Path,
    data: Path,
    layout: str,
    reports: Path,
    card_path: Path | None = None,
    ood: Sequence[Path] = (),
    card_out: Path | None = None,
) -> dict[str, Any]:
    """Run every image of ``data`` (and of each ``ood`` folder) through the export at ``model_path``;
    write ``evaluation.json``, ``evaluation.md`` and the confusion matrix; return the report."""
    from allxai.trainer.plots import plot_confusion  # noqa: PLC0415
    from allxai.trainer.scores import evaluate  # noqa: PLC0415

    sets = _check_request(model_path, ood, card_out)
    loaded = tf.saved_model.load(str(model_path))
    card, source = _read_card(loaded, model_path, card_path)
    serve, input_name, spec, output = _serving(loaded)
    notes = [source]
    domain_output, no_gate = _domain_output(card, list(serve.structured_outputs), bool(sets))
    index = index_dataset(data, layout)  # type: ignore[arg-type]
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
    images = load_samples(index.samples + index.test_samples, size, card.cell_input)
    if len(images.labels) == 0:
        reasons = "; ".join(f"{Path(p).name}: {why}" for p, why in images.skipped[:3])
        raise ValueError(f"no usable images in {data}: all {len(images.skipped)} were skipped ({reasons})")
    probs, scores = _predict(serve, input_name, images.images, output, domain_output)
    if scores is not None:
        scores = ood_eval.with_flags(scores, images.flagged)
    if probs.ndim != 2 or probs.shape[1] != len(names):
        raise ValueError(f"the model gives scores of shape {list(probs.shape[1:])} for {len(names)} classes")
    metrics = evaluate(images.labels, probs, names)
    report: dict[str, Any] = {
        "model": str(model_path),
        "notes": notes,
        "data": summary(index, images),
        "class_names": names,
        "metrics": metrics,
    }
    if no_gate:
        report["domain_note"] = no_gate
    if card.domain is not None and scores is not None:
        normal = normal_classes(names, card.normal_class_names)
        accepted = scores <= card.domain.threshold
        correct = probs.argmax(axis=1) == images.labels
        report["domain"] = {
            "output": card.domain.output,
            "threshold": card.domain.threshold,
            "normal_class_names": list(normal),
            "in_domain": ood_eval.calls(probs, scores, card.domain.threshold, names, normal),
            "accuracy_accepted": float(correct[accepted].mean()) if accepted.any() else None,
        }
        report["ood"] = {}
        for name, (where, files) in sets.items():
            folder = ood_eval.load_folder(name, files, size, card.cell_input)
            set_probs, set_scores = _predict(serve, input_name, folder.images, output, domain_output)
            assert set_scores is not None  # a gate is there: _domain_output found its output
            set_scores = ood_eval.with_flags(set_scores, folder.flagged)
            figures = ood_eval.set_figures(
                set_probs, set_scores, scores, card.domain.threshold, names, normal
            )
            figures["folder"] = str(where)
            figures["skipped"] = [list(s) for s in folder.skipped]
            figures["in_domain"] = {"data": str(data), "images": len(scores)}
            report["ood"][name] = figures
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "evaluation.json").write_text(json.dumps(report, indent=2, default=str))
    (reports / "evaluation.md").write_text(_markdown(report))
    plot_confusion(metrics["confusion_matrix"], names, reports / "confusion_matrix.png")
    if card_out is not None:
        copy = ood_eval.card_with_sets(card, report["ood"])
        card_out.parent.mkdir(parents=True, exist_ok=True)
        card_out.write_text(dump_card(copy, indent=2) + "\n")
    return report


def _markdown(report: dict[str, Any]) -> str:
    """The report in words: the metrics, the gate on the labelled images, the development sets."""
    m = report["metrics"]
    lines = [
        f"# Evaluation of {report['model']}",
        "",
        *(f"- {note}" for note in report["notes"]),
        f"- {m['n']} labelled images: accuracy {m['accuracy']:.1%}, macro F1 {m['macro_f1']:.3f}",
    ]
    if "domain_note" in report:
        lines.append(f"- {report['domain_note']}")
    domain = report.get("domain")
    if domain is not None:
        accepted = domain["accuracy_accepted"]
        lines.append(
            f"- domain gate ({domain['output']} > {domain['threshold']:.3f} is out of domain): "
            f"{domain['in_domain']['flagged']:.1%} of the labelled images flagged; accuracy on the rest "
            + ("-" if accepted is None else f"{accepted:.1%}")
        )
        if report.get("ood"):
            lines += [
                "",
                "## Development sets (--ood)",
                "",
                "Flagged: out of domain. AUROC: the domain score, labelled images against the set. "
                "FPR@95TPR: the set's share at or below the score that accepts 95% of the labelled images. "
                f"Blast >=0.9 unflagged: called a class other than {', '.join(domain['normal_class_names'])} "
                f"with a probability of at least {ood_eval.CONFIDENT} and not flagged.",
                "",
                ood_eval.table(domain["in_domain"], report["ood"], report["class_names"]),
            ]
    return "\n".join(lines) + "\n"
