"""Domain-gate benchmark: what the gate adds to each image, against the model's own time, in the same run.

For each architecture and input size (untrained weights: timing does not depend on them) it exports the same
Keras model twice, without and with a domain gate fitted on synthetic cells, loads both SavedModels and
times their ``serving_default`` on the same batch, alternating rounds so that load on the machine hits
both alike. Prints milliseconds per image and the ratio; the gate's target is at most 5% added.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from allxai.trainer.calibrate import Split, calibrate
from allxai.trainer.export import export_model
from allxai.trainer.models import build_model
from allxai.trainer.synthetic import make_cell_image

ROOT = Path(__file__).resolve().parent.parent


def _cells(count: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([make_cell_image(i % 4, size, rng) for i in range(count)])


def _split(images: np.ndarray, folder: Path) -> Split:
    """Images with labels, and files whose bytes give the conformal draws."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, image in enumerate(images):
        path = folder / f"{i}.npy"
        np.save(path, image)
        files.append(path)
    return Split(images, np.arange(len(images)) % 4, tuple(files))


def _time(serve: Any, batch: np.ndarray, repeats: int) -> float:
    """Median seconds per image of one call on ``batch``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        serve(images=tf.constant(batch))
        times.append((time.perf_counter() - started) / len(batch))
    return statistics.median(times)


def bench(arch: str, size: int, batch: int, rounds: int, work: Path) -> dict[str, Any]:
    model = build_model(arch, 4, (size, size), weights=None)
    card = {"class_names": ["Benign", "Early", "Pre", "Pro"], "input_size": [size, size]}
    check = _cells(2, size, 0)
    name = f"{arch}-{size}"
    train = _split(_cells(64, size, 1), work / f"{name}-train")
    held = _split(_cells(32, size, 2), work / f"{name}-cal")
    calibration = calibrate(model, train, held, None)
    plain = export_model(model, work / "plain", name, 1, card, check)
    gated = export_model(model, work / "gated", name, 1, card, check, calibration=calibration)
    serves = {
        name: tf.saved_model.load(str(path)).signatures["serving_default"]
        for name, path in (("plain", plain), ("gated", gated))
    }
    images = _cells(batch, size, 3)
    for serve in serves.values():
        serve(images=tf.constant(images))  # warm
    per_round: dict[str, list[float]] = {"plain": [], "gated": []}
    for _ in range(rounds):
        for name, serve in serves.items():
            per_round[name].append(_time(serve, images, 3))
    plain_ms = statistics.median(per_round["plain"]) * 1000
    gated_ms = statistics.median(per_round["gated"]) * 1000
    ratios = [g / p for g, p in zip(per_round["gated"], per_round["plain"], strict=True)]
    return {
        "arch": arch,
        "size": size,
        "batch": batch,
        "model_ms_per_image": round(plain_ms, 3),
        "with_gate_ms_per_image": round(gated_ms, 3),
        "added_ms_per_image": round(gated_ms - plain_ms, 3),
        "added_share": round(gated_ms / plain_ms - 1, 4),
        "ratio_per_round": [round(r, 3) for r in ratios],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="allnet:128,allnet:224,inceptionv3:299")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gate.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models.split(","):
            arch, size = spec.split(":")
            row = bench(arch, int(size), args.batch, args.rounds, Path(tmp))
            results.append(row)
            print(
                f"{arch} {size}px, batch {args.batch}: model {row['model_ms_per_image']:.2f} ms/image, "
                f"with the gate {row['with_gate_ms_per_image']:.2f} ms/image: +{row['added_share']:.1%} "
                f"(per round {row['ratio_per_round']}; target +5%)",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
