"""Check a training run beyond its accuracy: what its explanations rest on, and what it calls foreign cells.

Held-out accuracy says little about whether a model looks at the white cell (the Aria images carry a
scale bar in a corner and a class-dependent stain) or what it does with normal cells from another
laboratory. The check explains held-out test images with LIME, as the gateway does (the prepared view,
the white-cell mask of the preprocessing), and reports where the positive weight lies; and it classifies
the BCCD and wbc-seg white cells (all normal) through the export with its domain gate, as the gateway
would answer them. Writes ``runcheck.json``, ``runcheck.md`` and ``runcheck_overlays.png`` into the run's
reports folder; ``allxai compare`` shows the main figures beside the accuracy.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf
from tqdm import tqdm  # type: ignore[import-untyped]

from allxai.contract.card import ModelCard, normal_classes
from allxai.contract.cellview import Prepared, prepare, prepare_array
from allxai.contract.preprocessing import ImageError, resize_image
from allxai.explainer.engine import ExplainSettings, explain
from allxai.explainer.palette import AGAINST_LABEL_NAME, FOR_LABEL_NAME, sign_words
from allxai.explainer.perturb import Composition
from allxai.explainer.render import overlay
from allxai.explainer.result import ExplanationResult
from allxai.explainer.segmentation import SegmentationError
from allxai.trainer.evaluate import _domain_output, _predict, _read_card, _serving
from allxai.trainer.foreign import ForeignSet, bccd_cells, set_figures, wbcseg_cells

#: Explanation overlays drawn into ``runcheck_overlays.png``.
OVERLAYS = 8
#: The explanation quality figures summarised over the explained images.
QUALITY = ("cell_share", "background_share", "corner_share", "r2")

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class _Export:
    """A loaded export with what calling it needs."""

    path: Path
    card: ModelCard
    class_names: tuple[str, ...]
    size: tuple[int, int]
    serve: Any
    input_name: str
    output: str
    domain_output: str | None

    def predict(self, images: npt.NDArray[np.uint8]) -> tuple[Floats, Floats | None]:
        """Probabilities and, with a gate, domain scores, through ``serving_default``."""
        return _predict(self.serve, self.input_name, images, self.output, self.domain_output)


def _load_export(path: Path) -> tuple[_Export, str]:
    """The export at ``path`` and a note on its domain gate (empty when it has one)."""
    if not (path / "saved_model.pb").is_file():
        raise ValueError(f"the run's export {path} is not a SavedModel folder (was it exported?)")
    loaded = tf.saved_model.load(str(path))
    card, _ = _read_card(loaded, path, None)
    names, size = card.classes_and_size(str(path))
    serve, input_name, _, output = _serving(loaded)
    domain_output, note = _domain_output(card, list(serve.structured_outputs), ood=False)
    return _Export(path, card, names, size, serve, input_name, output, domain_output), note


class _Predictor:
    """The explainer's Predictor over the export: each perturbed view resized to the model's input, by
    the same resize that made the input from the view."""

    def __init__(self, export: _Export) -> None:
        self._export = export

    @property
    def has_composition(self) -> bool:
        return False

    async def predict(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        size = self._export.size
        if images.shape[1:3] != size:
            images = np.stack([resize_image(image, size) for image in images])
        probs, _ = await asyncio.to_thread(self._export.predict, images)
        return probs.astype(np.float32)

    async def predict_composed(self, composition: Composition) -> npt.NDArray[np.float32]:
        raise NotImplementedError("the run check builds the perturbed images itself")


def choose_images(paths: list[str], class_names: tuple[str, ...], count: int, seed: int) -> list[Path]:
    """A deterministic stratified choice of ``count`` test images (all when fewer): taken in turn from each
    class (the parent folder's name; other folders form groups of their own), each class in a seeded
    random order, so that the choice spreads over the class's smears rather than one run of file numbers."""
    groups: dict[str, list[str]] = defaultdict(list)
    for path in sorted(set(paths)):
        groups[Path(path).parent.name].append(path)
    rng = np.random.default_rng(seed)
    # The model's classes in its order, then any other folders by name.
    order = [c for c in class_names if c in groups] + sorted(set(groups) - set(class_names))
    queues = [[groups[g][i] for i in rng.permutation(len(groups[g]))] for g in order]
    chosen: list[Path] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(Path(queue.pop(0)))
    return chosen


def _spread(given: list[float | None]) -> dict[str, float | None]:
    """Median and quartiles of the figures there are; None when there are none."""
    values = [v for v in given if v is not None]
    if not values:
        return {"median": None, "q1": None, "q3": None}
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3)}


