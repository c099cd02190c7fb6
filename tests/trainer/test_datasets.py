"""Dataset layouts, groups, duplicates and bad data: every problem reported, none silent."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from allxai.contract.preprocessing import prepare_image
from allxai.trainer.datasets import DatasetError, Sample, check_trainable, detect_layout, index_dataset
from allxai.trainer.loading import load_samples, summary
from allxai.trainer.neardup import near_duplicates
from allxai.trainer.splits import group_holdout, group_kfold
from tests.conftest import png_bytes


def cell(value: int, size: int = 12) -> bytes:
    rng = np.random.default_rng(value)
    return png_bytes(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def make_cnmc(root: Path) -> Path:
    """C-NMC's training layout: fold_0..2/{all,hem}; subject 2 appears in two folds."""
    n = 0
    for fold, patients in (("fold_0", ("1", "H6")), ("fold_1", ("2", "H7")), ("fold_2", ("2", "H8"))):
        for patient in patients:
            label = "hem" if patient.startswith("H") else "all"
            folder = root / "C-NMC_training_data" / fold / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(3):
                n += 1
                (folder / f"UID_{patient}_{i}_1_{label}.bmp").write_bytes(cell(n))
    return root


def test_cnmc_layout_groups_by_patient_and_reports_subjects_across_folds(tmp_path: Path) -> None:
    index = index_dataset(make_cnmc(tmp_path))
    assert index.layout == "cnmc"
    assert index.class_names == ["all", "hem"]
    assert index.counts() == {"all": 9, "hem": 9}
    assert {s.group for s in index.samples} == {f"patient:{p}" for p in ("1", "2", "H6", "H7", "H8")}
    assert any("1 subjects span several organiser folds: patient:2" in n for n in index.notes)


def test_cnmc_preliminary_test_set_with_its_label_csv(tmp_path: Path) -> None:
    root = make_cnmc(tmp_path)
    prelim = root / "C-NMC_test_prelim_phase_data"
    prelim.mkdir()
    (prelim / "1.bmp").write_bytes(cell(100))
    (prelim / "2.bmp").write_bytes(cell(101))
    (root / "C-NMC_test_prelim_phase_data_labels.csv").write_text(
        "Patient_ID,new_names,labels\nUID_57_29_1_all.bmp,1.bmp,1\nUID_H40_60_1_hem.bmp,2.bmp,0\n"
    )
    index = index_dataset(root)
    assert [(s.path.name, s.label) for s in index.test_samples] == [("1.bmp", 0), ("2.bmp", 1)]


def test_real_cnmc_sample(shared_data: Path) -> None:
    index = index_dataset(shared_data / "cnmc-sample")
    assert index.layout == "cnmc"
    assert index.counts() == {"all": 3, "hem": 3}
    assert {s.group for s in index.samples} == {"patient:1", "patient:H6"}


def make_aria(root: Path, per_class: int = 30) -> Path:
    for c, name in enumerate(("Benign", "Early", "Pre", "Pro")):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(1, per_class + 1):
            (folder / f"WBC-{name}-{i:03d}.jpg").write_bytes(cell(1000 * c + i))
    return root


def test_aria_blocks_duplicates_and_binary_task(tmp_path: Path) -> None:
    root = make_aria(tmp_path)
    (root / "Pro" / "WBC-Pro-031.jpg").write_bytes((root / "Pro" / "WBC-Pro-030.jpg").read_bytes())
    index = index_dataset(root, block_size=10)
    assert detect_layout(root) == "aria"
    assert index.counts()["Pro"] == 30, "the byte-identical copy is removed"
    assert index.duplicates == [(str(root / "Pro" / "WBC-Pro-031.jpg"), "same bytes as WBC-Pro-030.jpg")]
    groups = {s.group for s in index.samples if s.label == 0}
    assert groups == {"Benign:0", "Benign:1", "Benign:2", "Benign:3"}, "numbers 1-9, 10-19, 20-29, 30"
    binary = index_dataset(root, task="binary")
    assert binary.class_names == ["ALL", "normal"]
    assert binary.counts() == {"ALL": 90, "normal": 30}


