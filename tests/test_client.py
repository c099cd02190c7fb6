"""The thin client: no TensorFlow on import, and the CLI's output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from allxai.client import AllxaiClientError, Client
from allxai.client.cli import main
from tests.conftest import RunningGateway


def test_importing_the_sdk_and_cli_does_not_import_tensorflow() -> None:
    code = (
        "import sys, allxai.client, allxai.client.cli; "
        "heavy = [m for m in ('tensorflow', 'keras', 'lime', 'skimage') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sdk_classify_and_explain(gateway: RunningGateway, cell_png: bytes) -> None:
    with Client(gateway.target, timeout=60) as client:
        result = client.classify(cell_png, image_id="x")
        assert result.model == "allnet" and result.image_id == "x"
        assert set(result.scores) == {"Benign", "Early", "Pre", "Pro"}
        seen: list[int] = []
        explained = client.explain(
            cell_png,
            num_samples=100,
            seed=4,
            pictures=["overlay", "figure"],
            progress=lambda done, total: seen.append(done),
        )
        assert explained.seed == 4 and set(explained.pictures) == {"overlay", "figure"}
        assert seen and seen[-1] == 100
        with pytest.raises(AllxaiClientError, match=r"INVALID_ARGUMENT: image\.data"):
            client.classify(b"nope")


def test_cli_classify_lines_and_json(
    gateway: RunningGateway, cell_png: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "cell.png"
    image.write_bytes(cell_png)
    assert main(["classify", "--target", gateway.target, str(image)]) == 0
    line = capsys.readouterr().out.strip()
    # One line such as "Pro-B ALL 97.3%": the model card's display name and the confidence.
    assert line.split()[-1].endswith("%")
    assert any(
        line.startswith(n) for n in ("Benign (hematogones)", "Early pre-B ALL", "Pre-B ALL", "Pro-B ALL")
    )

    assert main(["classify", "--json", "--target", gateway.target, str(image)]) == 0
    [record] = json.loads(capsys.readouterr().out)
    assert record["path"] == str(image) and record["image_id"] == "cell.png"


def test_cli_explain_writes_pictures(gateway: RunningGateway, cell_png: bytes, tmp_path: Path) -> None:
    image = tmp_path / "cell.png"
    image.write_bytes(cell_png)
    out = tmp_path / "out"
    assert (
        main(
            [
                "explain",
                "--target",
                gateway.target,
                str(image),
                "--out",
                str(out),
                "--samples",
                "100",
                "--seed",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "cell_figure.png",
        "cell_heatmap.png",
        "cell_mask.png",
        "cell_overlay.png",
    ]


def test_cli_reports_a_bad_file(
    gateway: RunningGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    assert main(["classify", "--target", gateway.target, str(bad), str(tmp_path / "missing.png")]) == 1
    err = capsys.readouterr().err
    assert "bad.png: error: INVALID_ARGUMENT" in err
    assert "missing.png: error:" in err
