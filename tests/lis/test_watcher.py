"""The folder watcher: against the real gateway, and its own decisions with a client that answers as told."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from allxai.client import (
    AllxaiClientError,
    ClassifyResult,
    Client,
    ExplainResult,
    ModelDescription,
)
from allxai.lis import _folder as files
from allxai.lis import _watcher as watcher_module
from allxai.lis import (
    parse_bundle,
    parse_oru,
)
from allxai.lis.hl7 import segments
from allxai.lis.watch import Options, Watcher, main
from tests.conftest import RunningGateway, png_bytes
from tests.lis.reports import (
    MODEL,
    _cell,
    _code,
    _explanation,
    _gated,
    _obx,
)


def _outputs_complete(image: Path, explain: bool) -> dict[str, Any]:
    """Check every output of a processed image parses, and return its marker."""
    marker = files.read_marker(image)
    assert marker is not None and marker["status"] == "ok", image.name
    summary = json.loads(files.output(image, files.JSON_SUFFIX).read_text())
    assert summary["image"] == image.name and summary["label"] in MODEL.class_names
    parse_oru(files.output(image, files.HL7_SUFFIX).read_text())
    parse_bundle(files.output(image, files.FHIR_SUFFIX).read_text())
    overlay = files.output(image, files.OVERLAY_SUFFIX)
    assert overlay.exists() == explain
    if explain:
        assert overlay.read_bytes().startswith(b"\x89PNG")
        assert summary["explanation"]["overlay"] == overlay.name
    return marker


def _no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".allxai-tmp")]


def _images(folder: Path, cell_png: bytes, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        path = folder / f"cell-{i}.png"
        path.write_bytes(cell_png)
        paths.append(path)
    return paths


def test_watch_once_processes_each_image_records_corrupt_ones_and_skips_done_on_restart(
    gateway: RunningGateway, cell_png: bytes, tmp_path: Path
) -> None:
    images = _images(tmp_path, cell_png, 2)
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "arriving.png.part").write_bytes(cell_png[:10])
    argv = [
        str(tmp_path),
        "--target",
        gateway.target,
        "--once",
        "--explain",
        "--samples",
        "60",
        "--seed",
        "1",
    ]
    assert main([*argv, "--settle", "0"]) == 0

    markers = {p.name: _outputs_complete(p, explain=True) for p in images}
    error = json.loads(files.output(bad, files.ERROR_SUFFIX).read_text())
    assert error["code"] == "INVALID_ARGUMENT"
    marker = files.read_marker(bad) or {}
    assert marker.get("status") == "error"
    # The LIS hears of the failed image as a result: OBX-11 X and a note naming the problem.
    failed = parse_oru(files.output(bad, files.HL7_SUFFIX).read_text())
    (obx,) = [s for s in segments(failed, "OBX") if s.obx_3.to_er7().startswith("ALLXAI-CLASS^")]
    assert obx.obx_11.to_er7() == "X" and obx.obx_5.to_er7() == ""
    note = obx.parent.children[obx.parent.children.index(obx) + 1]
    assert "corrupt.png could not be classified (INVALID_ARGUMENT)" in note.nte_3.to_er7()
    assert segments(failed, "OBR")[0].obr_25.to_er7() == "X"
    bundle = json.loads(files.output(bad, files.FHIR_SUFFIX).read_text())
    (diagnostic,) = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"
    ]
    assert diagnostic["status"] == "cancelled"
    suffixes = (files.ERROR_SUFFIX, ".fhir.json", ".hl7", files.RECORD_SUFFIX)
    assert set(marker["outputs"]) == {f"corrupt.png{s}" for s in suffixes}
    assert not list(tmp_path.glob("notes.txt.*")) and not list(tmp_path.glob("arriving.png.part.*"))
    _no_leftovers(tmp_path)

    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert main([*argv, "--settle", "0"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    assert {p.name: files.read_marker(p) for p in images} == markers

    # A replaced image (new bytes under the same name) is processed again.
    images[0].write_bytes(png_bytes(np.full((48, 48, 3), 200, dtype=np.uint8)))
    assert main([*argv, "--settle", "0"]) == 0
    assert _outputs_complete(images[0], explain=True)["sha256"] != markers[images[0].name]["sha256"]
    assert files.read_marker(images[1]) == markers[images[1].name]


def test_watch_waits_for_a_file_being_written(
    gateway: RunningGateway, cell_png: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "growing.png"
    # The watcher's clock is the test's: a loaded machine that stalls between two polls cannot make a
    # half-written file look settled, and the test waits for nothing.
    clock = [0.0]
    wall = time.time()
    fake = SimpleNamespace(monotonic=lambda: clock[0], time=lambda: wall + clock[0])
    monkeypatch.setattr(watcher_module, "time", fake)

    def written_now() -> None:  # the file's mtime on the same clock
        os.utime(image, ns=(int((wall + clock[0]) * 1e9),) * 2)

    with Client(gateway.target, timeout=60) as client:
        watcher = Watcher(tmp_path, client, Options(settle=2.0))
        with open(image, "wb") as f:
            f.write(cell_png[:200])
            f.flush()
            written_now()
            assert watcher.poll() == 1  # seen, not yet settled
            clock[0] += 0.5
            f.write(cell_png[200:400])
            f.flush()
            written_now()
            assert watcher.poll() == 1  # changed: the settle clock starts again
            clock[0] += 1.5
            assert watcher.poll() == 1  # 1.5 s since the last change is not enough
            assert files.read_marker(image) is None
            f.write(cell_png[400:])
        written_now()
        assert watcher.poll() == 1  # complete now, but only just written
        assert files.read_marker(image) is None
        clock[0] += 2.5  # steps exact in binary: no rounding at the settle boundary
        assert watcher.poll() == 0
    marker = _outputs_complete(image, explain=False)
    assert marker["size"] == len(cell_png)  # the whole file, not a prefix


def test_watch_stopped_between_outputs_and_marker_redoes_only_that_image(
    gateway: RunningGateway, cell_png: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = _images(tmp_path, cell_png, 3)
    real_mark = Watcher._mark
    calls = []

    def crash_on_second(self: Watcher, path: Path, *args: Any) -> None:
        calls.append(path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if killed after the outputs, before the marker
        real_mark(self, path, *args)

    monkeypatch.setattr(Watcher, "_mark", crash_on_second)
    argv = [str(tmp_path), "--target", gateway.target, "--once", "--settle", "0"]
    assert main(argv) == 130
    first = files.read_marker(images[0])
    assert first is not None and files.read_marker(images[1]) is None and files.read_marker(images[2]) is None
    assert files.output(images[1], files.HL7_SUFFIX).exists()  # outputs written, marker missing

    monkeypatch.setattr(Watcher, "_mark", real_mark)
    assert main(argv) == 0
    assert files.read_marker(images[0]) == first  # done before the stop: not processed again
    for image in images:
        _outputs_complete(image, explain=False)
    _no_leftovers(tmp_path)


def test_watch_killed_with_sigkill_then_restarted_processes_every_image_once(
    gateway: RunningGateway, cell_png: bytes, tmp_path: Path
) -> None:
    images = _images(tmp_path, cell_png, 6)
    command = [sys.executable, "-m", "allxai.lis.watch", str(tmp_path), "--target", gateway.target]
    options = [
        "--explain",
        "--samples",
        "150",
        "--settle",
        "0",
        "--interval",
        "0.1",
        "--log-level",
        "WARNING",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([*command, *options], env=env)
    try:
        deadline = time.monotonic() + 60
        while not any(files.read_marker(p) for p in images):
            assert time.monotonic() < deadline, "the watcher processed nothing"
            assert process.poll() is None, "the watcher exited"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    before = {p.name: files.read_marker(p) for p in images}
    assert 1 <= sum(m is not None for m in before.values()) < len(images)  # killed part-way through

    finished = subprocess.run([*command, *options, "--once"], env=env, timeout=120, check=False)
    assert finished.returncode == 0
    after = {p.name: _outputs_complete(p, explain=True) for p in images}
    for name, marker in before.items():
        if marker is not None:
            assert after[name] == marker  # done before the kill: untouched
    _no_leftovers(tmp_path)


def test_watch_refuses_a_second_watcher_on_the_same_folder(tmp_path: Path) -> None:
    with files.folder_lock(tmp_path) as locked:
        assert locked
        assert main([str(tmp_path), "--once", "--target", "127.0.0.1:1"]) == 2


def test_watch_retries_when_the_gateway_is_down_and_finishes_later(
    gateway: RunningGateway, cell_png: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (image,) = _images(tmp_path, cell_png, 1)
    down = ["--target", "127.0.0.1:9", "--timeout", "5", "--retry-after", "0", "--interval", "0.05"]
    with caplog.at_level(logging.WARNING, logger="allxai.lis"):
        assert main([str(tmp_path), *down, "--once", "--settle", "0", "--max-attempts", "2"]) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert "cell-0.png: attempt 1 failed (UNAVAILABLE); retrying in 0 s" in messages
    assert "cell-0.png: gave up after 2 attempts (last: UNAVAILABLE); not marked done" in messages
    assert files.read_marker(image) is None and not files.output(image, files.HL7_SUFFIX).exists()

    assert main([str(tmp_path), "--target", gateway.target, "--once", "--settle", "0"]) == 0
    _outputs_complete(image, explain=False)


def test_watch_reports_bad_security_settings_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main([str(tmp_path), "--once", "--target", "127.0.0.1:9", "--tls-ca", str(tmp_path / "no.pem")]) == 2
    )
    assert "no.pem" in capsys.readouterr().err


class FakeClient:
    """Stands in for ``Client``: records the calls, answers with ``cell`` (default ``_cell()``) or fails with
    ``error``, and fails ``model_info`` as often as told."""

    def __init__(
        self,
        model_info_failures: int = 0,
        cell: ClassifyResult | None = None,
        error: AllxaiClientError | None = None,
    ) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.model_info_failures = model_info_failures
        self.cell = cell
        self.error = error

    def _answer(self) -> ClassifyResult:
        if self.error is not None:
            raise self.error
        return self.cell or _cell()

    def classify(self, data: bytes, **ids: Any) -> ClassifyResult:
        self.calls.append(("classify", ids))
        return replace(self._answer(), image_id=ids["image_id"])

    def explain(self, data: bytes, **params: Any) -> ExplainResult:
        self.calls.append(("explain", params))
        explained = _explanation(png_bytes(np.zeros((8, 8, 3), dtype=np.uint8)))
        return replace(explained, classification=self._answer())

    def model_info(self) -> ModelDescription:
        if self.model_info_failures:
            self.model_info_failures -= 1
            raise AllxaiClientError("UNAVAILABLE", "the gateway went away")
        return MODEL


def _watcher(folder: Path, client: FakeClient, **options: Any) -> Watcher:
    return Watcher(folder, cast(Client, client), Options(settle=0, retry_after=0, **options))


def test_watch_retries_a_gateway_lost_between_classify_and_model_info(
    cell_png: bytes, tmp_path: Path
) -> None:
    (image,) = _images(tmp_path, cell_png, 1)
    client = FakeClient(model_info_failures=1)
    watcher = _watcher(tmp_path, client, max_attempts=3)
    assert watcher.poll() == 1  # UNAVAILABLE from model_info: retried, not a crash
    assert files.read_marker(image) is None
    assert watcher.poll() == 0
    _outputs_complete(image, explain=False)
    assert len(client.calls) == 2


def test_watch_retries_when_the_results_cannot_be_written(
    cell_png: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (image,) = _images(tmp_path, cell_png, 1)
    real_write = files.write_atomic

    def disk_full(*args: Any, **kwargs: Any) -> None:
        monkeypatch.setattr(files, "write_atomic", real_write)  # full once, then space again
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "write_atomic", disk_full)
    watcher = _watcher(tmp_path, FakeClient(), max_attempts=3)
    assert watcher.poll() == 1 and files.read_marker(image) is None
    assert watcher.poll() == 0
    _outputs_complete(image, explain=False)


def test_watch_records_an_image_it_cannot_report_and_goes_on(
    cell_png: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file stem too long for HL7 OBR-2 (199 characters) fails that image only, not the watcher."""
    long = tmp_path / f"{'x' * 220}.png"
    long.write_bytes(cell_png)
    (short,) = _images(tmp_path, cell_png, 1)
    with caplog.at_level(logging.ERROR, logger="allxai.lis"):
        assert _watcher(tmp_path, FakeClient(), order_id_from="stem").poll() == 0
    error = json.loads(files.output(long, files.ERROR_SUFFIX).read_text())
    assert error["code"] == "REPORT_ERROR" and "MaxLengthReached" in error["message"]
    assert (files.read_marker(long) or {}).get("status") == "error"
    assert not files.output(long, files.HL7_SUFFIX).exists()
    assert any("cannot be put into HL7/FHIR" in r.getMessage() for r in caplog.records)
    marker = _outputs_complete(short, explain=False)  # sorted after the long name: still processed
    # A restart does not meet the same failure first forever: the error is recorded and marked done.
    assert _watcher(tmp_path, FakeClient(), order_id_from="stem").poll() == 0
    assert files.read_marker(short) == marker


