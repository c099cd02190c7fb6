"""White cells from other laboratories, as decoded RGB arrays: the development sets of ``../shared/data``.

None of these cells is a blast. A model trained on Aria should flag them (outside its domain) or call them
normal; the run check (:mod:`allxai.trainer.runcheck`) counts how often it does.

- BCCD (``bccd/``): smear fields 640x480 with Pascal VOC boxes; one crop per ``WBC`` box, the box grown by
  half its size on each side (so the crop shows the cell with its surroundings, as a field would) and
  clipped to the image.
- wbc-seg (``wbc-seg/``): single-cell images of two laboratories with the cell type of each, from
  ``datasetN-labels.csv``.
"""

from __future__ import annotations

import csv
import importlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from allxai.contract.preprocessing import ImageError, UInt8Image, decode_image
from allxai.trainer.ood_eval import CONFIDENT

log = logging.getLogger(__name__)

#: wbc-seg's cell types by their label number (the labels CSVs' ``class label`` column).
WBC_TYPES = {1: "neutrophil", 2: "lymphocyte", 3: "monocyte", 4: "eosinophil", 5: "basophil"}
#: A BCCD box grows by this share of its width (height) on the left and right (top and bottom).
GROW = 0.5


@dataclass(frozen=True)
class ForeignCell:
    """One white cell: a name that finds its file again, the pixels, and its type where known."""

    name: str
    image: UInt8Image
    cell_type: str | None = None


@dataclass
class ForeignSet:
    """The cells of one development set, and the files that could not be used (name, why)."""

    name: str
    cells: list[ForeignCell] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _parse_xml(path: Path) -> Any:
    """The XML tree's root; defusedxml where installed (the files are trusted local data, so the standard
    library's parser is acceptable without it)."""
    try:
        parser: Any = importlib.import_module("defusedxml.ElementTree")
    except ImportError:
        parser = importlib.import_module("xml.etree.ElementTree")
    return parser.parse(path).getroot()


