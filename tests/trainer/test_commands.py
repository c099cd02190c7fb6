"""``allxai train`` on the command line: bad requests end in one clear line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from allxai.client.cli import main as allxai_main


def test_a_taken_export_version_is_refused_before_any_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "models" / "allnet" / "1"
    taken.mkdir(parents=True)
    reports = tmp_path / "reports"
    argv = ["train", "--synthetic", "4", "--input-size", "32", "--epochs", "1"]
    argv += ["--out", str(tmp_path / "models"), "--version", "1", "--reports", str(reports)]
    with pytest.raises(SystemExit) as exited:
        allxai_main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "allxai train:" in err and "exists already; choose a new version number" in err
    assert "Traceback" not in err
    assert not reports.exists(), "nothing was trained or written: no reports, no model card"
    assert list(taken.iterdir()) == [], "the existing version is untouched"
