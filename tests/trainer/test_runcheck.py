"""``allxai check-run``: the foreign-cell loaders, the run check end to end, its columns in compare."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from allxai.client.cli import main as allxai_main
from tests.conftest import INPUT_SIZE, png_bytes

DASH = "\u2014"

VOC = """<annotation>
  <filename>{stem}.jpg</filename>
  <size><width>100</width><height>80</height><depth>3</depth></size>
  {objects}
</annotation>
"""
OBJECT = (
    "<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
    "<ymax>{y1}</ymax></bndbox></object>"
)


def _bccd(root: Path) -> Path:
    """A BCCD-shaped folder: two 100x80 fields, three WBC boxes (one at the edge) and a red cell."""
    (root / "BCCD" / "JPEGImages").mkdir(parents=True)
    (root / "BCCD" / "Annotations").mkdir(parents=True)
    boxes = {
        "BloodImage_00000": [("WBC", 41, 31, 60, 50), ("RBC", 1, 1, 10, 10)],
        "BloodImage_00001": [("WBC", 1, 1, 20, 10), ("WBC", 81, 61, 100, 80)],
        "BloodImage_00002": [("RBC", 5, 5, 15, 15)],  # no white cell: no crop
    }
    rng = np.random.default_rng(3)
    for stem, objects in boxes.items():
        image = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
        (root / "BCCD" / "JPEGImages" / f"{stem}.jpg").write_bytes(png_bytes(image, "JPEG", quality=95))
        text = "".join(OBJECT.format(name=n, x0=a, y0=b, x1=c, y1=d) for n, a, b, c, d in objects)
        (root / "BCCD" / "Annotations" / f"{stem}.xml").write_text(VOC.format(stem=stem, objects=text))
    return root


def _wbcseg(root: Path) -> Path:
    """A wbc-seg-shaped folder as the real one comes: CRLF CSVs, ids without the files' zero padding,
    dataset 2's label column named ``class``, and one image without a label."""
    rng = np.random.default_rng(4)
    for n, count, side in ((1, 3, 40), (2, 2, 60)):
        (root / f"dataset{n}").mkdir(parents=True)
        for i in range(1, count + 1):
            image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            (root / f"dataset{n}" / f"{i:03d}.bmp").write_bytes(png_bytes(image, "BMP"))
    (root / "dataset1-labels.csv").write_bytes(b"image ID,class label\r\n1,2\r\n2,1\r\n")
    (root / "dataset2-labels.csv").write_bytes(b"\xef\xbb\xbfimage ID,class\r\n1,5\r\n2,2\r\n")
    return root


def test_bccd_crops_each_white_cell_box_grown_by_half_its_size_and_clipped(tmp_path: Path) -> None:
    from allxai.trainer.foreign import bccd_cells

    found = bccd_cells(_bccd(tmp_path))
    assert [c.name for c in found.cells] == [
        "bccd/BloodImage_00000#1",
        "bccd/BloodImage_00001#1",
        "bccd/BloodImage_00001#2",
    ]
    # 20x20 box at columns 40..59, rows 30..49, grown by 10 on each side.
    assert found.cells[0].image.shape == (40, 40, 3) and found.cells[0].image.dtype == np.uint8
    # At the image's corners the growth is clipped: 20 wide by 10 high -> 30 by 15.
    assert found.cells[1].image.shape == (15, 30, 3)
    assert found.cells[2].image.shape == (30, 30, 3)
    assert all(c.cell_type is None for c in found.cells) and found.skipped == []
    with Image.open(tmp_path / "BCCD" / "JPEGImages" / "BloodImage_00000.jpg") as field:
        whole = np.asarray(field.convert("RGB"))
    assert np.array_equal(found.cells[0].image, whole[20:60, 30:70])


