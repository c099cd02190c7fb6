"""Measure the white-cell localiser and the scale estimator on the shared real data; print a report.

    .venv/bin/python scripts/localiser_eval.py [--data ../shared/data] [--aria-per-class N] [--json out.json]

1. wbc-seg: mean IoU of the cell mask against the expert mask (nucleus + cytoplasm), per dataset.
2. Aria: Segmented's white-cell blobs (solid connected non-black components of at least ``--blob-px`` pixels)
   found on the matching Original field, and the localiser's finds that Segmented confirms.
3. BCCD: recall of the annotated WBC boxes, and false finds per field.
4. Scale: µm/px distribution and time per image for each set.
5. Non-cell images: cells found on uniform, noise, gradient and natural photos.
"""

from __future__ import annotations

import argparse
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage as ndi
from skimage import data as skdata
from skimage.measure import regionprops

from allxai.contract.cells import CellMap, locate_cells
from allxai.contract.scale import estimate_scale

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
Array = npt.NDArray[Any]


def load(path: Path) -> npt.NDArray[np.uint8]:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class Timed:
    """Runs the localiser and the scale estimator, keeping times (ms) and scales (µm/px) per set."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self.scales: dict[str, list[float]] = {}
        self.sources: dict[str, list[str]] = {}

    def __call__(self, name: str, image: npt.NDArray[np.uint8]) -> CellMap:
        start = time.perf_counter()
        cells = locate_cells(image)
        scale = estimate_scale(image, cells)
        self.times.setdefault(name, []).append((time.perf_counter() - start) * 1000)
        if scale is not None:
            self.scales.setdefault(name, []).append(scale.um_per_px)
            self.sources.setdefault(name, []).append(scale.source)
        return cells


def wbc_seg(data: Path, run: Timed) -> dict[str, Any]:
    out: dict[str, Any] = {}
    every: list[float] = []
    for dataset in ("dataset1", "dataset2"):
        ious: dict[str, float] = {}
        for path in sorted((data / "wbc-seg" / dataset).glob("*.bmp")):
            truth = np.asarray(Image.open(path.with_suffix(".png")))
            truth = (truth[..., 0] if truth.ndim == 3 else truth) > 64
            mask = run(f"wbc-seg {dataset}", load(path)).mask
            union = (mask | truth).sum()
            ious[path.stem] = float((mask & truth).sum() / union) if union else 1.0
        values = np.array(list(ious.values()))
        worst = sorted(ious, key=ious.__getitem__)[:8]
        out[dataset] = {
            "n": len(values),
            "mean_iou": float(values.mean()),
            "median_iou": float(np.median(values)),
            "share_below_0.7": float((values < 0.7).mean()),
            "worst": {k: round(ious[k], 3) for k in worst},
        }
        every.extend(values)
    out["overall_mean_iou"] = float(np.mean(every))
    return out


def _solid(blob: npt.NDArray[np.bool_]) -> bool:
    """Whether a Segmented blob is a white cell rather than speckle: Segmented keeps white cells as filled
    discs, while its speckle along red-cell edges forms rings and arcs (hollow, or far from convex)."""
    filled = ndi.binary_fill_holes(blob)
    if blob.sum() < SOLID * filled.sum():
        return False
    return bool(regionprops(filled.astype(np.uint8))[0].solidity >= SOLID)


#: The least share of its hole-filled area and of its convex hull a white-cell blob covers.
SOLID = 0.8


def aria(data: Path, run: Timed, per_class: int, blob_px: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for folder in sorted((data / "aria-all" / "Original").iterdir()):
        paths = sorted(folder.glob("*.jpg"))
        if per_class and len(paths) > per_class:
            # A deterministic, evenly spread sample across the file numbers (so across smears).
            paths = [paths[i] for i in np.linspace(0, len(paths) - 1, per_class).round().astype(int)]
        blobs = found = finds = confirmed = fields_with_blobs = 0
        missed: list[str] = []
        for path in paths:
            original = load(path)
            cells = run("aria Original", original)
            segmented = load(data / "aria-all" / "Segmented" / folder.name / path.name)
            nonblack = segmented.max(axis=2) >= 40
            labels, count = ndi.label(nonblack)
            areas = np.bincount(labels.ravel(), minlength=count + 1)
            big = [i for i in range(1, count + 1) if areas[i] >= blob_px and _solid(labels == i)]
            finds += len(cells.cells)
            confirmed += sum(1 for i in range(1, len(cells.cells) + 1) if np.any(nonblack[cells.labels == i]))
            if not big:
                continue
            fields_with_blobs += 1
            for i in big:
                blob = labels == i
                blobs += 1
                covered = (blob & cells.mask).sum() / blob.sum()
                r, c = (round(v) for v in ndi.center_of_mass(blob))
                if covered >= 0.5 or cells.mask[r, c]:
                    found += 1
                else:
                    missed.append(path.name)
        out[folder.name] = {
            "fields": len(paths),
            "fields_with_blobs": fields_with_blobs,
            "blobs": blobs,
            "blobs_found": found,
            "recall": found / blobs if blobs else None,
            "finds": finds,
            "finds_confirmed": confirmed,
            "confirmed_share": confirmed / finds if finds else None,
            "missed_examples": sorted(set(missed))[:8],
        }
    return out


def bccd(data: Path, run: Timed) -> dict[str, Any]:
    root = data / "bccd" / "BCCD"
    boxes = found = fields = false_finds = 0
    missed: list[str] = []
    for xml in sorted((root / "Annotations").glob("*.xml")):
        tree = ET.parse(xml)
        name = tree.findtext("filename") or xml.stem
        path = root / "JPEGImages" / (name if name.endswith(".jpg") else name + ".jpg")
        if not path.exists():
            continue
        wbcs = []
        for obj in tree.findall("object"):
            if obj.findtext("name") == "WBC":
                box = obj.find("bndbox")
                assert box is not None
                wbcs.append([int(float(box.findtext(k) or 0)) for k in ("ymin", "xmin", "ymax", "xmax")])
        cells = run("bccd", load(path))
        fields += 1
        used = set()
        for top, left, bottom, right in wbcs:
            boxes += 1
            hit = False
            for index, cell in enumerate(cells.cells):
                r, c = cell.centre
                if (top <= r <= bottom and left <= c <= right) or box_iou(
                    cell.box, (top, left, bottom, right)
                ) >= 0.3:
                    hit = True
                    used.add(index)
            found += hit
            if not hit:
                missed.append(path.name)
        false_finds += len(cells.cells) - len(used)
    return {
        "fields": fields,
        "wbc_boxes": boxes,
        "found": found,
        "recall": found / boxes if boxes else None,
        "false_finds_per_field": false_finds / fields if fields else None,
        "missed_examples": missed[:10],
    }


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    h = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    w = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = h * w
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def cnmc(data: Path, run: Timed) -> dict[str, Any]:
    results = {}
    for path in sorted((data / "cnmc-sample").rglob("*.bmp")):
        cells = run("cnmc-sample", load(path))
        results[path.name] = {"cells": len(cells.cells), "black_background": cells.black_background}
    return results


def non_cell(run: Timed) -> dict[str, int]:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 640, dtype=np.float32)
    images: dict[str, Callable[[], Array]] = {
        "white": lambda: np.full((480, 640, 3), 255, np.uint8),
        "black": lambda: np.zeros((480, 640, 3), np.uint8),
        "violet": lambda: np.full((480, 640, 3), (120, 60, 200), np.uint8),
        "noise": lambda: rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
        "gradient": lambda: np.stack([np.tile(ramp, (480, 1))] * 3, axis=2).astype(np.uint8),
        "colour gradient": lambda: np.stack(
            [np.tile(ramp, (480, 1)), np.tile(ramp[::-1], (480, 1)), np.full((480, 640), 200.0)], axis=2
        ).astype(np.uint8),
        "chelsea (cat)": skdata.chelsea,
        "astronaut": skdata.astronaut,
        "coffee": skdata.coffee,
        "rocket": skdata.rocket,
    }
    out = {}
    for name, make in images.items():
        image = np.ascontiguousarray(make()[..., :3].astype(np.uint8))
        out[name] = len(run("non-cell", image).cells)
    return out


def summary(values: Iterable[float]) -> dict[str, float]:
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        return {}
    return {
        "n": int(array.size),
        "median": float(np.median(array)),
        "p5": float(np.percentile(array, 5)),
        "p95": float(np.percentile(array, 95)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--aria-per-class", type=int, default=0, help="0 = every image; else an even sample")
    parser.add_argument("--blob-px", type=int, default=150, help="least Segmented blob (pixels at 224x224)")
    parser.add_argument("--only", default="", help="comma list of: wbc,aria,bccd,cnmc,noncell")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else {"wbc", "aria", "bccd", "cnmc", "noncell"}
    run = Timed()
    report: dict[str, Any] = {}
    if "wbc" in only:
        report["wbc_seg"] = wbc_seg(args.data, run)
    if "aria" in only:
        report["aria"] = aria(args.data, run, args.aria_per_class, args.blob_px)
    if "bccd" in only:
        report["bccd"] = bccd(args.data, run)
    if "cnmc" in only:
        report["cnmc"] = cnmc(args.data, run)
    if "noncell" in only:
        report["non_cell"] = non_cell(run)
    report["scale_um_per_px"] = {k: summary(v) for k, v in run.scales.items()}
    report["scale_sources"] = {k: {s: v.count(s) for s in set(v)} for k, v in run.sources.items()}
    report["time_ms"] = {k: summary(v) for k, v in run.times.items()}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
