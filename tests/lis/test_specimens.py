"""Specimen folders end to end: watcher -> the real gateway -> python-hl7's MLLP receiver, exactly once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from allxai.client import Client
from allxai.lis import _folder as files
from allxai.lis import parse_oru
from allxai.lis._specimens import DONE_NAME, MANIFEST_NAME, OUTPUT_STEM, read_manifest
from allxai.lis.hl7 import segments
from allxai.lis.outbox import Outbox
from allxai.lis.watch import Options, Watcher
from tests.conftest import RunningGateway
from tests.lis.test_mllp import WAIT, Receiver, _sender


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for receiver in made:
        receiver.close()


def _specimen(root: Path, name: str, cell_png: bytes, cells: int, manifest: dict[str, str] | None) -> Path:
    folder = root / name
    folder.mkdir()
    for i in range(cells):
        (folder / f"cell-{i}.png").write_bytes(cell_png)
    if manifest is not None:
        (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    return folder


def _obx(message: object, code: str) -> list[object]:
    return [s for s in segments(message, "OBX") if s.obx_3.to_er7().split("^")[0] == code]


def test_specimens_reach_the_lis_once_each_through_a_nak_a_crash_and_a_restart(
    gateway: RunningGateway, cell_png: bytes, tmp_path: Path, receivers: list[Receiver]
) -> None:
    root, box_path = tmp_path / "in", tmp_path / "box.sqlite"
    root.mkdir()
    manifest = {
        "specimen_id": "S-2026-001",
        "order_id": "ORD-7",
        "patient_id": "MRN123",
        "patient_id_authority": "HOSP",
        "observed_at": "2026-03-04T05:06:07+00:00",
    }
    first = _specimen(root, "tray-1", cell_png, 3, manifest)
    (first / "cell-9.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")  # refused by the gateway
    folders = [first, *(_specimen(root, f"tray-{i}", cell_png, 2, None) for i in (2, 3, 4))]
    receivers.append(Receiver({1: "AE", 2: "crash"}))
    receiver = receivers[0]
    receiver.start()
    options = Options(settle=0, retry_after=0, order_id_from="stem")

    with Client(gateway.target) as client:
        box = Outbox(box_path)
        assert Watcher(root, client, options, outbox=box).poll() == 0
        queued = [e.control_id for e in box.entries()]
        assert len(queued) == 4  # one message per specimen, not per image
        sender = _sender(box, receiver.port)
        sender.start()
        assert receiver.crashed.wait(WAIT)
        assert sender.wait_until(lambda: (e := box.get(queued[2])) is not None and e.attempts >= 2, WAIT)
        sender.stop(WAIT)
        box.close()

        receiver.start()  # the LIS is back; the watcher restarts and finds every specimen done
        box = Outbox(box_path)
        assert Watcher(root, client, options, outbox=box).poll() == 0
        assert [e.control_id for e in box.entries(("pending", "failed"))] == queued[1:]
        sender = _sender(box, receiver.port)
        sender.start()
        try:
            assert sender.drain(WAIT)
            (refused,) = box.entries(("failed",))
            assert (refused.control_id, refused.ack_code) == (queued[1], "AE")
            assert box.retry(queued[1])  # by hand, once the LIS knows the order
            assert sender.drain(WAIT)
        finally:
            sender.stop(WAIT)
        assert sorted(receiver.accepted) == sorted(queued) and len(receiver.accepted) == 4
        assert receiver.arrivals[queued[1]] == 2 and receiver.arrivals[queued[2]] == 2
        assert box.depth() == {"pending": 0, "done": 4, "failed": 0} and box.entries() == []
        box.close()

    # What the first specimen's message says: patient, order, counts, blast fraction, the failed image.
    message = parse_oru(files.output(first / OUTPUT_STEM, files.HL7_SUFFIX).read_text())
    (pid,) = segments(message, "PID")
    assert pid.pid_3.to_er7() == "MRN123^^^HOSP^MR"
    (orc,), (obr,) = segments(message, "ORC"), segments(message, "OBR")
    assert orc.orc_1.to_er7() == "RE" and orc.orc_2.to_er7() == obr.obr_2.to_er7() == "ORD-7^ALLXAI"
    assert obr.obr_7.to_er7() == "20260304050607+0000"
    (total,) = _obx(message, "ALLXAI-NCELLS")
    assert total.obx_5.to_er7() == "3"
    assert len(_obx(message, "26446-3")) == 1  # the blast percentage in LOINC
    failed = [s for s in _obx(message, "ALLXAI-CLASS") if s.obx_11.to_er7() == "X"]
    assert len(failed) == 1
    note = failed[0].parent.children[failed[0].parent.children.index(failed[0]) + 1]
    assert "cell-9.png could not be classified (INVALID_ARGUMENT)" in note.nte_3.to_er7()
    summary = json.loads(files.output(first / OUTPUT_STEM, files.JSON_SUFFIX).read_text())
    assert summary["specimen_id"] == "S-2026-001" and [f["image"] for f in summary["failures"]] == [
        "cell-9.png"
    ]
    assert files.output(first / OUTPUT_STEM, files.RECORD_SUFFIX).exists()  # for the reviewer
    # Without a manifest: the folder names the specimen, and (order id from the stem) the order.
    (spm,) = segments(parse_oru(files.output(folders[1] / OUTPUT_STEM, files.HL7_SUFFIX).read_text()), "SPM")
    assert spm.spm_2.to_er7() == "tray-2&ALLXAI"


def test_a_specimen_folder_is_done_again_when_its_content_changes(
    gateway: RunningGateway, cell_png: bytes, tmp_path: Path
) -> None:
    folder = _specimen(tmp_path, "tray", cell_png, 2, None)
    with Client(gateway.target) as client:
        watcher = Watcher(tmp_path, client, Options(settle=0, retry_after=0))
        assert watcher.poll() == 0
        done = json.loads((folder / DONE_NAME).read_text())
        assert done["status"] == "ok"
        assert watcher.poll() == 0 and json.loads((folder / DONE_NAME).read_text()) == done  # nothing new
        (folder / "cell-2.png").write_bytes(cell_png)  # a late image
        assert watcher.poll() == 0
    summary = json.loads(files.output(folder / OUTPUT_STEM, files.JSON_SUFFIX).read_text())
    assert len(summary["specimen"]["cells"]) == 3
    assert json.loads((folder / DONE_NAME).read_text())["content"] != done["content"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1]", "must be a JSON object"),
        ('{"bed": "7"}', "unknown keys: bed"),
        ('{"observed_at": "2026-03-04T05:06:07"}', "must carry a time zone"),
        ('{"observed_at": "yesterday"}', "not an ISO 8601 time"),
        ('{"patient_id": 7}', "every value must be a string"),
        ("{", "cannot be read"),
    ],
)
def test_a_bad_manifest_is_named_and_the_specimen_is_not_sent(
    text: str, message: str, tmp_path: Path, gateway: RunningGateway, cell_png: bytes
) -> None:
    folder = _specimen(tmp_path, "tray", cell_png, 1, None)
    (folder / MANIFEST_NAME).write_text(text)
    with pytest.raises(ValueError, match=message):
        read_manifest(folder)
    with Client(gateway.target) as client, Outbox(tmp_path / "box.sqlite") as box:
        assert Watcher(tmp_path, client, Options(settle=0), outbox=box).poll() == 0
        assert box.entries() == []  # without its ids the LIS could not file it: a person fixes the manifest
    error = json.loads(files.output(folder / OUTPUT_STEM, files.ERROR_SUFFIX).read_text())
    assert error["code"] == "MANIFEST" and message in error["message"]
    assert json.loads((folder / DONE_NAME).read_text())["status"] == "error"