def test_wbcseg_reads_each_cells_type_from_its_labels(tmp_path: Path) -> None:
    from allxai.trainer.foreign import wbcseg_cells

    found = wbcseg_cells(_wbcseg(tmp_path))
    kinds = {c.name: c.cell_type for c in found.cells}
    assert kinds == {
        "wbc-seg/dataset1/001": "lymphocyte",
        "wbc-seg/dataset1/002": "neutrophil",
        "wbc-seg/dataset1/003": None,
        "wbc-seg/dataset2/001": "basophil",
        "wbc-seg/dataset2/002": "lymphocyte",
    }
    assert found.cells[-1].image.shape == (60, 60, 3)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (b"id;label\r\n1;2\r\n", "expected the header"),
        (b"image ID,class label\r\n1,7\r\n", "not one of 1-5"),
        (b"image ID,class label\r\n1,2\r\n1,3\r\n", "labelled twice"),
        (b"image ID,class label\r\none,2\r\n", "two whole numbers"),
    ],
)
def test_a_labels_file_it_does_not_understand_is_refused(tmp_path: Path, text: bytes, error: str) -> None:
    from allxai.trainer.foreign import read_labels

    (tmp_path / "labels.csv").write_bytes(text)
    with pytest.raises(ValueError, match=error):
        read_labels(tmp_path / "labels.csv")