async def _explain_all(
    export: _Export, chosen: list[Path], settings: ExplainSettings
) -> tuple[list[dict[str, Any]], list[tuple[str, str]], list[tuple[Prepared, ExplanationResult, str]]]:
    """One LIME explanation per chosen image, one after another (each keeps the model busy already)."""
    rows: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    drawn: list[tuple[Prepared, ExplanationResult, str]] = []
    predictor = _Predictor(export)
    for path in tqdm(chosen, desc="explanations", unit="image"):
        try:
            prepared = prepare(path.read_bytes(), export.size, export.card.cell_input)
            result = await explain(
                prepared.view, predictor, settings, cells=prepared.cell_mask, blank=prepared.blank
            )
        except (ImageError, SegmentationError, OSError) as exc:
            skipped.append((str(path), str(exc)))
            continue
        quality = result.quality
        assert quality is not None  # the engine always measures it
        predicted = export.class_names[result.label_index]
        rows.append(
            {
                "path": str(path),
                "class": path.parent.name,
                "predicted": predicted,
                "probability": float(result.probabilities[result.label_index]),
                "notes": list(prepared.notes),
                # R² and stability are None where the explanation could not have them.
                **{name: getattr(quality, name) for name in (*QUALITY, "stability")},
            }
        )
        if len(drawn) < OVERLAYS:
            shown = dict(export.card.display_names or {})  # the names a reader knows, "Pre-B ALL" for "Pre"
            true, called = (shown.get(n, n) for n in (path.parent.name, predicted))
            title = f"{true} \u2192 {called}\n{quality.cell_share:.0%} of the weight on the cell"
            drawn.append((prepared, result, title))
    return rows, skipped, drawn


def _classify(export: _Export, cells: ForeignSet, threshold: float | None) -> dict[str, Any]:
    """Every cell of a set through preprocessing, the export and its gate; the set's figures."""
    inputs, noted = [], []
    for cell in tqdm(cells.cells, desc=cells.name, unit="cell"):
        prepared = prepare_array(cell.image, export.size, export.card.cell_input)
        inputs.append(prepared.input)
        noted.append(bool(prepared.notes))
    probs, scores = export.predict(np.stack(inputs))
    flagged = np.asarray(noted, bool)
    if scores is not None and threshold is not None:
        # ~(score <= threshold): a NaN score counts as outside, as the gateway counts it.
        flagged |= ~(scores <= threshold)
    normal = normal_classes(export.class_names, export.card.normal_class_names)
    figures = set_figures(probs, flagged, [c.cell_type for c in cells.cells], export.class_names, normal)
    return {**figures, "skipped": [list(s) for s in cells.skipped]}


def check_run(
    reports_dir: Path,
    *,
    cells: int = 40,
    bccd: Path | None = None,
    wbcseg: Path | None = None,
    seed: int = 0,
    num_samples: int = 1000,
) -> dict[str, Any]:
    """Check the run whose reports are in ``reports_dir`` (see the module's docstring); write
    ``runcheck.json``, ``runcheck.md`` and ``runcheck_overlays.png`` there and return the check.

    ``bccd`` and ``wbcseg`` are the development sets' folders (None: left out). Raises FileNotFoundError
    or ValueError for a folder, report or export that cannot be used, before the explanations start."""
    report = json.loads((reports_dir / "report.json").read_text())
    split = json.loads((reports_dir / "split.json").read_text())
    config = report["config"]
    # The development sets are read first: a wrong folder should fail before minutes of explanations.
    sets: dict[str, tuple[Path, ForeignSet]] = {}
    if bccd is not None:
        sets["bccd"] = bccd, bccd_cells(bccd)
    if wbcseg is not None:
        sets["wbc-seg"] = wbcseg, wbcseg_cells(wbcseg)
    export, gate_note = _load_export(Path(config["out"]) / str(config["name"]) / str(config["version"]))
    chosen = choose_images(list(split.get("test", [])), export.class_names, cells, seed)
    if not chosen:
        raise ValueError(f"{reports_dir / 'split.json'} lists no test images to explain")
    settings = ExplainSettings(num_samples=num_samples, seed=seed)
    rows, skipped, drawn = asyncio.run(_explain_all(export, chosen, settings))
    gate = export.card.domain
    threshold = gate.threshold if gate is not None and export.domain_output is not None else None
    test = report.get("test") or {}
    check: dict[str, Any] = {
        "run": str(reports_dir),
        "model": str(export.path),
        "arch": config.get("arch"),
        "input": config.get("input", "field"),
        "class_names": list(export.class_names),
        "normal_class_names": list(normal_classes(export.class_names, export.card.normal_class_names)),
        "test_accuracy": test.get("accuracy"),
        "domain": {"output": export.domain_output, "threshold": threshold} if threshold is not None else None,
        "domain_note": gate_note or None,
        "explanations": {
            "n": len(rows),
            "asked": cells,
            "num_samples": num_samples,
            "seed": seed,
            "segmentation": settings.segmentation.method,
            "per_class": {c: sum(r["class"] == c for r in rows) for c in sorted({r["class"] for r in rows})},
            **{name: _spread([r[name] for r in rows]) for name in QUALITY},
            "skipped": [list(s) for s in skipped],
            "images": rows,
        },
        "foreign": {
            name: {"folder": str(folder), **_classify(export, found, threshold)}
            for name, (folder, found) in sets.items()
        },
    }
    if drawn:
        _plot_overlays(drawn, reports_dir / "runcheck_overlays.png")
        check["figures"] = ["runcheck_overlays.png"]
    (reports_dir / "runcheck.json").write_text(json.dumps(check, indent=2) + "\n")
    (reports_dir / "runcheck.md").write_text(markdown(check))
    return check


