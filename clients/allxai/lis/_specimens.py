"""Specimen folders for the watcher: every sub-folder of the watched folder is one specimen, and gives one
report (HL7 ORU^R01 with PID, ORC and OBR; a FHIR bundle) with the counts per class, the blast fraction, the
cells outside the domain, the ambiguous ones and the cells to review first.

A folder is taken once its files have stayed unchanged for the settle time. ``manifest.json`` in it, when
present, names the specimen, the order and the patient::

    {"specimen_id": "S-2026-001", "order_id": "ORD-7", "patient_id": "MRN123",
     "patient_id_authority": "HOSP", "observed_at": "2026-03-04T05:06:07+00:00"}

Without one the specimen id is the folder's name (and the order id too with ``--order-id-from stem``). An
image the gateway refuses (corrupt, outside the domain under the refuse policy) is left out of the count and
reported as a failure in the same message (HL7 OBX-11 X and a note, FHIR a cancelled Observation), so the LIS
hears of every image. The results are written into the folder as ``specimen.hl7``, ``specimen.fhir.json``,
``specimen.json`` and ``specimen.report.json`` (the record ``allxai lis finalize`` reads), and last
``.allxai-done.json``, which names the folder's content it is for: a folder whose files change is done again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from allxai.client import AllxaiClientError, SpecimenResult, json_safe
from allxai.lis import _folder as files
from allxai.lis._image import report_outputs
from allxai.lis._report import Failure, LabReport

if TYPE_CHECKING:
    from allxai.lis._watcher import Watcher

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
#: The stem of a specimen's outputs inside its folder: specimen.hl7, specimen.fhir.json...
OUTPUT_STEM = "specimen"
DONE_NAME = ".allxai-done.json"
_MANIFEST_KEYS = ("specimen_id", "order_id", "patient_id", "patient_id_authority", "observed_at")
#: The gateway names a refused image of a specimen by its index: ``images[3].data: ...``.
_IMAGE_INDEX = re.compile(r"images\[(\d+)\]")


@dataclass(frozen=True)
class Manifest:
    """What the LIS says of a specimen folder (every field optional)."""

    specimen_id: str = ""
    order_id: str = ""
    patient_id: str = ""
    patient_id_authority: str = ""
    observed_at: datetime | None = None


def read_manifest(folder: Path) -> Manifest:
    """The folder's manifest (an empty one when it has none); ``ValueError`` naming what is wrong."""
    path = folder / MANIFEST_NAME
    if not path.exists():
        return Manifest()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{MANIFEST_NAME} cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{MANIFEST_NAME} must be a JSON object")
    unknown = set(data) - set(_MANIFEST_KEYS)
    if unknown:
        raise ValueError(f"{MANIFEST_NAME} has unknown keys: {', '.join(sorted(unknown))}")
    if not all(isinstance(data.get(key, ""), str) for key in _MANIFEST_KEYS):
        raise ValueError(f"{MANIFEST_NAME}: every value must be a string")
    observed = None
    if data.get("observed_at"):
        try:
            observed = datetime.fromisoformat(data["observed_at"])
        except ValueError as exc:
            raise ValueError(f"{MANIFEST_NAME}: observed_at is not an ISO 8601 time: {exc}") from exc
        if observed.tzinfo is None:
            raise ValueError(f"{MANIFEST_NAME}: observed_at must carry a time zone")
    return Manifest(
        specimen_id=data.get("specimen_id", "").strip(),
        order_id=data.get("order_id", "").strip(),
        patient_id=data.get("patient_id", "").strip(),
        patient_id_authority=data.get("patient_id_authority", "").strip(),
        observed_at=observed,
    )


def _snapshot(folder: Path) -> tuple[dict[str, files.Stat], str]:
    """The folder's images, and a digest of its content as the file system describes it (names, sizes,
    modification times of the images and the manifest)."""
    images = files.scan(folder)
    parts = [f"{name}:{s.size}:{s.mtime_ns}" for name, s in sorted(images.items())]
    manifest = folder / MANIFEST_NAME
    if manifest.exists():
        st = manifest.stat()
        parts.append(f"{MANIFEST_NAME}:{st.st_size}:{st.st_mtime_ns}")
    return images, hashlib.sha256("\n".join(parts).encode()).hexdigest()


