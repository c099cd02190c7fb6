"""Synthetic, cell-like smear images for the demo and tests when no real data is at hand.

Each image shows a pink smear background, a few pale red blood cells and one white cell
whose nucleus differs by class (size, shape, chromatin texture, nucleoli), roughly as the
four classes of the Aria et al. set differ. They are easy to learn, which is their purpose:
a demo that trains in a minute and an explanation that should land on the nucleus.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

CLASSES = ("Benign", "Early", "Pre", "Pro")


def _ellipse(
    h: int, w: int, cy: float, cx: float, ry: float, rx: float, angle: float
) -> npt.NDArray[np.bool_]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    y, x = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = (x * c + y * s) / rx, (-x * s + y * c) / ry
    return np.asarray(u * u + v * v <= 1.0)


def make_cell_image(label: int, size: int, rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    """One synthetic smear field of ``size`` x ``size`` pixels for class index ``label`` (0..3)."""
    h = w = size
    img = np.empty((h, w, 3), np.float32)
    img[:] = np.array([232, 205, 210], np.float32) + rng.normal(0, 4, 3)
    img += rng.normal(0, 3, (h, w, 1))
    for _ in range(rng.integers(3, 7)):  # red blood cells
        r = size * rng.uniform(0.08, 0.12)
        m = _ellipse(h, w, rng.uniform(0, h), rng.uniform(0, w), r, r * rng.uniform(0.9, 1.1), 0.0)
        img[m] = np.array([214, 150, 160]) + rng.normal(0, 3, 3)
    cy, cx = h / 2 + rng.normal(0, size * 0.04), w / 2 + rng.normal(0, size * 0.04)
    cell_r = size * rng.uniform(0.26, 0.30)
    cyto = _ellipse(h, w, cy, cx, cell_r, cell_r * rng.uniform(0.9, 1.1), rng.uniform(0, np.pi))
    img[cyto] = np.array([190, 170, 215]) + rng.normal(0, 3, 3)
    # Nucleus: Benign small and round; Early large and round; Pre irregular (two lobes);
    # Pro large with nucleoli.
    frac = (0.45, 0.8, 0.7, 0.85)[label]
    nr = cell_r * frac * rng.uniform(0.92, 1.05)
    nucleus = _ellipse(h, w, cy, cx, nr, nr * rng.uniform(0.85, 1.0), rng.uniform(0, np.pi))
    if label == 2:
        off = nr * 0.55
        a = rng.uniform(0, 2 * np.pi)
        nucleus = _ellipse(
            h, w, cy + off * np.sin(a), cx + off * np.cos(a), nr * 0.6, nr * 0.5, a
        ) | _ellipse(h, w, cy - off * np.sin(a), cx - off * np.cos(a), nr * 0.6, nr * 0.5, a)
    base = np.array([(95, 40, 130), (120, 70, 160), (110, 55, 150), (105, 60, 165)][label], np.float32)
    texture = rng.normal(0, (18, 6, 9, 6)[label], (h, w, 1))
    img[nucleus] = (base + rng.normal(0, 4, 3)) + texture[nucleus]
    if label == 3:
        for _ in range(rng.integers(2, 4)):
            a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0, nr * 0.5)
            nucleolus = _ellipse(h, w, cy + d * np.sin(a), cx + d * np.cos(a), nr * 0.15, nr * 0.15, 0.0)
            img[nucleolus & nucleus] = np.array([160, 120, 190])
    return np.clip(img, 0, 255).astype(np.uint8)


def make_dataset(root: Path, per_class: int, size: int = 128, seed: int = 0) -> Path:
    """Write ``per_class`` PNG images per class into ``root/<class>/``; return ``root``."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(make_cell_image(label, size, rng)).save(folder / f"{name.lower()}_{i:04d}.png")
    return root
