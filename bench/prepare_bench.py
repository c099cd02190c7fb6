"""Preprocessing benchmark: what finding the cells costs each request, against plain decode-and-resize.

Times, per image and in the same run (alternating rounds, so load on the machine hits all alike), on real
images from ../shared/data where they are there (Aria fields, a C-NMC cell, BCCD fields, wbc-seg cells)
and on synthetic fields otherwise:

- ``baseline``: ``prepare_image``, decode and resize, as every request was prepared before cell models;
- ``field``: a field model's request now (the same input, plus the localiser and the scale estimate, which
  the answer reports);
- ``cell``: a cell-centred model's request (localiser, scale, stain normalisation, crop, blank, resize).

Prints milliseconds per image and each path's ratio to the baseline; writes bench/results/prepare.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from allxai.contract.cellrecipe import CellRecipe, StainTarget
from allxai.contract.cellview import prepare
from allxai.contract.preprocessing import prepare_image
from allxai.trainer.synthetic import make_cell_image

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
#: An Aria-like stain target (the cell recipe's, rounded); timing does not depend on its values.
RECIPE = CellRecipe(stain=StainTarget((86.7, 1.9, -8.9), (12.0, 10.6, 16.2)))


def _sets() -> dict[str, list[bytes]]:
    globs = {
        "aria 224x224": "aria-all/Original/*/*.jpg",
        "cnmc 450x450": "cnmc-sample/*/*.bmp",
        "bccd 640x480": "bccd/BCCD/JPEGImages/*.jpg",
        "wbc-seg 300x300": "wbc-seg/dataset2/*.bmp",
    }
    sets = {}
    for name, pattern in globs.items():
        files = sorted(DATA.glob(pattern))[::25][:12] if DATA.is_dir() else []
        if files:
            sets[name] = [f.read_bytes() for f in files]
    if not sets:
        rng = np.random.default_rng(0)
        import io  # noqa: PLC0415

        def png(size: int) -> bytes:
            buffer = io.BytesIO()
            Image.fromarray(make_cell_image(1, size, rng)).save(buffer, format="PNG")
            return buffer.getvalue()

        sets = {"synthetic 224x224": [png(224) for _ in range(8)]}
    return sets


def _per_image(fn: Callable[[bytes], object], images: list[bytes]) -> float:
    started = time.perf_counter()
    for data in images:
        fn(data)
    return (time.perf_counter() - started) / len(images)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=64, help="the model's input size")
    args = parser.parse_args()
    size = (args.size, args.size)
    paths: dict[str, Callable[[bytes], object]] = {
        "baseline": lambda data: prepare_image(data, size),
        "field": lambda data: prepare(data, size, None),
        "cell": lambda data: prepare(data, size, RECIPE),
    }
    results = {}
    print(f"{'images':<18}{'baseline ms':>12}{'field ms':>10}{'ratio':>7}{'cell ms':>10}{'ratio':>7}")
    for name, images in _sets().items():
        times: dict[str, list[float]] = {path: [] for path in paths}
        for _ in range(args.rounds):
            for path, fn in paths.items():
                times[path].append(_per_image(fn, images))
        ms = {path: 1000 * statistics.median(values) for path, values in times.items()}
        results[name] = {**{f"{k}_ms": round(v, 2) for k, v in ms.items()}, "images": len(images)}
        base = ms["baseline"]
        print(
            f"{name:<18}{base:>12.2f}{ms['field']:>10.1f}{ms['field'] / base:>6.0f}x"
            f"{ms['cell']:>10.1f}{ms['cell'] / base:>6.0f}x"
        )
    out = ROOT / "bench" / "results" / "prepare.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