def test_a_missing_set_is_a_clear_error(tmp_path: Path) -> None:
    from allxai.trainer.foreign import bccd_cells, wbcseg_cells

    with pytest.raises(FileNotFoundError, match="holds no BCCD set"):
        bccd_cells(tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no wbc-seg set"):
        wbcseg_cells(tmp_path)


@pytest.mark.realdata
def test_the_real_foreign_sets(shared_data: Path) -> None:
    from allxai.trainer.foreign import bccd_cells, wbcseg_cells

    if not (shared_data / "bccd").is_dir() or not (shared_data / "wbc-seg").is_dir():
        pytest.skip("bccd or wbc-seg is absent")
    bccd = bccd_cells(shared_data / "bccd")
    assert len(bccd.cells) == 372 and not bccd.skipped  # one per WBC box (the README counts 372)
    wbc = wbcseg_cells(shared_data / "wbc-seg")
    kinds = Counter(c.cell_type for c in wbc.cells)
    assert len(wbc.cells) == 400 and None not in kinds
    assert kinds == {"neutrophil": 209, "lymphocyte": 90, "monocyte": 63, "eosinophil": 34, "basophil": 4}


def test_the_choice_of_test_images_takes_each_class_in_turn() -> None:
    from allxai.trainer.runcheck import choose_images

    paths = [f"/d/{c}/{c.lower()}{i}.jpg" for c in ("Pro", "Benign", "Early") for i in range(5)]
    names = ("Benign", "Early", "Pre", "Pro")
    chosen = choose_images(paths, names, 7, seed=0)
    assert [p.parent.name for p in chosen] == ["Benign", "Early", "Pro"] * 2 + ["Benign"]
    assert chosen == choose_images(list(reversed(paths)), names, 7, seed=0)
    assert len(choose_images(paths, names, 100, seed=0)) == 15


def _run_folder(root: Path, model_base: Path, *, check: bool = False, kind: str | None = None) -> Path:
    """A reports folder as `allxai train` writes it, for the session's tiny export, with 3 test images a
    class (synthetic cells)."""
    from allxai.trainer.synthetic import make_dataset

    data = make_dataset(root / "data", per_class=3, size=INPUT_SIZE, seed=21)
    run = root / "run"
    run.mkdir()
    fold = {"mean": 0.9, "sd": 0.05}
    config = {"out": str(model_base), "name": "allnet", "version": 1, "arch": "allnet", "data": str(data)}
    report = {
        "config": {**config, **({"input": kind} if kind else {})},
        "params": 1000,
        "seconds": 12.0,
        "folds": [],
        "summary": {"accuracy": fold, "macro_f1": fold},
        "test": {"accuracy": 0.875, "macro_f1": 0.85},
    }
    (run / "report.json").write_text(json.dumps(report))
    split = {"train": [], "validation": [], "test": [str(p) for p in sorted(data.rglob("*.png"))]}
    (run / "split.json").write_text(json.dumps(split))
    return run


def test_check_run_explains_test_images_and_classifies_foreign_cells(
    model_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run_folder(tmp_path, model_base, kind="field")
    bccd, wbc = _bccd(tmp_path / "bccd"), _wbcseg(tmp_path / "wbc")
    argv = ["check-run", str(run), "--cells", "4", "--samples", "60", "--bccd", str(bccd)]
    assert allxai_main([*argv, "--wbc-seg", str(wbc)]) == 0
    assert "Run check of" in capsys.readouterr().out
    check = json.loads((run / "runcheck.json").read_text())
    assert check["test_accuracy"] == pytest.approx(0.875)
    ex = check["explanations"]
    # One image of each class (a stratified choice), each explained with 60 samples.
    assert ex["n"] == 4 and ex["per_class"] == {"Benign": 1, "Early": 1, "Pre": 1, "Pro": 1}
    for name in ("cell_share", "background_share", "corner_share"):
        s = ex[name]
        assert 0.0 <= s["q1"] <= s["median"] <= s["q3"] <= 1.0 + 1e-9
    assert ex["r2"]["median"] is not None
    # The session's export has a gate: flags come from its score as well as from preprocessing notes.
    assert isinstance(check["domain"]["threshold"], float) and check["domain_note"] is None
    figures = check["foreign"]
    assert figures["bccd"]["n"] == 3 and figures["wbc-seg"]["n"] == 5
    for f in (figures["bccd"], figures["wbc-seg"], *figures["wbc-seg"]["by_type"].values()):
        assert f["benign_or_flagged"] + f["blast_unflagged"] == pytest.approx(1.0)
        assert f["benign_or_flagged"] >= max(f["benign"], f["flagged"]) - 1e-9
        assert sum(f["calls"].values()) == pytest.approx(1.0)
    by_type = figures["wbc-seg"]["by_type"]
    assert set(by_type) == {"lymphocyte", "neutrophil", "basophil"} and by_type["lymphocyte"]["n"] == 2
    assert figures["wbc-seg"]["lymphocytes_benign_unflagged"] == by_type["lymphocyte"]["benign_unflagged"]
    assert "by_type" not in figures["bccd"]
    with Image.open(run / "runcheck_overlays.png") as picture:
        assert min(picture.size) >= 200
    markdown = (run / "runcheck.md").read_text()
    assert "| wbc-seg: lymphocyte | 2 |" in markdown and "runcheck_overlays.png" in markdown


def test_check_run_without_foreign_sets_and_with_a_wrong_folder(model_base: Path, tmp_path: Path) -> None:
    from allxai.trainer.runcheck import check_run

    run = _run_folder(tmp_path, model_base)
    with pytest.raises(FileNotFoundError, match="holds no BCCD set"):
        check_run(run, cells=1, bccd=tmp_path / "nowhere", num_samples=20)
    check = check_run(run, cells=1, num_samples=20)
    assert check["explanations"]["n"] == 1 and check["foreign"] == {} and check["input"] == "field"


def test_compare_adds_the_run_check_columns_with_dashes_for_unchecked_runs(
    model_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checked = _run_folder(tmp_path / "a", model_base, kind="cell")
    plain = _run_folder(tmp_path / "b", model_base, kind="field")
    check = {
        "explanations": {
            "cell_share": {"median": 0.62},
            "background_share": {"median": 0.3},
            "corner_share": {"median": 0.08},
        },
        "foreign": {
            "bccd": {"benign_or_flagged": 0.95},
            "wbc-seg": {"benign_or_flagged": 0.9, "lymphocytes_benign_unflagged": 0.25},
        },
    }
    (checked / "runcheck.json").write_text(json.dumps(check))
    out = tmp_path / "comparison"
    assert allxai_main(["compare", str(checked), str(plain), "--out", str(out)]) == 0
    capsys.readouterr()
    table = (out / "comparison.md").read_text()
    assert (
        "| Test accuracy (%) | Test F1-score (%) | Cell share (median) | Background share | Corner share "
        "| BCCD Benign or flagged | wbc-seg Benign or flagged | wbc-seg lymphocytes Benign, no flag "
        "| Parameters |" in table
    )
    assert "| allnet (cell) | 90.00 ± 5.00 |" in table
    assert "| 87.50 | 85.00 | 62.0% | 30.0% | 8.0% | 95.0% | 90.0% | 25.0% | 1,000 | 12.0 |" in table
    assert f"| 87.50 | 85.00 | {' | '.join([DASH] * 6)} | 1,000 | 12.0 |" in table
    assert "| allnet (field) |" in table


def test_compare_without_any_check_keeps_its_columns(model_base: Path, tmp_path: Path) -> None:
    from allxai.trainer.comparison import comparison_row, write_comparison

    run = _run_folder(tmp_path, model_base)
    row = comparison_row(json.loads((run / "report.json").read_text()))
    assert row["model"] == "allnet" and "check" not in row
    table = write_comparison([row], tmp_path / "out")["comparison.md"].read_text()
    assert "Cell share" not in table and "Run check" not in table
