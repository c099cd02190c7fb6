"""``allxai evaluate --ood``: the domain gate and the classifier on folders of images from elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from allxai.contract import names as contract
from tests.conftest import INPUT_SIZE, png_bytes


def _flat_and_noise(root: Path) -> tuple[Path, Path]:
    """A folder of flat images (nested, of several sizes) and one of noise, as a development suite has."""
    flat, noise = root / "flat", root / "noise"
    (flat / "greys").mkdir(parents=True)
    (noise / "deep" / "er").mkdir(parents=True)
    for i, value in enumerate((0, 90, 128, 200, 255)):
        (flat / "greys" / f"grey{i}.png").write_bytes(png_bytes(np.full((40, 60, 3), value, np.uint8)))
    (flat / "pink.jpg").write_bytes(png_bytes(np.full((96, 96, 3), (232, 205, 210), np.uint8), "JPEG"))
    (flat / "notes.txt").write_text("not an image: not counted")
    rng = np.random.default_rng(0)
    for i in range(6):
        image = rng.integers(0, 256, (64, 64, 3)) if i % 2 else rng.normal(128, 50, (64, 64, 3))
        (noise / "deep" / "er" / f"noise{i}.bmp").write_bytes(
            png_bytes(np.clip(image, 0, 255).astype(np.uint8), "BMP")
        )
    return flat, noise


@pytest.fixture(scope="module")
def test_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from allxai.trainer.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("test"), per_class=6, size=INPUT_SIZE, seed=11)


def test_the_figures_of_each_folder(
    model_base: Path, test_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from allxai.client.cli import main as allxai_main

    model = model_base / "allnet" / "1"
    flat, noise = _flat_and_noise(tmp_path / "suite")
    reports, card_out = tmp_path / "reports", tmp_path / "cards" / "card.json"
    argv = ["evaluate", "--model", str(model), "--data", str(test_data), "--reports", str(reports)]
    assert allxai_main([*argv, "--ood", str(flat), "--ood", str(noise), "--card-out", str(card_out)]) == 0
    out = capsys.readouterr().out
    assert "| set | images | flagged | AUROC | FPR@95TPR |" in out and "| flat | 6 | 100.0% |" in out

    report = json.loads((reports / "evaluation.json").read_text())
    gate = report["domain"]
    assert gate["normal_class_names"] == ["Benign"] and gate["in_domain"]["images"] == 24
    assert set(report["ood"]) == {"flat", "noise"}
    for name, folder in (("flat", flat), ("noise", noise)):
        row = report["ood"][name]
        assert row["folder"] == str(folder) and row["in_domain"] == {"data": str(test_data), "images": 24}
        assert row["images"] == 6 and row["skipped"] == []
        assert sum(row["calls"].values()) == pytest.approx(1.0)
        assert 0 <= row["fpr_at_95_tpr"] <= 1 and 0 <= row["auroc"] <= 1
        # What is flagged is never a confident blast call, and is "flagged or normal".
        assert row["confident_blast_unflagged"] <= 1 - row["flagged"]
        assert row["flagged_or_normal"] >= row["flagged"]
    flat_row = report["ood"]["flat"]
    assert flat_row["flagged"] == 1.0 and flat_row["confident_blast_unflagged"] == 0.0
    assert flat_row["flagged_or_normal"] == 1.0
    assert flat_row["auroc"] == pytest.approx(1.0) and flat_row["fpr_at_95_tpr"] == 0.0
    assert report["ood"]["noise"]["auroc"] > 0.9
    markdown = (reports / "evaluation.md").read_text()
    assert "## Development sets (--ood)" in markdown and "| noise | 6 |" in markdown

    # The copy of the card carries the figures; the export's own card is untouched.
    own = json.loads((model / contract.CARD_FILE).read_text())
    copy = json.loads(card_out.read_text())
    assert "development_sets" not in own["domain"]["figures"]
    assert copy["domain"]["figures"]["development_sets"] == report["ood"]
    assert {k: v for k, v in copy.items() if k != "domain"} == {k: v for k, v in own.items() if k != "domain"}
    from allxai.contract.card import parse_card

    assert parse_card(card_out.read_text(), complete=True).domain is not None


def test_the_measures() -> None:
    from allxai.trainer.ood_eval import accepting_score, auroc, calls

    inside = np.array([0.0, 1.0, 2.0, 3.0])
    assert auroc(inside, np.array([5.0, 6.0])) == 1.0
    assert auroc(inside, np.array([-1.0])) == 0.0
    assert auroc(inside, np.array([1.0])) == pytest.approx((1 + 0.5) / 4)  # above one, tied with one
    assert auroc(inside, np.array([np.nan])) == 1.0  # NaN is never in domain
    # 95% of 20 in-domain scores: the 19th smallest.
    assert accepting_score(np.arange(20.0)) == 18.0
    probs = np.array([[0.95, 0.05], [0.05, 0.95], [0.2, 0.8], [0.01, 0.99]])
    figures = calls(probs, np.array([0.0, 0.0, 0.0, 9.0]), 1.0, ["Benign", "Pro"], ["Benign"])
    assert figures["flagged"] == 0.25 and figures["calls"] == {"Benign": 0.25, "Pro": 0.75}
    assert figures["confident_blast_unflagged"] == 0.25  # the second; the third is not confident
    assert figures["flagged_or_normal"] == 0.5


def test_what_cannot_be_measured_is_refused(
    model_base: Path, test_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from allxai.client.cli import main as allxai_main

    model = model_base / "allnet" / "1"
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images here")
    flat, _ = _flat_and_noise(tmp_path / "suite")
    argv = ["evaluate", "--model", str(model), "--data", str(test_data), "--reports", str(tmp_path / "r")]
    cases = [
        (["--ood", str(empty)], "holds no images"),
        (["--ood", str(tmp_path / "absent")], "not a folder"),
        (["--card-out", str(tmp_path / "c.json")], "--card-out writes the figures of --ood folders"),
        (["--ood", str(flat), "--card-out", str(model / "card.json")], "is inside the export"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exited:
            allxai_main([*argv, *extra])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert "allxai evaluate: " in err and message in err and "Traceback" not in err
    assert not (model / "card.json").exists()


def test_a_model_without_a_domain_gate_is_refused(
    model_base: Path, test_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same export, its card without the ``domain`` entry (given with --card): nothing to measure."""
    from allxai.client.cli import main as allxai_main

    model = model_base / "allnet" / "1"
    card = json.loads((model / contract.CARD_FILE).read_text())
    del card["domain"]
    card_file = tmp_path / "card.json"
    card_file.write_text(json.dumps(card))
    flat, _ = _flat_and_noise(tmp_path / "suite")
    argv = ["evaluate", "--model", str(model), "--data", str(test_data), "--card", str(card_file)]
    argv += ["--reports", str(tmp_path / "reports")]
    with pytest.raises(SystemExit) as exited:
        allxai_main([*argv, "--ood", str(flat)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "allxai evaluate: the model has no domain gate" in err and "Traceback" not in err
    # Without --ood it evaluates, and says there was no gate.
    assert allxai_main(argv) == 0
    report = json.loads((tmp_path / "reports" / "evaluation.json").read_text())
    assert (
        "domain" not in report and report["domain_note"] == "no domain gate: the model card gives no 'domain'"
    )
