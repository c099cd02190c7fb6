"""scripts/domain_suite.py: the development sets of the domain gate, built from a fake shared-data tree."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.conftest import REPO, png_bytes

_VOC = """<annotation><filename>{name}.jpg</filename><size><width>64</width><height>48</height></size>
{objects}</annotation>"""
_BOX = (
    "<object><name>{label}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
    "<ymax>{y1}</ymax></bndbox></object>"
)


@pytest.fixture(scope="module")
def suite() -> ModuleType:
    spec = importlib.util.spec_from_file_location("domain_suite", REPO / "scripts" / "domain_suite.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_shared(root: Path) -> Path:
    """BCCD (two fields, three WBC boxes of which one is unusable, one annotation without its image),
    wbc-seg's dataset 1 only (an image and its mask), and the C-NMC sample."""
    rng = np.random.default_rng(0)
    bccd = root / "bccd" / "BCCD"
    (bccd / "JPEGImages").mkdir(parents=True)
    (bccd / "Annotations").mkdir()
    boxes = {
        "BloodImage_00000": [("WBC", 10, 8, 40, 30), ("RBC", 0, 0, 10, 10), ("WBC", 50, 40, 45, 41)],
        "BloodImage_00001": [("WBC", 30, 10, 62, 46)],
        "BloodImage_00002": [("WBC", 1, 1, 20, 20)],  # no image
    }
    for name, objects in boxes.items():
        text = "".join(_BOX.format(label=o[0], x0=o[1], y0=o[2], x1=o[3], y1=o[4]) for o in objects)
        (bccd / "Annotations" / f"{name}.xml").write_text(_VOC.format(name=name, objects=text))
        if name != "BloodImage_00002":
            field = rng.integers(0, 256, (48, 64, 3)).astype(np.uint8)
            (bccd / "JPEGImages" / f"{name}.jpg").write_bytes(png_bytes(field, "JPEG"))
    wbc = root / "wbc-seg" / "dataset1"
    wbc.mkdir(parents=True)
    (wbc / "001.bmp").write_bytes(png_bytes(np.full((12, 12, 3), 90, np.uint8), "BMP"))
    (wbc / "001.png").write_bytes(png_bytes(np.zeros((12, 12), np.uint8)))  # the mask: left out
    for kind in ("all", "hem"):
        (root / "cnmc-sample" / kind).mkdir(parents=True)
        cell = np.zeros((20, 20, 3), np.uint8)
        cell[5:15, 5:15] = (120, 60, 150)
        (root / "cnmc-sample" / kind / f"UID_1_1_1_{kind}.bmp").write_bytes(png_bytes(cell, "BMP"))
    return root


def _aria(root: Path, count: int = 5) -> Path:
    from allxai.trainer.synthetic import make_cell_image

    rng = np.random.default_rng(3)
    (root / "Pro").mkdir(parents=True)
    for i in range(count):
        (root / "Pro" / f"WBC-Malignant-Pro-{i:03d}.jpg").write_bytes(
            png_bytes(make_cell_image(i % 4, 64, rng), "JPEG")
        )
    return root


def test_every_set_is_built_from_what_is_there(suite: ModuleType, tmp_path: Path) -> None:
    from allxai.contract.preprocessing import prepare_image
    from allxai.trainer.ood_eval import find_images

    shared, out = _fake_shared(tmp_path / "shared"), tmp_path / "suite"
    results = suite.build_suite(out, shared, _aria(tmp_path / "aria"), aria_limit=4)
    counts = {name: n for name, n in results.items() if isinstance(n, int)}
    assert counts == {
        **({"natural": counts["natural"]} if "natural" in counts else {}),
        "blank": 6,
        "flat": 16,
        "noise": 16,
        "bccd-fields": 2,
        "bccd-wbc": 2,  # the box outside its field and the field without an image are left out
        "wbc-seg-1": 1,
        "cnmc": 2,
        "aria-stain-hed": 4,
        "aria-colour-hsv": 4,
        "aria-zoom-x2": 4,
        "aria-zoom-x0.5": 4,
        "aria-cell-crops": 4,
    }
    assert results["wbc-seg-2"] == f"skipped: {shared / 'wbc-seg' / 'dataset2'} is absent"
    assert not (out / "wbc-seg-2").exists()
    if importlib.util.find_spec("skimage") is not None:
        assert counts["natural"] >= 6
        assert {"astronaut.png", "chelsea.png", "coffee.png", "camera.png", "coins.png", "rocket.png"} <= {
            p.name for p in (out / "natural").iterdir()
        }
    assert sorted(p.name for p in (out / "wbc-seg-1").iterdir()) == ["001.bmp", "SOURCE.txt"]
    assert sorted(p.name for p in (out / "cnmc").glob("*.bmp")) == [
        "all_UID_1_1_1_all.bmp",
        "hem_UID_1_1_1_hem.bmp",
    ]
    crops = sorted((out / "bccd-wbc").glob("*.png"))
    assert [p.name for p in crops] == ["BloodImage_00000_wbc0.png", "BloodImage_00001_wbc0.png"]
    # The box (10, 8)-(40, 30) with a 10% margin: 36 x 28.
    assert prepare_image(crops[0].read_bytes(), (28, 36)).shape == (28, 36, 3)
    from PIL import Image

    with Image.open(crops[0]) as crop:
        assert crop.size == (36, 28)
    # A stained cell cropped and enlarged to the field's size; zooms keep the field's size.
    with Image.open(out / "aria-cell-crops" / "WBC-Malignant-Pro-000.png") as crop:
        assert crop.size == (64, 64)
    # Every set is what `allxai evaluate --ood` takes: images found recursively, every one readable.
    for name in counts:
        files = find_images(out / name)
        assert len(files) == counts[name] and (out / name / "SOURCE.txt").read_text().strip()
        for path in files:
            assert prepare_image(path.read_bytes(), (16, 16)).shape == (16, 16, 3)


def test_what_is_there_already_is_kept_unless_replaced(suite: ModuleType, tmp_path: Path) -> None:
    out, empty = tmp_path / "suite", tmp_path / "nothing"
    empty.mkdir()
    (out / "blank").mkdir(parents=True)
    (out / "blank" / "mine.png").write_bytes(b"someone's file")
    results = suite.build_suite(out, empty)
    assert results["blank"] == f"skipped: {out / 'blank'} exists and is not empty (--overwrite replaces it)"
    assert (out / "blank" / "mine.png").read_bytes() == b"someone's file"
    assert results["bccd-fields"].startswith("skipped: ") and results["flat"] == 16
    results = suite.build_suite(out, empty, overwrite=True)
    assert results["blank"] == 6 and not (out / "blank" / "mine.png").exists()


def test_bad_requests_are_refused(
    suite: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, message in (
        (["--out", str(REPO / "suite")], "is inside the repository"),
        (["--out", str(tmp_path / "s"), "--aria", str(tmp_path / "absent")], "not a folder"),
        (["--out", str(tmp_path / "s"), "--aria", str(tmp_path)], "holds no images"),
    ):
        with pytest.raises(SystemExit) as exited:
            suite.main([*argv, "--shared", str(tmp_path / "nothing")])
        assert exited.value.code == 2 and message in capsys.readouterr().err
    assert not (REPO / "suite").exists()
