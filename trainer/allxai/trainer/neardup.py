"""Near-duplicate images by difference hash, and joining the split groups they would straddle.

Aria et al.'s images have no patient ids; consecutive file numbers come from the same smear and
some are the same cell photographed twice. A block of numbers stands in for a smear, but a smear
that crosses a block boundary (Early-499 and Early-501 with blocks of 20) would put one cell on
both sides of a split. :func:`join_near_duplicate_groups` finds such pairs and merges their groups
(union-find) before any split, so near-duplicates always land on the same side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from allxai.trainer.datasets import Sample

#: Each image is compared with the next this many in number order, where Aria's repeats sit:
#: linear in the dataset size, so whole datasets cost one thumbnail decode per image.
WINDOW = 5

_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def difference_hash(path: Path) -> int | None:
    """The 64-bit difference hash of an image (9x8 grayscale, left < right), or None if unreadable."""
    try:
        with Image.open(path) as image:
            image.draft("L", (64, 64))  # JPEG decodes at a reduced scale: the hash needs 9x8 pixels
            small = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BILINEAR), np.int16)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def near_duplicates(
    paths: list[Path], max_distance: int = 2, window: int = WINDOW
) -> list[tuple[str, str, int]]:
    """Pairs of images whose difference hashes differ in at most ``max_distance`` bits.

    Compares each image with the next ``window`` in the given order (pass them in file-number
    order). Unreadable files are left out. Returns ``(name, name, distance)`` triples.
    """
    return [
        (paths[i].name, paths[j].name, d)
        for i, j, d in _close_pairs([difference_hash(p) for p in paths], max_distance, window)
    ]


def _close_pairs(hashes: list[int | None], max_distance: int, window: int) -> list[tuple[int, int, int]]:
    pairs = []
    for i, a in enumerate(hashes):
        for j in range(i + 1, min(i + 1 + window, len(hashes))):
            b = hashes[j]
            if a is not None and b is not None and (d := (a ^ b).bit_count()) <= max_distance:
                pairs.append((i, j, d))
    return pairs


def _number_order(path: Path) -> tuple[int, int, str]:
    match = _NUMBER.search(path.stem)
    return (0, int(match.group(1)), path.name) if match else (1, 0, path.name)


@dataclass
class JoinedGroups:
    """The samples with merged groups, the near-duplicate pairs found and the groups merged."""

    samples: list[Sample]
    pairs: list[tuple[str, str, int]] = field(default_factory=list)
    #: Each merged group's new name with the groups it replaced (only where two or more joined).
    merged: dict[str, list[str]] = field(default_factory=dict)


def join_near_duplicate_groups(
    samples: list[Sample], max_distance: int, window: int = WINDOW
) -> JoinedGroups:
    """Merge the groups of near-duplicates found within each class folder, in file-number order.

    Two samples whose hashes differ in at most ``max_distance`` bits and sit within ``window``
    numbers of each other end up in one group (transitively), named by its members joined with
    ``+``. Pairs across class folders are never compared: a label conflict is not a leak to fix here.
    """
    by_folder: dict[Path, list[int]] = {}
    for i, sample in enumerate(samples):
        by_folder.setdefault(sample.path.parent, []).append(i)
    parent: dict[str, str] = {}

    def find(group: str) -> str:
        while parent.get(group, group) != group:
            parent[group] = parent.get(parent[group], parent[group])  # path halving
            group = parent[group]
        return group

    pairs: list[tuple[str, str, int]] = []
    for folder in sorted(by_folder):
        members = sorted(by_folder[folder], key=lambda i: _number_order(samples[i].path))
        hashes = [difference_hash(samples[i].path) for i in members]
        for a, b, d in _close_pairs(hashes, max_distance, window):
            first, second = samples[members[a]], samples[members[b]]
            pairs.append((first.path.name, second.path.name, d))
            root_a, root_b = find(first.group), find(second.group)
            if root_a != root_b:
                parent[max(root_a, root_b)] = min(root_a, root_b)
    joined: dict[str, set[str]] = {}
    for group in {s.group for s in samples}:
        joined.setdefault(find(group), set()).add(group)
    names = {root: "+".join(sorted(members)) for root, members in joined.items()}
    merged = {names[root]: sorted(m) for root, m in joined.items() if len(m) > 1}
    out = [replace(s, group=names[find(s.group)]) for s in samples]
    return JoinedGroups(out, pairs, merged)
