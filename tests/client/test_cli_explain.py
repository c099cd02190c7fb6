"""``allxai explain``: a progress bar that knows its length, and pictures kept unless ``--overwrite``."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from allxai.client.cli import main
from tests.client.fake_gateway import fake_gateway
from tests.conftest import RunningGateway


class _Terminal(io.StringIO):
    """Standard error as a terminal: tqdm draws its bars only on one."""

    def isatty(self) -> bool:
        return True


def test_the_sample_bar_shows_the_total_from_the_first_report(
    gateway: RunningGateway, cell_png: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "cell.png"
    image.write_bytes(cell_png)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    argv = ["explain", "--target", gateway.target, str(image), "--out", str(tmp_path / "out")]
    assert main([*argv, "--samples", "400", "--seed", "1", "--pictures", "overlay"]) == 0
    frames = terminal.getvalue().split("\r")
    # The gateway's first report (0 of 400) is drawn at once: the bar has its length before any sample.
    assert any(frame.startswith("cell:") and "| 0/400 [" in frame for frame in frames), frames
    assert not any("sample [" in frame and "/400" not in frame for frame in frames[2:]), frames


def test_existing_pictures_stop_explain_before_any_call_unless_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cells").mkdir()
    for name in ("a", "b"):
        (tmp_path / "cells" / f"{name}.png").write_bytes(b"in" + name.encode())
    out = tmp_path / "out"
    with fake_gateway() as (target, servicer):
        argv = ["explain", "--target", target, str(tmp_path / "cells"), "--out", str(out), "--quiet"]
        assert main([*argv, "--pictures", "overlay,mask"]) == 0
        assert sorted(p.name for p in out.iterdir()) == [
            "a_mask.png",
            "a_overlay.png",
            "b_mask.png",
            "b_overlay.png",
        ]
        (out / "b_mask.png").write_bytes(b"a reviewer's copy")
        (out / "a_overlay.png").unlink()
        capsys.readouterr()
        calls = len(servicer.requests)

        # Status 2, as for any other wrong command line, naming the first picture it would replace.
        assert main([*argv, "--pictures", "overlay,mask"]) == 2
        err = capsys.readouterr().err
        assert f"{out / 'a_mask.png'} exists; pass --overwrite" in err
        assert len(servicer.requests) == calls  # nothing was sent
        assert (out / "b_mask.png").read_bytes() == b"a reviewer's copy"

        # Pictures of other kinds are not in the way; --overwrite replaces the ones that are.
        assert main([*argv, "--pictures", "heatmap"]) == 0
        assert main([*argv, "--pictures", "overlay,mask", "--overwrite"]) == 0
        assert len(servicer.requests) == calls + 4
        assert (out / "b_mask.png").read_bytes() == b"\x89PNG fake"
        assert (out / "a_overlay.png").exists()