def _plot_overlays(drawn: list[tuple[Prepared, ExplanationResult, str]], path: Path) -> None:
    """The explanations' overlays (top superpixels on the view) in a grid of four columns."""
    # A Figure with its own Agg canvas, not pyplot: no global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    columns = min(4, len(drawn))
    lines = -(-len(drawn) // columns)
    fig = Figure(figsize=(3 * columns, 3.5 * lines))
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(lines, columns)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, (prepared, result, title) in zip(axes, drawn, strict=False):
        ax.imshow(overlay(prepared.view, result))
        ax.set_title(title, fontsize=9)
    towards, against = sign_words("the call")
    words = f"{FOR_LABEL_NAME}: {towards}; {AGAINST_LABEL_NAME}: {against}"
    fig.suptitle(f"LIME: top superpixels ({words})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _pct(value: Any) -> str:
    return "\u2014" if value is None else f"{100 * float(value):.1f}%"


def markdown(check: dict[str, Any]) -> str:
    """The check in words: accuracy, where the explanations' weight lies, the foreign cells' calls."""
    ex = check["explanations"]
    lines = [
        f"# Run check of {check['model']} ({check['arch']}, {check['input']} input)",
        "",
        f"- held-out test accuracy (report.json): {_pct(check['test_accuracy'])}",
        f"- {ex['n']} test images explained (LIME, {ex['segmentation']}, {ex['num_samples']} samples, "
        f"seed {ex['seed']}); {len(ex['skipped'])} skipped",
    ]
    for name in QUALITY:
        s = ex[name]
        if s["median"] is not None:
            lines.append(f"- {name}: median {s['median']:.2f} (quartiles {s['q1']:.2f}-{s['q3']:.2f})")
    gate = check["domain"]
    lines.append(
        f"- domain gate: score > {gate['threshold']:.3f} or a preprocessing note flags a cell"
        if gate
        else f"- no domain gate ({check['domain_note']}): only preprocessing notes flag a cell"
    )
    normal = " or ".join(check["normal_class_names"]) or "normal"
    if check["foreign"]:
        lines += [
            "",
            "## Normal white cells from other laboratories",
            "",
            f"Called {normal}: a normal class; flagged: outside the domain; blast: any other class.",
            "",
            f"| Set | n | {normal} | Flagged | {normal} or flagged | Blast, no flag | {normal}, no flag |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, figures in check["foreign"].items():
            parts = [(name, figures), *((f"{name}: {k}", f) for k, f in figures.get("by_type", {}).items())]
            for title, f in parts:
                keys = ("benign", "flagged", "benign_or_flagged", "blast_unflagged", "benign_unflagged")
                lines.append(f"| {title} | {f['n']} | " + " | ".join(_pct(f.get(k)) for k in keys) + " |")
    if check.get("figures"):
        lines += ["", "![Explanation overlays](runcheck_overlays.png)"]
    return "\n".join(lines) + "\n"
