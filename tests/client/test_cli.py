"""The ``allxai`` command over the real gateway: folders, globs, JSON, CSV, pictures, specimens, errors."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from allxai.client import Client
from allxai.client.cli import main
from tests.conftest import INPUT_SIZE, RunningGateway, png_bytes
from tests.support.client import SERVER_NAME, free_port, gateway_server, make_pki

CLASSES = ["Benign", "Early", "Pre", "Pro"]
#: A result line ends with the confidence, then what the domain check and the prediction set say, if anything.
RESULT = re.compile(r" \d+\.\d%( — (no domain check \(the model has none\)|OUTSIDE THE .+|set \{.+))?$")


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory, cell_png: bytes) -> Path:
    """A folder of five cell images: two at the top, three in sub/ (one with a name used at the top too)."""
    folder = tmp_path_factory.mktemp("cells")
    (folder / "sub").mkdir()
    rng = np.random.default_rng(1)
    noise = [rng.integers(0, 255, (INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8) for _ in range(3)]
    (folder / "a.png").write_bytes(cell_png)
    (folder / "b.PNG").write_bytes(png_bytes(noise[0]))
    (folder / "sub" / "a.png").write_bytes(png_bytes(noise[1][::-1]))
    (folder / "sub" / "c.bmp").write_bytes(png_bytes(noise[1], fmt="BMP"))
    (folder / "sub" / "d.tiff").write_bytes(png_bytes(noise[2], fmt="TIFF"))
    (folder / "notes.txt").write_text("not an image")
    return folder


def _csv(path: Path | str) -> list[dict[str, str]]:
    text = path.read_text() if isinstance(path, Path) else path
    return list(csv.DictReader(io.StringIO(text)))


def test_classify_a_folder_and_a_glob_to_json_and_csv(
    gateway: RunningGateway, cells: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_out, csv_out = tmp_path / "out" / "r.json", tmp_path / "r.csv"
    argv = ["classify", "--target", gateway.target, str(cells / "sub"), str(cells / "*.png")]
    assert main([*argv, "--json-out", str(json_out), "--csv-out", str(csv_out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # The folder recursively (bmp and tiff too, not txt), then the glob (case-insensitive suffixes are
    # a folder's business; the shell-style pattern matches as written).
    expected = [cells / "sub" / "a.png", cells / "sub" / "c.bmp", cells / "sub" / "d.tiff", cells / "a.png"]
    assert [line.split(": ")[0] for line in lines] == [str(p) for p in expected]
    assert all(RESULT.search(line) for line in lines), lines
    records = json.loads(json_out.read_text())
    assert [r["path"] for r in records] == [str(p) for p in expected]
    assert [r["image_id"] for r in records] == ["a.png", "c.bmp", "d.tiff", "a-2.png"]
    assert all(set(r["scores"]) == set(CLASSES) and r["model"] == "allnet" for r in records)
    rows = _csv(csv_out)
    assert [row["path"] for row in rows] == [r["path"] for r in records]
    assert {f"score_{c}" for c in CLASSES} <= set(rows[0])
    assert [float(row["confidence"]) for row in rows] == pytest.approx([r["confidence"] for r in records])

    # --csv prints the same rows instead of lines; a whole folder takes b.PNG as well.
    assert main(["classify", "--target", gateway.target, "--csv", str(cells)]) == 0
    rows = _csv(capsys.readouterr().out)
    assert len(rows) == 5 and rows[1]["path"] == str(cells / "b.PNG")


def test_explain_many_images_writes_four_pictures_each(
    gateway: RunningGateway, cells: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pictures"
    argv = ["explain", "--target", gateway.target, str(cells / "a.png"), str(cells / "sub" / "a.png")]
    options = [
        "--out",
        str(out),
        "--samples",
        "60",
        "--seed",
        "2",
        "--quiet",
        "--json-out",
        str(out / "e.json"),
    ]
    assert main([*argv, *options]) == 0
    # Same file names in two folders: the second one's outputs get a suffix instead of overwriting.
    kinds = ["figure", "heatmap", "mask", "overlay"]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        f"{s}_{k}.png" for s in ("a", "a-2") for k in kinds
    )
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in out.glob("*.png"))
    records = json.loads((out / "e.json").read_text())
    assert [r["seed"] for r in records] == [2, 2] and [r["num_samples"] for r in records] == [60, 60]
    assert records[1]["pictures"]["overlay"] == str(out / "a-2_overlay.png")
    assert 0 <= records[0]["cell_share"] <= 1 and records[0]["explained_label"] in CLASSES
    assert "explained" in capsys.readouterr().out

    # A folder input keeps its subfolders in the output names; --pictures picks the kinds.
    assert main(["explain", "--target", gateway.target, str(cells), "--out", str(out / "f"),
                 "--samples", "50", "--pictures", "mask", "--quiet", "--json"]) == 0  # fmt: skip
    assert sorted(p.relative_to(out / "f").as_posix() for p in (out / "f").rglob("*.png")) == [
        "a_mask.png",
        "b_mask.png",
        "sub/a_mask.png",
        "sub/c_mask.png",
        "sub/d_mask.png",
    ]
    assert len(json.loads(capsys.readouterr().out)) == 5


def test_specimen_mode_summarises_in_batches(
    gateway: RunningGateway, cells: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_out, csv_out = tmp_path / "s.json", tmp_path / "s.csv"
    argv = ["specimen", "--target", gateway.target, str(cells), "--specimen-id", "S-42", "--batch-size", "2"]
    assert main([*argv, "--json-out", str(json_out), "--csv-out", str(csv_out), "--review", "2"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("specimen S-42: 5 cells, model allnet version 1")
    assert "blast fraction" in text and "look first at" in text
    document = json.loads(json_out.read_text())
    summary = document["summary"]
    assert document["specimen_id"] == "S-42" and summary["cells"] == 5
    assert sum(summary["counts"].values()) == 5 and len(summary["review_first"]) == 2
    # The same as one ClassifySpecimen call over the same images.
    paths = [Path(c["path"]) for c in document["cells"]]
    with Client(gateway.target) as client:
        whole = client.classify_specimen(paths)
    assert summary["counts"] == whole.counts
    assert summary["blast_fraction"] == pytest.approx(whole.blast_fraction)
    least = [str(paths[i]) for i in whole.review_first[:2]]
    assert summary["review_first"] == least
    rows = _csv(csv_out)
    assert len(rows) == 5 and sorted(int(r["review_rank"]) for r in rows) == [1, 2, 3, 4, 5]
    assert [r["image_id"] for r in rows] == ["a.png", "b.PNG", "sub/a.png", "sub/c.bmp", "sub/d.tiff"]


def test_errors_are_named_per_file_without_a_traceback(
    gateway: RunningGateway, cells: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    empty = tmp_path / "empty"
    empty.mkdir()
    good = str(cells / "a.png")
    args = ["--target", gateway.target]
    csv_out = tmp_path / "c.csv"
    inputs = [good, str(junk), str(tmp_path / "gone.png"), str(empty), str(tmp_path / "*.jpg")]
    code = main(["classify", *args, *inputs, "--csv-out", str(csv_out)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{junk}: error: INVALID_ARGUMENT: image.data" in err
    assert f"{tmp_path / 'gone.png'}: error: cannot read: No such file or directory" in err
    assert f"{empty}: error: no images" in err and "*.jpg: error: no image matches" in err
    assert "Traceback" not in err
    rows = _csv(csv_out)
    assert [bool(r["error"]) for r in rows] == [False, True, True]  # the good one still classified

    # A specimen with a missing cell sends nothing; one with an undecodable cell names it.
    assert main(["specimen", *args, good, str(tmp_path / "gone.png")]) == 1
    assert "the specimen is incomplete; nothing was sent" in capsys.readouterr().err
    assert main(["specimen", *args, str(cells / "sub"), str(junk), "--batch-size", "2"]) == 1
    assert f"{junk}: error: INVALID_ARGUMENT: images[3].data" in capsys.readouterr().err

    # No gateway there; a CA file that is not there; a picture kind that does not exist.
    assert main(["info", "--target", f"127.0.0.1:{free_port()}", "--retries", "0"]) == 1
    assert "UNAVAILABLE" in (err := capsys.readouterr().err) and "is the gateway running" in err
    assert main(["classify", *args, "--tls-ca", str(tmp_path / "ca.pem"), good]) == 2
    assert "No such file or directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["explain", *args, good, "--pictures", "overlay,nope"])
    assert exited.value.code == 2 and "unknown picture 'nope'" in capsys.readouterr().err


def test_tls_and_token_flags(
    gateway: RunningGateway,
    cells: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pki = make_pki(tmp_path)
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    settings = {"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key, "auth_mode": "token"}
    with gateway_server(gateway, auth_tokens="t0ken", **settings) as target:
        port = target.rsplit(":", 1)[1]
        tls = ["--target", f"localhost:{port}", "--tls-ca", str(pki.ca), "--tls-server-name", SERVER_NAME]
        assert main(["classify", *tls, "--token-file", str(token), str(cells / "a.png")]) == 0
        assert RESULT.search(capsys.readouterr().out.strip())
        monkeypatch.setenv("ALLXAI_TOKEN", "t0ken")
        assert main(["info", *tls, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["classes"] == CLASSES
        monkeypatch.setenv("ALLXAI_TOKEN", "wrong")
        assert main(["info", *tls]) == 1
        assert "UNAUTHENTICATED" in capsys.readouterr().err
    # A token without TLS is refused unless asked for.
    assert main(["info", "--target", gateway.target]) == 2
    assert "clear text" in capsys.readouterr().err
    assert main(["info", "--target", gateway.target, "--plaintext-token"]) == 0


def test_loadtest_and_watch_are_dispatched_lazily(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    received: list[list[str]] = []
    for name in ("allxai.loadtest.tester", "allxai.lis.watch"):
        module = types.ModuleType(name)
        module.main = lambda argv: received.append(argv) or 7  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, name, module)
    assert main(["loadtest", "--target", "x:1", "-c", "4"]) == 7
    assert main(["watch", "inbox", "--once"]) == 7
    assert received == [["--target", "x:1", "-c", "4"], ["inbox", "--once"]]
    # Left to the real module, the command line reaches its own parser.
    monkeypatch.delitem(sys.modules, "allxai.loadtest.tester")
    with pytest.raises(SystemExit) as exited:
        main(["loadtest", "--help"])
    assert exited.value.code == 0 and "usage" in capsys.readouterr().out


def test_the_commands_of_every_installed_part_are_listed_from_their_entry_points(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    for name in ("serve", "train", "evaluate", "export", "compare", "watch", "loadtest"):
        assert f"allxai {name} -h" in out, name
    assert "(not installed" not in out


def test_a_command_whose_extra_is_missing_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from importlib.metadata import PackageNotFoundError, distribution

    from allxai.client import _plugins

    def without_hl7apy(name: str) -> Any:
        if name == "hl7apy":
            raise PackageNotFoundError(name)
        return distribution(name)

    monkeypatch.setattr(_plugins, "distribution", without_hl7apy)
    monkeypatch.delitem(sys.modules, "allxai.lis.watch", raising=False)
    assert main(["watch", "inbox"]) == 2
    err = capsys.readouterr().err
    assert "allxai watch is not installed here: it needs hl7apy" in err
    assert "pip install 'allxai[lis]'" in err
    assert "allxai.lis.watch" not in sys.modules  # nothing of it was imported
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "watch     (not installed: pip install 'allxai[lis]')" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["explain", "--samples", "3000000000"], "--samples: must be from 0 to 2147483647"),
        (["explain", "--samples", "-1"], "--samples: must be from 0 to"),
        (["explain", "--top-k", "0"], "--top-k: must be from 1 to"),
        (["explain", "--seed", str(2**63)], "--seed: must be from 0 to 4294967295"),
        (["explain", "--seed", "x"], "--seed: not an integer"),
        (["classify", "--timeout", "0"], "--timeout: must be positive"),
        (["classify", "--retries", "5"], "--retries: must be from 0 to 4"),
        (["specimen", "--batch-size", "0"], "--batch-size: must be from 1 to"),
    ],
)
def test_numbers_out_of_range_exit_2_with_a_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*args, "cell.png"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and message in err and "Traceback" not in err


def test_an_output_file_that_cannot_be_written_is_refused_before_any_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The gateway is not even there: the check comes first, so no work is lost to it.
    target = ["--target", "127.0.0.1:9"]
    (tmp_path / "file").write_text("")
    for flag in ("--json-out", "--csv-out"):
        with pytest.raises(SystemExit) as exited:
            main(["classify", *target, "a.png", flag, str(tmp_path / "file" / "r.out")])
        assert exited.value.code == 2 and f"{flag}: cannot make the folder" in capsys.readouterr().err
        with pytest.raises(SystemExit) as exited:
            main(["classify", *target, "a.png", flag, str(tmp_path)])
        assert exited.value.code == 2 and "is a folder" in capsys.readouterr().err