@dataclass
class _Pending:
    digest: str
    since: float
    retry_at: float = 0.0
    attempts: int = 0


class SpecimenFolders:
    """The specimen side of one watcher: ``poll`` does one pass over the sub-folders."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self._pending: dict[str, _Pending] = {}

    def poll(self) -> int:
        """Process every settled specimen folder not done for its content; returns how many still wait."""
        now = time.monotonic()
        w = self.watcher
        folders = sorted(p for p in w.folder.iterdir() if p.is_dir() and not p.name.startswith((".", "~")))
        for gone in set(self._pending) - {f.name for f in folders}:
            del self._pending[gone]  # a folder removed while it waited: nothing is left to wait for
        for folder in folders:
            if w.stop.is_set():
                break
            try:
                images, digest = _snapshot(folder)
            except OSError:  # removed (or made unreadable) since the listing: the next pass will tell
                self._pending.pop(folder.name, None)
                continue
            if not images or folder.name in w.given_up or _done_digest(folder) == digest:
                self._pending.pop(folder.name, None)
                continue
            pending = self._pending.get(folder.name)
            if pending is None or pending.digest != digest:
                self._pending[folder.name] = _Pending(digest, now)
                newest = max(s.mtime_ns for s in images.values()) / 1e9
                if time.time() - newest < w.options.settle:
                    continue
                pending = self._pending[folder.name]
            elif now - pending.since < w.options.settle or now < pending.retry_at:
                continue
            if self._process(folder, sorted(images), digest, pending):
                self._pending.pop(folder.name, None)
        return len(self._pending)

    def _process(self, folder: Path, names: list[str], digest: str, pending: _Pending) -> bool:
        """Classify one specimen and write its reports; False when it must be tried again later."""
        w = self.watcher
        source = f"specimen:{folder.name}@{digest[:16]}"
        if w.queued(source, folder / OUTPUT_STEM):
            _write_done(folder, digest, "ok")  # queued before a crash: never sent twice
            return True
        try:
            manifest = read_manifest(folder)
        except ValueError as exc:
            # Without its ids the LIS could not file the result: a person must fix the manifest.
            log.error("%s: %s; the specimen is not processed", folder.name, exc)
            return self._record_error(folder, digest, pending, "MANIFEST", str(exc))
        specimen_id = manifest.specimen_id or folder.name
        order_id = manifest.order_id or (folder.name if w.options.order_id_from == "stem" else "")
        try:
            result, failures = self._classify(folder, names, specimen_id)
            model = w.model_for(result.cells[0]) if result is not None else w.client.model_info()
        except AllxaiClientError as exc:
            log.warning("%s: %s: %s", folder.name, exc.code, exc.message)
            return self._retry(folder, pending, exc.code)
        try:
            report = LabReport(
                model=model,
                specimen=result,
                failures=tuple(failures),
                specimen_id=specimen_id,
                order_id=order_id,
                order_namespace=w.options.order_namespace,
                patient_id=manifest.patient_id,
                patient_id_authority=manifest.patient_id_authority,
                observed_at=manifest.observed_at,
                config=w.options.config,
            )
            outputs = report_outputs(report, w.options)
        except Exception as exc:  # noqa: BLE001  (hl7apy and pydantic raise many kinds; all mean "this specimen")
            log.error("%s: cannot be put into HL7/FHIR (%s: %s)", folder.name, type(exc).__name__, exc)
            return self._record_error(folder, digest, pending, "REPORT_ERROR", f"{type(exc).__name__}: {exc}")
        summary: dict[str, Any] = {
            "specimen_id": specimen_id,
            "order_id": order_id,
            "specimen": result.to_dict() if result is not None else None,
            "failures": [{"image": f.image_id, "code": f.code, "message": f.message} for f in failures],
        }
        outputs.append(
            (files.JSON_SUFFIX, json.dumps(json_safe(summary), indent=2, allow_nan=False).encode())
        )
        try:
            stem = folder / OUTPUT_STEM
            for suffix, content in outputs:
                files.write_atomic(files.output(stem, suffix), content, durable=False)
            files.output(stem, files.ERROR_SUFFIX).unlink(missing_ok=True)
            w.queue(outputs, folder.name, source)
            _write_done(folder, digest, "ok")
        except (OSError, sqlite3.Error) as exc:  # sqlite3: the outbox's disk is full or read-only
            log.warning("%s: cannot write the results (%s)", folder.name, exc)
            return self._retry(folder, pending, "OS_ERROR")
        counted = "no cell classified" if result is None else f"{len(result.cells)} cells"
        log.info("%s: specimen %s, %s, %d failed", folder.name, specimen_id, counted, len(failures))
        return True

    def _classify(
        self, folder: Path, names: list[str], specimen_id: str
    ) -> tuple[SpecimenResult | None, list[Failure]]:
        """Classify the folder's images; an image the gateway refuses is left out and becomes a failure."""
        w = self.watcher
        remaining, failures = list(names), []
        while remaining:
            try:
                result = w.client.classify_specimen(
                    [folder / name for name in remaining],
                    specimen_id=specimen_id,
                    image_ids=remaining,
                    alpha=w.options.alpha,
                )
            except AllxaiClientError as exc:
                if exc.code not in w.permanent_codes:
                    raise  # the gateway or the network: the whole specimen is tried again later
                found = _IMAGE_INDEX.search(exc.message)
                index = int(found.group(1)) if found is not None else len(remaining)
                if index >= len(remaining):
                    # Refused as a whole (the model cannot count blasts, say): every image fails, saying why.
                    log.error("%s: rejected by the gateway (%s): %s", folder.name, exc.code, exc.message)
                    failures += [Failure(name, exc.code, exc.message) for name in remaining]
                    return None, failures
                name = remaining.pop(index)
                log.error("%s/%s: rejected by the gateway (%s): %s", folder.name, name, exc.code, exc.message)
                failures.append(Failure(name, exc.code, exc.message))
                continue
            except OSError as exc:  # an image removed or unreadable since the scan
                raise AllxaiClientError("OS_ERROR", str(exc)) from exc
            return result, failures
        return None, failures

    def _record_error(self, folder: Path, digest: str, pending: _Pending, code: str, message: str) -> bool:
        """Write the folder's error and its marker; a disk that cannot take them is retried later."""
        try:
            _write_error(folder, code, message)
            _write_done(folder, digest, "error")
        except OSError as exc:
            log.warning("%s: cannot write the error (%s)", folder.name, exc)
            return self._retry(folder, pending, "OS_ERROR")
        return True

    def _retry(self, folder: Path, pending: _Pending, code: str) -> bool:
        w = self.watcher
        pending.attempts += 1
        pending.retry_at = time.monotonic() + w.options.retry_after
        if w.options.max_attempts and pending.attempts >= w.options.max_attempts:
            log.error("%s: gave up after %d attempts (last: %s)", folder.name, pending.attempts, code)
            w.given_up.add(folder.name)
            return True
        return False


def _done_digest(folder: Path) -> str:
    try:
        marker = json.loads((folder / DONE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(marker.get("content", "")) if isinstance(marker, dict) else ""


def _write_done(folder: Path, digest: str, status: str) -> None:
    files.sync_dir(folder)  # the outputs' renames first: the marker vouches for them
    marker = {"status": status, "content": digest, "at": datetime.now().astimezone().isoformat()}
    files.write_atomic(folder / DONE_NAME, json.dumps(marker, indent=2).encode())


def _write_error(folder: Path, code: str, message: str) -> None:
    record = {"specimen": folder.name, "status": "error", "code": code, "message": message}
    files.write_atomic(
        files.output(folder / OUTPUT_STEM, files.ERROR_SUFFIX), json.dumps(record, indent=2).encode()
    )
