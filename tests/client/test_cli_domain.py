"""The `allxai` command on the domain gate and the prediction sets, with a gateway that answers as told."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from allxai.client import ModelDescription
from allxai.client._commands import uncalibrated as uncalibrated_alpha
from allxai.client._output import cell_line, domain_words, json_text, set_words
from allxai.client.cli import main
from tests.client.fake_gateway import EXPLAIN_WARNING, FakeServicer, fake_gateway


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[str, FakeServicer]]:
    with fake_gateway() as running:
        yield running


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    """One image file per kind of answer (the fake gateway answers from the bytes)."""
    made = {}
    for kind in ("in", "amb", "ood", "nocheck", "nan"):
        made[kind] = tmp_path / f"{kind}.png"
        made[kind].write_bytes(kind.encode() + b" image")
    return made


def test_the_words_for_each_answer() -> None:
    assert (
        domain_words(False, 41.2, 12.0)
        == "OUTSIDE THE TRAINING DOMAIN (score 41.2 > 12.0); not for diagnosis"
    )
    # As many decimals as it takes to tell the score from the threshold.
    assert (
        domain_words(False, 0.00123, 0.001)
        == "OUTSIDE THE TRAINING DOMAIN (score 0.0012 > 0.0010); not for diagnosis"
    )
    assert domain_words(False, None, None) == "OUTSIDE THE TRAINING DOMAIN; not for diagnosis"
    assert domain_words(True, 3.0, 12.0) == ""
    assert domain_words(None, None, None) == "no domain check (the model has none)"
    assert set_words(["Pre", "Pro"], 0.95) == "set {Pre, Pro} at 95%"
    assert set_words(["Pre", "Pro", "Early"], 0.975) == "set {Pre, Pro, Early} at 97.5%"
    assert set_words(["Pro"], 0.95) == "" and set_words([], 0.95) == "" and set_words([], None) == ""
    record = {
        "display_name": "Pro-B ALL",
        "confidence": 0.999,
        "in_domain": False,
        "domain_score": 41.2,
        "domain_threshold": 12.0,
        "prediction_set": ["Pro", "Pre"],
        "coverage": 0.95,
    }
    assert cell_line(record) == (
        "Pro-B ALL 99.9% — OUTSIDE THE TRAINING DOMAIN (score 41.2 > 12.0); not for diagnosis; "
        "set {Pro, Pre} at 95%"
    )
    assert (
        json_text({"x": float("nan"), "y": [float("inf")]}) == '{\n  "x": null,\n  "y": [\n    null\n  ]\n}\n'
    )


def test_classify_says_outside_the_domain_the_set_and_a_missing_check(
    fake: tuple[str, FakeServicer], images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    target, _ = fake
    paths = [str(images[k]) for k in ("in", "amb", "ood", "nocheck")]
    assert main(["classify", "--target", target, *paths]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [
        f"{images['in']}: Pro-B ALL 95.0%",
        f"{images['amb']}: Pre-B ALL 56.0% — set {{Pre, Pro}} at 95%",
        f"{images['ood']}: Pro-B ALL 99.9% — OUTSIDE THE TRAINING DOMAIN (score 41.2 > 12.0); not for "
        "diagnosis; set {Pro, Pre} at 95%",
        f"{images['nocheck']}: Pro-B ALL 93.0% — no domain check (the model has none)",
    ]


def test_classify_json_and_csv_carry_the_domain_and_the_set(
    fake: tuple[str, FakeServicer],
    images: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target, servicer = fake
    paths = [str(images[k]) for k in ("ood", "nocheck", "nan")]
    csv_out = tmp_path / "r.csv"
    assert (
        main(["classify", "--target", target, "--json", "--alpha", "0.1", *paths, "--csv-out", str(csv_out)])
        == 0
    )
    assert servicer.requests[-1].alpha == pytest.approx(0.1)
    text = capsys.readouterr().out
    assert "NaN" not in text
    ood, nocheck, nan = json.loads(text)
    assert ood["in_domain"] is False and ood["prediction_set"] == ["Pro", "Pre"]
    assert (ood["domain_score"], ood["domain_threshold"], ood["coverage"]) == (41.2, 12.0, 0.9)
    assert nocheck["in_domain"] is None and nocheck["prediction_set"] == [] and nocheck["coverage"] is None
    assert nan["in_domain"] is True and nan["domain_score"] is None  # NaN is null, never NaN
    rows = list(csv.DictReader(io.StringIO(csv_out.read_text())))
    assert {"in_domain", "domain_score", "domain_threshold", "prediction_set", "coverage"} <= set(rows[0])
    assert (rows[0]["in_domain"], rows[0]["prediction_set"], rows[0]["domain_score"]) == (
        "False",
        "Pro|Pre",
        "41.2",
    )
    assert (rows[1]["in_domain"], rows[1]["prediction_set"], rows[1]["coverage"]) == ("", "", "")


def test_an_alpha_the_model_was_not_calibrated_for_is_refused_before_any_image(
    fake: tuple[str, FakeServicer], images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    target, servicer = fake
    sent = len(servicer.requests)
    for command in ("classify", "explain", "specimen"):
        assert main([command, "--target", target, "--alpha", "0.07", str(images["in"])]) == 2
        err = capsys.readouterr().err
        assert "--alpha 0.07 was not calibrated for model allnet; choose one of 0.05, 0.1, 0.2" in err
    assert len(servicer.requests) == sent
    uncalibrated = ModelDescription("plain", 1, ["A", "B"], (8, 8), {})
    assert uncalibrated_alpha(uncalibrated, None) == ""
    assert uncalibrated_alpha(uncalibrated, 0.05) == (
        "model plain carries no conformal calibration: it gives no prediction sets, so --alpha cannot be used"
    )
    for bad in ("0", "1", "x"):
        with pytest.raises(SystemExit) as exited:
            main(["classify", "--target", target, "--alpha", bad, str(images["in"])])
        assert exited.value.code == 2 and "--alpha" in capsys.readouterr().err


def test_explain_prints_the_domain_and_the_warnings(
    fake: tuple[str, FakeServicer],
    images: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target, servicer = fake
    argv = ["explain", "--target", target, str(images["ood"]), "--out", str(tmp_path / "out"), "--quiet"]
    assert main([*argv, "--alpha", "0.2", "--pictures", "overlay"]) == 0
    assert servicer.requests[-1].request.alpha == pytest.approx(0.2)
    line, warning = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(
        "Pro-B ALL 99.9% — OUTSIDE THE TRAINING DOMAIN (score 41.2 > 12.0); not for diagnosis; "
        "set {Pro, Pre} at 80% (explained Pro with 10 samples"
    )
    assert warning == f"  warning: {EXPLAIN_WARNING}"
    assert main([*argv, "--json", "--pictures", "overlay", "--overwrite"]) == 0  # the same --out again
    [record] = json.loads(capsys.readouterr().out)
    assert record["warnings"] == [EXPLAIN_WARNING] and record["in_domain"] is False


def test_specimen_counts_the_cells_outside_the_domain_and_says_needs_review(
    fake: tuple[str, FakeServicer],
    images: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target, servicer = fake
    folder = tmp_path / "specimen"
    folder.mkdir()
    for name, kind in (("a", "in"), ("b", "ood"), ("c", "ood"), ("d", "amb"), ("e", "ood")):
        (folder / f"{name}.png").write_bytes(kind.encode())
    json_out = tmp_path / "s.json"
    argv = ["specimen", "--target", target, str(folder), "--specimen-id", "S-7", "--alpha", "0.05"]
    assert main([*argv, "--json-out", str(json_out), "--review", "2"]) == 0
    assert servicer.requests[-1].alpha == pytest.approx(0.05)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "specimen S-7: 5 cells, model allnet version 2"
    assert lines[1] == "NEEDS REVIEW: 3 of 5 cells lie outside the training domain"
    assert "blast fraction 100.0% of 2 cells counted (inside the training domain)" in lines
    assert "outside the training domain: 3 cells (not counted, not for diagnosis)" in lines
    assert "ambiguous (prediction set of more than one class): 4 cells" in lines
    outside = "Pro-B ALL 99.9% — OUTSIDE THE TRAINING DOMAIN (score 41.2 > 12.0); not for diagnosis"
    assert lines[-3:] == [
        "look first at (outside the training domain first, then the least confident):",
        f"    1. {folder / 'b.png'}  {outside}; set {{Pro, Pre}} at 95%",
        f"    2. {folder / 'c.png'}  {outside}; set {{Pro, Pre}} at 95%",
    ]
    document = json.loads(json_out.read_text())
    summary = document["summary"]
    assert (summary["out_of_domain"], summary["ambiguous"], summary["counted"]) == (3, 4, 2)
    assert summary["needs_review"] is True and summary["domain_checked"] is True
    assert summary["review_reason"] == "3 of 5 cells lie outside the training domain"
    assert [c["in_domain"] for c in document["cells"]] == [True, False, False, True, False]

    # Without a domain check: every cell counted, and said so; no review asked.
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("a", "b"):
        (plain / f"{name}.png").write_bytes(b"nocheck")
    assert main(["specimen", "--target", target, str(plain)]) == 0
    text = capsys.readouterr().out
    assert "blast fraction 100.0% of 2 cells counted; no domain check (the model has none)" in text
    assert "NEEDS REVIEW" not in text and "outside the training domain:" not in text
