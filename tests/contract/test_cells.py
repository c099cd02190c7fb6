"""The white-cell localiser and the scale estimator: synthetic smears, edge cases, and the real data."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from allxai.contract.cells import CellMap, WhiteCell, locate_cells
from allxai.contract.scale import RED_CELL_UM, WHITE_CELL_UM, estimate_scale

RED_DIAMETER = 24  # px: the synthetic smear's scale is RED_CELL_UM / 24 µm per pixel


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> npt.NDArray[np.bool_]:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return np.asarray((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2)


def smear(seed: int = 0) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    """A light field with pink red cells and one white cell (violet nucleus, pale bluish cytoplasm)."""
    rng = np.random.default_rng(seed)
    shape = (240, 320)
    image = np.empty((*shape, 3), np.float32)
    image[:] = (236, 232, 228)
    for row, col in [
        (30, 30),
        (30, 290),
        (200, 40),
        (210, 280),
        (40, 160),
        (200, 160),
        (120, 40),
        (120, 290),
    ]:
        image[disc(shape, (row, col), RED_DIAMETER / 2)] = (214, 150, 160)
    cell = disc(shape, (120, 160), 36)
    image[cell] = (200, 190, 222)
    image[disc(shape, (118, 158), 24)] = (112, 60, 170)
    image += rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), cell


def iou(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_the_white_cell_is_found_with_its_cytoplasm() -> None:
    image, truth = smear()
    cells = locate_cells(image)
    assert len(cells.cells) == 1
    assert not cells.black_background
    assert iou(cells.mask, truth) > 0.85
    cell = cells.cells[0]
    assert cell.centre == pytest.approx((120, 160), abs=3)
    assert cell.area == int(cells.mask.sum())
    assert cell.diameter == pytest.approx(72, rel=0.1)
    top, left, bottom, right = cell.box
    assert (top, left) == (int(np.nonzero(cells.mask)[0].min()), int(np.nonzero(cells.mask)[1].min()))
    assert (bottom, right) == (
        int(np.nonzero(cells.mask)[0].max()) + 1,
        int(np.nonzero(cells.mask)[1].max()) + 1,
    )
    assert set(np.unique(cells.labels)) == {0, 1}


def test_the_scale_comes_from_the_red_cells() -> None:
    image, _ = smear()
    scale = estimate_scale(image, locate_cells(image))
    assert scale is not None
    assert scale.source == "red_cells"
    assert scale.count >= 3
    assert scale.um_per_px == pytest.approx(RED_CELL_UM / RED_DIAMETER, rel=0.15)


def test_an_upscaled_field_maps_back_to_full_resolution() -> None:
    image, truth = smear()
    big = np.asarray(Image.fromarray(image).resize((1600, 1200), Image.Resampling.BILINEAR))
    big_truth = np.asarray(Image.fromarray(truth).resize((1600, 1200), Image.Resampling.NEAREST))
    cells = locate_cells(big)
    assert cells.mask.shape == (1200, 1600) and cells.labels.dtype == np.int32
    assert len(cells.cells) == 1
    assert iou(cells.mask, big_truth) > 0.8
    assert cells.cells[0].area == int(cells.mask.sum())
    scale = estimate_scale(big, cells)
    assert scale is not None
    assert scale.um_per_px == pytest.approx(RED_CELL_UM / (RED_DIAMETER * 5), rel=0.15)


def test_without_red_cells_the_white_cell_sets_the_scale() -> None:
    image, _ = smear()
    crop = np.ascontiguousarray(image[70:170, 110:210])  # the white cell only
    cells = locate_cells(crop)
    scale = estimate_scale(crop, cells)
    assert len(cells.cells) == 1 and scale is not None
    assert scale.source == "white_cell" and scale.count == 1
    assert scale.um_per_px == pytest.approx(WHITE_CELL_UM / cells.cells[0].diameter)


def test_a_cell_on_black_is_a_segmented_image() -> None:
    image = np.zeros((200, 200, 3), np.uint8)
    image[disc((200, 200), (100, 100), 60)] = (120, 80, 150)
    cells = locate_cells(image)
    assert cells.black_background
    assert len(cells.cells) == 1
    assert iou(cells.mask, disc((200, 200), (100, 100), 60)) > 0.95


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((1, 1, 3), np.uint8),
        np.full((8, 8, 3), 200, np.uint8),
        np.full((480, 640, 3), 255, np.uint8),
        np.zeros((480, 640, 3), np.uint8),
        np.full((100, 100, 3), (120, 60, 200), np.uint8),
        np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8),
        np.repeat(np.linspace(0, 255, 300, dtype=np.uint8)[None, :, None], 3, axis=2).repeat(50, axis=0),
    ],
    ids=["1x1", "8x8", "white", "black", "violet", "noise", "gradient"],
)
def test_no_cells_in_images_without_any(image: npt.NDArray[np.uint8]) -> None:
    cells = locate_cells(image)
    assert cells.cells == ()
    assert cells.mask.shape == image.shape[:2] and not cells.mask.any()
    assert estimate_scale(image, cells) is None


def test_a_huge_uniform_image_returns() -> None:
    image = np.full((3000, 4000, 3), 230, np.uint8)
    cells = locate_cells(image)
    assert cells.cells == () and cells.labels.shape == (3000, 4000)


def test_it_is_deterministic() -> None:
    image, _ = smear(3)
    first, second = locate_cells(image), locate_cells(image.copy())
    assert first.cells == second.cells
    assert np.array_equal(first.labels, second.labels)
    assert estimate_scale(image, first) == estimate_scale(image, second)


def test_a_natural_photo_has_few_cells() -> None:
    from skimage import data

    assert len(locate_cells(data.chelsea()).cells) <= 1


def test_a_wrong_array_is_refused() -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        locate_cells(np.zeros((10, 10), np.uint8))


def test_a_white_cell_reports_its_equivalent_diameter() -> None:
    assert WhiteCell(box=(0, 0, 10, 10), centre=(5.0, 5.0), area=100).diameter == pytest.approx(
        2 * np.sqrt(100 / np.pi)
    )
    assert CellMap.__dataclass_params__.frozen  # type: ignore[attr-defined]


# Real data (skipped where ../shared/data is absent). Thresholds sit a little below what
# scripts/localiser_eval.py measured on the full sets, on deterministic subsets kept small for speed.


def load(path: Path) -> npt.NDArray[np.uint8]:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.realdata
@pytest.mark.parametrize(("dataset", "least"), [("dataset1", 0.78), ("dataset2", 0.65)])
def test_wbc_seg_masks_match_the_experts(shared_data: Path, dataset: str, least: float) -> None:
    paths = sorted((shared_data / "wbc-seg" / dataset).glob("*.bmp"))[::10]
    scores = []
    for path in paths:
        truth = np.asarray(Image.open(path.with_suffix(".png")))
        truth = (truth[..., 0] if truth.ndim == 3 else truth) > 64
        scores.append(iou(locate_cells(load(path)).mask, truth))
    assert np.mean(scores) >= least


@pytest.mark.realdata
def test_bccd_white_cells_are_found(shared_data: Path) -> None:
    root = shared_data / "bccd" / "BCCD"
    for xml in sorted((root / "Annotations").glob("*.xml"))[:300:20]:
        tree = ET.parse(xml)
        name = tree.findtext("filename") or xml.stem
        cells = locate_cells(load(root / "JPEGImages" / (name if name.endswith(".jpg") else name + ".jpg")))
        for obj in tree.findall("object"):
            if obj.findtext("name") != "WBC":
                continue
            box = obj.find("bndbox")
            assert box is not None
            top, left, bottom, right = (float(box.findtext(k) or 0) for k in ("ymin", "xmin", "ymax", "xmax"))
            assert any(top <= c.centre[0] <= bottom and left <= c.centre[1] <= right for c in cells.cells), (
                xml.name
            )


@pytest.mark.realdata
def test_the_cnmc_cell_is_found_on_black(shared_data: Path) -> None:
    for path in sorted((shared_data / "cnmc-sample").rglob("*.bmp")):
        cells = locate_cells(load(path))
        assert cells.black_background, path.name
        assert len(cells.cells) == 1, path.name
        assert cells.cells[0].area > 0.1 * 450 * 450


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("folder", "pattern", "low", "high"),
    [
        # BCCD's red cells are ~90 px at 640 px: ~0.085 µm/px (measured median 0.085).
        ("bccd/BCCD/JPEGImages", "*.jpg", 0.065, 0.11),
        # Aria's isolated red cells are ~11 px (~0.7 µm/px), but its clumped red cells read larger: the
        # estimator's measured median is ~0.41 (a known bias, see scale.py); the band holds both.
        ("aria-all/Original/Early", "*.jpg", 0.3, 0.9),
    ],
)
def test_the_scale_comes_from_real_red_cells(
    shared_data: Path, folder: str, pattern: str, low: float, high: float
) -> None:
    paths = sorted((shared_data / folder).glob(pattern))[::60]
    scales = []
    for path in paths:
        image = load(path)
        scale = estimate_scale(image, locate_cells(image))
        if scale is not None and scale.source == "red_cells":
            scales.append(scale.um_per_px)
    assert len(scales) >= len(paths) // 2
    assert low <= float(np.median(scales)) <= high
