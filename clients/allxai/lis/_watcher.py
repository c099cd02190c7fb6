"""The folder watcher's loop: settle, classify, retry, mark done (see ``allxai.lis.watch``).

What is done with one image's result (the report, its files, the marker) is ``allxai.lis._image``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from allxai.client import AllxaiClientError, ClassifyResult, Client, ExplainResult, ModelDescription
from allxai.lis import _delivery as delivery
from allxai.lis import _folder as files
from allxai.lis._image import (
    Options,
    cell_of,
    render,
    render_failure,
    write_error,
    write_marker,
    write_outputs,
)
from allxai.lis._report import LabReport
from allxai.lis.outbox import Outbox

log = logging.getLogger(__name__)

#: Status codes that say "this image": recorded as an error, never retried (a corrupt image stays corrupt;
#: one the gateway refuses as outside the model's training domain, FAILED_PRECONDITION, stays outside).
PERMANENT_CODES = frozenset({"INVALID_ARGUMENT", "OUT_OF_RANGE", "FAILED_PRECONDITION"})

#: The code in ``<image>.error.json`` of an image whose result cannot be put into HL7 or FHIR (say, a file
#: name too long for an HL7 field): that will not change on a retry either.
REPORT_ERROR = "REPORT_ERROR"


@dataclass
class _Pending:
    stat: files.Stat
    since: float
    attempts: int = 0
    retry_at: float = 0.0


class Watcher:
    """Processes the images of one folder through ``client``; ``poll`` does one pass."""

    def __init__(
        self,
        folder: Path,
        client: Client,
        options: Options,
        stop: threading.Event | None = None,
        outbox: Outbox | None = None,
        fhir_outbox: Outbox | None = None,
    ):
        self.folder = folder
        #: Where each ORU^R01 is queued for the MLLP sender (before the marker), when sending over MLLP.
        self.outbox = outbox
        #: Where each FHIR bundle is queued for the FHIR sender, when posting to a FHIR server.
        self.fhir_outbox = fhir_outbox
        self.client = client
        self.options = options
        self.stop = stop or threading.Event()
        self._pending: dict[str, _Pending] = {}
        self._done: dict[str, files.Stat] = {}
        self._model: ModelDescription | None = None
        #: Images that ran out of attempts in this run (``--once`` then exits 1 and leaves them unmarked).
        self.given_up: set[str] = set()
        #: Codes that say "this image": recorded (and reported) as a failure, never retried.
        self.permanent_codes = PERMANENT_CODES
        from allxai.lis._specimens import SpecimenFolders  # noqa: PLC0415  (it imports this module's type)

        #: The sub-folders, one specimen each.
        self.specimens = SpecimenFolders(self)

    def poll(self) -> int:
        """Process every settled image and specimen folder not done yet; returns how many still wait."""
        return self._poll_images() + self.specimens.poll()

    def _poll_images(self) -> int:
        """Process every settled image without a valid marker; returns how many are still waiting."""
        now = time.monotonic()
        current = files.scan(self.folder)
        for name in list(self._pending):
            if name not in current:
                del self._pending[name]
        for name, stat in sorted(current.items()):
            if self.stop.is_set():
                break
            if self._done.get(name) == stat or name in self.given_up or stat.size == 0:
                continue
            pending = self._pending.get(name)
            if pending is None or pending.stat != stat:
                # New, or still changing: start (again) the settle clock. A file untouched for the settle
                # time already (it was there before we started) needs no second look.
                pending = _Pending(stat, now)
                self._pending[name] = pending
                if time.time() - stat.mtime_ns / 1e9 < self.options.settle:
                    continue
            elif now - pending.since < self.options.settle or now < pending.retry_at:
                continue
            if self._is_done(name, stat):
                del self._pending[name]
                continue
            if self._process(name, pending):
                self._pending.pop(name, None)
        return len(self._pending)

    def _is_done(self, name: str, stat: files.Stat) -> bool:
        marker = files.read_marker(self.folder / name)
        if marker is None:
            return False
        if marker.get("size") != stat.size or marker.get("mtime_ns") != stat.mtime_ns:
            # Touched since: done only if the bytes are still those the marker was written for.
            try:
                data = (self.folder / name).read_bytes()
            except OSError:
                return False
            if marker.get("sha256") != files.sha256(data):
                log.info("%s: changed since it was processed; processing it again", name)
                return False
        self._done[name] = stat
        return True

    def _process(self, name: str, pending: _Pending) -> bool:
        """Classify one image and write its outputs; False when it must be retried later."""
        path = self.folder / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.warning("%s: cannot read (%s); will retry", name, exc)
            return self._retry(name, pending, "OS_ERROR")
        if len(data) != pending.stat.size:
            return False  # still being written after all: the next scan restarts its settle clock
        digest = files.sha256(data)
        if self._queued_already(path, pending.stat, digest):
            return True
        try:
            result = self._call(data, name)
            # Inside the same try: a gateway that goes away between the two calls is retried like the first.
            model = self.model_for(cell_of(result))
        except AllxaiClientError as exc:
            if exc.code == "INVALID_ARGUMENT" and exc.message.startswith("alpha"):
                # The watcher's --alpha, not the image: never record it against the image; retried, since
                # another model version may be calibrated for it.
                log.error("%s: the gateway refuses --alpha: %s", name, exc.message)
                return self._retry(name, pending, exc.code)
            if exc.code in PERMANENT_CODES:
                log.error("%s: rejected by the gateway (%s): %s; error recorded", name, exc.code, exc.message)
                return self._finish(
                    name, pending, partial(self._record_error, path, pending.stat, digest, exc)
                )
            log.warning("%s: %s: %s", name, exc.code, exc.message)
            return self._retry(name, pending, exc.code)
        try:
            report, outputs = render(path, result, model, self.options, self.order_id(path.name))
        except Exception as exc:  # noqa: BLE001  (hl7apy and pydantic raise many kinds; all mean "this image")
            # A result that cannot be reported will not become reportable on a retry: record it, go on.
            log.error(
                "%s: cannot be put into HL7/FHIR (%s: %s); error recorded", name, type(exc).__name__, exc
            )
            error = AllxaiClientError(REPORT_ERROR, f"{type(exc).__name__}: {exc}")
            return self._finish(name, pending, partial(self._record_error, path, pending.stat, digest, error))
        return self._finish(name, pending, partial(self._write, path, pending.stat, digest, report, outputs))

    def _finish(self, name: str, pending: _Pending, write: Callable[[], None]) -> bool:
        """Write an image's outputs; a full or read-only disk is retried later, not fatal to the watcher."""
        try:
            write()
        except (OSError, sqlite3.Error) as exc:  # sqlite3: the outbox's disk is full or read-only
            log.warning("%s: cannot write the results (%s)", name, exc)
            return self._retry(name, pending, "OS_ERROR")
        return True

    def _retry(self, name: str, pending: _Pending, code: str) -> bool:
        pending.attempts += 1
        pending.retry_at = time.monotonic() + self.options.retry_after
        if self.options.max_attempts and pending.attempts >= self.options.max_attempts:
            log.error(
                "%s: gave up after %d attempts (last: %s); not marked done", name, pending.attempts, code
            )
            self.given_up.add(name)
            return True
        log.warning(
            "%s: attempt %d failed (%s); retrying in %.0f s",
            name,
            pending.attempts,
            code,
            self.options.retry_after,
        )
        return False

    def order_id(self, name: str) -> str:
        """The LIS's order number of image ``name``, as ``order_id_from`` says (empty: none)."""
        return Path(name).stem if self.options.order_id_from == "stem" else ""

    def _call(self, data: bytes, name: str) -> ClassifyResult | ExplainResult:
        # Both calls name the image and its order the same way, so the gateway's audit trail can tie them.
        image_id, specimen_id = name, self.order_id(name)
        if self.options.explain:
            return self.client.explain(
                data,
                num_samples=self.options.num_samples,
                seed=self.options.seed,
                pictures=["overlay"],
                image_id=image_id,
                specimen_id=specimen_id,
                alpha=self.options.alpha,
            )
        return self.client.classify(
            data, image_id=image_id, specimen_id=specimen_id, alpha=self.options.alpha
        )

    def model_for(self, cell: ClassifyResult) -> ModelDescription:
        """The served model's description, asked again when a result comes from another version."""
        if self._model is None or (self._model.name, self._model.version) != (cell.model, cell.version):
            self._model = self.client.model_info()
        if (self._model.name, self._model.version) != (cell.model, cell.version):
            # A rollout between the two calls: keep the classes, report the version that answered.
            return replace(self._model, name=cell.model, version=cell.version)
        return self._model

    def _write(
        self, path: Path, stat: files.Stat, digest: str, report: LabReport, outputs: list[tuple[str, bytes]]
    ) -> None:
        write_outputs(path, outputs)
        self.queue(outputs, path.name, _source(path.name, digest))
        cell = report.cell
        assert cell is not None
        self._mark(path, stat, digest, "ok", [path.name + suffix for suffix, _ in outputs], cell.request_id)
        if cell.in_domain is None:
            domain = "; no domain check (the model has none)"
        else:
            domain = "" if cell.in_domain else "; OUTSIDE THE TRAINING DOMAIN, not for diagnosis"
        log.info(
            "%s: %s %.1f%% (model %s v%d)%s",
            path.name,
            cell.label,
            100 * cell.confidence,
            cell.model,
            cell.version,
            domain,
        )

    def queue(self, outputs: list[tuple[str, bytes]], name: str, source: str) -> None:
        """Queue a result's ORU^R01 and FHIR bundle before its marker is written (see ``_delivery``)."""
        delivery.queue(outputs, name, source, self.outbox, self.fhir_outbox)

    def queued(self, source: str, stem: Path) -> bool:
        """Whether a result about ``source`` is in an outbox already (queued or sent); a kind still missing
        is queued from its file beside ``stem`` (see ``_delivery.complete``)."""
        return delivery.complete(stem, stem.name, source, self.outbox, self.fhir_outbox)

    def _queued_already(self, path: Path, stat: files.Stat, digest: str) -> bool:
        """Whether these bytes' result is queued or sent already (a watcher stopped between queueing and the
        marker); if so, mark them done rather than send a second result. To resend, drop its message first."""
        if not self.queued(_source(path.name, digest), path):
            return False
        log.info("%s: its result is already in the outbox; marked done", path.name)
        outputs = [path.name + s for s in files.OUTPUT_SUFFIXES if files.output(path, s).exists()]
        self._mark(path, stat, digest, "ok", outputs, "")
        return True

    def _record_error(self, path: Path, stat: files.Stat, digest: str, error: AllxaiClientError) -> None:
        write_error(path, error)
        written = [path.name + files.ERROR_SUFFIX]
        outputs = self._failure_outputs(path, error, digest)
        if outputs:
            for suffix, content in outputs:
                files.write_atomic(files.output(path, suffix), content, durable=False)
            self.queue(outputs, path.name, _source(path.name, digest))
            written += [path.name + suffix for suffix, _ in outputs]
        self._mark(path, stat, digest, "error", written, "")

    def _failure_outputs(self, path: Path, error: AllxaiClientError, digest: str) -> list[tuple[str, bytes]]:
        """The HL7 and FHIR reports that tell the LIS the image failed; empty when they cannot be made
        (the gateway cannot describe its model now): the error file still says it, and the log."""
        try:
            model = self._model or self.client.model_info()
            self._model = model
            order_id = self.order_id(path.name)
            _, outputs = render_failure(path, error, model, self.options, order_id, digest)
        except AllxaiClientError as exc:
            log.warning("%s: the LIS is not told of the failure: no model description (%s)", path.name, exc)
            return []
        except Exception as exc:  # noqa: BLE001  (hl7apy and pydantic raise many kinds)
            log.error("%s: the failure cannot be put into HL7/FHIR either (%s)", path.name, exc)
            return []
        return outputs

    def _mark(
        self, path: Path, stat: files.Stat, digest: str, status: str, outputs: list[str], request_id: str
    ) -> None:
        write_marker(path, stat, digest, status, outputs, request_id)
        self._done[path.name] = stat

    def run(self, interval: float, once: bool) -> int:
        """Poll until stopped (or, with ``once``, until nothing is waiting); 1 when images were given up."""
        while not self.stop.is_set():
            try:
                waiting = self.poll()
            except (OSError, sqlite3.Error) as exc:  # a file gone, an outbox locked: a pass lost, not us
                log.warning("a pass stopped (%s: %s); what it left is done later", type(exc).__name__, exc)
                waiting = 1
            if once and waiting == 0:
                break
            self.stop.wait(interval)
        return 1 if self.given_up else 0


def _source(name: str, digest: str) -> str:
    """What an outbox message is about: the image's name and the head of its bytes' digest."""
    return f"{name}@{digest[:16]}"
