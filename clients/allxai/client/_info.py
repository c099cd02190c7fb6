"""``allxai info``: the served model for a person (a short summary), or in full as JSON (``--json``)."""

from __future__ import annotations

import math
from typing import Any

from allxai.client._results import ModelDescription
from allxai.client.words import percent


def info_document(described: ModelDescription) -> dict[str, Any]:
    """Everything GetModelInfo says, JSON-ready (the model card in full)."""
    return {
        "name": described.name,
        "version": described.version,
        "classes": described.class_names,
        "normal_classes": described.normal_class_names,
        "input_size": described.input_size,
        "available_versions": described.available_versions,
        "card": described.card,
    }


def _number(value: Any) -> float | None:
    """A finite number from a card field, else None (cards are JSON written by another program)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _table(parent: dict[str, Any], key: str) -> dict[str, Any]:
    """``parent[key]`` when it is a JSON object, else an empty one."""
    value = parent.get(key)
    return value if isinstance(value, dict) else {}


def _metric(card: dict[str, Any], name: str) -> str:
    """The held-out test figure of ``name`` (falling back to the cross-validation mean), in words."""
    metrics = _table(card, "metrics")
    if (value := _number(_table(metrics, "test").get(name))) is not None:
        return f"{percent(value)} on the held-out test images"
    figure = _table(_table(metrics, "cross_validation"), name)
    if (mean := _number(figure.get("mean"))) is not None:
        return f"{percent(mean)} in cross-validation (mean)"
    return "not in the model card"


def info_text(described: ModelDescription) -> str:
    """A short summary of the served model: what it tells apart, how well, and what guards its answers."""
    card = described.card if isinstance(described.card, dict) else {}
    height, width = described.input_size  # (height, width), as the model contract gives it
    versions = ", ".join(str(v) for v in described.available_versions) or str(described.version)
    lines = [
        f"model {described.name} version {described.version} (versions served: {versions})",
        f"architecture {card.get('architecture', 'unknown')}, input {width}x{height} pixels",
        "classes:",
    ]
    for label in described.class_names:
        shown = described.display_name(label)
        normal = " (normal)" if label in described.normal_class_names else ""
        lines.append(f"  {label}: {shown}{normal}" if shown != label else f"  {label}{normal}")
    lines.append(f"accuracy: {_metric(card, 'accuracy')}")
    threshold = _number(_table(card, "domain").get("threshold"))
    if threshold is None:
        lines.append("domain check: none (answers on unlike images are not flagged)")
    else:
        lines.append(f"domain check: yes (threshold {threshold:.4g}; images above it are flagged)")
    alphas = described.alphas
    if alphas:
        levels = ", ".join(percent(1 - a) for a in alphas)
        lines.append(f"prediction sets: calibrated for coverage {levels}")
    else:
        lines.append("prediction sets: none (no conformal calibration)")
    lines.append("the whole model card: allxai info --json")
    return "\n".join(lines) + "\n"