def _wbc_boxes(xml_path: Path) -> list[tuple[float, float, float, float]]:
    """The ``WBC`` boxes of one VOC file as (xmin, ymin, xmax, ymax) in VOC's 1-based inclusive pixels."""
    boxes = []
    for obj in _parse_xml(xml_path).iter("object"):
        if (obj.findtext("name") or "").strip().upper() != "WBC":
            continue
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{xml_path.name}: a WBC object without a bndbox")
        try:
            x0, y0, x1, y1 = (float(box.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as exc:
            raise ValueError(f"{xml_path.name}: a WBC box with a coordinate that is not a number") from exc
        boxes.append((x0, y0, x1, y1))
    return boxes


def _grown(image: UInt8Image, box: tuple[float, float, float, float]) -> UInt8Image | None:
    """The box grown by :data:`GROW` of its size on each side, clipped to the image; None when empty."""
    x0, y0, x1, y1 = box
    # VOC counts pixels from 1 and includes xmax: columns xmin-1 .. xmax-1, i.e. [xmin-1, xmax).
    left, top, right, bottom = x0 - 1, y0 - 1, x1, y1
    width, height = right - left, bottom - top
    if width <= 0 or height <= 0:
        return None
    h, w = image.shape[:2]
    top_i = max(0, math.floor(top - GROW * height))
    left_i = max(0, math.floor(left - GROW * width))
    bottom_i = min(h, math.ceil(bottom + GROW * height))
    right_i = min(w, math.ceil(right + GROW * width))
    if bottom_i <= top_i or right_i <= left_i:
        return None
    # A copy, so that the whole field is not kept alive by a view of it.
    return np.ascontiguousarray(image[top_i:bottom_i, left_i:right_i])


def bccd_cells(root: Path) -> ForeignSet:
    """BCCD white-cell crops: one per ``WBC`` box of ``root/BCCD/Annotations/*.xml``, from the field of the
    same name in ``root/BCCD/JPEGImages``. A FileNotFoundError when the folders are not there."""
    images, notes = root / "BCCD" / "JPEGImages", root / "BCCD" / "Annotations"
    if not images.is_dir() or not notes.is_dir():
        raise FileNotFoundError(
            f"{root} holds no BCCD set: expected {images} and {notes} (see ../shared/data/README.md)"
        )
    out = ForeignSet("bccd")
    for xml_path in sorted(notes.glob("*.xml")):
        boxes = _wbc_boxes(xml_path)
        if not boxes:
            continue
        picture = images / f"{xml_path.stem}.jpg"
        try:
            field_image = decode_image(picture.read_bytes())
        except (ImageError, OSError) as exc:
            out.skipped.append((picture.name, str(exc)))
            continue
        for number, box in enumerate(boxes, start=1):
            crop = _grown(field_image, box)
            if crop is None:
                out.skipped.append((f"{xml_path.stem}#{number}", f"an empty WBC box {box}"))
            else:
                out.cells.append(ForeignCell(f"bccd/{xml_path.stem}#{number}", crop))
    if not out.cells:
        raise ValueError(f"no WBC box could be cut from {root} ({len(out.skipped)} skipped)")
    return out


def read_labels(path: Path) -> dict[int, str]:
    """A wbc-seg labels CSV (``image ID,class label``; dataset 2 names the column ``class``) as image number
    -> cell type. A ValueError for a header, number or type it does not expect."""
    # utf-8-sig: a byte-order mark would otherwise stick to the first header; newline="": the files end
    # their lines with CRLF, which the csv module handles itself.
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = [[cell.strip() for cell in row] for row in csv.reader(handle) if any(c.strip() for c in row)]
    if not rows:
        raise ValueError(f"{path} is empty")
    header = [cell.lower() for cell in rows[0]]
    if len(header) < 2 or "id" not in header[0] or not header[1].startswith("class"):
        raise ValueError(f"{path}: expected the header 'image ID,class label', got {','.join(rows[0])!r}")
    labels: dict[int, str] = {}
    for line, row in enumerate(rows[1:], start=2):
        try:
            number, label = int(row[0]), int(row[1])
        except (ValueError, IndexError) as exc:
            raise ValueError(f"{path}, line {line}: expected two whole numbers, got {row!r}") from exc
        if label not in WBC_TYPES:
            raise ValueError(f"{path}, line {line}: class label {label} is not one of 1-5")
        if number in labels:
            raise ValueError(f"{path}, line {line}: image {number} is labelled twice")
        labels[number] = WBC_TYPES[label]
    return labels


def wbcseg_cells(root: Path) -> ForeignSet:
    """wbc-seg's single-cell images, ``root/dataset1/*.bmp`` and ``root/dataset2/*.bmp``, with each cell's
    type from ``root/datasetN-labels.csv`` (None where an image has no label). A FileNotFoundError when
    neither folder is there."""
    folders = [root / f"dataset{n}" for n in (1, 2)]
    if not any(folder.is_dir() for folder in folders):
        raise FileNotFoundError(
            f"{root} holds no wbc-seg set: expected {folders[0]} and {folders[1]} "
            "(see ../shared/data/README.md)"
        )
    out = ForeignSet("wbc-seg")
    for folder in folders:
        if not folder.is_dir():
            log.warning("wbc-seg: %s is missing; using the other dataset only", folder)
            continue
        csv_path = root / f"{folder.name}-labels.csv"
        labels = read_labels(csv_path) if csv_path.is_file() else {}
        # The CSV numbers images 1, 2, ...; the files are 001.bmp, 002.bmp: match by the number, not the text.
        for path in sorted(folder.glob("*.bmp")):
            try:
                image = decode_image(path.read_bytes())
            except (ImageError, OSError) as exc:
                out.skipped.append((f"{folder.name}/{path.name}", str(exc)))
                continue
            kind = labels.get(int(path.stem)) if path.stem.isdigit() else None
            out.cells.append(ForeignCell(f"wbc-seg/{folder.name}/{path.stem}", image, kind))
    if not out.cells:
        raise ValueError(f"no usable image in {root} ({len(out.skipped)} skipped)")
    return out


def call_figures(
    probabilities: npt.NDArray[np.float64],
    flagged: npt.NDArray[np.bool_],
    class_names: Sequence[str],
    normal: Sequence[str],
) -> dict[str, Any]:
    """What a model made of foreign (all normal) cells: the share called a normal class, flagged (outside
    the domain), either of the two (the safety figure: the rest would reach a report as blasts), a blast
    with no flag, a blast with no flag at a confidence of at least :data:`CONFIDENT`, and a normal class
    with no flag; and the share called each class."""
    n = len(probabilities)
    if n == 0:
        return {"n": 0}
    predicted = probabilities.argmax(axis=1)
    normal_call = np.isin(predicted, [class_names.index(name) for name in normal])
    blast_unflagged = ~normal_call & ~flagged
    return {
        "n": n,
        "benign": float(normal_call.mean()),
        "flagged": float(flagged.mean()),
        "benign_or_flagged": float((normal_call | flagged).mean()),
        "blast_unflagged": float(blast_unflagged.mean()),
        "confident_blast_unflagged": float(
            (blast_unflagged & (probabilities.max(axis=1) >= CONFIDENT)).mean()
        ),
        "benign_unflagged": float((normal_call & ~flagged).mean()),
        "calls": {name: float(np.mean(predicted == i)) for i, name in enumerate(class_names)},
    }


def set_figures(
    probabilities: npt.NDArray[np.float64],
    flagged: npt.NDArray[np.bool_],
    kinds: Sequence[str | None],
    class_names: Sequence[str],
    normal: Sequence[str],
) -> dict[str, Any]:
    """:func:`call_figures` of a whole set and, where its cells have types, of each type (``by_type``), with
    the lymphocytes' share called normal without a flag on its own (``lymphocytes_benign_unflagged``)."""
    figures = call_figures(probabilities, flagged, class_names, normal)
    types = np.array([kind or "" for kind in kinds])
    if types.any():
        figures["by_type"] = {
            kind: call_figures(probabilities[types == kind], flagged[types == kind], class_names, normal)
            for kind in sorted(set(types) - {""})
        }
        # Lymphocytes look most like the Benign class (hematogones): the hardest normal cells to get right.
        lymphocytes = figures["by_type"].get("lymphocyte")
        figures["lymphocytes_benign_unflagged"] = lymphocytes["benign_unflagged"] if lymphocytes else None
    return figures