def test_watch_sends_the_same_ids_from_classify_and_explain_and_invents_no_specimen(
    cell_png: bytes, tmp_path: Path
) -> None:
    (image,) = _images(tmp_path, cell_png, 1)
    plain = FakeClient()
    assert _watcher(tmp_path, plain).poll() == 0
    assert plain.calls == [("classify", {"image_id": "cell-0.png", "specimen_id": "", "alpha": None})]
    hl7 = parse_oru(files.output(image, files.HL7_SUFFIX).read_text())
    (obr,) = segments(hl7, "OBR")
    assert obr.obr_2.to_er7() == "" and obr.obr_3.to_er7() == "req-42^ALLXAI" and obr.obr_7.to_er7() == ""
    assert segments(hl7, "SPM") == [] and obr.obr_25.to_er7() == "P"  # always preliminary
    fhir = json.loads(files.output(image, files.FHIR_SUFFIX).read_text())
    assert "Specimen" not in {e["resource"]["resourceType"] for e in fhir["entry"]}

    files.output(image, files.MARKER_SUFFIX).unlink()
    explained = FakeClient()
    watcher = _watcher(tmp_path, explained, explain=True, order_id_from="stem", order_namespace="LIS")
    assert watcher.poll() == 0
    ((method, params),) = explained.calls
    assert method == "explain"
    assert (params["image_id"], params["specimen_id"]) == ("cell-0.png", "cell-0")
    (obr,) = segments(parse_oru(files.output(image, files.HL7_SUFFIX).read_text()), "OBR")
    assert obr.obr_2.to_er7() == "cell-0^LIS"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sending-facility", "F" * 30], "bad HL7 option (MaxLengthReached)"),
        (["--order-namespace", "N" * 30], "bad HL7 option (MaxLengthReached)"),
        (["--seed", str(2**40)], "--seed: must be from 0 to"),
        (["--samples", "3000000000"], "--samples: must be from 0 to"),
        (["--status", "final"], "unrecognized arguments: --status"),
        (["--lis-config", "/nonexistent/lis.toml"], "cannot read the LIS configuration"),
        (["--fhir-url", "ftp://lis"], "--fhir-url wants an http(s) URL"),
        (["--outbox", "x.sqlite"], "--outbox and --metrics-file need --mllp or --fhir-url"),
    ],
)
def test_watch_refuses_bad_options_at_start_up(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main([str(tmp_path), "--once", "--target", "127.0.0.1:9", *args])
    except SystemExit as exited:
        code = exited.code  # argparse's own errors
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_watch_reports_an_image_outside_the_domain_flagged_and_sends_alpha(
    cell_png: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (image,) = _images(tmp_path, cell_png, 1)
    client = FakeClient(cell=_gated("ood"))
    with caplog.at_level(logging.INFO, logger="allxai.lis"):
        assert _watcher(tmp_path, client, alpha=0.1).poll() == 0
    assert client.calls == [("classify", {"image_id": "cell-0.png", "specimen_id": "", "alpha": 0.1})]
    assert any("OUTSIDE THE TRAINING DOMAIN, not for diagnosis" in r.getMessage() for r in caplog.records)
    _outputs_complete(image, explain=False)
    summary = json.loads(files.output(image, files.JSON_SUFFIX).read_text())
    assert summary["in_domain"] is False and summary["prediction_set"] == ["Pro", "Pre"]
    assert (summary["domain_score"], summary["domain_threshold"], summary["coverage"]) == (41.2, 12.0, 0.95)
    (predicted,) = _obx(parse_oru(files.output(image, files.HL7_SUFFIX).read_text()), "ALLXAI-CLASS")
    assert predicted.obx_8.to_er7() == "A"
    fhir = json.loads(files.output(image, files.FHIR_SUFFIX).read_text())
    (observation,) = [
        e["resource"]
        for e in fhir["entry"]
        if e["resource"]["resourceType"] == "Observation" and _code(e["resource"]) == "ALLXAI-CLASS"
    ]
    assert observation["interpretation"][0]["coding"][0]["code"] == "EX"

    # Explained: the alpha goes with the explanation, and no NaN reaches the JSON.
    files.output(image, files.MARKER_SUFFIX).unlink()
    nan = replace(_gated("in"), domain_score=float("nan"))
    explained = FakeClient(cell=nan)
    assert _watcher(tmp_path, explained, explain=True, alpha=0.2).poll() == 0
    assert explained.calls[0][1]["alpha"] == 0.2
    text = files.output(image, files.JSON_SUFFIX).read_text()
    assert "NaN" not in text and json.loads(text)["domain_score"] is None


def test_watch_records_an_image_the_gateway_refuses_as_outside_the_domain(
    cell_png: bytes, tmp_path: Path
) -> None:
    """Under the gateway's refuse policy an image outside the domain stays outside: recorded, not retried."""
    (image,) = _images(tmp_path, cell_png, 1)
    refused = AllxaiClientError("FAILED_PRECONDITION", "the image lies outside the training domain of model")
    client = FakeClient(error=refused)
    assert _watcher(tmp_path, client, max_attempts=3).poll() == 0
    error = json.loads(files.output(image, files.ERROR_SUFFIX).read_text())
    assert error["code"] == "FAILED_PRECONDITION" and "outside the training domain" in error["message"]
    assert (files.read_marker(image) or {}).get("status") == "error" and len(client.calls) == 1


def test_watch_never_records_a_refused_alpha_against_the_image(
    cell_png: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (image,) = _images(tmp_path, cell_png, 1)
    wrong = AllxaiClientError("INVALID_ARGUMENT", "alpha: alpha 0.07 was not calibrated; choose one of 0.05")
    watcher = _watcher(tmp_path, FakeClient(error=wrong), alpha=0.07, max_attempts=2)
    with caplog.at_level(logging.ERROR, logger="allxai.lis"):
        assert watcher.poll() == 1 and watcher.poll() == 0
    assert watcher.given_up == {image.name} and files.read_marker(image) is None
    assert not files.output(image, files.ERROR_SUFFIX).exists()
    assert any("the gateway refuses --alpha" in r.getMessage() for r in caplog.records)


def test_watch_refuses_an_alpha_that_cannot_be_a_level(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path), "--once", "--target", "127.0.0.1:9", "--alpha", "1.5"])
    assert exited.value.code == 2 and "--alpha: must be between 0 and 1" in capsys.readouterr().err


def test_a_watched_image_is_finalised_by_a_reviewer_from_its_record(
    gateway: RunningGateway, cell_png: bytes, tmp_path: Path
) -> None:
    from allxai.lis.commands import main as lis_main

    (image,) = _images(tmp_path, cell_png, 1)
    assert main([str(tmp_path), "--target", gateway.target, "--once", "--settle", "0"]) == 0
    preliminary = parse_oru(files.output(image, files.HL7_SUFFIX).read_text())
    record = files.output(image, files.RECORD_SUFFIX)
    assert record.name in (files.read_marker(image) or {})["outputs"]
    code = lis_main(["finalize", str(record), "--reviewer-id", "HAEM1", "--reviewer-family", "Haem"])
    assert code == 0
    final = parse_oru(files.output(image, files.HL7_SUFFIX).read_text())
    (before,), (after,) = segments(preliminary, "OBR"), segments(final, "OBR")
    assert (before.obr_25.to_er7(), after.obr_25.to_er7()) == ("P", "F")
    assert after.obr_3.to_er7() == before.obr_3.to_er7()  # the final report replaces the preliminary one
    assert after.obr_32.to_er7() == "HAEM1&Haem"
    assert json.loads(record.read_text())["revision"] == 2
