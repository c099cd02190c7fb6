"""What the review of the LIS side found: nothing half-queued or lost, no crash on a vanishing folder."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import cast

import numpy as np

from allxai.client import AllxaiClientError, Client
from allxai.lis import _folder as files
from allxai.lis._image import Options, render_failure
from allxai.lis.fhir_post import _outcome_reason, bundle_identifier
from allxai.lis.outbox import Outbox
from allxai.lis.watch import Watcher
from allxai.server.backends.workers import InteractiveGate, PriorityPool
from tests.conftest import png_bytes
from tests.lis.reports import MODEL
from tests.lis.test_watcher import FakeClient


def test_a_result_half_queued_is_completed_from_its_file_not_sent_twice(tmp_path: Path) -> None:
    image = tmp_path / "S1.png"
    image.write_bytes(png_bytes(np.full((8, 8, 3), 3, dtype=np.uint8)))
    box_path, client = tmp_path / "box.sqlite", FakeClient()
    with Outbox(box_path) as hl7, Outbox(box_path) as fhir:
        watcher = Watcher(tmp_path, cast(Client, client), Options(settle=0), outbox=hl7, fhir_outbox=fhir)
        assert watcher.poll() == 0
        (bundle,) = fhir.entries(("pending",), kind="fhir")
        (message,) = hl7.entries(("pending",), kind="hl7")
        # As if the watcher had stopped after the HL7 put: the bundle never queued, no marker written.
        assert fhir.drop(bundle.control_id)
        files.output(image, files.MARKER_SUFFIX).unlink()
        again = Watcher(tmp_path, cast(Client, client), Options(settle=0), outbox=hl7, fhir_outbox=fhir)
        assert again.poll() == 0
        assert len(client.calls) == 1  # not classified again
        assert [e.control_id for e in hl7.entries(("pending",), kind="hl7")] == [message.control_id]  # once
        (requeued,) = fhir.entries(("pending",), kind="fhir")
        text = files.output(image, files.FHIR_SUFFIX).read_text()
        assert requeued.control_id == bundle_identifier(text) == bundle.control_id
        assert files.read_marker(image) is not None


def test_a_specimen_folder_removed_while_it_settles_is_forgotten(tmp_path: Path) -> None:
    folder = tmp_path / "tray"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes(np.zeros((8, 8, 3), dtype=np.uint8)))
    watcher = Watcher(tmp_path, cast(Client, FakeClient()), Options(settle=3600.0))
    assert watcher.poll() == 1  # waiting for the folder to settle
    shutil.rmtree(folder)
    assert watcher.poll() == 0  # --once would end here rather than wait for ever


def test_failures_of_new_bytes_under_one_name_are_new_reports(tmp_path: Path) -> None:
    error = AllxaiClientError("INVALID_ARGUMENT", "image.data: not an image")
    image = tmp_path / "bad.png"
    keys = set()
    for digest in ("aaaa", "bbbb"):
        _, outputs = render_failure(image, error, MODEL, Options(), "", digest)
        keys.add(bundle_identifier(dict(outputs)[files.FHIR_SUFFIX].decode()))
    assert len(keys) == 2  # the outbox would drop a second failure under the first one's key


def test_a_malformed_operation_outcome_is_read_without_failing() -> None:
    for body in (
        '{"resourceType": "OperationOutcome", "issue": "broken"}',
        '{"resourceType": "OperationOutcome", "issue": [{"details": "x", "expression": "Patient"}, 7]}',
    ):
        assert isinstance(_outcome_reason(body), str)


def test_without_a_reserved_thread_the_gate_never_holds_bulk_work() -> None:
    gate = InteractiveGate(max_defer=600.0)
    pool = PriorityPool(2, "test-pool", reserved=0, gate=gate)
    ran = threading.Event()
    try:
        with gate.active():
            pool.put(1, ran.set)
            # No thread is kept for the classification: holding this one could hold the classification too.
            assert ran.wait(30)
    finally:
        pool.shutdown(wait=True)


def test_the_mllp_sender_drains_its_own_kind_only(tmp_path: Path) -> None:
    from allxai.lis.mllp import MllpSender

    with Outbox(tmp_path / "box.sqlite") as box:
        box.put('{"resourceType": "Bundle"}', kind="fhir", key="bundle-1")  # the FHIR sender's, none runs
        sender = MllpSender(box, "127.0.0.1", 9)
        assert sender.drain(timeout=5)  # no HL7 message is pending: nothing to wait for