def test_the_same_bytes_under_two_labels_are_dropped_and_reported(tmp_path: Path) -> None:
    root = make_aria(tmp_path, per_class=6)
    (root / "Pre" / "WBC-Pre-007.jpg").write_bytes((root / "Early" / "WBC-Early-002.jpg").read_bytes())
    (root / "Early" / "WBC-Early-008.jpg").write_bytes((root / "Early" / "WBC-Early-002.jpg").read_bytes())
    index = index_dataset(root)
    names = {s.path.name for s in index.samples}
    assert not names & {"WBC-Early-002.jpg", "WBC-Early-008.jpg", "WBC-Pre-007.jpg"}, "no copy kept"
    assert index.counts() == {"Benign": 6, "Early": 5, "Pre": 6, "Pro": 6}
    reason = (
        "same bytes under different labels: WBC-Early-002.jpg (Early), WBC-Early-008.jpg (Early), "
        "WBC-Pre-007.jpg (Pre); all copies dropped"
    )
    assert sorted(index.duplicates) == sorted(
        (str(root / folder / name), reason)
        for folder, name in (
            ("Early", "WBC-Early-002.jpg"),
            ("Early", "WBC-Early-008.jpg"),
            ("Pre", "WBC-Pre-007.jpg"),
        )
    )
    assert "same bytes under different labels for 1 image(s): every copy dropped" in index.notes
    assert summary(index)["duplicates_removed"] == 3


def test_real_aria_duplicates_and_near_duplicates(shared_data: Path) -> None:
    index = index_dataset(shared_data / "aria-all" / "Original")
    assert index.counts() == {"Benign": 404, "Early": 785, "Pre": 763, "Pro": 616}
    assert len(index.duplicates) == 34, "the Pro class's byte-identical pairs"
    pro = sorted(s.path for s in index.samples if s.label == 3)[:40]
    assert near_duplicates(pro), "consecutive smear images are near-duplicates"
    # Smears that cross a block boundary of 20 numbers: their groups are joined before any split.
    assert set(index.groups_joined) == {
        "Benign:11+Benign:12",
        "Early:24+Early:25",
        "Early:28+Early:29",
        "Pro:10+Pro:11",
    }
    group = {s.path.name: s.group for s in index.samples}
    assert group["WBC-Malignant-Early-499.jpg"] == group["WBC-Malignant-Early-501.jpg"]
    assert group["WBC-Malignant-Pro-219.jpg"] == group["WBC-Malignant-Pro-220.jpg"]
    assert len(index.near_duplicates) > 40


def smooth(shift: int, size: int = 32) -> np.ndarray:
    """A smooth picture whose difference hash survives a tiny change in one pixel."""
    y, x = np.mgrid[0:size, 0:size]
    image = np.stack([(x * 7 + y * 3) % 256, (x * x + y) % 256, (y * 5) % 256], axis=-1).astype(np.uint8)
    image[0, 0, 0] = shift  # different bytes, so exact-duplicate removal keeps both
    return image


def test_near_duplicates_across_a_block_boundary_share_a_group(tmp_path: Path) -> None:
    root = make_aria(tmp_path, per_class=24)
    early = root / "Early"
    # 19 and 20 sit in different blocks of 10 (1-9, 10-19, 20-29): the same cell, twice.
    (early / "WBC-Early-019.jpg").write_bytes(png_bytes(smooth(1)))
    (early / "WBC-Early-020.jpg").write_bytes(png_bytes(smooth(2)))
    index = index_dataset(root, block_size=10)
    group = {s.path.name: s.group for s in index.samples}
    assert group["WBC-Early-019.jpg"] == group["WBC-Early-020.jpg"] == "Early:1+Early:2"
    assert group["WBC-Early-011.jpg"] == "Early:1+Early:2", "the whole blocks join, transitively"
    assert group["WBC-Early-021.jpg"] == "Early:1+Early:2"
    assert index.groups_joined == {"Early:1+Early:2": ["Early:1", "Early:2"]}
    assert [(a, b) for a, b, _ in index.near_duplicates] == [("WBC-Early-019.jpg", "WBC-Early-020.jpg")]
    assert any("1 groups joined across block boundaries: Early:1+Early:2" in n for n in index.notes)
    report = summary(index)
    assert report["near_duplicates"] == 1 and report["groups_joined"] == index.groups_joined
    # A split can no longer put one copy in training and the other in the test set.
    labels = np.array([s.label for s in index.samples])
    groups = [s.group for s in index.samples]
    for seed in range(5):
        _, test = group_holdout(labels, groups, 0.3, seed=seed)
        names = {index.samples[i].path.name for i in test}
        assert ("WBC-Early-019.jpg" in names) == ("WBC-Early-020.jpg" in names)
    off = index_dataset(root, block_size=10, near_duplicate_distance=-1)
    assert {s.path.name: s.group for s in off.samples}["WBC-Early-020.jpg"] == "Early:2"
    assert not off.groups_joined


def test_group_splits_never_share_a_group(tmp_path: Path) -> None:
    index = index_dataset(make_aria(tmp_path), block_size=5)
    labels = np.array([s.label for s in index.samples])
    groups = [s.group for s in index.samples]
    train, test = group_holdout(labels, groups, 0.2, seed=0)
    assert not {groups[i] for i in train} & {groups[i] for i in test}
    assert set(labels[test]) == {0, 1, 2, 3}
    folds = list(group_kfold(labels, groups, 3, seed=0))
    assert sorted(np.concatenate([v for _, v in folds]).tolist()) == list(range(len(labels)))


def test_missing_and_non_folder_roots(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        index_dataset(tmp_path / "absent")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="is not a folder"):
        index_dataset(tmp_path / "file.txt")


def test_a_class_with_a_single_image_is_refused_with_its_name(tmp_path: Path) -> None:
    for name, n in (("many", 6), ("single", 1)):
        (tmp_path / name).mkdir()
        for i in range(n):
            (tmp_path / name / f"{i}.png").write_bytes(cell(hash(name) % 1000 + i))
    with pytest.raises(
        DatasetError, match=r"too few images to split \(single has 1\); each class needs at least 4"
    ):
        check_trainable(index_dataset(tmp_path), min_per_class=4)


def encoded(array: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    image = Image.fromarray(array) if mode is None else Image.fromarray(array, mode=mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_odd_modes_are_converted_and_counted_unreadable_files_reported(tmp_path: Path) -> None:
    folder = tmp_path / "x"
    folder.mkdir()
    files = {
        "gray.png": encoded(np.full((8, 8), 100, np.uint8)),
        "rgba.png": encoded(np.full((8, 8, 4), 200, np.uint8)),
        "deep.png": encoded(np.full((8, 8), 40000, np.uint16)),
        "rgb.png": encoded(np.full((8, 8, 3), 7, np.uint8)),
        "broken.png": b"\x89PNG\r\n\x1a\nbroken",
        "empty.jpg": b"",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    samples = [Sample(folder / name, 0, name) for name in files]
    loaded = load_samples(samples, (8, 8))
    assert sorted(p.name for p in loaded.paths) == ["deep.png", "gray.png", "rgb.png", "rgba.png"]
    assert loaded.modes == {"L": 1, "RGBA": 1, "RGB": 1, "I;16": 1}
    reasons = {Path(p).name: why for p, why in loaded.skipped}
    assert set(reasons) == {"broken.png", "empty.jpg"}
    assert reasons["empty.jpg"] == "the image is empty (0 bytes)"
    assert "not a readable image" in reasons["broken.png"]
    assert loaded.images.dtype == np.uint8 and loaded.images.shape == (4, 8, 8, 3)


def test_the_report_lists_everything(tmp_path: Path) -> None:
    root = make_aria(tmp_path, per_class=6)
    (root / "Pre" / "notes.txt").write_text("not an image")
    index = index_dataset(root)
    report = summary(index, load_samples(index.samples, (8, 8)))
    assert report["counts"] == {"Benign": 6, "Early": 6, "Pre": 6, "Pro": 6}
    assert report["skipped"] == [
        [str(root / "Pre" / "notes.txt"), "not an image file name (.png .jpg .bmp .tif)"]
    ]
    assert report["modes"] == {"RGB": 24}
    assert report["sizes"] == {"12x12": 24}


def test_training_and_serving_give_the_same_tensor_for_real_images(shared_data: Path) -> None:
    """No train/serve skew: the trainer's loader and the gateway's preparation are one code path."""
    from allxai.server.core import Diagnosis  # noqa: F401  (the gateway imports prepare from here)
    from allxai.server.core import prepare as gateway_prepare

    def serve_tensor_of(data: bytes, size: tuple[int, int]) -> np.ndarray:
        return gateway_prepare(data, size, None).input

    paths = [
        next((shared_data / "cnmc-sample" / "all").glob("*.bmp")),
        next((shared_data / "aria-all" / "Original" / "Early").glob("*.jpg")),
    ]
    for size in ((299, 299), (224, 224), (96, 96)):
        loaded = load_samples([Sample(p, 0, p.name) for p in paths], size)
        for path, train_tensor in zip(paths, loaded.images, strict=True):
            assert np.array_equal(train_tensor, serve_tensor_of(path.read_bytes(), size))
            # A field model's input is the image resized, as before cell models came.
            assert np.array_equal(train_tensor, prepare_image(path.read_bytes(), size))
